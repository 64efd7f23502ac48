//! fown: owners of open file descriptions (F_SETOWN_EX), their signals
//! (F_SETSIG) and O_ASYNC.
//!
//! `fown --log F [--corrupt]`
//!
//! P makes three O_ASYNC descriptions:
//! - socketpair end A, owned by P (F_OWNER_PID), signal SIGRTMIN+2;
//! - pipe read end R, owned by P's process group (F_OWNER_PGRP), SIGIO;
//! - socketpair end B, owned by P's child C (F_OWNER_PID), SIGUSR2.
//! On SIGUSR1 P checks F_GETOWN_EX, F_GETSIG and O_ASYNC of each, then
//! makes each readable: P must get SIGRTMIN+2 with si_fd = A and SIGIO
//! (for R, which C gets too); C must get SIGUSR2 (for B). `--corrupt`
//! clears O_ASYNC on A after READY.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use cryo_integration::wl::{self, Args, Log};

static RT_FD: AtomicI32 = AtomicI32::new(-1);
static IO: AtomicU32 = AtomicU32::new(0);
static USR2: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_rt(_: libc::c_int, si: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for a SIGIO-style signal
    // si_fd is the int after si_band (a long) in the union.
    let fd = unsafe {
        let base = (si as *const u8).add(16);
        *(base.add(8) as *const i32)
    };
    RT_FD.store(fd, Ordering::SeqCst);
}
extern "C" fn on_io(_: libc::c_int) {
    IO.fetch_add(1, Ordering::SeqCst);
}
extern "C" fn on_usr2(_: libc::c_int) {
    USR2.fetch_add(1, Ordering::SeqCst);
}

fn handler(sig: i32, f: usize, info: bool) {
    // SAFETY: the handlers only do atomic stores/adds.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f;
        if info {
            sa.sa_flags = libc::SA_SIGINFO;
        }
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            wl::die("sigaction");
        }
    }
}

fn set_owner(fd: i32, kind: i32, pid: i32, sig: i32) {
    let o: [i32; 2] = [kind, pid];
    // SAFETY: F_SETOWN_EX (15) reads two ints; F_SETSIG (10) and F_SETFL
    // take integers.
    unsafe {
        if libc::fcntl(fd, 15, o.as_ptr()) != 0 || libc::fcntl(fd, 10, sig) != 0 {
            wl::die("F_SETOWN_EX/F_SETSIG");
        }
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_ASYNC);
    }
}

/// (owner type, owner pid, signal, O_ASYNC set).
fn owner_of(fd: i32) -> (i32, i32, i32, bool) {
    let mut o = [0i32; 2];
    // SAFETY: F_GETOWN_EX (16) writes two ints; F_GETSIG (11) and F_GETFL
    // take no argument.
    unsafe {
        libc::fcntl(fd, 16, o.as_mut_ptr());
        let sig = libc::fcntl(fd, 11);
        let fl = libc::fcntl(fd, libc::F_GETFL);
        (o[0], o[1], sig, fl & libc::O_ASYNC != 0)
    }
}

fn socketpair() -> (i32, i32) {
    let mut sv = [0i32; 2];
    // SAFETY: sv has room for two fds.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) } != 0 {
        wl::die("socketpair");
    }
    (sv[0], sv[1])
}

fn write1(fd: i32) {
    // SAFETY: one valid byte.
    unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
}

fn wait_for(pred: impl Fn() -> bool) -> bool {
    wait_for_ms(3000, pred)
}

fn wait_for_ms(ms: u64, pred: impl Fn() -> bool) -> bool {
    for _ in 0..ms / 10 {
        if pred() {
            return true;
        }
        wl::sleep_ms(10);
    }
    false
}

const F_OWNER_PID: i32 = 1;
const F_OWNER_PGRP: i32 = 2;

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let rt = libc::SIGRTMIN() + 2;
    handler(rt, on_rt as *const () as usize, true);
    handler(libc::SIGIO, on_io as *const () as usize, false);
    handler(libc::SIGUSR2, on_usr2 as *const () as usize, false);
    let me = wl::getpid();
    let (a, a2) = socketpair();
    let mut p = [0i32; 2];
    // SAFETY: p has room for two fds.
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        wl::die("pipe");
    }
    let (r, w) = (p[0], p[1]);
    let (b, b2) = socketpair();
    // SAFETY: the workload is single-threaded.
    let c = unsafe { libc::fork() };
    if c < 0 {
        wl::die("fork");
    }
    if c == 0 {
        while !wl::usr1_seen() {
            wl::sleep_ms(10);
        }
        let ok = wait_for_ms(15000, || USR2.load(Ordering::SeqCst) > 0);
        log.line(&format!(
            "MEMBER c {} SIGUSR2 {}",
            if ok { "PASS" } else { "FAIL" },
            USR2.load(Ordering::SeqCst)
        ));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    set_owner(a, F_OWNER_PID, me, rt);
    set_owner(r, F_OWNER_PGRP, wl::getpgrp(), 0);
    set_owner(b, F_OWNER_PID, c, libc::SIGUSR2);
    log.ready();
    if corrupt {
        // SAFETY: integer arguments only.
        unsafe {
            let fl = libc::fcntl(a, libc::F_GETFL);
            libc::fcntl(a, libc::F_SETFL, fl & !libc::O_ASYNC);
        }
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let mut problems = Vec::new();
    for (name, fd, want) in [
        ("A", a, (F_OWNER_PID, me, rt, true)),
        ("R", r, (F_OWNER_PGRP, wl::getpgrp(), 0, true)),
        ("B", b, (F_OWNER_PID, c, libc::SIGUSR2, true)),
    ] {
        let got = owner_of(fd);
        if got != want {
            problems.push(format!("{name}: owner/sig/async {got:?}, expected {want:?}"));
        }
    }
    // SAFETY: plain call.
    unsafe { libc::kill(c, libc::SIGUSR1) };
    write1(a2);
    if !wait_for(|| RT_FD.load(Ordering::SeqCst) == a) {
        problems.push(format!(
            "A: no SIGRTMIN+2 for fd {a} (si_fd {})",
            RT_FD.load(Ordering::SeqCst)
        ));
    }
    write1(w);
    if !wait_for(|| IO.load(Ordering::SeqCst) > 0) {
        problems.push("R: no SIGIO to the process group".to_string());
    }
    write1(b2);
    let mut st = 0;
    // SAFETY: st is a valid out-pointer.
    unsafe { libc::waitpid(c, &mut st, 0) };
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        problems.push(format!("c ended with status {st:#x}"));
    }
    log.verdict(&problems, "owners, signals and O_ASYNC of A, R, B")
}
