//! End-to-end test of descriptors in flight (SCM_RIGHTS) in unix socket
//! queues: a regular file (twice, one description), a pipe end and an
//! eventfd that exist only in flight come back in the queues.

use cryo_integration::cycle::{crit_json, expect_plain_fail, expect_plain_pass, roundtrip};
use cryo_integration::{bin, s, TempDir};

#[test]
fn scmrights_plain_passes_and_detects_a_lost_message() {
    let d = TempDir::new("scmrights-plain");
    expect_plain_pass(bin!("scmrights"), &["--dir", s(d.path())]);
    let d = TempDir::new("scmrights-plain-bad");
    expect_plain_fail(bin!("scmrights"), &["--dir", s(d.path()), "--corrupt"], "messages");
}

#[test]
fn scmrights_roundtrip() {
    cryo_integration::require_root!();
    let d = TempDir::new("scmrights-files");
    let (v, images, sc) = roundtrip("scmrights", bin!("scmrights"), &["--dir", s(d.path())]);
    assert!(v.contains("in flight"), "{v}");
    assert!(images.contains(&"sk-queues.img".to_string()), "{images:?}");
    let q = crit_json(&sc.img.join("sk-queues.img"));
    let rights: Vec<usize> = q["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["scm"][0]["rights"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(rights, vec![2, 0, 1, 1], "{q}");
    // Both messages carrying f.dat name one file id.
    assert_eq!(
        q["entries"][0]["scm"][0]["rights"][0], q["entries"][2]["scm"][0]["rights"][0],
        "{q}"
    );
}
