//! timers: interval timers, POSIX timers and CPU-time clocks survive.
//!
//! `timers --log F [--check LIST] [--corrupt]`
//!
//! Checks (all by default):
//! - `itimers`: setitimer REAL (1000 s, interval 2000 s), VIRTUAL (500 s,
//!   interval 700 s), PROF (600 s, interval 800 s). Intervals must be exact,
//!   remaining values no larger than set (plus a tick) and no smaller than set minus the
//!   (wall or CPU) time used since, minus 1 s.
//! - `posix`: raw timer_create of A (MONOTONIC, signal SIGRTMIN+1, value
//!   0xA0, 1000 s / 50 s), B (REALTIME, deleted again, leaving a hole in the
//!   ids), C (BOOTTIME, SIGEV_NONE, 900 s one-shot), D (REALTIME,
//!   SIGEV_THREAD_ID to the main thread, SIGRTMIN+2, 0xA3, absolute
//!   deadline now+1200 s) and E (never armed). Each id must still name its
//!   timer (timer_gettime: interval exact, remaining time in range), B's id
//!   must be free (EINVAL), and /proc/self/timers (id, signal/value, notify
//!   kind, clock) must match the snapshot taken before READY.
//! - `overrun`: F (MONOTONIC, SIGRTMIN+3 blocked, value 0xA4, every 20 ms)
//!   fires for 400 ms before READY, so its queued signal has collected
//!   overruns: the first sigtimedwait after the check starts must return
//!   SI_TIMER from F's id with 0xA4 and si_overrun >= 10, and F must keep
//!   firing (a second signal within 1 s).
//! - `cpu`: after burning 50 ms of CPU, G (CLOCK_PROCESS_CPUTIME_ID,
//!   SIGRTMIN+4, 0xA5) is armed to 300 ms. After restore G must still be
//!   armed with 0 < remaining <= 300 ms, and burning CPU must make it fire
//!   after about its remaining time; the process and thread CPU clocks must
//!   advance while burning. (A restored process's CPU clocks cannot be set:
//!   their absolute values are reported in the PASS line, not checked.)
//! - `thread`: H (MONOTONIC, SIGEV_THREAD_ID to a second thread W,
//!   SIGRTMIN+5, value 0xA6, every 100 ms, as glibc's SIGEV_THREAD timers
//!   notify their helper thread). W takes the signals with sigtimedwait;
//!   after the trigger H must still be armed with its 100 ms interval and
//!   W must receive at least two more of its signals within 2 s, each
//!   SI_TIMER from H's id with 0xA6 (and none may reach the main thread).
//!
//! `--corrupt` after READY: a changed REAL interval, a changed interval on
//! A, F deleted, G disarmed, H deleted.

use cryo_integration::probe::{self, Only, Problems, SI_TIMER};
use cryo_integration::wl::{self, Args, Log};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

const ALL: &[&str] = &["itimers", "posix", "overrun", "cpu", "thread"];
const S: u64 = 1_000_000_000;

/// struct sigevent as the kernel reads it (64 bytes on x86_64).
#[repr(C)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct KItimerspec {
    interval: libc::timespec,
    value: libc::timespec,
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / S) as libc::time_t,
        tv_nsec: (ns % S) as libc::c_long,
    }
}

fn ns(t: &libc::timespec) -> u64 {
    t.tv_sec as u64 * S + t.tv_nsec as u64
}

fn timer_create(clock: libc::clockid_t, notify: i32, signo: i32, value: u64, tid: i32) -> i32 {
    let ev = KSigevent {
        value,
        signo,
        notify,
        tid,
        _pad: [0; 11],
    };
    let mut id: i32 = -1;
    if probe::sys(
        libc::SYS_timer_create,
        [
            clock as u64,
            &ev as *const KSigevent as u64,
            &mut id as *mut i32 as u64,
            0,
            0,
            0,
        ],
    )
    .is_err()
    {
        wl::die(&format!("timer_create(clock {clock})"));
    }
    id
}

fn timer_settime(id: i32, flags: i32, value_ns: u64, interval_ns: u64) {
    let new = KItimerspec {
        interval: ts(interval_ns),
        value: ts(value_ns),
    };
    if probe::sys(
        libc::SYS_timer_settime,
        [id as u64, flags as u64, &new as *const KItimerspec as u64, 0, 0, 0],
    )
    .is_err()
    {
        wl::die(&format!("timer_settime({id})"));
    }
}

fn timer_gettime(id: i32) -> Result<(u64, u64), i32> {
    let mut cur = KItimerspec::default();
    probe::sys(
        libc::SYS_timer_gettime,
        [id as u64, &mut cur as *mut KItimerspec as u64, 0, 0, 0, 0],
    )?;
    Ok((ns(&cur.value), ns(&cur.interval)))
}

