//! memfd: memfd descriptors keep their name, content (holes included),
//! size, seals, offsets and sharing.
//!
//! `memfd --log F [--corrupt]`
//!
//! The parent P creates M1 = memfd "cryo-data" (sealable): 3 pages of a
//! pattern, "tail" at 1 MiB, size 1 MiB + 8 KiB, sealed against shrinking
//! and growing, offset 100; a second description of it (O_RDONLY through
//! /proc/self/fd, offset 5000) shared with its child C; and M2 = memfd
//! "cryo-plain" (not sealable) with 10 bytes. On SIGUSR1 P checks names,
//! content, size, seals, flags and offsets; C reads 4 bytes through the
//! shared description, and P sees its offset move. `--corrupt` overwrites
//! one byte of M1 after the dump.

use cryo_integration::wl::{self, Args, Log};

const PAT_LEN: usize = 3 * 4096;
const TAIL_AT: i64 = 1 << 20;
const SIZE: i64 = (1 << 20) + 8192;

fn pattern(i: usize) -> u8 {
    ((i * 11 + 5) % 249) as u8
}

fn memfd(name: &str, flags: u32) -> i32 {
    let c = std::ffi::CString::new(name).unwrap_or_else(|_| wl::die("name"));
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), flags) };
    if fd < 0 {
        wl::die("memfd_create");
    }
    fd
}

fn pwrite(fd: i32, b: &[u8], off: i64) {
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::pwrite(fd, b.as_ptr().cast(), b.len(), off) } != b.len() as isize {
        wl::die("pwrite");
    }
}

fn pread(fd: i32, n: usize, off: i64) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: `b` is writable for n bytes.
    let got = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), n, off) };
    b.truncate(got.max(0) as usize);
    b
}

fn pos(fd: i32) -> i64 {
    // SAFETY: lseek is memory-safe.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn fcntl(fd: i32, cmd: i32, arg: i32) -> i32 {
    // SAFETY: integer-argument commands.
    unsafe { libc::fcntl(fd, cmd, arg) }
}

fn fstat(fd: i32) -> libc::stat {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    unsafe { libc::fstat(fd, &mut st) };
    st
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let data: Vec<u8> = (0..PAT_LEN).map(pattern).collect();
    let m1 = memfd("cryo-data", libc::MFD_ALLOW_SEALING);
    pwrite(m1, &data, 0);
    pwrite(m1, b"tail", TAIL_AT);
    // SAFETY: ftruncate of our own fd.
    if unsafe { libc::ftruncate(m1, SIZE) } != 0 {
        wl::die("ftruncate");
    }
    if fcntl(m1, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) != 0 {
        wl::die("F_ADD_SEALS");
    }
    // SAFETY: lseek is memory-safe.
    unsafe { libc::lseek(m1, 100, libc::SEEK_SET) };
    let c = std::ffi::CString::new(format!("/proc/self/fd/{m1}")).unwrap_or_else(|_| wl::die("path"));
    // SAFETY: `c` is NUL-terminated.
    let m1r = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    if m1r < 0 {
        wl::die("reopen m1");
    }
    // SAFETY: lseek is memory-safe.
    unsafe { libc::lseek(m1r, 5000, libc::SEEK_SET) };
    let m2 = memfd("cryo-plain", 0);
    pwrite(m2, b"0123456789", 0);

    // SAFETY: the workload is single-threaded.
    let child = unsafe { libc::fork() };
    if child < 0 {
        wl::die("fork");
    }
    if child == 0 {
        while !wl::usr1_seen() {
            wl::sleep_ms(10);
        }
        let mut b = [0u8; 4];
        // SAFETY: `b` is writable.
        let n = unsafe { libc::read(m1r, b.as_mut_ptr().cast(), 4) };
        let ok = n == 4 && b[..] == data[5000..5004];
        log.line(&format!("MEMBER c {} read={n}", if ok { "PASS" } else { "FAIL" }));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    let table = format!("m1={m1} m1r={m1r} m2={m2}");
    log.line(&format!("FDS {table} c={child}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    if corrupt {
        pwrite(m1, b"!", 10);
    }
    let mut pr = Vec::new();
    for (fd, name) in [
        (m1, "/memfd:cryo-data (deleted)"),
        (m1r, "/memfd:cryo-data (deleted)"),
        (m2, "/memfd:cryo-plain (deleted)"),
    ] {
        let l = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if l != name {
            pr.push(format!("fd {fd} is {l:?}, expected {name:?}"));
        }
    }
    let (s1, s1r) = (fstat(m1), fstat(m1r));
    if s1.st_size != SIZE || (s1.st_dev, s1.st_ino) != (s1r.st_dev, s1r.st_ino) {
        pr.push(format!(
            "m1 size {} (inode {} vs {})",
            s1.st_size, s1.st_ino, s1r.st_ino
        ));
    }
    if pread(m1, PAT_LEN, 0) != data {
        pr.push("m1 content differs".into());
    }
    if pread(m1, 16, 64 * 1024) != [0u8; 16] || pread(m1, 4, TAIL_AT) != b"tail" {
        pr.push("m1 hole or tail differs".into());
    }
    let seals = fcntl(m1, libc::F_GET_SEALS, 0);
    if seals != libc::F_SEAL_SHRINK | libc::F_SEAL_GROW {
        pr.push(format!("m1 seals {seals:#x}"));
    }
    // SAFETY: ftruncate of our own fd.
    if unsafe { libc::ftruncate(m1, SIZE + 4096) } == 0 {
        pr.push("m1 could grow despite F_SEAL_GROW".into());
    }
    if fcntl(m2, libc::F_GET_SEALS, 0) != libc::F_SEAL_SEAL || pread(m2, 10, 0) != b"0123456789" {
        pr.push("m2 seals or content".into());
    }
    if fcntl(m1r, libc::F_GETFL, 0) & libc::O_ACCMODE != libc::O_RDONLY
        || fcntl(m1, libc::F_GETFL, 0) & libc::O_ACCMODE != libc::O_RDWR
    {
        pr.push("access modes".into());
    }
    if pos(m1) != 100 || pos(m1r) != 5000 {
        pr.push(format!("offsets {} {}", pos(m1), pos(m1r)));
    }
    // SAFETY: sending a signal has no memory effects.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    let mut st = 0;
    // SAFETY: `st` is a valid out-pointer.
    while unsafe { libc::waitpid(child, &mut st, 0) } != child {
        if wl::errno() != libc::EINTR {
            break;
        }
    }
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        pr.push(format!("child status {st:#x}"));
    }
    if pos(m1r) != 5004 {
        pr.push(format!(
            "shared offset {} after the child's read, expected 5004",
            pos(m1r)
        ));
    }
    log.verdict(&pr, &table);
}
