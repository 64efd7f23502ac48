//! podman 4.3.1 (`--runtime runc`) checkpoints and restores busybox
//! containers with cryo as the `criu` on its PATH, unmodified.
//!
//! Everything podman keeps lives in the test's own directory (`--root`,
//! `--runroot`, `--tmpdir`, a project-local containers.conf through
//! CONTAINERS_CONF); the image is a busybox-static rootfs imported from a
//! tar (no registry). The container joins a network namespace the test
//! creates (`--network ns:PATH`), which runc declares external: at restore
//! podman hands it back and the restored tree joins it.
//!
//! The workload checks its own state (a token in a file inside the
//! container, its host name, pid 1) and counts; podman's log of the
//! container must show one unbroken count across checkpoint and restore.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cryo_integration::ctr::{busybox_rootfs, have, marked_pids};
use cryo_integration::{cryo_bin, describe, s, TempDir, LINE_TIMEOUT};

const HOSTNAME: &str = "cryoctr";

fn script(marker: &str) -> String {
    format!(
        "M={marker}; tok=$(cat /proc/sys/kernel/random/uuid); echo $tok > /tok; i=0; \
         while true; do \
           [ \"$(cat /tok)\" = \"$tok\" ] || {{ echo \"FAIL token\"; exit 1; }}; \
           [ \"$(hostname)\" = {HOSTNAME} ] || {{ echo \"FAIL hostname $(hostname)\"; exit 1; }}; \
           [ $$ = 1 ] || {{ echo \"FAIL pid $$\"; exit 1; }}; \
           if [ -n \"$WANT_TTY\" ]; then [ -t 1 ] || {{ echo \"FAIL no terminal\"; exit 1; }}; fi; \
           echo \"step $i\"; i=$((i+1)); sleep 0.2; \
         done"
    )
}

