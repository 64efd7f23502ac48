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

use cryo_integration::cycle::*;

// ---- 1. shared memory -------------------------------------------------------

#[test]
fn shmem_plain_passes_and_detects_a_private_copy() {
    expect_plain_pass(bin!("shmem"), &[]);
    expect_plain_fail(bin!("shmem"), &["--corrupt"], "A: the child's write does not show");
}

#[test]
fn shmem_roundtrip() {
    cryo_integration::require_root!();
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
    cryo_integration::require_root!();
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
    cryo_integration::require_root!();
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
    cryo_integration::require_root!();
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
