//! Helpers for the end-to-end tests of whole trees (`tests/e2e_tree.rs`)
//! and the no-cryo checks of their workloads (`tests/workloads3.rs`).
//!
//! The usual cycle is [`roundtrip`]: start a workload in its own session,
//! wait for READY, dump it with `cryo dump -t PID -D DIR`, decode every
//! image with crit's own decoder, restore it with `cryo restore -d
//! --pidfile`, send SIGUSR1 to the restored root and wait for its verdict.
//! Every failure names the property under test and the step that failed,
//! with cryo's one-line error and the tail of its log, so that a test that
//! fails because the engine does not support something yet says so.
//!
//! The restored tree lives in a new pid namespace; [`host_pid_in_ns`] maps
//! a pid as the tree sees it to the host pid the test can look at in
//! /proc.

use crate::{
    cryo_bin, describe, log_tail, pid_running, read_pidfile, s, signal, wait_for_line, wait_for_nth_verdict,
    wait_pid_exited, Captured, Cleanup, TempDir, Workload, LINE_TIMEOUT,
};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the original may take to die after a dump.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(15);

/// One test's scratch space: images in `img/`, cryo's logs and pidfiles
/// beside them, and the Cleanup guard (dropped first, while the pidfiles
/// still exist).
pub struct Scratch {
    /// Kills what the test registered.
    pub cl: Cleanup,
    /// The directory.
    pub tmp: TempDir,
    /// The image directory.
    pub img: PathBuf,
}

impl Scratch {
    /// A fresh scratch directory tagged `tag`.
    pub fn new(tag: &str) -> Scratch {
        let tmp = TempDir::new(tag);
        let img = tmp.join("img");
        std::fs::create_dir_all(&img).expect("mkdir img");
        Scratch {
            cl: Cleanup::new(),
            tmp,
            img,
        }
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }
}

/// How long one cryo dump or restore of these (small) workloads may take
/// before the test kills it and reports a hang.
pub const CRYO_STEP_TIMEOUT: Duration = Duration::from_secs(25);

/// Runs `cryo args...` (stdin /dev/null), killed after [`CRYO_STEP_TIMEOUT`].
pub fn run_cryo_step(args: &[&str]) -> Output {
    Captured::spawn(&cryo_bin(), args, Stdio::null(), None).finish(CRYO_STEP_TIMEOUT)
}

fn cryo_failure(what: &str, step: &str, out: &Output, logfile: &Path) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let first = match err.lines().next().map(str::trim) {
        Some(l) if !l.is_empty() => l.to_string(),
        _ if out.status.signal() == Some(libc::SIGKILL) => format!(
            "no error output: cryo was killed after {} s (hung?)",
            CRYO_STEP_TIMEOUT.as_secs()
        ),
        _ => "no error output".to_string(),
    };
    format!(
        "[{what}] {step} failed: {first}\n{}\n--- {} (tail) ---\n{}",
        describe(out),
        logfile.display(),
        log_tail(logfile, 30)
    )
}

/// `cryo dump -t PID -D IMG -o dump.log -v4 EXTRA...`; panics with a clear
/// message if it fails.
pub fn dump(sc: &Scratch, pid: i32, extra: &[&str], what: &str) {
    let pid = pid.to_string();
    let log = sc.path("dump.log");
    let mut args = vec!["dump", "-t", &pid, "-D", s(&sc.img), "-o", s(&log), "-v4"];
    args.extend_from_slice(extra);
    let out = run_cryo_step(&args);
    if !out.status.success() {
        panic!("{}", cryo_failure(what, &format!("cryo dump -t {pid}"), &out, &log));
    }
}

/// `cryo restore -D IMG -d --pidfile PF -o restore-TAG.log -v4`; returns
/// the restored root's host pid (registered for cleanup).
pub fn restore(sc: &Scratch, tag: &str, what: &str) -> i32 {
    let pf = sc.path(&format!("pidfile-{tag}"));
    sc.cl.pidfile(&pf);
    let log = sc.path(&format!("restore-{tag}.log"));
    let out = run_cryo_step(&[
        "restore",
        "-D",
        s(&sc.img),
        "-d",
        "--pidfile",
        s(&pf),
        "-o",
        s(&log),
        "-v4",
    ]);
    if !out.status.success() {
        panic!("{}", cryo_failure(what, "cryo restore -d", &out, &log));
    }
    read_pidfile(&pf).unwrap_or_else(|e| panic!("[{what}] {e}"))
}