/// A private podman (storage, config, PATH with cryo as criu), a busybox
/// image and a network namespace; on drop every container is removed, the
/// storage unmounted, the namespace deleted.
struct Podman {
    tmp: TempDir,
    path: String,
    conf: PathBuf,
    netns: String,
    marker: String,
    image: String,
    /// One podman test at a time: run in parallel they disturbed each
    /// other (a third container counted, a pre-dump failing with ENOENT).
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Podman {
    fn new(tag: &str) -> Option<Podman> {
        if !cryo_integration::is_root() {
            cryo_integration::skip("needs root");
            return None;
        }
        if !have("podman") || !have("runc") || !have("ip") || !Path::new("/bin/busybox").exists() {
            cryo_integration::skip("needs podman, runc, iproute2 and busybox-static (hack/setup installs them)");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = TempDir::new(tag);
        let bin = tmp.join("bin");
        fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(cryo_bin(), bin.join("criu")).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let conf = tmp.join("containers.conf");
        fs::write(
            &conf,
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n",
        )
        .unwrap();
        let netns = format!("cryo-{}-{}", std::process::id(), tag);
        let o = Command::new("ip").args(["netns", "add", &netns]).output().unwrap();
        assert!(o.status.success(), "ip netns add: {}", describe(&o));
        let marker = format!("cryo{}x{}", std::process::id(), tag.replace('-', ""));
        let p = Podman {
            image: format!("localhost/cryo-bb-{}:test", tag),
            tmp,
            path,
            conf,
            netns,
            marker,
            _serial: serial,
        };
        p.import_image();
        Some(p)
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .env("PATH", &self.path)
            .arg("--root")
            .arg(self.tmp.join("storage"))
            .arg("--runroot")
            .arg(self.tmp.join("run"))
            .arg("--tmpdir")
            .arg(self.tmp.join("tmpd"))
            .stdin(Stdio::null());
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        self.podman().args(args).output().expect("podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(o.status.success(), "podman {}: {}", args.join(" "), describe(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn import_image(&self) {
        let root = self.tmp.join("rootfs");
        busybox_rootfs(&root);
        let tar = self.tmp.join("bb.tar");
        tar_dir(&root, &tar);
        self.ok(&["import", s(&tar), &self.image]);
    }

    /// Starts a container named `name` running the workload.
    fn run(&self, name: &str) {
        self.run_with(name, "runc");
    }

    /// The same with podman's `--runtime RUNTIME`.
    fn run_with(&self, name: &str, runtime: &str) {
        self.run_opts(name, runtime, &[]);
    }

    /// The same with more `podman run` options.
    fn run_opts(&self, name: &str, runtime: &str, extra: &[&str]) {
        let (nofile, nproc) = (soft_limit(libc::RLIMIT_NOFILE), soft_limit(libc::RLIMIT_NPROC));
        let netns = format!("ns:/run/netns/{}", self.netns);
        let sc = script(&self.marker);
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--runtime",
            runtime,
            "--ulimit",
            &format!("nofile={nofile}:{nofile}"),
            "--ulimit",
            &format!("nproc={nproc}:{nproc}"),
            "--hostname",
            HOSTNAME,
            "--network",
            &netns,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .chain([&self.image[..], "sh", "-c", &sc])
        .collect::<Vec<&str>>());
        self.wait_steps(name, 3);
    }

    fn steps(&self, name: &str) -> Vec<u64> {
        let o = self.out(&["logs", name]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(!text.contains("FAIL"), "the workload of {name} failed:\n{text}");
        text.lines()
            .filter_map(|l| l.strip_prefix("step ")?.trim().parse().ok())
            .collect()
    }

    /// Waits until `name` logged `n` more steps.
    fn wait_steps(&self, name: &str, n: usize) {
        let start = self.steps(name).len();
        let t0 = Instant::now();
        while self.steps(name).len() < start + n {
            assert!(t0.elapsed() < LINE_TIMEOUT, "{name} logs no new step");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self, name: &str) -> String {
        let o = self.out(&["inspect", "-f", "{{.State.Status}}", name]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn bundle(&self, name: &str) -> PathBuf {
        let id = self.ok(&["inspect", "-f", "{{.Id}}", name]);
        self.tmp
            .join("storage/overlay-containers")
            .join(id.trim())
            .join("userdata")
    }

    fn marked(&self) -> Vec<i32> {
        marked_pids(&self.marker)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.out(&["rm", "-af", "-t", "0"]);
        let _ = self.out(&["rmi", "-af"]);
        for p in self.marked() {
            cryo_integration::kill_pid(p);
        }
        // Whatever podman left mounted under our directory.
        let root = self.tmp.path().to_string_lossy().into_owned();
        if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&root))
                .collect();
            points.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in points {
                let _ = Command::new("umount").args(["-l", m]).output();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}

/// `tar -C DIR -cf TAR .`, asserted to succeed.
fn tar_dir(dir: &Path, tar: &Path) {
    let o = Command::new("tar")
        .args(["-C", s(dir), "-cf", s(tar), "."])
        .output()
        .unwrap();
    assert!(o.status.success(), "tar: {}", describe(&o));
}

/// `podman container restore NAME`: the container runs again and its log
/// counts on unbroken.
fn restore_counts_on(p: &Podman, name: &str) {
    p.ok(&["container", "restore", name]);
    assert_eq!(p.status(name), "running");
    p.wait_steps(name, 3);
    assert_unbroken(p, name);
}

fn soft_limit(res: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit the call fills.
    assert_eq!(unsafe { libc::getrlimit(res, &mut r) }, 0);
    r.rlim_cur.min(1024)
}

/// The log of `name` counts 0, 1, 2, ... with no gap and no restart.
fn assert_unbroken(p: &Podman, name: &str) {
    assert_consecutive(name, &p.steps(name));
}

fn assert_consecutive(name: &str, st: &[u64]) {
    for (i, w) in st.windows(2).enumerate() {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{name}'s count breaks at line {i}: {:?}",
            &st[i.saturating_sub(3)..]
        );
    }
}

fn stats(json: &str, key: &str, fields: &[&str]) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("--print-stats JSON: {e}\n{json}"));
    let c = &v["container_statistics"][0];
    assert!(c[key].as_u64().is_some(), "{key} missing: {json}");
    for f in fields {
        assert!(
            c["criu_statistics"][f].is_number(),
            "criu_statistics.{f} missing: {json}"
        );
    }
}

#[test]
fn podman_checkpoint_and_restore_with_stats_and_keep() {
    let Some(p) = Podman::new("pm-basic") else { return };
    p.run("c1");
    let bundle = p.bundle("c1");
    let ck = p.ok(&["container", "checkpoint", "--print-stats", "--keep", "c1"]);
    stats(
        &ck,
        "runtime_checkpoint_duration",
        &["freezing_time", "frozen_time", "memdump_time", "pages_written"],
    );
    assert_eq!(p.status("c1"), "exited");
    assert!(
        p.marked().is_empty(),
        "the checkpointed container still runs: {:?}",
        p.marked()
    );
    // --keep: the images, the log and the stats stay in the bundle.
    for f in ["checkpoint/inventory.img", "dump.log", "stats-dump"] {
        assert!(bundle.join(f).exists(), "{f} kept");
    }
    let before = *p.steps("c1").last().unwrap();
    let rs = p.ok(&["container", "restore", "--print-stats", "--keep", "c1"]);
    stats(
        &rs,
        "runtime_restore_duration",
        &["forking_time", "restore_time", "pages_restored"],
    );
    assert_eq!(p.status("c1"), "running");
    p.wait_steps("c1", 3);
    assert!(p.steps("c1").contains(&(before + 1)));
    assert_unbroken(&p, "c1");
    for f in ["checkpoint/inventory.img", "restore.log", "stats-restore"] {
        assert!(bundle.join(f).exists(), "{f} kept");
    }
    // podman exec reaches the restored container in its namespaces.
    let h = p.ok(&["exec", "c1", "hostname"]);
    assert_eq!(h.trim(), HOSTNAME);
}

#[test]
fn podman_export_import_as_a_second_copy() {
    let Some(p) = Podman::new("pm-export") else { return };
    p.run("c1");
    let tar = p.tmp.join("c1-checkpoint.tar");
    p.ok(&["container", "checkpoint", "--leave-running", "--export", s(&tar), "c1"]);
    assert_eq!(p.status("c1"), "running");
    // podman's export layout.
    let o = Command::new("tar").args(["-tf", s(&tar)]).output().unwrap();
    let list = String::from_utf8_lossy(&o.stdout);
    for want in ["checkpoint/inventory.img", "config.dump", "spec.dump", "stats-dump"] {
        assert!(
            list.lines().any(|l| l.trim_start_matches("./") == want),
            "{want} not in the export:\n{list}"
        );
    }
    let at = *p.steps("c1").last().unwrap();
    p.ok(&["container", "restore", "--import", s(&tar), "--name", "c2"]);
    assert_eq!(p.status("c2"), "running");
    p.wait_steps("c2", 3);
    // The copy's log is the original's (exported with it, up to the
    // export, which may run past the checkpoint) and then the copy's own
    // count, which resumes at the checkpoint and runs on unbroken.
    let c2 = p.steps("c2");
    let join = c2.windows(2).position(|w| w[1] != w[0] + 1).map_or(0, |i| i + 1);
    let first = c2[join];
    assert!(
        first <= at + 1,
        "the copy resumes at {first}, the checkpoint was at {at} or before: {c2:?}"
    );
    assert_consecutive("c2 (imported part)", &c2[..join]);
    assert_consecutive("c2 (restored part)", &c2[join..]);
    // The original runs on beside it.
    p.wait_steps("c1", 2);
    assert_unbroken(&p, "c1");
    assert_eq!(p.marked().len(), 2, "two containers: {:?}", p.marked());
}

#[test]
fn podman_import_of_a_foreign_archive_fails_cleanly() {
    let Some(p) = Podman::new("pm-foreign") else { return };
    // An archive another tool made: no config.dump / spec.dump.
    let junk = p.tmp.join("junk");
    fs::create_dir_all(junk.join("checkpoint")).unwrap();
    fs::write(junk.join("checkpoint/pstree.img"), b"not an image").unwrap();
    let tar = p.tmp.join("foreign.tar");
    tar_dir(&junk, &tar);
    let o = p.out(&["container", "restore", "--import", s(&tar), "--name", "alien"]);
    assert!(!o.status.success(), "restore of a foreign archive must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("config.dump") || err.contains("spec.dump"), "{err}");
    assert!(p.marked().is_empty());

    // podman's own layout, but images cryo cannot read: the engine's
    // error reaches the user, and no process is left.
    p.run("c1");
    let good = p.tmp.join("good.tar");
    p.ok(&["container", "checkpoint", "--leave-running", "--export", s(&good), "c1"]);
    let x = p.tmp.join("x");
    fs::create_dir_all(&x).unwrap();
    let o = Command::new("tar")
        .args(["-C", s(&x), "-xf", s(&good)])
        .output()
        .unwrap();
    assert!(o.status.success());
    fs::write(x.join("checkpoint/pstree.img"), b"\x01\x02garbage").unwrap();
    let bad = p.tmp.join("bad.tar");
    tar_dir(&x, &bad);
    let o = p.out(&["container", "restore", "--import", s(&bad), "--name", "broken"]);
    assert!(!o.status.success(), "restore of corrupt images must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("criu failed") && err.contains("restore.log"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.marked().len(), 1, "only the original runs: {:?}", p.marked());
    assert_eq!(p.status("c1"), "running");
}

/// `cryo-runtime-runc` as podman's --runtime: every verb goes to runc,
/// checkpoint and restore run with cryo as the engine even though no
/// `criu` of cryo's is on PATH.
#[test]
fn podman_with_the_cryo_runtime_wrapper() {
    let Some(p) = Podman::new("pm-wrap") else { return };
    fs::remove_file(p.tmp.join("bin/criu")).unwrap();
    let wrapper = p.tmp.join("bin/cryo-runtime-runc");
    std::os::unix::fs::symlink(cryo_bin(), &wrapper).unwrap();
    p.run_with("w1", s(&wrapper));
    let bundle = p.bundle("w1");
    p.ok(&["container", "checkpoint", "--keep", "w1"]);
    let log = fs::read_to_string(bundle.join("dump.log")).unwrap_or_default();
    assert!(
        log.contains("serving DUMP as criu"),
        "the dump did not go through cryo:\n{log}"
    );
    assert_eq!(p.status("w1"), "exited");
    restore_counts_on(&p, "w1");
    // Over a runtime without checkpoint support the wrapper says why.
    if have("crun") {
        let o = Command::new(cryo_bin())
            .args(["runtime", "checkpoint", "w1"])
            .env("CRYO_RUNTIME", "crun")
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("crun has no checkpoint support"), "{err}");
    }
}

/// `podman run -t`: conmon holds the console; after the restore the
/// container's new pty master reaches conmon through runc
/// (orphan-pts-master) and the log goes on.
#[test]
fn podman_terminal_container() {
    let Some(p) = Podman::new("pm-tty") else { return };
    p.run_opts("t1", "runc", &["-t", "-e", "WANT_TTY=1"]);
    p.ok(&["container", "checkpoint", "t1"]);
    assert_eq!(p.status("t1"), "exited");
    restore_counts_on(&p, "t1");
    let fd1 = p.ok(&["exec", "t1", "busybox", "readlink", "/proc/1/fd/1"]);
    assert_eq!(fd1.trim(), "/dev/pts/0");
}

/// podman's pre-copy goes through runc's pre-dump: `podman container
/// checkpoint --pre-checkpoint` (memory only, the container runs on),
/// then `--with-previous` (the final dump with the pre-checkpoint as
/// parent), then `podman container restore`: the count goes on unbroken.
#[test]
fn podman_pre_checkpoint_then_with_previous_then_restore() {
    let Some(p) = Podman::new("pm-precheck") else { return };
    p.run("c1");
    let bundle = p.bundle("c1");
    p.ok(&["container", "checkpoint", "--pre-checkpoint", "c1"]);
    assert_eq!(
        p.status("c1"),
        "running",
        "a pre-checkpoint leaves the container running"
    );
    p.wait_steps("c1", 3);
    p.ok(&["container", "checkpoint", "--with-previous", "--keep", "c1"]);
    assert_eq!(p.status("c1"), "exited");
    assert!(
        p.marked().is_empty(),
        "the checkpointed container still runs: {:?}",
        p.marked()
    );
    let parent = fs::read_link(bundle.join("checkpoint/parent")).expect("checkpoint/parent link");
    assert!(
        parent.to_string_lossy().contains("pre-checkpoint"),
        "the final dump's parent is the pre-checkpoint: {}",
        parent.display()
    );
    let before = *p.steps("c1").last().unwrap();
    p.ok(&["container", "restore", "c1"]);
    assert_eq!(p.status("c1"), "running");
    p.wait_steps("c1", 3);
    assert!(p.steps("c1").contains(&(before + 1)));
    assert_unbroken(&p, "c1");
}
