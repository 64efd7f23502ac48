//! Syscalls on file descriptors that nix does not wrap (or not with the
//! features cryo enables): tee, FIONREAD, socket options by number,
//! peeking receives, eventfd/signalfd/timerfd/inotify/epoll creation and
//! state.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `tee(fd_in, fd_out, len, flags)`: duplicates up to `len` bytes of pipe
/// `fd_in` into pipe `fd_out` without consuming them.
pub fn tee(fd_in: BorrowedFd, fd_out: BorrowedFd, len: usize, flags: u32) -> nix::Result<usize> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::tee(fd_in.as_raw_fd(), fd_out.as_raw_fd(), len, flags) };
    Errno::result(r).map(|n| n as usize)
}

/// `ioctl(fd, FIONREAD)`: bytes ready to read (pipes, sockets).
pub fn fionread(fd: BorrowedFd) -> nix::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    Errno::result(r).map(|_| n.max(0) as usize)
}

/// `getsockopt(fd, level, name)` of an int-sized option.
pub fn getsockopt_int(fd: BorrowedFd, level: i32, name: i32) -> nix::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    Errno::result(r).map(|_| v)
}

/// `setsockopt(fd, level, name, &int)`.
pub fn setsockopt_int(fd: BorrowedFd, level: i32, name: i32, v: i32) -> nix::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel reads `len` bytes from `v`.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&v as *const libc::c_int).cast(), len) };
    Errno::result(r).map(drop)
}

/// `getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO/SO_SNDTIMEO)` as (sec, usec).
pub fn getsockopt_timeval(fd: BorrowedFd, name: i32) -> nix::Result<(i64, i64)> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `tv`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    Errno::result(r).map(|_| (tv.tv_sec, tv.tv_usec))
}

/// `setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO/SO_SNDTIMEO, timeval)`.
pub fn setsockopt_timeval(fd: BorrowedFd, name: i32, sec: i64, usec: i64) -> nix::Result<()> {
    let tv = libc::timeval {
        tv_sec: sec,
        tv_usec: usec,
    };
    let len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: the kernel reads `len` bytes from `tv`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&tv as *const libc::timeval).cast(),
            len,
        )
    };
    Errno::result(r).map(drop)
}

/// `recv(fd, buf, MSG_PEEK|MSG_DONTWAIT|extra)`: the next message (or
/// stream bytes) at the socket's peek offset, without consuming it.
/// Returns the byte count (for datagrams with MSG_TRUNC: the full size).
pub fn recv_peek(fd: BorrowedFd, buf: &mut [u8], extra: i32) -> nix::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT | extra,
        )
    };
    Errno::result(r).map(|n| n as usize)
}

fn own(fd: libc::c_int) -> OwnedFd {
    // SAFETY: the caller passes a new fd that the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `eventfd(count, flags)`.
pub fn eventfd(count: u32, flags: i32) -> nix::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let r = unsafe { libc::eventfd(count, flags) };
    Errno::result(r).map(own)
}

/// `signalfd(-1, mask, flags)` for the 64 standard signal bits.
pub fn signalfd(mask: u64, flags: i32) -> nix::Result<OwnedFd> {
    // The kernel reads a sigset of `sizemask` = 8 bytes.
    // SAFETY: the pointer refers to 8 readable bytes for the call.
    let r = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) };
    Errno::result(r).map(|fd| own(fd as libc::c_int))
}

/// An itimerspec as four numbers: (value sec, nsec, interval sec, nsec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerSpec {
    pub value: (i64, i64),
    pub interval: (i64, i64),
}

/// `timerfd_create(clockid, flags)`.
pub fn timerfd_create(clockid: i32, flags: i32) -> nix::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let r = unsafe { libc::timerfd_create(clockid, flags) };
    Errno::result(r).map(own)
}

/// `timerfd_settime(fd, flags, spec)`.
pub fn timerfd_settime(fd: BorrowedFd, flags: i32, spec: TimerSpec) -> nix::Result<()> {
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: spec.interval.0,
            tv_nsec: spec.interval.1,
        },
        it_value: libc::timespec {
            tv_sec: spec.value.0,
            tv_nsec: spec.value.1,
        },
    };
    // SAFETY: `its` is read by the kernel; no old value is requested.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &its, std::ptr::null_mut()) };
    Errno::result(r).map(drop)
}

/// `timerfd_gettime(fd)`: the time left and the interval.
pub fn timerfd_gettime(fd: BorrowedFd) -> nix::Result<TimerSpec> {
    // SAFETY: an all-zero itimerspec is valid.
    let mut its: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one itimerspec.
    let r = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut its) };
    Errno::result(r).map(|_| TimerSpec {
        value: (its.it_value.tv_sec, its.it_value.tv_nsec),
        interval: (its.it_interval.tv_sec, its.it_interval.tv_nsec),
    })
}

/// `ioctl(fd, TFD_IOC_SET_TICKS, &ticks)`: sets unread expirations.
pub fn timerfd_set_ticks(fd: BorrowedFd, ticks: u64) -> nix::Result<()> {
    // _IOW('T', 0, u64)
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    // SAFETY: the kernel reads one u64 from the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
    Errno::result(r).map(drop)
}

