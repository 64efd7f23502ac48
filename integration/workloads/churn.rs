//! churn: a process whose tree and thread list keep changing while it is
//! being frozen (issue 3's faults: a task that forks or exits during the
//! dump, a thread created while freezing).
//!
//! `churn --log F [--corrupt]`
//!
//! The main thread forks children that exit at once (and reaps them) in a
//! loop; a second thread creates short-lived threads in a loop. Both count
//! their rounds in memory, next to a checksummed buffer. On SIGUSR1 the
//! main thread checks that both counters still advance, that the buffer is
//! intact and that no child is left unreaped, then writes PASS or FAIL.
//! `--corrupt` flips a byte of the buffer first (the check must FAIL).

use std::sync::atomic::{AtomicU64, Ordering};

use cryo_integration::wl::{self, Args, Log};

static FORKS: AtomicU64 = AtomicU64::new(0);
static THREADS: AtomicU64 = AtomicU64::new(0);

fn sum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    let mut buf: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = sum(&buf);
    wl::install_usr1();
    std::thread::spawn(|| loop {
        let _ = std::thread::spawn(|| {}).join();
        THREADS.fetch_add(1, Ordering::Relaxed);
    });
    log.ready();
    loop {
        if wl::usr1_seen() {
            break;
        }
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit in the child of a fork.
            unsafe { libc::_exit(0) };
        }
        if pid > 0 {
            let mut st = 0;
            // SAFETY: waits for our own child; SIGUSR1 may interrupt the
            // wait (EINTR): wait again, or the child stays unreaped.
            while unsafe { libc::waitpid(pid, &mut st, 0) } < 0 && wl::errno() == libc::EINTR {}
        }
        FORKS.fetch_add(1, Ordering::Relaxed);
        wl::sleep_ms(1);
    }
    if corrupt {
        buf[4242] ^= 0xff;
    }
    let mut problems = Vec::new();
    let (f0, t0) = (FORKS.load(Ordering::Relaxed), THREADS.load(Ordering::Relaxed));
    wl::sleep_ms(200);
    // The main loop stopped forking on SIGUSR1: fork a few more to prove it works.
    for _ in 0..5 {
        // SAFETY: as above.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit in the child of a fork.
            unsafe { libc::_exit(7) };
        }
        let mut st = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r != pid || !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 7 {
            problems.push(format!("fork after restore: waitpid {r} status {st:#x}"));
        }
    }
    if THREADS.load(Ordering::Relaxed) <= t0 {
        problems.push(format!("the thread creator is stuck at {t0}"));
    }
    // SAFETY: no children may remain: waitpid must say ECHILD.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    if r != -1 || wl::errno() != libc::ECHILD {
        problems.push(format!("an unexpected child is left (waitpid -1 gave {r})"));
    }
    if sum(&buf) != want {
        problems.push("memory: the buffer checksum changed".into());
    }
    log.verdict(&problems, &format!("forks={f0} threads={t0}"));
}
