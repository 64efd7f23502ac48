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

/// Creates a userfaultfd in this process; `user_only` adds
/// UFFD_USER_MODE_ONLY.
fn userfaultfd(user_only: bool) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | if user_only { 1 } else { 0 };
    // SAFETY: userfaultfd takes only flags; no memory argument.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r < 0 {
        return None;
    }
    // SAFETY: r is a descriptor just returned to us and owned by nobody else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as libc::c_int) })
}

/// Memory tracking between pre-dumps as the engine does it: a
/// userfaultfd that accepts async write-protect of unpopulated ptes, and
/// PAGEMAP_SCAN to read and re-arm the write bits.
pub fn uffd_wp_async() -> bool {
    let Some(fd) = userfaultfd(true) else {
        return false;
    };
    let want = super::uffd::FEATURE_WP_ASYNC | super::uffd::FEATURE_WP_UNPOPULATED;
    super::uffd::api(&fd, want).is_ok() && pagemap_scan()
}

/// Lazy pages as the engine does them: a userfaultfd that also handles
/// faults from inside the kernel (no UFFD_USER_MODE_ONLY, which needs
/// privilege or vm.unprivileged_userfaultfd), in missing mode, with the
/// non-cooperative events (fork, remap, remove, unmap), and pidfd_getfd
/// to take it from a restored task.
pub fn uffd_missing() -> bool {
    let Some(fd) = userfaultfd(false) else {
        return false;
    };
    if super::uffd::api(&fd, super::uffd::FEATURES_NONCOOP).is_err() {
        return false;
    }
    // pidfd_getfd of our own fd through our own pidfd.
    // SAFETY: pidfd_open takes only integers.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id() as libc::c_int, 0) };
    if pfd < 0 {
        return false;
    }
    // SAFETY: pidfd_getfd takes only integers; pfd is our pidfd.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd as libc::c_int, fd.as_raw_fd(), 0) };
    // SAFETY: pfd (and got, if valid) are descriptors returned to us and used nowhere else.
    unsafe {
        if got >= 0 {
            libc::close(got as libc::c_int);
        }
        libc::close(pfd as libc::c_int);
    }
    got >= 0
}
