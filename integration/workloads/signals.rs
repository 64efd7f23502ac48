//! signals: signal dispositions and pending signals survive, with their
//! siginfo.
//!
//! `signals --log F [--check LIST] [--corrupt]`
//!
//! Checks (all by default):
//! - `actions`: handlers with flags and masks (SA_SIGINFO, SA_RESTART,
//!   SA_ONSTACK, SA_NODEFER, SA_RESETHAND, SA_NOCLDSTOP) on SIGUSR2, SIGHUP,
//!   SIGWINCH, SIGRTMIN+7, SIGCHLD, SIGALRM; the kernel's view of all 64
//!   actions (handler, flags, restorer, mask; raw rt_sigaction) must equal
//!   the snapshot taken before READY; then raising SIGHUP runs its handler
//!   and raising SIGWINCH twice runs it once (SA_RESETHAND).
//! - `ignored`: SIG_IGN on SIGPIPE, SIGTSTP, SIGRTMIN+9, SIGURG is still
//!   there, and a SIGPIPE sent to ourselves is discarded (not pending).
//! - `pending`: process-wide pending SIGTERM (kill, SI_USER) and SIGUSR2
//!   (sigqueue, value 0x5151), and SIGQUIT pending for the main thread only
//!   (tgkill). /proc/self/status ShdPnd and /proc/thread-self SigPnd are
//!   checked, then sigtimedwait must return SIGQUIT, SIGUSR2, SIGTERM in
//!   that order with their si_code, si_pid, si_uid and si_value.
//! - `rt-queue`: SIGRTMIN+3 queued three times (101, 102, 103) and
//!   SIGRTMIN+4 twice (201, 202), interleaved: sigtimedwait must return all
//!   five, each signal's payloads in the order they were queued.
//! - `thread-pending`: a second thread T with SIGVTALRM (tgkill) and
//!   SIGRTMIN+6 (rt_tgsigqueueinfo, 0x66 then 0x67) pending for T alone: T
//!   sees them in its own SigPnd, the main thread and ShdPnd do not, and T
//!   dequeues all three with their siginfo.
//!
//! Every signal used is blocked (T also blocks SIGUSR1) so nothing is
//! delivered before the check. The verdict is written after SIGUSR1.
//! `--corrupt` changes each checked thing after READY: SIGHUP gets
//! SA_RESTART, SIGURG goes back to SIG_DFL, SIGTERM and one SIGRTMIN+3 are
//! dequeued early, T dequeues its SIGVTALRM early.

use cryo_integration::probe::{self, KSigaction, Only, Problems, SigInfo, SI_QUEUE, SI_TKILL, SI_USER};
use cryo_integration::wl::{self, Args, Log};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

const ALL: &[&str] = &["actions", "ignored", "pending", "rt-queue", "thread-pending"];

static PLAIN_RUNS: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];

extern "C" fn plain_handler(sig: libc::c_int) {
    // Only an atomic increment: async-signal-safe.
    if (sig as usize) < 65 {
        PLAIN_RUNS[sig as usize].fetch_add(1, Ordering::SeqCst);
    }
}

fn rt(n: i32) -> i32 {
    probe::sigrtmin() + n
}

/// All 64 actions (SIGKILL and SIGSTOP as default).
fn snapshot() -> Vec<KSigaction> {
    (1..=64).map(|s| probe::get_sigaction(s).unwrap_or_default()).collect()
}

fn compare(p: &mut Problems, check: &str, sigs: &[i32], then: &[KSigaction]) {
    let now = snapshot();
    for &s in sigs {
        let (a, b) = (now[s as usize - 1], then[s as usize - 1]);
        if a != b {
            p.add(check, format!("signal {s}: action {a:x?}, was {b:x?}"));
        }
    }
}

