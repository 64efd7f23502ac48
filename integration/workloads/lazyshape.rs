//! lazyshape: a program that reshapes its memory while lazy pages are
//! still coming in (cryo restore/migrate --lazy-pages).
//!
//! `lazyshape --log F [--mib N] [--wait-ms M] [--corrupt]`
//!
//! Fills N MiB (default 64, at least 8) of private anonymous memory with a
//! pattern that is a function of the page number and word (so nothing is
//! kept to compare with), writes READY and idles. On SIGUSR1, at once:
//! - touches the first page of the part it will move and the first half
//!   of the part it will drop, checking them;
//! - forks a child that checks the whole area, top page first, and
//!   reports through a pipe (its copy is as the memory was at the fork);
//! - madvise(MADV_DONTNEED)s 1/8 of the area (at 5/8): it must read as
//!   zeros, and still after M ms (default 400: the filler must not write
//!   it again);
//! - munmaps 1/16 (at 6/8), maps fresh memory there with
//!   MAP_FIXED_NOREPLACE: zeros, then a marker that must stay;
//! - mremaps the last 1/8 onto a reservation elsewhere and checks it
//!   there, top page first;
//! - checks the rest of the area, top page first, and the child's report.
//!
//! The order is not the one of a background filler (bottom up), and the
//! operations come before the filler could be done, if it is slowed. With
//! `--corrupt` one word of the kept part and one of the moved part change
//! after READY, so the parent, the child and the moved check all FAIL.

use cryo_integration::wl::{self, Args, Log};

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;

/// The word `j` of page `p` of the area.
fn pattern(p: usize, j: usize) -> u64 {
    let mut x = ((p as u64) << 9 | j as u64) ^ 0x6c61_7a79_7368_6170;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The words of the page at `addr`.
fn page_at(addr: usize) -> &'static [u64] {
    // SAFETY: callers pass the address of a mapped, readable page of the
    // area (or its moved part) that stays mapped while they read it.
    unsafe { std::slice::from_raw_parts(addr as *const u64, WORDS) }
}

/// Checks pages `pages` (top first) at `base` against the pattern of the
/// area's pages from `first`; the first mismatch, if any.
fn check(base: usize, first: usize, pages: std::ops::Range<usize>) -> Option<String> {
    for p in pages.rev() {
        let words = page_at(base + (p - first) * PAGE);
        for (j, &w) in words.iter().enumerate() {
            let want = pattern(p, j);
            if w != want {
                return Some(format!("page {p} word {j}: {w:#x} != {want:#x}"));
            }
        }
    }
    None
}

/// The first non-zero word in `pages` pages at `base`.
fn nonzero(base: usize, pages: usize) -> Option<String> {
    for p in 0..pages {
        if let Some(j) = page_at(base + p * PAGE).iter().position(|&w| w != 0) {
            return Some(format!("page +{p} word {j} is {:#x}", page_at(base + p * PAGE)[j]));
        }
    }
    None
}

