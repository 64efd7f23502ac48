//! blocked: tasks in the middle of blocking syscalls continue correctly.
//!
//! `blocked --log F --as threads|procs [--check LIST] [--sleep-ms D] [--corrupt]`
//!
//! One task per checked call, each a thread of this process (`--as
//! threads`) or a child process (`--as procs`), blocked in:
//! - `futex`: FUTEX_WAIT on a word that is 0 (threads: woken by the main
//!   thread with word=1 + FUTEX_WAKE, every signal blocked; procs: woken by
//!   SIGUSR2, whose handler does not restart). A return while it was not
//!   woken is a failure: the kernel restarts an interrupted futex wait
//!   without a timeout transparently.
//! - `nanosleep`: nanosleep(600 s), woken by SIGUSR2: must return EINTR
//!   with the handler run and a remaining time between 600 s minus the time
//!   since the call and 600 s.
//! - `sleep-restart`: nanosleep(D) (default 3000 ms) with every signal
//!   blocked: must return 0, not before D has passed.
//! - `abs-sleep`: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, start+D),
//!   every signal blocked: returns 0 at or after the deadline.
//! - `epoll`: epoll_wait(-1) on an empty epoll set, woken by SIGUSR2: EINTR.
//! - `pause`: pause(), woken by SIGUSR2: EINTR.
//! - `wait4`: wait4 for a child G (which idles in pause() until SIGUSR2 and
//!   then exits 7), every signal blocked: returns G with exit status 7.
//!
//! After READY the workload idles until SIGUSR1; then the main thread (or
//! root process) wakes each task the way its check says and collects the
//! results: a thread reports to the main thread, a process writes `TASK
//! <call> PASS|FAIL ...` and exits 0/1. The verdict is PASS only if every
//! task was still blocked when it was woken and returned as the kernel
//! would. `--corrupt` sends every task SIGURG (unblocked then, with a
//! handler) 100 ms after READY, which interrupts each call early and must
//! be reported as a failure.

use cryo_integration::probe::{self, Only, Problems};
use cryo_integration::wl::{self, Args, Log};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

const ALL: &[&str] = &[
    "futex",
    "nanosleep",
    "sleep-restart",
    "abs-sleep",
    "epoll",
    "pause",
    "wait4",
];

/// Calls woken by SIGUSR2 (their task leaves it unblocked).
fn signal_woken(call: &str, procs: bool) -> bool {
    matches!(call, "nanosleep" | "epoll" | "pause") || (procs && call == "futex")
}

/// The futex word of the `futex` task (threads mode).
static WORD: AtomicU32 = AtomicU32::new(0);
static RESULTS: Mutex<Vec<(String, Vec<String>)>> = Mutex::new(Vec::new());

struct Ctx {
    procs: bool,
    sleep_ms: u64,
    corrupt: bool,
}

/// Blocks every signal except SIGUSR2 (if the call is woken by it) and
/// SIGURG (with --corrupt).
fn set_task_mask(call: &str, ctx: &Ctx) {
    let mut m = !0u64;
    m &= !probe::sigbit(libc::SIGKILL) & !probe::sigbit(libc::SIGSTOP);
    if signal_woken(call, ctx.procs) {
        m &= !probe::sigbit(libc::SIGUSR2);
    }
    if ctx.corrupt {
        m &= !probe::sigbit(libc::SIGURG);
    }
    probe::sigprocmask(libc::SIG_SETMASK, Some(m));
}

/// " (interrupted by SIGURG)" if that is what happened, for messages.
fn via(tid: i32) -> &'static str {
    if probe::handler_ran_for(tid, libc::SIGURG) {
        " (interrupted by SIGURG)"
    } else {
        ""
    }
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// Checks a call that only a SIGUSR2 handler may end (EINTR).
fn expect_eintr(p: &mut Problems, call: &str, tid: i32, r: i64, e: i32, el: u64) -> bool {
    if r >= 0 {
        p.add(
            call,
            format!("returned {r} after {} ms; it should block until SIGUSR2", ms(el)),
        );
        false
    } else if e != libc::EINTR {
        p.add(call, format!("failed with errno {e} after {} ms", ms(el)));
        false
    } else if !probe::handler_ran_for(tid, libc::SIGUSR2) {
        p.add(
            call,
            format!(
                "returned EINTR after {} ms without the wake-up signal{}",
                ms(el),
                via(tid)
            ),
        );
        false
    } else {
        true
    }
}

