//! tcpconn: an established TCP connection inside the tree keeps its
//! queues in both directions (received-not-read, sent-not-acked and
//! unsent), its options and its addresses.
//!
//! `tcpconn --log F [--v6] [--half] [--pending] [--badfd] [--closed] [--corrupt]`
//!
//! One process holds a listener L, a client C connected to it and the
//! accepted socket A (loopback, IPv4 or with `--v6` IPv6). A has a small
//! receive buffer and never reads before the check; C (O_NONBLOCK,
//! SO_SNDBUF 64 KiB, TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE 99) writes a numbered byte
//! pattern until the kernel takes no more, so A's receive queue is full
//! and C's send queue holds unsent bytes; A sends 3000 bytes that C does
//! not read. With `--half`, C then shuts down writing (its FIN waits
//! behind the unsent bytes: FIN_WAIT1).
//!
//! With `--pending` a third client connects and is never accepted (the
//! kernel completed the handshake; the connection waits in L's queue).
//! With `--badfd` the highest fd is a packet socket in a fanout group,
//! which cryo refuses: the dump fails after the connections.
//!
//! A second pair, C2 -> A2, is half-closed the other way round: C2 sent
//! "bye" and shut down writing, so A2 is in CLOSE_WAIT with "bye" unread
//! and C2 in FIN_WAIT2.
//!
//! On SIGUSR1: the addresses of C and A, C's options and flags, then C's
//! 3000 bytes and every byte C wrote, in order, read from A (then EOF
//! with `--half`); then bytes both ways again (A to C only with
//! `--half`). A2 reads "bye" and EOF, answers "ack", which C2 reads; C2
//! cannot send; after A2 closes, C2 reads EOF. With `--closed` (a restore with --tcp-close) the check
//! is instead that C and A are no longer connected. `--corrupt` reads one
//! byte from A after READY.

use cryo_integration::wl::{self, Args, Log};

fn pat(i: u64, seed: u64) -> u8 {
    ((i.wrapping_mul(31) ^ seed.wrapping_mul(7)) % 253) as u8
}

fn check(cond: bool, pr: &mut Vec<String>, what: String) {
    if !cond {
        pr.push(what);
    }
}

fn getopt(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len: libc::socklen_t = 4;
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn setopt(fd: i32, level: i32, name: i32, v: i32) {
    // SAFETY: the kernel reads one int.
    if unsafe { libc::setsockopt(fd, level, name, (&v as *const i32).cast(), 4) } != 0 {
        wl::die(&format!("setsockopt {level}/{name}"));
    }
}

/// (local, peer) as raw sockaddr bytes, for comparison.
fn names(fd: i32) -> (Vec<u8>, Vec<u8>) {
    let get = |peer: bool| {
        let mut ss = [0u8; 128];
        let mut len: libc::socklen_t = 128;
        // SAFETY: the kernel writes at most `len` bytes.
        let r = unsafe {
            if peer {
                libc::getpeername(fd, ss.as_mut_ptr().cast(), &mut len)
            } else {
                libc::getsockname(fd, ss.as_mut_ptr().cast(), &mut len)
            }
        };
        if r != 0 {
            return Vec::new();
        }
        ss[..len as usize].to_vec()
    };
    (get(false), get(true))
}

/// Reads exactly `n` bytes from `fd` (waiting up to 10 s), checking the
/// pattern; returns the first problem.
fn read_pattern(fd: i32, n: u64, seed: u64) -> Option<String> {
    let mut got = 0u64;
    let mut buf = vec![0u8; 65536];
    let mut idle = 0;
    while got < n {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        let want = (n - got).min(buf.len() as u64) as usize;
        // SAFETY: `buf` is writable for `want` bytes.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
        if r == 0 {
            return Some(format!("EOF after {got} of {n} bytes"));
        }
        if r < 0 {
            let e = wl::errno();
            if e != libc::EAGAIN {
                return Some(format!("recv errno {e} after {got} of {n} bytes"));
            }
            idle += 1;
            if idle > 100 {
                return Some(format!("only {got} of {n} bytes arrived"));
            }
            continue;
        }
        for (k, &b) in buf[..r as usize].iter().enumerate() {
            let i = got + k as u64;
            if b != pat(i, seed) {
                return Some(format!("byte {i} is {b}, expected {}", pat(i, seed)));
            }
        }
        got += r as u64;
        idle = 0;
    }
    None
}

/// The next bytes on `fd` (waiting up to 3 s): Some(empty) is EOF.
fn recv_now(fd: i32) -> Option<Vec<u8>> {
    let mut b = [0u8; 64];
    for _ in 0..300 {
        // SAFETY: `b` is writable.
        let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Some(b[..n as usize].to_vec());
        }
        wl::sleep_ms(10);
    }
    None
}

