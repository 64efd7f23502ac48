//! Test harness for cryo's end-to-end tests, and support code for the
//! self-checking workloads (`wl`).
//!
//! The end-to-end tests run real processes: a workload (one of this
//! package's binaries) is started in its own session with [`Workload::spawn`],
//! dumped and restored with the real `cryo` binary ([`cryo_bin`],
//! [`run_cryo`]), told to verify itself with SIGUSR1, and judged by the
//! `PASS`/`FAIL` line it writes to its log ([`wait_for_verdict`]). Every
//! process a test starts or restores is registered with a [`Cleanup`]
//! guard, which kills it by pid when the test ends, pass or fail.
//!
//! Everything that needs root is gated with [`require_root!`], which skips
//! loudly.

pub mod ctr;
pub mod cycle;
pub mod e2e;
pub mod hosts;
pub mod member;
pub mod netns;
pub mod probe;
pub mod wl;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a single cryo invocation may take before the harness kills it.
pub const CRYO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for a workload's READY or verdict line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// True when the tests run as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The name of the running test (libtest names each test's thread after it).
pub fn current_test_name() -> String {
    std::thread::current().name().unwrap_or("<unknown test>").to_string()
}

/// Prints `SKIP <test>: <why>` straight to the process's stderr (not through
/// libtest's output capture, so it shows even for a passing test).
pub fn skip(why: &str) {
    use std::io::Write;
    let line = format!("SKIP {}: {why}\n", current_test_name());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Returns from the calling test, printing a loud `SKIP` line, unless the
/// tests run as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip(
                "needs root (cryo dumps and restores with ptrace and new \
                 namespaces; run `sudo hack/test`, CI runs as root)",
            );
            return;
        }
    };
}

/// Path of one of this package's binaries (only usable from its tests).
#[macro_export]
macro_rules! bin {
    ($name:literal) => {
        ::std::path::Path::new(env!(concat!("CARGO_BIN_EXE_", $name)))
    };
}

/// The workspace root (the parent of this package's manifest directory).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cryo binary under test: `$CRYO_BIN` if set, else
/// `<workspace>/target/debug/cryo`.
pub fn cryo_bin() -> PathBuf {
    match std::env::var_os("CRYO_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_dir().join("target/debug/cryo"),
    }
}

