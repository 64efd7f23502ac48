//! Freezing a process tree with ptrace.
//!
//! Every thread is seized (PTRACE_SEIZE, no SIGSTOP sent) and interrupted
//! (PTRACE_INTERRUPT). A process is stopped completely before its children
//! are listed, so no child can appear behind our back; threads are listed
//! again until no new one shows up. Dropping a [`Frozen`] that was not
//! consumed detaches every thread, so any failure during a dump resumes
//! the tree untouched.

use std::collections::{BTreeSet, HashSet, VecDeque};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::proc;
use crate::sys::ptrace::{self, WaitOutcome};

/// One stopped process.
#[derive(Debug, Clone)]
pub struct FrozenProc {
    pub pid: i32,
    /// Parent pid as seen in /proc (0 for the tree's root).
    pub ppid: i32,
    /// Leader first.
    pub tids: Vec<i32>,
    /// Set when the process was in a group stop (SIGSTOP'd) before the dump.
    pub stop_signal: Option<i32>,
    /// Set for a zombie (not seized): its raw wait status.
    pub zombie: Option<i32>,
}

/// The processes of a frozen tree that were running before the freeze,
/// shared with a dump hook that must make sure the tree cannot run again
/// if this process dies (a migration about to commit): it queues SIGSTOP
/// to them while they are still held by ptrace, so that losing the tracer
/// leaves them stopped, not running; and can take that back.
#[derive(Debug, Default)]
pub struct StopGuard(std::sync::Mutex<Vec<i32>>);

impl StopGuard {
    pub(crate) fn set(&self, f: &Frozen) {
        *self.0.lock().unwrap() = f
            .procs
            .iter()
            .filter(|p| p.zombie.is_none() && p.stop_signal.is_none())
            .map(|p| p.pid)
            .collect();
    }

    /// Queues SIGSTOP to every process that was running.
    pub fn queue_stop(&self) {
        for &p in self.0.lock().unwrap().iter() {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGSTOP);
        }
    }

    /// Takes the queued SIGSTOP back: SIGCONT discards pending stop
    /// signals (a SIGCONT handler of the program runs once, as on any
    /// SIGCONT).
    pub fn cancel_stop(&self) {
        for &p in self.0.lock().unwrap().iter() {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGCONT);
        }
    }
}

/// A stopped tree, parents before children.
pub struct Frozen {
    pub procs: Vec<FrozenProc>,
    seized: Vec<i32>,
    armed: bool,
}

impl Frozen {
    /// Seizes the tree rooted at `root`.
    pub fn seize_tree(root: i32) -> Result<Frozen> {
        let mut f = Frozen {
            procs: Vec::new(),
            seized: Vec::new(),
            armed: true,
        };
        let mut queue = VecDeque::from([(root, 0)]);
        let mut seen = HashSet::new();
        while let Some((pid, ppid)) = queue.pop_front() {
            if !seen.insert(pid) {
                continue;
            }
            if let Some(code) = zombie_status(pid) {
                f.procs.push(FrozenProc {
                    pid,
                    ppid,
                    tids: vec![pid],
                    stop_signal: None,
                    zombie: Some(code),
                });
                continue;
            }
            let (tids, stop) = match f.seize_process(pid) {
                Ok(r) => r,
                // A child that exited while we looked: it is a zombie now.
                Err(_) if pid != root && zombie_status(pid).is_some() => {
                    f.procs.push(FrozenProc {
                        pid,
                        ppid,
                        tids: vec![pid],
                        stop_signal: None,
                        zombie: zombie_status(pid),
                    });
                    continue;
                }
                // A child that vanished entirely (reaped meanwhile).
                Err(_) if pid != root && !std::path::Path::new(&format!("/proc/{pid}")).exists() => continue,
                Err(e) => return Err(e.context(format!("Cannot freeze pid {pid}"))),
            };
            let mut children = BTreeSet::new();
            for &t in &tids {
                for c in proc::children(pid as u32, t as u32)
                    .with_context(|| format!("Cannot list children of pid {pid}"))?
                {
                    children.insert(c as i32);
                }
            }
            f.procs.push(FrozenProc {
                pid,
                ppid,
                tids,
                stop_signal: stop,
                zombie: None,
            });
            for c in children {
                queue.push_back((c, pid));
            }
        }
        Ok(f)
    }

