//! Members of a process tree built by a workload (`shapes`, `pidns`).
//!
//! A member is a forked process that knows what its identity must be after
//! a restore ([`Want`]: pid, parent, process group, session), idles until
//! its wake-up signal, then checks its identity, reaps its own children
//! (which must exit 0), writes `MEMBER <name> PASS ...` or `MEMBER <name>
//! FAIL ...` to the shared log and exits 0 or 1. The root of the tree
//! reaps its own children (and adopted orphans) with [`reap_all`] and
//! requires a PASS line for every member with [`member_verdicts`].

use crate::probe;
use crate::wl::{self, Log};

/// What a member's identity must be when it checks itself.
#[derive(Clone, Debug)]
pub struct Want {
    /// The member's name in MEMBER lines.
    pub name: String,
    /// getpid().
    pub pid: i32,
    /// getppid() at check time.
    pub ppid: i32,
    /// getpgrp().
    pub pgid: i32,
    /// getsid(0).
    pub sid: i32,
}

impl Want {
    /// The caller's current identity under `name`.
    pub fn me(name: &str) -> Want {
        Want {
            name: name.to_string(),
            pid: wl::getpid(),
            ppid: wl::getppid(),
            pgid: wl::getpgrp(),
            sid: wl::getsid(),
        }
    }

    /// The same with a different expected parent (an orphan's new parent).
    pub fn with_ppid(mut self, ppid: i32) -> Want {
        self.ppid = ppid;
        self
    }
}

/// The member's idle-check-exit life. `wake` is the signal that starts the
/// check (its flag handler must be installed); `kids` are the member's own
/// children to reap; `extra` adds checks of its own (called after the
/// wake-up, before the identity check); `corrupt` makes it change its
/// process group first.
pub fn live(log: &Log, want: &Want, wake: i32, kids: &[i32], extra: &dyn Fn() -> Vec<String>, corrupt: bool) -> ! {
    while !probe::flag(wake) {
        wl::sleep_ms(10);
    }
    if corrupt {
        // SAFETY: setpgid takes integers only.
        unsafe { libc::setpgid(0, 0) };
    }
    let mut p = extra();
    let now = [
        ("pid", wl::getpid(), want.pid),
        ("ppid", wl::getppid(), want.ppid),
        ("pgid", wl::getpgrp(), want.pgid),
        ("sid", wl::getsid(), want.sid),
    ];
    for (what, got, exp) in now {
        if got != exp {
            p.push(format!("{what} {got} != {exp}"));
        }
    }
    for &k in kids {
        match probe::wait_child(k, 10_000) {
            Ok(st) if probe::exited_ok(st) => {}
            Ok(st) => p.push(format!("child {k}: {}", probe::describe_status(st))),
            Err(e) => p.push(e),
        }
    }
    if p.is_empty() {
        log.line(&format!(
            "MEMBER {} PASS pid={} ppid={} pgid={} sid={}",
            want.name, want.pid, want.ppid, want.pgid, want.sid
        ));
        probe::exit_now(0);
    }
    log.line(&format!("MEMBER {} FAIL {}", want.name, p.join("; ")));
    probe::exit_now(1);
}

/// Reaps each of `pids` (children of the caller, adopted ones included)
/// within `ms`; returns a problem for each that did not exit 0, naming the
/// member.
pub fn reap_all(pids: &[(String, i32)], ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (name, pid) in pids {
        match probe::wait_child(*pid, ms) {
            Ok(st) if probe::exited_ok(st) => {}
            Ok(st) => out.push(format!("{name} ({pid}) ended with {}", probe::describe_status(st))),
            Err(e) => {
                out.push(format!("{name} ({pid}): {e}"));
                let _ = probe::kill(*pid, libc::SIGKILL);
                let _ = probe::waitpid(*pid, 0);
            }
        }
    }
    out
}

/// Problems for every member in `names` without a `MEMBER <name> PASS`
/// line in the log at `log_path` (its FAIL line, or "no verdict").
pub fn member_verdicts(log_path: &str, names: &[String]) -> Vec<String> {
    let lines = probe::log_lines_with(log_path, "MEMBER ");
    let mut out = Vec::new();
    for n in names {
        let pass = format!("MEMBER {n} PASS");
        let fail = format!("MEMBER {n} FAIL");
        if lines.iter().any(|l| l.starts_with(&pass)) {
            continue;
        }
        match lines.iter().find(|l| l.starts_with(&fail)) {
            Some(l) => out.push(format!("{n}: {}", l[fail.len()..].trim())),
            None => out.push(format!("{n}: no verdict")),
        }
    }
    out
}