fn getitimer(which: i32) -> (u64, u64) {
    let mut v = libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval { tv_sec: 0, tv_usec: 0 },
    };
    // SAFETY: `v` is a valid out-pointer.
    unsafe {
        libc::getitimer(which, &mut v);
    }
    let us = |t: &libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(&v.it_value), us(&v.it_interval))
}

fn setitimer(which: i32, value_s: u64, interval_s: u64) {
    let v = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: interval_s as libc::time_t,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: value_s as libc::time_t,
            tv_usec: 0,
        },
    };
    // SAFETY: `v` is valid; a null old value is allowed.
    if unsafe { libc::setitimer(which, &v, std::ptr::null_mut()) } != 0 {
        wl::die("setitimer");
    }
}

/// /proc/self/timers entries with the pid number of `notify` left out
/// (it is a host pid): "ID: n | signal: s/value | notify: kind/pid | ClockID: c".
fn proc_timers() -> Vec<String> {
    let text = probe::read_proc("/proc/self/timers");
    let mut out = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.starts_with("ID:") && !cur.is_empty() {
            out.push(cur.join(" | "));
            cur.clear();
        }
        let l = if l.starts_with("notify:") {
            l.split('.').next().unwrap_or(l).to_string()
        } else {
            l.to_string()
        };
        cur.push(l);
    }
    if !cur.is_empty() {
        out.push(cur.join(" | "));
    }
    out
}

fn rt(n: i32) -> i32 {
    probe::sigrtmin() + n
}

/// Checks a remaining time: `set - elapsed - 1 s <= got <= set + 20 ms`
/// (the kernel adds one tick to a CPU itimer's first expiry).
fn in_range(p: &mut Problems, check: &str, what: &str, got: u64, set: u64, elapsed: u64) {
    if got > set + 20_000_000 || got + elapsed + S < set {
        p.add(
            check,
            format!(
                "{what}: remaining {} ms, set {} ms, {} ms used since",
                got / 1_000_000,
                set / 1_000_000,
                elapsed / 1_000_000
            ),
        );
    }
}

/// Signals of timer H taken by thread W: (count, last timer id, last value,
/// last code); W's tid.
static W_COUNT: AtomicU64 = AtomicU64::new(0);
static W_LAST: AtomicU64 = AtomicU64::new(0);
static W_TID: AtomicI32 = AtomicI32::new(0);

