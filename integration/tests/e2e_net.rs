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
use cryo_integration::netns::{field, judge_stream, Netns};

/// The KEY parts (isk, nlsk, psk...) of the entries of files.img in IMG, as
/// crit decodes them.
fn files_entries(img: &std::path::Path, key: &str) -> Vec<serde_json::Value> {
    let files = crit_json(&img.join("files.img"));
    files["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e.get(key))
        .cloned()
        .collect()
}

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
    let isk = files_entries(&sc.img, "isk");
    assert_eq!(isk.len(), 6, "inet sockets in files.img: {isk:?}");
    assert!(
        isk.iter().any(|e| e["state"] == 10 && e["backlog"] == 7),
        "a listener with backlog 7: {isk:?}"
    );
    assert!(!images.iter().any(|n| n.starts_with("tcp-stream-")), "{images:?}");
}

#[test]
fn udpq_plain_passes_and_detects_a_lost_datagram() {
    expect_plain_pass(bin!("udpq"), &[]);
    expect_plain_fail(bin!("udpq"), &["--corrupt"], "Q4 has 5 datagrams queued, expected 6");
}

/// Datagrams queued on UDP sockets come back in order with their senders
/// (IPv4, IPv6, and IPv4 on a dual-stack socket), one sk-queues.img entry
/// each.
#[test]
fn udpq_roundtrip_keeps_queued_datagrams() {
    cryo_integration::require_root!();
    let (v, images, sc) = roundtrip("udpq", bin!("udpq"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    assert!(images.iter().any(|n| n == "sk-queues.img"), "{images:?}");
    let q = crit_json(&sc.img.join("sk-queues.img"));
    let entries = q["entries"].as_array().expect("entries");
    // (crit's schema leaves out field 3, the sender: the workload's own
    // check of every sender is what proves it.)
    assert_eq!(entries.len(), 11, "queued datagrams in sk-queues.img");
}

/// The dump only peeks: with --leave-running every datagram is still
/// queued for the tree afterwards.
#[test]
fn udpq_leave_running_leaves_the_queues_alone() {
    cryo_integration::require_root!();
    let sc = Scratch::new("udpq-leave");
    let w = Workload::spawn(bin!("udpq"), &[], &sc.path("wl.log")).expect("spawn udpq");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    dump(&sc, w.pid, &["--leave-running"]);
    assert!(pid_running(w.pid), "--leave-running");
    passes_and_exits(&sc, w);
}

// ---- 2. established connections -----------------------------------------------

/// A network namespace of the test's own (loopback up) where its
/// workloads, cryo and therefore the lock tables live: test runs that go
/// on at the same time (other worktrees run these tests too) never see
/// each other's tables or connections.
struct TestNet {
    ns: Netns,
    name: String,
}

impl TestNet {
    fn new(tag: &str) -> TestNet {
        let name = format!("cryo-t{tag}-{}", std::process::id());
        let mut ns = Netns::new();
        ns.add(&name);
        TestNet { ns, name }
    }

    fn net_arg(&self) -> String {
        format!("--net=/run/netns/{}", self.name)
    }

    /// Spawns a workload in the namespace and waits for READY.
    fn spawn(&self, sc: &Scratch, bin: &std::path::Path, args: &[&str]) -> Workload {
        let w = spawn_in(&self.name, bin, args, &sc.path("wl.log"));
        std::thread::sleep(Duration::from_millis(100));
        w
    }

    /// `cryo args...` in the namespace.
    fn cryo(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("nsenter")
            .arg(self.net_arg())
            .arg("--")
            .arg(cryo_integration::cryo_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run nsenter cryo")
    }

    /// A successful dump (log and -v4 in the scratch directory).
    fn dump(&self, sc: &Scratch, pid: i32, extra: &[&str]) {
        dump_in(&self.name, sc, pid, extra);
    }

    /// A successful `restore -d --pidfile`; the restored pid.
    fn restore(&self, sc: &Scratch, tag: &str, extra: &[&str]) -> i32 {
        restore_in(
            &self.name,
            sc,
            &format!("pidfile-{tag}"),
            &format!("restore-{tag}.log"),
            extra,
        )
    }

    /// After a dump that was refused or failed: the tree runs on, no lock
    /// is left (a leftover one is blamed on WHAT), and the workload passes
    /// its check and exits 0.
    fn runs_on_unlocked(&self, sc: &Scratch, w: Workload, what: &str) {
        assert!(pid_running(w.pid), "the tree must run on after a failed dump");
        assert!(
            self.lock_tables().is_empty(),
            "{what} left a lock: {:?}",
            self.lock_tables()
        );
        assert!(
            self.lock_rules().is_empty(),
            "{what} left routing-lock rules: {:?}",
            self.lock_rules()
        );
        passes_and_exits(sc, w);
    }

    /// Dump (the original must be killed), crit, restore -d, SIGUSR1: the
    /// verdict.
    fn cycle(&self, sc: &Scratch, mut w: Workload, dump_args: &[&str], restore_args: &[&str]) -> String {
        self.dump(sc, w.pid, dump_args);
        let st = w
            .wait_exit(GONE_TIMEOUT)
            .unwrap_or_else(|| panic!("original pid {} still runs after dump", w.pid));
        assert!(st.code().is_none(), "the original should have been killed: {st:?}");
        crit_decodes_all(&sc.img);
        let rpid = self.restore(sc, "1", restore_args);
        cryo_integration::signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
        let v = cryo_integration::wait_for_nth_verdict(&sc.path("wl.log"), 1, LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            cryo_integration::wait_pid_exited(rpid, GONE_TIMEOUT),
            "restored pid {rpid} did not exit"
        );
        v
    }

    /// The lock tables in the namespace now.
    fn lock_tables(&self) -> Vec<String> {
        Netns::lock_tables(&self.name)
    }

    /// The routing-lock rules in the namespace now.
    fn lock_rules(&self) -> Vec<String> {
        Netns::lock_rules(&self.name)
    }

    /// A process in the namespace listening on 127.0.0.1:`port` until the
    /// returned workload is dropped (an address squatter).
    fn squat(&self, sc: &Scratch, port: u16) -> Workload {
        let log = sc.path("squatter.log");
        let code = format!(
            "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen(1)\nprint('READY %d' % __import__('os').getpid(), flush=True)\ntime.sleep(60)"
        );
        let w = Workload::spawn(
            std::path::Path::new("/usr/bin/nsenter"),
            &[&self.net_arg(), "--", "/usr/bin/python3", "-c", &code],
            &log,
        )
        .expect("squatter");
        w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
        w
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // The namespace (and every table in it) goes with `ns`.
        let _ = &self.ns;
    }
}

#[test]
fn tcpconn_plain_passes_and_detects_a_lost_byte() {
    expect_plain_pass(bin!("tcpconn"), &[]);
    expect_plain_fail(bin!("tcpconn"), &["--corrupt"], "C->A queue: byte 0 is");
    expect_plain_fail(bin!("tcpconn"), &["--closed"], "C is still connected");
    expect_plain_pass(bin!("tcpconn"), &["--half"]);
    expect_plain_fail(bin!("tcpconn"), &["--half", "--corrupt"], "C->A queue: byte 0 is");
}

fn tcpconn_established(v6: bool, half: bool) {
    let t = TestNet::new(&format!("a{}{}", u8::from(v6), u8::from(half)));
    let sc = Scratch::new(if v6 { "tcpconn6" } else { "tcpconn4" });
    let mut args: Vec<&str> = Vec::new();
    if v6 {
        args.push("--v6");
    }
    if half {
        args.push("--half");
    }
    let args = &args[..];
    let w = t.spawn(&sc, bin!("tcpconn"), args);
    let v = t.cycle(&sc, w, &["--tcp-established"], &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let streams: Vec<String> = std::fs::read_dir(&sc.img)
        .expect("image dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tcp-stream-"))
        .collect();
    assert_eq!(streams.len(), 4, "one stream per end of both connections: {streams:?}");
    // The half-closed pair was dumped in FIN_WAIT2 and CLOSE_WAIT, and with
    // --half the full one's client in FIN_WAIT1.
    let states: Vec<u64> = files_entries(&sc.img, "isk")
        .iter()
        .filter_map(|i| i["state"].as_u64())
        .collect();
    for want in [5, 8] {
        assert!(states.contains(&want), "state {want} in {states:?}");
    }
    assert_eq!(states.contains(&4), half, "FIN_WAIT1 iff --half: {states:?}");
    // The client's send queue held unsent bytes and the accepted end's
    // receive queue was full: both are in the images.
    let mut inq = 0;
    let mut unsent = 0;
    for n in &streams {
        let j = crit_json(&sc.img.join(n));
        let e = &j["entries"][0];
        inq += e["inq_len"].as_u64().unwrap_or(0);
        unsent += e["unsq_len"].as_u64().unwrap_or(0);
    }
    assert!(
        inq > 3000 && unsent > 0,
        "queues in the images: inq {inq}, unsent {unsent}"
    );
    assert!(
        t.lock_tables().is_empty(),
        "the network lock outlived the restore: {:?}",
        t.lock_tables()
    );
    assert!(t.lock_rules().is_empty(), "{:?}", t.lock_rules());
}

#[test]
fn tcpconn_ipv4_established_roundtrip() {
    cryo_integration::require_root!();
    tcpconn_established(false, false);
}

#[test]
fn tcpconn_half_closed_both_ways_roundtrip() {
    cryo_integration::require_root!();
    tcpconn_established(false, true);
}

#[test]
fn tcpconn_ipv6_established_roundtrip() {
    cryo_integration::require_root!();
    tcpconn_established(true, false);
}

#[test]
fn established_connection_without_the_flag_is_refused_and_the_tree_runs_on() {
    cryo_integration::require_root!();
    let t = TestNet::new("b");
    let sc = Scratch::new("tcpconn-refused");
    let w = t.spawn(&sc, bin!("tcpconn"), &[]);
    let pid = w.pid.to_string();
    let out = t.cryo(&["dump", "-t", &pid, "-D", s(&sc.img)]);
    let err = one_line_error(&out, "dump of a live TCP connection");
    for must in [
        "established TCP connection 127.0.0.1:",
        " -> 127.0.0.1:",
        "--tcp-established",
    ] {
        assert!(err.contains(must), "the error should contain {must:?}: {err}");
    }
    assert!(
        !sc.img.join("inventory.img").exists(),
        "a failed dump left an inventory.img"
    );
    t.runs_on_unlocked(&sc, w, "a refused dump");
}

#[test]
fn listener_with_a_connection_not_yet_accepted_is_refused() {
    cryo_integration::require_root!();
    let t = TestNet::new("c");
    let sc = Scratch::new("tcpconn-pending");
    let w = t.spawn(&sc, bin!("tcpconn"), &["--pending"]);
    let pid = w.pid.to_string();
    let out = t.cryo(&["dump", "-t", &pid, "-D", s(&sc.img), "--tcp-established"]);
    let err = one_line_error(&out, "dump of a listener with a pending connection");
    for must in [
        "listening socket tcp 127.0.0.1:",
        "1 connection(s) the program has not accepted yet",
    ] {
        assert!(err.contains(must), "the error should contain {must:?}: {err}");
    }
    t.runs_on_unlocked(&sc, w, "a refused dump");
}

/// After the connections were locked and put into repair mode, the dump
/// fails on a later fd: repair is off again, the lock is lifted, and the
/// workload finds every queue intact and its connections working.
#[test]
fn dump_failing_after_repair_leaves_the_connections_intact() {
    cryo_integration::require_root!();
    let t = TestNet::new("d");
    let sc = Scratch::new("tcpconn-badfd");
    let w = t.spawn(&sc, bin!("tcpconn"), &["--badfd"]);
    let pid = w.pid.to_string();
    let out = t.cryo(&["dump", "-t", &pid, "-D", s(&sc.img), "--tcp-established"]);
    let err = one_line_error(&out, "dump with a fanout packet socket");
    assert!(err.contains("fanout groups are not supported"), "{err}");
    t.runs_on_unlocked(&sc, w, "a failed dump");
}

/// --leave-running: the tree goes on with its connections out of repair
/// mode and unlocked; the images restore elsewhere later (not checked).
#[test]
fn leave_running_keeps_the_connections_working() {
    cryo_integration::require_root!();
    let t = TestNet::new("e");
    let sc = Scratch::new("tcpconn-leave");
    let w = t.spawn(&sc, bin!("tcpconn"), &[]);
    t.dump(&sc, w.pid, &["--tcp-established", "--leave-running"]);
    assert!(pid_running(w.pid), "--leave-running");
    assert!(
        t.lock_tables().is_empty(),
        "the lock outlived the dump: {:?}",
        t.lock_tables()
    );
    assert!(t.lock_rules().is_empty(), "{:?}", t.lock_rules());
    crit_decodes_all(&sc.img);
    passes_and_exits(&sc, w);
}

#[test]
fn tcp_close_restores_connections_closed() {
    cryo_integration::require_root!();
    let t = TestNet::new("f");
    let sc = Scratch::new("tcpconn-close");
    let w = t.spawn(&sc, bin!("tcpconn"), &["--closed"]);
    let v = t.cycle(&sc, w, &["--tcp-close"], &[]);
    assert!(v.starts_with("PASS closed"), "{v}");
    assert!(t.lock_tables().is_empty(), "{:?}", t.lock_tables());
}

#[test]
fn address_in_use_at_restore_fails_cleanly_and_lifts_the_lock() {
    cryo_integration::require_root!();
    let t = TestNet::new("g");
    let sc = Scratch::new("tcpconn-inuse");
    let mut w = t.spawn(&sc, bin!("tcpconn"), &[]);
    t.dump(&sc, w.pid, &["--tcp-established"]);
    w.wait_exit(GONE_TIMEOUT).expect("the original is killed");
    assert_eq!(
        t.lock_tables().len(),
        2,
        "both connections stay locked until the restore"
    );
    assert_eq!(
        t.lock_rules().len(),
        4,
        "two rules per connection: {:?}",
        t.lock_rules()
    );
    // Somebody else takes the listener's address.
    let port = files_entries(&sc.img, "isk")
        .iter()
        .find(|e| e["state"] == 10)
        .and_then(|e| e["src_port"].as_u64())
        .expect("a listener in files.img");
    let squatter = t.squat(&sc, port as u16);
    let (out, pf, left) = failing_restore_in(&t.name, &sc);
    let left: Vec<&str> = left.lines().collect();
    let err = one_line_error(&out, "restore onto a used address");
    assert!(
        err.contains(&format!("Cannot bind tcp 127.0.0.1:{port} to 127.0.0.1:{port}")) && err.contains("in use"),
        "the error should name the socket and the address: {err}"
    );
    assert!(!pf.exists(), "a failed restore wrote the pidfile");
    assert!(left.is_empty(), "the failed restore left processes behind: {left:?}");
    assert!(
        t.lock_tables().is_empty(),
        "a failed restore left the lock: {:?}",
        t.lock_tables()
    );
    assert!(t.lock_rules().is_empty(), "{:?}", t.lock_rules());
    // The address is free again: the same images restore.
    drop(squatter);
    let rpid = t.restore(&sc, "2", &[]);
    restored_passes(rpid, &sc.path("wl.log"));
}

// ---- 3. the demonstration: a client outside the tree streams through a dump --------

#[test]
fn tcpstream_plain_passes_and_detects_a_skipped_message() {
    for (corrupt, expect) in [(false, None), (true, Some("expected message 100, got 101"))] {
        let d = cryo_integration::TempDir::new("tcpstream-plain");
        let slog = d.join("server.log");
        let clog = d.join("client.log");
        let sargs: &[&str] = if corrupt {
            &["--role", "server", "--corrupt"]
        } else {
            &["--role", "server"]
        };
        let sw = Workload::spawn(bin!("tcpstream"), sargs, &slog).expect("spawn server");
        let port = announced_port(&slog);
        let cw = Workload::spawn(bin!("tcpstream"), &["--role", "client", "--port", &port], &clog).expect("client");
        cw.wait_ready().unwrap_or_else(|e| panic!("{e}"));
        sw.wait_ready().unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(400));
        sw.usr1().expect("usr1");
        cw.usr1().expect("usr1");
        let cv = wait_for_verdict(&clog, LINE_TIMEOUT);
        match expect {
            None => {
                let sv = wait_for_verdict(&slog, LINE_TIMEOUT);
                let (sv, cv) = match (sv, cv) {
                    (Ok(s), Ok(c)) => (s, c),
                    (s, c) => panic!("server: {s:?}\nclient: {c:?}"),
                };
                assert!(sv.starts_with("PASS") && field(&sv, "received") >= 50, "{sv}");
                assert!(field(&cv, "received") >= 50, "{cv}");
            }
            Some(what) => {
                let e = cv.expect_err("the client must FAIL");
                assert!(e.contains(what), "{e}");
            }
        }
    }
}

#[test]
fn tcpstream_server_dumped_and_restored_in_place_keeps_its_client() {
    cryo_integration::require_root!();
    stream_in_place("h", &[], &[]);
}

/// A server listening on the IPv6 wildcard (dual stack) with an IPv4
/// client: its connection has IPv4-mapped addresses, and its lock must
/// match the IPv4 packets it is made of.
#[test]
fn tcpstream_dual_stack_server_keeps_its_ipv4_client() {
    cryo_integration::require_root!();
    stream_in_place("j", &["--addr", "::"], &["--addr", "127.0.0.1"]);
}

/// A tcpstream server (given SERVER args) and its client (CLIENT args) in
/// one namespace; the server is dumped and restored in place.
fn stream_in_place(tag: &str, server: &[&str], client: &[&str]) {
    let t = TestNet::new(tag);
    let sc = Scratch::new("tcpstream");
    let slog = sc.path("wl.log");
    let clog = sc.path("client.log");
    let (mut sw, cw) = stream_pair(&t.name, &t.name, (server, client), &slog, &clog);
    t.dump(&sc, sw.pid, &["--tcp-established"]);
    sw.wait_exit(GONE_TIMEOUT).expect("the original server is killed");
    assert_eq!(
        t.lock_tables().len(),
        1,
        "the connection is locked between dump and restore"
    );
    assert_eq!(t.lock_rules().len(), 2, "one rule per direction: {:?}", t.lock_rules());
    std::thread::sleep(Duration::from_millis(300));
    assert!(pid_running(cw.pid), "the client must not notice");
    crit_decodes_all(&sc.img);
    let rpid = t.restore(&sc, "1", &[]);
    assert!(
        t.lock_tables().is_empty(),
        "the lock outlived the restore: {:?}",
        t.lock_tables()
    );
    assert!(t.lock_rules().is_empty(), "{:?}", t.lock_rules());
    judge_restored_stream(rpid, &cw, &slog, &clog, 300);
}

// ---- 4. the server moves to another network namespace ------------------------------

/// Runs cryo inside network namespace `ns` (nsenter switches only the
/// network namespace).
fn cryo_in(ns: &str, args: &[&str], log: &std::path::Path) {
    let cryo = cryo_integration::cryo_bin();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(&cryo)
        .args(args)
        .args(["-o", s(log), "-v4"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run nsenter cryo");
    assert_cryo_ok(&out, &format!("cryo {} in {ns}", args[0]), log);
}

/// A successful `cryo dump -t PID -D IMG EXTRA` in NS (its log dump.log).
fn dump_in(ns: &str, sc: &Scratch, pid: i32, extra: &[&str]) {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", s(&sc.img)];
    args.extend_from_slice(extra);
    cryo_in(ns, &args, &sc.path("dump.log"));
}

/// A successful `cryo restore -D IMG -d --pidfile PIDFILE EXTRA` in NS (its
/// log LOG, both in the scratch directory); the restored pid.
fn restore_in(ns: &str, sc: &Scratch, pidfile: &str, log: &str, extra: &[&str]) -> i32 {
    let pf = sc.path(pidfile);
    sc.cl.pidfile(&pf);
    let mut args = vec!["restore", "-D", s(&sc.img), "-d", "--pidfile", s(&pf)];
    args.extend_from_slice(extra);
    cryo_in(ns, &args, &sc.path(log));
    cryo_integration::read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"))
}

/// `cryo restore -D IMG -d --pidfile pidfile-bad` in NS under the reaper,
/// for a restore that must fail: its output, the pidfile, and the reaper's
/// report of the processes it left behind.
fn failing_restore_in(ns: &str, sc: &Scratch) -> (std::process::Output, std::path::PathBuf, String) {
    let pf = sc.path("pidfile-bad");
    sc.cl.pidfile(&pf);
    let left_file = sc.path("leftover");
    let reaper = bin!("reaper").to_str().expect("path").to_string();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--", &reaper, "--leftover", s(&left_file), "--"])
        .arg(cryo_integration::cryo_bin())
        .args(["restore", "-D", s(&sc.img), "-d", "--pidfile", s(&pf)])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the restore");
    let left = std::fs::read_to_string(&left_file).expect("the reaper's report");
    (out, pf, left)
}

/// The workload W (log wl.log) gets SIGUSR1, passes its check and exits 0.
fn passes_and_exits(sc: &Scratch, mut w: Workload) {
    w.usr1().expect("SIGUSR1");
    let v = wait_for_verdict(&sc.path("wl.log"), LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
    assert_eq!(w.wait_exit(GONE_TIMEOUT).and_then(|s| s.code()), Some(0));
}

/// The restored RPID gets SIGUSR1 and its first verdict in LOG is a PASS.
fn restored_passes(rpid: i32, log: &std::path::Path) {
    cryo_integration::signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    let v = cryo_integration::wait_for_nth_verdict(log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
}

/// The port a tcpstream server announced (`PORT n`) in LOG.
fn announced_port(log: &std::path::Path) -> String {
    let port = cryo_integration::wait_for_line(log, "PORT ", LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    port.trim().trim_start_matches("PORT ").to_string()
}

/// A tcpstream server (network namespace SNS, log SLOG) and its client
/// (CNS, CLOG), given the server and client parts of EXTRA, streaming for a
/// moment: (server, client).
fn stream_pair(
    sns: &str,
    cns: &str,
    extra: (&[&str], &[&str]),
    slog: &std::path::Path,
    clog: &std::path::Path,
) -> (Workload, Workload) {
    let tcpstream = bin!("tcpstream").to_str().expect("path").to_string();
    let nsenter = std::path::Path::new("/usr/bin/nsenter");
    let (snet, cnet) = (format!("--net=/run/netns/{sns}"), format!("--net=/run/netns/{cns}"));
    let mut sargs = vec![snet.as_str(), "--", &tcpstream, "--role", "server"];
    sargs.extend_from_slice(extra.0);
    let sw = Workload::spawn(nsenter, &sargs, slog).expect("server");
    let port = announced_port(slog);
    let mut cargs = vec![cnet.as_str(), "--", &tcpstream, "--role", "client"];
    cargs.extend_from_slice(extra.1);
    cargs.extend_from_slice(&["--port", &port]);
    let cw = Workload::spawn(nsenter, &cargs, clog).expect("client");
    cw.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    sw.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(400));
    (sw, cw)
}

/// The restored server RPID and the client CW, once data flows again:
/// both verdicts judged (see judge_stream).
fn judge_restored_stream(rpid: i32, cw: &Workload, slog: &std::path::Path, clog: &std::path::Path, pause_ms: u64) {
    // Data flows again once both sides retransmit.
    cryo_integration::wait_for_line(clog, "GAP ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(500));
    cryo_integration::signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    cw.usr1().expect("usr1");
    let sv = cryo_integration::wait_for_nth_verdict(slog, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let cv = cryo_integration::wait_for_nth_verdict(clog, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    judge_stream(&sv, &cv, pause_ms, "dump");
}

/// Runs an nft script in network namespace `ns`.
fn nft_in(ns: &str, script: &str) {
    use std::io::Write;
    let mut c = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--", "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the nft script");
    let st = c.wait().expect("wait for nft");
    assert!(st.success(), "nft in {ns} failed ({st}): {script}");
}

/// The server is dumped in one namespace and restored in another that
/// takes over its address; the old namespace is deleted in between. The
/// kernel's teardown of a network namespace releases its nftables hooks
/// (the lock) before it unregisters its interfaces: for a moment the old
/// stack, without filter and without the socket, would answer the client's
/// retransmissions with a reset. cryo's routing rules keep it silent. The
/// test makes that moment long and certain: it flushes the old namespace's
/// nftables ruleset itself and waits until the old stack has tried to reset
/// a retransmission of the client's before it deletes the namespace.
#[test]
fn tcpstream_server_moves_to_another_network_namespace_and_keeps_its_client() {
    cryo_integration::require_root!();
    let sc = Scratch::new("tcpstream-ns");
    let tag = std::process::id();
    let (nc, na, nb) = (
        format!("cryo-c-{tag}"),
        format!("cryo-a-{tag}"),
        format!("cryo-b-{tag}"),
    );
    let mut ns = Netns::new();
    for n in [&nc, &na] {
        ns.add(n);
    }
    // The client's namespace and the server's, linked by a veth.
    Netns::link(&nc, "cryoc0", "10.213.7.1/24", &na, "cryoa0", "10.213.7.2/24");
    let slog = sc.path("wl.log");
    let clog = sc.path("client.log");
    let (mut sw, cw) = stream_pair(
        &na,
        &nc,
        (&["--addr", "10.213.7.2"], &["--addr", "10.213.7.2"]),
        &slog,
        &clog,
    );
    dump_in(&na, &sc, sw.pid, &["--tcp-established"]);
    sw.wait_exit(GONE_TIMEOUT).expect("the original server is killed");
    let rules = Netns::lock_rules(&na);
    assert_eq!(rules.len(), 2, "one routing-lock rule per direction: {rules:?}");
    // The old namespace goes away, its lock tables first (as its teardown
    // does) until its stack has answered the client at least once.
    let rsts = Netns::tcp_counter(&na, "OutRsts");
    nft_in(&na, "flush ruleset\n");
    let t0 = std::time::Instant::now();
    while Netns::tcp_counter(&na, "OutRsts") == rsts {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no retransmission of the client reached the old namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ns.del(&na);
    // A new namespace takes over the server's address.
    ns.add(&nb);
    // Until the server is back, the new host drops the client's
    // retransmissions (a real takeover brings the address up after the
    // restore); a retransmission arriving before `cryo restore` starts
    // would otherwise be answered with a reset.
    nft_in(&nb, "add table inet takeover\nadd chain inet takeover in { type filter hook input priority -300; }\nadd rule inet takeover in ip saddr 10.213.7.1 meta l4proto tcp drop\n");
    Netns::link(&nc, "cryoc1", "10.213.7.1/24", &nb, "cryob0", "10.213.7.2/24");
    let rpid = restore_in(&nb, &sc, "pidfile-1", "restore.log", &[]);
    nft_in(&nb, "delete table inet takeover\n");
    let rns = std::fs::read_link(format!("/proc/{rpid}/ns/net")).expect("restored netns");
    let bns = std::fs::metadata(format!("/run/netns/{nb}")).expect("netns b");
    assert_eq!(
        rns.to_string_lossy(),
        format!("net:[{}]", std::os::unix::fs::MetadataExt::ino(&bns)),
        "the server runs in the new namespace"
    );
    judge_restored_stream(rpid, &cw, &slog, &clog, 100);
}

// ---- 5. netlink sockets ------------------------------------------------------------

#[test]
fn nlsk_plain_passes_and_detects_a_lost_group() {
    expect_plain_pass(bin!("nlsk"), &[]);
    expect_plain_fail(bin!("nlsk"), &["--corrupt"], "R groups");
}

#[test]
fn nlsk_roundtrip() {
    cryo_integration::require_root!();
    let (v, _images, sc) = roundtrip("nlsk", bin!("nlsk"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let n = files_entries(&sc.img, "nlsk").len();
    assert_eq!(n, 2, "netlink sockets in files.img");
}

// ---- 6. ping and raw sockets -------------------------------------------------------

/// A network namespace where every group may open ping sockets.
fn ping_netns(tag: &str) -> (Netns, String) {
    let name = format!("cryo-{tag}-{}", std::process::id());
    let mut ns = Netns::new();
    ns.add(&name);
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{name}"))
        .args([
            "--",
            "sh",
            "-c",
            "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range",
        ])
        .output()
        .expect("nsenter sh");
    assert!(
        out.status.success(),
        "ping_group_range: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (ns, name)
}

fn spawn_in(ns: &str, bin: &std::path::Path, args: &[&str], log: &std::path::Path) -> Workload {
    let mut full = vec![
        format!("--net=/run/netns/{ns}"),
        "--".into(),
        bin.to_str().expect("path").to_string(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let w = Workload::spawn(std::path::Path::new("/usr/bin/nsenter"), &full, log).expect("spawn");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    w
}

#[test]
fn pingsk_plain_passes_and_detects_a_cleared_filter() {
    cryo_integration::require_root!();
    let (_ns, name) = ping_netns("ping-plain");
    for (corrupt, what) in [(false, None), (true, Some("R ICMP_FILTER is 0x0"))] {
        let d = cryo_integration::TempDir::new("pingsk-plain");
        let log = d.join("log");
        let args: &[&str] = if corrupt { &["--corrupt"] } else { &[] };
        let mut w = spawn_in(&name, bin!("pingsk"), args, &log);
        w.usr1().expect("usr1");
        let v = wait_for_verdict(&log, LINE_TIMEOUT);
        match what {
            None => assert!(v.unwrap_or_else(|e| panic!("{e}")).starts_with("PASS")),
            Some(w) => assert!(v.expect_err("must FAIL").contains(w)),
        }
        w.wait_exit(GONE_TIMEOUT);
    }
}

#[test]
fn pingsk_roundtrip() {
    cryo_integration::require_root!();
    let (_ns, name) = ping_netns("ping");
    let sc = Scratch::new("pingsk");
    let log = sc.path("wl.log");
    let mut w = spawn_in(&name, bin!("pingsk"), &[], &log);
    dump_in(&name, &sc, w.pid, &[]);
    w.wait_exit(GONE_TIMEOUT).expect("the original is killed");
    crit_decodes_all(&sc.img);
    let rpid = restore_in(&name, &sc, "pidfile-1", "restore.log", &[]);
    restored_passes(rpid, &log);
}

// ---- 7. packet sockets -------------------------------------------------------------

#[test]
fn pktsk_plain_passes_and_detects_a_changed_option() {
    cryo_integration::require_root!();
    expect_plain_pass(bin!("pktsk"), &[]);
    expect_plain_fail(bin!("pktsk"), &["--corrupt"], "P PACKET_AUXDATA is 0");
}

#[test]
fn pktsk_roundtrip() {
    cryo_integration::require_root!();
    let (v, _images, sc) = roundtrip("pktsk", bin!("pktsk"), &[]);
    assert!(v.starts_with("PASS"), "{v}");
    let n = files_entries(&sc.img, "psk").len();
    assert_eq!(n, 2, "packet sockets in files.img");
}

#[test]
fn missing_interface_at_restore_fails_cleanly() {
    cryo_integration::require_root!();
    let tag = format!("pkt-{}", std::process::id());
    let mut ns = Netns::new();
    ns.add(&tag);
    Netns::ip(&[
        "-n",
        &tag,
        "link",
        "add",
        "cryoveth0",
        "type",
        "veth",
        "peer",
        "name",
        "cryoveth1",
    ]);
    Netns::ip(&["-n", &tag, "link", "set", "cryoveth0", "up"]);
    let sc = Scratch::new("pkt-missing");
    let mut w = spawn_in(&tag, bin!("pktsk"), &["--dev", "cryoveth0"], &sc.path("wl.log"));
    dump_in(&tag, &sc, w.pid, &[]);
    w.wait_exit(GONE_TIMEOUT).expect("the original is killed");
    Netns::ip(&["-n", &tag, "link", "del", "cryoveth0"]);
    let (out, pf, leftover) = failing_restore_in(&tag, &sc);
    let err = one_line_error(&out, "restore without the interface");
    assert!(
        err.contains("packet socket") && err.contains("interface cryoveth0 does not exist"),
        "the error should name the socket and the interface: {err}"
    );
    assert!(!pf.exists(), "a failed restore wrote the pidfile");
    assert!(
        leftover.trim().is_empty(),
        "the failed restore left processes behind: {leftover}"
    );
}

// ---- 8. the CRIU dialect ------------------------------------------------------------

/// `criu dump --tcp-established` / `criu restore -d` (the binary under the
/// name criu) carry the connections like the native CLI.
#[test]
fn criu_dialect_tcp_established_roundtrip() {
    cryo_integration::require_root!();
    let t = TestNet::new("i");
    let sc = Scratch::new("tcpconn-criu");
    let link = sc.path("criu");
    std::os::unix::fs::symlink(cryo_integration::cryo_bin(), &link).expect("symlink criu");
    let mut w = t.spawn(&sc, bin!("tcpconn"), &[]);
    let pid = w.pid.to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .arg(t.net_arg())
            .arg("--")
            .arg(&link)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run criu");
        assert!(
            out.status.success(),
            "criu {}: {}",
            args[0],
            cryo_integration::describe(&out)
        );
    };
    run(&[
        "dump",
        "-t",
        &pid,
        "-D",
        s(&sc.img),
        "--tcp-established",
        "-o",
        "dump.log",
        "-v4",
    ]);
    w.wait_exit(GONE_TIMEOUT).expect("the original is killed");
    let pf = sc.path("pidfile-1");
    sc.cl.pidfile(&pf);
    run(&[
        "restore",
        "-D",
        s(&sc.img),
        "-d",
        "--pidfile",
        s(&pf),
        "-o",
        "restore.log",
        "-v4",
    ]);
    let rpid = cryo_integration::read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"));
    restored_passes(rpid, &sc.path("wl.log"));
    assert!(t.lock_tables().is_empty(), "{:?}", t.lock_tables());
}

// ---- 9. a network namespace owned by the tree ----------------------------------------

/// Namespaces H (outside) and A (the tree's), a veth between them
/// (10.213.8.1 in H, 10.213.8.2 in A, MTU 1400), a route, sysctls and an
/// nftables table in A, and a listener in H that sends bytes to whoever
/// connects. Returns the namespaces, their names, the listener and "IP:PORT".
fn tree_netns(tag: &str, sc: &Scratch) -> (Netns, String, String, Workload, String) {
    let (h, a) = (
        format!("cryo-h{tag}-{}", std::process::id()),
        format!("cryo-n{tag}-{}", std::process::id()),
    );
    let mut ns = Netns::new();
    ns.add(&h);
    ns.add(&a);
    Netns::link(&h, "cryoh0", "10.213.8.1/24", &a, "cryon0", "10.213.8.2/24");
    Netns::ip(&["-n", &h, "link", "set", "cryoh0", "mtu", "1400"]);
    Netns::ip(&["-n", &a, "link", "set", "cryon0", "mtu", "1400"]);
    Netns::ip(&["-n", &a, "route", "add", "10.213.99.0/24", "via", "10.213.8.1"]);
    let sh = |script: &str| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{a}"))
            .args(["--", "sh", "-c", script])
            .output()
            .expect("nsenter sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("echo 1 > /proc/sys/net/ipv4/ip_forward && echo 2 > /proc/sys/net/ipv4/conf/all/rp_filter");
    sh("nft add table inet cryotest && nft add chain inet cryotest c '{ type filter hook input priority 0; policy accept; }' && nft add rule inet cryotest c tcp dport 4444 drop");
    let slog = sc.path("peer.log");
    let tcpstream = bin!("tcpstream").to_str().expect("path").to_string();
    let net = format!("--net=/run/netns/{h}");
    let peer = Workload::spawn(
        std::path::Path::new("/usr/bin/nsenter"),
        &[&net, "--", &tcpstream, "--role", "server", "--addr", "10.213.8.1"],
        &slog,
    )
    .expect("peer");
    let port = announced_port(&slog);
    (ns, h, a, peer, format!("10.213.8.1:{port}"))
}

#[test]
fn netnsck_plain_passes_and_detects_a_changed_sysctl() {
    cryo_integration::require_root!();
    for corrupt in [false, true] {
        let sc = Scratch::new("netnsck-plain");
        let (_ns, _h, a, _peer, addr) = tree_netns("p", &sc);
        let log = sc.path("wl.log");
        let mut args = vec!["--peer", addr.as_str()];
        if corrupt {
            args.push("--corrupt");
        }
        let mut w = spawn_in(&a, bin!("netnsck"), &args, &log);
        w.usr1().expect("usr1");
        let v = wait_for_verdict(&log, LINE_TIMEOUT);
        if corrupt {
            assert!(v.expect_err("must FAIL").contains("net/ipv4/conf/all/rp_filter"));
        } else {
            v.unwrap_or_else(|e| panic!("{e}"));
        }
        w.wait_exit(GONE_TIMEOUT);
    }
}

#[test]
fn tree_network_namespace_is_rebuilt_in_a_fresh_one() {
    cryo_integration::require_root!();
    let sc = Scratch::new("netnsck");
    let (mut ns, h, a, _peer, addr) = tree_netns("r", &sc);
    let log = sc.path("wl.log");
    let mut w = spawn_in(&a, bin!("netnsck"), &["--peer", &addr], &log);
    // cryo runs outside the tree's namespace.
    dump(&sc, w.pid, &[]);
    w.wait_exit(GONE_TIMEOUT).expect("the original is killed");
    assert!(sc.img.join("cryo-netns.json").exists(), "no namespace image");
    crit_decodes_all(&sc.img);
    ns.del(&a);
    // Without the veth mapping the restore refuses, naming the veth.
    let out = run_cryo(&["restore", "-D", s(&sc.img), "-d"]);
    let err = one_line_error(&out, "restore without --veth-pair");
    assert!(err.contains("--veth-pair cryon0="), "{err}");
    // The caller's namespace is H: the veth's other end appears there.
    let rpid = restore_in(&h, &sc, "pidfile-1", "restore.log", &["--veth-pair", "cryon0=cryoh1"]);
    Netns::ip(&["-n", &h, "addr", "add", "10.213.8.1/24", "dev", "cryoh1"]);
    restored_passes(rpid, &log);
}
