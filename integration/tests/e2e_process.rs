//! End-to-end tests of `cryo dump` / `cryo restore` on plain process trees.
//!
//! Each test starts a workload in its own session, dumps it with the real
//! cryo binary, restores it into a fresh pid namespace with `-d --pidfile`,
//! tells the restored process to verify itself (SIGUSR1 to the host pid from
//! the pidfile) and judges it by the PASS/FAIL line in its log. Every
//! process started or restored is killed by pid at the end ([`Cleanup`]).
//!
//! These tests need root and a working engine.

use cryo_integration::{
    assert_ok, bin, check_steps, count_lines, cryo_bin, describe, log_tail, one_line_error, pid_running, read_pidfile,
    require_root, run_cryo, run_cryo_reaped, s, signal, step_numbers, wait_for_line, wait_for_nth_verdict,
    wait_pid_exited, Captured, Cleanup, TempDir, Workload, CRYO_TIMEOUT, LINE_TIMEOUT,
};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const GONE_TIMEOUT: Duration = Duration::from_secs(15);

/// One test's scratch space: images in `img/`, cryo's logs and pidfiles
/// beside them, and the Cleanup guard for what the test restores. Fields
/// drop in order: the guard kills (reading the pidfiles) before the
/// directory goes away.
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

/// `what` failed: the output plus the tail of cryo's own log.
fn assert_cryo_ok(out: &Output, what: &str, logfile: &Path) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n--- {} (tail) ---\n{}",
        describe(out),
        logfile.display(),
        log_tail(logfile, 30)
    );
}

/// `cryo dump -t PID -D IMG -o dump.log -v4 EXTRA...`
fn dump(sc: &Scratch, pid: i32, extra: &[&str]) -> Output {
    let pid = pid.to_string();
    let log = sc.path("dump.log");
    let mut args = vec!["dump", "-t", &pid, "-D", s(&sc.img), "-o", s(&log), "-v4"];
    args.extend_from_slice(extra);
    let out = run_cryo(&args);
    assert_cryo_ok(&out, "cryo dump", &log);
    out
}

/// `cryo restore -D IMG -d --pidfile PF -o restore-TAG.log -v4`; returns
/// the restored root's host pid.
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
    let pid = read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"));
    pid
}

/// The pid `pid` has in its own (innermost) pid namespace.
fn inner_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Asserts that the dump took the original down (it is our child, so we
/// reap it and look at how it died).
fn assert_original_killed(w: &mut Workload) {
    let st = w
        .wait_exit(GONE_TIMEOUT)
        .unwrap_or_else(|| panic!("original pid {} still runs after dump", w.pid));
    assert!(
        st.signal().is_some(),
        "original pid {} should have been killed by cryo, but {st:?}; log:\n{}",
        w.pid,
        log_tail(&w.log, 10)
    );
}

/// Checks a restored root: it runs, keeps its old pid inside its pid
/// namespace, passes its own verification on SIGUSR1, and then vanishes.
fn verify_restored(rpid: i32, orig_pid: i32, log: &Path, nth: usize) -> String {
    assert!(pid_running(rpid), "restored pid {rpid} is not running");
    assert_eq!(
        inner_pid(rpid),
        Some(orig_pid),
        "restored pid {rpid} should be {orig_pid} inside its pid namespace"
    );
    signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    let v = wait_for_nth_verdict(log, nth, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_pid_exited(rpid, GONE_TIMEOUT),
        "restored pid {rpid} did not go away after its verdict (state {:?}, parent {:?})",
        cryo_integration::pid_state(rpid),
        cryo_integration::ppid_of(rpid)
    );
    v
}

/// The common cycle: spawn, READY, dump (kills), restore -d, verify.
/// Returns the verdict line and the workload's log path.
fn roundtrip(tag: &str, bin: &Path, args: &[&str]) -> (String, Scratch) {
    let sc = Scratch::new(tag);
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin, args, &log).expect("spawn workload");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(100));
    dump(&sc, w.pid, &[]);
    assert_original_killed(&mut w);
    let rpid = restore_detached(&sc, "1");
    let v = verify_restored(rpid, w.pid, &log, 1);
    (v, sc)
}

