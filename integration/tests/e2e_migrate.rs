//! Migration between two test "hosts" (network namespaces joined by a
//! veth pair): `cryo page-server` in one, `cryo migrate` / `cryo dump
//! --page-server` / the tar stream from the other. Each workload checks
//! its own memory afterwards, on the one host where it still runs; each
//! fault leaves it running on exactly one host with a clear error.

use cryo_integration::e2e::{Scratch, GONE_TIMEOUT};
use cryo_integration::hosts::{commit_cutting_proxy, pid_net_ino, Hosts, ADDR_B};
use cryo_integration::{
    bin, cryo_bin, describe, log_tail, pid_running, pid_state, read_pidfile, require_root, s, wait_for_line,
    wait_for_nth_verdict, wait_for_verdict, wait_pid_exited, Captured, Workload, LINE_TIMEOUT,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(120);

/// A `cryo page-server` running in host B.
struct Server {
    child: Child,
    pid: i32,
    port: u16,
    dir: PathBuf,
    pidfile: PathBuf,
    out: PathBuf,
    err: PathBuf,
}

impl Server {
    fn start(h: &Hosts, sc: &Scratch, tag: &str) -> Server {
        Server::start_at(h, sc, tag, 0)
    }

    fn start_at(h: &Hosts, sc: &Scratch, tag: &str, port: u16) -> Server {
        Server::start_env(h, sc, tag, port, &[])
    }

    /// A page server on PORT (0: any) with ENV added to its environment.
    fn start_env(h: &Hosts, sc: &Scratch, tag: &str, port: u16, env: &[(&str, &str)]) -> Server {
        let dir = sc.path(&format!("dst-{tag}"));
        let pidfile = sc.path(&format!("pidfile-{tag}"));
        let out = sc.path(&format!("ps-{tag}.out"));
        let err = sc.path(&format!("ps-{tag}.err"));
        let log = sc.path(&format!("ps-{tag}.log"));
        sc.cl.pidfile(&pidfile);
        let port_s = port.to_string();
        let child = Hosts::cmd(
            &h.b,
            &cryo_bin(),
            &[
                "page-server",
                "--port",
                &port_s,
                "--address",
                ADDR_B,
                "-D",
                s(&dir),
                "--pidfile",
                s(&pidfile),
                "-o",
                s(&log),
                "-v4",
            ],
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn page-server");
        let pid = child.id() as i32;
        sc.cl.pid(pid);
        let mut srv = Server {
            child,
            pid,
            port: 0,
            dir,
            pidfile,
            out,
            err,
        };
        if port == 0 {
            let line = wait_for_line(&srv.out, "cryo page-server: listening on ", LINE_TIMEOUT)
                .unwrap_or_else(|e| panic!("page-server did not start: {e}; stderr: {}", srv.stderr()));
            srv.port = line.trim().rsplit(':').next().unwrap().parse().expect("port");
        }
        srv
    }

    fn to(&self) -> String {
        format!("{ADDR_B}:{}", self.port)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the server to exit.
    fn finish(mut self) -> Finished {
        let end = Instant::now() + STEP;
        let st = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            assert!(Instant::now() < end, "page-server pid {} did not finish", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        };
        Finished {
            ok: st.success(),
            out: std::fs::read_to_string(&self.out).unwrap_or_default(),
            err: self.stderr(),
            dir: self.dir.clone(),
            pidfile: self.pidfile.clone(),
        }
    }

    /// Waits for the server to exit and asserts it succeeded.
    fn finish_ok(self) -> Finished {
        let f = self.finish();
        assert!(f.ok, "page-server: {}\n{}", f.out, f.err);
        f
    }
}

/// A page server that exited: its status, output, and where it wrote.
struct Finished {
    ok: bool,
    out: String,
    err: String,
    dir: PathBuf,
    pidfile: PathBuf,
}

/// Runs `cryo args...` in the network namespace NS.
fn cryo_in(ns: &str, args: &[&str]) -> Output {
    let cryo = cryo_bin();
    let enter = Hosts::enter(ns);
    let mut full = vec![enter[0].as_str(), enter[1].as_str(), s(&cryo)];
    full.extend_from_slice(args);
    Captured::spawn(Path::new("nsenter"), &full, Stdio::null(), None).finish(STEP)
}

/// A dirtier workload in host A (memory rewritten while it migrates).
fn dirtier(h: &Hosts, sc: &Scratch, mib: u32) -> Workload {
    let log = sc.path("w.log");
    let mib = mib.to_string();
    let enter = Hosts::enter(&h.a);
    let w = Workload::spawn(
        Path::new("nsenter"),
        &[
            &enter[0],
            &enter[1],
            s(bin!("dirtier")),
            "--mib",
            &mib,
            "--hot-mib",
            "4",
            "--hot-ms",
            "200",
            // Pages thrown away after a pre-copy round sent them must come
            // back as zeros.
            "--discard-every",
            "5",
        ],
        &log,
    )
    .expect("spawn dirtier");
    sc.cl.pid(w.pid);
    w.wait_ready().unwrap_or_else(|e| panic!("dirtier: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    w
}

fn hosts() -> Hosts {
    Hosts::new().unwrap_or_else(|e| panic!("cannot create the test hosts: {e}"))
}

/// The two hosts, a scratch directory TAG, a dirtier of MIB MiB in host A
/// and a page server in host B.
fn setup(tag: &str, mib: u32) -> (Hosts, Scratch, Workload, Server) {
    let h = hosts();
    let sc = Scratch::new(tag);
    let w = dirtier(&h, &sc, mib);
    let srv = Server::start(&h, &sc, "1");
    (h, sc, w, srv)
}

/// `cryo ARGS --pidfile PIDFILE` in host B, asserted to succeed (a failure
/// names WHAT); its output and the restored pid.
fn restore_on_b(h: &Hosts, sc: &Scratch, pidfile: &str, args: &[&str], what: &str) -> (Output, i32) {
    let pf = sc.path(pidfile);
    sc.cl.pidfile(&pf);
    let mut full = args.to_vec();
    full.extend_from_slice(&["--pidfile", s(&pf)]);
    let out = cryo_in(&h.b, &full);
    assert!(out.status.success(), "{what}: {}", describe(&out));
    (out, read_pidfile(&pf).unwrap())
}

/// The workload restored on B: in B's network namespace, passes its check.
fn verify_on_b(h: &Hosts, srv_pidfile: &Path, w: &mut Workload, what: &str) {
    let st = w
        .wait_exit(GONE_TIMEOUT)
        .unwrap_or_else(|| panic!("[{what}] the source pid {} still runs after the migration", w.pid));
    assert!(st.code().is_none(), "[{what}] source should have been killed: {st:?}");
    let rpid = read_pidfile(srv_pidfile).unwrap_or_else(|e| panic!("[{what}] {e}"));
    assert!(pid_running(rpid), "[{what}] restored pid {rpid} does not run");
    assert_eq!(
        pid_net_ino(rpid),
        Hosts::net_ino(&h.b),
        "[{what}] restored pid {rpid} is not in host B's network namespace"
    );
    cryo_integration::signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&w.log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("[{what}] {e}"));
    assert!(
        v.starts_with("PASS"),
        "[{what}] restored workload: {v}\n{}",
        log_tail(&w.log, 5)
    );
    assert!(wait_pid_exited(rpid, GONE_TIMEOUT));
}

/// The workload still runs on A (not stopped), nothing restored on B, and
/// it passes its check.
fn verify_still_on_a(srv_pidfile: &Path, w: &mut Workload, what: &str) {
    assert!(pid_running(w.pid), "[{what}] the source pid {} is gone", w.pid);
    std::thread::sleep(Duration::from_millis(200));
    let st = pid_state(w.pid);
    assert!(
        matches!(st, Some('S') | Some('R')),
        "[{what}] source pid {} is in state {st:?}, not running",
        w.pid
    );
    assert!(
        read_pidfile(srv_pidfile).is_err(),
        "[{what}] something was restored on B (pidfile written)"
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", w.pid))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !fds.iter().any(|f| f.contains("userfaultfd")),
        "[{what}] the source kept a userfaultfd: {fds:?}"
    );
    w.usr1().unwrap();
    let v = wait_for_verdict(&w.log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("[{what}] {e}"));
    assert!(v.starts_with("PASS"), "[{what}] source workload: {v}");
}

/// Nothing that looks like an image set is left on B.
fn assert_dst_clean(dir: &Path, what: &str) {
    assert!(
        !dir.join("inventory.img").exists(),
        "[{what}] {} holds an image set after a failed transfer",
        dir.display()
    );
}

fn migrate_args<'a>(pid: &'a str, to: &'a str, log: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["migrate", "-t", pid, "--to", to, "-o", log, "-v4"];
    a.extend_from_slice(extra);
    a
}

/// `cryo migrate` of W from host A to SRV (with EXTRA), asserted to succeed.
fn migrate_ok(h: &Hosts, sc: &Scratch, w: &Workload, srv: &Server, extra: &[&str]) -> Output {
    let (pid, to, log) = (w.pid.to_string(), srv.to(), sc.path("migrate.log"));
    let out = cryo_in(&h.a, &migrate_args(&pid, &to, s(&log), extra));
    assert!(
        out.status.success(),
        "migrate: {}\n{}",
        describe(&out),
        log_tail(&log, 20)
    );
    out
}

/// `cryo migrate` (ARGS) spawned in host A, silent, its pid under cleanup.
fn spawn_migrate(h: &Hosts, sc: &Scratch, args: &[&str]) -> Child {
    let mig = Hosts::cmd(&h.a, &cryo_bin(), args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sc.cl.pid(mig.id() as i32);
    mig
}

/// The number that starts the text after the first MARKER in S (0 if none).
fn number_after(s: &str, marker: &str) -> u64 {
    s.split(marker)
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Wakes the restored RPID and waits for the Nth verdict in LOG, a PASS;
/// a failure names WHAT.
fn usr1_expect_pass(rpid: i32, log: &Path, nth: usize, what: &str) {
    cryo_integration::signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(log, nth, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{what}{e}"));
    assert!(v.starts_with("PASS"), "{what}{v}");
}

#[test]
fn migrate_precopy_between_hosts() {
    require_root!();
    let (h, sc, mut w, srv) = setup("mig-pre", 64);
    let out = migrate_ok(&h, &sc, &w, &srv, &[]);
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(so.contains("pages from the rounds"), "{so}");
    // The final dump took most pages from the pre-copy rounds.
    let parent: u64 = so
        .split(", ")
        .find(|p| p.ends_with("pages from the rounds"))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(parent > 8000, "pre-copy should carry most of 64 MiB: {so}");
    let Finished {
        pidfile: pf,
        dir,
        out: sout,
        ..
    } = srv.finish_ok();
    assert!(dir.join("pre-1").is_dir() && dir.join("parent").exists());
    // The pre-copied memory was in the page server's memory already: the
    // restore moved it in instead of reading it while the tree was stopped.
    let held = number_after(&sout, "pre-copied memory moved in: ");
    assert!(held >= 32, "most of 64 MiB should be moved in (MiB): {sout}");
    verify_on_b(&h, &pf, &mut w, "pre-copy");
    // The received images (with their pre-copy chain) restore again, with
    // the parent pages served lazily by `cryo restore --lazy-pages`.
    let (out, rpid) = restore_on_b(
        &h,
        &sc,
        "pidfile-lazy",
        &["restore", "-D", s(&dir), "--lazy-pages"],
        "restore --lazy-pages",
    );
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(so.contains("lazy pages:"), "{so}");
    usr1_expect_pass(rpid, &w.log, 2, "[lazy restore] ");
}

#[test]
fn migrate_lazy_pages_between_hosts() {
    require_root!();
    let (h, sc, mut w, srv) = setup("mig-lazy", 64);
    migrate_ok(&h, &sc, &w, &srv, &["--lazy-pages"]);
    let Finished {
        pidfile: pf, out: sout, ..
    } = srv.finish_ok();
    // The page server copied the pre-copied memory after the tree ran.
    let kib = number_after(&sout, "lazy pages: ");
    assert!(kib > 32 << 10, "lazy pages should carry most of 64 MiB: {sout}");
    verify_on_b(&h, &pf, &mut w, "lazy pages");
}

#[test]
fn migrate_without_precopy_between_hosts() {
    require_root!();
    let (h, sc, mut w, srv) = setup("mig-full", 32);
    migrate_ok(&h, &sc, &w, &srv, &["--no-pre-copy"]);
    let pf = srv.finish_ok().pidfile;
    verify_on_b(&h, &pf, &mut w, "no pre-copy");
}

#[test]
fn dump_to_page_server_then_restore_on_b() {
    require_root!();
    let (h, sc, mut w, srv) = setup("mig-ps", 16);
    let (pid, to) = (w.pid.to_string(), srv.to());
    let out = cryo_in(&h.a, &["dump", "-t", &pid, "--page-server", &to]);
    assert!(out.status.success(), "dump --page-server: {}", describe(&out));
    let Finished {
        ok,
        out: sout,
        err: serr,
        dir,
        ..
    } = srv.finish();
    assert!(ok && sout.contains("images received"), "page-server: {sout}\n{serr}");
    assert!(dir.join("inventory.img").exists() && !dir.join(".incoming").exists());
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "source still runs");
    let (_, rpid) = restore_on_b(
        &h,
        &sc,
        "pidfile-restore",
        &["restore", "-D", s(&dir), "-d"],
        "restore on B",
    );
    assert_eq!(pid_net_ino(rpid), Hosts::net_ino(&h.b));
    usr1_expect_pass(rpid, &w.log, 1, "");
}

#[test]
fn tar_stream_between_hosts() {
    require_root!();
    let h = hosts();
    let sc = Scratch::new("mig-tar");
    let mut w = dirtier(&h, &sc, 16);
    let pid = w.pid.to_string();
    let pf = sc.path("pidfile-tar");
    sc.cl.pidfile(&pf);
    let cryo = cryo_bin();
    let mut dump = Hosts::cmd(&h.a, &cryo, &["dump", "-t", &pid, "--tar", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = dump.stdout.take().unwrap();
    let restore = Hosts::cmd(&h.b, &cryo, &["restore", "--tar", "-", "-d", "--pidfile", s(&pf)])
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success(), "dump --tar -");
    assert!(restore.status.success(), "restore --tar -: {}", describe(&restore));
    verify_on_b(&h, &pf, &mut w, "tar stream");
}

#[test]
fn port_in_use_and_nobody_listening() {
    require_root!();
    let h = hosts();
    let sc = Scratch::new("mig-port");
    let mut w = dirtier(&h, &sc, 8);
    let first = Server::start(&h, &sc, "1");
    let second = Server::start_at(&h, &sc, "2", first.port);
    let Finished { ok, err, dir: dir2, .. } = second.finish();
    assert!(!ok, "a second page-server on port {} started", first.port);
    let err = err.trim();
    assert!(
        !err.contains('\n') && err.contains("Cannot listen on") && err.contains("in use"),
        "error: {err}"
    );
    assert_dst_clean(&dir2, "port in use");
    // Nobody on the port: the migration fails before anything is frozen.
    let dead = format!("{ADDR_B}:{}", first.port.wrapping_add(1).max(1));
    let pid = w.pid.to_string();
    let out = cryo_in(&h.a, &["migrate", "-t", &pid, "--to", &dead]);
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success() && e.contains("Cannot connect") && !e.contains('\n'),
        "{e}"
    );
    let pf = first.pidfile.clone();
    drop(first);
    verify_still_on_a(&pf, &mut w, "nobody listening");
}

/// Waits until the page server has received `bytes` of the pages file
/// `name` (`pre-1/pages-1.img`: the first round; `pages-1.img`: the
/// frozen dump).
fn wait_receiving(dir: &Path, name: &str, bytes: u64) {
    let f = dir.join(".incoming").join(name);
    let end = Instant::now() + STEP;
    while std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0) < bytes {
        assert!(Instant::now() < end, "the transfer never started");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn destination_dies_mid_transfer() {
    require_root!();
    // During pre-copy, and after the freeze (no pre-copy).
    destination_dies(&[], "pre-1/pages-1.img");
    destination_dies(&["--no-pre-copy"], "pages-1.img");
}

fn destination_dies(extra: &[&str], file: &str) {
    let (h, sc, mut w, srv) = setup("mig-dstdie", 256);
    let (pid, to, log) = (w.pid.to_string(), srv.to(), sc.path("migrate.log"));
    let args: Vec<String> = migrate_args(&pid, &to, s(&log), extra)
        .into_iter()
        .map(String::from)
        .collect();
    let ns = h.a.clone();
    let mig = std::thread::spawn(move || cryo_in(&ns, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_receiving(&srv.dir, file, 4 << 20);
    cryo_integration::kill_pid(srv.pid);
    let out = mig.join().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "migrate succeeded without a destination");
    assert!(!e.contains('\n') && e.contains("Lost the page server"), "{e}");
    assert_dst_clean(&srv.dir, "destination died");
    verify_still_on_a(&srv.pidfile, &mut w, "destination died");
}

#[test]
fn source_cryo_killed_mid_way() {
    require_root!();
    let (h, sc, mut w, srv) = setup("mig-srcdie", 256);
    let (pid, to) = (w.pid.to_string(), srv.to());
    let mut mig = spawn_migrate(&h, &sc, &["migrate", "-t", &pid, "--to", &to]);
    wait_receiving(&srv.dir, "pre-1/pages-1.img", 4 << 20);
    cryo_integration::kill_pid(mig.id() as i32);
    let _ = mig.wait();
    let Finished {
        ok,
        err,
        dir,
        pidfile: pf,
        ..
    } = srv.finish();
    assert!(!ok, "page-server succeeded without its sender");
    assert!(err.trim().contains("connection closed by the peer"), "{err}");
    assert!(!dir.join(".incoming").exists(), "partial images left on B");
    assert_dst_clean(&dir, "source killed");
    verify_still_on_a(&pf, &mut w, "source cryo killed");
}

/// Sends `bytes` to the page server from a thread inside host B; returns
/// what the server answered.
fn send_raw(h: &Hosts, to: String, bytes: Vec<u8>) -> Vec<u8> {
    Hosts::in_ns(&h.b, move || {
        let mut s = std::net::TcpStream::connect(&to).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        back
    })
    .join()
    .unwrap()
}

/// One frame of the migration stream (wire.rs: magic, kind, length,
/// payload crc, header crc), built here independently of cryo's code.
fn frame(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"CRYM");
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32(payload).to_le_bytes());
    let hc = crc32(&h);
    h.extend_from_slice(&hc.to_le_bytes());
    h.extend_from_slice(payload);
    h
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn page_server_refuses_garbage_and_unknown_pids() {
    require_root!();
    let h = hosts();
    let sc = Scratch::new("mig-garbage");
    // Garbage.
    let srv = Server::start(&h, &sc, "1");
    send_raw(&h, srv.to(), b"GET / HTTP/1.1\r\nHost: cryo\r\n\r\n".to_vec());
    let Finished { ok, err, dir, .. } = srv.finish();
    let err = err.trim();
    assert!(
        !ok && !err.contains('\n') && err.contains("not a cryo migration stream"),
        "{err}"
    );
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "garbage left files");
    // A valid stream announcing pid 4242, then pages of pid 999.
    let srv = Server::start(&h, &sc, "2");
    let mut hello = 1u32.to_le_bytes().to_vec();
    hello.extend_from_slice(&1u32.to_le_bytes());
    hello.extend_from_slice(&4242u32.to_le_bytes());
    let mut st = frame(1, &hello);
    let mut fb = 4096u64.to_le_bytes().to_vec();
    fb.extend_from_slice(b"pre-1/pagemap-999.img");
    st.extend(frame(2, &fb));
    let back = send_raw(&h, srv.to(), st);
    let Finished { ok, err, dir, .. } = srv.finish();
    assert!(!ok && err.contains("pages for unknown process 999"), "{err}");
    assert!(
        String::from_utf8_lossy(&back).contains("unknown process 999"),
        "the sender is told why"
    );
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "left files");
}

/// A proxy in host B between the sender and the page server that flips
/// one byte after `after` bytes.
fn corrupting_proxy(h: &Hosts, to: String, after: usize) -> (u16, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let j = Hosts::in_ns(&h.b, move || {
        let l = std::net::TcpListener::bind(format!("{ADDR_B}:0")).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        let mut b = std::net::TcpStream::connect(&to).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
            let _ = a2.shutdown(std::net::Shutdown::Both);
        });
        let mut buf = vec![0u8; 64 << 10];
        let mut n_total = 0usize;
        loop {
            let n = match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if n_total <= after && after < n_total + n {
                buf[after - n_total] ^= 0x01;
            }
            n_total += n;
            if b.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = b.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
    });
    (rx.recv().unwrap(), j)
}

#[test]
fn corrupted_stream_resumes_the_source() {
    require_root!();
    // In the first pre-copy round, and after the freeze (no pre-copy).
    corrupted(&[]);
    corrupted(&["--no-pre-copy"]);
}

fn corrupted(extra: &[&str]) {
    let (h, sc, mut w, srv) = setup("mig-corrupt", 16);
    let (port, proxy) = corrupting_proxy(&h, srv.to(), 5 << 20);
    let (pid, log) = (w.pid.to_string(), sc.path("migrate.log"));
    let to = format!("{ADDR_B}:{port}");
    let out = cryo_in(&h.a, &migrate_args(&pid, &to, s(&log), extra));
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "migrate through a corrupting link succeeded");
    assert!(
        !e.contains('\n') && (e.contains("corrupted") || e.contains("checksum")),
        "{e}"
    );
    let Finished {
        ok,
        err,
        dir,
        pidfile: pf,
        ..
    } = srv.finish();
    assert!(!ok && (err.contains("corrupted") || err.contains("checksum")), "{err}");
    let _ = proxy.join();
    assert_dst_clean(&dir, "corrupted");
    assert!(!dir.join(".incoming").exists());
    verify_still_on_a(&pf, &mut w, "corrupted stream");
}

/// The dirtier's check is not vacuous: left alone it passes, with one
/// byte of a cold page flipped it fails.
#[test]
fn dirtier_check_passes_and_fails() {
    for (corrupt, want) in [
        ("", "PASS"),
        ("--corrupt-after-ready", "FAIL page"),
        ("--corrupt-discarded", "discarded, but word"),
    ] {
        let sc = Scratch::new("dirtier-self");
        let log = sc.path(&format!("w-{}.log", corrupt.len()));
        let mut args = vec![
            "--mib",
            "8",
            "--hot-mib",
            "2",
            "--hot-ms",
            "100",
            "--discard-every",
            "2",
        ];
        if !corrupt.is_empty() {
            args.push(corrupt);
        }
        let w = Workload::spawn(bin!("dirtier"), &args, &log).expect("spawn dirtier");
        sc.cl.pid(w.pid);
        w.wait_ready().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        w.usr1().unwrap();
        // A FAIL verdict comes back as Err naming the bad page.
        let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| e);
        assert!(v.contains(want), "corrupt={corrupt}: {v}");
        if corrupt.is_empty() {
            assert!(number_after(&v, "discarded=") >= 8, "nothing was discarded: {v}");
        }
        assert!(
            wait_for_line(&log, "TS ", LINE_TIMEOUT).is_ok(),
            "no timestamps in the log"
        );
    }
}

fn uffd_fds(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().contains("userfaultfd"))
                        .unwrap_or(false)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `cryo pre-dump` twice (the second copies only what was written since
/// the first), then `cryo dump --prev-images-dir`, then restore through
/// the parent chain: the restored workload checks every page.
#[test]
fn pre_dump_chain_then_dump_and_restore() {
    require_root!();
    let sc = Scratch::new("predump");
    let log = sc.path("w.log");
    let mut w = Workload::spawn(
        bin!("dirtier"),
        &["--mib", "32", "--hot-mib", "4", "--hot-ms", "200"],
        &log,
    )
    .expect("spawn dirtier");
    sc.cl.pid(w.pid);
    w.wait_ready().unwrap();
    let pid = w.pid.to_string();
    let (d1, d2, d3) = (sc.path("d1"), sc.path("d2"), sc.path("d3"));
    let out = cryo_integration::run_cryo(&["pre-dump", "-t", &pid, "-D", s(&d1), "--track-mem"]);
    assert!(out.status.success(), "pre-dump 1: {}", describe(&out));
    // The tracking stays in the task between pre-dumps, out of its way.
    let kept = uffd_fds(w.pid);
    assert!(
        kept.len() == 1 && kept[0].parse::<i32>().unwrap() >= 512,
        "kept uffd: {kept:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = cryo_integration::run_cryo(&["pre-dump", "-t", &pid, "-D", s(&d2), "--prev-images-dir", "../d1"]);
    assert!(out.status.success(), "pre-dump 2: {}", describe(&out));
    let size = |d: &Path| std::fs::metadata(d.join("pages-1.img")).map(|m| m.len()).unwrap_or(0);
    assert!(size(&d1) >= 32 << 20, "first pre-dump copies everything");
    assert!(
        size(&d2) < 16 << 20,
        "second pre-dump copies only what was written since: {}",
        size(&d2)
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = cryo_integration::run_cryo(&["dump", "-t", &pid, "-D", s(&d3), "--prev-images-dir", "../d2"]);
    assert!(out.status.success(), "dump: {}", describe(&out));
    assert!(size(&d3) < 16 << 20, "final dump copies the rest only: {}", size(&d3));
    assert_eq!(std::fs::read_link(d3.join("parent")).unwrap(), Path::new("../d2"));
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "the dump did not end the source");
    let pf = sc.path("pidfile");
    sc.cl.pidfile(&pf);
    let out = cryo_integration::run_cryo(&["restore", "-D", s(&d3), "-d", "--pidfile", s(&pf)]);
    assert!(out.status.success(), "restore: {}", describe(&out));
    let rpid = read_pidfile(&pf).unwrap();
    assert!(uffd_fds(rpid).is_empty(), "the restored task has a userfaultfd");
    usr1_expect_pass(rpid, &log, 1, "");
}

/// Post-copy from the source: no pre-copy; the destination restores the
/// tree with none of its anonymous memory and fetches every page from
/// the (frozen) source on first touch or in the background.
#[test]
fn migrate_post_copy_between_hosts() {
    require_root!();
    let (h, sc, mut w, srv) = setup("mig-post", 64);
    let out = migrate_ok(&h, &sc, &w, &srv, &["--lazy-pages", "--no-pre-copy"]);
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    let kib = number_after(&so, "post-copy ");
    assert!(
        kib > 60 << 10,
        "the destination should fetch the 64 MiB after the restore: {so}"
    );
    let Finished { pidfile: pf, dir, .. } = srv.finish_ok();
    let pages: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(pages < 8 << 20, "post-copy images should hold almost no pages: {pages}");
    verify_on_b(&h, &pf, &mut w, "post-copy");
}

/// The source cryo dies while the destination is still fetching pages:
/// the destination kills its incomplete copy, the source (no longer
/// traced) runs on, and its memory checks out.
#[test]
fn source_cryo_killed_during_post_copy() {
    require_root!();
    let (h, sc, w, srv) = setup("mig-postdie", 256);
    let (pid, to) = (w.pid.to_string(), srv.to());
    let mut mig = spawn_migrate(
        &h,
        &sc,
        &["migrate", "-t", &pid, "--to", &to, "--lazy-pages", "--no-pre-copy"],
    );
    wait_for_line(&srv.out, "cryo page-server: restored, pid", STEP)
        .unwrap_or_else(|e| panic!("no restore on B: {e}; {}", srv.stderr()));
    let rpid = read_pidfile(&srv.pidfile).unwrap();
    cryo_integration::kill_pid(mig.id() as i32);
    let _ = mig.wait();
    // The killed cryo could not remove its staging directory (the next
    // migrate would): remove it, by its pid.
    for i in 0..4 {
        let _ = std::fs::remove_dir_all(format!("/dev/shm/cryo-migrate-{}-{i}", mig.id()));
    }
    let Finished { ok, err, .. } = srv.finish();
    assert!(!ok && err.contains("Post-copy failed"), "page-server: {err}");
    assert!(
        wait_pid_exited(rpid, GONE_TIMEOUT) || !pid_running(rpid),
        "the incomplete copy {rpid} on B still runs"
    );
    assert!(pid_running(w.pid), "the source is gone");
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(pid_state(w.pid), Some('S') | Some('R')), "source not running");
    w.usr1().unwrap();
    let v = wait_for_verdict(&w.log, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
}

/// The source is stopped (group stop), neither running nor killed.
fn assert_held_stopped(w: &Workload, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    assert!(pid_running(w.pid), "[{what}] the source pid {} is gone", w.pid);
    assert_eq!(
        pid_state(w.pid),
        Some('T'),
        "[{what}] the source pid {} should be kept stopped",
        w.pid
    );
}

/// When the destination's answer to Commit is lost, the source cannot know
/// whether the tree runs there: it keeps the source stopped (never twice)
/// and alive (never lost), and says so. Both cases of that ambiguity: the
/// destination got the Commit and runs the tree, or it never got it and
/// killed its copy (then SIGCONT lets the source go on).
#[test]
fn lost_answer_after_commit_keeps_the_source_stopped() {
    require_root!();
    for deliver in [true, false] {
        let what = if deliver { "commit delivered" } else { "commit lost" };
        let (h, sc, mut w, srv) = setup("mig-commit", 16);
        let (port, proxy) = commit_cutting_proxy(&h, srv.to(), deliver, None, Duration::from_millis(500));
        let (pid, log) = (w.pid.to_string(), sc.path("migrate.log"));
        let to = format!("{ADDR_B}:{port}");
        let out = cryo_in(&h.a, &migrate_args(&pid, &to, s(&log), &[]));
        let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "[{what}] migrate succeeded without the answer");
        assert!(
            !e.contains('\n') && e.contains("kept stopped") && e.contains(&pid),
            "[{what}] {e}"
        );
        let _ = proxy.join();
        assert_held_stopped(&w, what);
        let f = srv.finish();
        if deliver {
            // The destination runs the tree: the user kills the source.
            assert!(f.ok, "[{what}] page-server: {}", f.err);
            let rpid = read_pidfile(&f.pidfile).unwrap_or_else(|e| panic!("[{what}] {e}"));
            assert!(pid_running(rpid), "[{what}] restored pid {rpid} does not run");
            cryo_integration::signal(w.pid, libc::SIGKILL).unwrap();
            assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "[{what}] the source did not die");
            cryo_integration::signal(rpid, libc::SIGUSR1).unwrap();
            let v = wait_for_nth_verdict(&w.log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("[{what}] {e}"));
            assert!(v.starts_with("PASS"), "[{what}] restored workload: {v}");
        } else {
            // Nothing runs on B: the user resumes the source.
            assert!(!f.ok, "[{what}] page-server succeeded without Commit");
            assert!(
                read_pidfile(&f.pidfile).map_or(true, |p| !pid_running(p)),
                "[{what}] something runs on B"
            );
            cryo_integration::signal(w.pid, libc::SIGCONT).unwrap();
            verify_still_on_a(&f.pidfile, &mut w, what);
        }
    }
}

/// The sending cryo dies right after it sent Commit (its tracees are let
/// go by the kernel): the source must stay stopped, not run beside the
/// copy the destination now runs.
#[test]
fn sender_killed_after_commit_leaves_the_source_stopped() {
    require_root!();
    use std::sync::atomic::{AtomicI32, Ordering};
    let (h, sc, mut w, srv) = setup("mig-commit-kill", 16);
    let victim = std::sync::Arc::new(AtomicI32::new(0));
    let (port, proxy) = commit_cutting_proxy(&h, srv.to(), true, Some(victim.clone()), Duration::from_millis(500));
    let (pid, log) = (w.pid.to_string(), sc.path("migrate.log"));
    let to = format!("{ADDR_B}:{port}");
    let mut mig = spawn_migrate(&h, &sc, &migrate_args(&pid, &to, s(&log), &[]));
    victim.store(mig.id() as i32, Ordering::SeqCst);
    let _ = proxy.join();
    let st = mig.wait().unwrap();
    assert!(st.code().is_none(), "the sending cryo was not killed: {st:?}");
    assert_held_stopped(&w, "sender killed after Commit");
    let f = srv.finish();
    assert!(f.ok, "page-server: {}", f.err);
    let rpid = read_pidfile(&f.pidfile).unwrap();
    assert!(pid_running(rpid), "restored pid {rpid} does not run");
    cryo_integration::signal(w.pid, libc::SIGKILL).unwrap();
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "the source did not die");
    cryo_integration::signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&w.log, 1, LINE_TIMEOUT).unwrap();
    assert!(v.starts_with("PASS"), "restored workload: {v}");
}

