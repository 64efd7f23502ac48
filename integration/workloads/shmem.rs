//! shmem: shared memory mappings keep their content and stay shared
//! between the processes that map them.
//!
//! `shmem --log F [--corrupt]`
//!
//! The parent P maps, before forking its child C:
//! - A: 4 pages MAP_SHARED|MAP_ANONYMOUS, pages 0 and 2 written (1 and 3
//!   never touched);
//! - M: 2 pages of memfd "cryo-shm-open", whose fd stays open;
//! - N: 2 pages of memfd "cryo-shm-closed", its fd closed after mmap;
//! - S: 1 page of the POSIX shm object /dev/shm/cryo-shm-<pid> (kept);
//! - D: 1 page of /dev/shm/cryo-shm-gone-<pid>, unlinked after mmap.
//!
//! On SIGUSR1 P checks every content (and that M is still the memfd its
//! fd names, that A still reads as `/dev/zero (deleted)`), then wakes C,
//! which checks them too and writes a marker into each; P then sees every
//! marker (through the fd too for M). `--corrupt` replaces P's A with a
//! private copy before waking C, so C's marker cannot show.

use cryo_integration::wl::{self, Args, Log};

const PG: usize = 4096;

fn pattern(tag: u8, i: usize) -> u8 {
    ((i * 7 + tag as usize * 13) % 251) as u8
}

fn map(len: usize, flags: i32, fd: i32) -> *mut u8 {
    // SAFETY: a fresh mapping at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        wl::die("mmap");
    }
    p.cast()
}

fn slice(p: *mut u8, len: usize) -> &'static mut [u8] {
    // SAFETY: p is a live read-write mapping of len bytes that is never
    // unmapped; the processes coordinate their accesses by signals.
    unsafe { std::slice::from_raw_parts_mut(p, len) }
}

fn memfd(name: &str, len: usize) -> i32 {
    let c = std::ffi::CString::new(name).unwrap_or_else(|_| wl::die("name"));
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), 0) };
    // SAFETY: ftruncate of our own fd.
    if fd < 0 || unsafe { libc::ftruncate(fd, len as i64) } != 0 {
        wl::die("memfd_create");
    }
    fd
}

fn shm_file(path: &str, len: usize) -> i32 {
    let c = std::ffi::CString::new(path).unwrap_or_else(|_| wl::die("path"));
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o600) };
    // SAFETY: ftruncate of our own fd.
    if fd < 0 || unsafe { libc::ftruncate(fd, len as i64) } != 0 {
        wl::die("open /dev/shm file");
    }
    fd
}

struct Areas {
    a: &'static mut [u8],
    m: &'static mut [u8],
    n: &'static mut [u8],
    s: &'static mut [u8],
    d: &'static mut [u8],
}

/// (name, area, written ranges with their tag).
fn expected(x: &Areas) -> Vec<(&'static str, &[u8], Vec<(usize, usize, u8)>)> {
    vec![
        (
            "A",
            &x.a[..],
            vec![(0, PG, 1), (PG, 2 * PG, 0), (2 * PG, 3 * PG, 2), (3 * PG, 4 * PG, 0)],
        ),
        ("M", &x.m[..], vec![(0, 2 * PG, 3)]),
        ("N", &x.n[..], vec![(0, PG, 4), (PG, 2 * PG, 0)]),
        ("S", &x.s[..], vec![(0, PG, 5)]),
        ("D", &x.d[..], vec![(0, PG, 6)]),
    ]
}

fn fill(buf: &mut [u8], tag: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(tag, i);
    }
}

fn check_content(x: &Areas, pr: &mut Vec<String>) {
    for (name, area, ranges) in expected(x) {
        for (s, e, tag) in ranges {
            let ok = area[s..e]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == if tag == 0 { 0 } else { pattern(tag, i) });
            if !ok {
                pr.push(format!("{name} content differs at {s:#x}"));
            }
        }
    }
}

const MARK_AT: usize = 100;

