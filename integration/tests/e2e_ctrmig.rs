//! Migration of a runc container between two test "hosts" (network
//! namespaces joined by a veth pair, see hosts.rs): `cryo migrate
//! --container` in host A drives runc (pre-dump rounds, the final
//! checkpoint, cryo as its criu); `cryo page-server --container --bundle`
//! in host B restores it with `runc restore`. Each host has its own runc
//! state root and its own copy of the bundle (its own cgroup path); a
//! directory bind-mounted into both containers at /shared plays shared
//! storage and holds the workload's log.
//!
//! The container's init is the dirtier workload (memory rewritten while it
//! migrates); on SIGUSR1 it checks every page of its memory and says PASS
//! or FAIL. After a migration it runs (and passes) on B only and runc on A
//! no longer knows the container; after a fault it runs (and passes) on A
//! only and B holds nothing: no container, no process, no images.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cryo_integration::ctr::{busybox_rootfs, have, marked_pids};
use cryo_integration::hosts::{commit_cutting_proxy, Hosts, ADDR_B};
use cryo_integration::{
    bin, cryo_bin, describe, log_tail, s, wait_for_line, wait_for_verdict, Captured, Cleanup, TempDir, LINE_TIMEOUT,
};

const STEP: Duration = Duration::from_secs(120);

/// Copies `bin` into the rootfs as /bin/NAME with the shared libraries
/// ldd lists for it, at the same paths.
fn install_in_rootfs(rootfs: &Path, bin: &Path, name: &str) {
    fs::copy(bin, rootfs.join("bin").join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    let o = Command::new("ldd").arg(bin).output().expect("run ldd");
    for lib in String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        let dst = rootfs.join(lib.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(lib, &dst).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
}

/// The two hosts, their runc state roots and bundles, the container's id
/// and the shared directory. On drop: the container is killed and deleted
/// on both hosts, any process with the marker is killed by pid, the
/// cgroups left are removed and the namespaces deleted.
struct Mig {
    tmp: TempDir,
    hosts: Hosts,
    id: String,
    marker: String,
    shared: PathBuf,
    cl: Cleanup,
}

/// Host A or B.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Host {
    A,
    B,
}

impl Host {
    fn tag(self) -> &'static str {
        match self {
            Host::A => "a",
            Host::B => "b",
        }
    }
}

impl Mig {
    /// None (after a loud SKIP) without root, runc or busybox. MIB: the
    /// dirtier's memory.
    fn new(tag: &str, mib: u32) -> Option<Mig> {
        if !cryo_integration::is_root() {
            cryo_integration::skip("needs root");
            return None;
        }
        if !have("runc") || !Path::new("/bin/busybox").exists() {
            cryo_integration::skip("needs runc and busybox-static (hack/setup installs them)");
            return None;
        }
        let tmp = TempDir::new(tag);
        let hosts = Hosts::new().unwrap_or_else(|e| panic!("cannot create the test hosts: {e}"));
        let marker = format!("cryo{}x{}", std::process::id(), tag.replace('-', ""));
        let shared = tmp.join("shared");
        fs::create_dir_all(&shared).unwrap();
        let m = Mig {
            id: format!("cryo-{marker}"),
            tmp,
            hosts,
            marker,
            shared,
            cl: Cleanup::new(),
        };
        for h in [Host::A, Host::B] {
            m.make_bundle(h, mib);
        }
        Some(m)
    }

    fn bundle(&self, h: Host) -> PathBuf {
        self.tmp.join(&format!("bundle-{}", h.tag()))
    }

    fn root(&self, h: Host) -> PathBuf {
        self.tmp.join(&format!("state-{}", h.tag()))
    }

    fn ns(&self, h: Host) -> &str {
        match h {
            Host::A => &self.hosts.a,
            Host::B => &self.hosts.b,
        }
    }

    /// The container's cgroup on host H (each host has its own).
    fn cgroup(&self, h: Host) -> String {
        format!("cryo-ctrmig-{}-{}", self.marker, h.tag())
    }

