//! The whole-tree workloads' own checks, without cryo (issue 3): each
//! workload is started, told to verify (SIGUSR1) without any dump and must
//! PASS; with `--corrupt` it must FAIL, naming what changed, which proves
//! that each check can fail. Workloads that need root (credentials,
//! seccomp filters, SCHED_RR, pid namespaces) skip loudly without it.

use cryo_integration::e2e::{self, Scratch};
use cryo_integration::{
    bin, log_lines, require_root, s, signal, wait_for_line, wait_for_verdict, TempDir, Workload, LINE_TIMEOUT,
};
use std::path::Path;
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a workload, waits for READY, runs `before` (with the workload
/// pid and log), sends SIGUSR1 and returns (verdict or error, exit code).
fn run_with(
    bin: &Path,
    args: &[&str],
    idle: Duration,
    before: &dyn Fn(i32, &Path),
) -> (Result<String, String>, Option<i32>) {
    let sc = Scratch::new("wl3");
    let log = sc.path("log");
    let mut w = Workload::spawn(bin, args, &log).expect("spawn workload");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    sc.cl.tree(w.pid);
    std::thread::sleep(idle);
    before(w.pid, &log);
    w.usr1().expect("SIGUSR1");
    let verdict = wait_for_verdict(&log, LINE_TIMEOUT);
    let st = w.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "workload did not exit; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (verdict, st.code())
}

fn run(bin: &Path, args: &[&str]) -> (Result<String, String>, Option<i32>) {
    run_with(bin, args, Duration::from_millis(150), &|_, _| {})
}

fn expect_pass(bin: &Path, args: &[&str]) -> String {
    let (v, code) = run(bin, args);
    let line = v.unwrap_or_else(|e| panic!("{} {args:?}: {e}", bin.display()));
    assert_eq!(code, Some(0), "PASS but exit code {code:?}");
    line
}

fn expect_fail(bin: &Path, args: &[&str], what: &[&str]) {
    let (v, code) = run(bin, args);
    let err = v.expect_err("the corrupted workload must FAIL");
    for w in what {
        assert!(
            err.contains(w),
            "{} {args:?}: FAIL should mention {w:?}: {err}",
            bin.display()
        );
    }
    assert_eq!(code, Some(1), "FAIL but exit code {code:?}");
}

// ---- threads ----------------------------------------------------------

#[test]
fn threads_1_passes() {
    let l = expect_pass(bin!("threads"), &["--threads", "1"]);
    assert!(l.starts_with("PASS threads=1 "), "{l}");
}

#[test]
fn threads_8_passes() {
    let l = expect_pass(bin!("threads"), &["--threads", "8"]);
    assert!(l.contains("join"), "{l}");
}

#[test]
fn threads_64_passes() {
    expect_pass(bin!("threads"), &["--threads", "64"]);
}

#[test]
fn threads_detect_each_changed_piece() {
    expect_fail(
        bin!("threads"),
        &["--threads", "4", "--corrupt"],
        &[
            "regs: thread 3",
            "fpu: thread 3",
            "tls: thread 3",
            "mask: thread 3",
            "altstack: thread 3",
            "comm: thread 3",
            "robust: thread 3",
        ],
    );
    expect_fail(
        bin!("threads"),
        &["--threads", "1", "--corrupt"],
        &["regs: thread 0", "comm: thread 0"],
    );
}

#[test]
fn threads_rseq_passes_and_detects() {
    expect_pass(bin!("threads"), &["--threads", "3", "--check", "rseq"]);
    expect_fail(
        bin!("threads"),
        &["--threads", "3", "--check", "rseq", "--corrupt"],
        &["rseq: thread 2"],
    );
}

// ---- blocked ----------------------------------------------------------

const CALLS_T: &[&str] = &[
    "futex",
    "nanosleep",
    "sleep-restart",
    "abs-sleep",
    "epoll",
    "pause",
    "wait4",
];

#[test]
fn blocked_threads_pass() {
    let l = expect_pass(bin!("blocked"), &["--as", "threads", "--sleep-ms", "1500"]);
    assert!(l.contains("as=threads"), "{l}");
}

#[test]
fn blocked_procs_pass() {
    let l = expect_pass(bin!("blocked"), &["--as", "procs", "--sleep-ms", "1500"]);
    assert!(l.contains("as=procs"), "{l}");
}

#[test]
fn blocked_detects_early_returns() {
    let want: Vec<String> = CALLS_T.iter().map(|c| format!("{c}:")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    expect_fail(bin!("blocked"), &["--as", "threads", "--corrupt"], &want);
    expect_fail(bin!("blocked"), &["--as", "procs", "--corrupt"], &want);
}

// ---- signals ----------------------------------------------------------

const SIGNAL_CHECKS: &[&str] = &["actions", "ignored", "pending", "rt-queue", "thread-pending"];

#[test]
fn signals_pass() {
    expect_pass(bin!("signals"), &[]);
    for c in SIGNAL_CHECKS {
        expect_pass(bin!("signals"), &["--check", c]);
    }
}

#[test]
fn signals_detect_each_change() {
    for c in SIGNAL_CHECKS {
        expect_fail(bin!("signals"), &["--check", c, "--corrupt"], &[&format!("{c}:")]);
    }
}

// ---- timers -----------------------------------------------------------

const TIMER_CHECKS: &[&str] = &["itimers", "posix", "overrun", "cpu", "thread"];

#[test]
fn timers_pass() {
    let l = expect_pass(bin!("timers"), &[]);
    assert!(l.contains("overrun="), "{l}");
}

#[test]
fn timers_detect_each_change() {
    for c in TIMER_CHECKS {
        expect_fail(bin!("timers"), &["--check", c, "--corrupt"], &[&format!("{c}:")]);
    }
}

// ---- credentials ------------------------------------------------------

const CRED_CHECKS: &[&str] = &["ids", "groups", "caps", "securebits", "nnp"];

#[test]
fn creds_pass() {
    require_root!();
    let l = expect_pass(bin!("creds"), &[]);
    assert!(l.contains("Uid: 2001\t2002\t2003\t2004"), "{l}");
}

#[test]
fn creds_detect_each_change() {
    require_root!();
    for c in CRED_CHECKS {
        expect_fail(bin!("creds"), &["--check", c, "--corrupt"], &[&format!("{c}:")]);
    }
}

// ---- seccomp ----------------------------------------------------------

#[test]
fn seccomp_filter_passes_and_detects() {
    require_root!();
    expect_pass(bin!("seccomp"), &["--mode", "filter"]);
    expect_fail(
        bin!("seccomp"),
        &["--mode", "filter", "--corrupt"],
        &["Seccomp_filters"],
    );
}

#[test]
fn seccomp_strict_passes_and_detects() {
    expect_pass(bin!("seccomp"), &["--mode", "strict"]);
    expect_fail(
        bin!("seccomp"),
        &["--mode", "strict", "--corrupt"],
        &["getpid was allowed"],
    );
}

// ---- per-process attributes -------------------------------------------

const ATTR_CHECKS: &[&str] = &[
    "sched",
    "nice",
    "affinity",
    "personality",
    "umask",
    "dumpable",
    "pdeathsig",
    "subreaper",
    "rlimits",
    "comm",
    "cwd",
];

#[test]
fn attrs_pass() {
    require_root!();
    let d = TempDir::new("attrs");
    expect_pass(bin!("attrs"), &["--dir", s(d.path())]);
}

#[test]
fn attrs_detect_each_change() {
    require_root!();
    let d = TempDir::new("attrs");
    let two_cpus = std::thread::available_parallelism()
        .map(|n| n.get() > 1)
        .unwrap_or(false);
    for c in ATTR_CHECKS {
        if *c == "affinity" && !two_cpus {
            continue;
        }
        expect_fail(
            bin!("attrs"),
            &["--dir", s(d.path()), "--check", c, "--corrupt"],
            &[&format!("{c}:")],
        );
    }
}

#[test]
fn attrs_root_passes_and_detects() {
    require_root!();
    let d = TempDir::new("attrs-root");
    expect_pass(bin!("attrs"), &["--dir", s(d.path()), "--check", "root"]);
    expect_fail(
        bin!("attrs"),
        &["--dir", s(d.path()), "--check", "root", "--corrupt"],
        &["root:"],
    );
}

// ---- memory shapes ----------------------------------------------------

const MEM_CHECKS: &[&str] = &["holes", "guard", "growsdown", "madvise", "thp", "mlock", "sparse"];

#[test]
fn memshape_passes() {
    let l = expect_pass(bin!("memshape"), &[]);
    assert!(l.contains("touched=16 resident=16"), "{l}");
}

#[test]
fn memshape_detects_each_change() {
    for c in MEM_CHECKS {
        expect_fail(bin!("memshape"), &["--check", c, "--corrupt"], &[&format!("{c}:")]);
    }
}

#[test]
fn memshape_deleted_exe_passes_and_detects() {
    let d = TempDir::new("delexe");
    expect_pass(bin!("memshape"), &["--check", "deleted-exe", "--dir", s(d.path())]);
    expect_fail(
        bin!("memshape"),
        &["--check", "deleted-exe", "--dir", s(d.path()), "--corrupt"],
        &["deleted-exe: maps lines"],
    );
}

#[test]
fn memshape_deleted_data_passes_and_detects() {
    let d = TempDir::new("deldata");
    expect_pass(bin!("memshape"), &["--check", "deleted-data", "--dir", s(d.path())]);
    expect_fail(
        bin!("memshape"),
        &["--check", "deleted-data", "--dir", s(d.path()), "--corrupt"],
        &["deleted-data: page checksums"],
    );
}

// ---- tree shapes ------------------------------------------------------

#[test]
fn shapes_pass_and_detect() {
    for (shape, fail) in [
        ("deep", "c4: pgid"),
        ("orphan", "o2g: pgid"),
        ("zombie", "z1"),
        ("sessions", "E: pgid"),
        ("pdeathsig", "parent-death signal"),
        ("subreaper", "PR_GET_CHILD_SUBREAPER"),
    ] {
        let l = expect_pass(bin!("shapes"), &["--shape", shape]);
        assert!(l.contains(&format!("shape={shape}")), "{l}");
        expect_fail(bin!("shapes"), &["--shape", shape, "--corrupt"], &[fail]);
    }
}

#[test]
fn shapes_zombies_are_zombies() {
    run_with(
        bin!("shapes"),
        &["--shape", "zombie"],
        Duration::from_millis(50),
        &|_, log| {
            let z = e2e::line_fields(log, "ZOMBIES ", "zombie");
            for p in z {
                let pid: i32 = p.parse().expect("zombie pid");
                assert_eq!(cryo_integration::pid_state(pid), Some('Z'), "{pid} is not a zombie");
            }
        },
    )
    .0
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The stopped shape: the child is in state T; the test continues it.
fn stopped_run(corrupt: bool) -> (Result<String, String>, Option<i32>) {
    let args: &[&str] = if corrupt {
        &["--shape", "stopped", "--corrupt"]
    } else {
        &["--shape", "stopped"]
    };
    run_with(bin!("shapes"), args, Duration::from_millis(50), &|_, log| {
        let f = e2e::line_fields(log, "STOPPED ", "stopped");
        let s: i32 = f[0].parse().expect("stopped pid");
        let st = e2e::wait_state(s, 'T', Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(st, Some('T'), "child {s} should be stopped");
        signal(s, libc::SIGCONT).expect("SIGCONT");
        std::thread::sleep(Duration::from_millis(50));
    })
}

#[test]
fn shapes_stopped_passes_and_detects() {
    let (v, code) = stopped_run(false);
    v.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, Some(0));
    let (v, code) = stopped_run(true);
    let e = v.expect_err("corrupt must FAIL");
    assert!(e.contains("no CLD_CONTINUED"), "{e}");
    assert_eq!(code, Some(1));
}

// ---- pid namespace ----------------------------------------------------

/// Runs the pidns launcher; SIGUSR1 goes to the init's host pid.
fn pidns_run(corrupt: bool) -> (Result<String, String>, Option<i32>) {
    let sc = Scratch::new("wl3-pidns");
    let log = sc.path("log");
    let args: &[&str] = if corrupt { &["--corrupt"] } else { &[] };
    let mut w = Workload::spawn(bin!("pidns"), args, &log).expect("spawn pidns");
    let init: i32 = e2e::line_fields(&log, "NSINIT ", "pidns")[0].parse().expect("init pid");
    sc.cl.pid(init);
    wait_for_line(&log, "READY 1", LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e2e::nspids(init).last(), Some(&1), "the init is pid 1 in its namespace");
    std::thread::sleep(Duration::from_millis(100));
    signal(init, libc::SIGUSR1).expect("SIGUSR1");
    let v = wait_for_verdict(&log, LINE_TIMEOUT);
    let st = w.wait_exit(EXIT_TIMEOUT).expect("launcher exits");
    let _ = log_lines(&log);
    (v, st.code())
}

#[test]
fn pidns_passes_and_detects() {
    require_root!();
    let (v, code) = pidns_run(false);
    let l = v.unwrap_or_else(|e| panic!("{e}"));
    assert!(l.starts_with("PASS pidns init=1"), "{l}");
    assert_eq!(code, Some(0));
    let (v, code) = pidns_run(true);
    let e = v.expect_err("corrupt must FAIL");
    assert!(e.contains("is not a zombie child"), "{e}");
    assert_eq!(code, Some(1));
}