/// Thread W: takes SIGRTMIN+5 (blocked in every thread) forever.
fn waiter() {
    W_TID.store(probe::gettid(), Ordering::SeqCst);
    loop {
        if let Ok(i) = probe::sigtimedwait(probe::sigbit(rt(5)), 1000) {
            let ok = i.code() == SI_TIMER && i.value() == 0xA6;
            W_LAST.store(((i.timerid() as u32 as u64) << 1) | u64::from(ok), Ordering::SeqCst);
            W_COUNT.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let only = Only::from_args(&args, ALL, ALL);
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    probe::sigprocmask(
        libc::SIG_BLOCK,
        Some(probe::sigset_of(&[
            rt(1),
            rt(2),
            rt(3),
            rt(4),
            rt(5),
            libc::SIGALRM,
            libc::SIGVTALRM,
            libc::SIGPROF,
        ])),
    );
    let t0 = probe::mono_ns();
    let cpu0 = probe::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);

    if only.has("itimers") {
        setitimer(libc::ITIMER_REAL, 1000, 2000);
        setitimer(libc::ITIMER_VIRTUAL, 500, 700);
        setitimer(libc::ITIMER_PROF, 600, 800);
    }
    let mut ids = (0, 0, 0, 0, 0);
    let mut rt_deadline = 0;
    let mut snap = Vec::new();
    if only.has("posix") {
        let a = timer_create(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt(1), 0xA0, 0);
        let b = timer_create(libc::CLOCK_REALTIME, SIGEV_SIGNAL, rt(1), 0xA1, 0);
        let c = timer_create(libc::CLOCK_BOOTTIME, SIGEV_NONE, 0, 0, 0);
        let d = timer_create(libc::CLOCK_REALTIME, SIGEV_THREAD_ID, rt(2), 0xA3, probe::gettid());
        let e = timer_create(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt(1), 0xA4, 0);
        if probe::sys(libc::SYS_timer_delete, [b as u64, 0, 0, 0, 0, 0]).is_err() {
            wl::die("timer_delete");
        }
        timer_settime(a, 0, 1000 * S, 50 * S);
        timer_settime(c, 0, 900 * S, 0);
        rt_deadline = probe::clock_ns(libc::CLOCK_REALTIME) + 1200 * S;
        timer_settime(d, libc::TIMER_ABSTIME, rt_deadline, 0);
        ids = (a, b, c, d, e);
    }
    let mut f = -1;
    if only.has("overrun") {
        f = timer_create(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt(3), 0xA4, 0);
        timer_settime(f, 0, 20_000_000, 20_000_000);
    }
    let mut g = -1;
    if only.has("cpu") {
        probe::burn_cpu_ms(50);
        g = timer_create(libc::CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, rt(4), 0xA5, 0);
        timer_settime(g, 0, 300_000_000, 0);
    }
    let mut h = -1;
    if only.has("thread") {
        std::thread::spawn(waiter);
        while W_TID.load(Ordering::SeqCst) == 0 {
            wl::sleep_ms(1);
        }
        h = timer_create(
            libc::CLOCK_MONOTONIC,
            SIGEV_THREAD_ID,
            rt(5),
            0xA6,
            W_TID.load(Ordering::SeqCst),
        );
        timer_settime(h, 0, 100_000_000, 100_000_000);
        while W_COUNT.load(Ordering::SeqCst) < 2 {
            wl::sleep_ms(10);
        }
    }
    if only.has("overrun") {
        wl::sleep_ms(400);
    }
    if only.has("posix") {
        snap = proc_timers();
    }
    let cpu_ready = probe::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    log.line(&format!(
        "TIMERS checks={} ids={ids:?} overrun={f} cpu={g} cpu_ns={cpu_ready}",
        only.list()
    ));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        if only.has("itimers") {
            setitimer(libc::ITIMER_REAL, 1000, 2001);
        }
        if only.has("posix") {
            timer_settime(ids.0, 0, 1000 * S, 51 * S);
        }
        if only.has("overrun") {
            let _ = probe::sys(libc::SYS_timer_delete, [f as u64, 0, 0, 0, 0, 0]);
        }
        if only.has("cpu") {
            timer_settime(g, 0, 0, 0);
        }
        if only.has("thread") {
            let _ = probe::sys(libc::SYS_timer_delete, [h as u64, 0, 0, 0, 0, 0]);
        }
    }

    let mut p = Problems::new();
    let wall = probe::mono_ns() - t0;
    let cpu_used = probe::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(cpu0);
    let mut details = format!("checks={}", only.list());
    if only.has("itimers") {
        let c = "itimers";
        for (name, which, val, int, used) in [
            ("REAL", libc::ITIMER_REAL, 1000u64, 2000u64, wall),
            ("VIRTUAL", libc::ITIMER_VIRTUAL, 500, 700, cpu_used),
            ("PROF", libc::ITIMER_PROF, 600, 800, cpu_used),
        ] {
            let (v, i) = getitimer(which);
            p.eq(c, &format!("ITIMER_{name} interval (us)"), i, int * 1_000_000);
            in_range(&mut p, c, &format!("ITIMER_{name}"), v * 1000, val * S, used);
        }
    }
    if only.has("posix") {
        let c = "posix";
        let (a, b, cc, d, e) = ids;
        match timer_gettime(a) {
            Ok((v, i)) => {
                p.eq(c, &format!("timer A (id {a}) interval ns"), i, 50 * S);
                in_range(&mut p, c, &format!("timer A (id {a})"), v, 1000 * S, wall);
            }
            Err(er) => p.add(c, format!("timer A (id {a}): timer_gettime errno {er}")),
        }
        match timer_gettime(cc) {
            Ok((v, i)) => {
                p.eq(c, &format!("timer C (id {cc}) interval ns"), i, 0);
                in_range(&mut p, c, &format!("timer C (id {cc})"), v, 900 * S, wall);
            }
            Err(er) => p.add(c, format!("timer C (id {cc}): timer_gettime errno {er}")),
        }
        match timer_gettime(d) {
            Ok((v, i)) => {
                p.eq(c, &format!("timer D (id {d}) interval ns"), i, 0);
                let left = rt_deadline.saturating_sub(probe::clock_ns(libc::CLOCK_REALTIME));
                if v.abs_diff(left) > S {
                    p.add(
                        c,
                        format!(
                            "timer D (id {d}): remaining {} ms, its absolute deadline is {} ms away",
                            v / 1_000_000,
                            left / 1_000_000
                        ),
                    );
                }
            }
            Err(er) => p.add(c, format!("timer D (id {d}): timer_gettime errno {er}")),
        }
        match timer_gettime(e) {
            Ok((v, i)) => p.eq(
                c,
                &format!("timer E (id {e}, never armed) (value, interval)"),
                (v, i),
                (0, 0),
            ),
            Err(er) => p.add(c, format!("timer E (id {e}): timer_gettime errno {er}")),
        }
        if timer_gettime(b) != Err(libc::EINVAL) {
            p.add(c, format!("the id {b} of the deleted timer B names a timer again"));
        }
        let now = proc_timers();
        if now != snap {
            p.add(c, format!("/proc/self/timers is {now:?}, was {snap:?}"));
        }
    }
    if only.has("overrun") {
        let c = "overrun";
        match probe::sigtimedwait(probe::sigbit(rt(3)), 1000) {
            Err(e) => p.add(c, format!("no signal from timer F (id {f}) within 1 s (errno {e})")),
            Ok(i) => {
                if i.code() != SI_TIMER || i.timerid() != f || i.value() != 0xA4 {
                    p.add(
                        c,
                        format!(
                            "got sig={} code={} timerid={} value={:#x}, expected code {SI_TIMER} timerid {f} value 0xa4",
                            i.signo(),
                            i.code(),
                            i.timerid(),
                            i.value()
                        ),
                    );
                } else if i.overrun() < 10 {
                    p.add(
                        c,
                        format!(
                            "si_overrun is {}, expected >= 10 (400 ms at 20 ms before READY)",
                            i.overrun()
                        ),
                    );
                }
                details += &format!(" overrun={}", i.overrun());
                if probe::sigtimedwait(probe::sigbit(rt(3)), 1000).is_err() {
                    p.add(c, format!("timer F (id {f}) stopped firing"));
                }
            }
        }
    }
    if only.has("thread") {
        let c = "thread";
        match timer_gettime(h) {
            Ok((v, i)) => {
                p.eq(c, &format!("timer H (id {h}) interval ns"), i, 100_000_000);
                if v == 0 || v > 100_000_000 {
                    p.add(
                        c,
                        format!("timer H (id {h}) remaining {v} ns, expected 0 < r <= 100 ms"),
                    );
                }
            }
            Err(e) => p.add(c, format!("timer H (id {h}): timer_gettime errno {e}")),
        }
        let n0 = W_COUNT.load(Ordering::SeqCst);
        let start = probe::mono_ns();
        while W_COUNT.load(Ordering::SeqCst) < n0 + 2 && probe::mono_ns() - start < 2 * S {
            wl::sleep_ms(10);
        }
        let got = W_COUNT.load(Ordering::SeqCst) - n0;
        if got < 2 {
            p.add(
                c,
                format!("thread W received {got} signals of timer H (id {h}) in 2 s, expected >= 2"),
            );
        }
        let last = W_LAST.load(Ordering::SeqCst);
        if last != ((h as u32 as u64) << 1) | 1 {
            p.add(
                c,
                format!(
                    "W's last signal: timer id {} (code SI_TIMER and value 0xA6: {})",
                    last >> 1,
                    last & 1 == 1
                ),
            );
        }
        if probe::sigpending() & probe::sigbit(rt(5)) != 0 {
            p.add(c, "a signal of timer H is pending for the main thread".to_string());
        }
        details += &format!(" thread_signals={got}");
    }
    if only.has("cpu") {
        let c = "cpu";
        details += &format!(
            " cpu_before_ms={} cpu_now_ms={}",
            cpu_ready / 1_000_000,
            probe::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) / 1_000_000
        );
        match timer_gettime(g) {
            Err(e) => p.add(c, format!("timer G (id {g}): timer_gettime errno {e}")),
            Ok((v, _)) if v == 0 || v > 300_000_000 => p.add(
                c,
                format!("timer G (id {g}) remaining {v} ns, expected 0 < r <= 300 ms"),
            ),
            Ok((v, _)) => {
                let p0 = probe::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
                let t0 = probe::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
                let limit = v + 300_000_000;
                let fired = loop {
                    probe::burn_cpu_ms(5);
                    if let Ok(i) = probe::sigtimedwait(probe::sigbit(rt(4)), 0) {
                        break Some(i);
                    }
                    if probe::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - t0 > limit {
                        break None;
                    }
                };
                let burned = probe::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - t0;
                let pburned = probe::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - p0;
                match fired {
                    None => p.add(
                        c,
                        format!(
                            "timer G (id {g}) did not fire after {} ms of CPU (remaining was {} ms)",
                            burned / 1_000_000,
                            v / 1_000_000
                        ),
                    ),
                    Some(i) => {
                        if i.code() != SI_TIMER || i.timerid() != g || i.value() != 0xA5 {
                            p.add(
                                c,
                                format!(
                                    "timer G signal: code {} timerid {} value {:#x}",
                                    i.code(),
                                    i.timerid(),
                                    i.value()
                                ),
                            );
                        }
                        if burned + 20_000_000 < v {
                            p.add(
                                c,
                                format!(
                                    "timer G fired after {} ms of CPU, {} ms were left",
                                    burned / 1_000_000,
                                    v / 1_000_000
                                ),
                            );
                        }
                    }
                }
                if pburned < burned / 2 || burned < 1_000_000 {
                    p.add(
                        c,
                        format!("CPU clocks do not advance: thread {burned} ns, process {pburned} ns"),
                    );
                }
            }
        }
    }
    log.verdict(&p.v, &details);
}
