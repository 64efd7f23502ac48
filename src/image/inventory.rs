//! inventory.img: what a dump writes, and the one place that decides
//! whether this cryo can read a set of images.

use super::error::{Error, Result};
use super::pb::{InventoryEntry, Lsmtype, TaskKobjIdsEntry};

/// `img_version` written (CRIU's CRTOOLS_IMAGES_V1_1).
pub const IMG_VERSION: u32 = 2;
/// cryo's own image format version (`inventory_entry.cryo_format`).
pub const CRYO_FORMAT: u32 = 1;

/// The inventory entry of a cryo dump. `root_ids` are the ids cryo gives
/// the dumping process's own namespaces and kernel objects; tasks whose
/// namespace ids equal them share the dumper's namespaces.
pub fn new_inventory(root_ids: TaskKobjIdsEntry) -> InventoryEntry {
    InventoryEntry {
        img_version: IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids: Some(root_ids),
        ns_per_id: Some(true),
        lsmtype: Some(Lsmtype::NoLsm as i32),
        cryo_format: Some(CRYO_FORMAT),
        ..Default::default()
    }
}

/// Decides whether this cryo can read images with this inventory.
///
/// Every compatibility decision lives here (proto/README.md):
/// - `img_version` must be 1 or 2 (CRIU's two layouts);
/// - `cryo_format` absent (CRIU-made) or at most [`CRYO_FORMAT`];
/// - `fdinfo_per_id` must be true (older layouts are not supported, as in
///   CRIU).
pub fn check_inventory(inv: &InventoryEntry) -> Result<()> {
    if inv.img_version != 1 && inv.img_version != 2 {
        return Err(Error::UnknownImgVersion(inv.img_version));
    }
    if let Some(f) = inv.cryo_format {
        if f > CRYO_FORMAT {
            return Err(Error::NewerFormat(f));
        }
    }
    if inv.fdinfo_per_id != Some(true) {
        return Err(Error::TooOld);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_passes() {
        let inv = new_inventory(TaskKobjIdsEntry::default());
        check_inventory(&inv).unwrap();
        assert_eq!(inv.cryo_format, Some(1));
    }

    #[test]
    fn criu_made_inventory_passes() {
        let mut inv = new_inventory(TaskKobjIdsEntry::default());
        inv.cryo_format = None;
        inv.lsmtype = Some(Lsmtype::Apparmor as i32);
        check_inventory(&inv).unwrap();
    }

    #[test]
    fn refusals() {
        let base = new_inventory(TaskKobjIdsEntry::default());
        let mut inv = base.clone();
        inv.cryo_format = Some(2);
        assert_eq!(
            check_inventory(&inv).unwrap_err().to_string(),
            "inventory.img: images written by a newer cryo (format 2, this cryo reads 1)"
        );
        let mut inv = base.clone();
        inv.img_version = 3;
        assert_eq!(
            check_inventory(&inv).unwrap_err().to_string(),
            "inventory.img: images of an unknown format version 3 (this cryo reads 2)"
        );
        let mut inv = base;
        inv.fdinfo_per_id = None;
        assert!(matches!(check_inventory(&inv), Err(Error::TooOld)));
    }
}
