//! inotify instances and their watches.
//!
//! Dump: fdinfo lists each watch (`inotify wd:… ino:… sdev:… mask:…
//! ignored_mask:… fhandle-bytes:… fhandle-type:… f_handle:…`, all hex).
//! The watched object is found again from its file handle
//! (open_by_handle_at on the mount of its device) and its path stored in
//! the handle entry next to the handle.
//!
//! Restore: inotify_init1, then the watches in wd order. Watch numbers are
//! handed out one after the other, so a watch is added and removed again
//! until it gets its old number; the IN_IGNORED events this queues are
//! drained at the end (queued events are not restored: CRIU drops them
//! too).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::{fown0, FdCtx, FileTable, FD_INOTIFY};
use crate::image::pb;
use crate::sys::fdops;

/// One watch from fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub wd: u32,
    pub ino: u64,
    pub sdev: u32,
    pub mask: u32,
    pub ignored_mask: u32,
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

/// Parses the value of an fdinfo `inotify` line.
pub fn parse_watch(v: &str) -> Option<Watch> {
    let mut w = Watch {
        wd: 0,
        ino: 0,
        sdev: 0,
        mask: 0,
        ignored_mask: 0,
        handle_type: 0,
        handle: Vec::new(),
    };
    let (mut have_wd, mut have_mask) = (false, false);
    let mut hbytes = None;
    for tok in v.split_whitespace() {
        let (k, val) = tok.split_once(':')?;
        let hex = || u64::from_str_radix(val, 16).ok();
        match k {
            "wd" => {
                w.wd = hex()? as u32;
                have_wd = true;
            }
            "ino" => w.ino = hex()?,
            "sdev" => w.sdev = hex()? as u32,
            "mask" => {
                w.mask = hex()? as u32;
                have_mask = true;
            }
            "ignored_mask" => w.ignored_mask = hex()? as u32,
            "fhandle-bytes" => hbytes = Some(hex()? as usize),
            "fhandle-type" => w.handle_type = hex()? as i32,
            "f_handle" => {
                if val.len() % 2 != 0 {
                    return None;
                }
                w.handle = (0..val.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&val[i..i + 2], 16).ok())
                    .collect::<Option<_>>()?;
            }
            _ => {}
        }
    }
    if hbytes.is_some_and(|n| n != w.handle.len()) {
        return None;
    }
    (have_wd && have_mask).then_some(w)
}

/// The handle bytes as CRIU's u64 words (at least 16, zero-padded).
fn handle_words(b: &[u8]) -> Vec<u64> {
    let mut words: Vec<u64> = b
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect();
    while words.len() < 16 {
        words.push(0);
    }
    words
}

/// The mount point of device `sdev` (kernel encoding: major << 20 | minor).
fn mount_of(pid: i32, sdev: u32) -> Result<String> {
    let (major, minor) = (sdev >> 20, sdev & 0xfffff);
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).context("read mountinfo")?;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[2] == format!("{major}:{minor}") {
            return Ok(f[4].to_string());
        }
    }
    bail!("no mount of device {major}:{minor}")
}

/// The path of the watched object, from its file handle (the mount fd
/// must not be O_PATH: open_by_handle_at refuses those).
fn resolve(pid: i32, w: &Watch) -> Result<String> {
    let mnt = mount_of(pid, w.sdev)?;
    let mfd = nix::fcntl::open(
        mnt.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("Cannot open the mount point {mnt}"))?;
    let mfd = crate::sys::rawfd::own(mfd);
    let fd = fdops::open_by_handle(mfd.as_fd(), w.handle_type, &w.handle, libc::O_PATH | libc::O_CLOEXEC)
        .context("open_by_handle_at")?;
    let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).context("readlink")?;
    let p = p.display().to_string();
    if p.ends_with(" (deleted)") {
        bail!("the watched file {p} was deleted");
    }
    Ok(p)
}

