//! Socket calls with raw buffers that nix does not wrap: options of any
//! size (TCP_INFO, TCP_REPAIR_WINDOW, TCP_REPAIR_OPTIONS, strings), the
//! queue-length ioctls, and sends with raw flags.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `getsockopt(fd, level, name)` into `buf`; returns the length written.
pub fn getsockopt_buf(fd: BorrowedFd, level: i32, name: i32, buf: &mut [u8]) -> nix::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which is
    // writable for that length.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut len) };
    Errno::result(r).map(|_| len as usize)
}

/// `setsockopt(fd, level, name, buf)`.
pub fn setsockopt_buf(fd: BorrowedFd, level: i32, name: i32, buf: &[u8]) -> nix::Result<()> {
    // SAFETY: the kernel reads `buf.len()` bytes from `buf`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_ptr().cast(),
            buf.len() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// `ioctl(fd, req, &int)` for the socket queue ioctls (SIOCINQ,
/// SIOCOUTQ, SIOCOUTQNSD).
pub fn ioctl_int(fd: BorrowedFd, req: u64) -> nix::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: these requests write one int to the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut n) };
    Errno::result(r).map(|_| n)
}

/// `send(fd, buf, flags)`.
pub fn send(fd: BorrowedFd, buf: &[u8], flags: i32) -> nix::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    let r = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    Errno::result(r).map(|n| n as usize)
}

/// `recv(fd, buf, flags)`.
pub fn recv(fd: BorrowedFd, buf: &mut [u8], flags: i32) -> nix::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    Errno::result(r).map(|n| n as usize)
}

/// `socket(domain, ty | SOCK_CLOEXEC, proto)`.
pub fn socket(domain: i32, ty: i32, proto: i32) -> nix::Result<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    Errno::result(r).map(crate::sys::rawfd::own)
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in,
            // which is smaller than sockaddr_storage and less aligned.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// A socket address as a sockaddr_storage and its length.
fn to_storage(a: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        std::net::SocketAddr::V4(v) => {
            // SAFETY: sockaddr_in fits in (and is less aligned than) the storage.
            let s = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = v.port().to_be();
            s.sin_addr.s_addr = u32::from_ne_bytes(v.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v) => {
            // SAFETY: as above, for sockaddr_in6.
            let s = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = v.port().to_be();
            s.sin6_addr.s6_addr = v.ip().octets();
            s.sin6_flowinfo = v.flowinfo();
            s.sin6_scope_id = v.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// getsockname (`peer` false) or getpeername (`peer` true) of an inet
/// socket; `None` for another family.
pub fn inet_name(fd: BorrowedFd, peer: bool) -> nix::Result<Option<std::net::SocketAddr>> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes into the storage.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    Errno::result(r).map(|_| from_storage(&ss))
}

/// `recvfrom(fd, buf, flags)` on an inet socket: the byte count (the
/// datagram's length with MSG_TRUNC) and the sender.
pub fn recvfrom_inet(fd: BorrowedFd, buf: &mut [u8], flags: i32) -> nix::Result<(usize, Option<std::net::SocketAddr>)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is writable for its length; the kernel writes at most
    // `len` bytes into the storage.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    Errno::result(r).map(|n| (n as usize, from_storage(&ss)))
}

/// `sendto(fd, buf, 0, a)` to an inet address.
pub fn sendto_inet(fd: BorrowedFd, buf: &[u8], a: &std::net::SocketAddr) -> nix::Result<usize> {
    let (ss, len) = to_storage(a);
    // SAFETY: `buf` is readable for its length; the kernel reads `len`
    // bytes of the initialised storage.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    Errno::result(r).map(|n| n as usize)
}

/// `bind` to an inet address.
pub fn bind_inet(fd: BorrowedFd, a: &std::net::SocketAddr) -> nix::Result<()> {
    let (ss, len) = to_storage(a);
    // SAFETY: the kernel reads `len` bytes of the initialised storage.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) };
    Errno::result(r).map(drop)
}

/// `connect` to an inet address.
pub fn connect_inet(fd: BorrowedFd, a: &std::net::SocketAddr) -> nix::Result<()> {
    let (ss, len) = to_storage(a);
    // SAFETY: the kernel reads `len` bytes of the initialised storage.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_roundtrip() {
        for a in ["127.0.0.1:5000", "[::1]:80", "[fe80::1%2]:7"] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            let (ss, len) = to_storage(&a);
            assert!(len as usize <= std::mem::size_of::<libc::sockaddr_storage>());
            assert_eq!(from_storage(&ss), Some(a));
        }
    }
}

/// getsockname (`peer` false) or getpeername (`peer` true) as raw
/// sockaddr bytes (netlink, packet sockets).
pub fn name_raw(fd: BorrowedFd, peer: bool) -> nix::Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len)
        }
    };
    Errno::result(r).map(|_| buf[..(len as usize).min(buf.len())].to_vec())
}

/// `bind` to a raw sockaddr.
pub fn bind_raw(fd: BorrowedFd, addr: &[u8]) -> nix::Result<()> {
    // SAFETY: the kernel reads `addr.len()` bytes.
    let r = unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    Errno::result(r).map(drop)
}

/// `connect` to a raw sockaddr.
pub fn connect_raw(fd: BorrowedFd, addr: &[u8]) -> nix::Result<()> {
    // SAFETY: the kernel reads `addr.len()` bytes.
    let r = unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    Errno::result(r).map(drop)
}

/// The index of network interface `name` in this network namespace.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
