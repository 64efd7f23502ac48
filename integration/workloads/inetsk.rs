//! inetsk: TCP listeners and UDP sockets, IPv4 and IPv6, keep their
//! addresses, options and flags, and still serve.
//!
//! `inetsk --log F [--corrupt]`
//!
//! Sockets (all on loopback, ephemeral ports):
//! - L4: TCP listener on 127.0.0.1, backlog 7, O_NONBLOCK, SO_REUSEADDR,
//!   SO_KEEPALIVE with TCP_KEEPIDLE 77 / INTVL 13 / CNT 5, TCP_NODELAY,
//!   SO_SNDBUF and SO_RCVBUF set, IP_TOS 0x10, IP_TTL 33;
//! - L6: TCP listener on [::1] with IPV6_V6ONLY, SO_REUSEPORT, IPV6_TCLASS
//!   0x20, IPV6_UNICAST_HOPS 44;
//! - U4: UDP bound to 127.0.0.1 with SO_BINDTODEVICE lo, SO_BROADCAST and
//!   SO_RCVTIMEO 2.5 s; C4: UDP connected to U4 (bound by the kernel);
//! - U6: UDP bound to [::1] with IPV6_V6ONLY;
//! - T: an unbound TCP socket with SO_KEEPALIVE.
//!
//! On SIGUSR1 every socket's local (and peer) address, every option set
//! above (as getsockopt read it back at setup) and O_NONBLOCK are compared;
//! then a client connects to L4 and L6 and is accepted (bytes both ways),
//! C4 sends a datagram that U4 receives from C4's address, and a fresh
//! socket sends one to U6. `--corrupt` changes L4's IP_TTL after READY.

use cryo_integration::wl::{self, Args, Log};
use std::net::SocketAddr;

fn sock(family: i32, ty: i32) -> i32 {
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::socket(family, ty, 0) };
    if fd < 0 {
        wl::die("socket");
    }
    fd
}

fn setopt(fd: i32, level: i32, name: i32, v: i32) {
    // SAFETY: the kernel reads one int from `v`.
    let r = unsafe { libc::setsockopt(fd, level, name, (&v as *const i32).cast(), 4) };
    if r != 0 {
        wl::die(&format!("setsockopt {level}/{name}"));
    }
}

fn getopt(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len: libc::socklen_t = 4;
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    if r != 0 {
        return -wl::errno();
    }
    v
}

fn storage(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v) => {
            // SAFETY: sockaddr_in fits in the storage.
            let s = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = v.port().to_be();
            s.sin_addr.s_addr = u32::from_ne_bytes(v.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v) => {
            // SAFETY: sockaddr_in6 fits in the storage.
            let s = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_port = v.port().to_be();
            s.sin6_addr.s6_addr = v.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn parse(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let s = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                s.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(s.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let s = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((s.sin6_addr.s6_addr, u16::from_be(s.sin6_port))))
        }
        _ => None,
    }
}

fn name(fd: i32, peer: bool) -> Option<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: the kernel writes at most `len` bytes into `ss`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return None;
    }
    parse(&ss)
}

fn bind(fd: i32, a: &str) {
    let a: SocketAddr = a.parse().unwrap_or_else(|_| wl::die("address"));
    let (ss, len) = storage(&a);
    // SAFETY: `ss` holds `len` initialised bytes.
    if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
        wl::die(&format!("bind {a}"));
    }
}

fn connect(fd: i32, a: &SocketAddr) -> bool {
    let (ss, len) = storage(a);
    // SAFETY: `ss` holds `len` initialised bytes.
    unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) == 0 }
}

fn listen(fd: i32, backlog: i32) {
    // SAFETY: plain integer arguments.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        wl::die("listen");
    }
}

fn flags(fd: i32) -> i32 {
    // SAFETY: plain integer arguments.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn close(fd: i32) {
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
}

/// A recorded option: (socket name, fd, level, option name, option, value).
type Opt = (&'static str, i32, i32, i32, &'static str, i32);

fn record(opts: &mut Vec<Opt>, sk: &'static str, fd: i32, level: i32, name: i32, what: &'static str, set: Option<i32>) {
    if let Some(v) = set {
        setopt(fd, level, name, v);
    }
    opts.push((sk, fd, level, name, what, getopt(fd, level, name)));
}

/// Accepts one connection on a (possibly non-blocking) listener, waiting
/// up to 5 s.
fn accept(fd: i32) -> i32 {
    for _ in 0..500 {
        // SAFETY: no address is asked for.
        let c = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
        if c >= 0 {
            return c;
        }
        wl::sleep_ms(10);
    }
    -1
}