fn futex_wait(word: &AtomicU32) -> (i64, i32) {
    match probe::sys(
        libc::SYS_futex,
        [
            word as *const AtomicU32 as u64,
            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
            0,
            0,
            0,
            0,
        ],
    ) {
        Ok(r) => (r, 0),
        Err(e) => (-1, e),
    }
}

/// Runs the task of `call` (the caller has set the mask); `g` is the child
/// to wait for (`wait4`).
fn task(call: &str, ctx: &Ctx, g: i32) -> Vec<String> {
    let tid = probe::gettid();
    let mut p = Problems::new();
    let start = probe::mono_ns();
    match call {
        "futex" => {
            let local = AtomicU32::new(0);
            let word = if ctx.procs { &local } else { &WORD };
            let woken = || {
                if ctx.procs {
                    probe::handler_ran_for(tid, libc::SIGUSR2)
                } else {
                    WORD.load(Ordering::SeqCst) != 0
                }
            };
            let mut spurious = 0;
            while !woken() {
                let (r, e) = futex_wait(word);
                if !woken() {
                    p.add(
                        call,
                        format!(
                            "FUTEX_WAIT returned {r} (errno {e}) after {} ms while nobody woke it{}",
                            ms(probe::mono_ns() - start),
                            via(tid)
                        ),
                    );
                    spurious += 1;
                    if spurious >= 3 {
                        break;
                    }
                }
            }
        }
        "nanosleep" => {
            let ts = libc::timespec {
                tv_sec: 600,
                tv_nsec: 0,
            };
            let mut rem = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: valid timespec pointers.
            let r = unsafe { libc::nanosleep(&ts, &mut rem) } as i64;
            let e = wl::errno();
            let el = probe::mono_ns() - start;
            if expect_eintr(&mut p, call, tid, r, e, el) {
                let rem_ns = rem.tv_sec as u64 * 1_000_000_000 + rem.tv_nsec as u64;
                let full = 600_000_000_000u64;
                if rem_ns > full || rem_ns + el + 2_000_000_000 < full {
                    p.add(
                        call,
                        format!("remaining time {} ms after sleeping {} ms of 600 s", ms(rem_ns), ms(el)),
                    );
                }
            }
        }
        "sleep-restart" | "abs-sleep" => {
            let d = ctx.sleep_ms * 1_000_000;
            let (r, e) = if call == "sleep-restart" {
                let ts = libc::timespec {
                    tv_sec: (ctx.sleep_ms / 1000) as libc::time_t,
                    tv_nsec: ((ctx.sleep_ms % 1000) * 1_000_000) as libc::c_long,
                };
                // SAFETY: a valid timespec; a null remainder is allowed.
                let r = unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
                (r, wl::errno())
            } else {
                let dl = start + d;
                let ts = libc::timespec {
                    tv_sec: (dl / 1_000_000_000) as libc::time_t,
                    tv_nsec: (dl % 1_000_000_000) as libc::c_long,
                };
                // SAFETY: a valid timespec; a null remainder is allowed.
                let r = unsafe {
                    libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut())
                };
                (if r == 0 { 0 } else { -1 }, r)
            };
            let el = probe::mono_ns() - start;
            if r != 0 {
                p.add(
                    call,
                    format!(
                        "returned errno {e} after {} ms of {} ms with every signal blocked{}",
                        ms(el),
                        ctx.sleep_ms,
                        via(tid)
                    ),
                );
            } else if el < d {
                p.add(
                    call,
                    format!("returned after {} ms, before its {} ms", ms(el), ctx.sleep_ms),
                );
            }
        }
        "epoll" => {
            // SAFETY: epoll_create1 takes no pointers.
            let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if ep < 0 {
                wl::die("epoll_create1");
            }
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: `evs` has room for 4 events.
            let r = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1) } as i64;
            let e = wl::errno();
            expect_eintr(&mut p, call, tid, r, e, probe::mono_ns() - start);
        }
        "pause" => {
            // SAFETY: pause has no arguments.
            let r = unsafe { libc::pause() } as i64;
            let e = wl::errno();
            expect_eintr(&mut p, call, tid, r, e, probe::mono_ns() - start);
        }
        "wait4" => {
            let mut st = 0;
            // SAFETY: `st` is a valid out-pointer; a null rusage is allowed.
            let r = unsafe { libc::wait4(g, &mut st, 0, std::ptr::null_mut()) };
            let e = wl::errno();
            let el = probe::mono_ns() - start;
            if r < 0 {
                p.add(
                    call,
                    format!("wait4({g}) failed with errno {e} after {} ms{}", ms(el), via(tid)),
                );
            } else if r != g || !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7) {
                p.add(
                    call,
                    format!(
                        "wait4({g}) returned {r} with {}; expected exit 7",
                        probe::describe_status(st)
                    ),
                );
            }
        }
        other => wl::die(&format!("unknown call {other}")),
    }
    p.v
}

