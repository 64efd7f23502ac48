//! File locks: flock, POSIX record and OFD locks held by the tree.
//!
//! Dump: `/proc/P/fdinfo/N` lists, as `lock:` lines in /proc/locks
//! format, the locks taken through that fd's open file description (and,
//! for POSIX locks, owned by P). Each lock becomes one
//! `file_lock_entry` in filelocks.img: flock and OFD locks once per
//! description (they belong to it), POSIX locks once per process and
//! range.
//!
//! Restore: each task takes its own locks right before the blob, after
//! every temporary fd is closed (a close of any fd of a file drops the
//! process's POSIX locks on it): flock, fcntl F_SETLK or F_OFD_SETLK on
//! the restored fd, never blocking. Leases (F_SETLEASE, shown as `LEASE
//! ACTIVE` lines) are kept the same way, once per description; a lease
//! being broken at dump time is refused.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use super::FileTable;
use crate::image::pb;

pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
pub const FL_OFD: u32 = 4;
/// A lease (F_SETLEASE) on an open file description (CRIU's FL_LEASE).
pub const FL_LEASE: u32 = 8;

/// One `lock:` line of fdinfo (the /proc/locks format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// FL_POSIX, FL_FLOCK or FL_OFD.
    pub flag: u32,
    /// F_RDLCK or F_WRLCK.
    pub write: bool,
    pub pid: i32,
    pub ino: u64,
    pub start: i64,
    /// 0: to the end of the file.
    pub len: i64,
}

/// Parses the value of a `lock:` fdinfo line, e.g.
/// `1: POSIX  ADVISORY  WRITE 1234 08:01:1311 0 EOF`.
pub fn parse_lock(val: &str) -> std::result::Result<Lock, String> {
    let w: Vec<&str> = val.split_whitespace().collect();
    let bad = |what: &str| format!("{what} in lock line {val:?}");
    if w.len() < 8 {
        return Err(bad("too few fields"));
    }
    if w[1] == "->" {
        return Err(bad("a waiter"));
    }
    let flag = match w[1] {
        "POSIX" => FL_POSIX,
        "FLOCK" => FL_FLOCK,
        "OFDLCK" => FL_OFD,
        "LEASE" => FL_LEASE,
        k => return Err(bad(&format!("unsupported lock class {k}"))),
    };
    match (flag, w[2]) {
        (FL_LEASE, "ACTIVE") => {}
        (FL_LEASE, m) => return Err(bad(&format!("a lease being broken ({m})"))),
        (_, "ADVISORY") => {}
        (_, m) => return Err(bad(&format!("unsupported mode {m}"))),
    }
    let write = match w[3] {
        "WRITE" => true,
        "READ" => false,
        t => return Err(bad(&format!("unsupported type {t}"))),
    };
    let pid: i32 = w[4].parse().map_err(|_| bad("bad pid"))?;
    let ino: u64 = w[5]
        .rsplit(':')
        .next()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| bad("bad inode"))?;
    let start: i64 = w[6].parse().map_err(|_| bad("bad start"))?;
    let len = if w[7] == "EOF" {
        0
    } else {
        let end: i64 = w[7].parse().map_err(|_| bad("bad end"))?;
        if end < start {
            return Err(bad("end before start"));
        }
        end - start + 1
    };
    Ok(Lock {
        flag,
        write,
        pid,
        ino,
        start,
        len,
    })
}

/// What has been recorded already: descriptions (flock, OFD) and POSIX
/// (pid, inode, start, len).
#[derive(Default)]
pub(crate) struct Seen {
    descs: HashSet<(u32, u32)>,
    posix: HashSet<(i32, u64, i64, i64)>,
}

