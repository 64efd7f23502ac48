//! pingsk: ICMP "ping" sockets (as `ping` uses them) and a raw ICMP
//! socket (as `hping3` uses them) keep their identifiers, bound addresses
//! and filters, and still answer.
//!
//! `pingsk --log F [--corrupt]`
//!
//! Needs net.ipv4.ping_group_range to include the caller's group (the
//! test runs it in a network namespace of its own where it is set).
//! P4: SOCK_DGRAM/IPPROTO_ICMP bound to 127.0.0.1 with identifier 4242
//! and IP_TTL 55; P6: SOCK_DGRAM/IPPROTO_ICMPV6 bound to [::1] with
//! identifier 4243; R: SOCK_RAW/IPPROTO_ICMP bound to 127.0.0.1 whose
//! ICMP_FILTER lets only echo replies through. On SIGUSR1: the addresses,
//! IP_TTL and the filter are compared; P4 and P6 each ping loopback and
//! must get the reply to their identifier and sequence; R must see P4's
//! echo reply and nothing of another ICMP type. `--corrupt` clears R's
//! filter after READY.

use cryo_integration::wl::{self, Args, Log};

fn sock(family: i32, ty: i32, proto: i32) -> i32 {
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::socket(family, ty, proto) };
    if fd < 0 {
        wl::die(&format!("socket({family}, {ty}, {proto}): errno {}", wl::errno()));
    }
    fd
}

fn bind4(fd: i32, port: u16) {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as u16;
    a.sin_port = port.to_be();
    a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    // SAFETY: `a` is a valid sockaddr_in.
    if unsafe { libc::bind(fd, (&a as *const libc::sockaddr_in).cast(), 16) } != 0 {
        wl::die("bind4");
    }
}

fn bind6(fd: i32, port: u16) {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    a.sin6_family = libc::AF_INET6 as u16;
    a.sin6_port = port.to_be();
    a.sin6_addr.s6_addr[15] = 1;
    // SAFETY: `a` is a valid sockaddr_in6.
    if unsafe { libc::bind(fd, (&a as *const libc::sockaddr_in6).cast(), 28) } != 0 {
        wl::die("bind6");
    }
}

fn name(fd: i32) -> Vec<u8> {
    let mut b = [0u8; 64];
    let mut len: libc::socklen_t = 64;
    // SAFETY: the kernel writes at most `len` bytes.
    unsafe { libc::getsockname(fd, b.as_mut_ptr().cast(), &mut len) };
    b[..len as usize].to_vec()
}

fn filter(fd: i32) -> u32 {
    let mut v: u32 = 0;
    let mut len: libc::socklen_t = 4;
    // SAFETY: the kernel writes at most 4 bytes.
    unsafe { libc::getsockopt(fd, 255, 1, (&mut v as *mut u32).cast(), &mut len) };
    v
}

fn set_filter(fd: i32, v: u32) {
    // SAFETY: the kernel reads 4 bytes.
    if unsafe { libc::setsockopt(fd, 255, 1, (&v as *const u32).cast(), 4) } != 0 {
        wl::die("ICMP_FILTER");
    }
}

fn ttl(fd: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len: libc::socklen_t = 4;
    // SAFETY: the kernel writes at most 4 bytes.
    unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_TTL,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    v
}

/// Sends an echo request of `ty` to loopback on a ping socket and waits
/// for the reply; returns (reply type, identifier, sequence).
fn ping(fd: i32, v6: bool, ty: u8, seq: u16) -> Option<(u8, u16, u16)> {
    let mut pkt = vec![ty, 0, 0, 0, 0, 0];
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"cryo-ping");
    let r = if v6 {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        a.sin6_family = libc::AF_INET6 as u16;
        a.sin6_addr.s6_addr[15] = 1;
        // SAFETY: buffers are valid for their lengths.
        unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&a as *const libc::sockaddr_in6).cast(),
                28,
            )
        }
    } else {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        a.sin_family = libc::AF_INET as u16;
        a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        // SAFETY: buffers are valid for their lengths.
        unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&a as *const libc::sockaddr_in).cast(),
                16,
            )
        }
    };
    if r != pkt.len() as isize {
        return None;
    }
    let mut b = [0u8; 256];
    for _ in 0..300 {
        // SAFETY: `b` is writable.
        let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
        if n >= 8 {
            return Some((b[0], u16::from_be_bytes([b[4], b[5]]), u16::from_be_bytes([b[6], b[7]])));
        }
        wl::sleep_ms(10);
    }
    None
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let p4 = sock(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
    bind4(p4, 4242);
    let t: i32 = 55;
    // SAFETY: the kernel reads one int.
    unsafe { libc::setsockopt(p4, libc::IPPROTO_IP, libc::IP_TTL, (&t as *const i32).cast(), 4) };
    let p6 = sock(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6);
    bind6(p6, 4243);
    let r = sock(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
    bind4(r, 0);
    set_filter(r, !1u32);
    let names = (name(p4), name(p6), name(r));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        set_filter(r, 0);
    }
    let mut pr = Vec::new();
    if (name(p4), name(p6), name(r)) != names {
        pr.push("a bound address or identifier changed".into());
    }
    if ttl(p4) != 55 {
        pr.push(format!("P4 IP_TTL is {}", ttl(p4)));
    }
    if filter(r) != !1u32 {
        pr.push(format!("R ICMP_FILTER is {:#x}", filter(r)));
    }
    match ping(p4, false, 8, 7) {
        Some((0, 4242, 7)) => {}
        other => pr.push(format!("P4 echo reply {other:?}, expected type 0 id 4242 seq 7")),
    }
    match ping(p6, true, 128, 9) {
        Some((129, 4243, 9)) => {}
        other => pr.push(format!("P6 echo reply {other:?}, expected type 129 id 4243 seq 9")),
    }
    // R saw P4's exchange: only echo replies pass its filter.
    let mut types = Vec::new();
    let mut b = [0u8; 256];
    loop {
        // SAFETY: `b` is writable.
        let n = unsafe { libc::recv(r, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
        if n <= 20 {
            break;
        }
        let ihl = usize::from(b[0] & 0xf) * 4;
        types.push(b[ihl]);
    }
    if types.is_empty() || types.iter().any(|&t| t != 0) {
        pr.push(format!("R saw ICMP types {types:?}, expected only echo replies (0)"));
    }
    log.verdict(&pr, &format!("raw saw {types:?}"));
}
