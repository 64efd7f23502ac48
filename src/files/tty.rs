//! Terminals: the external terminal of a `--shell-job` restore.
//!
//! At dump, tty-info.img keeps the termios and window size of the job's
//! terminal (see `FileTable::tty_info`). At restore with `--shell-job`,
//! the job gets the engine's own terminal; [`ExtTerm::apply`] puts the
//! dumped termios on it before the tree runs, so a full-screen program
//! (raw mode, no echo, its own VMIN/VTIME) finds the terminal as it left
//! it. The window size is the new terminal's: it is the size of the window
//! the user is looking at now, and forcing the old size on it would make
//! the program draw past the edge. When it differs from the dumped size,
//! the restored job gets a SIGWINCH (as the kernel sends when a window is
//! resized), so a program that cached the size asks again and redraws.
//! A failed restore puts the terminal's previous termios back.

use std::collections::HashMap;
use std::os::fd::RawFd;

use anyhow::{Context, Result};
use tracing::{debug, warn};

use crate::image::pb;
use crate::sys::{rawfd, tty as systty};

use super::FD_TTY;

/// The tty info of the job's external terminal: the one the file entries
/// of type TTY use, preferring the controlling terminal (sid set).
pub fn external_info<'a>(
    files: &HashMap<u32, pb::FileEntry>,
    ttys: &'a HashMap<u32, pb::TtyInfoEntry>,
) -> Option<&'a pb::TtyInfoEntry> {
    let mut used: Vec<&pb::TtyInfoEntry> = files
        .values()
        .filter(|f| f.r#type == FD_TTY)
        .filter_map(|f| f.tty.as_ref())
        .filter_map(|t| ttys.get(&t.tty_info_id))
        .filter(|i| is_external(i, ttys))
        .collect();
    used.sort_by_key(|i| (i.sid == 0, i.id));
    used.first().copied()
}

/// A slave whose master is not in the dump: a terminal of the outside.
pub fn is_external(info: &pb::TtyInfoEntry, ttys: &HashMap<u32, pb::TtyInfoEntry>) -> bool {
    info.id & 1 == 0 && !ttys.contains_key(&(info.id | 1))
}

/// The engine's terminal with the job's termios on it.
pub struct ExtTerm {
    fd: RawFd,
    saved: libc::termios,
    /// The dumped window size differs from the terminal's.
    resized: bool,
    armed: bool,
}

impl ExtTerm {
    /// Applies the dumped termios of `info` to the terminal `fd` (the
    /// engine's, kept open by the caller while this lives).
    pub fn apply(fd: RawFd, info: &pb::TtyInfoEntry) -> Result<Option<ExtTerm>> {
        let b = rawfd::borrow(fd);
        let Ok(saved) = systty::get_termios(b) else {
            warn!("--shell-job: the engine's stdin is not a terminal; the job's termios is not restored");
            return Ok(None);
        };
        let Some(tp) = info.termios.as_ref() else {
            return Ok(None);
        };
        let mut t = saved;
        super::termios_from_pb(tp, &mut t);
        // TCSETS on a terminal whose foreground group is not ours stops
        // us with SIGTTOU unless it is ignored or blocked.
        let _g = SigttouBlocked::new();
        systty::set_termios(b, &t).context("Cannot set the job's termios on the terminal (TCSETS)")?;
        let now = systty::get_winsize(b).ok();
        let resized = match (now, info.winsize.as_ref()) {
            (Some(n), Some(w)) => u32::from(n.ws_row) != w.ws_row || u32::from(n.ws_col) != w.ws_col,
            _ => false,
        };
        debug!(
            "--shell-job: termios of tty {} applied (lflag {:#x}); window {:?} (dumped {:?})",
            info.id,
            tp.c_lflag,
            now.map(|n| (n.ws_row, n.ws_col)),
            info.winsize.as_ref().map(|w| (w.ws_row, w.ws_col))
        );
        Ok(Some(ExtTerm {
            fd,
            saved,
            resized,
            armed: true,
        }))
    }

    /// The restore went through: the job owns the terminal's settings now.
    /// Tells the job's process group (or its root) about a new size.
    pub fn keep(mut self, root_host_pid: i32, root_is_group_leader: bool) {
        self.armed = false;
        if self.resized && root_host_pid > 0 {
            let target = if root_is_group_leader {
                -root_host_pid
            } else {
                root_host_pid
            };
            debug!("--shell-job: window size changed, SIGWINCH to {target}");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), nix::sys::signal::Signal::SIGWINCH);
        }
    }
}

impl Drop for ExtTerm {
    fn drop(&mut self) {
        if self.armed {
            let _g = SigttouBlocked::new();
            let _ = systty::set_termios(rawfd::borrow(self.fd), &self.saved);
        }
    }
}

/// SIGTTOU blocked in this thread for the guard's lifetime.
struct SigttouBlocked(Option<nix::sys::signal::SigSet>);

impl SigttouBlocked {
    fn new() -> Self {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        let mut s = SigSet::empty();
        s.add(Signal::SIGTTOU);
        let mut old = SigSet::empty();
        match nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&s), Some(&mut old)) {
            Ok(()) => SigttouBlocked(Some(old)),
            Err(_) => SigttouBlocked(None),
        }
    }
}

impl Drop for SigttouBlocked {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32, sid: u32) -> pb::TtyInfoEntry {
        pb::TtyInfoEntry {
            id,
            r#type: 1,
            sid,
            ..Default::default()
        }
    }

    fn tty_file(id: u32, info: u32) -> pb::FileEntry {
        pb::FileEntry {
            r#type: FD_TTY,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info,
                flags: 2,
                fown: super::super::fown0(),
                regf_id: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn external_terminal_is_the_controlling_slave_without_master() {
        let ttys: HashMap<u32, pb::TtyInfoEntry> = [info(0, 0), info(4, 77), info(6, 0), info(7, 0)]
            .into_iter()
            .map(|i| (i.id, i))
            .collect();
        let files: HashMap<u32, pb::FileEntry> = [tty_file(1, 0), tty_file(2, 4), tty_file(3, 6), tty_file(4, 7)]
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
        // pts/3 (id 6) has its master (id 7) in the dump: not external.
        assert!(!is_external(&ttys[&6], &ttys));
        assert!(is_external(&ttys[&4], &ttys));
        assert_eq!(external_info(&files, &ttys).map(|i| i.id), Some(4));
        let files: HashMap<u32, pb::FileEntry> = [tty_file(3, 6)].into_iter().map(|f| (f.id, f)).collect();
        assert!(external_info(&files, &ttys).is_none());
    }
}
