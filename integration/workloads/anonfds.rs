//! anonfds: eventfd, signalfd, timerfd and epoll keep their state.
//!
//! `anonfds --log F [--corrupt]`
//!
//! The parent P creates:
//! - eventfd E1 (count 5, O_NONBLOCK), shared with its child C;
//! - eventfd E2 in semaphore mode (count 3, O_NONBLOCK);
//! - signalfd S for SIGUSR2 and SIGRTMIN+1 (both blocked), with SIGUSR2
//!   pending;
//! - timerfd T1 (monotonic, 300 s left, 7 s interval), T2 (10 ms period,
//!   never read, so expirations pile up), T3 (realtime, absolute, an hour
//!   ahead);
//! - a pipe with 3 bytes queued;
//! - epoll EP watching E1 (data 0x1111), the pipe (edge-triggered,
//!   0x2222), S (0x3333) and T1 (0x4444), shared with C; epoll EP2
//!   watching EP (0x5555).
//!
//! On SIGUSR1 P checks: EP reports exactly E1, the pipe and S ready; EP2
//! reports EP; EPOLL_CTL_MOD/DEL work on the registered fd numbers; E1
//! reads 5 then EAGAIN; E2 reads 1 three times then EAGAIN; S delivers the
//! pending SIGUSR2 and has its mask; T1's time left and interval, T2's
//! piled-up expirations, T3's time left; then C adds 10 to E1 and P reads
//! it; C sees E1 ready under P's new registration data in the shared EP.
//! `--corrupt` drains E1 after the dump.

use cryo_integration::wl::{self, Args, Log};

fn fork() -> i32 {
    // SAFETY: the workload is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        wl::die("fork");
    }
    pid
}

fn read_u64(fd: i32) -> Result<u64, i32> {
    let mut v = 0u64;
    // SAFETY: reads at most 8 bytes into `v`.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        Ok(v)
    } else {
        Err(wl::errno())
    }
}

fn write_u64(fd: i32, v: u64) {
    // SAFETY: writes 8 bytes from `v`.
    if unsafe { libc::write(fd, (&v as *const u64).cast(), 8) } != 8 {
        wl::die("write eventfd");
    }
}

fn timer(clock: i32, flags: i32, value: (i64, i64), interval: (i64, i64)) -> i32 {
    // SAFETY: integer arguments.
    let fd = unsafe { libc::timerfd_create(clock, libc::TFD_NONBLOCK) };
    if fd < 0 {
        wl::die("timerfd_create");
    }
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: interval.0,
            tv_nsec: interval.1,
        },
        it_value: libc::timespec {
            tv_sec: value.0,
            tv_nsec: value.1,
        },
    };
    // SAFETY: `its` is valid; no old value requested.
    if unsafe { libc::timerfd_settime(fd, flags, &its, std::ptr::null_mut()) } != 0 {
        wl::die("timerfd_settime");
    }
    fd
}

fn gettime(fd: i32) -> ((i64, i64), (i64, i64)) {
    // SAFETY: all-zero itimerspec is valid; the kernel fills it.
    let mut its: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: `its` is writable.
    unsafe { libc::timerfd_gettime(fd, &mut its) };
    (
        (its.it_value.tv_sec, its.it_value.tv_nsec),
        (its.it_interval.tv_sec, its.it_interval.tv_nsec),
    )
}

fn now(clock: i32) -> i64 {
    // SAFETY: all-zero timespec is valid; the kernel fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec
}

fn epoll_add(ep: i32, fd: i32, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is valid for the call.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        wl::die("epoll_ctl ADD");
    }
}

fn epoll_ready(ep: i32) -> Vec<u64> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
    // SAFETY: `evs` has room for 16 events.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 16, 0) };
    let mut v: Vec<u64> = evs[..n.max(0) as usize].iter().map(|e| e.u64).collect();
    v.sort_unstable();
    v
}

fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set.
    let mut s: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `s` is a valid sigset.
    unsafe {
        libc::sigemptyset(&mut s);
        for &g in sigs {
            libc::sigaddset(&mut s, g);
        }
    }
    s
}

