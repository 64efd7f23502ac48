//! Address-space helpers for staging memory during restore.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `mmap(addr, len, prot, flags | MAP_FIXED*, fd, off)` at an exact address.
///
/// `flags` must contain MAP_FIXED or MAP_FIXED_NOREPLACE; the caller owns
/// the range (it chose it free of everything it cares about).
pub fn mmap_at(addr: u64, len: u64, prot: i32, flags: i32, fd: Option<BorrowedFd>, off: u64) -> nix::Result<u64> {
    assert!(flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0);
    let raw = fd.map(|f| f.as_raw_fd()).unwrap_or(-1);
    // SAFETY: the mapping is placed at a fixed address the caller reserved
    // for staging; no Rust object lives there (the range was found free in
    // /proc/self/maps or was reserved by us with MAP_FIXED_NOREPLACE).
    let p = unsafe { libc::mmap(addr as *mut _, len as usize, prot, flags, raw, off as i64) };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    if p as u64 != addr {
        // SAFETY: p/len is the mapping just created by this call.
        unsafe { libc::munmap(p, len as usize) };
        return Err(Errno::EEXIST);
    }
    Ok(addr)
}

/// A new shared anonymous memory object of `len` bytes (what
/// MAP_SHARED|MAP_ANONYMOUS creates, shown as `/dev/zero (deleted)`), as
/// an O_RDWR fd: mapped once, opened through /proc/self/map_files, then
/// unmapped again.
pub fn anon_shmem_fd(len: u64) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: a fresh mapping at an address the kernel picks; nothing of
    // ours lives there and it is unmapped below without being touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let a = p as u64;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/map_files/{a:x}-{:x}", a + len));
    // SAFETY: p/len is the mapping created above.
    unsafe { libc::munmap(p, len as usize) };
    Ok(f?.into())
}

/// `mprotect(addr, len, prot)` on a staging range we own.
pub fn mprotect(addr: u64, len: u64, prot: i32) -> nix::Result<()> {
    // SAFETY: the range is a staging mapping created by `mmap_at`; no Rust
    // reference points into it.
    Errno::result(unsafe { libc::mprotect(addr as *mut _, len as usize, prot) }).map(drop)
}

/// `munmap(addr, len)` of a staging range we own.
pub fn munmap(addr: u64, len: u64) -> nix::Result<()> {
    // SAFETY: as for `mprotect`: only ranges created by `mmap_at`.
    Errno::result(unsafe { libc::munmap(addr as *mut _, len as usize) }).map(drop)
}

/// `MADV_POPULATE_WRITE` (5.14+).
const MADV_POPULATE_WRITE: i32 = 23;

/// `madvise(addr, len, MADV_POPULATE_WRITE)` on a writable staging range
/// we own: allocates (or breaks copy-on-write of) every page up front, in
/// one call, instead of one page fault per page while it is filled.
pub fn populate_write(addr: u64, len: u64) -> nix::Result<()> {
    // SAFETY: the range is a writable staging mapping created by `mmap_at`;
    // populating it changes no content and no Rust reference points into it.
    Errno::result(unsafe { libc::madvise(addr as *mut _, len as usize, MADV_POPULATE_WRITE) }).map(drop)
}

/// `MADV_COLLAPSE` (6.1+).
const MADV_COLLAPSE: i32 = 25;

/// Size of a huge page (PMD) on x86_64.
pub const HPAGE_SIZE: u64 = 2 << 20;

/// Backs the 2 MiB-aligned block at `addr` of an anonymous staging mapping
/// with one huge page: one page is populated (a collapse needs a page table
/// to start from), then `MADV_COLLAPSE` replaces the block by a huge page.
/// Fails when THP is off, no huge page can be had, or the kernel is older.
pub fn stage_huge(addr: u64) -> nix::Result<()> {
    if addr % HPAGE_SIZE != 0 {
        return Err(Errno::EINVAL);
    }
    populate_write(addr, 4096)?;
    // SAFETY: the block lies in a staging mapping created by `mmap_at`; a
    // collapse keeps its content (the page written above, zeros elsewhere)
    // and no Rust reference points into it.
    Errno::result(unsafe { libc::madvise(addr as *mut _, HPAGE_SIZE as usize, MADV_COLLAPSE) }).map(drop)
}

/// Bytes populated and read at a time by [`fill_from`]: a chunk is zeroed
/// by the populate and overwritten by the read while it is still in the
/// CPU cache.
const FILL_CHUNK: u64 = 1 << 20;

/// Fills the staging range `[addr, addr+len)` from `fd` at `off`, chunk by
/// chunk: populates the chunk first when it can (best effort: on an old
/// kernel, or if this fails, the pages just fault in one by one during the
/// read), then reads its bytes. Fails with EIO on a short file.
pub fn fill_from(fd: BorrowedFd, addr: u64, len: u64, off: u64) -> nix::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = FILL_CHUNK.min(len - done);
        let _ = populate_write(addr + done, n);
        pread_to(fd, addr + done, n, off + done)?;
        done += n;
    }
    Ok(())
}

