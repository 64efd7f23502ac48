//! End-to-end test of file owners: F_SETOWN_EX (a process, a process
//! group, a child), F_SETSIG and O_ASYNC come back, and the signals reach
//! the right processes with the right si_fd.

use cryo_integration::cycle::{crit_json, expect_plain_fail, expect_plain_pass, roundtrip};
use cryo_integration::{bin, log_lines};

#[test]
fn fown_plain_passes_and_detects_a_cleared_o_async() {
    expect_plain_pass(bin!("fown"), &[]);
    expect_plain_fail(bin!("fown"), &["--corrupt"], "A: owner/sig/async");
}

#[test]
fn fown_roundtrip() {
    cryo_integration::require_root!();
    let (v, _images, sc) = roundtrip("fown", bin!("fown"), &[]);
    assert!(v.contains("owners"), "{v}");
    let log = sc.path("wl.log");
    assert!(
        log_lines(&log).iter().any(|l| l.starts_with("MEMBER c PASS")),
        "{}",
        cryo_integration::log_tail(&log, 10)
    );
    let files = crit_json(&sc.img.join("files.img"));
    let owned: Vec<(u64, u64)> = files["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| {
            let f = e.get("usk").or_else(|| e.get("pipe"))?.get("fown")?;
            let pid = f["pid"].as_u64()?;
            (pid != 0).then(|| (f["pid_type"].as_u64().unwrap_or(9), f["signum"].as_u64().unwrap_or(0)))
        })
        .collect();
    assert_eq!(owned.len(), 3, "{files}");
    assert!(owned.contains(&(2, 0)) && owned.contains(&(1, 12)), "{owned:?}");
}