    fn seize_process(&mut self, pid: i32) -> Result<(Vec<i32>, Option<i32>)> {
        let mut done: Vec<i32> = Vec::new();
        let mut gone: Vec<i32> = Vec::new();
        let mut stop = None;
        loop {
            let tids = proc::threads(pid as u32).with_context(|| format!("Cannot list threads of pid {pid}"))?;
            let new: Vec<i32> = tids
                .iter()
                .map(|&t| t as i32)
                .filter(|t| !done.contains(t) && !gone.contains(t))
                .collect();
            if new.is_empty() {
                break;
            }
            for t in new {
                match self.seize_thread(t) {
                    Ok(Some(sig)) => stop = Some(sig),
                    Ok(None) => {}
                    // A thread that exits while we look is simply gone.
                    Err(_) if t != pid && thread_gone(pid, t) => {
                        gone.push(t);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                done.push(t);
            }
        }
        // Leader first, the rest in ascending order.
        done.sort_by_key(|&t| (t != pid, t));
        if done.first() != Some(&pid) {
            bail!("pid {pid} has no leader thread (is it exiting?)");
        }
        Ok((done, stop))
    }

    /// Seizes and interrupts one thread; returns the group-stop signal if
    /// the thread was stopped by job control.
    fn seize_thread(&mut self, tid: i32) -> Result<Option<i32>> {
        match ptrace::seize(Pid::from_raw(tid), ptrace::OPT_SUSPEND_SECCOMP) {
            Ok(()) => {}
            Err(Errno::ESRCH) => bail!("pid {tid} vanished while freezing"),
            Err(Errno::EPERM) => bail!("pid {tid} cannot be traced (a zombie, already traced, or not ours to trace)"),
            Err(e) => return Err(e).with_context(|| format!("PTRACE_SEIZE of pid {tid}")),
        }
        self.seized.push(tid);
        ptrace::interrupt(Pid::from_raw(tid)).with_context(|| format!("PTRACE_INTERRUPT of pid {tid}"))?;
        loop {
            match ptrace::wait_stop(Pid::from_raw(tid)).with_context(|| format!("waiting for pid {tid} to stop"))? {
                WaitOutcome::Interrupted => return Ok(None),
                WaitOutcome::GroupStop(sig) => return Ok(Some(sig)),
                WaitOutcome::Signal(sig) => {
                    // A signal arrived before our interrupt: let it be
                    // delivered as it would have been, then stop.
                    ptrace::cont(Pid::from_raw(tid), sig).with_context(|| format!("PTRACE_CONT of pid {tid}"))?;
                }
                WaitOutcome::Exited(_) | WaitOutcome::Killed { .. } => {
                    self.seized.retain(|&t| t != tid);
                    bail!("pid {tid} exited while freezing")
                }
                other => bail!("pid {tid} stopped unexpectedly while freezing: {other:?}"),
            }
        }
    }

    /// Kills the frozen tree (after a successful dump without
    /// --leave-running).
    pub fn kill(mut self) {
        for p in &self.procs {
            let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        // As their tracer we are told when each thread is gone; wait for
        // that (bounded) so the tree has really died when the dump
        // returns. Threads are polled together: a leader is reported only
        // after the rest of its group.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut left: Vec<i32> = self.seized.clone();
        while !left.is_empty() && std::time::Instant::now() < deadline {
            left.retain(|&t| {
                use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                match waitpid(Pid::from_raw(t), Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => false,
                    Ok(WaitStatus::StillAlive) => true,
                    Ok(_) => true,
                    Err(nix::errno::Errno::EINTR) => true,
                    Err(_) => false,
                }
            });
            if !left.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.armed = false;
    }

    /// Leaves the tree stopped, neither running nor killed: every process
    /// gets SIGSTOP queued and every thread is detached, so each process
    /// enters a group stop as it leaves our hands (until SIGCONT).
    pub fn hold(mut self) {
        for p in self.procs.iter().filter(|p| p.zombie.is_none()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
        }
        self.detach_all();
        self.armed = false;
    }

    /// Lets the tree run on: every thread is detached.
    pub fn resume(mut self) {
        self.detach_all();
        self.armed = false;
    }

    fn detach_all(&mut self) {
        for &t in self.seized.iter().rev() {
            let _ = ptrace::detach(Pid::from_raw(t), 0);
        }
        self.seized.clear();
    }
}

/// Whether thread `tid` of `pid` has exited (gone or dead in /proc).
fn thread_gone(pid: i32, tid: i32) -> bool {
    match proc::stat::read_task(pid as u32, tid as u32) {
        Ok(st) => matches!(st.state, 'Z' | 'X' | 'x'),
        Err(_) => true,
    }
}

/// The raw exit status of `pid` if it is a zombie.
fn zombie_status(pid: i32) -> Option<i32> {
    let st = proc::stat::read(pid as u32).ok()?;
    (st.state == 'Z').then_some(st.exit_code)
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.armed {
            self.detach_all();
        }
    }
}
