//! End-to-end tests of cryo as CRIU's drop-in: the RPC (`criu swrk <fd>`)
//! and the CRIU command-line dialect (the binary run under the name `criu`).
//!
//! The RPC client here is written from the wire facts alone (its own
//! protobuf varint/length-delimited coder, field numbers from
//! calling-conventions.md §4), not with cryo's generated types, so that it
//! checks the bytes cryo puts on the wire. Like runc, it creates a
//! SOCK_SEQPACKET socketpair, hands one end to `swrk <fd>`, sends one
//! request per datagram, acknowledges every notification and reads the
//! final reply; the images and work directories are its own descriptors
//! (the engine finds them through /proc/<peer>/fd).
//!
//! VERSION/FEATURE_CHECK need no root; the dump/restore tests do.

use cryo_integration::{
    bin, cryo_bin, describe, log_tail, pid_running, require_root, s, signal, wait_for_nth_verdict, wait_pid_exited,
    Cleanup, TempDir, Workload, LINE_TIMEOUT,
};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const GONE_TIMEOUT: Duration = Duration::from_secs(15);
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

// ---- a minimal proto2 coder -------------------------------------------

/// criu_req_type values.
mod ty {
    pub const EMPTY: u64 = 0;
    pub const DUMP: u64 = 1;
    pub const RESTORE: u64 = 2;
    pub const PRE_DUMP: u64 = 4;
    pub const PAGE_SERVER: u64 = 5;
    pub const NOTIFY: u64 = 6;
    pub const FEATURE_CHECK: u64 = 9;
    pub const VERSION: u64 = 10;
}

#[derive(Default, Clone)]
struct Enc(Vec<u8>);

impl Enc {
    fn raw_varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn varint(mut self, field: u32, v: u64) -> Enc {
        self.raw_varint((field as u64) << 3);
        self.raw_varint(v);
        self
    }
    fn int(self, field: u32, v: i32) -> Enc {
        // int32: negative values are sign-extended to 64 bits.
        self.varint(field, v as i64 as u64)
    }
    fn bytes(mut self, field: u32, b: &[u8]) -> Enc {
        self.raw_varint(((field as u64) << 3) | 2);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, field: u32, s: &str) -> Enc {
        self.bytes(field, s.as_bytes())
    }
    fn msg(self, field: u32, m: Enc) -> Enc {
        self.bytes(field, &m.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Varint(u64),
    Bytes(Vec<u8>),
}

/// A decoded message: (field number, value) in wire order.
#[derive(Debug, Clone, Default)]
struct Msg(Vec<(u32, Val)>);

fn read_varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or("truncated varint")?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

impl Msg {
    fn decode(b: &[u8]) -> Result<Msg, String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let key = read_varint(b, &mut i)?;
            let (field, wt) = ((key >> 3) as u32, key & 7);
            match wt {
                0 => out.push((field, Val::Varint(read_varint(b, &mut i)?))),
                2 => {
                    let n = read_varint(b, &mut i)? as usize;
                    let end = i.checked_add(n).filter(|&e| e <= b.len()).ok_or("truncated bytes")?;
                    out.push((field, Val::Bytes(b[i..end].to_vec())));
                    i = end;
                }
                other => return Err(format!("unexpected wire type {other} for field {field}")),
            }
        }
        Ok(Msg(out))
    }
    fn varint(&self, f: u32) -> Option<u64> {
        self.0.iter().rev().find_map(|(n, v)| match v {
            Val::Varint(x) if *n == f => Some(*x),
            _ => None,
        })
    }
    fn int(&self, f: u32) -> Option<i32> {
        self.varint(f).map(|v| v as i64 as i32)
    }
    fn bytes(&self, f: u32) -> Option<&[u8]> {
        self.0.iter().rev().find_map(|(n, v)| match v {
            Val::Bytes(x) if *n == f => Some(x.as_slice()),
            _ => None,
        })
    }
    fn str(&self, f: u32) -> Option<String> {
        self.bytes(f).map(|b| String::from_utf8_lossy(b).into_owned())
    }
    fn sub(&self, f: u32) -> Option<Msg> {
        self.bytes(f).map(|b| Msg::decode(b).expect("sub-message"))
    }
    fn has(&self, f: u32) -> bool {
        self.0.iter().any(|(n, _)| *n == f)
    }
}

/// A decoded criu_resp.
#[derive(Debug, Clone)]
struct Resp {
    raw: Vec<u8>,
    m: Msg,
}

impl Resp {
    fn ty(&self) -> u64 {
        self.m.varint(1).expect("criu_resp.type is required")
    }
    fn success(&self) -> bool {
        self.m.varint(2).expect("criu_resp.success is required") != 0
    }
    fn errmsg(&self) -> String {
        self.m.str(9).unwrap_or_default()
    }
    /// notify{script, pid}
    fn notify(&self) -> Option<(String, Option<i32>)> {
        let n = self.m.sub(5)?;
        Some((n.str(1).unwrap_or_default(), n.int(2)))
    }
}

// ---- the client ----------------------------------------------------------

/// One `swrk` engine process and our end of its socket.
struct Swrk {
    sock: OwnedFd,
    child: Child,
    stderr: PathBuf,
    _tmp: TempDir,
}

