//! End-to-end tests of open files, pipes, sockets and the other fd kinds.
//!
//! Each workload first runs without cryo (it must PASS, and with
//! `--corrupt` it must FAIL: its checks can fail). Then it is dumped with
//! the real cryo binary, restored with `-d --pidfile`, told to verify
//! itself with SIGUSR1, and judged by its PASS/FAIL line; `crit decode`
//! must read every image of the dump. Processes are killed by pid at the
//! end ([`Cleanup`]). The cryo runs need root; without it they SKIP.

use cryo_integration::{
    bin, log_tail, one_line_error, pid_running, read_pidfile, run_cryo, run_cryo_reaped, s, signal, skip,
    wait_for_verdict, TempDir, Workload, LINE_TIMEOUT,
};
use std::time::Duration;

use cryo_integration::cycle::*;

// ---- 1. shared descriptions, ghost files, paths and devices --------------

#[test]
fn fdshare_plain_passes_and_detects_a_split_description() {
    let d = TempDir::new("fdshare-plain");
    expect_plain_pass(bin!("fdshare"), &["--dir", s(d.path())]);
    let d = TempDir::new("fdshare-plain-bad");
    expect_plain_fail(bin!("fdshare"), &["--dir", s(d.path()), "--corrupt"], "expected 104");
}

#[test]
fn fdshare_roundtrip() {
    cryo_integration::require_root!();
    let d = TempDir::new("fdshare-files");
    let (v, images, sc) = roundtrip("fdshare", bin!("fdshare"), &["--dir", s(d.path())]);
    assert!(v.contains("S=40,41"), "{v}");
    let log = sc.path("wl.log");
    let passes = cryo_integration::log_lines(&log)
        .iter()
        .filter(|l| l.starts_with("MEMBER ") && l.contains(" PASS"))
        .count();
    assert_eq!(passes, 2, "{}", log_tail(&log, 20));
    assert!(images.iter().any(|n| n.starts_with("ghost-file-")), "{images:?}");
    assert!(images.contains(&"remap-fpath.img".to_string()), "{images:?}");
    let remap = crit_json(&sc.img.join("remap-fpath.img"));
    assert_eq!(remap["entries"][0]["remap_type"], "GHOST", "{remap}");
    // The unlinked file did not come back under its name.
    assert!(!d.path().join("ghost.dat").exists());
}

/// `cryo restore -D IMG -d --pidfile PF EXTRA` under the reaper: it must
/// fail with one line naming `what`, write no pidfile and leave nothing.
fn restore_must_fail(sc: &Scratch, extra: &[&str], what: &str) {
    let pf = sc.path("pidfile-bad");
    sc.cl.pidfile(&pf);
    let mut args = vec!["restore", "-D", s(&sc.img), "-d", "--pidfile", s(&pf)];
    args.extend_from_slice(extra);
    let (out, left) = run_cryo_reaped(bin!("reaper"), &args);
    let err = one_line_error(&out, "restore");
    assert!(err.contains(what), "the error should name {what}: {err}");
    assert!(!pf.exists(), "a failed restore wrote the pidfile");
    assert!(left.is_empty(), "the failed restore left processes behind: {left:?}");
}

#[test]
fn changed_or_missing_files_are_refused_at_restore() {
    cryo_integration::require_root!();
    let d = TempDir::new("fdshare-changed");
    let sc = Scratch::new("fdshare-changed");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("fdshare"), &["--dir", s(d.path())], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &[]);
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "the dump should end the original");
    // A file grew: refused, unless --skip-file-check.
    let shared = d.path().join("shared.dat");
    let mut data = std::fs::read(&shared).unwrap();
    data.push(b'+');
    std::fs::write(&shared, &data).unwrap();
    restore_must_fail(&sc, &[], "shared.dat changed size");
    // A file is gone: refused, naming it.
    let orphan = d.path().join("orphan.dat");
    let keep = std::fs::read(&orphan).unwrap();
    std::fs::remove_file(&orphan).unwrap();
    restore_must_fail(&sc, &["--skip-file-check"], "orphan.dat");
    std::fs::write(&orphan, keep).unwrap();
    // Accepted on request; the workload still passes.
    let pf = sc.path("pidfile-skip");
    sc.cl.pidfile(&pf);
    let rlog = sc.path("restore-skip.log");
    let out = run_cryo(&[
        "restore",
        "-D",
        s(&sc.img),
        "-d",
        "--pidfile",
        s(&pf),
        "--skip-file-check",
        "-o",
        s(&rlog),
    ]);
    assert_cryo_ok(&out, "cryo restore --skip-file-check", &rlog);
    let rpid = read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"));
    signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
}

// ---- 2. pipes and FIFOs ------------------------------------------------------