fn xfer(a: i32, b: i32, msg: &[u8]) -> bool {
    // SAFETY: `msg` is readable for its length.
    if unsafe { libc::send(a, msg.as_ptr().cast(), msg.len(), 0) } != msg.len() as isize {
        return false;
    }
    let mut buf = vec![0u8; msg.len() + 16];
    for _ in 0..500 {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(b, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return &buf[..n as usize] == msg;
        }
        wl::sleep_ms(10);
    }
    false
}

/// A client connects to listener `l`, which accepts; bytes both ways.
fn serve_check(l: i32, family: i32, what: &str, pr: &mut Vec<String>) {
    let Some(addr) = name(l, false) else {
        pr.push(format!("{what}: no local address"));
        return;
    };
    let c = sock(family, libc::SOCK_STREAM);
    if !connect(c, &addr) {
        pr.push(format!("{what}: connect to {addr} failed (errno {})", wl::errno()));
        close(c);
        return;
    }
    let a = accept(l);
    if a < 0 {
        pr.push(format!("{what}: accept failed"));
    } else {
        if !xfer(c, a, b"ping") || !xfer(a, c, b"pong") {
            pr.push(format!("{what}: no data through the accepted connection"));
        }
        close(a);
    }
    close(c);
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let (ip, ip6, tcp, so) = (
        libc::IPPROTO_IP,
        libc::IPPROTO_IPV6,
        libc::IPPROTO_TCP,
        libc::SOL_SOCKET,
    );
    let mut o: Vec<Opt> = Vec::new();

    let l4 = sock(libc::AF_INET, libc::SOCK_STREAM);
    record(&mut o, "L4", l4, so, libc::SO_REUSEADDR, "SO_REUSEADDR", Some(1));
    bind(l4, "127.0.0.1:0");
    listen(l4, 7);
    record(&mut o, "L4", l4, so, libc::SO_KEEPALIVE, "SO_KEEPALIVE", Some(1));
    record(&mut o, "L4", l4, tcp, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE", Some(77));
    record(&mut o, "L4", l4, tcp, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL", Some(13));
    record(&mut o, "L4", l4, tcp, libc::TCP_KEEPCNT, "TCP_KEEPCNT", Some(5));
    record(&mut o, "L4", l4, tcp, libc::TCP_NODELAY, "TCP_NODELAY", Some(1));
    record(&mut o, "L4", l4, so, libc::SO_SNDBUF, "SO_SNDBUF", Some(65536));
    record(&mut o, "L4", l4, so, libc::SO_RCVBUF, "SO_RCVBUF", Some(50000));
    record(&mut o, "L4", l4, ip, libc::IP_TOS, "IP_TOS", Some(0x10));
    record(&mut o, "L4", l4, ip, libc::IP_TTL, "IP_TTL", Some(33));
    // SAFETY: plain integer arguments.
    unsafe { libc::fcntl(l4, libc::F_SETFL, flags(l4) | libc::O_NONBLOCK) };

    let l6 = sock(libc::AF_INET6, libc::SOCK_STREAM);
    record(&mut o, "L6", l6, ip6, libc::IPV6_V6ONLY, "IPV6_V6ONLY", Some(1));
    record(&mut o, "L6", l6, so, libc::SO_REUSEPORT, "SO_REUSEPORT", Some(1));
    bind(l6, "[::1]:0");
    listen(l6, 3);
    record(&mut o, "L6", l6, ip6, libc::IPV6_TCLASS, "IPV6_TCLASS", Some(0x20));
    record(
        &mut o,
        "L6",
        l6,
        ip6,
        libc::IPV6_UNICAST_HOPS,
        "IPV6_UNICAST_HOPS",
        Some(44),
    );
    record(&mut o, "L6", l6, so, libc::SO_KEEPALIVE, "SO_KEEPALIVE", None);

    let u4 = sock(libc::AF_INET, libc::SOCK_DGRAM);
    let lo = b"lo\0";
    // SAFETY: the kernel reads the 3 bytes of the name.
    if unsafe { libc::setsockopt(u4, so, libc::SO_BINDTODEVICE, lo.as_ptr().cast(), 3) } != 0 {
        wl::die("SO_BINDTODEVICE");
    }
    bind(u4, "127.0.0.1:0");
    record(&mut o, "U4", u4, so, libc::SO_BROADCAST, "SO_BROADCAST", Some(1));
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 500_000,
    };
    // SAFETY: the kernel reads one timeval.
    unsafe {
        libc::setsockopt(
            u4,
            so,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let u4_addr = name(u4, false).unwrap_or_else(|| wl::die("U4 name"));
    let c4 = sock(libc::AF_INET, libc::SOCK_DGRAM);
    if !connect(c4, &u4_addr) {
        wl::die("connect C4");
    }
    let u6 = sock(libc::AF_INET6, libc::SOCK_DGRAM);
    record(&mut o, "U6", u6, ip6, libc::IPV6_V6ONLY, "IPV6_V6ONLY", Some(1));
    bind(u6, "[::1]:0");
    let t = sock(libc::AF_INET, libc::SOCK_STREAM);
    record(&mut o, "T", t, so, libc::SO_KEEPALIVE, "SO_KEEPALIVE", Some(1));

    let socks = [("L4", l4), ("L6", l6), ("U4", u4), ("C4", c4), ("U6", u6), ("T", t)];
    let names: Vec<(Option<SocketAddr>, Option<SocketAddr>)> =
        socks.iter().map(|&(_, fd)| (name(fd, false), name(fd, true))).collect();
    let fl4 = flags(l4);
    log.line(&format!(
        "SOCKETS L4={:?} L6={:?} U4={:?} C4={:?}",
        names[0].0, names[1].0, names[2].0, names[3].0
    ));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        setopt(l4, ip, libc::IP_TTL, 34);
    }
    let mut pr = Vec::new();
    for (i, &(sk, fd)) in socks.iter().enumerate() {
        let now = (name(fd, false), name(fd, true));
        if now != names[i] {
            pr.push(format!("{sk} addresses {now:?}, were {:?}", names[i]));
        }
    }
    for &(sk, fd, level, nm, what, v) in &o {
        let now = getopt(fd, level, nm);
        if now != v {
            pr.push(format!("{sk} {what} is {now}, was {v}"));
        }
    }
    if flags(l4) != fl4 {
        pr.push(format!("L4 flags {:o}, were {fl4:o}", flags(l4)));
    }
    let mut dev = [0u8; 16];
    let mut dl: libc::socklen_t = 16;
    // SAFETY: the kernel writes at most `dl` bytes.
    unsafe { libc::getsockopt(u4, so, libc::SO_BINDTODEVICE, dev.as_mut_ptr().cast(), &mut dl) };
    if &dev[..2] != b"lo" {
        pr.push(format!("U4 SO_BINDTODEVICE is {:?}", &dev[..dl as usize]));
    }
    let mut rtv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut tl = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `tl` bytes.
    unsafe {
        libc::getsockopt(
            u4,
            so,
            libc::SO_RCVTIMEO,
            (&mut rtv as *mut libc::timeval).cast(),
            &mut tl,
        )
    };
    if (rtv.tv_sec, rtv.tv_usec) != (2, 500_000) {
        pr.push(format!("U4 SO_RCVTIMEO is {}.{:06}", rtv.tv_sec, rtv.tv_usec));
    }
    serve_check(l4, libc::AF_INET, "L4", &mut pr);
    serve_check(l6, libc::AF_INET6, "L6", &mut pr);
    // C4 -> U4, from C4's address.
    // SAFETY: the buffer is readable.
    unsafe { libc::send(c4, b"dgram4".as_ptr().cast(), 6, 0) };
    let mut buf = [0u8; 64];
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut fl = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: buffers are writable for their lengths.
    let n = unsafe {
        libc::recvfrom(
            u4,
            buf.as_mut_ptr().cast(),
            64,
            0,
            (&mut from as *mut libc::sockaddr_storage).cast(),
            &mut fl,
        )
    };
    if n != 6 || &buf[..6] != b"dgram4" || parse(&from) != names[3].0 {
        pr.push(format!("U4 received {n} bytes from {:?}", parse(&from)));
    }
    let s6 = sock(libc::AF_INET6, libc::SOCK_DGRAM);
    let u6_addr = names[4].0.unwrap_or_else(|| wl::die("U6 name"));
    let (ss, sl) = storage(&u6_addr);
    // SAFETY: buffers are readable for their lengths.
    unsafe {
        libc::sendto(
            s6,
            b"dgram6".as_ptr().cast(),
            6,
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            sl,
        )
    };
    let mut n = -1;
    for _ in 0..500 {
        // SAFETY: `buf` is writable.
        n = unsafe { libc::recv(u6, buf.as_mut_ptr().cast(), 64, libc::MSG_DONTWAIT) };
        if n >= 0 {
            break;
        }
        wl::sleep_ms(10);
    }
    if n != 6 || &buf[..6] != b"dgram6" {
        pr.push(format!("U6 received {n} bytes"));
    }
    log.verdict(&pr, &format!("{} options, 6 sockets", o.len()));
}
