//! Stage Shim: cryo's own init for the fresh pid namespace.
//!
//! It is pid 1 of a new pid and mount namespace, mounts a private /proc,
//! forks the restored root with its old pid, and then behaves like tini:
//! it reaps every process re-parented to it, forwards the usual
//! termination and job-control signals to the root, and exits with the
//! root's status. Until the engine releases it, it dies with the engine
//! (PR_SET_PDEATHSIG), so a crashed restore leaves nothing behind.

use std::os::fd::RawFd;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};

use super::plan::Plan;
use super::{report_error, task, EngineFds};
use crate::sys::clone as sysc;

const FORWARDED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// The shim's name, and its name while it still dies with the engine
/// during a lazy restore.
pub(crate) const NAME: &std::ffi::CStr = c"cryo-init";
pub(crate) const LAZY_NAME: &std::ffi::CStr = c"cryo-init-lazy";

/// Sent by the engine to the shim once a lazy restore's pages are all in:
/// the shim no longer dies with the engine. (Not forwarded to the root.)
pub(crate) const LAZY_DONE: Signal = Signal::SIGPWR;

/// Forks the shim; returns its host pid.
pub(crate) fn spawn(plan: &Plan, efds: EngineFds, ctl: (RawFd, RawFd)) -> Result<i32> {
    let engine = unistd::getpid();
    let flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64 | crate::ipc::sysv::clone_flags(&plan.sysv);
    match sysc::clone3_with_pid(flags, &[], libc::SIGCHLD as u64).context("Cannot create the pid namespace (clone3)")? {
        ForkResult::Child => {
            let code = match shim_main(plan, efds, ctl, engine) {
                Ok(c) => c,
                Err(e) => {
                    report_error(efds.err_w, &format!("Namespace init failed: {e:#}"));
                    1
                }
            };
            crate::sys::rawfd::exit_now(code)
        }
        ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

fn shim_main(plan: &Plan, efds: EngineFds, ctl: (RawFd, RawFd), engine: Pid) -> Result<i32> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
    // (getppid() is 0 here: the engine is outside our pid namespace. If
    // it died before the line above, the ctl pipe reads EOF below.)
    let _ = engine;
    let _ = nix::sys::prctl::set_name(NAME);
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("Cannot make the mount namespace private")?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("Cannot mount /proc in the new namespace")?;
    crate::ipc::sysv::restore_objects(&plan.sysv)?;
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(LAZY_DONE);
    for s in FORWARDED {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).context("sigprocmask")?;

    let root = &plan.tasks[0];
    super::session::fork_children(plan, &[0], efds)?;
    plan.prestaged.release();
    let root_pid = root.pid;
    // Keep nothing of the engine's but the control pipes: with -d the
    // caller's stdout (a pipe, a terminal) must not stay open for the life
    // of the restored tree.
    let keep = [ctl.0, ctl.1, efds.err_w];
    for fd in crate::proc::fds(std::process::id()).unwrap_or_default() {
        if !keep.contains(&fd) {
            let _ = unistd::close(fd);
        }
    }
    if let Ok(null) = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
        for fd in 0..3 {
            if null != fd {
                let _ = unistd::dup2(null, fd);
            }
        }
        if null > 2 {
            let _ = unistd::close(null);
        }
    }
    // Wait for the engine's go (or its death).
    let mut b = [0u8; 1];
    match unistd::read(ctl.0, &mut b) {
        Ok(1) => {}
        _ => return Ok(1),
    }
    // With lazy pages ('G') the engine still fills the tree's memory: if it
    // dies before all is in, the tree must die too (else its missing pages
    // would read as zeros). It sends LAZY_DONE once every page is in.
    if b[0] != b'G' {
        nix::sys::prctl::set_pdeathsig(None).context("PR_SET_PDEATHSIG")?;
    } else {
        let _ = nix::sys::prctl::set_name(LAZY_NAME);
    }
    let _ = unistd::write(crate::sys::rawfd::borrow(ctl.1), b"k");
    let _ = unistd::close(ctl.0);
    let _ = unistd::close(ctl.1);
    let _ = unistd::close(efds.err_w);

    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig == LAZY_DONE {
            // The engine waits for the name to change back (see
            // restore::lazy_done) before it may exit.
            let _ = nix::sys::prctl::set_pdeathsig(None);
            let _ = nix::sys::prctl::set_name(NAME);
            continue;
        }
        if sig == Signal::SIGCHLD {
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, code)) if p.as_raw() == root_pid => return Ok(code),
                    Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == root_pid => return Ok(128 + s as i32),
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        } else {
            let _ = kill(Pid::from_raw(root_pid), sig);
        }
    }
}

/// For a tree that was its own pid namespace (its root is pid 1): the
/// root itself is forked into a fresh pid and mount namespace, where it is
/// pid 1 again; no init of ours is needed. Returns its host pid.
pub(crate) fn spawn_root(plan: &Plan, efds: EngineFds, ns: Option<&crate::ns::NsPlan>) -> Result<i32> {
    let flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | ns.map_or(0, |n| n.clone_flags())) as u64
        | crate::ipc::sysv::clone_flags(&plan.sysv);
    match sysc::clone3_with_pid(flags, &[], libc::SIGCHLD as u64).context("Cannot create the pid namespace (clone3)")? {
        ForkResult::Child => {
            let r = (|| -> Result<()> {
                // Dies with the engine until the restored state takes over.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("PR_SET_PDEATHSIG")?;
                match ns {
                    // A container's objects first: its /proc/sys is
                    // read-only once its mounts are in place (the ipc
                    // sysctls follow the writer's ipc namespace).
                    Some(n) => {
                        crate::ipc::sysv::restore_objects(&plan.sysv)?;
                        crate::ns::enter(n)
                    }
                    None => {
                        mount_proc()?;
                        crate::ipc::sysv::restore_objects(&plan.sysv)
                    }
                }
            })();
            if let Err(e) = r {
                report_error(efds.err_w, &format!("Restore of pid 1 failed: {e:#}"));
                crate::sys::rawfd::exit_now(1);
            }
            task::run(plan, 0, efds)
        }
        ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

/// A private mount propagation and a /proc of the new pid namespace.
fn mount_proc() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("Cannot make the mount namespace private")?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("Cannot mount /proc in the new namespace")?;
    Ok(())
}

/// Host pid of the restored root: the child of the shim whose pid in the
/// namespace is `root_ns_pid`.
pub(crate) fn root_host_pid(shim: i32, root_ns_pid: i32) -> Option<i32> {
    // The children list may still hold a session placeholder that exited
    // and is not reaped yet: pick the child whose pid in the namespace is
    // the root's.
    let s = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children")).ok()?;
    s.split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|&c| crate::proc::status::read(c as u32).is_ok_and(|st| st.nspid.last() == Some(&(root_ns_pid as u32))))
}
