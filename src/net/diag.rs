//! NETLINK_SOCK_DIAG for inet sockets (inet_diag): state, queue lengths,
//! a listener's backlog and a socket's shutdown bits, which no socket
//! option tells. One dump per (family, protocol), cached by the dump.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{self as sock, AddressFamily, MsgFlags, SockFlag, SockType};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SHUTDOWN: u16 = 8;
/// Size of struct inet_diag_msg.
const MSG_LEN: usize = 72;

/// What inet_diag says about one socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InetDiag {
    pub family: u8,
    pub state: u8,
    pub ino: u32,
    /// Receive queue bytes; for a listener, connections waiting for accept().
    pub rqueue: u32,
    /// Send queue bytes; for a listener, its backlog (listen()'s argument).
    pub wqueue: u32,
    /// sk_shutdown bits (1 = receive, 2 = send).
    pub shutdown: u8,
    /// The remote address the kernel holds (also for a connection not yet
    /// established, which getpeername does not tell); None when unset.
    pub dst: Option<std::net::SocketAddr>,
}

/// The remote address of an inet_diag_sockid (at offset 4 of the message):
/// dport at 2, dst at 20 (4 bytes for IPv4, 16 for IPv6).
fn dst_of(family: u8, m: &[u8]) -> Option<std::net::SocketAddr> {
    let port = u16::from_be_bytes([m[6], m[7]]);
    let a = &m[24..40];
    let ip: std::net::IpAddr = match i32::from(family) {
        libc::AF_INET => std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
        libc::AF_INET6 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?).into(),
        _ => return None,
    };
    (port != 0).then_some(std::net::SocketAddr::new(ip, port))
}

/// The netlink request for a dump of every socket of `family`/`proto` in
/// every state.
pub fn request(family: u8, proto: u8, seq: u32) -> Vec<u8> {
    let len: u32 = 16 + 56;
    let mut req = Vec::with_capacity(len as usize);
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, then an
    // all-zero inet_diag_sockid (48 bytes).
    req.push(family);
    req.push(proto);
    req.push(0);
    req.push(0);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    req
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
        .unwrap_or(0)
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map(|x| u16::from_ne_bytes([x[0], x[1]])).unwrap_or(0)
}

/// Parses one datagram of an inet_diag reply: the sockets in it and
/// whether the dump is complete.
pub fn parse(buf: &[u8]) -> std::result::Result<(Vec<InetDiag>, bool), String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let ty = u16_at(buf, off + 4);
        if len < 16 || off + len > buf.len() {
            return Err(format!("bad netlink message length {len} at {off}"));
        }
        match ty {
            NLMSG_DONE => return Ok((out, true)),
            NLMSG_ERROR => return Err(format!("inet_diag error {}", -(u32_at(buf, off + 16) as i32))),
            _ => {}
        }
        let m = &buf[off + 16..off + len];
        if m.len() < MSG_LEN {
            return Err(format!("short inet_diag_msg at {off}"));
        }
        let mut d = InetDiag {
            family: m[0],
            state: m[1],
            rqueue: u32_at(m, 56),
            wqueue: u32_at(m, 60),
            ino: u32_at(m, 68),
            dst: dst_of(m[0], m),
            ..Default::default()
        };
        let mut a = MSG_LEN;
        while a + 4 <= m.len() {
            let alen = u16_at(m, a) as usize;
            let aty = u16_at(m, a + 2) & 0x3fff;
            if alen < 4 || a + alen > m.len() {
                return Err(format!("bad attribute length {alen} in the message at {off}"));
            }
            if aty == INET_DIAG_SHUTDOWN && alen > 4 {
                d.shutdown = m[a + 4];
            }
            a += (alen + 3) & !3;
        }
        out.push(d);
        off += (len + 3) & !3;
    }
    Ok((out, false))
}

/// Every socket of `family`/`proto` in this network namespace, by inode.
pub fn dump_all(family: u8, proto: u8) -> Result<HashMap<u32, InetDiag>> {
    query("inet_diag", &request(family, proto, 1), parse, |d| d.ino)
}