/// `epoll_create1(flags)`.
pub fn epoll_create(flags: i32) -> nix::Result<OwnedFd> {
    // SAFETY: integer argument.
    let r = unsafe { libc::epoll_create1(flags) };
    Errno::result(r).map(own)
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data})`.
pub fn epoll_add(epfd: BorrowedFd, fd: RawFd, events: u32, data: u64) -> nix::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call.
    let r = unsafe { libc::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    Errno::result(r).map(drop)
}

/// `inotify_init1(flags)`.
pub fn inotify_init(flags: i32) -> nix::Result<OwnedFd> {
    // SAFETY: integer argument.
    let r = unsafe { libc::inotify_init1(flags) };
    Errno::result(r).map(own)
}

/// `inotify_add_watch(fd, path, mask)`: the watch descriptor.
pub fn inotify_add_watch(fd: BorrowedFd, path: &std::ffi::CStr, mask: u32) -> nix::Result<i32> {
    // SAFETY: `path` is NUL-terminated.
    let r = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    Errno::result(r)
}

/// `inotify_rm_watch(fd, wd)`.
pub fn inotify_rm_watch(fd: BorrowedFd, wd: i32) -> nix::Result<()> {
    // SAFETY: integer arguments.
    let r = unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
    Errno::result(r).map(drop)
}

/// `open_by_handle_at(mount_fd, handle, flags)` for a handle of `htype`
/// with the given bytes.
pub fn open_by_handle(mount_fd: BorrowedFd, htype: i32, bytes: &[u8], flags: i32) -> nix::Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    let mut buf = vec![0u8; 8 + bytes.len()];
    buf[0..4].copy_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf[4..8].copy_from_slice(&htype.to_ne_bytes());
    buf[8..].copy_from_slice(bytes);
    // SAFETY: `buf` holds a complete struct file_handle of its stated size.
    let r = unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd.as_raw_fd(), buf.as_ptr(), flags) };
    Errno::result(r).map(|fd| own(fd as libc::c_int))
}

/// `memfd_create(name, flags)`.
pub fn memfd_create(name: &std::ffi::CStr, flags: u32) -> nix::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated.
    let r = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    Errno::result(r).map(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn tee_copies_without_consuming() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"hello").unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        assert_eq!(tee(r.as_fd(), w2.as_fd(), 1 << 20, libc::SPLICE_F_NONBLOCK).unwrap(), 5);
        assert_eq!(fionread(r.as_fd()).unwrap(), 5);
        let mut b = [0u8; 8];
        assert_eq!(nix::unistd::read(r2.as_raw_fd(), &mut b).unwrap(), 5);
        assert_eq!(&b[..5], b"hello");
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut b).unwrap(), 5);
    }

    #[test]
    fn timerfd_round_trip() {
        let t = timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC).unwrap();
        let spec = TimerSpec {
            value: (100, 0),
            interval: (2, 500),
        };
        timerfd_settime(t.as_fd(), 0, spec).unwrap();
        let got = timerfd_gettime(t.as_fd()).unwrap();
        assert!(got.value.0 >= 99 && got.value.0 <= 100, "{got:?}");
        assert_eq!(got.interval, (2, 500));
    }
}

/// `flock(fd, op)`.
pub fn flock(fd: RawFd, op: i32) -> nix::Result<()> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::flock(fd, op) }).map(drop)
}

/// `fcntl(fd, cmd, &flock)` with a SEEK_SET range (`len` 0: to EOF), for
/// F_SETLK and F_OFD_SETLK.
pub fn set_lock(fd: RawFd, cmd: i32, ty: i16, start: i64, len: i64) -> nix::Result<()> {
    // SAFETY: a zeroed flock is a valid value (pid 0 as OFD locks need).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: `fl` is a valid flock the kernel only reads for these commands.
    Errno::result(unsafe { libc::fcntl(fd, cmd, &fl) }).map(drop)
}

/// fcntl(F_SETLEASE) with F_RDLCK, F_WRLCK or F_UNLCK.
pub fn set_lease(fd: RawFd, ty: i32) -> nix::Result<()> {
    // SAFETY: F_SETLEASE takes an integer argument.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETLEASE, ty) }).map(drop)
}

/// The kernel's `struct f_owner_ex`.
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;

/// fcntl(F_GETOWN_EX): (F_OWNER_TID/PID/PGRP, pid).
pub fn get_owner(fd: BorrowedFd) -> nix::Result<(i32, i32)> {
    let mut o = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one f_owner_ex (two ints) through the pointer.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut o as *mut FOwnerEx) })?;
    Ok((o.kind, o.pid))
}

/// fcntl(F_SETOWN_EX).
pub fn set_owner(fd: BorrowedFd, kind: i32, pid: i32) -> nix::Result<()> {
    let o = FOwnerEx { kind, pid };
    // SAFETY: F_SETOWN_EX reads one f_owner_ex through the pointer.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &o as *const FOwnerEx) }).map(drop)
}

/// fcntl(F_GETSIG) (Linux: 11).
pub fn get_sig(fd: BorrowedFd) -> nix::Result<i32> {
    // SAFETY: F_GETSIG takes no argument.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), 11) })
}

/// fcntl(F_SETSIG) (Linux: 10).
pub fn set_sig(fd: BorrowedFd, sig: i32) -> nix::Result<()> {
    // SAFETY: F_SETSIG takes an integer argument.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), 10, sig) }).map(drop)
}