/// How to start the engine.
enum Launch {
    /// `cryo swrk <fd>`
    Native,
    /// `<dir>/criu swrk <fd>` through a symlink named criu.
    Symlink,
    /// `cryo` with argv[0] = "criu"
    Argv0,
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-int array for the kernel to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A symlink named `criu` to the cryo binary, in a fresh directory.
fn criu_link(tmp: &TempDir) -> PathBuf {
    let link = tmp.join("criu");
    std::os::unix::fs::symlink(cryo_bin(), &link).expect("symlink criu");
    link
}

impl Swrk {
    fn start(launch: Launch) -> Swrk {
        let tmp = TempDir::new("swrk");
        let (ours, theirs) = seqpacket_pair();
        // Like go-criu: the engine's end keeps its number (not remapped to 3).
        let n = theirs.as_raw_fd();
        let mut cmd = match launch {
            Launch::Native => Command::new(cryo_bin()),
            Launch::Symlink => Command::new(criu_link(&tmp)),
            Launch::Argv0 => {
                let mut c = Command::new(cryo_bin());
                c.arg0("criu");
                c
            }
        };
        let stderr = tmp.join("stderr");
        cmd.args(["swrk", &n.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&stderr).expect("stderr file")));
        // SAFETY: the closure only clears FD_CLOEXEC with fcntl, which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(n, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn swrk");
        drop(theirs);
        let tv = libc::timeval {
            tv_sec: RPC_TIMEOUT.as_secs() as i64,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval for the duration of the call.
        unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Swrk {
            sock: ours,
            child,
            stderr,
            _tmp: tmp,
        }
    }

    fn send(&self, m: &Enc) {
        // SAFETY: the buffer is valid for its length.
        let r = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                m.0.as_ptr().cast(),
                m.0.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        assert_eq!(r, m.0.len() as isize, "send: {}", std::io::Error::last_os_error());
    }

    /// The next datagram; None at EOF. Uses runc's 40960-byte buffer and
    /// fails like runc on a reply that fills it.
    fn recv(&self) -> Option<Resp> {
        let mut buf = vec![0u8; 40960];
        // SAFETY: the buffer is writable for its length.
        let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(
            n >= 0,
            "recv: {} (engine stderr: {})",
            std::io::Error::last_os_error(),
            self.err()
        );
        if n == 0 {
            return None;
        }
        assert!((n as usize) < buf.len(), "reply fills runc's 40960-byte buffer");
        buf.truncate(n as usize);
        let m = Msg::decode(&buf).unwrap_or_else(|e| panic!("undecodable reply {buf:02x?}: {e}"));
        Some(Resp { raw: buf, m })
    }

