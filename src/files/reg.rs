//! Paths: regular files, directories, device nodes, O_PATH descriptors,
//! and ghost files (regular files that were open but unlinked at dump
//! time).
//!
//! A ghost's content is saved in `ghost-file-<N in hex>.img` and tied to
//! its reg entries by `remap-fpath.img` (orig_id = the reg id, remap_id =
//! N, type GHOST), as CRIU does. At restore the ghost is recreated once
//! (at its old path, then unlinked at once, so /proc shows the same
//! "PATH (deleted)"; or as an O_TMPFILE when that path is taken), and
//! every description of it is opened through `/proc/self/fd/N`.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Whence;

use super::{fown0, ExtraImage, FdCtx, FileTable, FD_REG};
use crate::image::{self, pb, ImageReader, ImageWriter, Kind};

const DELETED: &str = " (deleted)";
/// Ghosts at least this big are stored in chunks (holes are skipped).
const CHUNKS_FROM: u64 = 3 * 4096;
/// The largest ghost file cryo saves.
const GHOST_LIMIT: u64 = 1 << 30;

/// Dumps a path-like fd (regular file, directory, device, O_PATH);
/// returns its file id.
pub(crate) fn dump(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let md =
        f.md.with_context(|| format!("pid {pid} fd {fd}: cannot stat {}", f.link))?;
    let deleted = f.link.ends_with(DELETED) && md.nlink() == 0;
    let name = if deleted {
        &f.link[..f.link.len() - DELETED.len()]
    } else {
        f.link
    };
    if !f.link.starts_with('/') {
        bail!("pid {pid} fd {fd}: unsupported file kind ({})", f.link);
    }
    if f.link.ends_with(DELETED) && !deleted && fs::symlink_metadata(f.link).is_err() {
        bail!(
            "pid {pid} fd {fd}: {} was unlinked but still has other hard links; not supported",
            f.link
        );
    }
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_REG,
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags: f.flags,
            pos: f.info.pos,
            fown: fown0(),
            name: name.to_string(),
            size: md.is_file().then_some(md.len()),
            mode: Some(md.mode()),
            ..Default::default()
        }),
        ..Default::default()
    });
    if deleted {
        if !md.is_file() {
            bail!(
                "pid {pid} fd {fd}: {} is a deleted non-regular file; not supported",
                f.link
            );
        }
        add_ghost(t, id, md, &f.proc_path())
            .with_context(|| format!("pid {pid} fd {fd}: cannot save the deleted file {name}"))?;
    }
    Ok(id)
}

/// A file id for a deleted file that `pid` maps or runs but need not hold
/// open: `link` is what /proc shows ("PATH (deleted)"), `proc_path` a
/// /proc link that reaches the inode (/proc/PID/map_files/A-B or
/// /proc/PID/exe), `flags` the open mode a mapping of it needs. The
/// content is saved as a ghost file, once per inode; one id per (inode,
/// flags), shared by every mapping and process.
pub(crate) fn dump_unlinked_mapping(
    t: &mut FileTable,
    pid: i32,
    link: &str,
    proc_path: &str,
    flags: u32,
) -> Result<u32> {
    let name = link.strip_suffix(DELETED).unwrap_or(link);
    let md = fs::metadata(proc_path).with_context(|| format!("pid {pid}: cannot stat {proc_path} ({link})"))?;
    if !md.is_file() {
        bail!("pid {pid} maps {link}, a deleted non-regular file; not supported");
    }
    if md.nlink() != 0 {
        bail!("pid {pid} maps {link}, which was unlinked but still has other hard links; not supported");
    }
    let key = (md.dev(), md.ino(), flags);
    if let Some(&id) = t.mapped_ghosts.get(&key) {
        return Ok(id);
    }
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_REG,
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags,
            pos: 0,
            fown: fown0(),
            name: name.to_string(),
            size: Some(md.len()),
            mode: Some(md.mode()),
            ..Default::default()
        }),
        ..Default::default()
    });
    add_ghost(t, id, &md, proc_path)
        .with_context(|| format!("pid {pid}: cannot save the deleted mapped file {name}"))?;
    t.mapped_ghosts.insert(key, id);
    Ok(id)
}