    /// A busybox bundle whose init is the dirtier, logging to /shared/w.log.
    fn make_bundle(&self, h: Host, mib: u32) {
        let bundle = self.bundle(h);
        let rootfs = bundle.join("rootfs");
        busybox_rootfs(&rootfs);
        install_in_rootfs(&rootfs, bin!("dirtier"), "dirtier");
        fs::create_dir_all(rootfs.join("shared")).unwrap();
        let o = Command::new("runc")
            .arg("spec")
            .current_dir(&bundle)
            .output()
            .expect("runc spec");
        assert!(o.status.success(), "{}", describe(&o));
        let p = bundle.join("config.json");
        let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        c["process"]["terminal"] = false.into();
        c["process"]["args"] = serde_json::json!([
            "/bin/dirtier",
            "--log",
            "/shared/w.log",
            "--mib",
            mib.to_string(),
            "--hot-mib",
            "4",
            "--hot-ms",
            "200",
            "--tag",
            format!("M={}", self.marker)
        ]);
        c["root"]["readonly"] = false.into();
        c["hostname"] = "cryoctrmig".into();
        c["linux"]["cgroupsPath"] = format!("/{}", self.cgroup(h)).into();
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/shared",
            "type": "bind",
            "source": s(&self.shared),
            "options": ["rbind", "rw"]
        }));
        fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }

    fn runc(&self, h: Host, args: &[&str]) -> Output {
        Command::new("runc")
            .arg("--root")
            .arg(self.root(h))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("runc")
    }

    /// `runc state` on host H: (status, pid), None when runc knows no
    /// such container.
    fn state(&self, h: Host) -> Option<(String, i32)> {
        let o = self.runc(h, &["state", &self.id]);
        if !o.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        Some((v["status"].as_str()?.to_string(), v["pid"].as_i64()? as i32))
    }

    fn log(&self) -> PathBuf {
        self.shared.join("w.log")
    }

    /// Starts the container on A (its stdio a pipe drained into ctr.out)
    /// and waits until the dirtier is ready; its host pid.
    fn start(&self) -> i32 {
        let (rd, wr) = std::io::pipe().expect("pipe");
        let st = Command::new("runc")
            .arg("--root")
            .arg(self.root(Host::A))
            .args(["run", "-d", &self.id])
            .current_dir(self.bundle(Host::A))
            .stdin(Stdio::null())
            .stdout(wr.try_clone().unwrap())
            .stderr(wr)
            .status()
            .expect("runc run");
        let out = self.tmp.join("ctr.out");
        let mut f = fs::File::create(&out).unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(rd).lines() {
                let Ok(l) = l else { break };
                let _ = writeln!(f, "{l}");
            }
        });
        assert!(st.success(), "runc run -d: {}", log_tail(&out, 10));
        let (status, pid) = self.state(Host::A).expect("runc state after run");
        assert_eq!(status, "running");
        self.cl.pid(pid);
        wait_for_line(&self.log(), "READY", LINE_TIMEOUT).unwrap_or_else(|e| panic!("dirtier: {e}"));
        std::thread::sleep(Duration::from_millis(300));
        pid
    }

    /// `cryo page-server --container` in host B (tag names its files).
    fn page_server(&self, tag: &str) -> Server {
        self.page_server_env(tag, &[])
    }

    /// The same, with ENV added to its environment (and runc's criu's).
    fn page_server_env(&self, tag: &str, env: &[(&str, &str)]) -> Server {
        let dir = self.tmp.join(&format!("dst-{tag}"));
        let out = self.tmp.join(&format!("ps-{tag}.out"));
        let err = self.tmp.join(&format!("ps-{tag}.err"));
        let log = self.tmp.join(&format!("ps-{tag}.log"));
        let pidfile = self.tmp.join(&format!("ps-{tag}.pid"));
        self.cl.pidfile(&pidfile);
        let child = Hosts::cmd(
            self.ns(Host::B),
            &cryo_bin(),
            &[
                "page-server",
                "--port",
                "0",
                "--address",
                ADDR_B,
                "-D",
                s(&dir),
                "--pidfile",
                s(&pidfile),
                "--container",
                &self.id,
                "--bundle",
                s(&self.bundle(Host::B)),
                "--runtime-root",
                s(&self.root(Host::B)),
                "-o",
                s(&log),
                "-v4",
            ],
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn page-server");
        self.cl.pid(child.id() as i32);
        let line = wait_for_line(&out, "cryo page-server: listening on ", LINE_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "page-server did not start: {e}; stderr: {}",
                fs::read_to_string(&err).unwrap_or_default()
            )
        });
        let port: u16 = line.trim().rsplit(':').next().unwrap().parse().expect("port");
        Server {
            child,
            to: format!("{ADDR_B}:{port}"),
            dir,
            out,
            err,
            log,
            pidfile,
        }
    }

    /// `cryo migrate --container` from host A to `to` with EXTRA.
    fn migrate(&self, to: &str, extra: &[&str]) -> (Output, PathBuf) {
        let log = self.tmp.join("migrate.log");
        let _ = fs::remove_file(&log);
        let cryo = cryo_bin();
        let enter = Hosts::enter(self.ns(Host::A));
        let root = self.root(Host::A);
        let mut a = vec![
            enter[0].as_str(),
            enter[1].as_str(),
            s(&cryo),
            "migrate",
            "--container",
            &self.id,
            "--runtime-root",
            s(&root),
            "--to",
            to,
            "-o",
            s(&log),
            "-v4",
        ];
        a.extend_from_slice(extra);
        (
            Captured::spawn(Path::new("nsenter"), &a, Stdio::null(), None).finish(STEP),
            log,
        )
    }

    /// Processes of host H's cgroup of the container (every v1 controller
    /// and the unified hierarchy).
    fn cgroup_procs(&self, h: Host) -> Vec<String> {
        let name = self.cgroup(h);
        let mut v = Vec::new();
        for e in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = e.path().join(&name).join("cgroup.procs");
            if let Ok(t) = fs::read_to_string(&p) {
                v.extend(t.lines().map(|l| format!("{}: {l}", p.display())));
            }
        }
        v
    }

    /// B holds nothing: no container in its runc state, no process in its
    /// cgroup, no process of the workload but `source`, no images in DIR.
    fn assert_b_clean(&self, dir: &Path, source: i32, what: &str) {
        assert_eq!(self.state(Host::B), None, "[{what}] runc on B knows the container");
        let l = self.runc(Host::B, &["list", "-q"]);
        assert!(
            String::from_utf8_lossy(&l.stdout).trim().is_empty(),
            "[{what}] runc list on B: {}",
            describe(&l)
        );
        assert!(
            self.cgroup_procs(Host::B).iter().all(|l| l.ends_with(": ")),
            "[{what}] processes in B's cgroup: {:?}",
            self.cgroup_procs(Host::B)
        );
        let others: Vec<i32> = marked_pids(&self.marker).into_iter().filter(|&p| p != source).collect();
        assert!(others.is_empty(), "[{what}] other copies of the workload: {others:?}");
        assert!(
            !dir.join("inventory.img").exists() && !dir.join(".incoming").exists(),
            "[{what}] images left in {}",
            dir.display()
        );
    }

    /// The container still runs on A as `pid` (not frozen, no write
    /// tracking left), and B holds nothing.
    fn assert_still_on_a(&self, pid: i32, srv_dir: &Path, what: &str) {
        assert_eq!(
            self.state(Host::A),
            Some(("running".to_string(), pid)),
            "[{what}] runc on A"
        );
        std::thread::sleep(Duration::from_millis(200));
        let st = cryo_integration::pid_state(pid);
        assert!(
            matches!(st, Some('S') | Some('R')),
            "[{what}] source pid {pid} is in state {st:?}"
        );
        let fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| fs::read_link(e.path()).ok())
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !fds.iter().any(|f| f.contains("userfaultfd")),
            "[{what}] the source kept a userfaultfd: {fds:?}"
        );
        self.assert_b_clean(srv_dir, pid, what);
    }

    /// A successful migration: A knows the container no more, its old init
    /// is gone; B runs it (runc state, in B's cgroup) as the pid both cryo
    /// sides report. Returns that pid.
    fn assert_moved(&self, src: i32, srv: Server, out: &Output, log: &Path) -> i32 {
        assert!(
            out.status.success(),
            "migrate: {}\n{}",
            describe(out),
            log_tail(log, 20)
        );
        let so = String::from_utf8_lossy(&out.stdout).to_string();
        let f = srv.finish();
        assert!(f.ok, "page-server: {}\n{}\n{}", f.out, f.err, log_tail(&f.log, 20));
        assert_eq!(self.state(Host::A), None, "runc on A still knows the container");
        assert!(
            cryo_integration::wait_pid_gone(src, Duration::from_secs(10)),
            "the source init {src} still runs"
        );
        let (status, pid) = self.state(Host::B).expect("runc on B knows the container");
        self.cl.pid(pid);
        assert_eq!(status, "running");
        assert!(
            so.contains(&format!("restored as pid {pid}")),
            "migrate names the restored pid {pid}: {so}"
        );
        assert!(
            f.out.contains(&format!("restored container, pid {pid}")),
            "page-server: {}",
            f.out
        );
        assert_eq!(cryo_integration::read_pidfile(&f.pidfile), Ok(pid));
        let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cg.contains(&self.cgroup(Host::B)) && !cg.contains(&self.cgroup(Host::A)),
            "the restored init is in B's cgroup: {cg}"
        );
        let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            st.lines()
                .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
            "the restored init is pid 1 of its namespace:\n{st}"
        );
        assert!(
            f.dir.join("descriptors.json").is_file(),
            "runc's descriptors.json reached B"
        );
        pid
    }

    /// Wakes the workload (host pid `pid`); its verdict must be PASS.
    fn expect_pass(&self, pid: i32, what: &str) {
        cryo_integration::signal(pid, libc::SIGUSR1).unwrap();
        let v = wait_for_verdict(&self.log(), LINE_TIMEOUT).unwrap_or_else(|e| panic!("[{what}] {e}"));
        assert!(
            v.starts_with("PASS"),
            "[{what}] workload: {v}\n{}",
            log_tail(&self.log(), 5)
        );
        assert!(cryo_integration::wait_pid_gone(pid, Duration::from_secs(10)));
    }
}

