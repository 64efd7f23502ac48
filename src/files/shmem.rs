//! Shared memory mappings: MAP_SHARED|MAP_ANONYMOUS (inherited through
//! fork), MAP_SHARED of a memfd, and MAP_SHARED of an unlinked file in
//! /dev/shm.
//!
//! Dump: each shmem object is saved once, identified by its inode. An
//! anonymous one (or an unlinked /dev/shm file) becomes a VMA with status
//! VMA_ANON_SHARED, shmid = inode number and its data pages in
//! `pagemap-shmem-<shmid>.img` (CRIU's convention). A memfd mapping
//! becomes a VMA with VMA_FILE_SHARED|VMA_AREA_MEMFD whose shmid is the
//! id of a memfd description in files.img, so it shares the inode with
//! the memfd's fds.
//!
//! Restore: each object is a file description like any other
//! (anonymous ones get a synthetic file id and memfd inode, see
//! [`attach`]); the lowest common ancestor of its users creates it, every
//! user finds it at its slot and maps it MAP_SHARED in `stage_memory`.
//! The slot is closed in `jump` with the other temporaries.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};

use super::{memfd, FileTable, FD_MEMFD};
use crate::image::{pb, ImageDir};
use crate::mem::{self, VmaKind, VMA_ANON_SHARED, VMA_AREA_REGULAR};
use crate::proc::maps::Vma;

/// CRIU's status bit of a memfd mapping.
pub const VMA_AREA_MEMFD: u32 = 1 << 14;
/// First pages id of anonymous shared memory contents (memfd contents use
/// [`memfd::PAGES_ID_BASE`] + inode id, far below).
const ANON_PAGES_BASE: u32 = memfd::PAGES_ID_BASE + (1 << 29);
/// First synthetic file and memfd inode id given to an anonymous shmem
/// object at restore.
const SYNTH_BASE: u32 = 0xC000_0000;

/// What a shared mapping is backed by.
#[derive(Debug, PartialEq, Eq)]
pub enum Backing {
    /// MAP_SHARED|MAP_ANONYMOUS, or an unlinked tmpfs file.
    Anon,
    Memfd,
}

/// Which shared mappings are saved by content (None: not shmem, a file
/// mapping restored by path).
pub fn backing(v: &Vma) -> Option<Backing> {
    if !v.shared {
        return None;
    }
    let path = v.path.as_deref()?;
    if memfd::is_memfd(path) {
        Some(Backing::Memfd)
    } else if path == "/dev/zero (deleted)" || (path.starts_with("/dev/shm/") && v.deleted()) {
        Some(Backing::Anon)
    } else {
        None
    }
}

impl FileTable {
    /// The `vma_entry` of a shared memory VMA of `pid`, its object saved
    /// on first sight; None when `v` is not shared memory.
    pub fn shmem_vma(&mut self, pid: i32, v: &Vma) -> Result<Option<pb::VmaEntry>> {
        let Some(b) = backing(v) else {
            return Ok(None);
        };
        let link = v.path.as_deref().unwrap_or_default();
        // VM_MAYWRITE: the mapping could be made writable (mprotect), so its
        // description must be writable too.
        let rw = v.prot & libc::PROT_WRITE as u32 != 0 || v.vmflags.iter().any(|f| f == "mw");
        match b {
            Backing::Memfd => {
                let id = memfd::dump_mapping(self, pid, v.start, v.end, link, rw)?;
                let mut e = mem::vma_entry(v, Some(id));
                e.status |= VMA_AREA_MEMFD;
                Ok(Some(e))
            }
            Backing::Anon => {
                let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                let file = std::fs::File::open(&path).with_context(|| format!("Cannot open {path}"))?;
                let md = file.metadata().with_context(|| format!("Cannot stat {path}"))?;
                let shmid = md.ino();
                if !self.shmem_done.contains_key(&(md.dev(), shmid)) {
                    let n = self.shmem_done.len() as u32;
                    self.shmem_done.insert((md.dev(), shmid), ());
                    memfd::save_content(self, &file, md.len(), shmid as u32, ANON_PAGES_BASE + n)
                        .with_context(|| format!("pid {pid}: cannot save the shared memory at {:#x}", v.start))?;
                }
                let mut e = mem::vma_entry(v, None);
                e.flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32 | (e.flags & !(libc::MAP_PRIVATE as u32));
                e.status = VMA_AREA_REGULAR | VMA_ANON_SHARED;
                e.shmid = u64::from(shmid as u32);
                e.pgoff = v.offset;
                e.fdflags = None;
                Ok(Some(e))
            }
        }
    }
}

