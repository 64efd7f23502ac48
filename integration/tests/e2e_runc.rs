//! runc 1.1.5 checkpoints and restores busybox containers with cryo as its
//! `criu` (`runc --criu <link named criu>`), unmodified.
//!
//! The container's workload checks its own state every 200 ms and says
//! `FAIL ...` and exits when any is wrong: the token it wrote to a file
//! inside the container still matches the one in its memory, its host name
//! is the container's, and it is pid 1. It prints `step N` with a counter
//! that lives in its memory; after a restore the steps must continue where
//! the checkpoint stopped them. stdout is a pipe read by the test, which
//! runc hands to the engine at restore (inherit_fd `pipe:[INO]`).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cryo_integration::ctr::{busybox_rootfs, have, marked_pids};
use cryo_integration::netns::{judge_stream, Netns};
use cryo_integration::{cryo_bin, describe, log_tail, s, Cleanup, TempDir, LINE_TIMEOUT};

const HOSTNAME: &str = "cryoctr";

/// The workload: a self-checking loop (see the module doc). `marker` makes
/// its command line unique, so the test can tell whether any copy is left.
fn script(marker: &str) -> String {
    format!(
        "M={marker}; fail() {{ echo \"FAIL $*\"; echo \"FAIL $*\" > /fail; exit 1; }}; \
         tok=$(cat /proc/sys/kernel/random/uuid); echo $tok > /tok; i=0; \
         while true; do \
           [ \"$(cat /tok)\" = \"$tok\" ] || fail token $(cat /tok) != $tok; \
           [ \"$(hostname)\" = {HOSTNAME} ] || fail hostname $(hostname); \
           [ $$ = 1 ] || fail pid $$; \
           if [ -e /want-tty ]; then [ -t 1 ] || fail no terminal; fi; \
           echo \"step $i\"; echo $i > /counter; i=$((i+1)); sleep 0.2; \
         done"
    )
}

/// A runc state root, a busybox bundle and the containers made from it;
/// every container is killed and deleted on drop, then any process left
/// with the marker is killed by pid.
struct Runc {
    tmp: TempDir,
    criu: PathBuf,
    bundle: PathBuf,
    state: PathBuf,
    marker: String,
    ids: std::cell::RefCell<Vec<String>>,
    cleanup: Cleanup,
}

impl Runc {
    /// None (after a loud SKIP) without root, runc or busybox.
    fn new(tag: &str) -> Option<Runc> {
        if !cryo_integration::is_root() {
            cryo_integration::skip("needs root");
            return None;
        }
        if !have("runc") || !Path::new("/bin/busybox").exists() {
            cryo_integration::skip("needs runc and busybox-static (hack/setup installs them)");
            return None;
        }
        let tmp = TempDir::new(tag);
        let criu = tmp.join("criu");
        std::os::unix::fs::symlink(cryo_bin(), &criu).expect("symlink criu");
        let marker = format!("cryo{}x{}", std::process::id(), tag.replace('-', ""));
        let bundle = busybox_bundle(tmp.path(), &script(&marker));
        Some(Runc {
            state: tmp.join("state"),
            criu,
            bundle,
            tmp,
            marker,
            ids: Default::default(),
            cleanup: Cleanup::new(),
        })
    }

