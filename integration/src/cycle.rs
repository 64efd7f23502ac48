//! The test cycle shared by the fd-kind end-to-end tests (e2e_files,
//! e2e_shm): run a workload plain (PASS, and FAIL with `--corrupt`), dump
//! it with the real cryo, restore it detached, trigger it and read its
//! verdict, and decode every image with crit.

use crate::{
    describe, log_tail, pid_running, read_pidfile, run_cryo, s, signal, wait_for_nth_verdict, wait_for_verdict,
    wait_pid_exited, TempDir, Workload, LINE_TIMEOUT,
};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub use crate::e2e::{Scratch, GONE_TIMEOUT};

pub fn assert_cryo_ok(out: &Output, what: &str, logfile: &Path) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n--- {} (tail) ---\n{}",
        describe(out),
        logfile.display(),
        log_tail(logfile, 30)
    );
}

pub fn dump(sc: &Scratch, pid: i32, extra: &[&str]) {
    let pid = pid.to_string();
    let log = sc.path("dump.log");
    let mut args = vec!["dump", "-t", &pid, "-D", s(&sc.img), "-o", s(&log), "-v4"];
    args.extend_from_slice(extra);
    let out = run_cryo(&args);
    assert_cryo_ok(&out, "cryo dump", &log);
}

pub fn restore_detached(sc: &Scratch, tag: &str) -> i32 {
    let pf = sc.path(&format!("pidfile-{tag}"));
    sc.cl.pidfile(&pf);
    let log = sc.path(&format!("restore-{tag}.log"));
    let out = run_cryo(&[
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
    assert_cryo_ok(&out, "cryo restore -d", &log);
    read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"))
}

/// Every image of the dump decodes with crit; returns the image names.
pub fn crit_decodes_all(img: &Path) -> Vec<String> {
    let crit = Path::new("/usr/bin/crit");
    assert!(
        crit.exists(),
        "/usr/bin/crit is missing: run hack/setup (Debian package criu)"
    );
    let mut names = Vec::new();
    let mut failures = Vec::new();
    for e in std::fs::read_dir(img).expect("read image dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".img") || name.starts_with("pages-") {
            continue;
        }
        let out = Command::new(crit)
            .args(["decode", "-i", s(&e.path())])
            .stdin(Stdio::null())
            .output()
            .expect("run crit");
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
        if !out.status.success() || json.is_err() {
            failures.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        names.push(name);
    }
    assert!(failures.is_empty(), "crit decode failed:\n{}", failures.join("\n"));
    names.sort();
    names
}

/// `crit decode` of one image as JSON.
pub fn crit_json(path: &Path) -> serde_json::Value {
    let out = Command::new("/usr/bin/crit")
        .args(["decode", "-i", s(path)])
        .stdin(Stdio::null())
        .output()
        .expect("run crit");
    assert!(
        out.status.success(),
        "crit decode {}: {}",
        path.display(),
        describe(&out)
    );
    serde_json::from_slice(&out.stdout).expect("crit JSON")
}

/// Runs a workload without cryo: READY, SIGUSR1, and its verdict.
pub fn run_plain(bin: &Path, args: &[&str]) -> (Result<String, String>, Option<i32>) {
    let dir = TempDir::new("wlplain");
    let log = dir.join("log");
    let mut w = Workload::spawn(bin, args, &log).expect("spawn workload");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(50));
    w.usr1().expect("SIGUSR1");
    let v = wait_for_verdict(&log, LINE_TIMEOUT);
    let st = w.wait_exit(GONE_TIMEOUT).expect("workload exits");
    (v, st.code())
}

pub fn expect_plain_pass(bin: &Path, args: &[&str]) {
    let (v, code) = run_plain(bin, args);
    v.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, Some(0));
}

pub fn expect_plain_fail(bin: &Path, args: &[&str], what: &str) {
    let (v, code) = run_plain(bin, args);
    let e = v.expect_err("the corrupted workload must FAIL");
    assert!(e.contains(what), "FAIL should mention {what:?}: {e}");
    assert_eq!(code, Some(1));
}

/// The common cycle: spawn, READY, dump (kills), crit, restore -d,
/// SIGUSR1, PASS. Returns the verdict, the image names and the scratch.
pub fn roundtrip(tag: &str, bin: &Path, args: &[&str]) -> (String, Vec<String>, Scratch) {
    let sc = Scratch::new(tag);
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin, args, &log).expect("spawn workload");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(100));
    dump(&sc, w.pid, &[]);
    let st = w
        .wait_exit(GONE_TIMEOUT)
        .unwrap_or_else(|| panic!("original pid {} still runs after dump", w.pid));
    assert!(
        st.signal().is_some(),
        "original should have been killed by cryo: {st:?}"
    );
    let images = crit_decodes_all(&sc.img);
    let rpid = restore_detached(&sc, "1");
    assert!(pid_running(rpid), "restored pid {rpid} is not running");
    signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    let v = wait_for_nth_verdict(&log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_pid_exited(rpid, GONE_TIMEOUT),
        "restored pid {rpid} did not exit after its verdict"
    );
    (v, images, sc)
}