impl Drop for Mig {
    fn drop(&mut self) {
        for h in [Host::A, Host::B] {
            let _ = self.runc(h, &["kill", &self.id, "KILL"]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for h in [Host::A, Host::B] {
            let _ = self.runc(h, &["delete", "--force", &self.id]);
        }
        for p in marked_pids(&self.marker) {
            cryo_integration::kill_pid(p);
        }
        for h in [Host::A, Host::B] {
            let name = self.cgroup(h);
            for e in fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                let _ = fs::remove_dir(e.path().join(&name));
            }
        }
    }
}

/// A page server that runs in host B.
struct Server {
    child: Child,
    to: String,
    dir: PathBuf,
    out: PathBuf,
    err: PathBuf,
    log: PathBuf,
    pidfile: PathBuf,
}

/// A page server that exited.
struct Finished {
    ok: bool,
    out: String,
    err: String,
    log: PathBuf,
    dir: PathBuf,
    pidfile: PathBuf,
}

impl Server {
    fn finish(mut self) -> Finished {
        let end = Instant::now() + STEP;
        let st = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            assert!(Instant::now() < end, "page-server did not finish");
            std::thread::sleep(Duration::from_millis(10));
        };
        Finished {
            ok: st.success(),
            out: fs::read_to_string(&self.out).unwrap_or_default(),
            err: fs::read_to_string(&self.err).unwrap_or_default(),
            log: self.log.clone(),
            dir: self.dir.clone(),
            pidfile: self.pidfile.clone(),
        }
    }
}