impl FileTable {
    /// Records the locks fd `fd` of `pid` (description `id`) shows in its
    /// fdinfo lines.
    pub(crate) fn note_locks(&mut self, pid: i32, fd: i32, id: u32, lines: &[&str]) -> Result<()> {
        for l in lines {
            let k = parse_lock(l).map_err(|e| anyhow::anyhow!("pid {pid} fd {fd}: {e}"))?;
            let fresh = match k.flag {
                FL_POSIX => self.lock_seen.posix.insert((pid, k.ino, k.start, k.len)),
                f => self.lock_seen.descs.insert((id, f)),
            };
            if fresh {
                self.locks.push(pb::FileLockEntry {
                    flag: k.flag,
                    r#type: if k.write { libc::F_WRLCK } else { libc::F_RDLCK } as u32,
                    pid,
                    fd,
                    start: k.start,
                    len: k.len,
                });
            }
        }
        Ok(())
    }
}

impl FileTable {
    /// How many locks are recorded so far.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Gives the locks recorded from index `from` on the task's pid as the
    /// images know it (its pid in its own namespace).
    pub fn relabel_locks(&mut self, from: usize, vpid: i32) {
        for l in &mut self.locks[from..] {
            l.pid = vpid;
        }
    }
}

/// Takes the locks of the task `pid` on its restored fds.
pub fn restore(locks: &[pb::FileLockEntry], pid: i32) -> Result<()> {
    for l in locks.iter().filter(|l| l.pid == pid) {
        let write = l.r#type == libc::F_WRLCK as u32;
        if !write && l.r#type != libc::F_RDLCK as u32 {
            bail!(
                "pid {pid} fd {}: lock type {} is not F_RDLCK or F_WRLCK",
                l.fd,
                l.r#type
            );
        }
        let what = || {
            format!(
                "pid {pid} fd {}: cannot take its {} lock at {}+{} (another process holds it?)",
                l.fd,
                match l.flag {
                    FL_POSIX => "POSIX",
                    FL_FLOCK => "flock",
                    FL_LEASE => "lease",
                    _ => "OFD",
                },
                l.start,
                l.len
            )
        };
        match l.flag {
            FL_FLOCK => {
                crate::sys::fdops::flock(l.fd, if write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB)
                    .with_context(what)?
            }
            FL_POSIX | FL_OFD => {
                let cmd = if l.flag == FL_POSIX {
                    libc::F_SETLK
                } else {
                    libc::F_OFD_SETLK
                };
                let ty = if write { libc::F_WRLCK } else { libc::F_RDLCK };
                crate::sys::fdops::set_lock(l.fd, cmd, ty as i16, l.start, l.len).with_context(what)?
            }
            // The lease belongs to the description; its break signal goes
            // to the process that sets it, as when the tree set it.
            FL_LEASE => crate::sys::fdops::set_lease(l.fd, if write { libc::F_WRLCK } else { libc::F_RDLCK })
                .with_context(what)?,
            f => bail!("pid {pid} fd {}: unknown lock flag {f}", l.fd),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let l = parse_lock("1: POSIX  ADVISORY  WRITE 1234 08:01:1311 100 199").unwrap();
        assert_eq!(
            l,
            Lock {
                flag: FL_POSIX,
                write: true,
                pid: 1234,
                ino: 1311,
                start: 100,
                len: 100
            }
        );
        let f = parse_lock("2: FLOCK  ADVISORY  READ 77 00:2a:9 0 EOF").unwrap();
        assert_eq!((f.flag, f.write, f.ino, f.start, f.len), (FL_FLOCK, false, 9, 0, 0));
        let o = parse_lock("3: OFDLCK ADVISORY  WRITE -1 fd:00:5 0 0").unwrap();
        assert_eq!((o.flag, o.pid, o.len), (FL_OFD, -1, 1));
        let l = parse_lock("4: LEASE  ACTIVE    READ 5 08:01:3 0 EOF").unwrap();
        assert_eq!((l.flag, l.write, l.pid, l.ino), (FL_LEASE, false, 5, 3));
        assert!(parse_lock("4: LEASE  BREAKING  READ 5 08:01:3 0 EOF").is_err());
        assert!(parse_lock("4: POSIX  MANDATORY  READ 5 08:01:3 0 EOF").is_err());
        assert!(parse_lock("5: POSIX  ADVISORY  WRITE 1 08:01:3 9 2").is_err());
        assert!(parse_lock("6: POSIX").is_err());
    }
}
