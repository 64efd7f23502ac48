//! Lazy restore while the program reshapes its memory: `cryo restore
//! --lazy-pages` of a pre-dump chain, with the background fill slowed
//! (CRYO_LAZY_FILL_DELAY_MS, a test aid) so that the restored `lazyshape`
//! forks, drops (MADV_DONTNEED), unmaps and moves (mremap) memory before
//! its pages are all in. The workload checks its memory (and its child's
//! copy) itself; cryo must report the fork, remove, unmap and remap
//! events it followed, and exit cleanly once every page is in.

use cryo_integration::e2e::{Scratch, GONE_TIMEOUT};
use cryo_integration::{
    bin, cryo_bin, describe, log_tail, read_pidfile, require_root, run_cryo, s, signal, wait_for_nth_verdict,
    wait_pid_exited, Workload, LINE_TIMEOUT,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Milliseconds the background fill waits per 1 MiB chunk: 64 MiB take
/// over 3 s, while the workload's changes take a few ms after SIGUSR1.
const FILL_DELAY_MS: &str = "50";

/// The count after `name ` in cryo's `events: fork N, remove N, ...`.
fn event_count(out: &str, name: &str) -> u64 {
    out.split("events: ")
        .nth(1)
        .and_then(|e| e.split(", ").find_map(|p| p.strip_prefix(&format!("{name} "))))
        .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

/// `lazyshape` of MIB MiB (with EXTRA args), pre-dumped into `pre/` and
/// dumped into `img/` with `pre/` as its parent: all of its pattern
/// memory is in the parent images, which `restore --lazy-pages` serves
/// lazily.
fn dumped(sc: &Scratch, mib: u32, extra: &[&str]) -> (Workload, PathBuf) {
    let log = sc.path("w.log");
    let mib = mib.to_string();
    let mut args = vec!["--mib", &mib, "--wait-ms", "400"];
    args.extend_from_slice(extra);
    let mut w = Workload::spawn(bin!("lazyshape"), &args, &log).expect("spawn lazyshape");
    sc.cl.pid(w.pid);
    w.wait_ready().unwrap_or_else(|e| panic!("lazyshape: {e}"));
    let pid = w.pid.to_string();
    let pre = sc.path("pre");
    let out = run_cryo(&["pre-dump", "-t", &pid, "-D", s(&pre), "--track-mem"]);
    assert!(out.status.success(), "pre-dump: {}", describe(&out));
    let dlog = sc.path("dump.log");
    let out = run_cryo(&[
        "dump",
        "-t",
        &pid,
        "-D",
        s(&sc.img),
        "--prev-images-dir",
        "../pre",
        "-o",
        s(&dlog),
        "-v4",
    ]);
    assert!(
        out.status.success(),
        "dump: {}\n{}",
        describe(&out),
        log_tail(&dlog, 20)
    );
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "the dump did not end the original");
    (w, log)
}

/// `cryo restore -D img --lazy-pages` with the fill slowed, in the
/// background (it serves pages until all are in); its stdout file.
fn restore_lazy(sc: &Scratch) -> (Child, PathBuf, PathBuf) {
    let pf = sc.path("pidfile");
    sc.cl.pidfile(&pf);
    let (out, rlog) = (sc.path("restore.out"), sc.path("restore.log"));
    let child = Command::new(cryo_bin())
        .args([
            "restore",
            "-D",
            s(&sc.img),
            "--lazy-pages",
            "--pidfile",
            s(&pf),
            "-o",
            s(&rlog),
            "-v4",
        ])
        .env("CRYO_LAZY_FILL_DELAY_MS", FILL_DELAY_MS)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(sc.path("restore.err")).unwrap())
        .spawn()
        .expect("spawn cryo restore");
    sc.cl.pid(child.id() as i32);
    (child, pf, out)
}