/// Decodes every image in `dir` but the raw pages the way `crit decode`
/// does (pycriu's `images.load` and `json.dumps`, in one python process:
/// one `crit` run per image would take seconds for a 64-thread dump), and
/// runs the real `crit decode` on pstree.img. Ok(number of images).
pub fn crit_decode_all(dir: &Path) -> Result<usize, String> {
    let crit = Path::new("/usr/bin/crit");
    if !crit.exists() {
        return Err("/usr/bin/crit is missing: run hack/setup (Debian package criu)".into());
    }
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("read_dir {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".img") && !n.starts_with("pages-"))
        })
        .collect();
    imgs.sort();
    if imgs.is_empty() {
        return Err(format!("no images in {}", dir.display()));
    }
    let script = "import sys, json\n\
        sys.path.insert(0, '/usr/lib/python3/dist-packages')\n\
        import pycriu\n\
        bad = 0\n\
        for f in sys.argv[1:]:\n\
        \x20   try:\n\
        \x20       with open(f, 'rb') as fd:\n\
        \x20           json.dumps(pycriu.images.load(fd, False, False))\n\
        \x20   except Exception as e:\n\
        \x20       bad += 1\n\
        \x20       print('FAIL %s: %r' % (f, e))\n\
        sys.exit(1 if bad else 0)\n";
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(&imgs)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "crit's decoder rejects images:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let pstree = dir.join("pstree.img");
    let out = Command::new(crit)
        .args(["decode", "-i", s(&pstree)])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run crit: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "crit decode -i {}: {}",
            pstree.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(imgs.len())
}