/// Reads exactly `len` bytes at file offset `off` into memory at `addr`
/// (a writable staging mapping). Fails with EIO on a short file.
pub fn pread_to(fd: BorrowedFd, addr: u64, len: u64, off: u64) -> nix::Result<()> {
    let mut done = 0u64;
    while done < len {
        // SAFETY: [addr, addr+len) is a writable staging mapping created by
        // `mmap_at` (PROT_WRITE); the kernel writes into it directly and no
        // Rust object aliases it.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                (addr + done) as *mut libc::c_void,
                (len - done) as usize,
                (off + done) as i64,
            )
        };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(Errno::EIO);
        }
        done += n as u64;
    }
    Ok(())
}

/// `mlock2(addr, len, onfault ? MLOCK_ONFAULT : 0)` of a staging range we
/// own.
pub fn mlock(addr: u64, len: u64, onfault: bool) -> nix::Result<()> {
    let flags: libc::c_int = if onfault { 1 } else { 0 };
    // SAFETY: as for `mprotect`: only ranges created by `mmap_at`; mlock
    // does not change their contents.
    Errno::result(unsafe { libc::syscall(libc::SYS_mlock2, addr, len as usize, flags) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn fill_from_reads_across_chunks_and_fails_on_short_file() {
        let data: Vec<u8> = (0..(3 * FILL_CHUNK + 12345) as usize)
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let path = std::env::temp_dir().join(format!("cryo-fill-from-{}", std::process::id()));
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);

        let len = 3 * FILL_CHUNK + 8192;
        // SAFETY: a fresh private anonymous mapping at a kernel-chosen
        // address, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = p as u64;
        // From file offset 4096 into the mapping at 4096.
        fill_from(file.as_fd(), addr + 4096, len - 8192, 4096).unwrap();
        // SAFETY: the mapping is `len` bytes, readable, and only read here.
        let got = unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) };
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert!(got[4096..(len - 4096) as usize] == data[4096..(len - 4096) as usize]);
        assert!(got[(len - 4096) as usize..].iter().all(|&b| b == 0));
        // The file ends before the range does.
        assert_eq!(fill_from(file.as_fd(), addr, len, 8192), Err(Errno::EIO));
        // SAFETY: unmapping the mapping made above; `got` is not used again.
        unsafe { libc::munmap(p, len as usize) };
    }
}

/// A private anonymous mapping of `len` bytes at an address the kernel
/// picks, without swap accounting (MAP_NORESERVE): room for pages that
/// arrive sparsely (pre-copy rounds received by the page server).
pub fn reserve(len: u64) -> nix::Result<u64> {
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps nothing
    // that exists; only `write_into`/`move_to`/`munmap` touch it later.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(p as u64)
}

/// Copies `data` into `[addr, addr + data.len())`, a writable range of a
/// mapping made by [`reserve`].
pub fn write_into(addr: u64, data: &[u8]) {
    // SAFETY: the caller passes a range inside a live `reserve` mapping
    // (checked against the mapping's bounds by its owner); no Rust object
    // lives there, and `data` is a separate buffer (no overlap).
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

/// Moves the pages of `[src, src + len)` (part of one anonymous mapping
/// of ours) to `dst`, replacing what was there: `mremap(MREMAP_MAYMOVE |
/// MREMAP_FIXED)`. Page tables move; no byte is copied.
pub fn move_to(src: u64, len: u64, dst: u64) -> nix::Result<()> {
    // SAFETY: both ranges belong to the caller: `src` to a `reserve`
    // mapping inherited from the engine, `dst` to the staging region it
    // chose free (find_hole); no Rust reference points into either.
    let p = unsafe {
        libc::mremap(
            src as *mut libc::c_void,
            len as usize,
            len as usize,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dst as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(())
}

/// `madvise(MADV_DONTNEED)`: the private anonymous range reads as zeros
/// again.
pub fn discard(addr: u64, len: u64) -> nix::Result<()> {
    // SAFETY: a staging range of ours (see `move_to`); dropping its pages
    // invalidates no Rust reference.
    Errno::result(unsafe { libc::madvise(addr as *mut _, len as usize, libc::MADV_DONTNEED) }).map(drop)
}

/// `madvise(addr, 2 MiB, MADV_COLLAPSE)`: the populated 2 MiB block at
/// `addr` (aligned) becomes one huge page, content kept; the mapping's
/// flags do not change.
pub fn collapse(addr: u64) -> nix::Result<()> {
    if !addr.is_multiple_of(HPAGE_SIZE) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: a block of a `reserve` mapping of ours; a collapse keeps
    // its content and no Rust reference points into it.
    Errno::result(unsafe { libc::madvise(addr as *mut _, HPAGE_SIZE as usize, MADV_COLLAPSE) }).map(drop)
}
