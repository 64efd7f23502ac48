//! The routing half of the network lock: a policy routing rule (FIB rule)
//! per direction of a locked connection, matching its exact 4-tuple, whose
//! action is blackhole. While it is there, nothing this namespace would
//! send on the connection can be routed: not a segment of the repaired
//! socket, and above all not the reset the stack answers with once the
//! socket is gone.
//!
//! The nftables table ([`super::lock`]) alone is not enough when the
//! namespace the connection was dumped in goes away (the tree's own
//! namespace dies with it, a container's is deleted, the server moves
//! elsewhere): the kernel's teardown of a network namespace releases the
//! nftables hooks first (nf_tables' pre_exit), then waits for an RCU grace
//! period, and only then unregisters the interfaces. In between, a
//! retransmission of the peer reaches a stack without filter and without
//! socket, which answers with a reset, and the peer's end of the connection
//! is gone before the restore. Routing rules live until the routing tables
//! themselves go, after which the namespace can neither take a packet in
//! nor send one.
//!
//! The rule sits at priority 1, right after the local table's rule (so a
//! user's policy rules cannot route around it; the local table only
//! matters for a peer in the same namespace, which goes away with it). The
//! dump adds the rules with the nftables table; the restore deletes them
//! before it creates the sockets (their connect needs a route), the table
//! itself only once the tree runs.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{self as sock, AddressFamily, MsgFlags, SockFlag, SockType};

const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_IP_PROTO: u16 = 22;
const FRA_SPORT_RANGE: u16 = 23;
const FRA_DPORT_RANGE: u16 = 24;
const FR_ACT_BLACKHOLE: u8 = 6;
/// The rules' priority (see the module doc).
pub const PRIORITY: u32 = 1;

/// An address as the packets carry it: an IPv4-mapped IPv6 address of a
/// dual-stack socket travels as IPv4.
fn wire(a: &SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + ((4 - len % 4) % 4), 0);
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The rtnetlink request that adds (`add`) or deletes the blackhole rule
/// for TCP segments from `src` to `dst`. Both must be of one family once
/// mapped addresses are unwrapped.
pub fn message(add: bool, seq: u32, src: &SocketAddr, dst: &SocketAddr) -> Result<Vec<u8>> {
    let (src, dst) = (wire(src), wire(dst));
    let (family, bits) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (libc::AF_INET as u8, 32u8),
        (IpAddr::V6(_), IpAddr::V6(_)) => (libc::AF_INET6 as u8, 128u8),
        _ => bail!("the connection {src} -> {dst} mixes IPv4 and IPv6"),
    };
    let (ty, flags) = if add {
        (RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
    } else {
        (RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK)
    };
    let mut m = Vec::with_capacity(96);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1,
    // res2, action, flags.
    m.extend_from_slice(&[family, bits, bits, 0, 0, 0, 0, FR_ACT_BLACKHOLE]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, FRA_SRC, &ip_bytes(&src.ip()));
    attr(&mut m, FRA_DST, &ip_bytes(&dst.ip()));
    attr(&mut m, FRA_PRIORITY, &PRIORITY.to_ne_bytes());
    attr(&mut m, FRA_IP_PROTO, &[libc::IPPROTO_TCP as u8]);
    // struct fib_rule_port_range {start, end}, host byte order.
    for (a, port) in [(FRA_SPORT_RANGE, src.port()), (FRA_DPORT_RANGE, dst.port())] {
        let mut r = port.to_ne_bytes().to_vec();
        r.extend_from_slice(&port.to_ne_bytes());
        attr(&mut m, a, &r);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    Ok(m)
}

/// The errno of the acknowledgement of request `seq` (0: done); None when
/// `buf` holds no acknowledgement of it.
pub fn ack_errno(buf: &[u8], seq: u32) -> Option<i32> {
    let mut off = 0;
    while off + 20 <= buf.len() {
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let len = word(off) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            return None;
        }
        if ty == NLMSG_ERROR && word(off + 8) == seq {
            return Some(-(word(off + 16) as i32));
        }
        off += (len + 3) & !3;
    }
    None
}

/// Sends one request on a fresh NETLINK_ROUTE socket (in the calling
/// thread's network namespace); the errno of its acknowledgement.
fn request(add: bool, src: &SocketAddr, dst: &SocketAddr) -> Result<i32> {
    let nl = sock::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        sock::SockProtocol::NetlinkRoute,
    )
    .context("Cannot open a NETLINK_ROUTE socket")?;
    let seq = 1;
    sock::send(nl.as_raw_fd(), &message(add, seq, src, dst)?, MsgFlags::empty()).context("rtnetlink request")?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock::recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).context("rtnetlink reply")?;
        if n == 0 {
            bail!("rtnetlink: the reply ended early");
        }
        if let Some(e) = ack_errno(&buf[..n], seq) {
            return Ok(e);
        }
    }
}