fn mmap(addr: usize, len: usize, prot: i32, flags: i32) -> usize {
    // SAFETY: an anonymous mapping; with MAP_FIXED_NOREPLACE it never
    // replaces an existing one; without an address the kernel picks one.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        wl::die(&format!("mmap {len} bytes at {addr:#x}"));
    }
    p as usize
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let mib = args.num("mib", 64) as usize;
    if mib < 8 {
        wl::die("--mib must be at least 8");
    }
    let wait_ms = args.num("wait-ms", 400);
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let n = mib * 256; // pages
    let len = n * PAGE;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let base = mmap(0, len, rw, anon);
    // SAFETY: `base` is a fresh private read-write mapping of `len` bytes.
    let area = unsafe { std::slice::from_raw_parts_mut(base as *mut u64, len / 8) };
    for (i, w) in area.iter_mut().enumerate() {
        *w = pattern(i / WORDS, i % WORDS);
    }
    // Regions, in pages: dropped D, unmapped U, moved M; the rest is kept.
    let d = (n * 5 / 8)..(n * 6 / 8);
    let u = (n * 6 / 8)..(n * 6 / 8 + n / 16);
    let m = (n * 7 / 8)..n;
    let kept = [0..d.start, u.end..m.start];
    // Where the moved part goes.
    let mlen = m.len() * PAGE;
    let resv = mmap(0, mlen, libc::PROT_NONE, anon | libc::MAP_NORESERVE);

    log.ready();
    if corrupt {
        area[(n / 3) * WORDS + 7] ^= 1 << 20;
        area[(m.end - 2) * WORDS + 300] ^= 1;
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    let mut problems = Vec::new();
    // A first look at the parts about to change.
    if let Some(e) = check(base + m.start * PAGE, m.start, m.start..m.start + 1) {
        problems.push(format!("moved part before the move: {e}"));
    }
    if let Some(e) = check(base + d.start * PAGE, d.start, d.start..d.start + d.len() / 2) {
        problems.push(format!("dropped part before madvise: {e}"));
    }

    // (a) A child checks everything as it was at the fork.
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        wl::die("pipe2");
    }
    // SAFETY: single-threaded; the child only reads memory, writes to the
    // pipe and leaves with _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        wl::die("fork");
    }
    if child == 0 {
        // SAFETY: alarm only arms a timer: a child stuck on a page that
        // never comes dies instead of lingering.
        unsafe { libc::alarm(60) };
        let report = match check(base, 0, 0..n) {
            None => "ok".to_string(),
            Some(e) => e,
        };
        // SAFETY: the buffer is valid for its length; _exit ends the child
        // without running the parent's exit handlers.
        unsafe {
            libc::write(fds[1], report.as_ptr().cast(), report.len());
            libc::_exit(0);
        }
    }
    // SAFETY: our copy of the write end; the child has its own.
    unsafe { libc::close(fds[1]) };

    // (b) Dropped memory reads as zeros.
    // SAFETY: D lies inside the area, which nothing borrows across this.
    if unsafe {
        libc::madvise(
            (base + d.start * PAGE) as *mut libc::c_void,
            d.len() * PAGE,
            libc::MADV_DONTNEED,
        )
    } != 0
    {
        wl::die("madvise(MADV_DONTNEED)");
    }
    if let Some(e) = nonzero(base + d.start * PAGE, d.len()) {
        problems.push(format!("dropped part right after madvise: {e}"));
    }

    // (c) Unmapped memory: gone; fresh memory there stays ours.
    let ua = base + u.start * PAGE;
    // SAFETY: U lies inside the area and is not borrowed.
    if unsafe { libc::munmap(ua as *mut libc::c_void, u.len() * PAGE) } != 0 {
        wl::die("munmap");
    }
    mmap(ua, u.len() * PAGE, rw, anon | libc::MAP_FIXED_NOREPLACE);
    if let Some(e) = nonzero(ua, u.len()) {
        problems.push(format!("fresh memory in the unmapped part: {e}"));
    }
    for p in 0..u.len() {
        // SAFETY: inside the fresh mapping at `ua`.
        unsafe { *((ua + p * PAGE) as *mut u64) = 0xfeed_0000 + p as u64 };
    }

    // (d) Moved memory has its content at the new address.
    // SAFETY: moves M (inside the area, not borrowed) over the PROT_NONE
    // reservation made for it.
    let to = unsafe {
        libc::mremap(
            (base + m.start * PAGE) as *mut libc::c_void,
            mlen,
            mlen,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            resv as *mut libc::c_void,
        )
    };
    if to as usize != resv {
        wl::die("mremap");
    }
    if let Some(e) = check(resv, m.start, m.clone()) {
        problems.push(format!("moved part at its new address: {e}"));
    }

    // Later: still zeros, still our marker, and the rest intact.
    wl::sleep_ms(wait_ms);
    if let Some(e) = nonzero(base + d.start * PAGE, d.len()) {
        problems.push(format!("dropped part {wait_ms} ms after madvise: {e}"));
    }
    for p in 0..u.len() {
        // SAFETY: inside the fresh mapping at `ua`.
        let w = unsafe { *((ua + p * PAGE) as *const u64) };
        if w != 0xfeed_0000 + p as u64 {
            problems.push(format!("fresh memory in the unmapped part, page +{p}: {w:#x}"));
            break;
        }
    }
    for r in &kept {
        if let Some(e) = check(base + r.start * PAGE, r.start, r.clone()) {
            problems.push(format!("kept part: {e}"));
        }
    }
    if let Some(e) = check(resv, m.start, m.clone()) {
        problems.push(format!("moved part, again: {e}"));
    }

    // The child's report.
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is valid for its length.
    let got = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
    let report = String::from_utf8_lossy(&buf[..got.max(0) as usize]).into_owned();
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid int.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if report != "ok" {
        problems.push(format!("forked child (status {status:#x}): {report}"));
    }
    log.verdict(&problems, &format!("mib={mib} child={report}"));
}
