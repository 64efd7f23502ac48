//! memfd descriptors (not their mappings).
//!
//! Dump: each open description is a `memfd_file_entry` (flags, offset)
//! pointing at its inode's `memfd_inode_entry` in memfd.img (name, owner,
//! mode, size, seals). The content is stored as CRIU stores shmem: the
//! data pages (holes skipped) in a raw `pages-N.img`, located by
//! `pagemap-shmem-<shmid>.img` whose entries' addresses are file offsets;
//! shmid is the inode number. cryo numbers these pages files from
//! [`PAGES_ID_BASE`] up so they never meet the processes' ones.
//!
//! Restore: memfd_create with the name (and MFD_ALLOW_SEALING unless the
//! memfd could not be sealed), the content written back, size, mode and
//! owner set; each description is opened through /proc/self/fd with its
//! access mode and offset; the seals are added last.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::stat::Mode;

use super::{fown0, ExtraImage, FdCtx, FileTable, FD_MEMFD};
use crate::image::{self, pb, ImageDir, ImageWriter, Kind, PAGE_SIZE, PE_PRESENT};
use crate::sys::fdops;

/// First pages id used for memfd contents.
pub const PAGES_ID_BASE: u32 = 1 << 30;
const PREFIX: &str = "/memfd:";
const DELETED: &str = " (deleted)";
/// The largest memfd content cryo saves.
const LIMIT: u64 = 1 << 30;

/// True when an fd link names a memfd.
pub fn is_memfd(link: &str) -> bool {
    link.starts_with(PREFIX) && link.ends_with(DELETED)
}

/// `pagemap-shmem-<shmid>.img`.
pub fn pagemap_name(shmid: u32) -> String {
    format!("pagemap-shmem-{shmid}.img")
}

/// (offset, length) of the data of a file, page-aligned, holes skipped.
fn extents(file: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let fd = file.as_raw_fd();
    let end_all = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    while at < size {
        let Ok(s) = lseek(fd, at as i64, Whence::SeekData) else {
            break;
        };
        let s = (s as u64) / PAGE_SIZE * PAGE_SIZE;
        let e = lseek(fd, s as i64, Whence::SeekHole).map(|e| e as u64).unwrap_or(size);
        let e = (e.div_ceil(PAGE_SIZE) * PAGE_SIZE).min(end_all);
        if e <= s {
            break;
        }
        match out.last_mut() {
            Some(l) if l.0 + l.1 >= s => l.1 = l.1.max(e - l.0),
            _ => out.push((s, e - s)),
        }
        at = e;
    }
    out
}

pub(crate) fn dump(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let md =
        f.md.with_context(|| format!("pid {pid} fd {fd}: cannot stat {}", f.link))?;
    let key = (md.dev(), md.ino());
    let inode_id = match t.memfd_inodes.get(&key) {
        Some(&i) => i,
        None => {
            let i = t.memfd_inodes.len() as u32 + 1;
            let name = &f.link[PREFIX.len()..f.link.len() - DELETED.len()];
            let entry =
                dump_inode(t, f, md, name, i).with_context(|| format!("pid {pid} fd {fd}: cannot save {}", f.link))?;
            t.memfd_entries.push(entry);
            t.memfd_inodes.insert(key, i);
            i
        }
    };
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_MEMFD,
        id,
        memfd: Some(pb::MemfdFileEntry {
            id,
            flags: f.flags,
            pos: f.info.pos,
            fown: fown0(),
            inode_id,
        }),
        ..Default::default()
    });
    Ok(id)
}

fn dump_inode(
    t: &mut FileTable,
    f: &FdCtx,
    md: &std::fs::Metadata,
    name: &str,
    inode_id: u32,
) -> Result<pb::MemfdInodeEntry> {
    inode_entry(t, &f.proc_path(), md, name, inode_id)
}

/// Saves the inode that `path` (a /proc fd or map_files link) opens.
fn inode_entry(
    t: &mut FileTable,
    path: &str,
    md: &std::fs::Metadata,
    name: &str,
    inode_id: u32,
) -> Result<pb::MemfdInodeEntry> {
    let size = md.len();
    let file = std::fs::File::open(path).with_context(|| format!("Cannot open {path}"))?;
    let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS).context("F_GET_SEALS")? as u32;
    let shmid = md.ino() as u32;
    save_content(t, &file, size, shmid, PAGES_ID_BASE + inode_id)?;
    Ok(pb::MemfdInodeEntry {
        name: name.to_string(),
        uid: md.uid(),
        gid: md.gid(),
        size,
        shmid,
        seals,
        inode_id: u64::from(inode_id),
        hugetlb_flag: None,
        mode: Some(md.mode()),
    })
}

