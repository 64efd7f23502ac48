//! leases: file leases (F_SETLEASE) are held after restore.
//!
//! `leases --dir D --log F [--corrupt]`
//!
//! P takes a read lease on D/r.dat (opened O_RDONLY) and a write lease on
//! D/w.dat (opened O_RDWR, no other open of it), with a SIGIO handler so
//! that a lease break is seen, not fatal. On SIGUSR1 P checks F_GETLEASE
//! on both (F_RDLCK, F_WRLCK); then a child opens w.dat for reading,
//! which must break P's write lease: P gets SIGIO (the lease holder is
//! the owner of the description), gives the lease up (F_UNLCK) and the
//! child's open completes.
//! `--corrupt` gives the read lease up after READY.

use std::sync::atomic::{AtomicU32, Ordering};

use cryo_integration::wl::{self, Args, Log};

static BREAKS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigio(_: libc::c_int) {
    BREAKS.fetch_add(1, Ordering::SeqCst);
}

fn open(path: &str, flags: i32) -> i32 {
    let c = std::ffi::CString::new(path).unwrap_or_else(|_| wl::die("path"));
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CREAT, 0o600) };
    if fd < 0 {
        wl::die("open");
    }
    fd
}

fn get_lease(fd: i32) -> i32 {
    // SAFETY: integer arguments only.
    unsafe { libc::fcntl(fd, libc::F_GETLEASE) }
}

fn set_lease(fd: i32, ty: i32) -> bool {
    // SAFETY: integer arguments only.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, ty) == 0 }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    // SAFETY: the handler only does an atomic add.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigio as *const () as usize;
        libc::sigaction(libc::SIGIO, &sa, std::ptr::null_mut());
    }
    let wpath = format!("{dir}/w.dat");
    let r = open(&format!("{dir}/r.dat"), libc::O_RDONLY);
    let w = open(&wpath, libc::O_RDWR);
    if !set_lease(r, libc::F_RDLCK) || !set_lease(w, libc::F_WRLCK) {
        wl::die("F_SETLEASE");
    }
    log.ready();
    if corrupt {
        set_lease(r, libc::F_UNLCK);
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let mut problems = Vec::new();
    let got = (get_lease(r), get_lease(w));
    if got != (libc::F_RDLCK, libc::F_WRLCK) {
        problems.push(format!("leases: F_GETLEASE {got:?}, expected (0, 1)"));
    }
    // A reader breaks the write lease.
    // SAFETY: the workload is single-threaded.
    let c = unsafe { libc::fork() };
    if c == 0 {
        let fd = open(&wpath, libc::O_RDONLY);
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if fd >= 0 { 0 } else { 1 }) }
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while BREAKS.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < end {
        wl::sleep_ms(10);
    }
    let breaks = BREAKS.load(Ordering::SeqCst);
    if breaks == 0 {
        problems.push("write lease: no break signal when another process opened the file".to_string());
    }
    set_lease(w, libc::F_UNLCK);
    let mut st = 0;
    // SAFETY: st is a valid out-pointer.
    unsafe { libc::waitpid(c, &mut st, 0) };
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        problems.push(format!("the reader's open ended with status {st:#x}"));
    }
    log.verdict(&problems, &format!("read and write leases held, break seen ({breaks})"))
}