/// The failed migration's one-line error, which says the container keeps
/// running and contains WANT.
fn assert_failed(out: &Output, log: &Path, want: &str, what: &str) {
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "[{what}] migrate succeeded: {}", describe(out));
    assert!(
        !e.contains('\n') && e.contains("the container keeps running") && e.contains(want),
        "[{what}] error: {e}\n{}",
        log_tail(log, 20)
    );
}

/// Pre-copy rounds while the container writes, then the final
/// checkpoint: it runs on B only and its memory checks out there.
#[test]
fn container_migrates_with_pre_copy() {
    let Some(m) = Mig::new("ctrmig-pre", 64) else { return };
    let src = m.start();
    let srv = m.page_server("1");
    let (out, log) = m.migrate(&srv.to, &[]);
    let dir = srv.dir.clone();
    let so = String::from_utf8_lossy(&out.stdout).to_string();
    let pid = m.assert_moved(src, srv, &out, &log);
    let first: u64 = so
        .split("pre-copy rounds (KiB) [")
        .nth(1)
        .and_then(|r| r.split([' ', ']']).next()?.parse().ok())
        .unwrap_or(0);
    assert!(first >= 60 << 10, "the first round carries the 64 MiB: {so}");
    // The final dump took most pages from the rounds.
    let parent: u64 = so
        .split(", ")
        .find(|p| p.ends_with("pages from the rounds"))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(parent > 8000, "pre-copy should carry most of 64 MiB: {so}");
    assert!(
        dir.join("pre-1").is_dir() && dir.join("parent").exists(),
        "pre-copy chain on B"
    );
    m.expect_pass(pid, "migrated with pre-copy");
}

