//! The workloads' own checks, without cryo: each workload is started,
//! waited for, told to verify (SIGUSR1) and must PASS; with its corrupt
//! switch it must FAIL, which proves that its check can fail. These need
//! neither root nor a working engine.

use cryo_integration::{
    bin, check_steps, count_lines, run_cryo_reaped, s, step_numbers, wait_for_line, wait_for_verdict, Captured,
    TempDir, Workload, LINE_TIMEOUT,
};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts a workload, waits for READY, lets it idle for `idle`, sends
/// SIGUSR1 and returns (verdict line or error, exit code).
fn run(bin: &Path, args: &[&str], idle: Duration) -> (Result<String, String>, Option<i32>) {
    let dir = TempDir::new("wl");
    let log = dir.join("log");
    let mut w = Workload::spawn(bin, args, &log).expect("spawn workload");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(idle);
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

fn expect_pass(bin: &Path, args: &[&str]) -> String {
    let (v, code) = run(bin, args, Duration::from_millis(100));
    let line = v.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, Some(0), "PASS but exit code {code:?}");
    line
}

fn expect_fail(bin: &Path, args: &[&str], what: &str) {
    let (v, code) = run(bin, args, Duration::from_millis(50));
    let err = v.expect_err("the corrupted workload must FAIL");
    assert!(err.contains(what), "FAIL should mention {what:?}: {err}");
    assert_eq!(code, Some(1), "FAIL but exit code {code:?}");
}

#[test]
fn memsum_passes() {
    let line = expect_pass(bin!("memsum"), &["--mib", "4"]);
    assert!(line.contains("mib=4"), "{line}");
}

#[test]
fn memsum_detects_a_flipped_byte() {
    expect_fail(bin!("memsum"), &["--mib", "2", "--corrupt-after-ready"], "anon MiB 1");
}

#[test]
fn memsum_word_passes_and_mismatch_fails() {
    let line = expect_pass(bin!("memsum"), &["--mib", "1", "--word", "foobar"]);
    assert!(line.contains("word=foobar"), "{line}");
    expect_fail(
        bin!("memsum"),
        &["--mib", "1", "--word", "foobar", "--expect-word", "barfoo"],
        "word=foobar expected barfoo",
    );
}

#[test]
fn lazyshape_passes_and_detects_corruption() {
    let line = expect_pass(bin!("lazyshape"), &["--mib", "8", "--wait-ms", "10"]);
    assert!(line.contains("mib=8 child=ok"), "{line}");
    let (v, code) = run(
        bin!("lazyshape"),
        &["--mib", "8", "--wait-ms", "10", "--corrupt"],
        Duration::from_millis(50),
    );
    let err = v.expect_err("the corrupted workload must FAIL");
    assert_eq!(code, Some(1), "{err}");
    for what in [
        "kept part: page 682 word 7",
        "moved part at its new address: page 2046 word 300",
        "forked child",
    ] {
        assert!(err.contains(what), "FAIL should mention {what:?}: {err}");
    }
}

#[test]
fn counter_counts_consecutively_and_passes() {
    let dir = TempDir::new("wl");
    let log = dir.join("log");
    let mut w = Workload::spawn(bin!("counter"), &["--interval-ms", "10"], &log).expect("spawn counter");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    wait_for_line(&log, "step 5", LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    w.usr1().expect("SIGUSR1");
    let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS steps="), "{v}");
    assert_eq!(w.wait_exit(EXIT_TIMEOUT).and_then(|s| s.code()), Some(0));
    let steps = step_numbers(&log);
    assert!(steps.len() >= 6, "{steps:?}");
    check_steps(&steps).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn fileoff_passes() {
    let dir = TempDir::new("wl-files");
    let line = expect_pass(bin!("fileoff"), &["--dir", s(dir.path())]);
    assert!(line.contains("dup17=17"), "{line}");
}

#[test]
fn fileoff_detects_a_moved_offset() {
    let dir = TempDir::new("wl-files");
    expect_fail(
        bin!("fileoff"),
        &["--dir", s(dir.path()), "--corrupt"],
        "offset 43 != 42",
    );
}

#[test]
fn fpu_passes_with_the_widest_isa() {
    let line = expect_pass(bin!("fpu"), &[]);
    assert!(line.contains("mxcsr=0xffc"), "{line}");
}

#[test]
fn fpu_passes_with_sse() {
    let line = expect_pass(bin!("fpu"), &["--isa", "sse"]);
    assert!(line.starts_with("PASS sse"), "{line}");
}

#[test]
fn fpu_detects_a_changed_register() {
    expect_fail(bin!("fpu"), &["--corrupt"], "reg 5:");
}

#[test]
fn tree_passes() {
    let dir = TempDir::new("wl");
    let log = dir.join("log");
    let mut w = Workload::spawn(bin!("tree"), &["--children", "3"], &log).expect("spawn tree");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(50));
    w.usr1().expect("SIGUSR1");
    let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS children="), "{v}");
    assert_eq!(w.wait_exit(EXIT_TIMEOUT).and_then(|s| s.code()), Some(0));
    // 3 children and the grandchild each verified themselves.
    assert_eq!(
        count_lines(&log, "MEMBER "),
        8,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let passes = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("MEMBER ") && l.contains(" PASS "))
        .count();
    assert_eq!(passes, 4);
}

#[test]
fn tree_reports_a_failing_child() {
    expect_fail(bin!("tree"), &["--children", "2", "--corrupt"], "exit 1");
}

#[test]
fn reaper_reports_what_a_command_leaves_behind() {
    let dir = TempDir::new("wl");
    let leftover = dir.join("leftover");
    let out = Captured::spawn(
        bin!("reaper"),
        &[
            "--leftover",
            s(&leftover),
            "--",
            "/bin/sh",
            "-c",
            "sleep 30 & echo started; exit 3",
        ],
        Stdio::null(),
        None,
    )
    .finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"started\n");
    let left = std::fs::read_to_string(&leftover).unwrap();
    let lines: Vec<&str> = left.lines().collect();
    assert_eq!(lines.len(), 1, "{left:?}");
    assert!(lines[0].ends_with(" sleep"), "{left:?}");
    let pid: i32 = lines[0].split(' ').next().unwrap().parse().unwrap();
    assert!(
        cryo_integration::wait_pid_exited(pid, Duration::from_secs(5)),
        "the reaper must kill what was left"
    );
}

#[test]
fn reaper_reports_nothing_for_a_clean_command() {
    let dir = TempDir::new("wl");
    let leftover = dir.join("leftover");
    let out = Captured::spawn(
        bin!("reaper"),
        &["--leftover", s(&leftover), "--", "/bin/true"],
        Stdio::null(),
        None,
    )
    .finish(EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&leftover).unwrap(), "");
}

#[test]
fn run_cryo_reaped_runs_the_binary_under_the_reaper() {
    // Whatever cryo is at the moment (a stub or the engine), `cryo` with an
    // unknown subcommand must not leave processes behind.
    if !cryo_integration::cryo_bin().exists() {
        cryo_integration::skip(&format!(
            "{} is not built (hack/test builds it)",
            cryo_integration::cryo_bin().display()
        ));
        return;
    }
    let (_out, left) = run_cryo_reaped(bin!("reaper"), &["no-such-subcommand"]);
    assert!(left.is_empty(), "left behind: {left:?}");
}