#[test]
fn check_looks_good() {
    require_root!();
    let out = run_cryo(&["check"]);
    assert_ok(&out, "cryo check");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Looks good."),
        "{}",
        describe(&out)
    );
}

#[test]
fn memsum_roundtrip() {
    require_root!();
    let (v, _sc) = roundtrip("memsum", bin!("memsum"), &["--mib", "32"]);
    assert!(v.contains("mib=32"), "{v}");
}

#[test]
fn counter_continues_without_gap() {
    require_root!();
    let sc = Scratch::new("counter");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("counter"), &["--interval-ms", "20"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    wait_for_line(&log, "step 10", LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &[]);
    assert_original_killed(&mut w);
    let last = *step_numbers(&log).last().expect("steps before the dump");
    let rpid = restore_detached(&sc, "1");
    wait_for_line(&log, &format!("step {}", last + 5), LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("the restored counter does not count on: {e}"));
    verify_restored(rpid, w.pid, &log, 1);
    let steps = step_numbers(&log);
    check_steps(&steps).unwrap_or_else(|e| panic!("{e} (last before the dump: {last})"));
}

#[test]
fn fileoff_roundtrip() {
    require_root!();
    let files = TempDir::new("fileoff-files");
    let (v, _sc) = roundtrip("fileoff", bin!("fileoff"), &["--dir", s(files.path())]);
    assert!(v.contains("dup17=17"), "{v}");
}

#[test]
fn fpu_roundtrip() {
    require_root!();
    let (v, _sc) = roundtrip("fpu", bin!("fpu"), &[]);
    assert!(v.contains("mxcsr="), "{v}");
}

#[test]
fn tree_roundtrip() {
    require_root!();
    let (v, sc) = roundtrip("tree", bin!("tree"), &["--children", "3"]);
    assert!(v.starts_with("PASS children="), "{v}");
    let log = sc.path("wl.log");
    let member_passes = cryo_integration::log_lines(&log)
        .iter()
        .filter(|l| l.starts_with("MEMBER ") && l.contains(" PASS "))
        .count();
    assert_eq!(member_passes, 4, "{}", log_tail(&log, 20));
}

#[test]
fn leave_running_then_two_restores_at_once() {
    require_root!();
    let sc = Scratch::new("leave");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("memsum"), &["--mib", "8"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &["--leave-running"]);
    assert!(
        w.wait_exit(Duration::from_millis(300)).is_none() && pid_running(w.pid),
        "--leave-running must leave the original running"
    );

    // Two restores of the same images at the same time.
    let mut runs = Vec::new();
    for tag in ["a", "b"] {
        let pf = sc.path(&format!("pidfile-{tag}"));
        sc.cl.pidfile(&pf);
        let rlog = sc.path(&format!("restore-{tag}.log"));
        let args = [
            "restore",
            "-D",
            s(&sc.img),
            "-d",
            "--pidfile",
            s(&pf),
            "-o",
            s(&rlog),
            "-v4",
        ];
        runs.push((Captured::spawn(&cryo_bin(), &args, Stdio::null(), None), pf, rlog));
    }
    let mut rpids = Vec::new();
    for (run, pf, rlog) in runs {
        let out = run.finish(CRYO_TIMEOUT);
        assert_cryo_ok(&out, "concurrent cryo restore -d", &rlog);
        let pid = read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"));
        rpids.push(pid);
    }
    assert_ne!(rpids[0], rpids[1], "two restores, one host pid?");

    // All three copies share the log: verify them one after the other.
    verify_restored(rpids[0], w.pid, &log, 1);
    verify_restored(rpids[1], w.pid, &log, 2);
    w.usr1().expect("SIGUSR1 to the original");
    wait_for_nth_verdict(&log, 3, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let st = w.wait_exit(GONE_TIMEOUT).expect("original exits");
    assert_eq!(st.code(), Some(0), "original: {st:?}");
    assert_eq!(count_lines(&log, "PASS"), 3);
}

#[test]
fn tar_stream_dump_piped_into_restore() {
    require_root!();
    let sc = Scratch::new("tar");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("memsum"), &["--mib", "4"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    let pid = w.pid.to_string();
    let dlog = sc.path("dump.log");
    let rlog = sc.path("restore.log");
    let pf = sc.path("pidfile");
    sc.cl.pidfile(&pf);

    let mut d = Captured::spawn(
        &cryo_bin(),
        &["dump", "-t", &pid, "--tar", "-", "-o", s(&dlog), "-v4"],
        Stdio::null(),
        Some(Stdio::piped()),
    );
    let pipe = d.take_stdout().expect("dump stdout pipe");
    let r = Captured::spawn(
        &cryo_bin(),
        &[
            "restore",
            "--tar",
            "-",
            "-d",
            "--pidfile",
            s(&pf),
            "-o",
            s(&rlog),
            "-v4",
        ],
        Stdio::from(pipe),
        None,
    );
    let dout = d.finish(CRYO_TIMEOUT);
    let rout = r.finish(CRYO_TIMEOUT);
    assert_cryo_ok(&dout, "cryo dump --tar -", &dlog);
    assert_cryo_ok(&rout, "cryo restore --tar -", &rlog);
    assert_original_killed(&mut w);
    let rpid = read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"));
    verify_restored(rpid, w.pid, &log, 1);
}

fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".img"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sed_on_pages_changes_the_restored_memory() {
    require_root!();
    let sc = Scratch::new("sed");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(
        bin!("memsum"),
        &["--mib", "1", "--word", "foobar", "--expect-word", "barfoo"],
        &log,
    )
    .expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &[]);
    assert_original_killed(&mut w);

    let pages = files_with_prefix(&sc.img, "pages-");
    assert!(!pages.is_empty(), "no pages-*.img in {}", sc.img.display());
    let has_word = pages.iter().any(|p| {
        std::fs::read(p)
            .map(|b| b.windows(6).any(|x| x == b"foobar"))
            .unwrap_or(false)
    });
    assert!(has_word, "no page image holds the word foobar");
    let mut sed = Command::new("sed");
    sed.args(["-i", "-e", "s,foobar,barfoo,g"]).args(&pages);
    let st = sed.status().expect("run sed");
    assert!(st.success(), "sed failed: {st:?}");

    let rpid = restore_detached(&sc, "1");
    let v = verify_restored(rpid, w.pid, &log, 1);
    assert!(v.contains("word=barfoo"), "{v}");
}

#[test]
fn crit_decodes_every_image() {
    require_root!();
    let crit = Path::new("/usr/bin/crit");
    assert!(
        crit.exists(),
        "/usr/bin/crit is missing: run hack/setup (Debian package criu)"
    );
    let sc = Scratch::new("crit");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("tree"), &["--children", "2"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &[]);
    assert_original_killed(&mut w);

    let images: Vec<PathBuf> = files_with_prefix(&sc.img, "")
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pages-"))
        })
        .collect();
    for must in ["inventory.img", "pstree.img"] {
        assert!(images.iter().any(|p| p.ends_with(must)), "no {must} among {images:?}");
    }
    let mut failures = Vec::new();
    for img in &images {
        let out = Command::new(crit)
            .args(["decode", "-i", s(img)])
            .stdin(Stdio::null())
            .output()
            .expect("run crit");
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
        if !out.status.success() || json.is_err() {
            failures.push(format!(
                "{}: {}",
                img.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(failures.is_empty(), "crit decode failed:\n{}", failures.join("\n"));
}

/// True if some number in `v` under a key containing "pid" equals `pid`.
fn json_has_pid(v: &serde_json::Value, pid: i64, under_pid_key: bool) -> bool {
    match v {
        serde_json::Value::Number(n) => under_pid_key && n.as_i64() == Some(pid),
        serde_json::Value::Array(a) => a.iter().any(|x| json_has_pid(x, pid, under_pid_key)),
        serde_json::Value::Object(m) => m
            .iter()
            .any(|(k, x)| json_has_pid(x, pid, under_pid_key || k.contains("pid"))),
        _ => false,
    }
}

#[test]
fn show_prints_json_with_the_pid() {
    require_root!();
    let sc = Scratch::new("show");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("memsum"), &["--mib", "1"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &[]);
    assert_original_killed(&mut w);

    for target in [sc.img.clone(), sc.img.join("pstree.img")] {
        let out = run_cryo(&["show", s(&target)]);
        assert_ok(&out, &format!("cryo show {}", target.display()));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("cryo show {} is not JSON ({e}): {}", target.display(), describe(&out)));
        assert!(
            json_has_pid(&v, w.pid as i64, false),
            "cryo show {} does not mention pid {}: {}",
            target.display(),
            w.pid,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

// ---- bad input: clear one-line errors, nothing left behind ----------------

#[test]
fn dump_of_a_missing_pid_fails_cleanly() {
    require_root!();
    let sc = Scratch::new("nopid");
    // A pid that just existed and has been reaped is free.
    let mut c = Command::new("/bin/true").spawn().expect("spawn true");
    let pid = c.id();
    c.wait().expect("wait true");
    let out = run_cryo(&["dump", "-t", &pid.to_string(), "-D", s(&sc.img)]);
    let err = one_line_error(&out, "dump of a missing pid");
    assert!(err.contains(&pid.to_string()), "error should name pid {pid}: {err}");
}

/// Restores `dir` under the reaper and checks: non-zero exit, one line on
/// stderr containing one of `names`, no pidfile, no process left behind.
fn restore_must_fail(dir: &Path, names: &[&str]) {
    let tmp = TempDir::new("badpf");
    let pf = tmp.join("pidfile");
    let cl = Cleanup::new();
    cl.pidfile(&pf);
    let (out, left) = run_cryo_reaped(bin!("reaper"), &["restore", "-D", s(dir), "-d", "--pidfile", s(&pf)]);
    let err = one_line_error(&out, &format!("restore from {}", dir.display()));
    assert!(
        names.iter().any(|n| err.contains(n)),
        "error should name one of {names:?}: {err}"
    );
    assert!(
        !pf.exists(),
        "a failed restore wrote the pidfile: {:?}",
        std::fs::read_to_string(&pf)
    );
    assert!(left.is_empty(), "the failed restore left processes behind: {left:?}");
}

#[test]
fn restore_from_a_missing_dir_fails_cleanly() {
    require_root!();
    let tmp = TempDir::new("nodir");
    let dir = tmp.join("does-not-exist");
    restore_must_fail(&dir, &[s(&dir)]);
}

#[test]
fn restore_from_an_empty_dir_fails_cleanly() {
    require_root!();
    let tmp = TempDir::new("emptydir");
    restore_must_fail(tmp.path(), &["inventory.img", s(tmp.path())]);
}

/// A fresh dump of a small memsum (the original is gone afterwards).
fn small_dump(tag: &str) -> Scratch {
    let sc = Scratch::new(tag);
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("memsum"), &["--mib", "1"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &[]);
    assert_original_killed(&mut w);
    sc
}

fn one_file(dir: &Path, prefix: &str) -> PathBuf {
    files_with_prefix(dir, prefix)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap_or_else(|| panic!("no {prefix}*.img in {}", dir.display()))
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).expect("file name")
}

#[test]
fn restore_with_a_truncated_pstree_fails_cleanly() {
    require_root!();
    let sc = small_dump("badpstree");
    let f = sc.img.join("pstree.img");
    let len = std::fs::metadata(&f).expect("pstree.img").len();
    assert!(len > 12, "pstree.img is only {len} bytes");
    // Cut into the last entry's payload.
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len - 3).unwrap();
    restore_must_fail(&sc.img, &["pstree.img"]);
}

#[test]
fn restore_with_a_flipped_byte_in_core_fails_cleanly() {
    require_root!();
    let sc = small_dump("badcore");
    let f = one_file(&sc.img, "core-");
    let mut b = std::fs::read(&f).unwrap();
    // Byte 4 starts the per-image magic (after the common magic): a flip
    // there must be caught whatever the payload decoder would make of it.
    b[4] ^= 0xff;
    std::fs::write(&f, &b).unwrap();
    restore_must_fail(&sc.img, &[file_name(&f)]);
}

/// Rewrites protobuf field 1 (a one-byte varint) of the first entry of an
/// inventory image (`u32 magic, u32 size, payload`) to `value`.
fn set_inventory_img_version(path: &Path, value: u8) {
    let mut b = std::fs::read(path).unwrap();
    assert!(b.len() > 8, "inventory.img is {} bytes", b.len());
    let size = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    assert!(8 + size <= b.len(), "inventory entry size {size} > file");
    let mut i = 8;
    let end = 8 + size;
    // Walk the fields of the entry until field 1 (wire type 0).
    while i < end {
        let (key, n) = varint(&b[i..end]);
        i += n;
        let (field, wt) = (key >> 3, key & 7);
        if field == 1 && wt == 0 {
            assert!(b[i] < 0x80, "img_version is not a one-byte varint");
            b[i] = value;
            std::fs::write(path, &b).unwrap();
            return;
        }
        match wt {
            0 => i += varint(&b[i..end]).1,
            1 => i += 8,
            2 => {
                let (len, n) = varint(&b[i..end]);
                i += n + len as usize;
            }
            5 => i += 4,
            _ => panic!("inventory.img: wire type {wt} at byte {i}"),
        }
    }
    panic!("inventory.img has no img_version field");
}

fn varint(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, &x) in b.iter().enumerate().take(10) {
        v |= ((x & 0x7f) as u64) << (7 * i);
        if x < 0x80 {
            return (v, i + 1);
        }
    }
    panic!("bad varint");
}

#[test]
fn img_version_patch_works_on_a_crit_encoded_inventory() {
    // Proves the corruption helper itself (no root, no engine needed).
    let crit = Path::new("/usr/bin/crit");
    assert!(crit.exists(), "/usr/bin/crit is missing: run hack/setup");
    let tmp = TempDir::new("inv");
    let json = tmp.join("inv.json");
    let img = tmp.join("inventory.img");
    std::fs::write(
        &json,
        r#"{"magic": "INVENTORY", "entries": [{"img_version": 2, "fdinfo_per_id": true, "root_cg_set": 1, "lsmtype": "NO_LSM"}]}"#,
    )
    .unwrap();
    let st = Command::new(crit)
        .args(["encode", "-i", s(&json), "-o", s(&img)])
        .status()
        .expect("run crit encode");
    assert!(st.success());
    set_inventory_img_version(&img, 3);
    let out = Command::new(crit)
        .args(["decode", "-i", s(&img)])
        .output()
        .expect("run crit decode");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("crit JSON");
    assert_eq!(v["entries"][0]["img_version"], 3);
    assert_eq!(v["entries"][0]["root_cg_set"], 1);
}

#[test]
fn restore_with_img_version_3_fails_cleanly() {
    require_root!();
    let sc = small_dump("badinv");
    set_inventory_img_version(&sc.img.join("inventory.img"), 3);
    restore_must_fail(&sc.img, &["inventory.img"]);
}

#[test]
fn restore_with_truncated_pages_fails_cleanly() {
    require_root!();
    let sc = small_dump("badpages");
    let f = one_file(&sc.img, "pages-");
    let len = std::fs::metadata(&f).unwrap().len();
    assert!(len >= 4096, "{} is only {len} bytes", f.display());
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len - 4096).unwrap();
    restore_must_fail(&sc.img, &[file_name(&f)]);
}

// ---- shell job on a terminal, with tmux ------------------------------------

/// A tmux server on its own socket, killed at the end through the Cleanup.
struct Tmux {
    socket: String,
    conf: PathBuf,
}

impl Tmux {
    fn new(tag: &str, tmp: &TempDir, cl: &Cleanup) -> Tmux {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let socket = format!("cryo-e2e-{tag}-{}-{n}", std::process::id());
        cl.tmux(&socket);
        let conf = tmp.join(&format!("tmux-{tag}.conf"));
        std::fs::write(&conf, "set -g remain-on-exit on\nset -g history-limit 10000\n").unwrap();
        Tmux { socket, conf }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", s(&self.conf)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux (install it with hack/setup)")
    }

    /// A detached session running `argv` directly (no shell in between).
    fn session(&self, name: &str, argv: &[&str]) {
        let mut args = vec!["new-session", "-d", "-s", name, "-x", "160", "-y", "50"];
        args.extend_from_slice(argv);
        let out = self.cmd(&args);
        assert!(out.status.success(), "tmux new-session: {}", describe(&out));
    }

    fn pane_pid(&self, name: &str) -> i32 {
        let out = self.cmd(&["list-panes", "-t", name, "-F", "#{pane_pid}"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pane pid: {}", describe(&out)))
    }

    fn screen(&self, name: &str) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-J", "-S", "-", "-t", name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The numbers of `foobar, step N` lines on a screen.
fn screen_steps(screen: &str) -> Vec<u64> {
    screen
        .lines()
        .filter_map(|l| l.trim().strip_prefix("foobar, step ")?.parse().ok())
        .collect()
}

fn wait_screen(t: &Tmux, name: &str, mut pred: impl FnMut(&str) -> bool) -> Result<String, String> {
    let end = std::time::Instant::now() + LINE_TIMEOUT;
    loop {
        let sc = t.screen(name);
        if pred(&sc) {
            return Ok(sc);
        }
        if std::time::Instant::now() >= end {
            return Err(sc);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn shell_job_in_tmux_continues_in_another_terminal() {
    require_root!();
    let sc = Scratch::new("tmux");
    let a = Tmux::new("a", &sc.tmp, &sc.cl);
    let b = Tmux::new("b", &sc.tmp, &sc.cl);
    a.session(
        "a",
        &[
            "bash",
            "-c",
            "for i in {0..2000}; do echo foobar, step $i; sleep 0.2; done",
        ],
    );
    let pid = a.pane_pid("a");
    sc.cl.pid(pid);
    wait_screen(&a, "a", |s| screen_steps(s).contains(&5))
        .unwrap_or_else(|s| panic!("the loop does not run in tmux:\n{s}"));

    dump(&sc, pid, &["--shell-job"]);
    assert!(
        cryo_integration::wait_pid_dead(pid, GONE_TIMEOUT),
        "bash {pid} still runs after the dump (state {:?}, ppid {:?})",
        cryo_integration::pid_state(pid),
        cryo_integration::ppid_of(pid)
    );
    let before = screen_steps(&a.screen("a"));
    let last = *before.last().expect("steps on screen A");

    let pf = sc.path("pidfile");
    sc.cl.pidfile(&pf);
    let rlog = sc.path("restore.log");
    let cryo = cryo_bin();
    b.session(
        "b",
        &[
            s(&cryo),
            "restore",
            "-D",
            s(&sc.img),
            "--shell-job",
            "--pidfile",
            s(&pf),
            "-o",
            s(&rlog),
            "-v4",
        ],
    );
    let screen = wait_screen(&b, "b", |s| screen_steps(s).contains(&(last + 3))).unwrap_or_else(|s| {
        panic!(
            "screen B does not count on from step {last}:\n{s}\n--- restore log ---\n{}",
            log_tail(&rlog, 30)
        )
    });
    let after = screen_steps(&screen);
    assert_eq!(
        after.first(),
        Some(&(last + 1)),
        "screen A ended at step {last}; screen B:\n{screen}"
    );
    check_steps(&after.iter().map(|n| n - after[0]).collect::<Vec<_>>()).unwrap_or_else(|e| panic!("{e}\n{screen}"));
}

#[test]
fn dump_of_a_kernel_thread_fails_cleanly() {
    require_root!();
    // pid 2 is kthreadd: a task nobody may trace.
    let sc = Scratch::new("kthread");
    let out = run_cryo(&["dump", "-t", "2", "-D", s(&sc.img)]);
    let err = one_line_error(&out, "dump of a kernel thread");
    assert!(err.contains("pid 2"), "error should name pid 2: {err}");
}

#[test]
fn dump_of_a_thread_id_names_its_process() {
    require_root!();
    // A tid that is not a process: our own second thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        // SAFETY-free: gettid via libc.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = done_rx.recv();
    });
    let tid = rx.recv().unwrap();
    let sc = Scratch::new("tid");
    let out = run_cryo(&["dump", "-t", &tid.to_string(), "-D", s(&sc.img)]);
    done_tx.send(()).unwrap();
    h.join().unwrap();
    let err = one_line_error(&out, "dump of a thread id");
    assert!(
        err.contains(&tid.to_string()) && err.contains("thread"),
        "error should name the thread: {err}"
    );
}

#[test]
fn commands_refuse_to_run_without_root() {
    require_root!();
    let sc = Scratch::new("noroot");
    for args in [
        vec!["dump", "-t", "1", "-D", s(&sc.img)],
        vec!["restore", "-D", s(&sc.img)],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .arg(cryo_bin())
            .args(&args)
            .output()
            .expect("setpriv");
        let err = one_line_error(&out, &format!("{args:?} as nobody"));
        assert!(err.contains("needs root"), "error should say root is needed: {err}");
    }
}

#[test]
fn images_are_private_and_foreign_dirs_are_refused() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    // A directory cryo creates itself is private.
    let sc = Scratch::new("private");
    std::fs::remove_dir(&sc.img).unwrap();
    let log = sc.path("wl.log");
    let w = Workload::spawn(bin!("memsum"), &["--mib", "1"], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &[]);
    let dmode = std::fs::metadata(&sc.img).unwrap().permissions().mode() & 0o777;
    assert_eq!(dmode, 0o700, "image directory mode");
    for e in std::fs::read_dir(&sc.img).unwrap().flatten() {
        let m = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{} mode", e.path().display());
    }
    // A directory others can write to is refused, and nothing is started.
    std::fs::set_permissions(&sc.img, std::fs::Permissions::from_mode(0o777)).unwrap();
    restore_must_fail(&sc.img, &["can be written by users other than root"]);
    // ...unless the user says to trust it.
    let pf = sc.path("trusted.pid");
    sc.cl.pidfile(&pf);
    let out = run_cryo(&["restore", "-D", s(&sc.img), "-d", "--pidfile", s(&pf), "--trust-images"]);
    assert!(out.status.success(), "trusted restore failed: {}", describe(&out));
    let rpid: i32 = std::fs::read_to_string(&pf).unwrap().trim().parse().unwrap();
    sc.cl.pid(rpid);
    assert!(rpid > 0);
}

#[test]
fn restore_of_pids_above_pid_max_fails_cleanly() {
    require_root!();
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if pid_max >= 4_000_000 {
        eprintln!("SKIP restore_of_pids_above_pid_max_fails_cleanly: pid_max is {pid_max}, no pid can exceed it");
        return;
    }
    let sc = small_dump("pidmax");
    // Rewrite the tree's pid above this machine's pid_max (as an image from
    // a host with a larger pid_max would have it), without the manifest so
    // the pid check itself is what refuses it.
    let pstree = sc.img.join("pstree.img");
    let out = Command::new("/usr/bin/crit")
        .args(["decode", "-i", s(&pstree)])
        .output()
        .expect("crit decode");
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("crit JSON");
    let big = pid_max + 10;
    v["entries"][0]["pid"] = big.into();
    v["entries"][0]["threads"] = serde_json::json!([big]);
    let json = sc.path("pstree.json");
    std::fs::write(&json, serde_json::to_vec(&v).unwrap()).unwrap();
    let st = Command::new("/usr/bin/crit")
        .args(["encode", "-i", s(&json), "-o", s(&pstree)])
        .status()
        .expect("crit encode");
    assert!(st.success());
    std::fs::remove_file(sc.img.join("cryo.sums")).unwrap();
    restore_must_fail(&sc.img, &["pid_max"]);
}
