//! End-to-end test: connected unix stream sockets that bound their own
//! name (a path and an abstract one) before connecting keep it, and the
//! accepted sockets see it as their peer's name.

use cryo_integration::cycle::{expect_plain_fail, expect_plain_pass, roundtrip};
use cryo_integration::{bin, s, TempDir};

#[test]
fn usknames_plain_passes_and_detects_a_lost_name() {
    let d = TempDir::new("usknames-plain");
    expect_plain_pass(bin!("usknames"), &["--dir", s(d.path())]);
    let d = TempDir::new("usknames-plain-bad");
    expect_plain_fail(bin!("usknames"), &["--dir", s(d.path()), "--corrupt"], "C1 name");
}

#[test]
fn usknames_roundtrip() {
    cryo_integration::require_root!();
    let d = TempDir::new("usknames-files");
    let (v, images, _sc) = roundtrip("usknames", bin!("usknames"), &["--dir", s(d.path())]);
    assert!(v.contains("own names"), "{v}");
    assert!(images.contains(&"files.img".to_string()), "{images:?}");
}