/// The child G that `wait4` waits for: idles until SIGUSR2, exits 7.
/// `close_fd` is a setup pipe end it must not keep open.
fn fork_waitee(close_fd: Option<i32>) -> i32 {
    let g = probe::fork();
    if g == 0 {
        if let Some(fd) = close_fd {
            probe::close(fd);
        }
        let m = !probe::sigbit(libc::SIGUSR2) & !probe::sigbit(libc::SIGKILL);
        probe::sigprocmask(libc::SIG_SETMASK, Some(m));
        while !probe::flag(libc::SIGUSR2) {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        }
        probe::exit_now(7);
    }
    g
}

fn main() {
    let args = Args::from_env();
    let log_path = args.required("log");
    let log: &'static Log = Box::leak(Box::new(Log::open(&log_path)));
    let procs = match args.value("as").as_deref() {
        Some("threads") | None => false,
        Some("procs") => true,
        Some(o) => wl::die(&format!("--as {o}: threads or procs")),
    };
    let only = Only::from_args(&args, ALL, ALL);
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
        procs,
        sleep_ms: args.num("sleep-ms", 3000),
        corrupt: args.flag("corrupt"),
    }));
    let calls: Vec<&'static str> = ALL.iter().copied().filter(|c| only.has(c)).collect();
    wl::install_usr1();
    probe::install_flag(libc::SIGUSR2, 0);
    probe::install_flag(libc::SIGURG, 0);
    // The main thread / root takes neither wake-up signal.
    probe::sigprocmask(
        libc::SIG_BLOCK,
        Some(probe::sigbit(libc::SIGUSR2) | probe::sigbit(libc::SIGURG)),
    );

    // task name -> (tid or pid, waitee pid for wait4)
    let mut tasks: Vec<(&'static str, i32, i32)> = Vec::new();
    let mut handles = Vec::new();
    if !procs {
        let g = if calls.contains(&"wait4") { fork_waitee(None) } else { 0 };
        let (tx, rx) = std::sync::mpsc::channel::<(&'static str, i32)>();
        for &call in &calls {
            let tx = tx.clone();
            let h = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    set_task_mask(call, ctx);
                    let _ = tx.send((call, probe::gettid()));
                    drop(tx);
                    let p = task(call, ctx, g);
                    RESULTS
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((call.to_string(), p));
                })
                .unwrap_or_else(|e| wl::die(&format!("spawn: {e}")));
            handles.push(h);
        }
        drop(tx);
        for (call, tid) in rx.iter() {
            tasks.push((call, tid, if call == "wait4" { g } else { 0 }));
        }
    } else {
        let pipe = probe::SetupPipe::new();
        for (k, &call) in calls.iter().enumerate() {
            let pid = probe::fork();
            if pid == 0 {
                pipe.close_r();
                let g = if call == "wait4" { fork_waitee(Some(pipe.w)) } else { 0 };
                set_task_mask(call, ctx);
                pipe.send(k as i32, wl::getpid());
                pipe.send(k as i32 + 100, g);
                pipe.close_w();
                let p = task(call, ctx, g);
                if p.is_empty() {
                    log.line(&format!("TASK {call} PASS"));
                    probe::exit_now(0);
                }
                log.line(&format!("TASK {call} FAIL {}", p.join("; ")));
                probe::exit_now(1);
            }
        }
        pipe.close_w();
        let reports = pipe.recv(2 * calls.len());
        pipe.close_r();
        for (k, &call) in calls.iter().enumerate() {
            let pid = reports.iter().find(|r| r.0 == k as i32).map_or(0, |r| r.1);
            let g = reports.iter().find(|r| r.0 == k as i32 + 100).map_or(0, |r| r.1);
            tasks.push((call, pid, g));
        }
    }
    // Let every task enter its call.
    wl::sleep_ms(200);
    let desc: Vec<String> = tasks
        .iter()
        .map(|(c, t, g)| format!("{c}={t}{}", if *g > 0 { format!("/{g}") } else { String::new() }))
        .collect();
    log.line(&format!(
        "TASKS {} as {}",
        desc.join(" "),
        if procs { "procs" } else { "threads" }
    ));
    log.ready();
    let me = wl::getpid();
    if ctx.corrupt {
        wl::sleep_ms(100);
        for &(_, t, _) in &tasks {
            let _ = if procs {
                probe::kill(t, libc::SIGURG)
            } else {
                probe::tgkill(me, t, libc::SIGURG)
            };
        }
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    // Wake every task the way its call is woken.
    for &(call, t, g) in &tasks {
        match call {
            "futex" if !procs => {
                WORD.store(1, Ordering::SeqCst);
                let _ = probe::sys(
                    libc::SYS_futex,
                    [
                        &WORD as *const AtomicU32 as u64,
                        (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
                        1,
                        0,
                        0,
                        0,
                    ],
                );
            }
            "wait4" => {
                let _ = probe::kill(g, libc::SIGUSR2);
            }
            "sleep-restart" | "abs-sleep" => {}
            _ => {
                let _ = if procs {
                    probe::kill(t, libc::SIGUSR2)
                } else {
                    probe::tgkill(me, t, libc::SIGUSR2)
                };
            }
        }
    }

    let mut problems: Vec<String> = Vec::new();
    let deadline_ms = ctx.sleep_ms + 8000;
    if procs {
        for &(call, pid, _) in &tasks {
            match probe::wait_child(pid, deadline_ms) {
                Ok(st) if probe::exited_ok(st) => {}
                Ok(st) => {
                    let line = probe::log_lines_with(&log_path, &format!("TASK {call} FAIL"));
                    problems.push(match line.last() {
                        Some(l) => l
                            .trim_start_matches("TASK ")
                            .trim_start_matches(call)
                            .trim_start_matches(" FAIL ")
                            .to_string(),
                        None => format!("{call}: task {pid} ended with {}", probe::describe_status(st)),
                    });
                }
                Err(e) => {
                    problems.push(format!("{call}: task {pid} is still blocked after it was woken ({e})"));
                    let _ = probe::kill(pid, libc::SIGKILL);
                }
            }
        }
    } else {
        let end = probe::mono_ns() + deadline_ms * 1_000_000;
        loop {
            let done = RESULTS.lock().unwrap_or_else(|e| e.into_inner()).len();
            if done == tasks.len() {
                break;
            }
            if probe::mono_ns() > end {
                let res = RESULTS.lock().unwrap_or_else(|e| e.into_inner());
                for &(call, t, _) in &tasks {
                    if !res.iter().any(|r| r.0 == call) {
                        problems.push(format!("{call}: thread {t} is still blocked after it was woken"));
                    }
                }
                break;
            }
            wl::sleep_ms(10);
        }
        let mut res = std::mem::take(&mut *RESULTS.lock().unwrap_or_else(|e| e.into_inner()));
        res.sort();
        for (_, p) in res {
            problems.extend(p);
        }
        if let Some(&(_, _, g)) = tasks.iter().find(|t| t.0 == "wait4") {
            let _ = probe::kill(g, libc::SIGKILL);
        }
    }
    log.verdict(
        &problems,
        &format!(
            "as={} calls={}",
            if procs { "procs" } else { "threads" },
            calls.join(",")
        ),
    );
}