fn marker(name: &str) -> Vec<u8> {
    format!("child wrote {name}").into_bytes()
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let shared_anon = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    let a = slice(map(4 * PG, shared_anon, -1), 4 * PG);
    let mfd = memfd("cryo-shm-open", 2 * PG);
    let m = slice(map(2 * PG, libc::MAP_SHARED, mfd), 2 * PG);
    let nfd = memfd("cryo-shm-closed", 2 * PG);
    let n = slice(map(2 * PG, libc::MAP_SHARED, nfd), 2 * PG);
    // SAFETY: closing our own fd; the mapping keeps the memfd.
    unsafe { libc::close(nfd) };
    let me = wl::getpid();
    let spath = format!("/dev/shm/cryo-shm-{me}");
    let sfd = shm_file(&spath, PG);
    let s = slice(map(PG, libc::MAP_SHARED, sfd), PG);
    // SAFETY: closing our own fd.
    unsafe { libc::close(sfd) };
    let dpath = format!("/dev/shm/cryo-shm-gone-{me}");
    let dfd = shm_file(&dpath, PG);
    let d = slice(map(PG, libc::MAP_SHARED, dfd), PG);
    // SAFETY: closing our own fd.
    unsafe { libc::close(dfd) };
    let _ = std::fs::remove_file(&dpath);

    fill(&mut a[..PG], 1);
    fill(&mut a[2 * PG..3 * PG], 2);
    fill(m, 3);
    fill(&mut n[..PG], 4);
    fill(s, 5);
    fill(d, 6);
    let x = Areas { a, m, n, s, d };
    let a_addr = x.a.as_ptr() as usize;

    // SAFETY: the workload is single-threaded.
    let child = unsafe { libc::fork() };
    if child < 0 {
        wl::die("fork");
    }
    if child == 0 {
        while !wl::usr1_seen() {
            wl::sleep_ms(10);
        }
        let mut pr = Vec::new();
        check_content(&x, &mut pr);
        let Areas { a, m, n, s, d } = x;
        for (name, area) in [("A", a), ("M", m), ("N", n), ("S", s), ("D", d)] {
            let mk = marker(name);
            area[MARK_AT..MARK_AT + mk.len()].copy_from_slice(&mk);
        }
        let ok = pr.is_empty();
        log.line(&format!(
            "MEMBER c {} {}",
            if ok { "PASS" } else { "FAIL" },
            pr.join("; ")
        ));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    let table = format!("mfd={mfd} c={child} a={a_addr:#x}");
    log.line(&format!("FDS {table}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    let mut pr = Vec::new();
    check_content(&x, &mut pr);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let a_line = maps
        .lines()
        .find(|l| l.starts_with(&format!("{a_addr:x}-")))
        .unwrap_or("");
    if !a_line.ends_with("/dev/zero (deleted)") || !a_line.contains(" rw-s ") {
        pr.push(format!("A maps as {a_line:?}"));
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{mfd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if link != "/memfd:cryo-shm-open (deleted)" {
        pr.push(format!("fd {mfd} is {link:?}"));
    }
    // The restore's own references to the objects are gone.
    for e in std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten() {
        let l = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if l.contains("/dev/zero") || l.contains("cryo-shm-closed") || l.contains("/dev/shm/") {
            pr.push(format!("stray fd {:?} -> {l}", e.file_name()));
        }
    }
    if corrupt {
        // A private copy of A: the child's write cannot show.
        let copy = x.a.to_vec();
        // SAFETY: replaces our own mapping A (no live borrow is used
        // across this call other than `x.a`, which stays valid memory).
        let p = unsafe {
            libc::mmap(
                a_addr as *mut _,
                4 * PG,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            wl::die("mmap private copy");
        }
        x.a.copy_from_slice(&copy);
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
    for (name, area) in [("A", &x.a), ("M", &x.m), ("N", &x.n), ("S", &x.s), ("D", &x.d)] {
        let mk = marker(name);
        if area[MARK_AT..MARK_AT + mk.len()] != mk[..] {
            pr.push(format!("{name}: the child's write does not show"));
        }
    }
    let mk = marker("M");
    let mut b = vec![0u8; mk.len()];
    // SAFETY: `b` is writable for its length.
    let got = unsafe { libc::pread(mfd, b.as_mut_ptr().cast(), b.len(), MARK_AT as i64) };
    if got != b.len() as isize || b != mk {
        pr.push("M: the child's write does not show through the memfd fd".into());
    }
    let _ = std::fs::remove_file(&spath);
    log.verdict(&pr, &table);
}
