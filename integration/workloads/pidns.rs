//! pidns: a tree that is its own pid namespace (its init is pid 1) keeps
//! that layout.
//!
//! `pidns --log F [--corrupt]` (as root)
//!
//! The launcher (the process the test starts) unshares a new pid namespace
//! and forks its init, writes `NSINIT <host pid of the init>`, waits for the
//! init and exits with its status. The init (pid 1 inside) calls setsid and
//! builds: C1 (with a child C1a), G (whose parent C2 is killed before
//! READY, so G is re-parented to pid 1), a zombie Z that exited 42, and S
//! which leads a session of its own. It writes `NSTREE ...` and `READY 1`.
//! The dump targets the init's host pid; a restore must bring it back as
//! pid 1 of a new namespace with every member at its old pid.
//!
//! On SIGUSR1 (sent to the init's host pid) the init checks that it is
//! pid 1 with parent 0, session 1 and group 1, collects Z's exit status 42
//! (waitid WNOWAIT first: it must still be a zombie), wakes the members
//! (SIGUSR2), which check their own pid/parent/group/session, reaps C1, G
//! and S and writes PASS only if every member passed. `--corrupt` reaps Z
//! early.

use cryo_integration::member::{self, Want};
use cryo_integration::probe::{self, SetupPipe, SigInfo};
use cryo_integration::wl::{self, Args, Log};

fn spawn(f: impl FnOnce() -> i32) -> i32 {
    let pid = probe::fork();
    if pid == 0 {
        let c = f();
        probe::exit_now(c);
    }
    pid
}

fn no_extra() -> Vec<String> {
    Vec::new()
}

struct Ctx {
    log: &'static Log,
    pipe: SetupPipe,
}

impl Ctx {
    fn leaf(&self, want: Want, tag: i32) -> i32 {
        self.pipe.send(tag, wl::getpid());
        self.pipe.close_w();
        member::live(self.log, &want, libc::SIGUSR2, &[], &no_extra, false)
    }
}

fn zombie_status(pid: i32) -> Option<SigInfo> {
    let mut info = SigInfo::zeroed();
    // SAFETY: `info` is 128 bytes, the size of siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info as *mut SigInfo as *mut libc::siginfo_t,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    (r == 0 && info.pid() != 0).then_some(info)
}

fn init_main(log_path: String, corrupt: bool) -> i32 {
    let log: &'static Log = Box::leak(Box::new(Log::open(&log_path)));
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        wl::die("setsid in the init");
    }
    wl::install_usr1();
    probe::install_flag(libc::SIGUSR2, 0);
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
        log,
        pipe: SetupPipe::new(),
    }));
    let c1 = spawn(move || {
        ctx.pipe.close_r();
        let a = spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("C1a"), 2)
        });
        let want = Want::me("C1");
        ctx.pipe.send(1, wl::getpid());
        ctx.pipe.close_w();
        member::live(ctx.log, &want, libc::SIGUSR2, &[a], &no_extra, false)
    });
    let c2 = spawn(move || {
        ctx.pipe.close_r();
        spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("G").with_ppid(1), 4)
        });
        ctx.pipe.send(3, wl::getpid());
        ctx.pipe.close_w();
        loop {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        }
    });
    let z = spawn(|| 42);
    let s = spawn(move || {
        ctx.pipe.close_r();
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            wl::die("setsid S");
        }
        ctx.leaf(Want::me("S"), 5)
    });
    ctx.pipe.close_w();
    let m: std::collections::BTreeMap<i32, i32> = ctx.pipe.recv(5).into_iter().collect();
    ctx.pipe.close_r();
    let _ = probe::kill(c2, libc::SIGTERM);
    if probe::wait_child(c2, 5000).is_err() {
        wl::die("C2 did not die");
    }
    let end = probe::mono_ns() + 5_000_000_000;
    while zombie_status(z).is_none() {
        if probe::mono_ns() > end {
            wl::die("Z did not exit");
        }
        wl::sleep_ms(2);
    }
    let g = m[&4];
    log.line(&format!(
        "NSTREE init={} C1={c1} C1a={} C2={c2}(gone) G={g} Z={z} S={s}",
        wl::getpid(),
        m[&2]
    ));
    log.ready();
    if corrupt {
        let _ = probe::waitpid(z, 0);
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let mut p = Vec::new();
    let ids = (wl::getpid(), wl::getppid(), wl::getsid(), wl::getpgrp());
    if ids != (1, 0, 1, 1) {
        p.push(format!("init (pid, ppid, sid, pgid) is {ids:?}, expected (1, 0, 1, 1)"));
    }
    match zombie_status(z) {
        Some(i) if i.code() == 1 && i.status() == 42 => {}
        Some(i) => p.push(format!("zombie Z ({z}): code {} status {}", i.code(), i.status())),
        None => p.push(format!("Z ({z}) is not a zombie child")),
    }
    match probe::waitpid(z, libc::WNOHANG) {
        Ok((r, st)) if r == z && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 42 => {}
        other => p.push(format!("waitpid(Z {z}): {other:?}")),
    }
    for pid in [c1, m[&2], g, s] {
        let _ = probe::kill(pid, libc::SIGUSR2);
    }
    p.extend(member::reap_all(
        &[("C1".to_string(), c1), ("G".to_string(), g), ("S".to_string(), s)],
        10_000,
    ));
    let names: Vec<String> = ["C1", "C1a", "G", "S"].iter().map(|s| s.to_string()).collect();
    p.extend(member::member_verdicts(&log_path, &names));
    log.verdict(&p, &format!("pidns init=1 C1={c1} G={g} Z={z} S={s}"));
}

fn main() {
    let args = Args::from_env();
    let log_path = args.required("log");
    let corrupt = args.flag("corrupt");
    // SAFETY: unshare takes an integer.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        wl::die("unshare(CLONE_NEWPID) (needs root)");
    }
    let init = probe::fork();
    if init == 0 {
        let c = init_main(log_path, corrupt);
        probe::exit_now(c);
    }
    let log = Log::open(&log_path);
    log.line(&format!("NSINIT {init}"));
    loop {
        match probe::waitpid(init, 0) {
            Ok((_, st)) if libc::WIFEXITED(st) => probe::exit_now(libc::WEXITSTATUS(st)),
            Ok((_, st)) if libc::WIFSIGNALED(st) => probe::exit_now(128 + libc::WTERMSIG(st)),
            Ok(_) => {}
            Err(libc::EINTR) => {}
            Err(e) => wl::die(&format!("waitpid(init): errno {e}")),
        }
    }
}