fn fdinfo(fd: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let rtmin1 = libc::SIGRTMIN() + 1;

    // SAFETY: integer arguments.
    let e1 = unsafe { libc::eventfd(5, libc::EFD_NONBLOCK) };
    // SAFETY: integer arguments.
    let e2 = unsafe { libc::eventfd(3, libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE) };
    let mask = sigset(&[libc::SIGUSR2, rtmin1]);
    // SAFETY: `mask` is a valid sigset.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
    // SAFETY: `mask` is a valid sigset.
    let s = unsafe { libc::signalfd(-1, &mask, libc::SFD_NONBLOCK) };
    // SAFETY: signalling ourselves.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
    let t1 = timer(libc::CLOCK_MONOTONIC, 0, (300, 0), (7, 0));
    let t2 = timer(libc::CLOCK_MONOTONIC, 0, (0, 10_000_000), (0, 10_000_000));
    let hour_ahead = now(libc::CLOCK_REALTIME) + 3600;
    let t3 = timer(libc::CLOCK_REALTIME, libc::TFD_TIMER_ABSTIME, (hour_ahead, 0), (0, 0));
    let mut p = [0i32; 2];
    // SAFETY: `p` has room for two fds.
    unsafe { libc::pipe(p.as_mut_ptr()) };
    // SAFETY: 3 valid bytes.
    unsafe { libc::write(p[1], b"abc".as_ptr().cast(), 3) };
    // SAFETY: integer argument.
    let ep = unsafe { libc::epoll_create1(0) };
    // SAFETY: integer argument.
    let ep2 = unsafe { libc::epoll_create1(0) };
    if [e1, e2, s, ep, ep2].iter().any(|&f| f < 0) {
        wl::die("create descriptors");
    }
    epoll_add(ep, e1, libc::EPOLLIN as u32, 0x1111);
    epoll_add(ep, p[0], (libc::EPOLLIN | libc::EPOLLET) as u32, 0x2222);
    epoll_add(ep, s, libc::EPOLLIN as u32, 0x3333);
    epoll_add(ep, t1, libc::EPOLLIN as u32, 0x4444);
    epoll_add(ep2, ep, libc::EPOLLIN as u32, 0x5555);

    let c = fork();
    if c == 0 {
        // SAFETY: closing our copies of what the child does not use.
        unsafe {
            for fd in [e2, s, t1, t2, t3, p[0], p[1], ep2] {
                libc::close(fd);
            }
        }
        while !wl::usr1_seen() {
            wl::sleep_ms(10);
        }
        // P changed E1's registration to 0x6666 in the shared epoll.
        write_u64(e1, 10);
        let ready = epoll_ready(ep);
        let ok = ready.contains(&0x6666);
        log.line(&format!(
            "MEMBER c {} ready={ready:x?}",
            if ok { "PASS" } else { "FAIL" }
        ));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    wl::sleep_ms(300);
    let table = format!(
        "e1={e1} e2={e2} s={s} t1={t1} t2={t2} t3={t3} pipe={} ep={ep} ep2={ep2}",
        p[0]
    );
    log.line(&format!("FDS {table} c={c}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    let mut pr = Vec::new();
    if corrupt {
        let _ = read_u64(e1);
    }
    let ready = epoll_ready(ep);
    if ready != [0x1111, 0x2222, 0x3333] {
        pr.push(format!("epoll reports {ready:x?}, expected [1111, 2222, 3333]"));
    }
    let r2 = epoll_ready(ep2);
    if r2 != [0x5555] {
        pr.push(format!("nested epoll reports {r2:x?}"));
    }
    // The registrations are keyed by the right fd numbers.
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0x6666,
    };
    // SAFETY: `ev` is valid for the call.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, e1, &mut ev) } != 0 {
        pr.push(format!("EPOLL_CTL_MOD of fd {e1}: errno {}", wl::errno()));
    }
    // SAFETY: a null event is allowed for DEL.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, p[0], std::ptr::null_mut()) } != 0 {
        pr.push(format!("EPOLL_CTL_DEL of fd {}: errno {}", p[0], wl::errno()));
    }
    if epoll_ready(ep) != [0x3333, 0x6666] {
        pr.push(format!("epoll after MOD/DEL reports {:x?}", epoll_ready(ep)));
    }
    match (read_u64(e1), read_u64(e1)) {
        (Ok(5), Err(libc::EAGAIN)) => {}
        other => pr.push(format!("eventfd E1 reads {other:?}, expected 5 then EAGAIN")),
    }
    let sem: Vec<Result<u64, i32>> = (0..4).map(|_| read_u64(e2)).collect();
    if sem != [Ok(1), Ok(1), Ok(1), Err(libc::EAGAIN)] {
        pr.push(format!("semaphore eventfd E2 reads {sem:?}"));
    }
    let want_mask = (1u64 << (libc::SIGUSR2 - 1)) | (1u64 << (rtmin1 - 1));
    let got_mask = u64::from_str_radix(&fdinfo(s, "sigmask:"), 16).unwrap_or(0);
    if got_mask != want_mask {
        pr.push(format!("signalfd mask {got_mask:#x}, expected {want_mask:#x}"));
    }
    // SAFETY: an all-zero siginfo buffer is valid.
    let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let sz = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `si` is writable for its size.
    let n = unsafe { libc::read(s, (&mut si as *mut libc::signalfd_siginfo).cast(), sz) };
    if n != sz as isize || si.ssi_signo != libc::SIGUSR2 as u32 {
        pr.push(format!("signalfd read {n} bytes, signal {}", si.ssi_signo));
    }
    let (v1, i1) = gettime(t1);
    if !(200..=300).contains(&v1.0) || i1 != (7, 0) {
        pr.push(format!("timerfd T1 left {v1:?} interval {i1:?}"));
    }
    match read_u64(t2) {
        Ok(n) if n >= 20 => {}
        other => pr.push(format!("timerfd T2 expirations {other:?}, expected at least 20")),
    }
    let (v3, _) = gettime(t3);
    if !(3000..=3600).contains(&v3.0) {
        pr.push(format!("timerfd T3 left {v3:?}"));
    }
    // SAFETY: sending a signal has no memory effects.
    unsafe { libc::kill(c, libc::SIGUSR1) };
    let mut st = 0;
    // SAFETY: `st` is a valid out-pointer.
    while unsafe { libc::waitpid(c, &mut st, 0) } != c {
        if wl::errno() != libc::EINTR {
            break;
        }
    }
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        pr.push(format!("child ended with status {st:#x}"));
    }
    match read_u64(e1) {
        Ok(10) => {}
        other => pr.push(format!("eventfd E1 after the child's write reads {other:?}")),
    }
    log.verdict(&pr, &table);
}
