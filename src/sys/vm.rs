//! Access to another process's memory and page tables.
//!
//! * [`read_remote`] / [`write_remote`]: `process_vm_readv`/`writev`, many
//!   remote ranges per call (no FOLL_FORCE: PROT_NONE areas fail).
//! * [`pagemap_scan`]: the `PAGEMAP_SCAN` ioctl (6.7+) on `/proc/P/pagemap`,
//!   which returns page *runs* by category.
//! * [`read_pagemap`]: the 8-bytes-per-page `/proc/P/pagemap` fallback.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

/// Most iovecs one process_vm_readv/writev call takes (IOV_MAX).
pub const IOV_MAX: usize = 1024;

/// Page size of x86_64.
pub const PAGE_SIZE: u64 = 4096;

/// Splits `pairs` into calls of at most [`IOV_MAX`] remote iovecs, each
/// against the matching window of the local buffer, and keeps going after a
/// short transfer until a range makes no progress. Returns the bytes moved,
/// which is the length of the prefix of the ranges (in order) that could be
/// transferred.
fn transfer(
    pairs: &[(u64, usize)],
    local_len: usize,
    mut op: impl FnMut(usize, usize, &[RemoteIoVec]) -> nix::Result<usize>,
) -> nix::Result<usize> {
    let total: usize = pairs.iter().map(|p| p.1).sum();
    if total > local_len {
        return Err(Errno::EINVAL);
    }
    let mut done = 0usize; // bytes transferred so far == local offset
    let mut idx = 0usize; // current pair
    let mut skip = 0usize; // bytes of pairs[idx] already transferred
    while idx < pairs.len() {
        let mut iov = Vec::with_capacity(IOV_MAX.min(pairs.len() - idx));
        let mut want = 0;
        for (k, &(addr, len)) in pairs[idx..].iter().enumerate().take(IOV_MAX) {
            let off = if k == 0 { skip } else { 0 };
            if len - off == 0 {
                continue;
            }
            iov.push(RemoteIoVec {
                base: (addr as usize) + off,
                len: len - off,
            });
            want += len - off;
        }
        if want == 0 {
            break;
        }
        let got = match op(done, want, &iov) {
            Ok(n) => n,
            // Nothing could be transferred at the current position.
            Err(Errno::EFAULT) => 0,
            Err(e) => return Err(e),
        };
        if got == 0 {
            return Ok(done);
        }
        done += got;
        // Advance idx/skip by `got` bytes.
        let mut left = got;
        while left > 0 && idx < pairs.len() {
            let rem = pairs[idx].1 - skip;
            if left >= rem {
                left -= rem;
                idx += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
        // Skip zero-length pairs.
        while idx < pairs.len() && pairs[idx].1 == skip {
            idx += 1;
            skip = 0;
        }
    }
    Ok(done)
}

/// `process_vm_readv(pid, ...)`—Reads the remote ranges `(addr, len)`, in
/// order, into `buf` back to back.
///
/// Returns the number of bytes read. It is less than the sum of the lengths
/// when a range could not be read (unmapped, PROT_NONE): everything before
/// that point was read. Errors only if nothing at all could be read for a
/// reason other than a fault, or if `buf` is too small.
#[doc(alias = "process_vm_readv")]
pub fn read_remote(pid: Pid, iov_pairs: &[(u64, usize)], buf: &mut [u8]) -> nix::Result<usize> {
    let len = buf.len();
    transfer(iov_pairs, len, |off, want, iov| {
        let mut local = [IoSliceMut::new(&mut buf[off..off + want])];
        process_vm_readv(pid, &mut local, iov)
    })
}

/// `process_vm_writev(pid, ...)`—Writes `buf` into the remote ranges
/// `(addr, len)`, in order. Same partial-transfer rules as [`read_remote`].
#[doc(alias = "process_vm_writev")]
pub fn write_remote(pid: Pid, iov_pairs: &[(u64, usize)], buf: &[u8]) -> nix::Result<usize> {
    transfer(iov_pairs, buf.len(), |off, want, iov| {
        let local = [IoSlice::new(&buf[off..off + want])];
        process_vm_writev(pid, &local, iov)
    })
}

/// Page categories of `PAGEMAP_SCAN` (linux/fs.h).
pub mod category {
    /// Userfaultfd write-protect can be used on the page.
    pub const WPALLOWED: u64 = 1 << 0;
    /// Written since the last write-protect (uffd-wp async).
    pub const WRITTEN: u64 = 1 << 1;
    /// File-backed page (or shared anon).
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    pub const SWAPPED: u64 = 1 << 4;
    /// Mapped to the shared zero page.
    pub const PFNZERO: u64 = 1 << 5;
    pub const HUGE: u64 = 1 << 6;
    pub const SOFT_DIRTY: u64 = 1 << 7;
    /// Guard region (MADV_GUARD_INSTALL, 6.14+).
    pub const GUARD: u64 = 1 << 8;
}

/// `PM_SCAN_WP_MATCHING`: write-protect the matched pages.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: abort on pages without async uffd-wp.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// One run of pages with the same reported categories; `end` exclusive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    /// The requested `return_mask` bits that apply to the run.
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16) | ((b'f' as libc::c_ulong) << 8) | 16;

/// Regions returned per ioctl call.
const SCAN_BATCH: usize = 512;

/// `ioctl(pagemap_fd, PAGEMAP_SCAN, ...)`—Lists the page runs in
/// `[start, end)` that match the category filter.
///
/// A page matches when `(categories ^ category_inverted) & category_mask ==
/// category_mask` and, if `category_anyof_mask` is non-zero, `(categories ^
/// category_inverted) & category_anyof_mask != 0`. Each run reports the
/// `return_mask` bits (must be non-zero). `flags` takes
/// [`PM_SCAN_WP_MATCHING`] / [`PM_SCAN_CHECK_WPASYNC`]. `pagemap_fd` is an
/// open `/proc/P/pagemap`. Adjacent runs with equal categories are merged.
#[doc(alias = "PAGEMAP_SCAN")]
#[allow(clippy::too_many_arguments)]
pub fn pagemap_scan(
    pagemap_fd: impl AsFd,
    start: u64,
    end: u64,
    category_mask: u64,
    category_inverted: u64,
    category_anyof_mask: u64,
    return_mask: u64,
    flags: u64,
) -> nix::Result<Vec<PageRegion>> {
    let fd = pagemap_fd.as_fd().as_raw_fd();
    let mut out: Vec<PageRegion> = Vec::new();
    let mut buf = vec![PageRegion::default(); SCAN_BATCH];
    let mut cur = start;
    while cur < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start: cur,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_inverted,
            category_mask,
            category_anyof_mask,
            return_mask,
            ..Default::default()
        };
        // SAFETY: `arg` is a live pm_scan_arg whose size field matches its
        // layout; `vec`/`vec_len` describe `buf`, owned and writable for the
        // call, so the kernel writes at most vec_len page_regions into it.
        let ret = unsafe { libc::ioctl(fd, PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
        let n = Errno::result(ret)? as usize;
        for r in &buf[..n.min(buf.len())] {
            match out.last_mut() {
                Some(last) if last.end == r.start && last.categories == r.categories => last.end = r.end,
                _ => out.push(*r),
            }
        }
        if arg.walk_end <= cur {
            // No progress: would loop forever.
            return Err(Errno::EIO);
        }
        cur = arg.walk_end;
    }
    Ok(out)
}

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
pub mod pm {
    pub const PRESENT: u64 = 1 << 63;
    pub const SWAPPED: u64 = 1 << 62;
    /// File page or shared anon.
    pub const FILE_SHARED: u64 = 1 << 61;
    pub const GUARD: u64 = 1 << 58;
    pub const UFFD_WP: u64 = 1 << 57;
    pub const EXCLUSIVE: u64 = 1 << 56;
    pub const SOFT_DIRTY: u64 = 1 << 55;
    /// PFN (root only; 0 otherwise), when present.
    pub const PFN_MASK: u64 = (1 << 55) - 1;
    /// Swap type of a swapped entry (root only): bits 0-4.
    pub const SWAP_TYPE_MASK: u64 = 0x1f;
    /// The swap type the kernel gives PTE markers (the last of the 32).
    pub const SWAP_TYPE_PTE_MARKER: u64 = 31;

    /// Whether a pagemap entry is a userfaultfd write-protect marker: no
    /// page, only the wp bit kept on an empty entry. PAGEMAP_SCAN counts
    /// these as "swapped", but they hold nothing (a page the program
    /// dropped with MADV_DONTNEED while writes were tracked, once a scan
    /// protected the empty entry again).
    pub fn is_wp_marker(e: u64) -> bool {
        e & PRESENT == 0
            && e & SWAPPED != 0
            && e & GUARD == 0
            && e & UFFD_WP != 0
            && e & SWAP_TYPE_MASK == SWAP_TYPE_PTE_MARKER
    }
}

/// `runs` (page-aligned `(start, end)` pairs) without the pages whose
/// pagemap entries are write-protect markers ([`pm::is_wp_marker`]).
/// Only runs for which `check` is true are looked at.
pub fn drop_wp_markers(pid: Pid, runs: &[(u64, u64, bool)]) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::with_capacity(runs.len());
    for &(s, e, check) in runs {
        if !check {
            out.push((s, e));
            continue;
        }
        let entries = read_pagemap(pid, s, e)?;
        let mut run: Option<u64> = None;
        for (i, &pme) in entries.iter().enumerate() {
            let a = s + i as u64 * PAGE_SIZE;
            match (pm::is_wp_marker(pme), run) {
                (false, None) => run = Some(a),
                (true, Some(r)) => {
                    out.push((r, a));
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(r) = run {
            out.push((r, e));
        }
    }
    Ok(out)
}

/// Reads the raw `/proc/P/pagemap` entries for the pages of
/// `[start, end)` (page-aligned), one u64 per page.
pub fn read_pagemap(pid: Pid, start: u64, end: u64) -> std::io::Result<Vec<u64>> {
    if (start | end) & (PAGE_SIZE - 1) != 0 || end < start {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let file = File::open(format!("/proc/{pid}/pagemap"))?;
    let pages = ((end - start) / PAGE_SIZE) as usize;
    let mut bytes = vec![0u8; pages * 8];
    file.read_exact_at(&mut bytes, start / PAGE_SIZE * 8)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunk of 8")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wp_markers_are_told_from_swapped_pages() {
        let marker = pm::SWAPPED | pm::UFFD_WP | 31 | (7 << 5);
        assert!(pm::is_wp_marker(marker));
        // A page swapped out while write-protected: a real swap type.
        assert!(!pm::is_wp_marker(pm::SWAPPED | pm::UFFD_WP | 2));
        // A guard region (also a marker, handled apart).
        assert!(!pm::is_wp_marker(marker | pm::GUARD));
        assert!(!pm::is_wp_marker(pm::PRESENT | pm::UFFD_WP));
        assert!(!pm::is_wp_marker(0));
    }

    #[test]
    fn ioctl_number() {
        // _IOWR('f', 16, 96 bytes), as the kernel headers compute it.
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
    }

    #[test]
    fn transfer_splits_and_stops_at_fault() {
        // 3000 ranges of 1 byte: 3 calls of <= 1024 iovecs.
        let pairs: Vec<(u64, usize)> = (0..3000).map(|i| (0x1000 + 2 * i, 1)).collect();
        let mut calls = Vec::new();
        let n = transfer(&pairs, 3000, |off, want, iov| {
            calls.push((off, want, iov.len()));
            Ok(want)
        })
        .unwrap();
        assert_eq!(n, 3000);
        assert_eq!(calls, [(0, 1024, 1024), (1024, 1024, 1024), (2048, 952, 952)]);

        // A short read inside the second range resumes there, then a fault.
        let pairs = [(0x1000u64, 100usize), (0x9000, 100), (0x20000, 50)];
        let mut seen = Vec::new();
        let n = transfer(&pairs, 250, |off, want, iov| {
            seen.push((off, want, iov[0].base));
            match seen.len() {
                1 => Ok(130),
                _ => Err(Errno::EFAULT),
            }
        })
        .unwrap();
        assert_eq!(n, 130);
        assert_eq!(seen, [(0, 250, 0x1000), (130, 120, 0x9000 + 30)]);

        assert_eq!(transfer(&pairs, 10, |_, _, _| Ok(0)), Err(Errno::EINVAL));
    }

    #[test]
    fn guard_category_matches_kernel() {
        const MADV_GUARD_INSTALL: i32 = 102;
        // SAFETY: fresh private anonymous mapping of 4 pages, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let start = base as u64;
        // SAFETY: page 1 lies inside our own fresh mapping; page 3 is
        // written through a pointer into it.
        unsafe {
            assert_eq!(
                libc::madvise(base.cast::<u8>().add(4096).cast(), 4096, MADV_GUARD_INSTALL),
                0,
                "MADV_GUARD_INSTALL (6.13+)"
            );
            std::ptr::write_volatile(base.cast::<u8>().add(3 * 4096), 7);
        }
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let end = start + 4 * 4096;
        let guard = pagemap_scan(&pagemap, start, end, category::GUARD, 0, 0, category::GUARD, 0).unwrap();
        assert_eq!(
            guard,
            [PageRegion {
                start: start + 4096,
                end: start + 2 * 4096,
                categories: category::GUARD
            }]
        );
        let present = pagemap_scan(&pagemap, start, end, category::PRESENT, 0, 0, category::PRESENT, 0).unwrap();
        assert_eq!(present.len(), 1);
        assert_eq!(present[0].start, start + 3 * 4096);
        let raw = read_pagemap(Pid::this(), start, end).unwrap();
        assert_ne!(raw[1] & pm::GUARD, 0);
        assert_ne!(raw[3] & pm::PRESENT, 0);
        assert_eq!(raw[0] & (pm::PRESENT | pm::GUARD), 0);
        // SAFETY: unmapping the mapping made above; nothing refers to it.
        unsafe { libc::munmap(base, 4 * 4096) };
    }

    #[test]
    fn read_own_memory() {
        let data: Vec<u8> = (0..10000u32).map(|i| (i * 7) as u8).collect();
        let base = data.as_ptr() as u64;
        let me = Pid::this();
        let mut buf = vec![0u8; 300];
        let pairs = [(base + 5, 100), (base + 9000, 200)];
        assert_eq!(read_remote(me, &pairs, &mut buf).unwrap(), 300);
        assert_eq!(&buf[..100], &data[5..105]);
        assert_eq!(&buf[100..], &data[9000..9200]);

        // The second range is unmapped (page 0): only the first is read.
        let pairs = [(base, 100), (0, 100)];
        assert_eq!(read_remote(me, &pairs, &mut buf).unwrap(), 100);
        assert_eq!(read_remote(me, &[(0, 8)], &mut buf).unwrap(), 0);

        let mut target = vec![0u8; 64];
        let t = target.as_mut_ptr() as u64;
        let n = write_remote(me, &[(t + 8, 4), (t + 32, 4)], b"abcdwxyz").unwrap();
        assert_eq!(n, 8);
        assert_eq!(&target[8..12], b"abcd");
        assert_eq!(&target[32..36], b"wxyz");
    }
}