/// Checks one dequeued siginfo against (signo, code, value).
fn expect_info(p: &mut Problems, check: &str, got: Result<SigInfo, i32>, sig: i32, code: i32, value: Option<u64>) {
    let me = wl::getpid();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    match got {
        Err(e) => p.add(
            check,
            format!("signal {sig} (code {code}) was not pending (sigtimedwait errno {e})"),
        ),
        Ok(i) => {
            let ok = i.signo() == sig
                && i.code() == code
                && i.pid() == me
                && i.uid() == uid
                && value.is_none_or(|v| i.value() == v);
            if !ok {
                p.add(
                    check,
                    format!(
                        "dequeued {}, expected sig={sig} code={code} pid={me} uid={uid}{}",
                        i.brief(),
                        value.map_or(String::new(), |v| format!(" value={v:#x}"))
                    ),
                );
            }
        }
    }
}

fn shd_pnd() -> u64 {
    probe::self_status("ShdPnd")
        .and_then(|v| probe::parse_sigset_hex(&v))
        .unwrap_or(!0)
}

fn thread_pnd() -> u64 {
    probe::thread_status("SigPnd")
        .and_then(|v| probe::parse_sigset_hex(&v))
        .unwrap_or(!0)
}

static T_RESULT: Mutex<Option<Vec<String>>> = Mutex::new(None);

/// Thread T of `thread-pending`.
fn thread_t(mask: u64, corrupt: bool) {
    probe::sigprocmask(libc::SIG_SETMASK, Some(mask | probe::sigbit(libc::SIGUSR1)));
    let tid = probe::gettid();
    THREAD_TID.store(tid as u32, Ordering::SeqCst);
    while !wl::usr1_seen() {
        wl::sleep_ms(20);
    }
    let mut p = Problems::new();
    let c = "thread-pending";
    if corrupt {
        let _ = probe::sigtimedwait(probe::sigbit(libc::SIGVTALRM), 0);
    }
    let mine = probe::sigset_of(&[libc::SIGVTALRM, rt(6)]);
    let pnd = thread_pnd();
    if pnd & mine != mine {
        p.add(
            c,
            format!(
                "thread {tid} SigPnd {:?} lacks some of {:?}",
                probe::sigset_list(pnd),
                probe::sigset_list(mine)
            ),
        );
    }
    if shd_pnd() & mine != 0 {
        p.add(
            c,
            format!("ShdPnd {:?} holds thread signals", probe::sigset_list(shd_pnd())),
        );
    }
    expect_info(&mut p, c, probe::sigtimedwait(mine, 0), libc::SIGVTALRM, SI_TKILL, None);
    expect_info(&mut p, c, probe::sigtimedwait(mine, 0), rt(6), SI_QUEUE, Some(0x66));
    expect_info(&mut p, c, probe::sigtimedwait(mine, 0), rt(6), SI_QUEUE, Some(0x67));
    if let Ok(i) = probe::sigtimedwait(mine, 0) {
        p.add(c, format!("an extra signal was pending: {}", i.brief()));
    }
    *T_RESULT.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.v);
}