/// Gives every anonymous shmem object the tasks map a synthetic memfd
/// description in `files` and inode in `memfds` (content read from its
/// pagemap-shmem image), so that the fd restore creates it; its size is
/// the largest end offset any VMA maps. Returns shmid → file id.
pub fn attach<'a>(
    dir: &ImageDir,
    mms: impl Iterator<Item = &'a pb::MmEntry>,
    files: &mut HashMap<u32, pb::FileEntry>,
    memfds: &mut HashMap<u32, memfd::Inode>,
) -> Result<HashMap<u64, u32>> {
    let mut size: std::collections::BTreeMap<u64, u64> = Default::default();
    for mm in mms {
        for v in &mm.vmas {
            if VmaKind::from_status(v.status) == Some(VmaKind::AnonShared) {
                let s = size.entry(v.shmid).or_default();
                *s = (*s).max(v.pgoff + (v.end - v.start));
            }
        }
    }
    let mut out = HashMap::new();
    for (n, (&shmid, &len)) in size.iter().enumerate() {
        let id = SYNTH_BASE + n as u32;
        if files.contains_key(&id) {
            bail!("files.img uses file id {id}, which cryo keeps for shared memory");
        }
        let chunks = memfd::load_content(dir, shmid)
            .with_context(|| format!("Cannot read the shared memory of shmid {shmid}"))?;
        if let Some((off, b)) = chunks.iter().find(|(o, b)| o + b.len() as u64 > len) {
            bail!(
                "{}: data at {off:#x}+{:#x} beyond the {len:#x} bytes mapped",
                memfd::pagemap_name(shmid as u32),
                b.len()
            );
        }
        memfds.insert(
            id,
            memfd::Inode {
                entry: pb::MemfdInodeEntry {
                    name: "dev/zero".into(),
                    size: len,
                    shmid: shmid as u32,
                    inode_id: u64::from(id),
                    mode: Some(0o100600),
                    ..Default::default()
                },
                chunks,
                anon: true,
            },
        );
        files.insert(
            id,
            pb::FileEntry {
                r#type: FD_MEMFD,
                id,
                memfd: Some(pb::MemfdFileEntry {
                    id,
                    flags: libc::O_RDWR as u32,
                    pos: 0,
                    fown: super::fown0(),
                    inode_id: id,
                }),
                ..Default::default()
            },
        );
        out.insert(shmid, id);
    }
    Ok(out)
}

/// The file id a restored VMA maps through a slot (a memfd description,
/// a synthetic anonymous shmem one, or a recreated ghost file: `ghosts`
/// holds the ids of the ghost REG entries), if any.
pub fn vma_file_id<V>(
    v: &pb::VmaEntry,
    files: &HashMap<u32, pb::FileEntry>,
    anon: &HashMap<u64, u32>,
    ghosts: &HashMap<u32, V>,
) -> Option<u32> {
    match VmaKind::from_status(v.status)? {
        VmaKind::AnonShared => anon.get(&v.shmid).copied(),
        VmaKind::FileShared | VmaKind::FilePrivate => {
            let id = v.shmid as u32;
            let via_slot = files.get(&id).is_some_and(|f| f.memfd.is_some()) || ghosts.contains_key(&id);
            via_slot.then_some(id)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(path: &str, shared: bool) -> Vma {
        Vma {
            start: 0x1000,
            end: 0x3000,
            shared,
            inode: 7,
            path: Some(path.into()),
            ..Default::default()
        }
    }

    #[test]
    fn backing_kinds() {
        assert_eq!(backing(&vma("/dev/zero (deleted)", true)), Some(Backing::Anon));
        assert_eq!(backing(&vma("/memfd:buf (deleted)", true)), Some(Backing::Memfd));
        assert_eq!(backing(&vma("/dev/shm/x (deleted)", true)), Some(Backing::Anon));
        assert_eq!(backing(&vma("/dev/shm/x", true)), None);
        assert_eq!(backing(&vma("/dev/zero (deleted)", false)), None);
        assert_eq!(backing(&vma("/usr/lib/libc.so.6", true)), None);
    }
}