/// Sends one NETLINK_SOCK_DIAG dump request and collects the sockets of
/// every reply (`parse` decodes one reply: its sockets, and whether it
/// ended the dump), by inode. `what` names the exchange in errors.
pub(crate) fn query<T>(
    what: &str,
    req: &[u8],
    parse: impl Fn(&[u8]) -> std::result::Result<(Vec<T>, bool), String>,
    ino: impl Fn(&T) -> u32,
) -> Result<HashMap<u32, T>> {
    let nl = sock::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        sock::SockProtocol::NetlinkSockDiag,
    )
    .context("Cannot open a NETLINK_SOCK_DIAG socket")?;
    sock::send(nl.as_raw_fd(), req, MsgFlags::empty()).with_context(|| format!("{what} request"))?;
    let mut all = HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock::recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).with_context(|| format!("{what} reply"))?;
        if n == 0 {
            bail!("{what}: the reply ended early");
        }
        let (socks, done) = parse(&buf[..n]).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        for d in socks {
            all.insert(ino(&d), d);
        }
        if done {
            return Ok(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(state: u8, ino: u32, rq: u32, wq: u32, shutdown: Option<u8>) -> Vec<u8> {
        let mut m = vec![0u8; MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = state;
        m[56..60].copy_from_slice(&rq.to_ne_bytes());
        m[60..64].copy_from_slice(&wq.to_ne_bytes());
        m[68..72].copy_from_slice(&ino.to_ne_bytes());
        if let Some(s) = shutdown {
            m.extend_from_slice(&5u16.to_ne_bytes());
            m.extend_from_slice(&INET_DIAG_SHUTDOWN.to_ne_bytes());
            m.extend_from_slice(&[s, 0, 0, 0]);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + m.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out.extend_from_slice(&[0u8; 10]);
        out.extend_from_slice(&m);
        out
    }

    #[test]
    fn request_layout() {
        let r = request(10, 6, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), 72);
        assert_eq!(u16_at(&r, 4), 20);
        assert_eq!((r[16], r[17]), (10, 6));
        assert_eq!(u32_at(&r, 20), u32::MAX);
    }

    #[test]
    fn parses_messages_and_done() {
        let mut buf = msg(10, 99, 2, 128, Some(0));
        buf.extend(msg(1, 100, 5, 0, Some(2)));
        let (v, done) = parse(&buf).unwrap();
        assert!(!done);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].state, v[0].ino, v[0].rqueue, v[0].wqueue), (10, 99, 2, 128));
        assert_eq!((v[1].ino, v[1].shutdown), (100, 2));
        let mut done_msg = 16u32.to_ne_bytes().to_vec();
        done_msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done_msg.extend_from_slice(&[0u8; 10]);
        assert!(parse(&done_msg).unwrap().1);
    }

    #[test]
    fn parses_the_remote_address() {
        let mut buf = msg(2, 7, 0, 0, None);
        // dport 8080 at message offset 16 + 6, dst 10.1.2.3 at 16 + 24.
        buf[22..24].copy_from_slice(&8080u16.to_be_bytes());
        buf[40..44].copy_from_slice(&[10, 1, 2, 3]);
        let (v, _) = parse(&buf).unwrap();
        assert_eq!(v[0].dst, Some("10.1.2.3:8080".parse().unwrap()));
        let (v, _) = parse(&msg(10, 8, 0, 0, None)).unwrap();
        assert_eq!(v[0].dst, None, "a listener has no remote port");
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = msg(10, 1, 0, 0, None);
        buf[0] = 200;
        assert!(parse(&buf).is_err());
        let mut err = 20u32.to_ne_bytes().to_vec();
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0u8; 10]);
        err.extend_from_slice(&(-13i32).to_ne_bytes());
        assert_eq!(parse(&err).unwrap_err(), "inet_diag error 13");
    }
}