#[test]
fn pipes_plain_passes_and_detects_an_extra_byte() {
    let d = TempDir::new("pipes-plain");
    expect_plain_pass(bin!("pipes"), &["--dir", s(d.path())]);
    let d = TempDir::new("pipes-plain-bad");
    expect_plain_fail(
        bin!("pipes"),
        &["--dir", s(d.path()), "--corrupt"],
        "pipe A holds 200001 bytes",
    );
}

#[test]
fn pipes_roundtrip() {
    cryo_integration::require_root!();
    let d = TempDir::new("pipes-files");
    let (v, images, sc) = roundtrip("pipes", bin!("pipes"), &["--dir", s(d.path())]);
    assert!(v.starts_with("PASS"), "{v}");
    let log = sc.path("wl.log");
    let passes = cryo_integration::log_lines(&log)
        .iter()
        .filter(|l| l.starts_with("MEMBER ") && l.contains(" PASS"))
        .count();
    assert_eq!(passes, 2, "{}", log_tail(&log, 20));
    for must in ["pipes-data.img", "fifo-data.img"] {
        assert!(images.contains(&must.to_string()), "no {must} in {images:?}");
    }
    // crit sees the data: pipe A's 200000 bytes with its 1 MiB size.
    let pd = crit_json(&sc.img.join("pipes-data.img"));
    let entries = pd["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["bytes"] == 200000 && e["size"] == 1048576),
        "{pd}"
    );
    let fd = crit_json(&sc.img.join("fifo-data.img"));
    assert_eq!(fd["entries"][0]["bytes"], 3000, "{fd}");
}

#[test]
fn pipes_dump_leaves_the_data_in_place() {
    cryo_integration::require_root!();
    // --leave-running: the original must still find every byte after the
    // dump read its pipes.
    let d = TempDir::new("pipes-leave");
    let sc = Scratch::new("pipes-leave");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("pipes"), &["--dir", s(d.path())], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &["--leave-running"]);
    assert!(pid_running(w.pid), "--leave-running must leave the original running");
    w.usr1().expect("SIGUSR1");
    let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
    assert_eq!(w.wait_exit(GONE_TIMEOUT).and_then(|s| s.code()), Some(0));
}

// ---- 3. unix sockets ---------------------------------------------------------

#[test]
fn unixsk_plain_passes_and_detects_a_lost_byte() {
    let d = TempDir::new("unixsk-plain");
    expect_plain_pass(bin!("unixsk"), &["--dir", s(d.path())]);
    let d = TempDir::new("unixsk-plain-bad");
    expect_plain_fail(bin!("unixsk"), &["--dir", s(d.path()), "--corrupt"], "s2:");
}

#[test]
fn unixsk_roundtrip() {
    cryo_integration::require_root!();
    let d = TempDir::new("unixsk-files");
    let (v, images, sc) = roundtrip("unixsk", bin!("unixsk"), &["--dir", s(d.path())]);
    assert!(v.starts_with("PASS"), "{v}");
    let log = sc.path("wl.log");
    let passes = cryo_integration::log_lines(&log)
        .iter()
        .filter(|l| l.starts_with("MEMBER ") && l.contains(" PASS"))
        .count();
    assert_eq!(passes, 2, "{}", log_tail(&log, 20));
    assert!(images.contains(&"sk-queues.img".to_string()), "{images:?}");
    let files = crit_json(&sc.img.join("files.img"));
    let usk: Vec<&serde_json::Value> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "UNIXSK")
        .collect();
    assert!(usk.len() >= 12, "{} unix sockets in files.img", usk.len());
    let q = crit_json(&sc.img.join("sk-queues.img"));
    assert!(
        q["entries"].as_array().unwrap().iter().any(|e| e["length"] == 5000),
        "{q}"
    );
}

// ---- 4. eventfd, signalfd, timerfd, epoll ---------------------------------

#[test]
fn anonfds_plain_passes_and_detects_a_drained_eventfd() {
    expect_plain_pass(bin!("anonfds"), &[]);
    expect_plain_fail(bin!("anonfds"), &["--corrupt"], "eventfd E1 reads");
}