/// Ties REG entry `id` to the ghost file of inode `md` (saved from
/// `proc_path` the first time that inode is seen).
fn add_ghost(t: &mut FileTable, id: u32, md: &fs::Metadata, proc_path: &str) -> Result<()> {
    let remap_id = match t.ghost_ids.get(&(md.dev(), md.ino())) {
        Some(&g) => g,
        None => {
            let g = t.ghost_ids.len() as u32 + 1;
            let bytes = ghost_image(proc_path, md)?;
            t.extra_images.push(ExtraImage {
                name: image::names::ghost_file(g),
                bytes,
            });
            t.ghost_ids.insert((md.dev(), md.ino()), g);
            g
        }
    };
    t.remaps.push(pb::RemapFilePathEntry {
        orig_id: id,
        remap_id,
        remap_type: Some(pb::RemapType::Ghost as i32),
    });
    Ok(())
}

/// The bytes of a ghost-file image for the deleted file reached through
/// the /proc link `path`.
fn ghost_image(path: &str, md: &fs::Metadata) -> Result<Vec<u8>> {
    let size = md.len();
    if md.blocks() * 512 > GHOST_LIMIT && size > GHOST_LIMIT {
        bail!("it holds {size} bytes (the limit is {GHOST_LIMIT})");
    }
    let file = fs::File::open(path).with_context(|| format!("Cannot open {path}"))?;
    let chunks = size >= CHUNKS_FROM;
    let head = pb::GhostFileEntry {
        uid: md.uid(),
        gid: md.gid(),
        mode: md.mode(),
        dev: Some(md.dev() as u32),
        ino: Some(md.ino()),
        rdev: None,
        atim: Some(pb::Timeval {
            tv_sec: md.atime() as u64,
            tv_usec: (md.atime_nsec() / 1000) as u64,
        }),
        mtim: Some(pb::Timeval {
            tv_sec: md.mtime() as u64,
            tv_usec: (md.mtime_nsec() / 1000) as u64,
        }),
        chunks: chunks.then_some(true),
        size: chunks.then_some(size),
        symlnk_target: None,
    };
    let mut w = ImageWriter::new(Kind::GhostFile);
    w.write_entry(&head)?;
    if !chunks {
        let mut buf = vec![0u8; size as usize];
        read_exact_at(&file, &mut buf, 0)?;
        w.write_raw(&buf);
        return Ok(w.into_bytes());
    }
    for (off, len) in data_extents(&file, size)? {
        w.write_entry(&pb::GhostChunkEntry { len, off })?;
        let mut buf = vec![0u8; len as usize];
        read_exact_at(&file, &mut buf, off)?;
        w.write_raw(&buf);
    }
    Ok(w.into_bytes())
}

fn read_exact_at(file: &fs::File, buf: &mut [u8], off: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, off)
        .with_context(|| format!("short read of {} bytes at {off}", buf.len()))
}

/// (offset, length) of the data regions of a file, by SEEK_DATA/SEEK_HOLE
/// (the whole file when the filesystem does not tell).
fn data_extents(file: &fs::File, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match nix::unistd::lseek(fd, at as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return Ok(vec![(0, size)]),
        };
        let end = match nix::unistd::lseek(fd, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(size),
            Err(_) => size,
        };
        if end > start {
            out.push((start, end - start));
        }
        at = end.max(start + 1);
    }
    Ok(out)
}

// ---- restore ----------------------------------------------------------------

/// A ghost file read back from its image.
#[derive(Debug, Clone)]
pub struct Ghost {
    pub entry: pb::GhostFileEntry,
    /// (offset, bytes) pieces of content.
    pub chunks: Vec<(u64, Vec<u8>)>,
}