/// Writes the data pages of a shmem file (holes skipped) to
/// `pages-<pages_id>.img`, indexed by `pagemap-shmem-<shmid>.img`.
pub(crate) fn save_content(
    t: &mut FileTable,
    file: &std::fs::File,
    size: u64,
    shmid: u32,
    pages_id: u32,
) -> Result<()> {
    if size > LIMIT {
        bail!("it holds {size} bytes (the limit is {LIMIT})");
    }
    let mut entries = Vec::new();
    let mut raw = Vec::new();
    for (off, len) in extents(file, size) {
        let mut buf = vec![0u8; len as usize];
        // The last page may extend past EOF: what is not read stays zero.
        let mut got = 0;
        while got < buf.len() {
            let n = file
                .read_at(&mut buf[got..], off + got as u64)
                .context("read of the shared memory")?;
            if n == 0 {
                break;
            }
            got += n;
        }
        entries.push(image::pages::new_entry(off, len / PAGE_SIZE, PE_PRESENT));
        raw.extend_from_slice(&buf);
    }
    let mut w = ImageWriter::new(Kind::Pagemap);
    w.write_entry(&pb::PagemapHead { pages_id })?;
    for e in &entries {
        w.write_entry(e)?;
    }
    t.extra_images.push(ExtraImage {
        name: pagemap_name(shmid),
        bytes: w.into_bytes(),
    });
    t.raw_images.push(ExtraImage {
        name: image::names::pages(pages_id),
        bytes: raw,
    });
    Ok(())
}

/// A MAP_SHARED mapping of a memfd at `start`-`end` in `pid`: its inode is
/// saved (once, shared with the fds of the same memfd) and a description
/// of it is added; returns that description's file id (the VMA's shmid).
pub(crate) fn dump_mapping(t: &mut FileTable, pid: i32, start: u64, end: u64, link: &str, rw: bool) -> Result<u32> {
    let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    let md = std::fs::metadata(&path).with_context(|| format!("Cannot stat {path}"))?;
    let key = (md.dev(), md.ino());
    let inode_id = match t.memfd_inodes.get(&key) {
        Some(&i) => i,
        None => {
            let i = t.memfd_inodes.len() as u32 + 1;
            let name = link
                .strip_prefix(PREFIX)
                .and_then(|l| l.strip_suffix(DELETED))
                .unwrap_or(link);
            let entry = inode_entry(t, &path, &md, name, i)
                .with_context(|| format!("pid {pid}: cannot save the memfd mapped at {start:#x}"))?;
            t.memfd_entries.push(entry);
            t.memfd_inodes.insert(key, i);
            i
        }
    };
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_MEMFD,
        id,
        memfd: Some(pb::MemfdFileEntry {
            id,
            flags: if rw { libc::O_RDWR } else { libc::O_RDONLY } as u32,
            pos: 0,
            fown: fown0(),
            inode_id,
        }),
        ..Default::default()
    });
    Ok(id)
}

// ---- restore ----------------------------------------------------------------

/// One memfd inode read back: its entry and content pieces.
#[derive(Debug, Clone)]
pub struct Inode {
    pub entry: pb::MemfdInodeEntry,
    pub chunks: Vec<(u64, Vec<u8>)>,
    /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS), not a memfd.
    pub anon: bool,
}

/// Reads memfd.img and every content it points at, by inode id.
pub fn load(dir: &ImageDir) -> Result<HashMap<u32, Inode>> {
    let mut out = HashMap::new();
    if !dir.exists(image::names::MEMFD) {
        return Ok(out);
    }
    let inodes: Vec<pb::MemfdInodeEntry> = dir.read_image(image::names::MEMFD, Kind::MemfdInode)?;
    for e in inodes {
        let chunks = load_content(dir, e.shmid as u64)?;
        out.insert(
            e.inode_id as u32,
            Inode {
                entry: e,
                chunks,
                anon: false,
            },
        );
    }
    Ok(out)
}

/// The content pieces (file offset, bytes) of `pagemap-shmem-<shmid>.img`.
pub(crate) fn load_content(dir: &ImageDir, shmid: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    let pm = pagemap_name(shmid as u32);
    let (head, entries) = dir.read_pagemap(&pm)?;
    let pages_name = image::names::pages(head.pages_id);
    let data = if entries.is_empty() {
        Vec::new()
    } else {
        dir.read_bytes(&pages_name)?
    };
    let mut at = 0usize;
    let mut chunks = Vec::new();
    for pe in &entries {
        let len = (image::pages::entry_nr_pages(pe) * PAGE_SIZE) as usize;
        let Some(bytes) = data.get(at..at + len) else {
            bail!(
                "{}: {pm} needs {} bytes but it has {}",
                dir.path().join(&pages_name).display(),
                at + len,
                data.len()
            );
        };
        chunks.push((pe.vaddr, bytes.to_vec()));
        at += len;
    }
    Ok(chunks)
}

