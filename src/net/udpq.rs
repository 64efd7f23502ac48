//! Datagrams queued on a UDP socket at dump time: `sk_packet_entry`s in
//! sk-queues.img (`id_for` = the socket's file id, `addr` = the sender's
//! sockaddr, the field CRIU reserves for a message's address), in queue
//! order.
//!
//! Dump: with SO_PEEK_OFF at 0, each `recvmsg(MSG_PEEK)` returns the next
//! datagram and its sender without taking it; the socket's peek offset is
//! put back afterwards, so a dump that fails (or --leave-running) leaves
//! the queue as it was.
//!
//! Restore: the datagrams are put back after the socket is bound,
//! connected and has its options, by a raw socket (IP_HDRINCL /
//! IPV6_HDRINCL) in the socket's network namespace that sends each as an
//! IPv4 or IPv6 UDP packet from its original sender to the socket's
//! address (loopback when it is bound to the wildcard). A local
//! destination loops back without an input route lookup, so the source
//! may be any address. The restore then counts the queue: a datagram that
//! did not arrive (a firewall in the namespace, SO_BINDTODEVICE to another
//! interface, a full receive buffer) fails the restore, naming the socket.
//! Not kept: control data (IP_PKTINFO, TTL, TOS) and the destination
//! address of a datagram to a wildcard-bound socket. A SO_REUSEPORT
//! socket's datagrams are not put back (with a warning): the kernel could
//! hand them to another socket of its group.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{bail, Context, Result};

use crate::image::pb;
use crate::sys::{fdops, sock};

const IPV6_HDRINCL: i32 = 36;
/// Largest UDP payload of an IPv4 datagram (65535 - 20 - 8).
const MAX_PAYLOAD: usize = 65507;

/// One queued datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// The bytes of a sockaddr_in or sockaddr_in6 for `a`.
pub fn encode_addr(a: &SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    match a {
        SocketAddr::V4(v) => {
            b.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b.extend_from_slice(&v.port().to_be_bytes());
            b.extend_from_slice(&v.ip().octets());
            b.extend_from_slice(&[0u8; 8]);
        }
        SocketAddr::V6(v) => {
            b.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b.extend_from_slice(&v.port().to_be_bytes());
            b.extend_from_slice(&v.flowinfo().to_be_bytes());
            b.extend_from_slice(&v.ip().octets());
            b.extend_from_slice(&v.scope_id().to_ne_bytes());
        }
    }
    b
}

/// The address in sockaddr bytes (see [`encode_addr`]); None when they
/// are not a whole sockaddr_in or sockaddr_in6.
pub fn decode_addr(b: &[u8]) -> Option<SocketAddr> {
    let fam = i32::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match fam {
        libc::AF_INET if b.len() >= 8 => Some(SocketAddr::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]).into(), port)),
        libc::AF_INET6 if b.len() >= 28 => {
            let ip: [u8; 16] = b[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(b[24..28].try_into().ok()?);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                0,
                scope,
            )))
        }
        _ => None,
    }
}

/// Every datagram queued on UDP socket `fd`, oldest first, the queue left
/// as it was.
pub fn peek_all(fd: BorrowedFd) -> Result<Vec<Datagram>> {
    let old = fdops::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).context("SO_PEEK_OFF")?;
    fdops::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).context("SO_PEEK_OFF")?;
    let got = peek_loop(fd);
    let back = fdops::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old).context("SO_PEEK_OFF");
    let got = got?;
    back?;
    Ok(got)
}

fn peek_loop(fd: BorrowedFd) -> Result<Vec<Datagram>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let r = sock::recvfrom_inet(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC);
        let (n, addr) = match r {
            Ok(x) => x,
            Err(nix::errno::Errno::EAGAIN) => return Ok(out),
            Err(e) => return Err(e).context("recvmsg(MSG_PEEK) of a queued datagram"),
        };
        if n > buf.len() {
            bail!("a queued datagram of {n} bytes is larger than UDP allows");
        }
        let from = addr.context("a queued datagram without a sender address")?;
        out.push(Datagram {
            from,
            data: buf[..n].to_vec(),
        });
        if out.len() > 1 << 20 {
            bail!("more than a million datagrams queued");
        }
    }
}

