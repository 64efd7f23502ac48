//! End-to-end tests of network sockets: TCP listeners and UDP sockets
//! with their options, established TCP connections (--tcp-established,
//! TCP_REPAIR), the network lock, and the refusals.
//!
//! Each workload first runs without cryo (PASS, and FAIL with
//! `--corrupt`), then goes through a real dump and restore and judges
//! itself; crit must decode every image. Traffic stays on loopback.

use cryo_integration::{bin, one_line_error, pid_running, run_cryo, s, wait_for_verdict, Workload, LINE_TIMEOUT};
use std::time::Duration;

use cryo_integration::cycle::*;

// ---- 1. listeners and datagram sockets ---------------------------------------

#[test]
fn inetsk_plain_passes_and_detects_a_changed_option() {
    expect_plain_pass(bin!("inetsk"), &[]);
    expect_plain_fail(bin!("inetsk"), &["--corrupt"], "L4 IP_TTL is 34, was 33");
}

#[test]
fn inetsk_roundtrip() {
    cryo_integration::require_root!();
    let (v, images, sc) = roundtrip("inetsk", bin!("inetsk"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let files = crit_json(&sc.img.join("files.img"));
    let isk: Vec<&serde_json::Value> = files["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e.get("isk"))
        .collect();
    assert_eq!(isk.len(), 6, "inet sockets in files.img: {isk:?}");
    assert!(
        isk.iter().any(|e| e["state"] == 10 && e["backlog"] == 7),
        "a listener with backlog 7: {isk:?}"
    );
    assert!(!images.iter().any(|n| n.starts_with("tcp-stream-")), "{images:?}");
}