/// A shell loop whose `sleep` children live a few ms each: a child frozen
/// by one pre-dump is often gone by the time its write tracking is set up,
/// or by the next round. That must not fail the pre-dumps, and the final
/// dump and restore must still be right: the restored shell counts on from
/// where it was.
#[test]
fn pre_dumps_of_a_tree_whose_children_come_and_go() {
    require_root!();
    let sc = Scratch::new("predump-churn");
    let log = sc.path("w.log");
    let count = sc.path("count");
    let script = format!(
        "echo READY $$; i=0; while :; do i=$((i+1)); echo $i > {}; sleep 0.003; done",
        count.display()
    );
    let mut w = Workload::spawn(Path::new("/bin/sh"), &["-c", &script], &log).expect("spawn sh");
    sc.cl.pid(w.pid);
    w.wait_ready().unwrap();
    let pid = w.pid.to_string();
    let n = 10;
    for i in 1..=n {
        let d = sc.path(&format!("d{i}"));
        let prev = format!("../d{}", i - 1);
        let mut args = vec!["pre-dump", "-t", &pid, "-D", s(&d)];
        if i > 1 {
            args.extend(["--prev-images-dir", &prev]);
        }
        let out = cryo_integration::run_cryo(&args);
        assert!(out.status.success(), "pre-dump {i}: {}", describe(&out));
    }
    // The file is rewritten (truncated, then written) all the time: read
    // until it holds a number.
    let read = || {
        let end = Instant::now() + LINE_TIMEOUT;
        loop {
            let n = std::fs::read_to_string(&count)
                .unwrap_or_default()
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
            if n > 0 || Instant::now() > end {
                return n;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let at_dump = read();
    assert!(at_dump > 0, "the loop never counted");
    let d = sc.path("final");
    let prev = format!("../d{n}");
    let out = cryo_integration::run_cryo(&["dump", "-t", &pid, "-D", s(&d), "--prev-images-dir", &prev]);
    assert!(out.status.success(), "dump: {}", describe(&out));
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "the dump did not end the source");
    let pf = sc.path("pidfile");
    sc.cl.pidfile(&pf);
    let out = cryo_integration::run_cryo(&["restore", "-D", s(&d), "-d", "--pidfile", s(&pf)]);
    assert!(out.status.success(), "restore: {}", describe(&out));
    let rpid = read_pidfile(&pf).unwrap();
    // The restored shell's variable carries on: the count goes on from
    // (about) where it stopped, not from 1.
    std::thread::sleep(Duration::from_millis(500));
    let after = read();
    assert!(pid_running(rpid), "the restored shell died");
    assert!(
        after > at_dump && after < at_dump + 100_000,
        "count {after} after restore, {at_dump} at the dump"
    );
}

/// The count after `name ` in cryo's `events: fork N, remove N, ...`.
fn event_count(out: &str, name: &str) -> u64 {
    out.split("events: ")
        .nth(1)
        .and_then(|e| e.split(", ").find_map(|p| p.strip_prefix(&format!("{name} "))))
        .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

/// Lazy migration (pre-copy rounds, or post-copy from the source with
/// `--no-pre-copy`) of a `lazyshape` that, at once on host B, forks a
/// checking child, drops, unmaps and moves memory while its pages are
/// still coming (the page server's fill is slowed, a test aid). It PASSes
/// and the page server followed each event.
fn migrate_lazyshape(tag: &str, extra: &[&str]) {
    let h = hosts();
    let sc = Scratch::new(tag);
    let log = sc.path("w.log");
    let enter = Hosts::enter(&h.a);
    let mut w = Workload::spawn(
        Path::new("nsenter"),
        &[&enter[0], &enter[1], s(bin!("lazyshape")), "--mib", "64"],
        &log,
    )
    .expect("spawn lazyshape");
    sc.cl.pid(w.pid);
    w.wait_ready().unwrap_or_else(|e| panic!("lazyshape: {e}"));
    let srv = Server::start_env(&h, &sc, "1", 0, &[("CRYO_LAZY_FILL_DELAY_MS", "50")]);
    let mut args = vec!["--lazy-pages"];
    args.extend_from_slice(extra);
    let (pid, to, mlog) = (w.pid.to_string(), srv.to(), sc.path("migrate.log"));
    let mut mig = spawn_migrate(&h, &sc, &migrate_args(&pid, &to, s(&mlog), &args));
    wait_for_line(&srv.out, "cryo page-server: restored, pid", STEP)
        .unwrap_or_else(|e| panic!("no restore on B: {e}; {}", srv.stderr()));
    let rpid = read_pidfile(&srv.pidfile).unwrap();
    cryo_integration::signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&w.log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("[{tag}] {e}"));
    let st = mig.wait().unwrap();
    let f = srv.finish();
    assert!(v.starts_with("PASS"), "[{tag}] restored lazyshape: {v}\n{}", f.out);
    assert!(st.success(), "[{tag}] migrate: {st}\n{}", log_tail(&mlog, 20));
    assert!(f.ok, "[{tag}] page-server: {}\n{}", f.out, f.err);
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "[{tag}] the source still runs");
    assert!(
        wait_pid_exited(rpid, GONE_TIMEOUT),
        "[{tag}] restored pid {rpid} still runs"
    );
    for ev in ["fork", "remove", "unmap", "remap"] {
        assert!(
            event_count(&f.out, ev) >= 1,
            "[{tag}] no {ev} event followed: {}",
            f.out
        );
    }
}

#[test]
fn migrate_lazy_follows_fork_dontneed_munmap_mremap() {
    require_root!();
    migrate_lazyshape("mig-lazyshape", &[]);
}

/// Post-copy: pages moved by mremap are still fetched from where they
/// were at the source.
#[test]
fn migrate_post_copy_follows_fork_dontneed_munmap_mremap() {
    require_root!();
    migrate_lazyshape("mig-postshape", &["--no-pre-copy"]);
}
