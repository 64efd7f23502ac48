//! End-to-end tests of shared memory mappings and file locks.
//!
//! Same cycle as e2e_files: each workload first runs without cryo (it
//! must PASS, and with `--corrupt` it must FAIL), then it is dumped with
//! the real cryo binary, restored with `-d --pidfile`, told to verify
//! itself with SIGUSR1 and judged by its PASS/FAIL line; `crit decode`
//! must read every image. The cryo runs need root; without it they SKIP.

#![allow(dead_code, unused_imports)]

use cryo_integration::{
    bin, describe, is_root, log_tail, one_line_error, pid_running, read_pidfile, run_cryo, run_cryo_reaped, s, signal,
    skip, wait_for_nth_verdict, wait_for_verdict, wait_pid_exited, Cleanup, TempDir, Workload, LINE_TIMEOUT,
};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const GONE_TIMEOUT: Duration = Duration::from_secs(15);

/// A test's scratch space: images in `img/`, logs beside them, and the
/// Cleanup guard (dropped first, so it reads the pidfiles before the
/// directory goes).
struct Scratch {
    cl: Cleanup,
    tmp: TempDir,
    img: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let tmp = TempDir::new(tag);
        let img = tmp.join("img");
        std::fs::create_dir_all(&img).expect("mkdir img");
        Scratch {
            cl: Cleanup::new(),
            tmp,
            img,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }
}

fn assert_cryo_ok(out: &Output, what: &str, logfile: &Path) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n--- {} (tail) ---\n{}",
        describe(out),
        logfile.display(),
        log_tail(logfile, 30)
    );
}

fn dump(sc: &Scratch, pid: i32, extra: &[&str]) {
    let pid = pid.to_string();
    let log = sc.path("dump.log");
    let mut args = vec!["dump", "-t", &pid, "-D", s(&sc.img), "-o", s(&log), "-v4"];
    args.extend_from_slice(extra);
    let out = run_cryo(&args);
    assert_cryo_ok(&out, "cryo dump", &log);
}