#[test]
fn anonfds_roundtrip() {
    cryo_integration::require_root!();
    let (v, _images, sc) = roundtrip("anonfds", bin!("anonfds"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let log = sc.path("wl.log");
    assert!(
        cryo_integration::log_lines(&log)
            .iter()
            .any(|l| l.starts_with("MEMBER c PASS")),
        "{}",
        log_tail(&log, 20)
    );
    let files = crit_json(&sc.img.join("files.img"));
    let kinds: Vec<&str> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for k in ["EVENTFD", "SIGNALFD", "TIMERFD", "EVENTPOLL"] {
        assert!(kinds.contains(&k), "no {k} in files.img: {kinds:?}");
    }
}

#[test]
fn memfd_plain_passes_and_detects_a_changed_byte() {
    expect_plain_pass(bin!("memfd"), &[]);
    expect_plain_fail(bin!("memfd"), &["--corrupt"], "m1 content differs");
}

#[test]
fn memfd_roundtrip() {
    cryo_integration::require_root!();
    let (v, images, sc) = roundtrip("memfd", bin!("memfd"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let log = sc.path("wl.log");
    assert!(
        cryo_integration::log_lines(&log)
            .iter()
            .any(|l| l.starts_with("MEMBER c PASS")),
        "{}",
        log_tail(&log, 20)
    );
    assert!(images.contains(&"memfd.img".to_string()), "{images:?}");
    let m = crit_json(&sc.img.join("memfd.img"));
    let names: Vec<&str> = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"cryo-data") && names.contains(&"cryo-plain"), "{m}");
    assert!(images.iter().any(|n| n.starts_with("pagemap-shmem-")), "{images:?}");
}

#[test]
fn inotify_plain_passes_and_detects_a_lost_watch() {
    let d = TempDir::new("inotify-plain");
    expect_plain_pass(bin!("inotify"), &["--dir", s(d.path())]);
    let d = TempDir::new("inotify-plain-bad");
    expect_plain_fail(bin!("inotify"), &["--dir", s(d.path()), "--corrupt"], "watches");
}

#[test]
fn inotify_roundtrip() {
    cryo_integration::require_root!();
    let d = TempDir::new("inotify-files");
    let (v, _images, sc) = roundtrip("inotify", bin!("inotify"), &["--dir", s(d.path())]);
    assert!(v.starts_with("PASS"), "{v}");
    let files = crit_json(&sc.img.join("files.img"));
    let ify = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "INOTIFY")
        .expect("an INOTIFY entry");
    assert_eq!(ify["ify"]["wd"].as_array().map(|w| w.len()), Some(3), "{ify}");
}

// ---- kinds cryo does not dump ----------------------------------------------

/// Dumps a badfd workload holding `kind` at fd 33: the dump must fail with
/// one line naming the pid, the fd and `what`, write no complete image,
/// and leave the workload running and intact.
fn unsupported_kind_fails_cleanly(kind: &str, what: &str) {
    let sc = Scratch::new(&format!("bad-{kind}"));
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("badfd"), &["--kind", kind], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    let pid = w.pid.to_string();
    let out = run_cryo(&["dump", "-t", &pid, "-D", s(&sc.img)]);
    let err = one_line_error(&out, &format!("dump of a {kind} descriptor"));
    for must in [format!("pid {pid}"), "fd 33".to_string(), what.to_string()] {
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

/// A listener on 127.0.0.1 (outside any dumped tree) with backlog 0 and
/// one connection already waiting in its accept queue: further SYNs are
/// dropped, so a client's connect stays in SYN_SENT. Returns the port and
/// the fds to keep open.
fn full_listener() -> (u16, std::net::TcpStream, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain integer arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket");
    // SAFETY: `fd` is a new descriptor we own.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_in is valid (port 0: any).
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: `sa` and `len` are valid for bind, listen and getsockname.
    unsafe {
        assert_eq!(libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len), 0, "bind");
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        assert_eq!(
            libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len),
            0
        );
    }
    let port = u16::from_be(sa.sin_port);
    let first = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the first connection");
    (port, first, owned)
}

#[test]
fn dump_of_a_connection_in_syn_sent_fails_cleanly() {
    cryo_integration::require_root!();
    let (port, _first, _listener) = full_listener();
    let port = port.to_string();
    let sc = Scratch::new("bad-synsent");
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("badfd"), &["--kind", "synsent", "--port", &port], &log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    let pid = w.pid.to_string();
    let out = run_cryo(&["dump", "-t", &pid, "-D", s(&sc.img), "--tcp-established"]);
    let err = one_line_error(&out, "dump of a connection in SYN_SENT");
    for must in [
        format!("pid {pid}"),
        "fd 33".to_string(),
        "SYN_SENT".to_string(),
        format!(":{port}"),
    ] {
        assert!(err.contains(&must), "the error should contain {must:?}: {err}");
    }
    assert!(
        !sc.img.join("inventory.img").exists(),
        "a failed dump left an inventory.img"
    );
    assert!(pid_running(w.pid), "the tree must run on after a failed dump");
    w.usr1().expect("SIGUSR1");
    let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
    assert_eq!(w.wait_exit(GONE_TIMEOUT).and_then(|s| s.code()), Some(0));
}

#[test]
fn badfd_plain_passes_and_detects_a_closed_fd() {
    expect_plain_pass(bin!("badfd"), &["--kind", "inet"]);
    expect_plain_fail(bin!("badfd"), &["--kind", "inet", "--corrupt"], "fd 33 is None");
}

#[test]
fn dump_of_an_io_uring_fails_cleanly() {
    cryo_integration::require_root!();
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "2") {
        skip("io_uring is disabled on this kernel");
        return;
    }
    unsupported_kind_fails_cleanly("io_uring", "[io_uring]");
}
