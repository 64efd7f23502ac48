//! The owner of an open file description (F_SETOWN / F_SETOWN_EX), its
//! signal (F_SETSIG) and O_ASYNC: who gets SIGIO (or the chosen signal)
//! when I/O is possible, and who gets SIGURG or a lease-break signal.
//!
//! Dump: each description seen for the first time is asked F_GETOWN_EX
//! and F_GETSIG (through a pidfd_getfd copy); a non-zero answer goes into
//! the `fown` of its typed entry (pid_type = F_OWNER_TID/PID/PGRP), with
//! the owner's pid as the tree sees it. An owner outside the tree cannot
//! come back: the owner is dropped with a warning.
//!
//! Restore: O_ASYNC is set by the task itself before its blob (the
//! signal's si_fd is the fd number it was set through). Owners may be any
//! task of the tree, so they are set once every task exists, by the
//! engine, while the tasks wait in the restorer: it takes each such fd
//! with pidfd_getfd and sets F_SETSIG and F_SETOWN_EX (with the owner's
//! host pid). The owner's credentials become the engine's (root), which
//! may signal any restored task.

use std::collections::HashMap;
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::FileTable;
use crate::image::pb;
use crate::sys::{clone as sysc, fdops};

/// What was read for a description, with the owner's host pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub id: u32,
    pub kind: i32,
    pub pid: i32,
    pub sig: i32,
}

/// The `fown` of a typed file entry (FIFOs keep theirs in the REG entry
/// of their path, which is shared: not handled).
pub fn fown_mut(fe: &mut pb::FileEntry) -> Option<&mut pb::FownEntry> {
    if let Some(x) = fe.reg.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.pipe.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.usk.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.tty.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.efd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.epfd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.sgfd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.tfd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.ify.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = fe.memfd.as_mut() {
        return Some(&mut x.fown);
    }
    fe.pidfd.as_mut().map(|x| &mut x.fown)
}