/// Parses a ghost-file image.
pub fn parse_ghost(file: &str, data: &[u8]) -> crate::image::Result<Ghost> {
    let mut r = ImageReader::new(file, data, Kind::GhostFile)?;
    let entry: pb::GhostFileEntry = r.read_one()?;
    let mut chunks = Vec::new();
    if entry.chunks.unwrap_or(false) {
        while let Some(c) = r.next_entry::<pb::GhostChunkEntry>()? {
            let bytes = r.read_raw(c.len as usize)?.to_vec();
            chunks.push((c.off, bytes));
        }
    } else {
        let rest = data.len() - r.offset();
        chunks.push((0, r.read_raw(rest)?.to_vec()));
    }
    Ok(Ghost { entry, chunks })
}

/// Open flags that are replayed; creation flags are never replayed.
const REPLAY_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_PATH
    | libc::O_NOFOLLOW
    | libc::O_SYNC
    | libc::O_DSYNC;

/// Opens the description of REG entry `fe`: by its path, or, for a ghost,
/// through `/proc/self/fd/<ghost>`.
pub(crate) fn open(fe: &pb::FileEntry, ghost: Option<RawFd>) -> Result<OwnedFd> {
    let reg = fe
        .reg
        .as_ref()
        .with_context(|| format!("file id {} has no reg entry", fe.id))?;
    let mut flags = (reg.flags as i32 & REPLAY_FLAGS) | libc::O_NOCTTY | libc::O_CLOEXEC;
    let path = match ghost {
        Some(g) => {
            // Through the magic link: never O_NOFOLLOW.
            flags &= !libc::O_NOFOLLOW;
            format!("/proc/self/fd/{g}")
        }
        None => reg.name.clone(),
    };
    let fd = nix::fcntl::open(path.as_str(), OFlag::from_bits_truncate(flags), Mode::empty())
        .with_context(|| format!("Cannot open {}", reg.name))?;
    let owned = crate::sys::rawfd::own(fd);
    if reg.pos != 0 && flags & libc::O_PATH == 0 {
        match nix::unistd::lseek(owned.as_raw_fd(), reg.pos as i64, Whence::SeekSet) {
            Ok(_) | Err(nix::errno::Errno::ESPIPE) => {}
            Err(e) => return Err(e).with_context(|| format!("lseek {} to {}", reg.name, reg.pos)),
        }
    }
    Ok(owned)
}

/// Refuses a regular file whose size changed since the dump (files open
/// O_WRONLY|O_APPEND, like logs, may grow). Missing paths are reported
/// here too, before anything is created. `root`: the tree's root (a
/// container's rootfs) the image's paths are relative to; a path missing
/// there may be on a mount the restore rebuilds (a container's /dev), so
/// it is left to the open in the restored task, which names it.
pub(crate) fn check_size(reg: &pb::RegFileEntry, root: Option<&std::path::Path>) -> Result<()> {
    let md = match root {
        Some(r) => match fs::metadata(r.join(reg.name.trim_start_matches('/'))) {
            Ok(md) => md,
            Err(_) => {
                tracing::debug!(
                    "{} is not under the root {} yet: checked at open",
                    reg.name,
                    r.display()
                );
                return Ok(());
            }
        },
        None => fs::metadata(&reg.name).with_context(|| format!("Cannot find {}", reg.name))?,
    };
    let append_only = reg.flags as i32 & libc::O_ACCMODE == libc::O_WRONLY && reg.flags as i32 & libc::O_APPEND != 0;
    match reg.size {
        Some(s) if md.is_file() && !append_only && md.len() != s => bail!(
            "{} changed size since the dump ({s} bytes then, {} now); restore with --skip-file-check to accept that",
            reg.name,
            md.len()
        ),
        _ => Ok(()),
    }
}