    fn id(&self, n: u32) -> String {
        let id = format!("cryo-{}-{n}", self.marker);
        if !self.ids.borrow().contains(&id) {
            self.ids.borrow_mut().push(id.clone());
        }
        id
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.state).arg("--criu").arg(&self.criu);
        c
    }

    /// Runs `runc ARGS` with the bundle as cwd and stdout/stderr one
    /// pipe, copied line by line into `out` (appending) until the last
    /// writer (the container) closes it. The Output's stderr holds what
    /// arrived in `out` while runc ran (runc's own messages).
    fn run_piped(&self, args: &[&str], out: &Path) -> Output {
        let (rd, wr) = std::io::pipe().expect("pipe");
        let seen = fs::read_to_string(out).unwrap_or_default().len();
        let mut child = self
            .runc()
            .args(args)
            .current_dir(&self.bundle)
            .stdin(Stdio::null())
            .stdout(wr.try_clone().expect("dup pipe"))
            .stderr(wr)
            .spawn()
            .expect("spawn runc");
        let mut f = OpenOptions::new().create(true).append(true).open(out).unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(rd).lines() {
                let Ok(l) = l else { break };
                let _ = writeln!(f, "{l}");
            }
        });
        let status = child.wait().expect("wait runc");
        std::thread::sleep(Duration::from_millis(100));
        let all = fs::read_to_string(out).unwrap_or_default();
        let during: String = all
            .get(seen..)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("step "))
            .collect::<Vec<_>>()
            .join("\n");
        // Drop the spawned Command's copies: `child` owns none after wait.
        drop(child);
        Output {
            status,
            stdout: Vec::new(),
            stderr: during.into_bytes(),
        }
    }

    fn start(&self, id: &str, out: &Path) {
        let o = self.run_piped(&["run", "-d", id], out);
        assert!(o.status.success(), "runc run -d {id}: {}", describe(&o));
        self.track(id);
        wait_step(out, 2);
    }

    /// The first container (id 1, output ctr.out) started and counting:
    /// (id, output).
    fn start_first(&self) -> (String, PathBuf) {
        let id = self.id(1);
        let out = self.tmp.join("ctr.out");
        self.start(&id, &out);
        (id, out)
    }

    /// The bundle's config.json, changed by EDIT.
    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let p = self.bundle.join("config.json");
        let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        edit(&mut c);
        fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }

    /// Registers the container's init for the final kill by pid.
    fn track(&self, id: &str) {
        if let Some(p) = self.pid(id) {
            self.cleanup.pid(p);
        }
    }

    fn runc_out(&self, args: &[&str]) -> Output {
        self.runc().args(args).current_dir(&self.bundle).output().expect("runc")
    }

    fn checkpoint(&self, id: &str, img: &Path, work: &Path, extra: &[&str]) -> Output {
        let mut a = vec!["checkpoint", "--image-path", s(img), "--work-path", s(work)];
        a.extend_from_slice(extra);
        a.push(id);
        self.runc_out(&a)
    }

    /// A checkpoint (see `checkpoint`) that must succeed; WHAT names it.
    fn checkpoint_ok(&self, id: &str, img: &Path, work: &Path, extra: &[&str], what: &str) {
        let ck = self.checkpoint(id, img, work, extra);
        assert_ok(&ck, what, &work.join("dump.log"));
    }

    fn restore(&self, id: &str, img: &Path, work: &Path, out: &Path) -> Output {
        let o = self.run_piped(
            &["restore", "-d", "--image-path", s(img), "--work-path", s(work), id],
            out,
        );
        if o.status.success() {
            self.track(id);
        }
        o
    }

    /// A restore (see `restore`) that must succeed; WHAT names it.
    fn restore_ok(&self, id: &str, img: &Path, work: &Path, out: &Path, what: &str) {
        let rs = self.restore(id, img, work, out);
        assert_ok(&rs, what, &work.join("restore.log"));
    }

    fn state_field(&self, id: &str, field: &str) -> Option<String> {
        let o = self.runc_out(&["state", id]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        Some(v.get(field)?.to_string().trim_matches('"').to_string())
    }

    fn status(&self, id: &str) -> String {
        self.state_field(id, "status").unwrap_or_else(|| "(none)".into())
    }

    fn pid(&self, id: &str) -> Option<i32> {
        self.state_field(id, "pid")?.parse().ok().filter(|&p| p > 0)
    }

    /// Pids of processes whose command line holds this test's marker.
    fn marked(&self) -> Vec<i32> {
        marked_pids(&self.marker)
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self.runc_out(&["kill", id, "KILL"]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for id in self.ids.borrow().iter() {
            let _ = self.runc_out(&["delete", "--force", id]);
        }
        for p in self.marked() {
            cryo_integration::kill_pid(p);
        }
    }
}

/// A bundle (rootfs from busybox-static, config from `runc spec`) whose
/// init runs `script`.
fn busybox_bundle(dir: &Path, script: &str) -> PathBuf {
    let bundle = dir.join("bundle");
    busybox_rootfs(&bundle.join("rootfs"));
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .expect("runc spec");
    assert!(out.status.success(), "{}", describe(&out));
    let p = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    c["root"]["readonly"] = false.into();
    c["hostname"] = HOSTNAME.into();
    fs::write(&p, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    bundle
}

fn steps(out: &Path) -> Vec<u64> {
    cryo_integration::log_lines(out)
        .iter()
        .filter_map(|l| l.strip_prefix("step ")?.trim().parse().ok())
        .collect()
}

fn fails(out: &Path) -> Vec<String> {
    cryo_integration::log_lines(out)
        .into_iter()
        .filter(|l| l.starts_with("FAIL"))
        .collect()
}

/// Waits until `out` shows at least `n` more steps than it had at the call.
fn wait_step(out: &Path, n: usize) {
    let start = steps(out).len();
    let t0 = Instant::now();
    while steps(out).len() < start + n {
        assert!(fails(out).is_empty(), "the workload failed: {:?}", fails(out));
        assert!(
            t0.elapsed() < LINE_TIMEOUT,
            "no new step in {:?}:\n{}",
            LINE_TIMEOUT,
            log_tail(out, 10)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_ok(o: &Output, what: &str, log: &Path) {
    assert!(
        o.status.success(),
        "{what}: {}\n--- {}:\n{}",
        describe(o),
        log.display(),
        log_tail(log, 30)
    );
}

/// The restored container counts on from where the checkpoint froze it
/// (`before` = the last step seen before, `after_out` its new output),
/// with its state intact; runc sees it running and can exec in it.
fn assert_counts_on(r: &Runc, id: &str, before: u64, after_out: &Path) {
    wait_step(after_out, 3);
    let after = steps(after_out);
    assert_eq!(
        after[0],
        before + 1,
        "the restored counter must continue at {} (it shows {:?})",
        before + 1,
        &after[..3]
    );
    assert!(fails(after_out).is_empty(), "{:?}", fails(after_out));
    assert_eq!(r.status(id), "running");
    let pid = r.pid(id).expect("restored pid");
    let ex = r.runc_out(&["exec", id, "hostname"]);
    assert!(ex.status.success(), "runc exec: {}", describe(&ex));
    assert_eq!(String::from_utf8_lossy(&ex.stdout).trim(), HOSTNAME);
    // The counter file inside the container follows the restored counter
    // (the shell truncates it before each write: read until it holds one).
    let c = read_counter(&r.bundle.join("rootfs/counter"));
    assert!(c > before, "counter file {c} after restore, checkpoint at {before}");
    let nspid = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        nspid
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "the restored init is pid 1 of its namespace:\n{nspid}"
    );
}

/// The last step a checkpointed container printed, once its output (the
/// pipe's last lines) has settled.
fn last_step_settled(out: &Path) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    *steps(out).last().unwrap()
}

/// The number in the workload's counter file, read again while the shell
/// is between truncating and writing it.
fn read_counter(p: &Path) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(n) = fs::read_to_string(p).ok().and_then(|t| t.trim().parse().ok()) {
            return n;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{} holds no number", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn runc_checkpoint_and_restore() {
    let Some(r) = Runc::new("runc-basic") else { return };
    let (id, out) = r.start_first();
    let (img, work) = (r.tmp.join("img"), r.tmp.join("work"));
    let cgroups = |pid: i32| fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cg_before = cgroups(r.pid(&id).expect("the container's pid"));
    assert!(
        cg_before.contains(&id),
        "runc put the container in its cgroups: {cg_before}"
    );
    r.checkpoint_ok(&id, &img, &work, &[], "runc checkpoint");
    assert!(img.join("inventory.img").exists() && work.join("stats-dump").exists());
    assert!(
        r.marked().is_empty(),
        "the checkpointed container must be gone: {:?}",
        r.marked()
    );
    let before = last_step_settled(&out);
    let out2 = r.tmp.join("restored.out");
    r.restore_ok(&id, &img, &work, &out2, "runc restore");
    assert_counts_on(&r, &id, before, &out2);
    // runc kill reaches the restored init.
    let pid = r.pid(&id).unwrap();
    assert_eq!(
        cgroups(pid),
        cg_before,
        "the restored init is in the container's cgroups again"
    );
    let k = r.runc_out(&["kill", &id, "KILL"]);
    assert!(k.status.success(), "{}", describe(&k));
    assert!(cryo_integration::wait_pid_gone(pid, Duration::from_secs(5)));
}

/// A unix socket runc sends a pty master to (--console-socket); the
/// master's output is copied line by line into `out`.
fn console_socket(path: &Path, out: &Path) {
    let l = std::os::unix::net::UnixListener::bind(path).expect("bind console socket");
    let out = out.to_path_buf();
    std::thread::spawn(move || {
        let Ok((c, _)) = l.accept() else { return };
        let Some(master) = recv_fd(&c) else { return };
        let mut f = OpenOptions::new().create(true).append(true).open(&out).unwrap();
        for line in BufReader::new(File::from(master)).split(b'\n') {
            let Ok(line) = line else { break };
            let _ = writeln!(f, "{}", String::from_utf8_lossy(&line).trim_end_matches('\r'));
        }
    });
}

/// One fd received with SCM_RIGHTS.
fn recv_fd(c: &std::os::unix::net::UnixStream) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is valid before we fill it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: every pointer in `msg` refers to a live local buffer.
    let n = unsafe { libc::recvmsg(c.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return None;
    }
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR/CMSG_DATA stay within
    // msg_control (checked by msg_controllen).
    unsafe {
        let h = libc::CMSG_FIRSTHDR(&msg);
        if h.is_null() || (*h).cmsg_level != libc::SOL_SOCKET || (*h).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(h) as *const libc::c_int);
        Some(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

#[test]
fn runc_terminal_container_keeps_its_pty() {
    let Some(r) = Runc::new("runc-tty") else { return };
    r.edit_config(|c| c["process"]["terminal"] = true.into());
    fs::write(r.bundle.join("rootfs/want-tty"), b"").unwrap();
    let id = r.id(1);
    let out = r.tmp.join("ctr.out");
    let sock1 = r.tmp.join("console1.sock");
    console_socket(&sock1, &out);
    let o = r.runc_out(&["run", "-d", "--console-socket", s(&sock1), &id]);
    assert!(o.status.success(), "runc run -d (terminal): {}", describe(&o));
    r.track(&id);
    wait_step(&out, 3);
    let (img, work) = (r.tmp.join("img"), r.tmp.join("work"));
    r.checkpoint_ok(&id, &img, &work, &[], "runc checkpoint of a terminal container");
    let before = last_step_settled(&out);
    // The restored container's new pty master arrives on a new socket
    // (orphan-pts-master, forwarded by runc).
    let out2 = r.tmp.join("restored.out");
    let sock2 = r.tmp.join("console2.sock");
    console_socket(&sock2, &out2);
    let rs = r.runc_out(&[
        "restore",
        "-d",
        "--console-socket",
        s(&sock2),
        "--image-path",
        s(&img),
        "--work-path",
        s(&work),
        &id,
    ]);
    assert_ok(&rs, "runc restore of a terminal container", &work.join("restore.log"));
    r.track(&id);
    let log = fs::read_to_string(work.join("restore.log")).unwrap();
    assert!(log.contains("notify orphan-pts-master with fd"), "{log}");
    assert_counts_on(&r, &id, before, &out2);
    // Its stdio is the pty of its own devpts, and it is its controlling tty.
    let ex = r.runc_out(&[
        "exec",
        &id,
        "sh",
        "-c",
        "readlink /proc/1/fd/1; cut -d' ' -f7 /proc/1/stat",
    ]);
    let text = String::from_utf8_lossy(&ex.stdout);
    let mut l = text.lines();
    assert_eq!(l.next(), Some("/dev/pts/0"), "{text}");
    assert_ne!(
        l.next().unwrap_or("0").trim(),
        "0",
        "pid 1 has no controlling terminal: {text}"
    );
}

/// A container with its own cgroup namespace: its cgroup mounts are its
/// own (no externals), made afresh in a new cgroup namespace rooted at the
/// cgroup runc put the restore in.
#[test]
fn runc_container_with_a_cgroup_namespace() {
    let Some(r) = Runc::new("runc-cgns") else { return };
    r.edit_config(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "cgroup"}))
    });
    let (id, out) = r.start_first();
    let (img, work) = (r.tmp.join("img"), r.tmp.join("work"));
    r.checkpoint_ok(&id, &img, &work, &[], "runc checkpoint (cgroup ns)");
    let before = last_step_settled(&out);
    let out2 = r.tmp.join("restored.out");
    r.restore_ok(&id, &img, &work, &out2, "runc restore (cgroup ns)");
    assert_counts_on(&r, &id, before, &out2);
    let pid = r.pid(&id).unwrap();
    let (mine, its) = (
        fs::read_link("/proc/self/ns/cgroup").unwrap(),
        fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap(),
    );
    assert_ne!(mine, its, "the restored init has a cgroup namespace of its own");
    let ex = r.runc_out(&["exec", &id, "cat", "/proc/1/cgroup"]);
    let text = String::from_utf8_lossy(&ex.stdout);
    assert!(
        !text.is_empty() && text.lines().all(|l| l.ends_with(":/")),
        "inside, its cgroups are the namespace roots: {text}"
    );
}

#[test]
fn runc_leave_running_then_restore_under_a_new_id() {
    let Some(r) = Runc::new("runc-leave") else { return };
    let (id, out) = r.start_first();
    let (img, work) = (r.tmp.join("img"), r.tmp.join("work"));
    r.checkpoint_ok(
        &id,
        &img,
        &work,
        &["--leave-running"],
        "runc checkpoint --leave-running",
    );
    let at_dump = *steps(&out).last().unwrap();
    assert_eq!(r.status(&id), "running");
    wait_step(&out, 3);
    // A second copy from the images while the original runs on.
    let id2 = r.id(2);
    let out2 = r.tmp.join("copy.out");
    r.restore_ok(&id2, &img, &work, &out2, "runc restore under a new id");
    wait_step(&out2, 3);
    let first = steps(&out2)[0];
    assert!(
        first <= at_dump + 1 && first + 2 >= at_dump,
        "the copy restarts at the checkpoint ({at_dump}), not at {first}"
    );
    assert!(fails(&out2).is_empty(), "{:?}", fails(&out2));
    assert_eq!(r.status(&id2), "running");
    // Both run, each in its own namespaces.
    wait_step(&out, 2);
    assert_eq!(r.status(&id), "running");
    let (p1, p2) = (r.pid(&id).unwrap(), r.pid(&id2).unwrap());
    for ns in ["pid", "mnt", "net", "uts", "ipc"] {
        let a = fs::read_link(format!("/proc/{p1}/ns/{ns}")).unwrap();
        let b = fs::read_link(format!("/proc/{p2}/ns/{ns}")).unwrap();
        assert_ne!(a, b, "{ns} namespace shared by the original and the copy");
    }
}

#[test]
fn runc_restore_from_another_image_path_after_a_move() {
    let Some(r) = Runc::new("runc-moved") else { return };
    let (id, out) = r.start_first();
    // Images and work dir in separate places, neither the bundle.
    let elsewhere = r.tmp.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let (img, work) = (elsewhere.join("images"), r.tmp.join("dumpwork"));
    r.checkpoint_ok(&id, &img, &work, &[], "runc checkpoint --image-path elsewhere");
    let before = last_step_settled(&out);
    // As between hosts: the directory moves; the restore works elsewhere.
    let moved = r.tmp.join("moved-images");
    fs::rename(&img, &moved).unwrap();
    let work2 = r.tmp.join("restorework");
    let out2 = r.tmp.join("restored.out");
    r.restore_ok(&id, &moved, &work2, &out2, "runc restore from the moved images");
    assert_counts_on(&r, &id, before, &out2);
}

#[test]
fn runc_checkpoint_refusals_leave_the_container_running() {
    let Some(r) = Runc::new("runc-bad") else { return };
    let (img, work) = (r.tmp.join("img"), r.tmp.join("work"));
    // No such container: runc says so before the engine runs.
    let o = r.checkpoint("cryo-no-such-ctr", &img, &work, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not exist") || err.contains("not exist"), "{err}");

    // A network namespace with a device the engine cannot recreate: the
    // dump is refused, runc reports the log, the container runs on.
    let (id, out) = r.start_first();
    {
        let pid = r.pid(&id).unwrap().to_string();
        let add = Command::new("nsenter")
            .args([
                "-t",
                &pid,
                "-n",
                "ip",
                "link",
                "add",
                "cryoveth0",
                "type",
                "veth",
                "peer",
                "name",
                "cryoveth1",
            ])
            .output()
            .unwrap();
        if add.status.success() {
            let o = r.checkpoint(&id, &img, &work, &[]);
            assert!(!o.status.success(), "a dump with an extra net device must be refused");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("dump.log"), "runc names the log: {err}");
            let log = fs::read_to_string(work.join("dump.log")).unwrap_or_default();
            assert!(log.contains("cryoveth") && log.contains("not supported"), "{log}");
            assert_eq!(r.status(&id), "running");
            wait_step(&out, 3);
            let del = Command::new("nsenter")
                .args(["-t", &pid, "-n", "ip", "link", "del", "cryoveth0"])
                .output()
                .unwrap();
            assert!(del.status.success());
        } else {
            panic!("ip link add veth in the container's netns: {}", describe(&add));
        }
    }

    // Its runtime state cannot be read: runc says so, the container runs on.
    let state = r.state.join(&id).join("state.json");
    let hidden = r.state.join(&id).join("state.json.hidden");
    fs::rename(&state, &hidden).unwrap();
    let o = r.checkpoint(&id, &img, &work, &[]);
    fs::rename(&hidden, &state).unwrap();
    assert!(!o.status.success(), "checkpoint without a readable runtime state");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{}",
        describe(&o)
    );
    assert_eq!(r.status(&id), "running");
    wait_step(&out, 2);

    // A stopped container: runc refuses, the engine is not reached.
    let o = r.runc_out(&["kill", &id, "KILL"]);
    assert!(o.status.success(), "{}", describe(&o));
    let t0 = Instant::now();
    while r.status(&id) != "stopped" && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = r.checkpoint(&id, &img, &work, &[]);
    assert!(!o.status.success(), "checkpoint of a stopped container");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stopped"),
        "{}",
        describe(&o)
    );
}