/// The half-closed pair: A2 reads "bye" and EOF, answers "ack", C2 reads
/// it and cannot send, and sees EOF once A2 closes.
fn half_pair(c2: i32, a2: i32, pr: &mut Vec<String>) {
    let mut got = Vec::new();
    loop {
        match recv_now(a2) {
            Some(b) if b.is_empty() => break,
            Some(b) => got.extend_from_slice(&b),
            None => {
                pr.push(format!("A2 saw no EOF after {got:?}"));
                return;
            }
        }
    }
    if got != b"bye" {
        pr.push(format!("A2 read {got:?}, expected \"bye\""));
    }
    // SAFETY: the buffers are readable.
    unsafe { libc::send(a2, b"ack".as_ptr().cast(), 3, libc::MSG_NOSIGNAL) };
    if recv_now(c2).as_deref() != Some(&b"ack"[..]) {
        pr.push("C2 did not receive A2's answer".into());
    }
    // SAFETY: the buffer is readable.
    let r = unsafe { libc::send(c2, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    if r != -1 || wl::errno() != libc::EPIPE {
        pr.push(format!("C2 could send after its shutdown ({r})"));
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(a2) };
    if recv_now(c2) != Some(Vec::new()) {
        pr.push("C2 saw no EOF after A2 closed".into());
    }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let v6 = args.flag("v6");
    let closed = args.flag("closed");
    let half = args.flag("half");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let listener = if v6 {
        std::net::TcpListener::bind("[::1]:0")
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
    }
    .unwrap_or_else(|_| wl::die("bind"));
    let addr = listener.local_addr().unwrap_or_else(|_| wl::die("local_addr"));
    let client = std::net::TcpStream::connect(addr).unwrap_or_else(|_| wl::die("connect"));
    let (acc, _) = listener.accept().unwrap_or_else(|_| wl::die("accept"));
    use std::os::fd::IntoRawFd;
    let c = client.into_raw_fd();
    let a = acc.into_raw_fd();
    setopt(a, libc::SOL_SOCKET, libc::SO_RCVBUF, 16384);
    setopt(c, libc::SOL_SOCKET, libc::SO_SNDBUF, 65536);
    setopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    setopt(c, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    setopt(c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 99);
    // SAFETY: plain integer arguments.
    unsafe { libc::fcntl(c, libc::F_SETFL, libc::fcntl(c, libc::F_GETFL) | libc::O_NONBLOCK) };
    // A -> C: 3000 bytes C does not read.
    let back: Vec<u8> = (0..3000).map(|i| pat(i, 2)).collect();
    // SAFETY: `back` is readable.
    if unsafe { libc::send(a, back.as_ptr().cast(), back.len(), 0) } != 3000 {
        wl::die("send A->C");
    }
    // C -> A until the kernel takes no more (twice, a moment apart, so
    // that the window is really closed).
    let mut sent = 0u64;
    for _ in 0..2 {
        loop {
            let chunk: Vec<u8> = (sent..sent + 4096).map(|i| pat(i, 1)).collect();
            // SAFETY: `chunk` is readable.
            let r = unsafe { libc::send(c, chunk.as_ptr().cast(), chunk.len(), libc::MSG_DONTWAIT) };
            if r <= 0 {
                break;
            }
            sent += r as u64;
        }
        wl::sleep_ms(50);
    }
    if half {
        // SAFETY: plain integer arguments.
        unsafe { libc::shutdown(c, libc::SHUT_WR) };
    }
    // The second pair: C2 says bye and shuts down writing.
    let client2 = std::net::TcpStream::connect(addr).unwrap_or_else(|_| wl::die("connect 2"));
    let (acc2, _) = listener.accept().unwrap_or_else(|_| wl::die("accept 2"));
    let c2 = client2.into_raw_fd();
    let a2 = acc2.into_raw_fd();
    // SAFETY: the buffer is readable; plain integer arguments.
    unsafe {
        libc::send(c2, b"bye".as_ptr().cast(), 3, 0);
        libc::shutdown(c2, libc::SHUT_WR);
    }
    let _pending = args
        .flag("pending")
        .then(|| std::net::TcpStream::connect(addr).unwrap_or_else(|_| wl::die("connect 3")));
    if args.flag("badfd") {
        let eth_all = i32::from((libc::ETH_P_ALL as u16).to_be());
        // SAFETY: plain integer arguments.
        let p = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, eth_all) };
        let fanout: i32 = 77; // group 77, PACKET_FANOUT_HASH
                              // SAFETY: the kernel reads one int.
        let r = unsafe { libc::setsockopt(p, 263, 18, (&fanout as *const i32).cast(), 4) };
        if p < 0 || r != 0 {
            wl::die("fanout packet socket");
        }
        // SAFETY: dup2 onto an unused high number.
        unsafe { libc::dup2(p, 200) };
    }
    wl::sleep_ms(50);
    let mut outq: i32 = 0;
    // SAFETY: SIOCOUTQ writes one int.
    unsafe { libc::ioctl(c, libc::TIOCOUTQ, &mut outq) };
    let nc = names(c);
    let na = names(a);
    let fl = libc::O_NONBLOCK;
    log.line(&format!("QUEUES sent={sent} c_outq={outq} family={fam}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let mut pr = Vec::new();
    if corrupt {
        let mut b = [0u8; 1];
        // SAFETY: `b` is writable.
        unsafe { libc::recv(a, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
    }
    if closed {
        check(names(c).1.is_empty(), &mut pr, "C is still connected".into());
        check(names(a).1.is_empty(), &mut pr, "A is still connected".into());
        check(names(c2).1.is_empty(), &mut pr, "C2 is still connected".into());
        check(names(a2).1.is_empty(), &mut pr, "A2 is still connected".into());
        log.verdict(&pr, "closed");
    }
    check(names(c) == nc, &mut pr, format!("C addresses changed: {:?}", names(c)));
    check(names(a) == na, &mut pr, format!("A addresses changed: {:?}", names(a)));
    check(
        getopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY) == 1,
        &mut pr,
        "C TCP_NODELAY lost".into(),
    );
    check(
        getopt(c, libc::SOL_SOCKET, libc::SO_KEEPALIVE) == 1,
        &mut pr,
        "C SO_KEEPALIVE lost".into(),
    );
    check(
        getopt(c, libc::SOL_SOCKET, libc::SO_SNDBUF) == 131072,
        &mut pr,
        format!("C SO_SNDBUF is {}", getopt(c, libc::SOL_SOCKET, libc::SO_SNDBUF)),
    );
    check(
        getopt(c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) == 99,
        &mut pr,
        format!("C TCP_KEEPIDLE is {}", getopt(c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)),
    );
    // SAFETY: plain integer arguments.
    let cf = unsafe { libc::fcntl(c, libc::F_GETFL) };
    check(cf & fl == fl, &mut pr, format!("C flags {cf:o}"));
    if let Some(p) = read_pattern(c, 3000, 2) {
        pr.push(format!("A->C queue: {p}"));
    }
    if let Some(p) = read_pattern(a, sent, 1) {
        pr.push(format!("C->A queue: {p}"));
    }
    if half && recv_now(a) != Some(Vec::new()) {
        pr.push("A did not see C's FIN after the data".into());
    }
    half_pair(c2, a2, &mut pr);
    // Both ways again.
    // SAFETY: the buffers are readable.
    let r1 = unsafe { libc::send(a, b"after".as_ptr().cast(), 5, 0) };
    let mut buf = [0u8; 16];
    let mut got = -1;
    for _ in 0..500 {
        // SAFETY: `buf` is writable.
        got = unsafe { libc::recv(c, buf.as_mut_ptr().cast(), 16, libc::MSG_DONTWAIT) };
        if got >= 0 {
            break;
        }
        wl::sleep_ms(10);
    }
    if !half {
        // SAFETY: the buffer is readable.
        let r2 = unsafe { libc::send(c, b"more".as_ptr().cast(), 4, libc::MSG_NOSIGNAL) };
        if r2 != 4 || recv_now(a).as_deref() != Some(&b"more"[..]) {
            pr.push(format!("C->A after the check: sent {r2}"));
        }
    }
    drop(listener);
    check(
        r1 == 5 && got == 5 && &buf[..5] == b"after",
        &mut pr,
        format!("A->C after the check: sent {r1}, received {got}"),
    );
    log.verdict(&pr, &format!("sent={sent} c_outq={outq}"));
}