/// Pre-copy rounds, then a lazy restore on B: the container runs before
/// the pre-copied pages are in its memory, runc's criu (the drop-in)
/// fills them from B's images, and the workload's check of every page
/// passes there.
#[test]
fn container_migrates_with_lazy_pages() {
    let Some(m) = Mig::new("ctrmig-lazy", 64) else { return };
    let src = m.start();
    let srv = m.page_server("1");
    let (out, log) = m.migrate(&srv.to, &["--lazy-pages"]);
    let dir = srv.dir.clone();
    let pid = m.assert_moved(src, srv, &out, &log);
    let ps = fs::read_to_string(dir.join("..").join("ps-1.out")).unwrap_or_default();
    let kib: u64 = ps
        .split("cryo page-server: lazy pages: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(kib >= 32 << 10, "most of the 64 MiB came lazily: {ps}");
    let rlog = fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert!(
        rlog.contains("of memory to come lazily") && rlog.contains("migration committed"),
        "the drop-in's restore was lazy:\n{}",
        log_tail(&dir.join("restore.log"), 20)
    );
    m.expect_pass(pid, "migrated with lazy pages");
}

/// The page server on B is killed while runc's criu still fills the lazy
/// pages: the restored container on B is killed (it cannot go on without
/// its memory, and nothing would watch it). The source was held stopped
/// after the Commit and got no answer: `cryo migrate` fails saying so, and
/// the source stays stopped (the operator resumes it: the copy on B is
/// gone). After a commit, the death of the filler is the loss of the
/// destination's copy, as for a process tree (src/migrate/server.rs).
#[test]
fn page_server_killed_while_filling_kills_the_container() {
    let Some(m) = Mig::new("ctrmig-lazykill", 64) else {
        return;
    };
    let src = m.start();
    // 64 MiB in 1 MiB chunks, 100 ms each: several seconds of filling.
    let srv = m.page_server_env("1", &[("CRYO_LAZY_FILL_DELAY_MS", "100")]);
    let to = srv.to.clone();
    let h = {
        let a = (
            m.id.clone(),
            m.root(Host::A),
            m.ns(Host::A).to_string(),
            m.tmp.join("m2.log"),
        );
        std::thread::spawn(move || {
            let cryo = cryo_bin();
            let enter = Hosts::enter(&a.2);
            let args = [
                enter[0].as_str(),
                enter[1].as_str(),
                s(&cryo),
                "migrate",
                "--container",
                &a.0,
                "--runtime-root",
                s(&a.1),
                "--to",
                &to,
                "--lazy-pages",
                "-o",
                s(&a.3),
                "-v4",
            ];
            Captured::spawn(Path::new("nsenter"), &args, Stdio::null(), None).finish(STEP)
        })
    };
    // The drop-in on B released the container and fills its pages.
    let rlog = srv.dir.join(".incoming").join("restore.log");
    let end = Instant::now() + STEP;
    let rpid: i32 = loop {
        let t = fs::read_to_string(&rlog).unwrap_or_default();
        if let Some(p) = t
            .split("releasing the restored container (pid ")
            .nth(1)
            .and_then(|r| r.split(')').next()?.parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < end, "the lazy restore never committed");
        std::thread::sleep(Duration::from_millis(5));
    };
    m.cl.pid(rpid);
    std::thread::sleep(Duration::from_millis(300));
    let t = fs::read_to_string(&rlog).unwrap_or_default();
    assert!(
        t.contains("of memory to come lazily") && !t.contains("all in after"),
        "the fill should still run:\n{t}"
    );
    assert!(
        cryo_integration::pid_state(rpid).is_some_and(|c| c != 'Z'),
        "the restored container runs on B while it fills"
    );
    cryo_integration::kill_pid(srv.child.id() as i32);
    assert!(
        cryo_integration::wait_pid_gone(rpid, Duration::from_secs(10)),
        "the restored container on B survived its page server"
    );
    let t = fs::read_to_string(&rlog).unwrap_or_default();
    assert!(t.contains("cryo page-server went away"), "{t}");
    let out = h.join().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success() && e.contains("no answer from the destination after Commit"),
        "migrate: {}\n{}",
        describe(&out),
        log_tail(&m.tmp.join("m2.log"), 10)
    );
    // The source is held stopped (not killed, not running).
    let st = cryo_integration::pid_state(src);
    assert_eq!(st, Some('T'), "source pid {src} state");
    assert!(
        marked_pids(&m.marker).iter().all(|&p| p == src),
        "only the held source is left: {:?}",
        marked_pids(&m.marker)
    );
}