/// A temporary directory, removed with its contents on drop (kept when
/// `CRYO_KEEP_TMP` is set, for debugging).
pub struct TempDir {
    path: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    /// Creates `$TMPDIR/cryo-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        let n = TMP_SEQ.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("cryo-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("Cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CRYO_KEEP_TMP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Converts a path to &str for command lines (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A workload process started by the test: its own session (setsid), stdin
/// from /dev/null, stdout and stderr appended to its log, `--log LOG`
/// appended to its arguments.
pub struct Workload {
    /// The workload's pid (also its session and process group id).
    pub pid: i32,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
    reaped: Option<ExitStatus>,
}

impl Workload {
    /// Starts `bin args... --log log`.
    pub fn spawn(bin: &Path, args: &[&str], log: &Path) -> std::io::Result<Workload> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .arg("--log")
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid and close_range, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Whatever the test runner inherited (fds 3 and up) must not
                // leak into the workload: mark it close-on-exec.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Workload {
            pid: child.id() as i32,
            log: log.to_path_buf(),
            child,
            reaped: None,
        })
    }

    /// Waits for `READY <pid>` in the log.
    pub fn wait_ready(&self) -> Result<(), String> {
        let line = wait_for_line(&self.log, "READY ", LINE_TIMEOUT)?;
        if line.trim() != format!("READY {}", self.pid) {
            return Err(format!("READY line {line:?} does not name pid {}", self.pid));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the workload to exit and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.reaped.is_some() {
            return self.reaped;
        }
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = Some(st);
                return self.reaped;
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGUSR1 (the "verify now" signal).
    pub fn usr1(&self) -> Result<(), String> {
        signal(self.pid, libc::SIGUSR1)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            kill_group_and_pid(self.pid);
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(format!("kill({pid}, {sig}): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn kill_group_and_pid(pid: i32) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill has no memory effects; -pid names the process group the
    // workload leads (it was started with setsid).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

/// The state letter of `pid` from /proc/PID/stat (`None` if it is gone).
pub fn pid_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].trim_start().chars().next()
}

/// The parent pid of `pid` (`None` if it is gone).
pub fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// True if `pid` exists and is not a zombie.
pub fn pid_running(pid: i32) -> bool {
    matches!(pid_state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Waits until /proc/PID is gone (a zombie still counts as present:
/// whoever is its parent must reap it).
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if pid_state(pid).is_none() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pid` is dead: gone from /proc or a zombie, whoever its
/// parent is (a terminal multiplexer may reap its pane process late).
pub fn wait_pid_dead(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        match pid_state(pid) {
            None | Some('Z') | Some('X') => return true,
            _ => {}
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pid` has exited: gone from /proc, or a zombie left to the
/// host's init (pid 1, which on some machines reaps slowly). A zombie whose
/// parent is anything else (e.g. cryo's init not reaping) does not count.
pub fn wait_pid_exited(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        match pid_state(pid) {
            None => return true,
            Some('Z') if ppid_of(pid) == Some(1) => return true,
            _ => {}
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True if `pid` is the init (pid 1) of a pid namespace below ours.
fn is_ns_init(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            let ids: Vec<&str> = v.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
        .unwrap_or(false)
}

/// Kills `pid` with SIGKILL (and its process group, and the init of its pid
/// namespace when it was restored by cryo into one), then reaps it if it is
/// our child, or waits up to 5 s for it to disappear.
pub fn kill_pid(pid: i32) {
    if pid <= 1 || pid as u32 == std::process::id() {
        return;
    }
    if let Some(pp) = ppid_of(pid) {
        if pp > 1 && pp as u32 != std::process::id() && is_ns_init(pp) {
            kill_group_and_pid(pp);
        }
    }
    kill_group_and_pid(pid);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: waitpid with a null status pointer is allowed.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if r == pid || pid_state(pid).is_none() {
            return;
        }
        if r < 0 && pid_state(pid) == Some('Z') {
            // A zombie that is not ours: its parent reaps it.
            return;
        }
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills, on drop, every process a test registered: pids, the pids written
/// to registered pidfiles (restored trees), and tmux servers by socket name.
#[derive(Default)]
pub struct Cleanup {
    pids: Mutex<Vec<i32>>,
    pidfiles: Mutex<Vec<PathBuf>>,
    tmux_sockets: Mutex<Vec<String>>,
    /// (pid, start time) of tree members: killed only if the pid still
    /// names the same process.
    trees: Mutex<Vec<(i32, u64)>>,
}

/// The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks).
pub fn proc_starttime(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].split_whitespace().nth(19)?.parse().ok()
}

impl Cleanup {
    /// An empty guard.
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// Registers a pid to kill at the end.
    pub fn pid(&self, pid: i32) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }

    /// Registers a pidfile whose pid (if the file exists then) is killed.
    pub fn pidfile(&self, path: &Path) {
        self.pidfiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.to_path_buf());
    }

    /// Registers `root` and all its current descendants (with their start
    /// times, so that a pid reused later is left alone).
    pub fn tree(&self, root: i32) {
        let mut t = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        for pid in e2e::tree_of(root) {
            if let Some(st) = proc_starttime(pid) {
                t.push((pid, st));
            }
        }
    }

    /// Registers a tmux socket name (`tmux -L NAME`) whose server is killed.
    pub fn tmux(&self, socket: &str) {
        self.tmux_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(socket.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut pids: Vec<i32> = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pf in self.pidfiles.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Ok(pid) = read_pidfile(pf) {
                pids.push(pid);
            }
        }
        for pid in pids {
            kill_pid(pid);
        }
        for &(pid, st) in self.trees.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if pid > 1 && proc_starttime(pid) == Some(st) {
                // SAFETY: kill has no memory effects; the start time shows
                // the pid still names the process registered.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        for sock in self.tmux_sockets.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = Command::new("tmux")
                .args(["-L", sock, "kill-server"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Reads a pidfile written by `cryo restore --pidfile`.
pub fn read_pidfile(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("Cannot read pidfile {}: {e}", path.display()))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("Pidfile {} holds {text:?}", path.display()))
}

/// All lines of a log (lossy UTF-8; missing file = no lines).
pub fn log_lines(log: &Path) -> Vec<String> {
    match std::fs::read(log) {
        Ok(b) => String::from_utf8_lossy(&b).lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// The last `n` lines of a log, for failure messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let lines = log_lines(log);
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Number of lines starting with `prefix`.
pub fn count_lines(log: &Path, prefix: &str) -> usize {
    log_lines(log).iter().filter(|l| l.starts_with(prefix)).count()
}

/// Waits for the first line starting with `prefix`; returns it.
pub fn wait_for_line(log: &Path, prefix: &str, timeout: Duration) -> Result<String, String> {
    wait_for_nth_line(log, prefix, 1, timeout)
}

/// Waits until `n` lines start with `prefix`; returns the n-th.
pub fn wait_for_nth_line(log: &Path, prefix: &str, n: usize, timeout: Duration) -> Result<String, String> {
    let end = Instant::now() + timeout;
    loop {
        let found: Vec<String> = log_lines(log).into_iter().filter(|l| l.starts_with(prefix)).collect();
        if found.len() >= n {
            return Ok(found[n - 1].clone());
        }
        if Instant::now() >= end {
            return Err(format!(
                "No {n}. line starting with {prefix:?} in {} after {timeout:?}; it ends with:\n{}",
                log.display(),
                log_tail(log, 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the workload's verdict: Ok(PASS line) or Err(FAIL line, or a
/// timeout with the log's tail).
pub fn wait_for_verdict(log: &Path, timeout: Duration) -> Result<String, String> {
    wait_for_nth_verdict(log, 1, timeout)
}

/// Waits for the n-th verdict line (PASS or FAIL) of a log shared by several
/// copies of a workload; Ok if it and all before it are PASS.
pub fn wait_for_nth_verdict(log: &Path, n: usize, timeout: Duration) -> Result<String, String> {
    let end = Instant::now() + timeout;
    loop {
        let verdicts: Vec<String> = log_lines(log)
            .into_iter()
            .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
            .collect();
        if let Some(f) = verdicts.iter().find(|l| l.starts_with("FAIL")) {
            return Err(format!("Workload failed: {f}\nlog tail:\n{}", log_tail(log, 15)));
        }
        if verdicts.len() >= n {
            return Ok(verdicts[n - 1].clone());
        }
        if Instant::now() >= end {
            return Err(format!(
                "No verdict #{n} in {} after {timeout:?}; it ends with:\n{}",
                log.display(),
                log_tail(log, 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The numbers of the `step N` lines of a counter log, in order.
pub fn step_numbers(log: &Path) -> Vec<u64> {
    log_lines(log)
        .iter()
        .filter_map(|l| l.strip_prefix("step ")?.trim().parse().ok())
        .collect()
}

/// Checks that steps start at 0 and go up by one, allowing at most one
/// immediate repetition (the step in flight at dump time).
pub fn check_steps(steps: &[u64]) -> Result<(), String> {
    if steps.first() != Some(&0) {
        return Err(format!("steps do not start at 0: {:?}", &steps[..steps.len().min(5)]));
    }
    let mut repeats = 0;
    for w in steps.windows(2) {
        if w[1] == w[0] + 1 {
            continue;
        }
        if w[1] == w[0] && repeats == 0 {
            repeats += 1;
            continue;
        }
        return Err(format!("step {} followed by step {}", w[0], w[1]));
    }
    Ok(())
}

/// A child whose stdout and stderr go to memfds (never pipes: a restored
/// tree may inherit cryo's stdio and keep a pipe open for its lifetime).
pub struct Captured {
    child: Child,
    out: Option<File>,
    err: File,
}

fn memfd(name: &str) -> File {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: `c` is a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    unsafe { File::from_raw_fd(fd) }
}

impl Captured {
    /// Starts `bin args` with the given stdin; stdout is captured unless
    /// `stdout` is given (e.g. the write end of a pipeline).
    pub fn spawn(bin: &Path, args: &[&str], stdin: Stdio, stdout: Option<Stdio>) -> Captured {
        let err = memfd("stderr");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(stdin)
            .stderr(Stdio::from(err.try_clone().expect("dup memfd")));
        let out = match stdout {
            Some(s) => {
                cmd.stdout(s);
                None
            }
            None => {
                let f = memfd("stdout");
                cmd.stdout(Stdio::from(f.try_clone().expect("dup memfd")));
                Some(f)
            }
        };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("Cannot run {}: {e}", bin.display()));
        Captured { child, out, err }
    }

    /// The child's stdout as a pipe (when spawned with `Stdio::piped()`).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits (killing the child after `timeout`) and collects its output.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let st = self.child.wait().expect("wait");
                eprintln!("killed after {timeout:?}: pid {}", self.child.id());
                break st;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let read = |f: &mut File| {
            let mut v = Vec::new();
            let _ = f.seek(SeekFrom::Start(0));
            let _ = f.read_to_end(&mut v);
            v
        };
        Output {
            status,
            stdout: self.out.as_mut().map(read).unwrap_or_default(),
            stderr: read(&mut self.err),
        }
    }
}

/// Runs `cryo args...` (stdin /dev/null) and returns its output; the run is
/// killed after [`CRYO_TIMEOUT`].
pub fn run_cryo(args: &[&str]) -> Output {
    Captured::spawn(&cryo_bin(), args, Stdio::null(), None).finish(CRYO_TIMEOUT)
}

/// Runs `reaper --leftover F -- cryo args...`: like [`run_cryo`], and also
/// returns the processes cryo left behind (`"pid comm"` lines; the reaper
/// has already killed them).
pub fn run_cryo_reaped(reaper: &Path, args: &[&str]) -> (Output, Vec<String>) {
    let dir = TempDir::new("reaper");
    let leftover = dir.join("leftover");
    let cryo = cryo_bin();
    let mut full = vec!["--leftover", s(&leftover), "--", s(&cryo)];
    full.extend_from_slice(args);
    let out = Captured::spawn(reaper, &full, Stdio::null(), None).finish(CRYO_TIMEOUT);
    let left = std::fs::read_to_string(&leftover)
        .unwrap_or_else(|e| panic!("reaper wrote no report ({e}): {}", describe(&out)));
    (out, left.lines().map(str::to_string).collect())
}

/// "exit N" / "signal N", stdout and stderr of an Output, for messages.
pub fn describe(out: &Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    let st = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".to_string(),
    };
    format!(
        "{st}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics unless `out` succeeded; `what` names the step.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
}

/// The stderr of a failed run, checked to be exactly one non-empty line.
pub fn one_line_error(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail but succeeded: {}",
        describe(out)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(
        !err.is_empty() && !err.contains('\n'),
        "{what}: stderr should be one line: {}",
        describe(out)
    );
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_consecutive_pass() {
        assert!(check_steps(&[0, 1, 2, 3]).is_ok());
        assert!(check_steps(&[0]).is_ok());
    }

    #[test]
    fn steps_one_repeat_allowed() {
        assert!(check_steps(&[0, 1, 2, 2, 3, 4]).is_ok());
        assert!(check_steps(&[0, 1, 1, 2, 2]).is_err());
    }

    #[test]
    fn steps_gap_or_bad_start_fails() {
        assert!(check_steps(&[0, 1, 3]).is_err());
        assert!(check_steps(&[1, 2]).is_err());
        assert!(check_steps(&[]).is_err());
        assert!(check_steps(&[0, 2, 1]).is_err());
    }

    #[test]
    fn wait_for_line_finds_and_times_out() {
        let d = TempDir::new("unit");
        let log = d.join("log");
        std::fs::write(&log, "x\nREADY 42\nstep 0\n").unwrap();
        assert_eq!(
            wait_for_line(&log, "READY", Duration::from_millis(50)).unwrap(),
            "READY 42"
        );
        assert!(wait_for_line(&log, "PASS", Duration::from_millis(50)).is_err());
        assert_eq!(step_numbers(&log), vec![0]);
    }

    #[test]
    fn verdicts_fail_wins() {
        let d = TempDir::new("unit");
        let log = d.join("log");
        std::fs::write(&log, "PASS a\nFAIL b\n").unwrap();
        assert!(wait_for_nth_verdict(&log, 1, Duration::from_millis(50)).is_err());
        std::fs::write(&log, "PASS a\nPASS b\n").unwrap();
        assert_eq!(
            wait_for_nth_verdict(&log, 2, Duration::from_millis(50)).unwrap(),
            "PASS b"
        );
        assert!(wait_for_nth_verdict(&log, 3, Duration::from_millis(50)).is_err());
    }

    #[test]
    fn tempdir_is_removed() {
        let p = {
            let d = TempDir::new("unit");
            std::fs::write(d.join("f"), "x").unwrap();
            d.path().to_path_buf()
        };
        if std::env::var_os("CRYO_KEEP_TMP").is_none() {
            assert!(!p.exists());
        }
    }

    #[test]
    fn captured_collects_output_and_status() {
        let out = Captured::spawn(
            Path::new("/bin/sh"),
            &["-c", "echo out; echo err >&2; exit 3"],
            Stdio::null(),
            None,
        )
        .finish(Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn own_state_is_running() {
        assert!(pid_running(std::process::id() as i32));
        assert!(ppid_of(std::process::id() as i32).is_some());
    }
}
