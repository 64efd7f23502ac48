//! userfaultfd ioctls used for write tracking (kernel-mechanics.md §3.3):
//! UFFDIO_API with the async write-protect features and UFFDIO_REGISTER
//! in write-protect mode. The uffd itself is created inside the target
//! (by syscall injection) and taken with pidfd_getfd; these ioctls act on
//! the mm the uffd was created in, whoever calls them.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;

/// `UFFD_API`.
const UFFD_API: u64 = 0xAA;
/// The kernel resolves write faults itself by clearing the wp bit.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Never-populated ptes are write-protected too (so first writes count).
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFDIO_REGISTER_MODE_WP`.
const REGISTER_MODE_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

const fn iowr(nr: u64, size: usize) -> libc::c_ulong {
    ((3u64 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr) as libc::c_ulong
}

/// `_IOWR(UFFDIO, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = iowr(0x3F, std::mem::size_of::<UffdioApi>());
/// `_IOWR(UFFDIO, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = iowr(0x00, std::mem::size_of::<UffdioRegister>());

const _: () = assert!(UFFDIO_API == 0xc018aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020aa00);

/// `UFFDIO_API` asking for `features`; returns the features the kernel
/// offers. Fails (EINVAL) when one of `features` is not supported.
pub fn api(uffd: impl AsFd, features: u64) -> nix::Result<u64> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `a` is a live uffdio_api the kernel reads and writes back;
    // the fd is borrowed for the call.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_API, &mut a as *mut UffdioApi) };
    Errno::result(ret)?;
    Ok(a.features)
}

/// `UFFDIO_REGISTER` of `[start, start+len)` in write-protect mode.
pub fn register_wp(uffd: impl AsFd, start: u64, len: u64) -> nix::Result<()> {
    let mut r = UffdioRegister {
        start,
        len,
        mode: REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `r` is a live uffdio_register the kernel reads and writes
    // back (the ioctls field); the fd is borrowed for the call.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_REGISTER, &mut r as *mut UffdioRegister) };
    Errno::result(ret)?;
    Ok(())
}

/// `UFFDIO_REGISTER_MODE_MISSING`.
const REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

/// `_IOWR(UFFDIO, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = iowr(0x03, std::mem::size_of::<UffdioCopy>());
/// `_IOWR(UFFDIO, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: libc::c_ulong = iowr(0x04, std::mem::size_of::<UffdioZeropage>());

const _: () = assert!(UFFDIO_COPY == 0xc028aa03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020aa04);

/// `UFFDIO_REGISTER` of `[start, start+len)` in missing mode (anonymous
/// memory: the first touch of an unpopulated page waits for us).
pub fn register_missing(uffd: impl AsFd, start: u64, len: u64) -> nix::Result<()> {
    let mut r = UffdioRegister {
        start,
        len,
        mode: REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `r` is a live uffdio_register the kernel reads and writes
    // back; the fd is borrowed for the call.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_REGISTER, &mut r as *mut UffdioRegister) };
    Errno::result(ret)?;
    Ok(())
}

/// `UFFDIO_COPY` of `src` to `dst` in the uffd's mm (page aligned, whole
/// pages), waking the faulting threads. Returns the bytes copied: fewer
/// than `src.len()` when a page there is already present (EEXIST) — the
/// caller skips that page and goes on.
pub fn copy(uffd: impl AsFd, dst: u64, src: &[u8]) -> nix::Result<usize> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `src` is a live buffer of `len` bytes the kernel only reads;
    // `c` is a live uffdio_copy the kernel writes its result into.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_COPY, &mut c as *mut UffdioCopy) };
    if ret == 0 {
        return Ok(src.len());
    }
    let e = Errno::last();
    if c.copy > 0 {
        return Ok(c.copy as usize);
    }
    if e == Errno::EEXIST {
        return Ok(0);
    }
    Err(e)
}

/// `UFFDIO_ZEROPAGE` of `[start, start+len)`: maps zero pages, wakes.
/// Already present pages (EEXIST) are not an error.
pub fn zeropage(uffd: impl AsFd, start: u64, len: u64) -> nix::Result<()> {
    let mut z = UffdioZeropage {
        start,
        len,
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `z` is a live uffdio_zeropage the kernel reads and writes.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_ZEROPAGE, &mut z as *mut UffdioZeropage) };
    match Errno::result(ret) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads pending `uffd_msg`s (non-blocking uffd); returns the addresses
/// of page faults. Other events are ignored.
pub fn read_faults(uffd: impl AsFd) -> nix::Result<Vec<u64>> {
    let mut buf = [0u8; 32 * 64];
    let mut out = Vec::new();
    match nix::unistd::read(uffd.as_fd().as_raw_fd(), &mut buf) {
        Ok(n) => {
            for m in buf[..n].chunks_exact(32) {
                if m[0] == EVENT_PAGEFAULT {
                    // struct uffd_msg: event u8, 7 reserved bytes, then
                    // pagefault { flags u64, address u64, ... }.
                    out.push(u64::from_le_bytes(m[16..24].try_into().unwrap()));
                }
            }
            Ok(out)
        }
        Err(Errno::EAGAIN) => Ok(out),
        Err(e) => Err(e),
    }
}

/// poll(POLLIN) on `fds` for up to `timeout_ms`; which are readable.
pub fn poll_in(fds: &[std::os::fd::BorrowedFd], timeout_ms: i32) -> nix::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfds the kernel fills in.
    let ret = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    Errno::result(ret)?;
    Ok(p.iter().map(|x| x.revents != 0).collect())
}