fn fold(sum: u32) -> u16 {
    let mut s = sum;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn add_words(mut sum: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The IP packet (header, UDP header, payload) that carries `data` from
/// `from` to `to` (one family), with the UDP checksum.
pub fn packet(from: &SocketAddr, to: &SocketAddr, data: &[u8]) -> Result<Vec<u8>> {
    if data.len() > MAX_PAYLOAD {
        bail!("a datagram of {} bytes is larger than UDP allows", data.len());
    }
    let ulen = (8 + data.len()) as u16;
    let mut udp = Vec::with_capacity(8 + data.len());
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    let (mut ip, pseudo) = match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + udp.len()) as u16;
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = !fold(add_words(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let mut p = Vec::with_capacity(12);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
            p.extend_from_slice(&ulen.to_be_bytes());
            (h, p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&ulen.to_be_bytes());
            h.extend_from_slice(&[libc::IPPROTO_UDP as u8, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let mut p = Vec::with_capacity(40);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&u32::from(ulen).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, libc::IPPROTO_UDP as u8]);
            (h, p)
        }
        _ => bail!("a datagram from {from} cannot be sent to {to}"),
    };
    let mut c = !fold(add_words(add_words(0, &pseudo), &udp));
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&udp);
    Ok(ip)
}

/// Where a datagram from `from` goes for a socket bound at `local`: the
/// sender's family (a dual-stack socket gets IPv4 datagrams as IPv4), the
/// socket's address, or loopback for a wildcard.
pub fn destination(local: &SocketAddr, from: &SocketAddr) -> (SocketAddr, SocketAddr) {
    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
    let ip = match (from.ip(), local.ip().to_canonical()) {
        (IpAddr::V4(_), IpAddr::V4(a)) if !a.is_unspecified() => IpAddr::V4(a),
        (IpAddr::V4(_), _) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(_), IpAddr::V6(a)) if !a.is_unspecified() => IpAddr::V6(a),
        (IpAddr::V6(_), _) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    (from, SocketAddr::new(ip, local.port()))
}

/// Puts `q` back on UDP socket `fd`, whose queue is empty, bound at
/// `local`; fails unless all of it arrived.
pub fn requeue(fd: BorrowedFd, local: &SocketAddr, q: &[Datagram]) -> Result<()> {
    if q.is_empty() {
        return Ok(());
    }
    let mut raw4 = None;
    let mut raw6 = None;
    for (i, d) in q.iter().enumerate() {
        let (from, to) = destination(local, &d.from);
        let pkt = packet(&from, &to, &d.data)?;
        // A raw socket's "port" is its protocol: 0, the socket's own.
        let dst = SocketAddr::new(to.ip(), 0);
        let raw = if to.is_ipv4() {
            if raw4.is_none() {
                raw4 = Some(sock::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW).context("raw IPv4 socket")?);
            }
            raw4.as_ref()
        } else {
            if raw6.is_none() {
                let s = sock::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW).context("raw IPv6 socket")?;
                fdops::setsockopt_int(s.as_fd(), libc::IPPROTO_IPV6, IPV6_HDRINCL, 1).context("IPV6_HDRINCL")?;
                raw6 = Some(s);
            }
            raw6.as_ref()
        };
        let r = sock::sendto_inet(raw.context("raw socket")?.as_fd(), &pkt, &dst);
        r.with_context(|| {
            format!(
                "Cannot put back queued datagram {} (from {from}, {} bytes)",
                i + 1,
                d.data.len()
            )
        })?;
    }
    // Loopback delivery normally completes within the send; allow a moment.
    let mut have = 0;
    for _ in 0..100 {
        have = peek_all(fd)?.len();
        if have >= q.len() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!(
        "only {have} of its {} queued datagrams could be put back (a firewall in the namespace, SO_BINDTODEVICE to another interface, or its receive buffer)",
        q.len()
    )
}

