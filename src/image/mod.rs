//! CRIU-format image files: schemas, framing, the image directory,
//! integrity, compatibility and JSON rendering.
//!
//! Layout of an image file (image-format.md §1): a header (magic only for
//! `inventory.img`, `IMG_COMMON_MAGIC` + magic for ordinary images,
//! `IMG_SERVICE_MAGIC` + magic for `stats-*`), then entries
//! `u32 LE length + proto2 message [+ extra bytes]` until EOF. Page
//! contents live in raw `pages-N.img` files located by the pagemap.
//!
//! Typical use:
//!
//! ```no_run
//! use cryo::image::{names, pb, ImageDir, Kind};
//! # fn main() -> cryo::image::Result<()> {
//! // dump
//! let dir = ImageDir::create("/tmp/img")?;
//! let root_ids = pb::TaskKobjIdsEntry::default();
//! dir.write_image(names::INVENTORY, Kind::Inventory, &[cryo::image::new_inventory(root_ids)])?;
//! dir.write_image(names::PSTREE, Kind::Pstree, &[pb::PstreeEntry { pid: 1, threads: vec![1], ..Default::default() }])?;
//! dir.finish_manifest()?;
//! // restore
//! let dir = ImageDir::open("/tmp/img")?; // checks inventory, cryo.sums, pagemaps
//! let tree: Vec<pb::PstreeEntry> = dir.read_image(names::PSTREE, Kind::Pstree)?;
//! # let _ = tree; Ok(()) }
//! ```
//!
//! Schema evolution and compatibility rules: `proto/README.md`; the one
//! compat decision point is [`check_inventory`].

pub mod dir;
pub mod error;
pub mod framing;
pub mod inventory;
pub mod magic;
pub mod pages;
pub mod pb;
pub mod show;

pub use dir::{names, FileSum, ImageDir};
pub use error::{Error, Result};
pub use framing::{ImageReader, ImageWriter, MAX_ENTRY};
pub use inventory::{check_inventory, new_inventory, CRYO_FORMAT, IMG_VERSION};
pub use magic::{Header, Kind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};
pub use pages::{PageRun, PagemapIndex, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};
pub use show::{show_bytes, show_path};

/// 64-bit FNV-1a, used for `mm_entry.cryo_vdso_hash`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