/// The destination dies after the freeze (while the frozen container's
/// pages are on their way): the container runs on A, untouched, and B
/// holds nothing. --lazy-pages without pre-copy is refused up front.
#[test]
fn destination_dies_after_the_freeze_and_lazy_pages_are_refused() {
    let Some(m) = Mig::new("ctrmig-dstdie", 256) else {
        return;
    };
    let src = m.start();
    let srv = m.page_server("1");

    // Refused up front: nothing is sent, the container runs on.
    let (out, log) = m.migrate(&srv.to, &["--lazy-pages", "--no-pre-copy"]);
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success(),
        "migrate --lazy-pages --no-pre-copy --container succeeded"
    );
    assert!(
        !e.contains('\n') && e.contains("--lazy-pages with --container needs pre-copy"),
        "{e}\n{}",
        log_tail(&log, 10)
    );
    assert_eq!(m.state(Host::A), Some(("running".to_string(), src)));
    // Other bad input: one line naming what is wrong, nothing touched.
    let (out, _) = m.migrate(&srv.to, &["--runtime", "crun"]);
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success() && !e.contains('\n') && e.contains("only runc containers"),
        "{e}"
    );
    let bad = Command::new(cryo_bin())
        .args(["page-server", "--port", "0", "-D"])
        .arg(m.tmp.join("dst-bad"))
        .args(["--container", "x", "--bundle"])
        .arg(m.tmp.join("no-bundle"))
        .stdin(Stdio::null())
        .output()
        .expect("cryo page-server");
    let e = String::from_utf8_lossy(&bad.stderr).trim().to_string();
    assert!(
        !bad.status.success() && !e.contains('\n') && e.contains("has no config.json"),
        "{e}"
    );
    assert_eq!(m.state(Host::A), Some(("running".to_string(), src)));

    // Nothing reached the page server: it still waits. The next attempt
    // (no pre-copy: the first pages sent are the frozen container's)
    // loses it mid-transfer.
    let to = srv.to.clone();
    let dir = srv.dir.clone();
    let h = {
        let m2 = (
            m.id.clone(),
            m.root(Host::A),
            m.ns(Host::A).to_string(),
            m.tmp.join("m2.log"),
        );
        std::thread::spawn(move || {
            let cryo = cryo_bin();
            let enter = Hosts::enter(&m2.2);
            let a = [
                enter[0].as_str(),
                enter[1].as_str(),
                s(&cryo),
                "migrate",
                "--container",
                &m2.0,
                "--runtime-root",
                s(&m2.1),
                "--to",
                &to,
                "--no-pre-copy",
                "-o",
                s(&m2.3),
                "-v4",
            ];
            Captured::spawn(Path::new("nsenter"), &a, Stdio::null(), None).finish(STEP)
        })
    };
    let f = dir.join(".incoming").join("pages-1.img");
    let end = Instant::now() + STEP;
    while fs::metadata(&f).map(|m| m.len()).unwrap_or(0) < 4 << 20 {
        assert!(Instant::now() < end, "the transfer of the frozen pages never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    // The frozen container's pages are on their way: it is frozen now.
    cryo_integration::kill_pid(srv.child.id() as i32);
    let out = h.join().unwrap();
    assert_failed(&out, &m.tmp.join("m2.log"), "Lost the page server", "destination died");
    let _ = fs::remove_dir_all(dir.join(".incoming"));
    m.assert_still_on_a(src, &dir, "destination died");
    m.expect_pass(src, "destination died");
}

/// The restore on B fails, first in runc (the bundle there has no
/// rootfs), then in the engine runc runs (the rootfs lacks the workload's
/// executable, which the restored memory maps): each time the container
/// runs on A, untouched, and B holds nothing, and the page server and
/// `cryo migrate` say why on one line. Once B's bundle is whole the same
/// container migrates (runc's bookkeeping on A is intact) and passes.
#[test]
fn restore_fails_on_the_destination_then_migrates() {
    let Some(m) = Mig::new("ctrmig-rstfail", 64) else {
        return;
    };
    let src = m.start();
    let rootfs_b = m.bundle(Host::B).join("rootfs");
    let exe_b = rootfs_b.join("bin/dirtier");
    let kept = m.tmp.join("kept");
    let cases: [(&str, &Path, &str); 2] = [
        ("no rootfs", &rootfs_b, "invalid rootfs"),
        ("no executable", &exe_b, "bin/dirtier"),
    ];
    for (i, (what, gone, why)) in cases.into_iter().enumerate() {
        fs::rename(gone, &kept).unwrap();
        let srv = m.page_server(&format!("{i}"));
        let (out, log) = m.migrate(&srv.to, &[]);
        let f = srv.finish();
        fs::rename(&kept, gone).unwrap();
        let e = f.err.trim();
        assert!(!f.ok, "[{what}] page-server succeeded: {}", f.out);
        assert!(
            e.contains("Restore of container") && e.contains(why) && !e.contains('\n'),
            "[{what}] page-server: {e}"
        );
        assert_failed(&out, &log, "refused: Restore of container", what);
        m.assert_still_on_a(src, &f.dir, what);
    }

    let srv = m.page_server("ok");
    let (out, log) = m.migrate(&srv.to, &[]);
    let pid = m.assert_moved(src, srv, &out, &log);
    m.expect_pass(pid, "migrated after a failed restore");
}

/// A proxy in host B between the sender and the page server that cuts
/// both connections when the page server's Restored frame (kind 21 of
/// the migration stream: magic, kind, length, payload crc, header crc)
/// comes by: the destination holds the restored container, waiting, and
/// the Commit never arrives. Returns the proxy's port.
fn proxy_cutting_at_restored(h: &Hosts, to: String) -> (u16, std::thread::JoinHandle<bool>) {
    use std::io::Read;
    let (tx, rx) = std::sync::mpsc::channel();
    let j = Hosts::in_ns(&h.b, move || {
        let l = std::net::TcpListener::bind(format!("{ADDR_B}:0")).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        let mut b = std::net::TcpStream::connect(&to).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut a2, &mut b2);
        });
        let mut cut = false;
        loop {
            let mut h = [0u8; 24];
            if b.read_exact(&mut h).is_err() {
                break;
            }
            let kind = u32::from_le_bytes(h[4..8].try_into().unwrap());
            let len = u64::from_le_bytes(h[8..16].try_into().unwrap()) as usize;
            if kind == 21 {
                cut = true;
                break;
            }
            let mut p = vec![0u8; len];
            if b.read_exact(&mut p).is_err() || a.write_all(&h).is_err() || a.write_all(&p).is_err() {
                break;
            }
        }
        let _ = a.shutdown(std::net::Shutdown::Both);
        let _ = b.shutdown(std::net::Shutdown::Both);
        cut
    });
    (rx.recv().unwrap(), j)
}