/// Creates a memfd inode and every description of it.
pub(crate) fn create(files: &HashMap<u32, pb::FileEntry>, ids: &[u32], ino: &Inode) -> Result<Vec<(u32, OwnedFd)>> {
    let e = &ino.entry;
    let sealable = !ino.anon && e.seals & libc::F_SEAL_SEAL as u32 == 0;
    let mut flags = libc::MFD_CLOEXEC;
    if sealable {
        flags |= libc::MFD_ALLOW_SEALING;
    }
    let mfd = if ino.anon {
        crate::sys::mmap::anon_shmem_fd(e.size)
            .with_context(|| format!("Cannot create {} bytes of shared memory", e.size))?
    } else {
        let cname = std::ffi::CString::new(e.name.as_str()).with_context(|| format!("memfd name {:?}", e.name))?;
        fdops::memfd_create(&cname, flags).with_context(|| format!("memfd_create({})", e.name))?
    };
    let file = std::fs::File::from(mfd);
    for (off, bytes) in &ino.chunks {
        let keep = bytes.len().min(e.size.saturating_sub(*off) as usize);
        file.write_all_at(&bytes[..keep], *off)
            .with_context(|| format!("Cannot write the content of memfd:{}", e.name))?;
    }
    file.set_len(e.size)
        .with_context(|| format!("Cannot size memfd:{}", e.name))?;
    let mfd: OwnedFd = file.into();
    if let Some(m) = e.mode {
        nix::sys::stat::fchmod(mfd.as_raw_fd(), Mode::from_bits_truncate(m & 0o7777)).context("fchmod")?;
    }
    let _ = nix::unistd::fchown(
        mfd.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(e.uid)),
        Some(nix::unistd::Gid::from_raw(e.gid)),
    );
    let mut out = Vec::new();
    for &id in ids {
        let m = files[&id]
            .memfd
            .as_ref()
            .with_context(|| format!("file id {id} has no memfd entry"))?;
        let acc = m.flags as i32 & libc::O_ACCMODE;
        let fl =
            OFlag::from_bits_truncate(acc | (m.flags as i32 & (libc::O_APPEND | libc::O_NONBLOCK)) | libc::O_CLOEXEC);
        let fd = nix::fcntl::open(format!("/proc/self/fd/{}", mfd.as_raw_fd()).as_str(), fl, Mode::empty())
            .with_context(|| format!("Cannot reopen memfd:{}", e.name))?;
        let fd = crate::sys::rawfd::own(fd);
        if m.pos != 0 {
            nix::unistd::lseek(fd.as_raw_fd(), m.pos as i64, nix::unistd::Whence::SeekSet).context("lseek")?;
        }
        out.push((id, fd));
    }
    if sealable && e.seals != 0 {
        // Last: F_SEAL_WRITE would forbid the content writes above.
        let all = SealFlag::from_bits_truncate(e.seals as i32);
        fcntl(mfd.as_raw_fd(), FcntlArg::F_ADD_SEALS(all)).with_context(|| format!("Cannot seal memfd:{}", e.name))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_links() {
        assert!(is_memfd("/memfd:wayland-shm (deleted)"));
        assert!(!is_memfd("/memfd:x"));
        assert!(!is_memfd("/tmp/memfd:x (deleted)"));
    }

    #[test]
    fn extents_skip_holes_and_align() {
        let c = std::ffi::CString::new("cryo-test").unwrap();
        let m = fdops::memfd_create(&c, libc::MFD_CLOEXEC).unwrap();
        let f = std::fs::File::from(m);
        f.set_len(1 << 20).unwrap();
        f.write_all_at(b"x", 5).unwrap();
        f.write_all_at(b"y", 512 * 1024 + 100).unwrap();
        assert_eq!(extents(&f, 1 << 20), vec![(0, 4096), (512 * 1024, 4096)]);
        let f2 = std::fs::File::from(fdops::memfd_create(&c, libc::MFD_CLOEXEC).unwrap());
        f2.write_all_at(b"abc", 0).unwrap();
        assert_eq!(extents(&f2, 3), vec![(0, 4096)]);
    }
}