    /// Reads until the final reply, acknowledging notifications with
    /// `ack(script)` (true = success). Returns the notifications seen and
    /// the final reply (None if the engine closed the socket).
    fn converse(&self, mut ack: impl FnMut(&str, Option<i32>) -> bool) -> (Vec<(String, Option<i32>)>, Option<Resp>) {
        let mut seen = Vec::new();
        loop {
            let Some(r) = self.recv() else {
                return (seen, None);
            };
            if r.ty() != ty::NOTIFY {
                return (seen, Some(r));
            }
            assert!(r.success(), "a notification with success=false: {:?}", r.m);
            let (script, pid) = r.notify().expect("NOTIFY without notify{}");
            let ok = ack(&script, pid);
            seen.push((script, pid));
            self.send(&Enc::default().varint(1, ty::NOTIFY).varint(3, ok as u64));
        }
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Closes our end (like runc: shutdown, then wait) and reaps the engine.
    fn finish(mut self) -> (ExitStatus, String) {
        // SAFETY: shutdown on our own socket.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_WR) };
        let end = Instant::now() + RPC_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return (st, self.err());
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("the swrk engine did not exit after its reply");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Swrk {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn open_dir(p: &Path) -> File {
    File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// criu_opts as runc 1.1.5 fills them for a plain process (minus the
/// container fields): images/work dir fds, log, notify_scripts, ...
fn base_opts(images: &File, work: &File, log: &str) -> Enc {
    Enc::default()
        .int(1, images.as_raw_fd()) // images_dir_fd
        .varint(9, 4) // log_level
        .str(10, log) // log_file
        .varint(12, 1) // notify_scripts
        .varint(16, 0) // auto_dedup
        .int(17, work.as_raw_fd()) // work_dir_fd
        .varint(24, 1) // manage_cgroups
        .varint(50, 1) // orphan_pts_master
}

/// Checks a stats file in CRIU's service-image layout; returns the
/// decoded stats_entry.
fn check_stats(path: &Path) -> Msg {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() >= 12, "{} too short", path.display());
    let u = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!(u(0), 0x5510_5940, "service magic of {}", path.display());
    assert_eq!(u(4), 0x5709_3306, "stats magic of {}", path.display());
    let n = u(8) as usize;
    assert_eq!(b.len(), 12 + n, "{} payload length", path.display());
    Msg::decode(&b[12..]).expect("stats_entry")
}

fn inner_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// A free pid (nothing in /proc at the top of the pid range).
fn unused_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (1..1000)
        .map(|k| max - k)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

// ---- tests without root ------------------------------------------------

#[test]
fn version_reply_is_criu_3_17_1_for_every_launch_form() {
    for launch in [Launch::Native, Launch::Symlink, Launch::Argv0] {
        let w = Swrk::start(launch);
        w.send(&Enc::default().varint(1, ty::VERSION));
        let r = w.recv().expect("a VERSION reply");
        // The exact bytes Debian's criu 3.17.1 sends (§4.8).
        assert_eq!(
            r.raw,
            [0x08, 0x0a, 0x10, 0x01, 0x52, 0x06, 0x08, 0x03, 0x10, 0x11, 0x20, 0x01]
        );
        let v = r.m.sub(10).unwrap();
        let number = v.int(1).unwrap() * 10000 + v.int(2).unwrap() * 100 + v.int(4).unwrap_or(0);
        assert!(number >= 31600, "runc/podman/CRI-O gates need >= 31600, got {number}");
        assert!(!v.has(3), "a gitid would bump the computed version");
        let (st, err) = w.finish();
        assert!(st.success(), "VERSION must exit 0: {st:?} {err}");
        assert!(err.is_empty(), "nothing on stderr: {err}");
    }
}

#[test]
fn feature_check_answers_every_field_and_keep_open_serves_more() {
    let w = Swrk::start(Launch::Symlink);
    // go-criu's probe (§4.8 bytes), with keep_open so VERSION can follow.
    w.send(
        &Enc::default()
            .varint(1, ty::FEATURE_CHECK)
            .varint(4, 1)
            .msg(5, Enc::default().varint(1, 1).varint(2, 1)),
    );
    let r = w.recv().expect("FEATURE_CHECK reply");
    assert_eq!(r.ty(), ty::FEATURE_CHECK);
    assert!(r.success());
    let f = r.m.sub(8).expect("features{} in the reply");
    for field in [1, 2, 3] {
        assert!(f.has(field), "features field {field} must be set: {f:?}");
    }
    // The answers are this kernel's: the test probes on its own what the
    // engine needs (uffd async write-protect; a uffd that also takes
    // kernel faults, with the fork/remap/remove/unmap events). No pidfd
    // store is kept.
    assert_eq!(
        f.varint(1),
        Some(uffd_api_ok(true, UFFD_WP_ASYNC | UFFD_WP_UNPOPULATED) as u64)
    );
    assert_eq!(f.varint(2), Some(uffd_api_ok(false, UFFD_NONCOOP) as u64));
    assert_eq!(f.varint(3), Some(0));
    w.send(&Enc::default().varint(1, ty::VERSION));
    assert_eq!(w.recv().expect("VERSION after keep_open").ty(), ty::VERSION);
    let (st, _) = w.finish();
    assert!(st.success(), "{st:?}");
}

const UFFD_WP_ASYNC: u64 = 1 << 15;
const UFFD_WP_UNPOPULATED: u64 = 1 << 13;
/// UFFD_FEATURE_EVENT_FORK | _REMAP | _REMOVE | _UNMAP.
const UFFD_NONCOOP: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6);

/// userfaultfd (with UFFD_USER_MODE_ONLY if `user_only`) + UFFDIO_API
/// asking for `features`.
fn uffd_api_ok(user_only: bool, features: u64) -> bool {
    let flags = libc::O_CLOEXEC | if user_only { 1 } else { 0 };
    // SAFETY: userfaultfd takes only flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd was just returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = [0xAAu64, features, 0];
    // SAFETY: api is a writable struct uffdio_api (3 x u64); UFFDIO_API =
    // _IOWR(0xAA, 0x3F, 24 bytes).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0xc018_aa3f, api.as_mut_ptr()) };
    r == 0
}

#[test]
fn malformed_and_unknown_requests_get_empty_replies() {
    let w = Swrk::start(Launch::Native);
    w.send(&Enc::default().varint(1, 99));
    let r = w.recv().expect("a reply");
    assert_eq!(r.ty(), ty::EMPTY);
    assert!(!r.success());
    assert!(r.errmsg().contains("99"), "{}", r.errmsg());
    let (st, _) = w.finish();
    assert_eq!(st.code(), Some(255), "{st:?}");

    let w = Swrk::start(Launch::Native);
    w.send(&Enc(vec![0x08])); // truncated varint
    let r = w.recv().expect("a reply");
    assert_eq!((r.ty(), r.success()), (ty::EMPTY, false));
    let (st, _) = w.finish();
    assert_eq!(st.code(), Some(255), "{st:?}");
}

#[test]
fn swrk_usage_errors() {
    for args in [vec!["swrk"], vec!["swrk", "x"], vec!["swrk", "1", "2"]] {
        let tmp = TempDir::new("swrk-usage");
        let out = Command::new(criu_link(&tmp)).args(&args).output().expect("run");
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
    }
    // fd 0 is /dev/null, not a socket.
    let tmp = TempDir::new("swrk-usage");
    let out = Command::new(criu_link(&tmp))
        .args(["swrk", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Descriptor 0"),
        "{}",
        describe(&out)
    );
}

#[test]
fn cli_dialect_version_and_refusals() {
    let tmp = TempDir::new("criu-cli");
    let criu = criu_link(&tmp);
    let out = Command::new(&criu).arg("--version").output().expect("run");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Version: 3.17.1\n"));
    // What still cannot work is refused on one line naming the option.
    for (args, want) in [
        (
            vec!["dump", "-t", "1", "-D", s(tmp.path()), "--lazy-pages"],
            "dump --lazy-pages is not supported by cryo",
        ),
        (
            vec!["restore", "-D", s(tmp.path()), "--status-fd", "3"],
            "Option --status-fd is not supported by cryo (",
        ),
        (
            vec!["dump", "-t", "1", "-D", s(tmp.path()), "--tls"],
            "Option --tls is not supported by cryo (",
        ),
        (
            vec!["restore", "-D", s(tmp.path()), "--empty-ns", "pid"],
            "Option --empty-ns pid is not supported by cryo (",
        ),
        (vec!["lazy-pages", "-D", s(tmp.path())], "there is no lazy-pages daemon"),
    ] {
        let out = Command::new(&criu).args(&args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line: {err}");
    }
    let out = Command::new(&criu)
        .args(["dump", "--no-such-option"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown option --no-such-option"));
    // criu check --feature answers as FEATURE_CHECK does, probed here.
    let mem = uffd_api_ok(true, UFFD_WP_ASYNC | UFFD_WP_UNPOPULATED);
    let lazy = uffd_api_ok(false, UFFD_NONCOOP);
    for (f, have) in [
        ("mem_dirty_track", mem),
        ("lazy_pages", lazy),
        ("uffd-noncoop", lazy),
        ("external_net_ns", true),
    ] {
        let out = Command::new(&criu)
            .args(["check", "--feature", f])
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(if have { 0 } else { 1 }),
            "{f}: {}",
            describe(&out)
        );
        let want = format!("{f} is {}supported", if have { "" } else { "not " });
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&want),
            "{}",
            describe(&out)
        );
    }
}

/// Runs `criu ARGS` with stdout and stderr in files, not pipes: a restored
/// tree's namespace init may keep the engine's stdio open (an engine
/// limitation), and a pipe would then never see EOF.
fn run_criu(criu: &Path, args: &[&str], dir: &Path) -> std::process::Output {
    let (o, e) = (dir.join("criu.stdout"), dir.join("criu.stderr"));
    let st = Command::new(criu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&o).expect("stdout file"))
        .stderr(File::create(&e).expect("stderr file"))
        .status()
        .expect("run criu");
    std::process::Output {
        status: st,
        stdout: std::fs::read(&o).unwrap_or_default(),
        stderr: std::fs::read(&e).unwrap_or_default(),
    }
}

// ---- dump and restore over RPC (root) -----------------------------------

struct Scene {
    cl: Cleanup,
    tmp: TempDir,
    img: PathBuf,
    work: PathBuf,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let tmp = TempDir::new(tag);
        let img = tmp.join("img");
        let work = tmp.join("work");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        Scene {
            cl: Cleanup::new(),
            tmp,
            img,
            work,
        }
    }
}

/// DUMP over RPC; returns the notifications and the final reply.
fn rpc_dump(
    sc: &Scene,
    pid: i32,
    extra: Enc,
    ack: impl FnMut(&str, Option<i32>) -> bool,
) -> (Vec<String>, Resp, ExitStatus) {
    let (img, work) = (open_dir(&sc.img), open_dir(&sc.work));
    let mut opts = base_opts(&img, &work, "dump.log").int(2, pid);
    opts.0.extend_from_slice(&extra.0);
    let w = Swrk::start(Launch::Symlink);
    w.send(&Enc::default().varint(1, ty::DUMP).msg(2, opts));
    let (seen, reply) = w.converse(ack);
    let reply = reply.unwrap_or_else(|| panic!("no DUMP reply; log:\n{}", log_tail(&sc.work.join("dump.log"), 30)));
    let (st, err) = w.finish();
    assert!(err.is_empty(), "the engine wrote to stderr: {err}");
    (seen.into_iter().map(|(s, _)| s).collect(), reply, st)
}

/// RESTORE over RPC.
fn rpc_restore(
    sc: &Scene,
    log: &str,
    ack: impl FnMut(&str, Option<i32>) -> bool,
) -> (Vec<(String, Option<i32>)>, Resp, ExitStatus) {
    let (img, work) = (open_dir(&sc.img), open_dir(&sc.work));
    let opts = base_opts(&img, &work, log).varint(26, 1); // rst_sibling
    let w = Swrk::start(Launch::Native);
    w.send(&Enc::default().varint(1, ty::RESTORE).msg(2, opts));
    let (seen, reply) = w.converse(ack);
    let reply = reply.unwrap_or_else(|| panic!("no RESTORE reply; log:\n{}", log_tail(&sc.work.join(log), 30)));
    let (st, err) = w.finish();
    assert!(err.is_empty(), "the engine wrote to stderr: {err}");
    (seen, reply, st)
}

fn spawn_memsum(sc: &Scene) -> (Workload, PathBuf) {
    let log = sc.tmp.join("wl.log");
    let w = Workload::spawn(bin!("memsum"), &["--mib", "4"], &log).expect("spawn memsum");
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    (w, log)
}

#[test]
fn rpc_dump_then_restore_with_notifications() {
    require_root!();
    let sc = Scene::new("rpc-rt");
    let (mut w, wl_log) = spawn_memsum(&sc);

    let (seen, reply, st) = rpc_dump(&sc, w.pid, Enc::default(), |_, _| true);
    let dump_log = sc.work.join("dump.log");
    assert!(
        reply.success(),
        "DUMP failed: {} ({:?})\n{}",
        reply.errmsg(),
        reply.m,
        log_tail(&dump_log, 30)
    );
    assert_eq!(reply.ty(), ty::DUMP);
    assert!(
        reply.m.sub(3).is_some(),
        "DUMP replies carry dump{{}} (libcriu dereferences it)"
    );
    assert_eq!(seen, ["pre-dump", "post-dump"]);
    assert!(st.success(), "DUMP engine exit {st:?}");
    // The original is gone, as with CRIU (no leave_running).
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "the dumped workload still runs");
    // Files callers read back: inventory.img in the images dir; the log
    // and stats-dump in the work dir.
    assert!(sc.img.join("inventory.img").exists());
    assert!(dump_log.exists(), "dump.log in the work dir");
    let stats = check_stats(&sc.work.join("stats-dump"));
    let d = stats.sub(1).expect("stats_entry.dump");
    for f in [1, 2, 3, 4, 5, 6, 7, 9] {
        assert!(d.has(f), "required dump_stats_entry field {f} missing: {d:?}");
    }

    let (seen, reply, st) = rpc_restore(&sc, "restore.log", |_, _| true);
    let restore_log = sc.work.join("restore.log");
    if let Some(p) = reply.m.sub(4).and_then(|r| r.int(1)) {
        sc.cl.pid(p);
    }
    assert!(
        reply.success(),
        "RESTORE failed: {}\n{}",
        reply.errmsg(),
        log_tail(&restore_log, 30)
    );
    assert!(st.success(), "RESTORE engine exit {st:?}");
    let pid = reply.m.sub(4).and_then(|r| r.int(1)).expect("restore{pid}");
    let names: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "post-restore",
            "pre-resume",
            "post-resume"
        ]
    );
    let post_restore = seen.iter().find(|(s, _)| s == "post-restore").unwrap().1;
    assert_eq!(post_restore, Some(pid), "post-restore names the restored root");
    assert_eq!(seen[1].1, Some(pid), "setup-namespaces names the restored root");
    assert!(pid_running(pid), "restored pid {pid} is not running");
    assert_eq!(
        inner_pid(pid),
        Some(w.pid),
        "the restored root keeps its pid in its namespace"
    );
    assert!(restore_log.exists());
    let rs = check_stats(&sc.work.join("stats-restore"));
    let r = rs.sub(2).expect("stats_entry.restore");
    for f in [1, 2, 3, 4] {
        assert!(r.has(f), "required restore_stats_entry field {f} missing: {r:?}");
    }
    signal(pid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&wl_log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
    assert!(
        wait_pid_exited(pid, GONE_TIMEOUT),
        "restored pid {pid} did not exit after its verdict"
    );
}

#[test]
fn rpc_dump_of_missing_pid_fails_naming_it() {
    require_root!();
    let sc = Scene::new("rpc-nopid");
    let pid = unused_pid();
    let (seen, reply, st) = rpc_dump(&sc, pid, Enc::default(), |_, _| true);
    assert_eq!(reply.ty(), ty::DUMP);
    assert!(!reply.success());
    assert!(
        reply.errmsg().contains(&pid.to_string()),
        "cr_errmsg must name pid {pid}: {:?}",
        reply.errmsg()
    );
    assert!(reply.m.sub(3).is_some(), "a failed DUMP reply still carries dump{{}}");
    assert_eq!(st.code(), Some(1));
    assert!(seen.iter().all(|s| s == "pre-dump"), "{seen:?}");
    let log = std::fs::read_to_string(sc.work.join("dump.log")).unwrap_or_default();
    assert!(log.contains(&pid.to_string()), "the error is in dump.log too:\n{log}");
}

#[test]
fn rpc_dump_refused_post_dump_leaves_the_tree_running() {
    require_root!();
    let sc = Scene::new("rpc-nack-dump");
    let (mut w, wl_log) = spawn_memsum(&sc);
    let (seen, reply, st) = rpc_dump(&sc, w.pid, Enc::default(), |s, _| s != "post-dump");
    assert_eq!(seen, ["pre-dump", "post-dump"]);
    assert!(!reply.success());
    assert!(reply.errmsg().contains("post-dump"), "{}", reply.errmsg());
    assert_eq!(st.code(), Some(1));
    assert!(
        w.wait_exit(Duration::from_millis(300)).is_none() && pid_running(w.pid),
        "a failed dump must leave the tree running"
    );
    w.usr1().unwrap();
    let v = wait_for_nth_verdict(&wl_log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn rpc_restore_refused_post_restore_leaves_nothing() {
    require_root!();
    let sc = Scene::new("rpc-nack-rst");
    let (w, _wl_log) = spawn_memsum(&sc);
    // leave_running (field 3) keeps the original; it is killed by Workload's drop.
    let (_, reply, _) = rpc_dump(&sc, w.pid, Enc::default().varint(3, 1), |_, _| true);
    assert!(reply.success(), "{}", reply.errmsg());
    let mut restored = None;
    let (seen, reply, st) = rpc_restore(&sc, "restore.log", |s, pid| {
        if s == "post-restore" {
            restored = pid;
            return false;
        }
        true
    });
    if let Some(p) = restored {
        sc.cl.pid(p);
    }
    assert!(!reply.success(), "a refused post-restore must fail the restore");
    assert!(reply.errmsg().contains("post-restore"), "{}", reply.errmsg());
    assert_eq!(
        reply.m.sub(4).and_then(|r| r.int(1)),
        Some(-1),
        "restore{{pid=-1}} on failure"
    );
    assert_eq!(st.code(), Some(1));
    assert!(
        seen.iter().all(|(s, _)| s != "pre-resume" && s != "post-resume"),
        "{seen:?}"
    );
    let p = restored.expect("post-restore carried a pid");
    assert!(wait_pid_exited(p, GONE_TIMEOUT), "pid {p} survived a failed restore");
    assert!(pid_running(w.pid), "the original must still run");
}

// ---- the command-line dialect (root) ------------------------------------

#[test]
fn cli_dialect_dump_and_restore() {
    require_root!();
    let sc = Scene::new("criu-cli-rt");
    let criu = criu_link(&sc.tmp);
    let out = Command::new(&criu).arg("check").output().expect("run");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Looks good."));

    let (mut w, wl_log) = spawn_memsum(&sc);
    let pid = w.pid.to_string();
    let out = run_criu(
        &criu,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            s(&sc.img),
            "-W",
            s(&sc.work),
            "-o",
            "dump.log",
            "-v4",
            "--tcp-established",
            "--display-stats",
        ],
        sc.tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        log_tail(&sc.work.join("dump.log"), 30)
    );
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "criu dump must kill the tree");
    assert!(sc.work.join("dump.log").exists(), "-o is relative to the work dir");
    check_stats(&sc.work.join("stats-dump"));

    let pf = sc.tmp.join("restored.pid");
    sc.cl.pidfile(&pf);
    let rlog = sc.tmp.join("restore.log");
    let out = run_criu(
        &criu,
        &[
            "restore",
            "-D",
            s(&sc.img),
            "-d",
            "--pidfile",
            s(&pf),
            "-o",
            s(&rlog),
            "-vvv",
            "--tcp-established",
        ],
        sc.tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        log_tail(&sc.tmp.join("restore.log"), 30)
    );
    let rpid = cryo_integration::read_pidfile(&pf).unwrap();
    assert_eq!(inner_pid(rpid), Some(w.pid));
    signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&wl_log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
    assert!(wait_pid_exited(rpid, GONE_TIMEOUT));
}

// ---- pre-dump, parent images, lazy pages (root) -------------------------

/// One request of type `ty` on images `img` (work dir `work`) with the
/// base options, the pid if any, and `extra`.
fn rpc_call(
    img: &Path,
    work: &Path,
    ty: u64,
    pid: Option<i32>,
    log: &str,
    extra: Enc,
) -> (Vec<String>, Resp, ExitStatus) {
    let (imgf, workf) = (open_dir(img), open_dir(work));
    let mut opts = base_opts(&imgf, &workf, log);
    if let Some(p) = pid {
        opts = opts.int(2, p);
    }
    opts.0.extend_from_slice(&extra.0);
    let w = Swrk::start(Launch::Symlink);
    w.send(&Enc::default().varint(1, ty).msg(2, opts));
    let (seen, reply) = w.converse(|_, _| true);
    let reply = reply.unwrap_or_else(|| panic!("no reply to type {ty}; log:\n{}", log_tail(&work.join(log), 30)));
    let (st, err) = w.finish();
    assert!(err.is_empty(), "the engine wrote to stderr: {err}");
    (seen.into_iter().map(|(s, _)| s).collect(), reply, st)
}

fn pages_bytes(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn uffd_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().contains("userfaultfd"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// runc's pre-copy over RPC: PRE_DUMP into A, PRE_DUMP into B with
/// parent_img ../A, DUMP into C with parent_img ../B and track_mem, then
/// RESTORE from C (lazily if `lazy`). The restored dirtier checks every
/// page against its own table.
fn rpc_pre_copy(tag: &str, lazy: bool) {
    let sc = Scene::new(tag);
    let log = sc.tmp.join("wl.log");
    let mut w = Workload::spawn(
        bin!("dirtier"),
        &["--mib", "32", "--hot-mib", "4", "--hot-ms", "200"],
        &log,
    )
    .expect("spawn dirtier");
    sc.cl.pid(w.pid);
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    let dirs: Vec<PathBuf> = ["A", "B", "C"].iter().map(|n| sc.tmp.join(n)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    // runc's pre-dump: FEATURE_CHECK mem_track first, then PRE_DUMP.
    let (seen, r, st) = rpc_call(
        &dirs[0],
        &sc.work,
        ty::PRE_DUMP,
        Some(w.pid),
        "pre1.log",
        Enc::default(),
    );
    assert!(
        r.success(),
        "PRE_DUMP 1: {}\n{}",
        r.errmsg(),
        log_tail(&sc.work.join("pre1.log"), 30)
    );
    assert_eq!((r.ty(), st.code()), (ty::PRE_DUMP, Some(0)));
    assert_eq!(seen, ["pre-dump"]);
    assert!(pid_running(w.pid), "a pre-dump leaves the tree running");
    std::thread::sleep(Duration::from_millis(400));
    let parent = |p: &str| Enc::default().str(14, p).varint(15, 1); // parent_img, track_mem
    let (_, r, _) = rpc_call(
        &dirs[1],
        &sc.work,
        ty::PRE_DUMP,
        Some(w.pid),
        "pre2.log",
        parent("../A"),
    );
    assert!(
        r.success(),
        "PRE_DUMP 2: {}\n{}",
        r.errmsg(),
        log_tail(&sc.work.join("pre2.log"), 30)
    );
    assert!(
        pages_bytes(&dirs[0]) >= 32 << 20,
        "the first pre-dump copies everything"
    );
    assert!(
        pages_bytes(&dirs[1]) < 16 << 20,
        "the second copies what was written since: {}",
        pages_bytes(&dirs[1])
    );
    std::thread::sleep(Duration::from_millis(400));
    let (seen, r, st) = rpc_call(&dirs[2], &sc.work, ty::DUMP, Some(w.pid), "dump.log", parent("../B"));
    assert!(
        r.success(),
        "DUMP: {}\n{}",
        r.errmsg(),
        log_tail(&sc.work.join("dump.log"), 30)
    );
    assert_eq!(seen, ["pre-dump", "post-dump"]);
    assert!(st.success());
    assert!(pages_bytes(&dirs[2]) < 16 << 20, "the final dump copies the rest only");
    assert_eq!(std::fs::read_link(dirs[2].join("parent")).unwrap(), Path::new("../B"));
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "the dump did not end the source");

    let extra = if lazy {
        Enc::default().varint(48, 1)
    } else {
        Enc::default()
    }; // lazy_pages
    let (seen, r, st) = rpc_call(
        &dirs[2],
        &sc.work,
        ty::RESTORE,
        None,
        "restore.log",
        extra.varint(26, 1),
    );
    let pid = r.m.sub(4).and_then(|x| x.int(1)).unwrap_or(-1);
    if pid > 0 {
        sc.cl.pid(pid);
    }
    assert!(
        r.success(),
        "RESTORE: {}\n{}",
        r.errmsg(),
        log_tail(&sc.work.join("restore.log"), 30)
    );
    assert!(st.success(), "RESTORE engine exit {st:?}");
    assert!(seen.contains(&"post-resume".to_string()), "{seen:?}");
    assert_eq!(inner_pid(pid), Some(w.pid));
    if lazy {
        let rl = std::fs::read_to_string(sc.work.join("restore.log")).unwrap();
        assert!(rl.contains("lazy pages:"), "the engine served lazy pages:\n{rl}");
        assert!(rl.contains("of memory to come lazily"), "{rl}");
    }
    assert_eq!(uffd_fds(pid), 0, "the restored task holds a userfaultfd");
    signal(pid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn rpc_pre_dump_chain_then_dump_with_parent_img_and_restore() {
    require_root!();
    rpc_pre_copy("rpc-predump", false);
}

#[test]
fn rpc_pre_dump_then_restore_with_lazy_pages() {
    require_root!();
    rpc_pre_copy("rpc-lazy", true);
}

/// What cannot work is refused before anything is done, with a one-line
/// cr_errmsg naming it; the tree runs on.
#[test]
fn rpc_refusals_of_unsupported_migration_options() {
    require_root!();
    let sc = Scene::new("rpc-refuse-mig");
    let (mut w, wl_log) = spawn_memsum(&sc);
    for (ty, extra, want) in [
        (ty::PRE_DUMP, Enc::default().int(49, 1), "status_fd"),
        (ty::PRE_DUMP, Enc::default().int(62, 1), "pidfd_store_sk"),
        (ty::DUMP, Enc::default().varint(48, 1), "lazy_pages on dump"),
        (ty::DUMP, Enc::default().varint(58, 1), "tls"),
    ] {
        let (seen, r, st) = rpc_call(&sc.img, &sc.work, ty, Some(w.pid), "refused.log", extra);
        assert!(!r.success() && st.code() == Some(1), "type {ty} {want}: {:?}", r.m);
        assert!(seen.is_empty(), "{seen:?}");
        let e = r.errmsg();
        assert!(e.starts_with("Unsupported options: ") && e.contains(want), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // PAGE_SERVER as a request is not served (cryo's page server is
    // `criu page-server` / `cryo page-server`).
    let (_, r, _) = rpc_call(&sc.img, &sc.work, ty::PAGE_SERVER, None, "ps.log", Enc::default());
    assert!(!r.success());
    assert!(r.errmsg().contains("PAGE_SERVER is not supported"), "{}", r.errmsg());
    assert!(pid_running(w.pid));
    w.usr1().unwrap();
    let v = wait_for_nth_verdict(&wl_log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
    assert!(w.wait_exit(GONE_TIMEOUT).is_some());
}

/// The CRIU command line's pre-copy: `criu pre-dump`, `criu pre-dump
/// --prev-images-dir`, `criu dump --prev-images-dir --track-mem`, then
/// `criu restore --lazy-pages` (it returns once every page is in).
#[test]
fn cli_dialect_pre_dump_chain_and_lazy_restore() {
    require_root!();
    let sc = Scene::new("criu-cli-pre");
    let criu = criu_link(&sc.tmp);
    let log = sc.tmp.join("wl.log");
    let mut w = Workload::spawn(
        bin!("dirtier"),
        &["--mib", "32", "--hot-mib", "4", "--hot-ms", "200"],
        &log,
    )
    .expect("spawn dirtier");
    sc.cl.pid(w.pid);
    w.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    let pid = w.pid.to_string();
    let (a, b, c) = (sc.tmp.join("A"), sc.tmp.join("B"), sc.tmp.join("C"));
    let steps: [Vec<&str>; 3] = [
        vec!["pre-dump", "-t", &pid, "-D", s(&a), "-o", "pre.log", "--track-mem"],
        vec![
            "pre-dump",
            "-t",
            &pid,
            "-D",
            s(&b),
            "-o",
            "pre.log",
            "--prev-images-dir",
            "../A",
            "--track-mem",
        ],
        vec![
            "dump",
            "-t",
            &pid,
            "-D",
            s(&c),
            "-o",
            "dump.log",
            "--prev-images-dir",
            "../B",
            "--track-mem",
        ],
    ];
    for (i, args) in steps.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(400));
        }
        let out = run_criu(&criu, args, sc.tmp.path());
        let d = [&a, &b, &c][i];
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            describe(&out),
            log_tail(&d.join(if i < 2 { "pre.log" } else { "dump.log" }), 30)
        );
    }
    assert!(pages_bytes(&a) >= 32 << 20);
    assert!(pages_bytes(&b) < 16 << 20 && pages_bytes(&c) < 16 << 20);
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "criu dump must end the tree");
    let pf = sc.tmp.join("restored.pid");
    sc.cl.pidfile(&pf);
    let out = run_criu(
        &criu,
        &[
            "restore",
            "-D",
            s(&c),
            "-d",
            "--pidfile",
            s(&pf),
            "-o",
            "restore.log",
            "-v4",
            "--lazy-pages",
        ],
        sc.tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        log_tail(&c.join("restore.log"), 30)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lazy pages:"),
        "{}",
        describe(&out)
    );
    let rpid = cryo_integration::read_pidfile(&pf).unwrap();
    assert_eq!(inner_pid(rpid), Some(w.pid));
    signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
}

/// `criu page-server -D DST --address 127.0.0.1 --port P` receives what
/// `criu dump --page-server --address 127.0.0.1 --port P` sends (cryo's
/// page server protocol, on loopback); `criu restore -D DST` brings the
/// tree back and it checks its memory.
#[test]
fn cli_dialect_dump_to_page_server_then_restore() {
    require_root!();
    let sc = Scene::new("criu-cli-ps");
    let criu = criu_link(&sc.tmp);
    let (mut w, wl_log) = spawn_memsum(&sc);
    let dst = sc.tmp.join("dst");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let ps_out = sc.tmp.join("ps.stdout");
    let mut ps = Command::new(&criu)
        .args(["page-server", "-D", s(&dst), "--address", "127.0.0.1", "--port", &port])
        .stdin(Stdio::null())
        .stdout(File::create(&ps_out).unwrap())
        .stderr(File::create(sc.tmp.join("ps.stderr")).unwrap())
        .spawn()
        .expect("spawn criu page-server");
    sc.cl.pid(ps.id() as i32);
    let t0 = Instant::now();
    while !std::fs::read_to_string(&ps_out)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(t0.elapsed() < LINE_TIMEOUT, "criu page-server does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = w.pid.to_string();
    let out = run_criu(
        &criu,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            s(&sc.img),
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
        ],
        sc.tmp.path(),
    );
    assert!(out.status.success(), "criu dump --page-server: {}", describe(&out));
    let st = ps.wait().unwrap();
    assert!(st.success(), "criu page-server: {st:?}");
    assert!(dst.join("inventory.img").exists(), "the page server wrote no images");
    assert!(!sc.img.join("inventory.img").exists(), "the dump wrote images locally");
    assert!(w.wait_exit(GONE_TIMEOUT).is_some(), "criu dump must end the tree");
    let pf = sc.tmp.join("restored.pid");
    sc.cl.pidfile(&pf);
    let out = run_criu(
        &criu,
        &["restore", "-D", s(&dst), "-d", "--pidfile", s(&pf)],
        sc.tmp.path(),
    );
    assert!(out.status.success(), "criu restore: {}", describe(&out));
    let rpid = cryo_integration::read_pidfile(&pf).unwrap();
    assert_eq!(inner_pid(rpid), Some(w.pid));
    signal(rpid, libc::SIGUSR1).unwrap();
    let v = wait_for_nth_verdict(&wl_log, 1, LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.starts_with("PASS"), "{v}");
}

// runc itself drives cryo in e2e_runc.rs.