/// Waits for PF to name the restored pid (cryo still serving pages).
fn restored_pid(pf: &Path, cryo: &mut Child, sc: &Scratch) -> i32 {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(pid) = read_pidfile(pf) {
            return pid;
        }
        if let Ok(Some(st)) = cryo.try_wait() {
            panic!(
                "cryo restore --lazy-pages ended ({st}) before the tree ran: {}\n{}",
                std::fs::read_to_string(sc.path("restore.err")).unwrap_or_default(),
                log_tail(&sc.path("restore.log"), 20)
            );
        }
        assert!(Instant::now() < end, "no pidfile from cryo restore --lazy-pages");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for cryo to finish serving; its success and stdout.
fn finished(mut cryo: Child, out: &Path, sc: &Scratch) -> (bool, String) {
    let end = Instant::now() + Duration::from_secs(120);
    let st = loop {
        if let Ok(Some(st)) = cryo.try_wait() {
            break st;
        }
        assert!(Instant::now() < end, "cryo restore --lazy-pages did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    let so = std::fs::read_to_string(out).unwrap_or_default();
    if !st.success() {
        eprintln!(
            "cryo restore --lazy-pages: {st}\n{so}\n{}\n{}",
            std::fs::read_to_string(sc.path("restore.err")).unwrap_or_default(),
            log_tail(&sc.path("restore.log"), 30)
        );
    }
    (st.success(), so)
}

#[test]
fn lazy_restore_follows_fork_dontneed_munmap_mremap() {
    require_root!();
    let sc = Scratch::new("lazy-shape");
    let (_w, log) = dumped(&sc, 64, &[]);
    let (mut cryo, pf, out) = restore_lazy(&sc);
    let rpid = restored_pid(&pf, &mut cryo, &sc);
    // At once: the fill has barely begun.
    signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (ok, so) = finished(cryo, &out, &sc);
    assert!(v.starts_with("PASS"), "restored lazyshape: {v}\ncryo: {so}");
    assert!(ok, "cryo restore --lazy-pages failed: {so}");
    assert!(wait_pid_exited(rpid, GONE_TIMEOUT), "restored pid {rpid} still runs");
    eprintln!("cryo: {so}");
    // The changes came while pages were still coming: cryo saw them.
    for ev in ["fork", "remove", "unmap", "remap"] {
        assert!(event_count(&so, ev) >= 1, "cryo followed no {ev} event: {so}");
    }
    // The child's missing pages and the moved ones were served on faults.
    assert!(event_count(&so, "fork") == 1, "{so}");
}

/// The same with a workload whose memory was changed before the dump: its
/// own checks (parent, child, moved part) must FAIL after the lazy
/// restore, so the PASS above means something.
#[test]
fn lazy_restore_of_corrupted_lazyshape_fails_its_check() {
    require_root!();
    let sc = Scratch::new("lazy-shape-bad");
    let (_w, log) = dumped(&sc, 16, &["--corrupt"]);
    let (mut cryo, pf, out) = restore_lazy(&sc);
    let rpid = restored_pid(&pf, &mut cryo, &sc);
    signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&log, 1, LINE_TIMEOUT).expect_err("a corrupted lazyshape must FAIL");
    let (ok, so) = finished(cryo, &out, &sc);
    assert!(ok, "cryo restore --lazy-pages failed: {so}");
    for what in ["kept part: page", "moved part at its new address: page", "forked child"] {
        assert!(v.contains(what), "FAIL should mention {what:?}: {v}");
    }
}

#[test]
fn event_counts_are_read_from_the_summary() {
    let so = "cryo restore: pid 5 runs; lazy pages: 10 KiB copied, 3 faults, all in after 9 ms; \
              events: fork 2, remove 13, unmap 0, remap 1\n";
    assert_eq!(event_count(so, "fork"), 2);
    assert_eq!(event_count(so, "remove"), 13);
    assert_eq!(event_count(so, "unmap"), 0);
    assert_eq!(event_count(so, "remap"), 1);
    assert_eq!(event_count("no summary", "fork"), 0);
}

/// The process filling a lazy restore's pages dies before they are all in
/// (here `cryo restore --lazy-pages`, SIGKILLed): the restored tree must
/// die with it, not run on with zeros where its memory should be; and
/// once every page is in, the tree no longer depends on that process.
#[test]
fn lazy_restore_dies_with_its_filler_but_not_after() {
    require_root!();
    // Killed while filling.
    let sc = Scratch::new("lazy-filler-dies");
    let _ = dumped(&sc, 64, &[]);
    let (mut cryo, pf, _) = restore_lazy(&sc);
    let rpid = restored_pid(&pf, &mut cryo, &sc);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cryo.try_wait().unwrap().is_none(),
        "cryo finished filling too soon for the test"
    );
    signal(cryo.id() as i32, libc::SIGKILL).unwrap();
    let _ = cryo.wait();
    assert!(
        wait_pid_exited(rpid, GONE_TIMEOUT),
        "restored pid {rpid} runs on after its filler died (its missing pages would read as zeros)"
    );
    // Filled completely, then cryo exits: the tree runs on and is whole.
    let sc = Scratch::new("lazy-filler-done");
    let (_, log) = dumped(&sc, 16, &[]);
    let (mut cryo, pf, out) = restore_lazy(&sc);
    let rpid = restored_pid(&pf, &mut cryo, &sc);
    let (ok, so) = finished(cryo, &out, &sc);
    assert!(ok, "cryo restore --lazy-pages failed: {so}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        cryo_integration::pid_running(rpid),
        "restored pid {rpid} died after cryo finished"
    );
    signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "restored lazyshape: {v}");
}