/// The connection breaks while the destination holds the restored
/// container ready and waits for the Commit: B kills and deletes it (no
/// container, process or images left), A resumes its container, which
/// passes its check.
#[test]
fn no_commit_reaches_the_destination() {
    let Some(m) = Mig::new("ctrmig-nocommit", 64) else {
        return;
    };
    let src = m.start();
    let srv = m.page_server("1");
    let (port, proxy) = proxy_cutting_at_restored(&m.hosts, srv.to.clone());
    let (out, log) = m.migrate(&format!("{ADDR_B}:{port}"), &["--max-rounds", "2"]);
    assert!(proxy.join().unwrap(), "the page server never said Restored");
    let f = srv.finish();
    assert!(!f.ok, "page-server succeeded without a Commit: {}", f.out);
    assert!(
        f.err.trim().contains("no Commit from the sender") && !f.err.trim().contains('\n'),
        "page-server: {}",
        f.err
    );
    assert_failed(&out, &log, "Lost the page server", "no commit");
    m.assert_still_on_a(src, &f.dir, "no commit");
    m.expect_pass(src, "no commit");
}

/// The destination got the Commit and runs the container, but its answer
/// is lost: the source cannot know, so the container's processes on A are
/// kept stopped (never twice, never lost) and cryo migrate says so; once
/// the source is killed, the copy on B passes its check.
#[test]
fn lost_answer_to_commit_keeps_the_source_container_stopped() {
    let Some(m) = Mig::new("ctrmig-lostans", 64) else {
        return;
    };
    let src = m.start();
    let srv = m.page_server("1");
    let (port, proxy) = commit_cutting_proxy(&m.hosts, srv.to.clone(), true, None, Duration::from_millis(1500));
    let (out, log) = m.migrate(&format!("{ADDR_B}:{port}"), &["--max-rounds", "2"]);
    assert!(proxy.join().unwrap(), "no Commit came by");
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "migrate succeeded: {}", describe(&out));
    assert!(
        !e.contains('\n') && e.contains("kept stopped") && !e.contains("keeps running"),
        "error: {e}\n{}",
        log_tail(&log, 20)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        cryo_integration::pid_state(src),
        Some('T'),
        "the source container's init should be kept stopped"
    );
    let f = srv.finish();
    assert!(f.ok, "page-server: {}\n{}", f.out, f.err);
    let (status, pid) = m.state(Host::B).expect("runc on B knows the container");
    m.cl.pid(pid);
    assert_eq!(status, "running");
    cryo_integration::signal(src, libc::SIGKILL).unwrap();
    assert!(cryo_integration::wait_pid_gone(src, Duration::from_secs(10)));
    m.expect_pass(pid, "lost answer: the copy on B");
}