/// A files.img entry of a UDP socket.
pub fn is_udp(fe: &pb::FileEntry) -> bool {
    fe.isk
        .as_ref()
        .is_some_and(|i| i.proto as i32 == libc::IPPROTO_UDP && i.r#type as i32 == libc::SOCK_DGRAM)
}

/// Stage Load: the datagram of sk-queues.img entry `e` (at `path`) with
/// its bytes `data`, for a UDP socket.
pub fn datagram(path: &str, e: &pb::SkPacketEntry, data: Vec<u8>) -> Result<Datagram> {
    if !e.scm.is_empty() {
        bail!(
            "{path}: a datagram of UDP socket file id {} carries control data",
            e.id_for
        );
    }
    let from = e.addr.as_deref().and_then(decode_addr).with_context(|| {
        format!(
            "{path}: a datagram of UDP socket file id {} has no sender address",
            e.id_for
        )
    })?;
    Ok(Datagram { from, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_bytes_roundtrip() {
        for a in ["127.0.0.1:5353", "10.1.2.3:1", "[::1]:9", "[fe80::1%3]:4242"] {
            let a: SocketAddr = a.parse().unwrap();
            let b = encode_addr(&a);
            assert_eq!(b.len(), if a.is_ipv4() { 16 } else { 28 });
            assert_eq!(decode_addr(&b), Some(a));
        }
        assert_eq!(decode_addr(&[2, 0]), None);
        assert_eq!(decode_addr(&encode_addr(&"[::1]:9".parse().unwrap())[..20]), None);
        let mut b = encode_addr(&"127.0.0.1:1".parse().unwrap());
        b[0] = 1;
        b[1] = 0;
        assert_eq!(decode_addr(&b), None, "AF_UNIX is no inet address");
    }

    /// The Internet checksum over `b` is 0 (0xffff folded) when it is right.
    fn sums_to_zero(b: &[u8]) -> bool {
        fold(add_words(0, b)) == 0xffff
    }

    #[test]
    fn ipv4_packet() {
        let f: SocketAddr = "10.1.2.3:5353".parse().unwrap();
        let t: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let p = packet(&f, &t, b"hello").unwrap();
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 33);
        assert_eq!(p[9], 17);
        assert_eq!(&p[12..16], &[10, 1, 2, 3]);
        assert_eq!(&p[16..20], &[127, 0, 0, 1]);
        assert!(sums_to_zero(&p[..20]), "IPv4 header checksum");
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 5353);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 9999);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 13);
        assert_eq!(&p[28..], b"hello");
        // The UDP checksum covers the pseudo header.
        let mut v = p[12..20].to_vec();
        v.extend_from_slice(&[0, 17, 0, 13]);
        v.extend_from_slice(&p[20..]);
        assert!(sums_to_zero(&v), "UDP checksum");
    }

    #[test]
    fn ipv6_packet() {
        let f: SocketAddr = "[fd00::2]:53".parse().unwrap();
        let t: SocketAddr = "[::1]:7".parse().unwrap();
        let p = packet(&f, &t, b"odd").unwrap();
        assert_eq!(p.len(), 40 + 8 + 3);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 11);
        assert_eq!((p[6], p[7]), (17, 64));
        let mut v = p[8..40].to_vec();
        v.extend_from_slice(&[0, 0, 0, 11, 0, 0, 0, 17]);
        v.extend_from_slice(&p[40..]);
        assert!(sums_to_zero(&v), "UDP checksum");
        assert_ne!(u16::from_be_bytes([p[46], p[47]]), 0, "IPv6 needs a checksum");
        assert!(packet(&f, &"127.0.0.1:1".parse().unwrap(), b"").is_err());
        assert!(packet(
            &"127.0.0.1:1".parse().unwrap(),
            &"127.0.0.1:2".parse().unwrap(),
            &[0; 65508]
        )
        .is_err());
    }

    #[test]
    fn image_entries() {
        let from: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let mut e = pb::SkPacketEntry {
            id_for: 7,
            length: 2,
            addr: Some(encode_addr(&from)),
            scm: vec![],
        };
        assert_eq!(
            datagram("q", &e, b"hi".to_vec()).unwrap(),
            Datagram {
                from,
                data: b"hi".to_vec()
            }
        );
        e.addr = None;
        let err = datagram("q", &e, vec![]).unwrap_err().to_string();
        assert!(err.contains("file id 7 has no sender address"), "{err}");
        e.addr = Some(encode_addr(&from));
        e.scm = vec![pb::ScmEntry {
            r#type: 1,
            rights: vec![3],
        }];
        assert!(datagram("q", &e, vec![])
            .unwrap_err()
            .to_string()
            .contains("control data"));
    }

    #[test]
    fn destinations() {
        let any6: SocketAddr = "[::]:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4".parse().unwrap();
        assert_eq!(
            destination(&any6, &mapped),
            ("10.0.0.1:4".parse().unwrap(), "127.0.0.1:80".parse().unwrap())
        );
        let from6: SocketAddr = "[fd00::9]:4".parse().unwrap();
        assert_eq!(destination(&any6, &from6).1, "[::1]:80".parse().unwrap());
        let bound: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(
            destination(&bound, &"10.0.0.1:4".parse().unwrap()).1,
            "10.0.0.2:80".parse().unwrap()
        );
        let any4: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert_eq!(
            destination(&any4, &"10.0.0.1:4".parse().unwrap()).1,
            "127.0.0.1:80".parse().unwrap()
        );
    }
}