/// Total size of the files in `dir` whose names start with `prefix`.
pub fn images_bytes(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A field of /proc/PID/status.
pub fn proc_status(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    crate::probe::status_field(&text, key)
}

/// The NSpid list of `pid` (host pid first, innermost last).
pub fn nspids(pid: i32) -> Vec<i32> {
    proc_status(pid, "NSpid")
        .map(|v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// The pid `pid` has in its innermost pid namespace.
pub fn inner_pid(pid: i32) -> Option<i32> {
    nspids(pid).last().copied()
}

/// The pid namespace of `pid` ("pid:[N]").
pub fn pid_ns(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The host pid of the process that is `inner` in the pid namespace of
/// `peer` (a host pid).
pub fn host_pid_in_ns(peer: i32, inner: i32) -> Option<i32> {
    let ns = pid_ns(peer)?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if inner_pid(pid) == Some(inner) && pid_ns(pid).as_deref() == Some(ns.as_str()) {
            return Some(pid);
        }
    }
    None
}

/// The thread ids of `pid` (host numbering).
pub fn tids_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The children of `pid` (host numbering), from /proc/PID/task/*/children.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in tids_of(pid) {
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/children")) {
            out.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out
}

/// `pid` and all its descendants (host numbering), parents first.
pub fn tree_of(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let kids = children_of(out[i]);
        for k in kids {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        i += 1;
    }
    out
}

/// Polls until `pid` is in state `state` (a /proc/PID/stat letter) for
/// `steady` in a row, or `timeout` passes; returns the last state seen.
pub fn wait_state(pid: i32, state: char, steady: Duration, timeout: Duration) -> Option<char> {
    let end = Instant::now() + timeout;
    let mut since: Option<Instant> = None;
    loop {
        let st = crate::pid_state(pid);
        if st == Some(state) {
            let s0 = *since.get_or_insert_with(Instant::now);
            if s0.elapsed() >= steady {
                return st;
            }
        } else {
            since = None;
        }
        if Instant::now() >= end {
            return st;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that the dump took the original down (it is our child).
pub fn assert_original_killed(w: &mut Workload, what: &str) {
    let st = w
        .wait_exit(GONE_TIMEOUT)
        .unwrap_or_else(|| panic!("[{what}] original pid {} still runs after the dump", w.pid));
    assert!(
        st.signal().is_some() || st.code() == Some(137),
        "[{what}] original pid {} should have been killed by cryo, but {st:?}; log:\n{}",
        w.pid,
        log_tail(&w.log, 10)
    );
}

/// Sends SIGUSR1 to the restored root `rpid` (after checking that it runs
/// as `inner` in its namespace) and waits for its `nth` verdict and exit.
pub fn trigger_restored(rpid: i32, inner: i32, log: &Path, nth: usize, what: &str) -> String {
    assert!(pid_running(rpid), "[{what}] restored pid {rpid} is not running");
    assert_eq!(
        inner_pid(rpid),
        Some(inner),
        "[{what}] restored pid {rpid} should be {inner} inside its pid namespace (NSpid {:?})",
        nspids(rpid)
    );
    signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("[{what}] {e}"));
    let v = wait_for_nth_verdict(log, nth, LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("[{what}] the restored workload's check: {e}"));
    assert!(
        wait_pid_exited(rpid, GONE_TIMEOUT),
        "[{what}] restored pid {rpid} did not go away after its verdict (state {:?})",
        crate::pid_state(rpid)
    );
    v
}

/// A checkpointed workload: the scratch space, its log, the original pid
/// and the crit result of its images.
pub struct Dumped {
    /// Scratch space (images in `sc.img`).
    pub sc: Scratch,
    /// The workload's log.
    pub log: PathBuf,
    /// The original root pid.
    pub pid: i32,
    /// Result of decoding the images with crit's decoder.
    pub crit: Result<usize, String>,
}

impl Dumped {
    /// Panics if crit could not decode the images.
    pub fn assert_crit(&self, what: &str) {
        if let Err(e) = &self.crit {
            panic!("[{what}] {e}");
        }
    }
}

/// Starts `bin args`, waits for READY (and `settle`), registers its whole
/// tree for cleanup, dumps it (which must kill it) and decodes the images.
pub fn checkpoint(what: &str, tag: &str, bin: &Path, args: &[&str], settle: Duration) -> Dumped {
    let sc = Scratch::new(tag);
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin, args, &log).unwrap_or_else(|e| panic!("[{what}] spawn: {e}"));
    w.wait_ready()
        .unwrap_or_else(|e| panic!("[{what}] the workload did not get ready: {e}"));
    sc.cl.tree(w.pid);
    std::thread::sleep(settle);
    dump(&sc, w.pid, &[], what);
    assert_original_killed(&mut w, what);
    let crit = crit_decode_all(&sc.img);
    Dumped {
        sc,
        log,
        pid: w.pid,
        crit,
    }
}

/// For state cryo does not handle yet: starts `bin args`, waits for READY,
/// and checks that the dump is refused with one line on stderr containing
/// `needle`, that no image set was left (no inventory.img), and that the
/// original runs on untouched: on SIGUSR1 it still verifies itself (PASS).
pub fn refused(what: &str, bin: &Path, args: &[&str], needle: &str) {
    let sc = Scratch::new(what);
    let log = sc.path("wl.log");
    let w = Workload::spawn(bin, args, &log).unwrap_or_else(|e| panic!("[{what}] spawn: {e}"));
    w.wait_ready()
        .unwrap_or_else(|e| panic!("[{what}] the workload did not get ready: {e}"));
    sc.cl.tree(w.pid);
    let pid = w.pid.to_string();
    let out = run_cryo_step(&["dump", "-t", &pid, "-D", crate::s(&sc.img)]);
    let err = crate::one_line_error(&out, &format!("[{what}] dump"));
    assert!(err.contains(needle), "[{what}] the error should say {needle:?}: {err}");
    assert!(
        !sc.img.join("inventory.img").exists(),
        "[{what}] a refused dump left inventory.img"
    );
    crate::signal(w.pid, libc::SIGUSR1).unwrap_or_else(|e| panic!("[{what}] {e}"));
    let v = crate::wait_for_line(&log, "PASS", crate::LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("[{what}] the original did not pass after the refused dump: {e}"));
    assert!(v.starts_with("PASS"), "[{what}] {v}");
}

/// The whole cycle: [`checkpoint`], restore, SIGUSR1, PASS, crit. Returns
/// the verdict line and the dump (for extra checks by the caller).
pub fn roundtrip(what: &str, tag: &str, bin: &Path, args: &[&str]) -> (String, Dumped) {
    let d = checkpoint(what, tag, bin, args, Duration::from_millis(100));
    let rpid = restore(&d.sc, "1", what);
    let v = trigger_restored(rpid, d.pid, &d.log, 1, what);
    d.assert_crit(what);
    (v, d)
}

/// Waits for a line starting with `prefix` and returns the rest, split.
pub fn line_fields(log: &Path, prefix: &str, what: &str) -> Vec<String> {
    let l = wait_for_line(log, prefix, LINE_TIMEOUT).unwrap_or_else(|e| panic!("[{what}] {e}"));
    l[prefix.len()..].split_whitespace().map(str::to_string).collect()
}