/// The `fown` and status flags of a typed file entry.
pub fn fown_and_flags(fe: &pb::FileEntry) -> Option<(&pb::FownEntry, u32)> {
    if let Some(x) = &fe.reg {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.pipe {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.usk {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.tty {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.efd {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.epfd {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.sgfd {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.tfd {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.ify {
        return Some((&x.fown, x.flags));
    }
    if let Some(x) = &fe.memfd {
        return Some((&x.fown, x.flags));
    }
    fe.pidfd.as_ref().map(|x| (&x.fown, x.flags))
}

impl FileTable {
    /// Reads the owner of description `id` (fd `fd` of `pid`).
    pub(crate) fn note_owner(&mut self, pid: i32, fd: i32, id: u32) -> Result<()> {
        let Ok(dup) = self.dup_fd(pid, fd) else {
            return Ok(());
        };
        // O_PATH descriptions answer EBADF: they have no owner.
        let (Ok((kind, opid)), Ok(sig)) = (fdops::get_owner(dup.as_fd()), fdops::get_sig(dup.as_fd())) else {
            debug!("pid {pid} fd {fd}: no owner to read");
            return Ok(());
        };
        if opid != 0 || sig != 0 {
            self.owners.push(Owner {
                id,
                kind,
                pid: opid,
                sig,
            });
        }
        Ok(())
    }

    /// Writes the owners into the entries, with pids as the tree sees
    /// them (`tree`: host pid → pid in the tree's namespace).
    pub(crate) fn resolve_owners(&mut self, tree: &HashMap<i32, i32>) {
        for o in std::mem::take(&mut self.owners) {
            let vpid = if o.pid == 0 {
                Some(0)
            } else {
                tree.get(&o.pid).copied().filter(|&v| v > 0)
            };
            let Some(vpid) = vpid else {
                warn!(
                    "file id {}: its owner (pid {}) is outside the dumped tree; the owner is not kept",
                    o.id, o.pid
                );
                continue;
            };
            if let Some(f) = self.entries.iter_mut().find(|e| e.id == o.id).and_then(fown_mut) {
                f.pid_type = o.kind as u32;
                f.pid = vpid as u32;
                f.signum = o.sig as u32;
            }
        }
    }
}

/// Host pids of the restored tasks by their pid in the tree, from the
/// process `top` down (the namespace init or the restored root).
fn host_pids(top: i32) -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let mut queue = vec![top];
    while let Some(p) = queue.pop() {
        if let Ok(st) = crate::proc::status::read(p as u32) {
            if let Some(&ns) = st.nspid.last() {
                out.insert(ns as i32, p);
            }
        }
        for t in crate::proc::threads(p as u32).unwrap_or_default() {
            for c in crate::proc::children(p as u32, t).unwrap_or_default() {
                queue.push(c as i32);
            }
        }
    }
    out
}

/// In a restored task before its blob: O_ASYNC on its fds that had it,
/// set through the task's own fd number (the signal's si_fd is the number
/// the flag was set through), by the first task in tree order that has
/// the description.
pub(crate) fn set_async(plan: &crate::restore::Plan, pid: i32, fds: &[pb::FdinfoEntry]) -> Result<()> {
    for f in fds {
        let Some((_, flags)) = fown_and_flags(&plan.files[&f.id]) else {
            continue;
        };
        if flags & libc::O_ASYNC as u32 == 0 {
            continue;
        }
        let first = plan
            .tasks
            .iter()
            .filter(|x| x.zombie.is_none())
            .find(|x| x.fds.iter().any(|y| y.id == f.id))
            .map(|x| x.pid);
        if first != Some(pid) || fds.iter().find(|y| y.id == f.id).map(|y| y.fd) != Some(f.fd) {
            continue;
        }
        let fd = f.fd as i32;
        let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).with_context(|| format!("fd {fd}: F_GETFL"))?;
        // Off first: the creator may have set it through a temporary fd
        // number, and setting it again changes nothing.
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(fl & !libc::O_ASYNC)),
        )
        .with_context(|| format!("fd {fd}: O_ASYNC"))?;
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(fl | libc::O_ASYNC)),
        )
        .with_context(|| format!("fd {fd}: O_ASYNC"))?;
    }
    Ok(())
}

/// Sets the owners, signals and O_ASYNC of the restored descriptions
/// (see the module doc). `top`: host pid of the namespace init or root.
pub(crate) fn restore(plan: &crate::restore::Plan, top: i32) -> Result<()> {
    let wanted = |fe: &pb::FileEntry| {
        fown_and_flags(fe).is_some_and(|(o, fl)| o.pid != 0 || o.signum != 0 || fl & libc::O_ASYNC as u32 != 0)
    };
    if !plan.files.values().any(wanted) {
        return Ok(());
    }
    let hosts = host_pids(top);
    let mut done = std::collections::HashSet::new();
    for t in plan.tasks.iter().filter(|t| t.zombie.is_none()) {
        for f in &t.fds {
            let fe = &plan.files[&f.id];
            if !wanted(fe) || !done.insert(f.id) {
                continue;
            }
            let (o, flags) = fown_and_flags(fe).expect("wanted");
            let what = || format!("pid {} fd {}: owner", t.pid, f.fd);
            let host = *hosts
                .get(&t.pid)
                .with_context(|| format!("{}: the task is gone", what()))?;
            let pidfd = sysc::pidfd_open(Pid::from_raw(host)).with_context(what)?;
            let dup = sysc::pidfd_getfd(pidfd.as_fd(), f.fd as i32).with_context(what)?;
            if o.signum != 0 {
                fdops::set_sig(dup.as_fd(), o.signum as i32).with_context(what)?;
            }
            if o.pid != 0 {
                let owner = *hosts
                    .get(&(o.pid as i32))
                    .with_context(|| format!("{}: pid {} is not in the restored tree", what(), o.pid))?;
                fdops::set_owner(dup.as_fd(), o.pid_type as i32, owner).with_context(what)?;
            }
            let _ = flags;
            debug!(
                "pid {} fd {}: owner {} type {} sig {}",
                t.pid, f.fd, o.pid, o.pid_type, o.signum
            );
        }
    }
    Ok(())
}
