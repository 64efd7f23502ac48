//! pidfds: pidfds of processes of the tree name the same processes after
//! restore.
//!
//! `pidfds --log F [--corrupt] [--outside]`
//!
//! The parent P holds a PIDFD_NONBLOCK pidfd of its child C, a pidfd of
//! itself, and a pidfd of a child D that has exited and was reaped; C
//! holds a pidfd of P. On SIGUSR1 P checks (fdinfo `Pid:` lines, flags),
//! signals C through its pidfd, and C checks its pidfd of P; P then sees
//! C's exit through the pidfd (poll) and collects it with waitid(P_PIDFD).
//! `--corrupt` replaces the pidfd of C by one of P before the checks.
//! `--outside` also holds, at fd 40, a pidfd of P's own parent (outside
//! the tree: a dump must refuse it).

use cryo_integration::wl::{self, Args, Log};

fn pidfd_open(pid: i32, flags: u32) -> i32 {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) } as i32;
    if fd < 0 {
        wl::die("pidfd_open");
    }
    fd
}

/// The `Pid:` line of the fdinfo of our fd `fd`.
fn pid_of(fd: i32) -> Option<i32> {
    let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn getfl(fd: i32) -> i32 {
    // SAFETY: integer arguments only.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let me = wl::getpid();

    // D: exits at once and is reaped, its pidfd stays.
    // SAFETY: the workload is single-threaded.
    let d = unsafe { libc::fork() };
    if d < 0 {
        wl::die("fork");
    }
    if d == 0 {
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(7) }
    }
    let pd = pidfd_open(d, 0);
    let mut st = 0;
    // SAFETY: `st` is a valid out-pointer.
    unsafe { libc::waitpid(d, &mut st, 0) };

    // SAFETY: the workload is single-threaded.
    let c = unsafe { libc::fork() };
    if c < 0 {
        wl::die("fork");
    }
    if c == 0 {
        let pp = pidfd_open(wl::getppid(), 0);
        while !wl::usr1_seen() {
            wl::sleep_ms(10);
        }
        let got = pid_of(pp);
        let ok = got == Some(wl::getppid());
        log.line(&format!(
            "MEMBER c {} pidfd of the parent names {got:?}",
            if ok { "PASS" } else { "FAIL" }
        ));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    let pc = pidfd_open(c, libc::O_NONBLOCK as u32);
    let ps = pidfd_open(me, 0);
    if args.flag("outside") {
        let o = pidfd_open(wl::getppid(), 0);
        // SAFETY: dup2 of our own fds.
        if unsafe { libc::dup2(o, 40) } != 40 {
            wl::die("dup2");
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(o) };
    }
    // Let C open its pidfd before the dump.
    wl::sleep_ms(100);
    let table = format!("pc={pc} ps={ps} pd={pd} c={c}");
    log.line(&format!("FDS {table}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    let mut pr = Vec::new();
    if corrupt {
        let x = pidfd_open(me, libc::O_NONBLOCK as u32);
        // SAFETY: dup2 of our own fds.
        unsafe { libc::dup2(x, pc) };
        // SAFETY: closing our own fd.
        unsafe { libc::close(x) };
    }
    for (fd, want, name) in [(pc, c, "C"), (ps, me, "self"), (pd, -1, "reaped D")] {
        let got = pid_of(fd);
        if got != Some(want) {
            pr.push(format!("pidfd of {name} names {got:?}, expected {want}"));
        }
    }
    if getfl(pc) & libc::O_NONBLOCK == 0 || getfl(ps) & libc::O_NONBLOCK != 0 {
        pr.push(format!("pidfd flags {:#o} {:#o}", getfl(pc), getfl(ps)));
    }
    if corrupt {
        // pc no longer names C: release C the plain way.
        // SAFETY: sending a signal and reaping our child.
        unsafe {
            libc::kill(c, libc::SIGUSR1);
            libc::waitpid(c, &mut st, 0);
        }
        log.verdict(&pr, &table);
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pc, libc::SIGUSR1, 0, 0) } != 0 {
        pr.push("pidfd_send_signal to C failed".into());
    }
    let mut pfd = libc::pollfd {
        fd: pc,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if n != 1 {
        pr.push("C's exit does not show through its pidfd".into());
    }
    // SAFETY: a zeroed siginfo is a valid out-buffer.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `si` is writable; P_PIDFD = 3.
    let r = unsafe { libc::waitid(3, pc as u32, &mut si, libc::WEXITED) };
    // SAFETY: after a successful waitid the status is set.
    if r != 0 || unsafe { si.si_status() } != 0 {
        pr.push(format!("waitid(P_PIDFD) of C: {r}"));
        // SAFETY: reap C whatever happened.
        unsafe { libc::waitpid(c, &mut st, 0) };
    }
    log.verdict(&pr, &table);
}
