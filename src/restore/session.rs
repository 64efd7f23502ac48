//! Sessions and process groups whose leader is not in the tree.
//!
//! A session can only be entered by being forked inside it, and a process
//! group only joined while it has a member. When the leader of a task's
//! session or group exited before the dump (or lives outside the tree),
//! the restore recreates the id with a placeholder process that has the
//! leader's pid and goes away once the tree is in:
//!
//! - session S: the parent forks a placeholder with pid S that calls
//!   setsid() and forks, inside session S, every child of that parent that
//!   belongs to S; then it exits. Those children are re-parented to their
//!   real parent, which is made a child subreaper for that moment (its own
//!   subreaper flag is set later from the image), and the parent reaps the
//!   placeholder.
//! - group G (in the parent's session, or in a session placeholder's):
//!   a placeholder with pid G makes itself the leader of group G and waits
//!   until the first member has joined with setpgid(0, G); then it exits
//!   and is reaped. Further members join the group by themselves.
//!
//! Which tasks need what is a pure function of the plan ([`needs`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};

use super::plan::Plan;
use super::{report_error, task, EngineFds};
use crate::sys::clone as sysc;

/// How long a group placeholder waits for its first member.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The placeholders task `idx` needs, given its parent's session
/// (`parent_sid`, None for the root, whose parent is cryo's init or
/// outside the tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// A session placeholder with this pid.
    pub session: Option<i32>,
    /// A group placeholder with this pid.
    pub group: Option<i32>,
}

/// What task `idx` of the plan needs (see the module doc). A session or
/// group id of 0 is one the dump saw outside its pid namespace: nothing to
/// recreate. The root of a shell job keeps the caller's session and group.
pub(crate) fn needs(plan: &Plan, idx: usize) -> Needs {
    let t = &plan.tasks[idx];
    if idx == 0 && plan.shell_job {
        return Needs {
            session: None,
            group: None,
        };
    }
    let parent_sid = t.parent.map(|p| plan.tasks[p].sid);
    let session = (t.sid != t.pid && t.sid != 0 && !plan.is_pid(t.sid) && parent_sid != Some(t.sid)).then_some(t.sid);
    let group = (t.pgid != t.pid
        && t.pgid != 0
        && !plan.is_pid(t.pgid)
        && session != Some(t.pgid)
        && first_in_group(plan, idx))
    .then_some(t.pgid);
    Needs { session, group }
}

/// Whether `idx` is the first task of the plan in its (leaderless) group:
/// that one's parent creates the group placeholder.
fn first_in_group(plan: &Plan, idx: usize) -> bool {
    let g = plan.tasks[idx].pgid;
    plan.tasks.iter().position(|t| t.pgid == g) == Some(idx)
}

/// Forks the children `kids` of the calling task (plan indexes, in order),
/// each with its old pid, through placeholders where needed. Returns once
/// every child exists and every placeholder is reaped.
pub(crate) fn fork_children(plan: &Plan, kids: &[usize], efds: EngineFds) -> Result<()> {
    let mut done = vec![false; kids.len()];
    for i in 0..kids.len() {
        if done[i] {
            continue;
        }
        match needs(plan, kids[i]).session {
            Some(s) => {
                let batch: Vec<usize> = (i..kids.len())
                    .filter(|&j| !done[j] && needs(plan, kids[j]).session == Some(s))
                    .collect();
                for &j in &batch {
                    done[j] = true;
                }
                let batch: Vec<usize> = batch.into_iter().map(|j| kids[j]).collect();
                fork_session(plan, s, &batch, efds)?;
            }
            None => {
                done[i] = true;
                fork_in_group(plan, kids[i], efds)?;
            }
        }
    }
    Ok(())
}

/// Forks child `c` in the caller's session, with a group placeholder first
/// if it needs one.
fn fork_in_group(plan: &Plan, c: usize, efds: EngineFds) -> Result<()> {
    let child = &plan.tasks[c];
    let holder = match needs(plan, c).group {
        Some(g) => Some(spawn_group_holder(g, child.pid, efds)?),
        None => None,
    };
    let r = fork_one(plan, c, efds);
    if let Some(g) = holder {
        if r.is_err() {
            let _ = nix::sys::signal::kill(Pid::from_raw(g), nix::sys::signal::Signal::SIGKILL);
        }
        reap(g, "process group")?;
    }
    r
}

