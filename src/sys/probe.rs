//! Harmless syscalls that tell whether the kernel has a feature.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// PAGEMAP_SCAN: an ioctl with a zero-sized range succeeds (or fails with
/// EINVAL on a bad argument) only when the kernel knows the command.
pub fn pagemap_scan() -> bool {
    let Ok(f) = File::open("/proc/self/pagemap") else {
        return false;
    };
    // struct pm_scan_arg with size = 0 is rejected with EINVAL by kernels
    // that have the ioctl; older kernels answer ENOTTY.
    let arg = [0u64; 12];
    // _IOWR('f', 16, struct pm_scan_arg) with sizeof = 96.
    let req: libc::c_ulong = (3 << 30) | (96 << 16) | ((b'f' as libc::c_ulong) << 8) | 16;
    // SAFETY: `arg` is a valid, writable 96-byte buffer for the duration of
    // the call and `f` is an open pagemap file.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req, arg.as_ptr()) };
    r >= 0 || Errno::last() != Errno::ENOTTY
}

/// clone3 exists: a call with a too-small size fails with EINVAL, a
/// missing syscall with ENOSYS.
pub fn clone3() -> bool {
    // SAFETY: size 0 makes the kernel reject the call before reading the
    // (null) argument; no process is created.
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    r < 0 && Errno::last() != Errno::ENOSYS
}

pub fn pidfd_open() -> bool {
    // SAFETY: pidfd_open(own pid, 0) has no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id() as libc::c_int, 0) };
    if r >= 0 {
        // SAFETY: r is the pidfd just returned to us.
        unsafe { libc::close(r as libc::c_int) };
        return true;
    }
    false
}

pub fn kcmp() -> bool {
    let pid = std::process::id() as libc::pid_t;
    // KCMP_VM (1) of ourselves with ourselves: equal (0).
    // SAFETY: kcmp takes only integers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, 1, 0, 0) };
    r == 0
}

pub fn prctl_mm_map() -> bool {
    let mut size: libc::c_uint = 0;
    // PR_SET_MM (35), PR_SET_MM_MAP_SIZE (15): writes sizeof(prctl_mm_map).
    // SAFETY: the kernel writes one unsigned int to `size`.
    let r = unsafe { libc::prctl(35, 15, &mut size as *mut libc::c_uint, 0, 0) };
    r == 0 && size > 0
}
