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