#[test]
fn runc_restore_whose_setup_namespaces_hook_fails_leaves_nothing() {
    let Some(r) = Runc::new("runc-hookfail") else { return };
    let (id, _out) = r.start_first();
    let (img, work) = (r.tmp.join("img"), r.tmp.join("work"));
    r.checkpoint_ok(&id, &img, &work, &[], "runc checkpoint");
    // runc runs prestart hooks at setup-namespaces: make one fail.
    r.edit_config(|c| c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/false"}]}));
    let out2 = r.tmp.join("restored.out");
    let rs = r.restore(&id, &img, &work, &out2);
    assert!(!rs.status.success(), "the restore must fail when the hook fails");
    let err = String::from_utf8_lossy(&rs.stderr);
    assert!(err.contains("restore.log") || err.contains("hook"), "{err}");
    let log = fs::read_to_string(work.join("restore.log")).unwrap_or_default();
    assert!(log.contains("setup-namespaces"), "{log}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        r.marked().is_empty(),
        "processes left after a failed restore: {:?}",
        r.marked()
    );
    assert!(steps(&out2).is_empty(), "the tree ran: {:?}", steps(&out2));
}

/// How a native round trip dumps and restores: (dump args, restore args)
/// given the container's pid, its cgroup v1 bind mountpoints and the
/// scratch directory, with the program to run; the restore args end
/// before --pidfile.
type Cmds = dyn Fn(i32, &[String], &Path, &Path) -> (PathBuf, Vec<String>, Vec<String>);

/// A runc container (stdio /dev/null; its count is read from the counter
/// file in its rootfs) dumped and restored by cryo's own command lines.
fn native_round_trip(tag: &str, cmds: &Cmds, check_dump: &dyn Fn(&Path)) {
    let Some(r) = Runc::new(tag) else { return };
    let id = r.id(1);
    let st = r
        .runc()
        .args(["run", "-d", &id])
        .current_dir(&r.bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    r.track(&id);
    let counter = r.bundle.join("rootfs/counter");
    let fail = r.bundle.join("rootfs/fail");
    let count = || -> u64 {
        fs::read_to_string(&counter)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while count() < 3 {
        assert!(t0.elapsed() < LINE_TIMEOUT, "the container does not count");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = r.pid(&id).unwrap();
    // The cgroup v1 binds the container has (the host's hierarchies).
    let mi = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let cg: Vec<String> = mi
        .lines()
        .filter(|l| l.contains(" - cgroup "))
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect();
    let (prog, dump, mut restore) = cmds(pid, &cg, r.tmp.path(), &r.bundle);
    let o = Command::new(&prog).args(&dump).output().unwrap();
    assert!(o.status.success(), "cryo {}: {}", dump.join(" "), describe(&o));
    assert!(r.marked().is_empty(), "the dumped container still runs");
    let at = count();
    check_dump(r.tmp.path());
    let pidfile = r.tmp.join("restored.pid");
    restore.extend(["--pidfile".to_string(), s(&pidfile).to_string()]);
    r.cleanup.pidfile(&pidfile);
    let o = Command::new(&prog)
        .args(&restore)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "cryo {}: {}", restore.join(" "), describe(&o));
    let t0 = Instant::now();
    while count() < at + 3 {
        assert!(!fail.exists(), "{}", fs::read_to_string(&fail).unwrap_or_default());
        assert!(
            t0.elapsed() < LINE_TIMEOUT,
            "the restored container does not count on from {at}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!fail.exists());
    let rpid = cryo_integration::read_pidfile(&pidfile).unwrap();
    let status = fs::read_to_string(format!("/proc/{rpid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "{status}"
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// `cryo dump --bundle --tar` of a runc container writes podman's export
/// layout, and `cryo restore --tar --root --ext-mount` brings it back in
/// fresh namespaces, counting on (the counter file in its rootfs).
#[test]
fn cryo_tar_of_a_runc_container_in_podman_layout() {
    native_round_trip(
        "runc-tar",
        &|pid, cg, tmp, bundle| {
            let tar = tmp.join("ctr.tar");
            let dump = strings(&["dump", "-t", &pid.to_string(), "--bundle", s(bundle), "--tar", s(&tar)]);
            let mut restore = strings(&["restore", "--tar", s(&tar), "-d", "--root", s(&bundle.join("rootfs"))]);
            for m in cg {
                // The key is the mountpoint; the host has the same hierarchy there.
                restore.extend(["--ext-mount".to_string(), format!("{m}:{m}")]);
            }
            (cryo_bin(), dump, restore)
        },
        &|tmp| {
            let o = Command::new("tar")
                .args(["-tf", s(&tmp.join("ctr.tar"))])
                .output()
                .unwrap();
            let list = String::from_utf8_lossy(&o.stdout);
            for want in [
                "checkpoint/inventory.img",
                "checkpoint/pstree.img",
                "config.dump",
                "spec.dump",
                "stats-dump",
            ] {
                assert!(list.lines().any(|l| l == want), "{want} not in the tar:\n{list}");
            }
        },
    );
}

/// CRIU's command line (cryo called as `criu`) with the options CRIU's own
/// users pass for a container: --root and --external mnt[KEY]:VAL.
#[test]
fn criu_cli_dump_and_restore_of_a_runc_container() {
    native_round_trip(
        "runc-criucli",
        &|pid, cg, tmp, bundle| {
            let img = tmp.join("criu-img");
            let mut dump = strings(&["dump", "-t", &pid.to_string(), "-D", s(&img), "-v4", "-o", "dump.log"]);
            let mut restore = strings(&["restore", "-D", s(&img), "-d", "--root", s(&bundle.join("rootfs"))]);
            for m in cg {
                dump.extend(["--external".to_string(), format!("mnt[{m}]:{m}")]);
                restore.extend(["--external".to_string(), format!("mnt[{m}]:{m}")]);
            }
            // As `criu`: the link to the multi-call binary Runc::new made.
            (tmp.join("criu"), dump, restore)
        },
        &|tmp| {
            let names = cryo_integration::cycle::crit_decodes_all(&tmp.join("criu-img"));
            assert!(names.iter().any(|n| n.starts_with("mountpoints-")), "{names:?}");
        },
    );
}

// ---- a container whose TCP server has a client outside it ----------------------

/// Copies `bin` into the rootfs as /bin/NAME with the shared libraries
/// ldd lists for it, at the same paths (none for a static binary).
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

/// A runc container whose network namespace is one the test made (given
/// to runc by path, so runc hands it to the engine as external at dump and
/// back as extRootNetNS at restore), linked by a veth to the client's
/// namespace. The container's init is the tcpstream server; the client
/// streams numbered messages to it and back from outside. A checkpoint
/// without --tcp-established is refused naming the connection and the
/// container runs on; with it (checkpoint and restore), the stream goes on
/// with nothing lost, duplicated or reordered and no reset: both sides'
/// own verdicts are PASS after a real pause.
#[test]
fn runc_container_tcp_server_keeps_its_outside_client_across_checkpoint_and_restore() {
    let Some(r) = Runc::new("runc-tcp") else { return };
    let tag = std::process::id();
    let (ncl, nct) = (format!("cryo-rtc-{tag}"), format!("cryo-rts-{tag}"));
    let mut nets = Netns::new();
    nets.add(&ncl);
    nets.add(&nct);
    let (dc, ds) = (format!("crc{tag}"), format!("crs{tag}"));
    Netns::link(&ncl, &dc, "10.213.10.1/24", &nct, &ds, "10.213.10.2/24");
    // The server inside the container, in the namespace made above.
    let rootfs = r.bundle.join("rootfs");
    install_in_rootfs(&rootfs, cryo_integration::bin!("tcpstream"), "tcpstream");
    let netns_path = format!("/run/netns/{nct}");
    let marker = format!("M={}", r.marker);
    r.edit_config(|c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = netns_path.clone().into();
            }
        }
        c["process"]["args"] = serde_json::json!([
            "/bin/tcpstream",
            "--role",
            "server",
            "--addr",
            "10.213.10.2",
            "--log",
            "/srv.log",
            "--tag",
            marker
        ]);
    });
    let id = r.id(1);
    let out = r.tmp.join("ctr.out");
    let o = r.run_piped(&["run", "-d", &id], &out);
    assert!(o.status.success(), "runc run -d {id}: {}", describe(&o));
    r.track(&id);
    let slog = rootfs.join("srv.log");
    let port = cryo_integration::wait_for_line(&slog, "PORT ", LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let port = port.trim().trim_start_matches("PORT ").to_string();
    // The client outside the container.
    let clog = r.tmp.join("client.log");
    let tcpstream = s(cryo_integration::bin!("tcpstream")).to_string();
    let net = format!("--net=/run/netns/{ncl}");
    let cw = cryo_integration::Workload::spawn(
        Path::new("/usr/bin/nsenter"),
        &[
            &net,
            "--",
            &tcpstream,
            "--role",
            "client",
            "--addr",
            "10.213.10.2",
            "--port",
            &port,
        ],
        &clog,
    )
    .expect("spawn the client");
    r.cleanup.pid(cw.pid);
    cw.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    cryo_integration::wait_for_line(&slog, "READY", LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(400));
    let pid0 = r.pid(&id).expect("the server's pid");

    // Without --tcp-established: refused, naming the connection; the
    // container runs on and its connection is left unlocked.
    let (img0, work0) = (r.tmp.join("img-refused"), r.tmp.join("work-refused"));
    let o = r.checkpoint(&id, &img0, &work0, &[]);
    assert!(
        !o.status.success(),
        "a checkpoint of an established connection without the flag must fail"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("dump.log"),
        "runc names the log: {}",
        describe(&o)
    );
    let log = fs::read_to_string(work0.join("dump.log")).unwrap_or_default();
    assert!(
        log.contains(&format!(
            "established TCP connection 10.213.10.2:{port} -> 10.213.10.1:"
        )) && log.contains("--tcp-established"),
        "the refusal names the connection and the flag:\n{log}"
    );
    assert_eq!(r.status(&id), "running");
    assert_eq!(r.pid(&id), Some(pid0));
    assert!(Netns::lock_tables(&nct).is_empty(), "{:?}", Netns::lock_tables(&nct));
    std::thread::sleep(Duration::from_millis(300));

    // With it: the container goes, its connection stays locked meanwhile.
    let (img, work) = (r.tmp.join("img"), r.tmp.join("work"));
    r.checkpoint_ok(
        &id,
        &img,
        &work,
        &["--tcp-established"],
        "runc checkpoint --tcp-established",
    );
    assert!(
        cryo_integration::wait_pid_gone(pid0, Duration::from_secs(5)),
        "the server still runs"
    );
    assert_eq!(
        Netns::lock_tables(&nct).len(),
        1,
        "the connection is locked in the container's namespace between checkpoint and restore"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(cryo_integration::pid_running(cw.pid), "the client must not notice");
    let out2 = r.tmp.join("restored.out");
    let o = r.run_piped(
        &[
            "restore",
            "-d",
            "--tcp-established",
            "--image-path",
            s(&img),
            "--work-path",
            s(&work),
            &id,
        ],
        &out2,
    );
    assert_ok(&o, "runc restore --tcp-established", &work.join("restore.log"));
    r.track(&id);
    assert_eq!(r.status(&id), "running");
    let rpid = r.pid(&id).expect("the restored server's pid");
    assert_eq!(
        fs::read_link(format!("/proc/{rpid}/ns/net")).unwrap().to_string_lossy(),
        format!(
            "net:[{}]",
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&netns_path).unwrap())
        ),
        "the restored server is in the namespace runc gave back"
    );
    assert!(
        Netns::lock_tables(&nct).is_empty(),
        "the lock outlived the restore: {:?}",
        Netns::lock_tables(&nct)
    );
    // Data flows again once both sides retransmit.
    cryo_integration::wait_for_line(&clog, "GAP ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(500));
    cryo_integration::signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    cw.usr1().expect("usr1");
    let sv = cryo_integration::wait_for_verdict(&slog, LINE_TIMEOUT).unwrap_or_else(|e| panic!("server: {e}"));
    let cv = cryo_integration::wait_for_verdict(&clog, LINE_TIMEOUT).unwrap_or_else(|e| panic!("client: {e}"));
    judge_stream(&sv, &cv, 300, "checkpoint");
}

/// runc's pre-copy: `runc checkpoint --pre-dump --image-path A` (the
/// container runs on), `runc checkpoint --parent-path ../A --image-path B`
/// (only what changed since A is copied; the rest is PE_PARENT), then
/// `runc restore --image-path B`: the restored shell counts on from B.
#[test]
fn runc_pre_dump_then_checkpoint_with_parent_path_then_restore() {
    let Some(r) = Runc::new("runc-predump") else { return };
    let id = r.id(1);
    let out = r.tmp.join("ctr.out");
    r.start(&id, &out);
    let (a, b) = (r.tmp.join("A"), r.tmp.join("B"));
    let (wa, wb) = (r.tmp.join("workA"), r.tmp.join("workB"));
    let ck = r.checkpoint(&id, &a, &wa, &["--pre-dump"]);
    assert_ok(&ck, "runc checkpoint --pre-dump", &wa.join("dump.log"));
    assert_eq!(r.status(&id), "running", "a pre-dump leaves the container running");
    let has_pages = |d: &Path| {
        fs::read_dir(d)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pages-") && e.metadata().unwrap().len() > 0)
    };
    assert!(has_pages(&a), "the pre-dump wrote no pages");
    assert!(!a.join("inventory.img").exists(), "a pre-dump holds memory only");
    wait_step(&out, 3);
    let ck = r.checkpoint(&id, &b, &wb, &["--parent-path", "../A"]);
    assert_ok(&ck, "runc checkpoint --parent-path ../A", &wb.join("dump.log"));
    assert_eq!(fs::read_link(b.join("parent")).unwrap(), Path::new("../A"));
    assert!(b.join("inventory.img").exists());
    // Pages unchanged since A were not copied again.
    let show = Command::new(cryo_bin())
        .args(["show", s(&wb.join("stats-dump"))])
        .output()
        .expect("cryo show");
    assert!(show.status.success(), "{}", describe(&show));
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("stats JSON");
    let parent = v
        .pointer("/entries/0/dump/pages_skipped_parent")
        .and_then(|x| x.as_u64());
    assert!(parent.unwrap_or(0) > 0, "no page taken from the parent: {v}");
    assert!(
        r.marked().is_empty(),
        "the checkpointed container must be gone: {:?}",
        r.marked()
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = *steps(&out).last().unwrap();
    let out2 = r.tmp.join("restored.out");
    let rs = r.restore(&id, &b, &wb, &out2);
    assert_ok(&rs, "runc restore --image-path B", &wb.join("restore.log"));
    assert_counts_on(&r, &id, before, &out2);
}

/// `runc restore --lazy-pages` after a pre-dump: runc sends lazy_pages on
/// the RESTORE request. The container starts before the parent (pre-dump)
/// images' pages are in its memory; runc's criu (cryo) fills them after
/// its reply and exits once all are in (runc waits for it). The restored
/// counter continues and its checks pass.
#[test]
fn runc_restore_with_lazy_pages_fills_the_parent_pages() {
    let Some(r) = Runc::new("runc-lazy") else { return };
    let id = r.id(1);
    let out = r.tmp.join("ctr.out");
    r.start(&id, &out);
    let (a, b) = (r.tmp.join("A"), r.tmp.join("B"));
    let (wa, wb) = (r.tmp.join("workA"), r.tmp.join("workB"));
    let ck = r.checkpoint(&id, &a, &wa, &["--pre-dump"]);
    assert_ok(&ck, "runc checkpoint --pre-dump", &wa.join("dump.log"));
    wait_step(&out, 2);
    let ck = r.checkpoint(&id, &b, &wb, &["--parent-path", "../A"]);
    assert_ok(&ck, "runc checkpoint --parent-path ../A", &wb.join("dump.log"));
    std::thread::sleep(Duration::from_millis(300));
    let before = *steps(&out).last().unwrap();
    let out2 = r.tmp.join("restored.out");
    let o = r.run_piped(
        &[
            "restore",
            "-d",
            "--lazy-pages",
            "--image-path",
            s(&b),
            "--work-path",
            s(&wb),
            &id,
        ],
        &out2,
    );
    if o.status.success() {
        r.track(&id);
    }
    assert_ok(&o, "runc restore --lazy-pages", &wb.join("restore.log"));
    let log = fs::read_to_string(wb.join("restore.log")).unwrap_or_default();
    assert!(
        log.contains("of memory to come lazily") && log.contains("KiB copied"),
        "the restore was not lazy:\n{log}"
    );
    assert_counts_on(&r, &id, before, &out2);
}
