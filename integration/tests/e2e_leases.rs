//! End-to-end test of file leases (F_SETLEASE): a read and a write lease
//! are held by the restored process, and the write lease still breaks.

use cryo_integration::cycle::{crit_json, expect_plain_fail, expect_plain_pass, roundtrip};
use cryo_integration::{bin, s, TempDir};

#[test]
fn leases_plain_passes_and_detects_a_dropped_lease() {
    let d = TempDir::new("leases-plain");
    expect_plain_pass(bin!("leases"), &["--dir", s(d.path())]);
    let d = TempDir::new("leases-plain-bad");
    expect_plain_fail(bin!("leases"), &["--dir", s(d.path()), "--corrupt"], "F_GETLEASE");
}

#[test]
fn leases_roundtrip() {
    cryo_integration::require_root!();
    let d = TempDir::new("leases-files");
    let (v, images, sc) = roundtrip("leases", bin!("leases"), &["--dir", s(d.path())]);
    assert!(v.contains("break seen"), "{v}");
    assert!(images.contains(&"filelocks.img".to_string()), "{images:?}");
    let locks = crit_json(&sc.img.join("filelocks.img"));
    let kinds: Vec<(u64, u64)> = locks["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["flag"].as_u64().unwrap_or(0), e["type"].as_u64().unwrap_or(9)))
        .collect();
    assert!(kinds.contains(&(8, 0)) && kinds.contains(&(8, 1)), "{locks}");
}