fn restore_detached(sc: &Scratch, tag: &str) -> i32 {
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
fn crit_decodes_all(img: &Path) -> Vec<String> {
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
fn crit_json(path: &Path) -> serde_json::Value {
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
fn run_plain(bin: &Path, args: &[&str]) -> (Result<String, String>, Option<i32>) {
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

fn expect_plain_pass(bin: &Path, args: &[&str]) {
    let (v, code) = run_plain(bin, args);
    v.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, Some(0));
}

fn expect_plain_fail(bin: &Path, args: &[&str], what: &str) {
    let (v, code) = run_plain(bin, args);
    let e = v.expect_err("the corrupted workload must FAIL");
    assert!(e.contains(what), "FAIL should mention {what:?}: {e}");
    assert_eq!(code, Some(1));
}

/// The common cycle: spawn, READY, dump (kills), crit, restore -d,
/// SIGUSR1, PASS. Returns the verdict, the image names and the scratch.
fn roundtrip(tag: &str, bin: &Path, args: &[&str]) -> (String, Vec<String>, Scratch) {
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

macro_rules! root_only {
    () => {
        if !is_root() {
            skip("needs root (run `sudo hack/test`)");
            return;
        }
    };
}

// ---- 1. shared memory -------------------------------------------------------

#[test]
fn shmem_plain_passes_and_detects_a_private_copy() {
    expect_plain_pass(bin!("shmem"), &[]);
    expect_plain_fail(bin!("shmem"), &["--corrupt"], "A: the child's write does not show");
}

#[test]
fn shmem_roundtrip() {
    root_only!();
    let (v, images, sc) = roundtrip("shmem", bin!("shmem"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let log = sc.path("wl.log");
    assert!(
        cryo_integration::log_lines(&log)
            .iter()
            .any(|l| l.starts_with("MEMBER c PASS")),
        "{}",
        log_tail(&log, 20)
    );
    // Every shmem object has its pages index; the parent's mm lists the
    // anonymous ones as ANON_SHARED and the memfd ones as MEMFD.
    let shm = images.iter().filter(|n| n.starts_with("pagemap-shmem-")).count();
    assert!(shm >= 4, "{images:?}");
    let mm_name = images.iter().find(|n| n.starts_with("mm-")).expect("an mm image");
    let mm = crit_json(&sc.img.join(mm_name));
    let status: Vec<u64> = mm["entries"][0]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["status"].as_u64())
        .collect();
    // VMA_ANON_SHARED = 0x100, VMA_FILE_SHARED = 0x80, VMA_AREA_MEMFD = 0x4000.
    assert_eq!(status.iter().filter(|&&s| s & 0x100 != 0).count(), 2, "{status:x?}");
    assert_eq!(
        status.iter().filter(|&&s| s & 0x4080 == 0x4080).count(),
        2,
        "{status:x?}"
    );
    let m = crit_json(&sc.img.join("memfd.img"));
    let names: Vec<&str> = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"cryo-shm-open") && names.contains(&"cryo-shm-closed"),
        "{m}"
    );
}

// ---- 2. file locks ----------------------------------------------------------

#[test]
fn flocks_plain_passes_and_detects_a_dropped_lock() {
    let d = TempDir::new("flocks-plain");
    expect_plain_pass(bin!("flocks"), &["--dir", s(d.path())]);
    let d = TempDir::new("flocks-plain-bad");
    expect_plain_fail(bin!("flocks"), &["--dir", s(d.path()), "--corrupt"], "f2 [0,+100)");
}

#[test]
fn flocks_roundtrip() {
    root_only!();
    let d = TempDir::new("flocks-files");
    let (v, images, sc) = roundtrip("flocks", bin!("flocks"), &["--dir", s(d.path())]);
    assert!(v.starts_with("PASS"), "{v}");
    assert!(images.contains(&"filelocks.img".to_string()), "{images:?}");
    let l = crit_json(&sc.img.join("filelocks.img"));
    let e = l["entries"].as_array().unwrap();
    // f1, f4 (flock), f2 x2 by the parent and x1 by the child (POSIX), f3 (OFD).
    assert_eq!(e.len(), 6, "{l}");
    let flags: Vec<u64> = e.iter().filter_map(|x| x["flag"].as_u64()).collect();
    assert_eq!(flags.iter().filter(|&&f| f == 1).count(), 3, "{l}");
    assert_eq!(flags.iter().filter(|&&f| f == 2).count(), 2, "{l}");
    assert_eq!(flags.iter().filter(|&&f| f == 4).count(), 1, "{l}");
    let _ = sc;
}

// ---- 3. pidfds ----------------------------------------------------------------

#[test]
fn pidfds_plain_passes_and_detects_a_wrong_target() {
    expect_plain_pass(bin!("pidfds"), &[]);
    expect_plain_fail(bin!("pidfds"), &["--corrupt"], "pidfd of C names");
}

#[test]
fn pidfds_roundtrip() {
    root_only!();
    let (v, _images, sc) = roundtrip("pidfds", bin!("pidfds"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let log = sc.path("wl.log");
    assert!(
        cryo_integration::log_lines(&log)
            .iter()
            .any(|l| l.starts_with("MEMBER c PASS")),
        "{}",
        log_tail(&log, 20)
    );
}

#[test]
fn dump_of_a_pidfd_outside_the_tree_fails_cleanly() {
    root_only!();
    let sc = Scratch::new("pidfd-outside");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("pidfds"), &["--outside"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    let pid = w.pid.to_string();
    let out = run_cryo(&["dump", "-t", &pid, "-D", s(&sc.img)]);
    let err = one_line_error(&out, "dump of a pidfd outside the tree");
    for must in [
        format!("pid {pid}"),
        "fd 40".to_string(),
        "outside the dumped tree".to_string(),
    ] {
        assert!(err.contains(&must), "the error should contain {must:?}: {err}");
    }
    assert!(
        !sc.img.join("inventory.img").exists(),
        "a failed dump left an inventory.img"
    );
    assert!(pid_running(w.pid), "the tree must run on after a failed dump");
    std::thread::sleep(Duration::from_millis(50));
    w.usr1().expect("SIGUSR1");
    let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
    assert_eq!(w.wait_exit(GONE_TIMEOUT).and_then(|s| s.code()), Some(0));
}