pub(crate) fn dump(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let id = t.new_id();
    let mut wds = Vec::new();
    for v in f.info.all("inotify") {
        let w = parse_watch(v)
            .with_context(|| format!("pid {} fd {}: cannot parse the inotify watch {v:?}", f.pid, f.fd))?;
        let path = resolve(f.pid, &w).with_context(|| format!("pid {} fd {}: inotify watch {}", f.pid, f.fd, w.wd))?;
        wds.push(pb::InotifyWdEntry {
            id,
            i_ino: w.ino,
            mask: w.mask,
            ignored_mask: w.ignored_mask,
            s_dev: w.sdev,
            wd: w.wd,
            f_handle: pb::FhEntry {
                bytes: w.handle.len() as u32,
                r#type: w.handle_type as u32,
                handle: handle_words(&w.handle),
                path: Some(path),
                mnt_id: None,
            },
        });
    }
    t.entries.push(pb::FileEntry {
        r#type: FD_INOTIFY,
        id,
        ify: Some(pb::InotifyFileEntry {
            id,
            flags: f.flags,
            fown: fown0(),
            wd: wds,
        }),
        ..Default::default()
    });
    Ok(id)
}

// ---- restore ----------------------------------------------------------------

pub(crate) fn create(e: &pb::InotifyFileEntry) -> Result<OwnedFd> {
    let fd = fdops::inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK).context("inotify_init1")?;
    let mut wds: Vec<&pb::InotifyWdEntry> = e.wd.iter().collect();
    wds.sort_by_key(|w| w.wd);
    for w in wds {
        let path = w
            .f_handle
            .path
            .as_deref()
            .with_context(|| format!("inotify watch {} has no path", w.wd))?;
        let c = std::ffi::CString::new(path).context("path")?;
        let mask = w.mask | libc::IN_DONT_FOLLOW;
        loop {
            let got = fdops::inotify_add_watch(fd.as_fd(), &c, mask).with_context(|| format!("Cannot watch {path}"))?;
            if got as u32 == w.wd {
                break;
            }
            if got as u32 > w.wd {
                bail!("inotify watch {path} got number {got} past its number {}", w.wd);
            }
            fdops::inotify_rm_watch(fd.as_fd(), got).context("inotify_rm_watch")?;
        }
    }
    // Drop the IN_IGNORED events of the removals.
    let mut buf = [0u8; 4096];
    while matches!(nix::unistd::read(fd.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
    if e.flags & libc::O_NONBLOCK as u32 == 0 {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).context("F_SETFL")?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines() {
        let w = parse_watch("wd:1a ino:9920b1 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:b1209900385525c6")
            .unwrap();
        assert_eq!(w.wd, 0x1a);
        assert_eq!((w.ino, w.sdev, w.mask, w.handle_type), (0x9920b1, 0xfe0_0000, 0x300, 1));
        assert_eq!(w.handle, vec![0xb1, 0x20, 0x99, 0x00, 0x38, 0x55, 0x25, 0xc6]);
        assert!(
            parse_watch("wd:1 mask:2 fhandle-bytes:4 f_handle:0011").is_none(),
            "length mismatch"
        );
        assert!(parse_watch("ino:1 mask:2").is_none());
        assert_eq!(handle_words(&[1, 0, 0, 0, 0, 0, 0, 0, 2]).len(), 16);
    }

    #[test]
    fn live_watch_resolves_to_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let fd = fdops::inotify_init(libc::IN_CLOEXEC).unwrap();
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let wd = fdops::inotify_add_watch(fd.as_fd(), &c, libc::IN_CREATE).unwrap();
        let info = crate::proc::fdinfo::read(std::process::id(), fd.as_raw_fd()).unwrap();
        let w = parse_watch(info.get("inotify").unwrap()).unwrap();
        assert_eq!(w.wd as i32, wd);
        if nix::unistd::geteuid().is_root() {
            let p = resolve(std::process::id() as i32, &w).unwrap();
            assert_eq!(
                std::fs::canonicalize(p).unwrap(),
                std::fs::canonicalize(dir.path()).unwrap()
            );
        }
    }
}
