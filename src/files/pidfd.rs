//! pidfds of processes (or threads) of the dumped tree.
//!
//! Dump: `pidfd_entry` with the target's pid from fdinfo (`Pid:`, in
//! cryo's namespace until [`FileTable::resolve_pidfds`] turns it into the
//! tree's own pid once every task is known; -1 for a reaped task), the
//! status flags and the pidfs inode. A pidfd of a process outside the
//! tree is refused.
//!
//! Restore: the fd restore parks a placeholder (/dev/null) at the fd;
//! right before the blob, when the target exists (the tree is created
//! concurrently, so it is waited for), the task opens a pidfd with
//! pidfd_open and puts it at the fd. A reaped target gets the pidfd of a
//! helper child that is reaped at once. Holders of one pidfd description
//! get one description each.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use super::{fown0, FdCtx, FileTable, FD_PIDFD};
use crate::image::pb;
use crate::sys::clone as sysc;

/// PIDFD_THREAD (O_EXCL): a pidfd of one thread.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;
/// How long a task waits for the target of its pidfd to be created.
const TARGET_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn dump(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let target: i32 = f
        .info
        .get("Pid")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("pid {pid} fd {fd}: pidfd without a Pid line"))?;
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_PIDFD,
        id,
        pidfd: Some(pb::PidfdEntry {
            id,
            ino: f.info.ino,
            flags: f.flags,
            nspid: target,
            fown: fown0(),
        }),
        ..Default::default()
    });
    t.pidfd_holders.push((id, pid, fd));
    Ok(id)
}

impl FileTable {
    /// Turns the targets of the pidfds (host pids) into pids of the tree,
    /// given every task and thread of the tree (host → tree pid).
    pub fn resolve_pidfds(&mut self, tree: &HashMap<i32, i32>) -> Result<()> {
        self.resolve_owners(tree);
        self.tty_state.translate(tree);
        for (id, holder, fd) in std::mem::take(&mut self.pidfd_holders) {
            let Some(p) = self
                .entries
                .iter_mut()
                .find(|e| e.id == id)
                .and_then(|e| e.pidfd.as_mut())
            else {
                continue;
            };
            if p.nspid == -1 {
                continue;
            }
            match tree.get(&p.nspid) {
                Some(&v) => p.nspid = v,
                None => bail!(
                    "pid {holder} fd {fd}: a pidfd of pid {}, which is outside the dumped tree",
                    p.nspid
                ),
            }
        }
        Ok(())
    }
}

/// The pidfd of a task that is gone: a child that exits at once, reaped.
fn dead_pidfd(flags: u32) -> Result<OwnedFd> {
    let extra = sysc::Clone3Extra {
        want_pidfd: true,
        ..Default::default()
    };
    let (child, fd) = match sysc::clone3_fork(0, &[], libc::SIGCHLD as u64, extra)
        .context("Cannot create the stand-in of a reaped task")?
    {
        (nix::unistd::ForkResult::Child, _) => crate::sys::rawfd::exit_now(0),
        (nix::unistd::ForkResult::Parent { child }, Some(fd)) => (child, fd),
        (nix::unistd::ForkResult::Parent { .. }, None) => bail!("clone3 gave no pidfd"),
    };
    let _ = nix::sys::wait::waitpid(child, None);
    if flags & libc::O_NONBLOCK as u32 != 0 {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
    }
    Ok(fd)
}

/// Replaces the placeholder at every pidfd of a task by its pidfd.
pub fn restore(files: &HashMap<u32, pb::FileEntry>, fds: &[pb::FdinfoEntry], pid: i32) -> Result<()> {
    for f in fds.iter().filter(|f| f.r#type == FD_PIDFD) {
        let p = files
            .get(&f.id)
            .and_then(|e| e.pidfd.as_ref())
            .with_context(|| format!("file id {} has no pidfd entry", f.id))?;
        let open_flags = p.flags & (libc::O_NONBLOCK as u32 | PIDFD_THREAD);
        let fd = if p.nspid == -1 {
            dead_pidfd(p.flags)?
        } else {
            let t0 = Instant::now();
            loop {
                match sysc::pidfd_open_flags(Pid::from_raw(p.nspid), open_flags) {
                    Ok(fd) => break fd,
                    Err(nix::errno::Errno::ESRCH) if t0.elapsed() < TARGET_WAIT => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("pid {pid} fd {}: cannot open a pidfd of pid {}", f.fd, p.nspid))
                    }
                }
            }
        };
        let flags = if f.flags & 1 != 0 { libc::O_CLOEXEC } else { 0 };
        nix::unistd::dup3(
            fd.as_raw_fd(),
            f.fd as RawFd,
            nix::fcntl::OFlag::from_bits_truncate(flags),
        )
        .with_context(|| format!("pid {pid}: dup3 of a pidfd to fd {}", f.fd))?;
    }
    Ok(())
}