/// Recreates a ghost file for the path `name`; returns an O_RDWR fd of it,
/// already unlinked.
pub(crate) fn make_ghost(g: &Ghost, name: &str) -> Result<OwnedFd> {
    let rw = OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = match nix::fcntl::open(
        name,
        rw | OFlag::O_CREAT | OFlag::O_EXCL,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => {
            let fd = crate::sys::rawfd::own(fd);
            nix::unistd::unlink(name).with_context(|| format!("Cannot unlink the recreated ghost {name}"))?;
            fd
        }
        Err(_) => {
            let parent = std::path::Path::new(name)
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| "/".into());
            let tmp = [
                parent.as_path(),
                std::path::Path::new("/tmp"),
                std::path::Path::new("/dev/shm"),
            ]
            .into_iter()
            .find_map(|d| nix::fcntl::open(d, rw | OFlag::O_TMPFILE, Mode::from_bits_truncate(0o600)).ok())
            .with_context(|| format!("Cannot recreate the deleted file {name} (no room for a temporary file)"))?;
            crate::sys::rawfd::own(tmp)
        }
    };
    let file = fs::File::from(fd);
    {
        use std::os::unix::fs::FileExt;
        for (off, bytes) in &g.chunks {
            file.write_all_at(bytes, *off)
                .with_context(|| format!("Cannot write the content of the deleted file {name}"))?;
        }
    }
    if let Some(size) = g.entry.size {
        file.set_len(size)
            .with_context(|| format!("Cannot size the deleted file {name}"))?;
    }
    (&file).flush().ok();
    let e = &g.entry;
    let fd: OwnedFd = file.into();
    nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(e.mode & 0o7777))
        .with_context(|| format!("chmod of the deleted file {name}"))?;
    let _ = nix::unistd::fchown(
        fd.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(e.uid)),
        Some(nix::unistd::Gid::from_raw(e.gid)),
    );
    if let (Some(a), Some(m)) = (&e.atim, &e.mtim) {
        let ts = |t: &pb::Timeval| nix::sys::time::TimeSpec::new(t.tv_sec as i64, (t.tv_usec * 1000) as i64);
        let _ = nix::sys::stat::futimens(fd.as_raw_fd(), &ts(a), &ts(m));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_images_parse_both_ways() {
        let e = pb::GhostFileEntry {
            uid: 1,
            gid: 2,
            mode: 0o100644,
            ..Default::default()
        };
        let mut w = ImageWriter::new(Kind::GhostFile);
        w.write_entry(&e).unwrap();
        w.write_raw(b"hello ghost");
        let g = parse_ghost("g", &w.into_bytes()).unwrap();
        assert_eq!(g.chunks, vec![(0, b"hello ghost".to_vec())]);

        let e = pb::GhostFileEntry {
            chunks: Some(true),
            size: Some(1 << 20),
            ..e
        };
        let mut w = ImageWriter::new(Kind::GhostFile);
        w.write_entry(&e).unwrap();
        w.write_entry(&pb::GhostChunkEntry { len: 3, off: 4096 }).unwrap();
        w.write_raw(b"abc");
        w.write_entry(&pb::GhostChunkEntry { len: 2, off: 9000 }).unwrap();
        w.write_raw(b"de");
        let b = w.into_bytes();
        let g = parse_ghost("g", &b).unwrap();
        assert_eq!(g.chunks, vec![(4096, b"abc".to_vec()), (9000, b"de".to_vec())]);
        assert!(parse_ghost("g", &b[..b.len() - 1]).is_err());
    }

    #[test]
    fn extents_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = fs::File::create(&p).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"x", 1 << 20).unwrap();
        f.set_len(2 << 20).unwrap();
        let f = fs::File::open(&p).unwrap();
        let ex = data_extents(&f, 2 << 20).unwrap();
        let total: u64 = ex.iter().map(|e| e.1).sum();
        assert!(ex.iter().any(|&(o, l)| o <= 1 << 20 && (1 << 20) < o + l), "{ex:?}");
        assert!(total < 2 << 20, "holes not skipped: {ex:?}");
    }
}