/// clone3 with the child's old pid; the child runs its restore.
fn fork_one(plan: &Plan, c: usize, efds: EngineFds) -> Result<()> {
    let child = &plan.tasks[c];
    match sysc::clone3_with_pid(0, &[child.pid], libc::SIGCHLD as u64)
        .with_context(|| format!("Cannot create pid {} (clone3 with set_tid)", child.pid))?
    {
        ForkResult::Child if child.zombie.is_some() => task::become_zombie(plan, c, efds),
        ForkResult::Child => task::run(plan, c, efds),
        ForkResult::Parent { child: got } if got.as_raw() != child.pid => {
            bail!("clone3 gave pid {got} instead of {}", child.pid)
        }
        ForkResult::Parent { .. } => Ok(()),
    }
}

/// A placeholder leading group `g` until task `member` has joined it.
fn spawn_group_holder(g: i32, member: i32, efds: EngineFds) -> Result<i32> {
    match sysc::clone3_with_pid(0, &[g], libc::SIGCHLD as u64)
        .with_context(|| format!("Cannot create pid {g} to recreate the process group {g} whose leader is gone"))?
    {
        ForkResult::Child => {
            let r = (|| -> Result<()> {
                unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).context("setpgid")?;
                let start = Instant::now();
                while unistd::getpgid(Some(Pid::from_raw(member))) != Ok(Pid::from_raw(g)) {
                    if start.elapsed() > JOIN_TIMEOUT {
                        bail!("pid {member} did not join it");
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(())
            })();
            if let Err(e) = r {
                report_error(
                    efds.err_w,
                    &format!("Placeholder leader of process group {g} failed: {e:#}"),
                );
                crate::sys::rawfd::exit_now(1);
            }
            crate::sys::rawfd::exit_now(0)
        }
        ForkResult::Parent { child } if child.as_raw() != g => {
            bail!("clone3 gave pid {child} instead of {g} for a process group placeholder")
        }
        ForkResult::Parent { .. } => Ok(g),
    }
}

/// A placeholder with pid `s` that opens session `s` and forks `batch` in
/// it; the caller (a temporary subreaper) inherits them when it exits.
fn fork_session(plan: &Plan, s: i32, batch: &[usize], efds: EngineFds) -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    match sysc::clone3_with_pid(0, &[s], libc::SIGCHLD as u64)
        .with_context(|| format!("Cannot create pid {s} to recreate the session {s} whose leader is gone"))?
    {
        ForkResult::Child => {
            let r = (|| -> Result<()> {
                unistd::setsid().context("setsid")?;
                for &c in batch {
                    fork_in_group(plan, c, efds)?;
                }
                Ok(())
            })();
            if let Err(e) = r {
                report_error(efds.err_w, &format!("Placeholder leader of session {s} failed: {e:#}"));
                crate::sys::rawfd::exit_now(1);
            }
            crate::sys::rawfd::exit_now(0)
        }
        ForkResult::Parent { child } if child.as_raw() != s => {
            bail!("clone3 gave pid {child} instead of {s} for a session placeholder")
        }
        ForkResult::Parent { .. } => reap(s, "session"),
    }
}

/// In task `idx` itself: when a session placeholder forked it, waits until
/// that placeholder is gone and the task belongs to its real parent, so
/// that the tree has its final shape before the task reports ready.
pub(crate) fn await_real_parent(plan: &Plan, idx: usize) -> Result<()> {
    let Some(s) = needs(plan, idx).session else {
        return Ok(());
    };
    let start = Instant::now();
    while unistd::getppid().as_raw() == s {
        if start.elapsed() > JOIN_TIMEOUT {
            bail!("the placeholder leader of session {s} did not exit");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Waits for placeholder `pid`; an exit status other than 0 is an error
/// (the placeholder reported why on the error pipe).
fn reap(pid: i32, what: &str) -> Result<()> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
            Ok(st) => bail!("the placeholder leader of {what} {pid} failed ({st:?})"),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("waitpid for the {what} placeholder {pid}")),
        }
    }
}