/// Adds the rules of both directions of the connection between `local`
/// and `peer` (a leftover of an earlier dump of it is replaced).
pub fn add(local: &SocketAddr, peer: &SocketAddr) -> Result<()> {
    remove(local, peer);
    for (s, d) in [(local, peer), (peer, local)] {
        match request(true, s, d)? {
            0 => {}
            e => bail!(
                "Cannot add the routing rule that blackholes {s} -> {d}: {}",
                nix::errno::Errno::from_raw(e).desc()
            ),
        }
    }
    tracing::debug!("routing lock for {local} <-> {peer}");
    Ok(())
}

/// Deletes the rules of the connection between `local` and `peer`; rules
/// that are not there (another namespace, never added) are fine.
pub fn remove(local: &SocketAddr, peer: &SocketAddr) {
    for (s, d) in [(local, peer), (peer, local)] {
        match request(false, s, d) {
            Ok(0) => tracing::debug!("routing lock {s} -> {d} lifted"),
            Ok(e) if e == libc::ENOENT => {}
            Ok(e) => tracing::warn!(
                "cannot delete the routing rule that blackholes {s} -> {d}: {}",
                nix::errno::Errno::from_raw(e).desc()
            ),
            Err(e) => tracing::warn!("cannot delete the routing rule that blackholes {s} -> {d}: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 28;
        while off + 4 <= m.len() {
            let len = u16::from_ne_bytes([m[off], m[off + 1]]) as usize;
            let ty = u16::from_ne_bytes([m[off + 2], m[off + 3]]);
            out.push((ty, m[off + 4..off + len].to_vec()));
            off += (len + 3) & !3;
        }
        out
    }

    #[test]
    fn ipv4_rule_layout() {
        let s: SocketAddr = "10.213.7.2:8080".parse().unwrap();
        let d: SocketAddr = "10.213.7.1:40000".parse().unwrap();
        let m = message(true, 9, &s, &d).unwrap();
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWRULE);
        assert_eq!(
            u16::from_ne_bytes([m[6], m[7]]),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(u32::from_ne_bytes([m[8], m[9], m[10], m[11]]), 9);
        assert_eq!(&m[16..24], &[libc::AF_INET as u8, 32, 32, 0, 0, 0, 0, FR_ACT_BLACKHOLE]);
        let a = attrs(&m);
        let get = |t: u16| a.iter().find(|(ty, _)| *ty == t).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get(FRA_SRC), vec![10, 213, 7, 2]);
        assert_eq!(get(FRA_DST), vec![10, 213, 7, 1]);
        assert_eq!(get(FRA_PRIORITY), PRIORITY.to_ne_bytes().to_vec());
        assert_eq!(get(FRA_IP_PROTO), vec![6]);
        let ports = |v: Vec<u8>| (u16::from_ne_bytes([v[0], v[1]]), u16::from_ne_bytes([v[2], v[3]]));
        assert_eq!(ports(get(FRA_SPORT_RANGE)), (8080, 8080));
        assert_eq!(ports(get(FRA_DPORT_RANGE)), (40000, 40000));
        let del = message(false, 3, &s, &d).unwrap();
        assert_eq!(u16::from_ne_bytes([del[4], del[5]]), RTM_DELRULE);
        assert_eq!(u16::from_ne_bytes([del[6], del[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&del[16..], &m[16..], "the same selector deletes what was added");
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let s: SocketAddr = "[fd00::2]:80".parse().unwrap();
        let d: SocketAddr = "[fd00::1]:4242".parse().unwrap();
        let m = message(true, 1, &s, &d).unwrap();
        assert_eq!(&m[16..19], &[libc::AF_INET6 as u8, 128, 128]);
        let a = attrs(&m);
        assert_eq!(a.iter().find(|(t, _)| *t == FRA_SRC).unwrap().1.len(), 16);
        // A dual-stack socket's IPv4 connection: an IPv4 rule.
        let s: SocketAddr = "[::ffff:10.0.0.2]:80".parse().unwrap();
        let d: SocketAddr = "10.0.0.1:4242".parse().unwrap();
        let m = message(true, 1, &s, &d).unwrap();
        assert_eq!(&m[16..19], &[libc::AF_INET as u8, 32, 32]);
        let s: SocketAddr = "[fd00::2]:80".parse().unwrap();
        assert!(message(true, 1, &s, &d)
            .unwrap_err()
            .to_string()
            .contains("mixes IPv4 and IPv6"));
    }

    #[test]
    fn acknowledgements() {
        let ack = |seq: u32, err: i32| {
            let mut b = 36u32.to_ne_bytes().to_vec();
            b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            b.extend_from_slice(&0u16.to_ne_bytes());
            b.extend_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&err.to_ne_bytes());
            b.extend_from_slice(&[0u8; 16]);
            b
        };
        assert_eq!(ack_errno(&ack(1, 0), 1), Some(0));
        assert_eq!(ack_errno(&ack(1, -libc::ENOENT), 1), Some(libc::ENOENT));
        assert_eq!(ack_errno(&ack(2, 0), 1), None, "another request's");
        let mut two = ack(5, 0);
        two.extend(ack(1, -libc::EEXIST));
        assert_eq!(ack_errno(&two, 1), Some(libc::EEXIST));
        assert_eq!(ack_errno(&ack(1, 0)[..10], 1), None);
        let mut bad = ack(1, 0);
        bad[0] = 200;
        assert_eq!(ack_errno(&bad, 1), None);
    }
}
