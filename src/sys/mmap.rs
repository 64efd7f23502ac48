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
