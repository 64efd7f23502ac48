//! tree: a process tree keeps its shape, pids, sessions and groups.
//!
//! `tree --log F [--children K] [--corrupt]`
//!
//! The parent forks K children (default 3); child 0 forks one grandchild.
//! All stay in the parent's session and process group. Each child and the
//! grandchild fill some memory with a pattern, keep its checksum and a
//! counter, write `MEMBER <name> pid=<pid> ppid=<ppid>`, report readiness
//! over a pipe (closed by everyone before READY, so no pipe is left when the
//! tree is dumped) and idle. On SIGUSR1 the parent forwards SIGUSR1 to each
//! child (child 0 to the grandchild); every member verifies that its pid,
//! parent, process group and session are what they were, and its memory
//! and counter, writes `MEMBER <name> PASS|FAIL ...` and exits 0 or 1. The
//! parent collects the exit statuses with wait4 and writes PASS only if
//! every child passed and the pids reaped are exactly the pids it forked.
//! `--corrupt` makes the last child flip a byte of its memory first.

use cryo_integration::wl::{self, Args, Log};
use std::hint::black_box;

fn fork() -> i32 {
    // SAFETY: the workload is single-threaded, so the child may run any
    // code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        wl::die("fork");
    }
    pid
}

fn close(fd: i32) {
    // SAFETY: closing an fd number we own.
    unsafe {
        libc::close(fd);
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: sending a signal has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// waitpid(pid, flags); returns (pid, wait status) or (-1, 0).
fn waitpid(pid: i32, flags: i32) -> (i32, i32) {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    (r, status)
}

fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// The life of a child or grandchild; never returns.
fn member(log: &Log, name: &str, seed: u64, ready_w: i32, grandchild: bool, corrupt: bool) -> ! {
    let pid = wl::getpid();
    let ppid = wl::getppid();
    let pgrp = wl::getpgrp();
    let sid = wl::getsid();
    let mut mem = vec![0u64; 32 * 1024];
    wl::fill(&mut mem, seed);
    let sum = wl::checksum(&mem);
    let mut gc = 0;
    if grandchild {
        gc = fork();
        if gc == 0 {
            let name = format!("{name}.0");
            member(log, &name, seed + 0x100, ready_w, false, false);
        }
    }
    log.line(&format!("MEMBER {name} pid={pid} ppid={ppid} pgrp={pgrp} sid={sid}"));
    // SAFETY: writing one byte from a valid buffer.
    if unsafe { libc::write(ready_w, b"r".as_ptr().cast(), 1) } != 1 {
        wl::die("write ready pipe");
    }
    close(ready_w);

    let mut counter: u64 = 0;
    let mut shadow = Box::new(0u64);
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
        counter += 1;
        *shadow += 1;
        black_box(&mut *shadow);
    }

    let mut problems = Vec::new();
    if gc != 0 {
        kill(gc, libc::SIGUSR1);
        let (r, status) = waitpid(gc, 0);
        if r != gc {
            problems.push(format!("wait for grandchild {gc} returned {r}"));
        } else if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            problems.push(format!("grandchild {gc}: {}", describe(status)));
        }
    }
    if corrupt {
        mem[777] ^= 1;
    }
    let checks = [
        ("pid", wl::getpid(), pid),
        ("ppid", wl::getppid(), ppid),
        ("pgrp", wl::getpgrp(), pgrp),
        ("sid", wl::getsid(), sid),
    ];
    for (what, now, then) in checks {
        if now != then {
            problems.push(format!("{what} {now} != {then}"));
        }
    }
    let s = wl::checksum(black_box(&mem));
    if s != sum {
        problems.push(format!("memory checksum {s:#x} != {sum:#x}"));
    }
    if counter != *shadow {
        problems.push(format!("counter {counter} != heap copy {}", *shadow));
    }
    if problems.is_empty() {
        log.line(&format!("MEMBER {name} PASS pid={pid} counter={counter}"));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(0) }
    }
    log.line(&format!("MEMBER {name} FAIL {}", problems.join("; ")));
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(1) }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let k = args.num("children", 3) as usize;
    if k == 0 {
        wl::die("--children must be at least 1");
    }
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        wl::die("pipe2");
    }
    let (ready_r, ready_w) = (fds[0], fds[1]);

    let mut kids = Vec::with_capacity(k);
    for i in 0..k {
        let pid = fork();
        if pid == 0 {
            close(ready_r);
            member(
                &log,
                &format!("child{i}"),
                0x100 + i as u64,
                ready_w,
                i == 0,
                corrupt && i == k - 1,
            );
        }
        kids.push(pid);
    }
    close(ready_w);
    // Every member writes one byte and closes the pipe; EOF means all done.
    let mut got = 0;
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(ready_r, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || wl::errno() != libc::EINTR {
            break;
        }
    }
    close(ready_r);
    if got != k + 1 {
        wl::die(&format!("{got} of {} members reported ready", k + 1));
    }
    let list: Vec<String> = kids.iter().map(|p| p.to_string()).collect();
    log.line(&format!("CHILDREN {}", list.join(",")));
    log.ready();

    let mut problems = Vec::new();
    while !wl::usr1_seen() {
        let (r, status) = waitpid(-1, libc::WNOHANG);
        if r > 0 {
            problems.push(format!("child {r} died early: {}", describe(status)));
            break;
        }
        wl::sleep_ms(10);
    }
    for &pid in &kids {
        kill(pid, libc::SIGUSR1);
    }
    let mut reaped = Vec::new();
    loop {
        let (r, status) = waitpid(-1, 0);
        if r < 0 {
            if wl::errno() == libc::EINTR {
                continue;
            }
            break;
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            problems.push(format!("child {r}: {}", describe(status)));
        }
        reaped.push(r);
    }
    let mut want = kids.clone();
    want.sort_unstable();
    reaped.sort_unstable();
    if reaped != want {
        problems.push(format!("reaped {reaped:?}, forked {want:?}"));
    }
    log.verdict(&problems, &format!("children={}", list.join(",")));
}
