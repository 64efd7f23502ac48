//! pktsk: packet sockets keep their protocol, bound interface and options
//! and still capture.
//!
//! `pktsk --log F [--dev NAME] [--corrupt]`
//!
//! P: SOCK_RAW/ETH_P_ALL bound to the interface (default lo) with
//! PACKET_AUXDATA and PACKET_VERSION TPACKET_V2; D: SOCK_DGRAM/ETH_P_IP
//! bound to lo with PACKET_ORIGDEV, O_NONBLOCK. On SIGUSR1 the bound
//! addresses and options are compared, a UDP datagram with a unique
//! payload goes to 127.0.0.1:9, and both sockets must capture it.
//! `--corrupt` turns PACKET_AUXDATA off after READY.

use cryo_integration::wl::{self, Args, Log};

const SOL_PACKET: i32 = 263;

fn pk_socket(ty: i32, proto: u16) -> i32 {
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, ty, i32::from(proto.to_be())) };
    if fd < 0 {
        wl::die("socket(AF_PACKET)");
    }
    fd
}

fn ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap_or_else(|_| wl::die("name"));
    // SAFETY: `c` is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        wl::die(&format!("no interface {name}"));
    }
    i as i32
}

fn bind(fd: i32, proto: u16, index: i32) {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = proto.to_be();
    a.sll_ifindex = index;
    // SAFETY: `a` is a valid sockaddr_ll.
    if unsafe {
        libc::bind(
            fd,
            (&a as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    } != 0
    {
        wl::die("bind");
    }
}

fn name(fd: i32) -> (u16, i32) {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes.
    unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_ll).cast(), &mut len) };
    (u16::from_be(a.sll_protocol), a.sll_ifindex)
}

fn opt(fd: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len: libc::socklen_t = 4;
    // SAFETY: the kernel writes at most 4 bytes.
    unsafe { libc::getsockopt(fd, SOL_PACKET, name, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn set(fd: i32, name: i32, v: i32) {
    // SAFETY: the kernel reads one int.
    if unsafe { libc::setsockopt(fd, SOL_PACKET, name, (&v as *const i32).cast(), 4) } != 0 {
        wl::die(&format!("setsockopt SOL_PACKET {name}"));
    }
}

/// Whether `fd` captures a frame holding `needle` within 3 s.
fn captures(fd: i32, needle: &[u8]) -> bool {
    let mut b = vec![0u8; 65536];
    for _ in 0..300 {
        loop {
            // SAFETY: `b` is writable.
            let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            if b[..n as usize].windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
        wl::sleep_ms(10);
    }
    false
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    let dev = args.value("dev").unwrap_or_else(|| "lo".into());
    wl::install_usr1();
    let p = pk_socket(libc::SOCK_RAW, libc::ETH_P_ALL as u16);
    set(p, 10, 1); // PACKET_VERSION: TPACKET_V2
    set(p, 8, 1); // PACKET_AUXDATA
    bind(p, libc::ETH_P_ALL as u16, ifindex(&dev));
    let d = pk_socket(libc::SOCK_DGRAM, libc::ETH_P_IP as u16);
    set(d, 9, 1); // PACKET_ORIGDEV
    bind(d, libc::ETH_P_IP as u16, ifindex("lo"));
    // SAFETY: plain integer arguments.
    unsafe { libc::fcntl(d, libc::F_SETFL, libc::O_NONBLOCK) };
    let names = (name(p), name(d));
    log.line(&format!("PACKET P={:?} D={:?}", names.0, names.1));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        set(p, 8, 0);
    }
    let mut pr = Vec::new();
    if (name(p), name(d)) != names {
        pr.push(format!("bound to {:?} {:?}, were {names:?}", name(p), name(d)));
    }
    for (what, fd, o, want) in [
        ("P PACKET_VERSION", p, 10, 1),
        ("P PACKET_AUXDATA", p, 8, 1),
        ("D PACKET_ORIGDEV", d, 9, 1),
    ] {
        if opt(fd, o) != want {
            pr.push(format!("{what} is {}", opt(fd, o)));
        }
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::fcntl(d, libc::F_GETFL) } & libc::O_NONBLOCK == 0 {
        pr.push("D lost O_NONBLOCK".into());
    }
    if dev == "lo" {
        let payload = format!("cryo-pkt-{}", wl::getpid());
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|_| wl::die("udp"));
        let _ = u.send_to(payload.as_bytes(), "127.0.0.1:9");
        if !captures(p, payload.as_bytes()) {
            pr.push("P captured nothing".into());
        }
        if !captures(d, payload.as_bytes()) {
            pr.push("D captured nothing".into());
        }
    }
    log.verdict(&pr, &format!("P={:?} D={:?}", names.0, names.1));
}
