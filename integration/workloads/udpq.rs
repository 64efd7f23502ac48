//! udpq: datagrams queued on UDP sockets (not read yet when the tree is
//! dumped) are all still there afterwards, in order, each with its bytes
//! and its sender's address.
//!
//! `udpq --log F [--corrupt]`
//!
//! Sockets (loopback, ephemeral ports): Q4 on 127.0.0.1 gets 6 datagrams
//! from S4a and S4b in turn (sizes up to 9000 bytes); Q6 on [::1] gets 3
//! from S6; QD on the IPv6 wildcard (dual stack) gets 2 from S4a, which it
//! sees from an IPv4-mapped address; E on 127.0.0.1 gets none. Nothing is
//! read before SIGUSR1; then each socket's queue is read to the end and
//! compared. `--corrupt` reads Q4's first datagram before READY (the check
//! must FAIL).

use cryo_integration::wl::{self, Args, Log};
use std::net::{SocketAddr, UdpSocket};

fn bind(a: &str) -> UdpSocket {
    UdpSocket::bind(a).unwrap_or_else(|e| wl::die(&format!("bind {a}: {e}")))
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap_or_else(|e| wl::die(&format!("local_addr: {e}")))
}

fn payload(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("{tag} {i} ").into_bytes();
    p.extend((0..len).map(|k| (k * 7 + i) as u8));
    p
}

/// Everything queued on `s` now.
fn drain(s: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    s.set_nonblocking(true).unwrap_or_else(|_| wl::die("nonblocking"));
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => out.push((from, buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
            Err(e) => wl::die(&format!("recv_from: {e}")),
        }
    }
}

fn compare(name: &str, got: &[(SocketAddr, Vec<u8>)], want: &[(SocketAddr, Vec<u8>)], pr: &mut Vec<String>) {
    if got.len() != want.len() {
        pr.push(format!(
            "{name} has {} datagrams queued, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.0 != w.0 {
            pr.push(format!("{name} datagram {i} is from {}, expected {}", g.0, w.0));
        }
        if g.1 != w.1 {
            pr.push(format!(
                "{name} datagram {i} has {} bytes starting {:?}, expected {} starting {:?}",
                g.1.len(),
                String::from_utf8_lossy(&g.1[..g.1.len().min(8)]),
                w.1.len(),
                String::from_utf8_lossy(&w.1[..w.1.len().min(8)])
            ));
        }
    }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    wl::install_usr1();
    let q4 = bind("127.0.0.1:0");
    let (s4a, s4b) = (bind("127.0.0.1:0"), bind("127.0.0.1:0"));
    let q6 = bind("[::1]:0");
    let s6 = bind("[::1]:0");
    let qd = bind("[::]:0");
    let e = bind("127.0.0.1:0");
    let mut want4 = Vec::new();
    for (i, len) in [0usize, 100, 1400, 9000, 3, 500].into_iter().enumerate() {
        let s = if i % 2 == 0 { &s4a } else { &s4b };
        let p = payload("q4", i, len);
        s.send_to(&p, addr(&q4))
            .unwrap_or_else(|e| wl::die(&format!("send to Q4: {e}")));
        want4.push((addr(s), p));
    }
    let mut want6 = Vec::new();
    for (i, len) in [10usize, 2000, 1].into_iter().enumerate() {
        let p = payload("q6", i, len);
        s6.send_to(&p, addr(&q6))
            .unwrap_or_else(|e| wl::die(&format!("send to Q6: {e}")));
        want6.push((addr(&s6), p));
    }
    let mut wantd = Vec::new();
    let to_qd = SocketAddr::from(([127, 0, 0, 1], addr(&qd).port()));
    let mapped = match addr(&s4a) {
        SocketAddr::V4(v) => SocketAddr::new(v.ip().to_ipv6_mapped().into(), v.port()),
        a => a,
    };
    for (i, len) in [64usize, 700].into_iter().enumerate() {
        let p = payload("qd", i, len);
        s4a.send_to(&p, to_qd)
            .unwrap_or_else(|e| wl::die(&format!("send to QD: {e}")));
        wantd.push((mapped, p));
    }
    wl::sleep_ms(50);
    if args.flag("corrupt") {
        let mut b = [0u8; 16];
        let _ = q4.recv_from(&mut b);
    }
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let mut pr = Vec::new();
    compare("Q4", &drain(&q4), &want4, &mut pr);
    compare("Q6", &drain(&q6), &want6, &mut pr);
    compare("QD", &drain(&qd), &wantd, &mut pr);
    compare("E", &drain(&e), &[], &mut pr);
    log.verdict(&pr, &format!("{} datagrams", want4.len() + want6.len() + wantd.len()));
}