static THREAD_TID: AtomicU32 = AtomicU32::new(0);

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let only = Only::from_args(&args, ALL, ALL);
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let me = wl::getpid();
    let plain = plain_handler as *const () as usize;

    // Every signal that is sent to ourselves is blocked first.
    let used = probe::sigset_of(&[
        libc::SIGQUIT,
        libc::SIGUSR2,
        libc::SIGTERM,
        rt(3),
        rt(4),
        libc::SIGVTALRM,
        rt(6),
    ]);
    probe::sigprocmask(libc::SIG_BLOCK, Some(used));

    let ignored_sigs = [libc::SIGPIPE, libc::SIGTSTP, rt(9), libc::SIGURG];
    if only.has("actions") {
        probe::set_action(
            libc::SIGUSR2,
            probe::flag_handler_addr(),
            libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK,
            &[libc::SIGINT, rt(5)],
        );
        probe::set_action(libc::SIGHUP, plain, libc::SA_NODEFER, &[libc::SIGTERM]);
        probe::set_action(libc::SIGWINCH, plain, libc::SA_RESETHAND | libc::SA_RESTART, &[]);
        probe::set_action(
            rt(7),
            probe::flag_handler_addr(),
            libc::SA_SIGINFO,
            &[rt(8), libc::SIGQUIT],
        );
        probe::set_action(libc::SIGCHLD, plain, libc::SA_NOCLDSTOP, &[]);
        probe::set_action(libc::SIGALRM, plain, 0, &[libc::SIGUSR1]);
    }
    if only.has("ignored") {
        for &s in &ignored_sigs {
            probe::set_action(s, libc::SIG_IGN, 0, &[]);
        }
    }

    if only.has("pending") {
        let _ = probe::kill(me, libc::SIGTERM);
        let _ = probe::sigqueue(me, libc::SIGUSR2, 0x5151);
        let _ = probe::tgkill(me, probe::gettid(), libc::SIGQUIT);
    }
    if only.has("rt-queue") {
        for (s, v) in [(3, 101), (4, 201), (3, 102), (4, 202), (3, 103)] {
            if probe::sigqueue(me, rt(s), v).is_err() {
                wl::die("sigqueue");
            }
        }
    }
    let mut t = None;
    if only.has("thread-pending") {
        t = Some(std::thread::spawn(move || thread_t(used, corrupt)));
        while THREAD_TID.load(Ordering::SeqCst) == 0 {
            wl::sleep_ms(2);
        }
        let tid = THREAD_TID.load(Ordering::SeqCst) as i32;
        let _ = probe::tgkill(me, tid, libc::SIGVTALRM);
        let _ = probe::tgsigqueue(me, tid, rt(6), 0x66);
        let _ = probe::tgsigqueue(me, tid, rt(6), 0x67);
    }
    // After the thread exists: glibc installs its own handler for signal 33
    // (SIGSETXID) when the first thread is created.
    let snap = snapshot();
    log.line(&format!(
        "SIGNALS checks={} ShdPnd={:?} SigPnd={:?}",
        only.list(),
        probe::sigset_list(shd_pnd()),
        probe::sigset_list(thread_pnd())
    ));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    if corrupt {
        if only.has("actions") {
            probe::set_action(
                libc::SIGHUP,
                plain,
                libc::SA_NODEFER | libc::SA_RESTART,
                &[libc::SIGTERM],
            );
        }
        if only.has("ignored") {
            probe::set_action(libc::SIGURG, libc::SIG_DFL, 0, &[]);
        }
        if only.has("pending") {
            let _ = probe::sigtimedwait(probe::sigbit(libc::SIGTERM), 0);
        }
        if only.has("rt-queue") {
            let _ = probe::sigtimedwait(probe::sigbit(rt(3)), 0);
        }
    }

    let mut p = Problems::new();
    if only.has("actions") {
        let others: Vec<i32> = (1..=64).filter(|s| !ignored_sigs.contains(s)).collect();
        compare(&mut p, "actions", &others, &snap);
        // Behaviour: SIGHUP's handler runs; SIGWINCH's runs once and resets.
        let hup = PLAIN_RUNS[libc::SIGHUP as usize].load(Ordering::SeqCst);
        let _ = probe::tgkill(me, probe::gettid(), libc::SIGHUP);
        let _ = probe::tgkill(me, probe::gettid(), libc::SIGWINCH);
        let _ = probe::tgkill(me, probe::gettid(), libc::SIGWINCH);
        p.eq(
            "actions",
            "SIGHUP handler runs",
            PLAIN_RUNS[libc::SIGHUP as usize].load(Ordering::SeqCst),
            hup + 1,
        );
        p.eq(
            "actions",
            "SIGWINCH (SA_RESETHAND) handler runs",
            PLAIN_RUNS[libc::SIGWINCH as usize].load(Ordering::SeqCst),
            1,
        );
        p.eq(
            "actions",
            "SIGWINCH handler after one run",
            probe::get_sigaction(libc::SIGWINCH).map(|a| a.handler).unwrap_or(99),
            0,
        );
    }
    if only.has("ignored") {
        compare(&mut p, "ignored", &ignored_sigs, &snap);
        let _ = probe::tgkill(me, probe::gettid(), libc::SIGPIPE);
        if probe::sigpending() & probe::sigbit(libc::SIGPIPE) != 0 {
            p.add("ignored", "a SIGPIPE sent to ourselves is pending instead of discarded");
        }
    }
    if only.has("pending") || only.has("rt-queue") {
        let mut want_shd = 0;
        if only.has("pending") {
            want_shd |= probe::sigset_of(&[libc::SIGTERM, libc::SIGUSR2]);
        }
        if only.has("rt-queue") {
            want_shd |= probe::sigset_of(&[rt(3), rt(4)]);
        }
        let shd = shd_pnd();
        let check = if only.has("pending") { "pending" } else { "rt-queue" };
        if shd != want_shd {
            p.add(
                check,
                format!(
                    "ShdPnd is {:?}, expected {:?}",
                    probe::sigset_list(shd),
                    probe::sigset_list(want_shd)
                ),
            );
        }
    }
    if only.has("pending") {
        let c = "pending";
        let main_pnd = thread_pnd() & !shd_pnd();
        if main_pnd != probe::sigbit(libc::SIGQUIT) {
            p.add(
                c,
                format!(
                    "main thread's own pending set is {:?}, expected [3]",
                    probe::sigset_list(main_pnd)
                ),
            );
        }
        let set = probe::sigset_of(&[libc::SIGQUIT, libc::SIGUSR2, libc::SIGTERM]);
        expect_info(&mut p, c, probe::sigtimedwait(set, 0), libc::SIGQUIT, SI_TKILL, None);
        expect_info(
            &mut p,
            c,
            probe::sigtimedwait(set, 0),
            libc::SIGUSR2,
            SI_QUEUE,
            Some(0x5151),
        );
        expect_info(&mut p, c, probe::sigtimedwait(set, 0), libc::SIGTERM, SI_USER, None);
        if let Ok(i) = probe::sigtimedwait(set, 0) {
            p.add(c, format!("an extra signal was pending: {}", i.brief()));
        }
    }
    if only.has("rt-queue") {
        let c = "rt-queue";
        let set = probe::sigset_of(&[rt(3), rt(4)]);
        for (s, v) in [(3, 101), (3, 102), (3, 103), (4, 201), (4, 202)] {
            expect_info(&mut p, c, probe::sigtimedwait(set, 0), rt(s), SI_QUEUE, Some(v));
        }
        if let Ok(i) = probe::sigtimedwait(set, 0) {
            p.add(c, format!("an extra signal was pending: {}", i.brief()));
        }
    }
    if only.has("thread-pending") {
        let mine = probe::sigset_of(&[libc::SIGVTALRM, rt(6)]);
        if thread_pnd() & mine != 0 {
            p.add(
                "thread-pending",
                format!(
                    "the main thread sees T's signals pending: {:?}",
                    probe::sigset_list(thread_pnd() & mine)
                ),
            );
        }
        let end = probe::mono_ns() + 5_000_000_000;
        let r = loop {
            if let Some(r) = T_RESULT.lock().unwrap_or_else(|e| e.into_inner()).take() {
                break Some(r);
            }
            if probe::mono_ns() > end {
                break None;
            }
            wl::sleep_ms(5);
        };
        match r {
            Some(v) => p.v.extend(v),
            None => p.add("thread-pending", "thread T did not report within 5 s"),
        }
        drop(t);
    }
    log.verdict(&p.v, &format!("checks={}", only.list()));
}
