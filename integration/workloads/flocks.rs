//! flocks: flock, POSIX record and OFD locks are held by the right
//! process after restore.
//!
//! `flocks --dir D --log F [--corrupt]`
//!
//! The parent P takes, in D:
//! - f1: flock LOCK_EX on a description it shares with its child C;
//! - f2: POSIX WRITE [0,100) and READ [200,EOF); C takes POSIX WRITE
//!   [100,150) on its own description of f2;
//! - f3: an OFD WRITE lock on [10,20);
//! - f4: flock LOCK_SH.
//!
//! On SIGUSR1 P forks a probe that opens the files itself and checks
//! every lock with F_GETLK / F_OFD_GETLK / flock LOCK_NB (owner pids
//! included); then P releases C. `--corrupt` drops P's [0,100) lock
//! before the probe.

use cryo_integration::wl::{self, Args, Log};

fn open(path: &str) -> i32 {
    let c = std::ffi::CString::new(path).unwrap_or_else(|_| wl::die("path"));
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
    if fd < 0 {
        wl::die("open");
    }
    fd
}

fn flock_struct(ty: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: a zeroed flock is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

fn setlk(fd: i32, cmd: i32, ty: i32, start: i64, len: i64) {
    let fl = flock_struct(ty, start, len);
    // SAFETY: `fl` is a valid flock.
    if unsafe { libc::fcntl(fd, cmd, &fl) } != 0 {
        wl::die("F_SETLK");
    }
}

/// What F_GETLK (or F_OFD_GETLK) reports for a WRITE probe of the range:
/// (type, pid).
fn getlk(fd: i32, cmd: i32, start: i64, len: i64) -> (i32, i32) {
    let mut fl = flock_struct(libc::F_WRLCK, start, len);
    // SAFETY: `fl` is a valid, writable flock.
    if unsafe { libc::fcntl(fd, cmd, &mut fl) } != 0 {
        return (-1, -1);
    }
    (i32::from(fl.l_type), fl.l_pid)
}

fn flock(fd: i32, op: i32) -> bool {
    // SAFETY: integer arguments only.
    unsafe { libc::flock(fd, op) == 0 }
}

fn wait(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: `st` is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut st, 0) } != pid {
        if wl::errno() != libc::EINTR {
            return -1;
        }
    }
    st
}

fn probe(dir: &str, p: i32, c: i32) -> Vec<String> {
    let mut pr = Vec::new();
    let f1 = open(&format!("{dir}/f1"));
    if flock(f1, libc::LOCK_SH | libc::LOCK_NB) {
        pr.push("f1: flock LOCK_EX not held".into());
    }
    let f2 = open(&format!("{dir}/f2"));
    for (start, len, want) in [
        (0, 100, (libc::F_WRLCK, p)),
        (100, 50, (libc::F_WRLCK, c)),
        (150, 50, (libc::F_UNLCK, 0)),
        (200, 0, (libc::F_RDLCK, p)),
    ] {
        let got = getlk(f2, libc::F_GETLK, start, len);
        if got.0 != want.0 || (want.0 != libc::F_UNLCK && got.1 != want.1) {
            pr.push(format!("f2 [{start},+{len}): lock {got:?}, expected {want:?}"));
        }
    }
    let f3 = open(&format!("{dir}/f3"));
    let got = getlk(f3, libc::F_OFD_GETLK, 10, 10);
    if got != (libc::F_WRLCK, -1) {
        pr.push(format!("f3: OFD lock {got:?}"));
    }
    if getlk(f3, libc::F_OFD_GETLK, 20, 10).0 != libc::F_UNLCK {
        pr.push("f3: OFD lock too long".into());
    }
    let f4 = open(&format!("{dir}/f4"));
    if !flock(f4, libc::LOCK_SH | libc::LOCK_NB) {
        pr.push("f4: a shared flock is refused".into());
    }
    if flock(f4, libc::LOCK_EX | libc::LOCK_NB) {
        pr.push("f4: flock LOCK_SH not held".into());
    }
    pr
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let f1 = open(&format!("{dir}/f1"));
    if !flock(f1, libc::LOCK_EX | libc::LOCK_NB) {
        wl::die("flock f1");
    }
    let f2 = open(&format!("{dir}/f2"));
    setlk(f2, libc::F_SETLK, libc::F_WRLCK, 0, 100);
    setlk(f2, libc::F_SETLK, libc::F_RDLCK, 200, 0);
    let f3 = open(&format!("{dir}/f3"));
    setlk(f3, libc::F_OFD_SETLK, libc::F_WRLCK, 10, 10);
    let f4 = open(&format!("{dir}/f4"));
    if !flock(f4, libc::LOCK_SH | libc::LOCK_NB) {
        wl::die("flock f4");
    }
    let me = wl::getpid();

    // SAFETY: the workload is single-threaded.
    let child = unsafe { libc::fork() };
    if child < 0 {
        wl::die("fork");
    }
    if child == 0 {
        let g = open(&format!("{dir}/f2"));
        setlk(g, libc::F_SETLK, libc::F_WRLCK, 100, 50);
        log.line("CHILD locked");
        while !wl::usr1_seen() {
            wl::sleep_ms(10);
        }
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(0) }
    }
    // The child's lock is taken before READY.
    let mut waited = 0;
    while !cryo_integration::log_lines(std::path::Path::new(&args.required("log")))
        .iter()
        .any(|l| l == "CHILD locked")
    {
        wl::sleep_ms(10);
        waited += 1;
        if waited > 1000 {
            wl::die("child did not lock");
        }
    }
    let table = format!("f1={f1} f2={f2} f3={f3} f4={f4} p={me} c={child}");
    log.line(&format!("FDS {table}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    let mut pr = Vec::new();
    if corrupt {
        setlk(f2, libc::F_SETLK, libc::F_UNLCK, 0, 100);
    }
    // SAFETY: the workload is single-threaded.
    let pb = unsafe { libc::fork() };
    if pb < 0 {
        wl::die("fork probe");
    }
    if pb == 0 {
        let pr = probe(&dir, me, child);
        log.line(&format!("PROBE {}", pr.join("; ")));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if pr.is_empty() { 0 } else { 1 }) }
    }
    let st = wait(pb);
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        let lines = cryo_integration::log_lines(std::path::Path::new(&args.required("log")));
        let probe_line = lines.iter().rev().find(|l| l.starts_with("PROBE")).cloned();
        pr.push(probe_line.unwrap_or_else(|| format!("probe status {st:#x}")));
    }
    // SAFETY: sending a signal has no memory effects.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    let st = wait(child);
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        pr.push(format!("child status {st:#x}"));
    }
    log.verdict(&pr, &table);
}
