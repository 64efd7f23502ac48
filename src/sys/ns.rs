//! Namespace helpers the restore of a container needs and nix does not
//! wrap: the NIS domain name and bringing the loopback interface up.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use nix::errno::Errno;

/// setdomainname(2) in the caller's UTS namespace.
pub fn set_domainname(name: &str) -> nix::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which stay
    // borrowed for the call; the kernel copies them.
    let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    Errno::result(r).map(drop)
}

/// Sets IFF_UP on `lo` in the caller's network namespace.
pub fn loopback_up() -> nix::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq that lives across the call;
    // SIOCGIFFLAGS fills its ifru_flags member.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(r)?;
    // SAFETY: SIOCGIFFLAGS just wrote the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads ifru_flags.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(r).map(drop)
}

/// Unlocks the pty whose master is `master` (TIOCSPTLCK 0) and returns
/// its index (TIOCGPTN).
pub fn pty_unlock_index(master: std::os::fd::BorrowedFd<'_>) -> nix::Result<u32> {
    let zero: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which is live.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &zero) };
    Errno::result(r)?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to the pointer, which is live.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    Errno::result(r)?;
    Ok(n)
}

/// Makes the terminal `fd` the caller's controlling terminal (TIOCSCTTY;
/// the caller is a session leader without one).
pub fn set_ctty(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(r).map(drop)
}
