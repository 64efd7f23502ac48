//! Inet sockets (TCP, UDP, ICMP ping and raw; IPv4 and IPv6):
//! `inet_sk_entry` in files.img, plus tcp-stream-<ino>.img for an
//! established connection. A ping socket's port is its ICMP identifier
//! (bound again at restore); a raw socket keeps its bound address,
//! IP_HDRINCL, IP_NODEFRAG and ICMP filter (`ip_opts.raw`).
//!
//! Dump: addresses from getsockname/getpeername on a pidfd_getfd
//! duplicate (the same open file description), state, backlog and
//! shutdown from inet_diag, options from getsockopt. A listener with
//! connections the kernel accepted but the program did not accept() yet
//! is refused; so is a connection in a half-closed or closing state. An
//! established connection needs `--tcp-established` (repair, see
//! [`super::tcp`]) or `--tcp-close` (it comes back closed).
//!
//! Restore: socket(), the options that matter for bind (SO_REUSEADDR/
//! PORT, IPV6_V6ONLY, SO_BINDTODEVICE, IP_FREEBIND), bind, then listen,
//! connect (UDP) or the repair sequence (TCP), then every other option and
//! the file status flags. A UDP socket's queued datagrams go to
//! sk-queues.img and come back last ([`super::udpq`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{bail, Context, Result};
use nix::sys::socket as nsock;

use super::tcp;
use crate::files::{fown0, FdCtx, FileTable};
use crate::image::pb;
use crate::sys::{fdops, sock};

pub const FD_INETSK: i32 = 4;

/// The kernel's words of an address (network byte order, loaded native),
/// as CRIU stores them.
pub fn addr_words(ip: &IpAddr) -> Vec<u32> {
    match ip {
        IpAddr::V4(a) => vec![u32::from_ne_bytes(a.octets())],
        IpAddr::V6(a) => a
            .octets()
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// Inverse of [`addr_words`]; an empty list is the unspecified address.
pub fn words_addr(family: u32, words: &[u32]) -> Result<IpAddr> {
    match (family as i32, words.len()) {
        (libc::AF_INET, 0) => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        (libc::AF_INET6, 0) => Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        (libc::AF_INET, 1) => Ok(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        (libc::AF_INET6, 4) => {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        (f, n) => bail!("an address of family {f} with {n} words"),
    }
}

fn proto_name(typ: i32, proto: i32) -> String {
    match (typ, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => "tcp".into(),
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => "udp".into(),
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMP) | (libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6) => "icmp ping".into(),
        (libc::SOCK_RAW, p) => format!("raw (protocol {p})"),
        (t, p) => format!("type {t} protocol {p}"),
    }
}

/// "tcp 127.0.0.1:5000 -> 127.0.0.1:40000", for messages.
pub fn describe(typ: i32, proto: i32, local: &SocketAddr, peer: Option<&SocketAddr>) -> String {
    match peer {
        Some(p) => format!("{} {local} -> {p}", proto_name(typ, proto)),
        None => format!("{} {local}", proto_name(typ, proto)),
    }
}

fn int(fd: BorrowedFd, level: i32, name: i32, what: &str) -> Result<i32> {
    fdops::getsockopt_int(fd, level, name).with_context(|| format!("getsockopt {what}"))
}

fn bound_dev(fd: BorrowedFd) -> Result<Option<String>> {
    let mut b = [0u8; 32];
    let n = sock::getsockopt_buf(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, &mut b).context("SO_BINDTODEVICE")?;
    let name: Vec<u8> = b[..n].iter().copied().take_while(|&c| c != 0).collect();
    Ok((!name.is_empty()).then(|| String::from_utf8_lossy(&name).into_owned()))
}

/// Socket-level options (and TCP keepalive knobs for TCP).
pub fn sk_opts(fd: BorrowedFd, is_tcp: bool) -> Result<pb::SkOptsEntry> {
    let so = |name, what| int(fd, libc::SOL_SOCKET, name, what);
    let (snd_s, snd_u) = fdops::getsockopt_timeval(fd, libc::SO_SNDTIMEO).context("SO_SNDTIMEO")?;
    let (rcv_s, rcv_u) = fdops::getsockopt_timeval(fd, libc::SO_RCVTIMEO).context("SO_RCVTIMEO")?;
    let tcp = |name, what| -> Result<Option<u32>> {
        if is_tcp {
            Ok(Some(int(fd, libc::SOL_TCP, name, what)? as u32))
        } else {
            Ok(None)
        }
    };
    Ok(pb::SkOptsEntry {
        so_sndbuf: so(libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
        so_rcvbuf: so(libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
        so_snd_tmo_sec: snd_s as u64,
        so_snd_tmo_usec: snd_u as u64,
        so_rcv_tmo_sec: rcv_s as u64,
        so_rcv_tmo_usec: rcv_u as u64,
        reuseaddr: Some(so(libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0),
        so_priority: Some(so(libc::SO_PRIORITY, "SO_PRIORITY")? as u32),
        so_rcvlowat: Some(so(libc::SO_RCVLOWAT, "SO_RCVLOWAT")? as u32),
        so_mark: Some(so(libc::SO_MARK, "SO_MARK")? as u32),
        so_dontroute: Some(so(libc::SO_DONTROUTE, "SO_DONTROUTE")? != 0),
        so_no_check: Some(so(libc::SO_NO_CHECK, "SO_NO_CHECK")? != 0),
        so_bound_dev: bound_dev(fd)?,
        so_reuseport: Some(so(libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0),
        so_broadcast: Some(so(libc::SO_BROADCAST, "SO_BROADCAST")? != 0),
        so_keepalive: Some(so(libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0),
        tcp_keepcnt: tcp(libc::TCP_KEEPCNT, "TCP_KEEPCNT")?,
        tcp_keepidle: tcp(libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")?,
        tcp_keepintvl: tcp(libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")?,
        so_oobinline: Some(so(libc::SO_OOBINLINE, "SO_OOBINLINE")? as u32),
        so_buf_lock: Some(so(libc::SO_BUF_LOCK, "SO_BUF_LOCK")? as u32),
        ..Default::default()
    })
}

fn ip_opts(fd: BorrowedFd, family: i32) -> Result<pb::IpOptsEntry> {
    let (tos, ttl) = if family == libc::AF_INET6 {
        (
            int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS")?,
            int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS")?,
        )
    } else {
        (
            int(fd, libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS")?,
            int(fd, libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL")?,
        )
    };
    Ok(pb::IpOptsEntry {
        freebind: Some(int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, "IP_FREEBIND")? != 0),
        raw: None,
        cryo_tos: Some(tos as u32),
        cryo_ttl: Some(ttl as u32),
    })
}

fn name_of(fd: BorrowedFd, peer: bool) -> Option<SocketAddr> {
    sock::inet_name(fd, peer).ok().flatten()
}

/// Dumps an AF_INET/AF_INET6 socket; returns its file id.
pub(crate) fn dump(t: &mut FileTable, f: &FdCtx, dup: OwnedFd, family: i32, typ: i32) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let d = dup.as_fd();
    let proto = int(d, libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    let ino = f.md.map(|m| std::os::unix::fs::MetadataExt::ino(m) as u32).unwrap_or(0);
    let unspec = if family == libc::AF_INET6 {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let local = name_of(d, false).unwrap_or(unspec);
    let peer = name_of(d, true);
    let what = describe(typ, proto, &local, peer.as_ref());
    let is_tcp = (typ, proto) == (libc::SOCK_STREAM, libc::IPPROTO_TCP);
    let is_udp = (typ, proto) == (libc::SOCK_DGRAM, libc::IPPROTO_UDP);
    let is_ping = is_ping(family, typ, proto);
    let is_raw = typ == libc::SOCK_RAW;
    if !is_tcp && !is_udp && !is_ping && !is_raw {
        bail!("pid {pid} fd {fd}: {what}: this kind of inet socket is not supported yet");
    }
    if (is_ping || is_raw) && peer.is_some() {
        bail!("pid {pid} fd {fd}: {what}: connected ping and raw sockets are not supported yet");
    }
    // inet_diag lists only hashed sockets: an unbound, unconnected one is
    // missing, and TCP_INFO gives its state.
    let cached = if is_tcp || is_udp {
        t.net.diag(family as u8, proto as u8, ino)?
    } else {
        None
    };
    let diag = match cached {
        Some(d) => d,
        None if is_tcp => super::diag::InetDiag {
            state: tcp::state(d).with_context(|| format!("pid {pid} fd {fd} ({what})"))? as u8,
            ino,
            ..Default::default()
        },
        None => super::diag::InetDiag {
            state: tcp::CLOSE as u8,
            ino,
            ..Default::default()
        },
    };
    let mut state = u32::from(diag.state);
    if is_udp {
        state = if peer.is_some() { tcp::ESTABLISHED } else { tcp::CLOSE };
    }
    let mut stream = None;
    if is_tcp {
        match state {
            tcp::LISTEN if diag.rqueue > 0 => bail!(
                "pid {pid} fd {fd}: listening socket {what} has {} connection(s) the program has not accepted yet; not supported",
                diag.rqueue
            ),
            tcp::LISTEN | tcp::CLOSE => {}
            s if tcp::connected(s) => {
                let p = peer.context("an established connection without a peer address")?;
                if t.net.tcp_established {
                    stream = Some(
                        t.net
                            .repair_and_dump(&dup, &local, &p)
                            .with_context(|| format!("pid {pid} fd {fd}: established connection {what}"))?,
                    );
                } else if !t.net.tcp_close {
                    let half = if s == tcp::ESTABLISHED {
                        String::new()
                    } else {
                        format!(" (half-closed, {})", state_name(s))
                    };
                    bail!(
                        "pid {pid} fd {fd}: established TCP connection {local} -> {p}{half}; dump with --tcp-established to keep it (or --tcp-close to restore it closed)"
                    );
                }
            }
            s => bail!(
                "pid {pid} fd {fd}: TCP connection {}{} is in state {} ({s}), which cryo cannot restore",
                what,
                match (&peer, &diag.dst) {
                    (None, Some(dst)) => format!(" -> {dst}"),
                    _ => String::new(),
                },
                state_name(s)
            ),
        }
    }
    let opts = sk_opts(d, is_tcp).with_context(|| format!("pid {pid} fd {fd} ({what}): socket options"))?;
    let mut ip = ip_opts(d, family).with_context(|| format!("pid {pid} fd {fd} ({what}): IP options"))?;
    if is_raw {
        ip.raw = Some(raw_opts(d, family, proto).with_context(|| format!("pid {pid} fd {fd} ({what}): raw options"))?);
    }
    let v6only = if family == libc::AF_INET6 {
        Some(int(d, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")? != 0)
    } else {
        None
    };
    let nodelay = if is_tcp {
        Some(int(d, libc::SOL_TCP, libc::TCP_NODELAY, "TCP_NODELAY")? != 0)
    } else {
        None
    };
    let id = t.new_id();
    let (dst_addr, dst_port) = match &peer {
        Some(p) => (addr_words(&p.ip()), u32::from(p.port())),
        None => (vec![], 0),
    };
    t.entries.push(pb::FileEntry {
        r#type: FD_INETSK,
        id,
        isk: Some(pb::InetSkEntry {
            id,
            ino,
            family: family as u32,
            r#type: typ as u32,
            proto: proto as u32,
            state,
            src_port: u32::from(local.port()),
            dst_port,
            flags: f.flags,
            backlog: if state == tcp::LISTEN { diag.wqueue } else { 0 },
            src_addr: addr_words(&local.ip()),
            dst_addr,
            fown: fown0(),
            opts,
            v6only,
            ip_opts: Some(ip),
            ifname: None,
            ns_id: None,
            shutdown: (diag.shutdown != 0).then_some(i32::from(diag.shutdown)),
            cryo_nodelay: nodelay,
        }),
        ..Default::default()
    });
    if is_udp {
        let q = super::udpq::peek_all(d).with_context(|| format!("pid {pid} fd {fd}: queued datagrams of {what}"))?;
        for dg in q {
            t.sk_queues.push((
                pb::SkPacketEntry {
                    id_for: id,
                    length: dg.data.len() as u32,
                    addr: Some(super::udpq::encode_addr(&dg.from)),
                    scm: vec![],
                },
                dg.data,
            ));
        }
    }
    if let Some(s) = stream {
        t.extra_images.push(crate::files::ExtraImage {
            name: tcp::image_name(ino),
            bytes: tcp::encode(&s)?,
        });
    }
    Ok(id)
}

/// An ICMP "ping" socket (SOCK_DGRAM with IPPROTO_ICMP or ICMPV6).
fn is_ping(family: i32, typ: i32, proto: i32) -> bool {
    typ == libc::SOCK_DGRAM
        && ((family == libc::AF_INET && proto == libc::IPPROTO_ICMP)
            || (family == libc::AF_INET6 && proto == libc::IPPROTO_ICMPV6))
}

const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const ICMP6_FILTER: i32 = 1;
const IP_NODEFRAG: i32 = 22;

/// Where a raw socket's ICMP filter lives: (level, option, words).
fn icmp_filter_opt(family: i32, proto: i32) -> Option<(i32, i32, usize)> {
    match (family, proto) {
        (libc::AF_INET, libc::IPPROTO_ICMP) => Some((SOL_RAW, ICMP_FILTER, 1)),
        (libc::AF_INET6, libc::IPPROTO_ICMPV6) => Some((libc::IPPROTO_ICMPV6, ICMP6_FILTER, 8)),
        _ => None,
    }
}

fn raw_opts(fd: BorrowedFd, family: i32, proto: i32) -> Result<pb::IpOptsRawEntry> {
    let mut r = pb::IpOptsRawEntry::default();
    if family == libc::AF_INET {
        r.hdrincl = Some(int(fd, libc::IPPROTO_IP, libc::IP_HDRINCL, "IP_HDRINCL")? != 0);
        r.nodefrag = Some(int(fd, libc::IPPROTO_IP, IP_NODEFRAG, "IP_NODEFRAG")? != 0);
    }
    if let Some((level, name, words)) = icmp_filter_opt(family, proto) {
        let mut b = vec![0u8; words * 4];
        let n = sock::getsockopt_buf(fd, level, name, &mut b).context("ICMP filter")?;
        r.icmpv_filter = b[..n]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
    }
    Ok(r)
}

fn apply_raw_opts(fd: BorrowedFd, family: i32, proto: i32, r: &pb::IpOptsRawEntry) -> Result<()> {
    if r.hdrincl == Some(true) && proto != libc::IPPROTO_RAW {
        setopt(fd, libc::IPPROTO_IP, libc::IP_HDRINCL, 1, "IP_HDRINCL")?;
    }
    if r.nodefrag == Some(true) {
        setopt(fd, libc::IPPROTO_IP, IP_NODEFRAG, 1, "IP_NODEFRAG")?;
    }
    if let Some((level, name, words)) = icmp_filter_opt(family, proto) {
        if r.icmpv_filter.len() == words {
            let b: Vec<u8> = r.icmpv_filter.iter().flat_map(|w| w.to_ne_bytes()).collect();
            sock::setsockopt_buf(fd, level, name, &b).context("ICMP filter")?;
        }
    }
    Ok(())
}

fn state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

// ---- restore ------------------------------------------------------------------

/// Local and peer addresses of an entry.
pub fn addrs(isk: &pb::InetSkEntry) -> Result<(SocketAddr, Option<SocketAddr>)> {
    let local = SocketAddr::new(words_addr(isk.family, &isk.src_addr)?, isk.src_port as u16);
    let peer = if isk.dst_port != 0 {
        Some(SocketAddr::new(
            words_addr(isk.family, &isk.dst_addr)?,
            isk.dst_port as u16,
        ))
    } else {
        None
    };
    Ok((local, peer))
}

/// The entry's description for messages.
pub fn describe_entry(isk: &pb::InetSkEntry) -> String {
    match addrs(isk) {
        Ok((l, p)) => describe(isk.r#type as i32, isk.proto as i32, &l, p.as_ref()),
        Err(_) => format!("inet socket {}", isk.ino),
    }
}

/// Stage Load: an entry cryo can restore (an established connection
/// without a stream was dumped with --tcp-close and comes back closed).
pub fn check(fe: &pb::FileEntry) -> Result<()> {
    let isk = fe
        .isk
        .as_ref()
        .with_context(|| format!("files.img: file id {} has no inet socket entry", fe.id))?;
    addrs(isk).with_context(|| format!("files.img: inet socket file id {}", fe.id))?;
    let what = describe_entry(isk);
    let (typ, proto) = (isk.r#type as i32, isk.proto as i32);
    match (typ, proto, isk.state) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP, tcp::LISTEN | tcp::CLOSE) => {}
        (libc::SOCK_STREAM, libc::IPPROTO_TCP, s) if tcp::connected(s) => {
            if isk.dst_port == 0 {
                bail!("files.img: established {what} has no peer");
            }
        }
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP, tcp::ESTABLISHED | tcp::CLOSE) => {}
        (libc::SOCK_DGRAM, p, tcp::CLOSE) if is_ping(isk.family as i32, typ, p) => {}
        (libc::SOCK_RAW, _, tcp::CLOSE) => {}
        _ => bail!(
            "files.img: {what} (file id {}) in state {} cannot be restored",
            fe.id,
            isk.state
        ),
    }
    Ok(())
}

fn setopt(fd: BorrowedFd, level: i32, name: i32, v: i32, what: &str) -> Result<()> {
    fdops::setsockopt_int(fd, level, name, v).with_context(|| format!("setsockopt {what}"))
}

/// The options that must be in place before bind.
fn pre_bind(fd: BorrowedFd, isk: &pb::InetSkEntry) -> Result<()> {
    let o = &isk.opts;
    if o.reuseaddr == Some(true) {
        setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")?;
    }
    if o.so_reuseport == Some(true) {
        setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT")?;
    }
    if let Some(v) = isk.v6only {
        setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, i32::from(v), "IPV6_V6ONLY")?;
    }
    if let Some(dev) = o.so_bound_dev.as_deref().filter(|d| !d.is_empty()) {
        sock::setsockopt_buf(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())
            .with_context(|| format!("SO_BINDTODEVICE {dev} (the interface must exist)"))?;
    }
    if isk.ip_opts.as_ref().and_then(|i| i.freebind) == Some(true) {
        setopt(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, 1, "IP_FREEBIND")?;
    }
    Ok(())
}

/// Every other option, once the socket is bound (and connected).
fn post(fd: BorrowedFd, isk: &pb::InetSkEntry) -> Result<()> {
    apply_sk_opts(fd, &isk.opts)?;
    post_inet(fd, isk)
}

/// The socket-level options of any socket (and TCP keepalive knobs when
/// the image has them).
pub fn apply_sk_opts(fd: BorrowedFd, o: &pb::SkOptsEntry) -> Result<()> {
    let lock = o.so_buf_lock.unwrap_or(0) as i32;
    if lock & 1 != 0 {
        setopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (o.so_sndbuf / 2) as i32,
            "SO_SNDBUFFORCE",
        )?;
    }
    if lock & 2 != 0 {
        setopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (o.so_rcvbuf / 2) as i32,
            "SO_RCVBUFFORCE",
        )?;
    }
    setopt(fd, libc::SOL_SOCKET, libc::SO_BUF_LOCK, lock, "SO_BUF_LOCK")?;
    if o.so_snd_tmo_sec != 0 || o.so_snd_tmo_usec != 0 {
        fdops::setsockopt_timeval(fd, libc::SO_SNDTIMEO, o.so_snd_tmo_sec as i64, o.so_snd_tmo_usec as i64)
            .context("SO_SNDTIMEO")?;
    }
    if o.so_rcv_tmo_sec != 0 || o.so_rcv_tmo_usec != 0 {
        fdops::setsockopt_timeval(fd, libc::SO_RCVTIMEO, o.so_rcv_tmo_sec as i64, o.so_rcv_tmo_usec as i64)
            .context("SO_RCVTIMEO")?;
    }
    let flags = [
        (o.so_keepalive, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
        (o.so_broadcast, libc::SO_BROADCAST, "SO_BROADCAST"),
        (o.so_dontroute, libc::SO_DONTROUTE, "SO_DONTROUTE"),
        (o.so_no_check, libc::SO_NO_CHECK, "SO_NO_CHECK"),
    ];
    for (v, name, what) in flags {
        if v == Some(true) {
            setopt(fd, libc::SOL_SOCKET, name, 1, what)?;
        }
    }
    if let Some(v) = o.so_oobinline.filter(|&v| v != 0) {
        setopt(fd, libc::SOL_SOCKET, libc::SO_OOBINLINE, v as i32, "SO_OOBINLINE")?;
    }
    if let Some(v) = o.so_priority.filter(|&v| v != 0) {
        setopt(fd, libc::SOL_SOCKET, libc::SO_PRIORITY, v as i32, "SO_PRIORITY")?;
    }
    if let Some(v) = o.so_rcvlowat.filter(|&v| v > 1) {
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, v as i32, "SO_RCVLOWAT")?;
    }
    if let Some(v) = o.so_mark.filter(|&v| v != 0) {
        setopt(fd, libc::SOL_SOCKET, libc::SO_MARK, v as i32, "SO_MARK")?;
    }
    for (v, name, what) in [
        (o.tcp_keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
        (o.tcp_keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
        (o.tcp_keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
    ] {
        if let Some(v) = v {
            setopt(fd, libc::SOL_TCP, name, v as i32, what)?;
        }
    }
    Ok(())
}

fn post_inet(fd: BorrowedFd, isk: &pb::InetSkEntry) -> Result<()> {
    if isk.proto as i32 == libc::IPPROTO_TCP && isk.cryo_nodelay == Some(true) {
        setopt(fd, libc::SOL_TCP, libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
    }
    if let Some(ip) = &isk.ip_opts {
        let v6 = isk.family as i32 == libc::AF_INET6;
        if let Some(tos) = ip.cryo_tos {
            if v6 {
                setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, tos as i32, "IPV6_TCLASS")?;
            } else {
                setopt(fd, libc::IPPROTO_IP, libc::IP_TOS, tos as i32, "IP_TOS")?;
            }
        }
        if let Some(ttl) = ip.cryo_ttl {
            if v6 {
                setopt(
                    fd,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_UNICAST_HOPS,
                    ttl as i32,
                    "IPV6_UNICAST_HOPS",
                )?;
            } else {
                setopt(fd, libc::IPPROTO_IP, libc::IP_TTL, ttl as i32, "IP_TTL")?;
            }
        }
    }
    if let Some(sh) = isk.shutdown.filter(|&s| s != 0) {
        if isk.state == tcp::ESTABLISHED && isk.proto as i32 == libc::IPPROTO_UDP {
            let how = match sh {
                1 => nsock::Shutdown::Read,
                2 => nsock::Shutdown::Write,
                _ => nsock::Shutdown::Both,
            };
            use std::os::fd::AsRawFd;
            nsock::shutdown(fd.as_raw_fd(), how).context("shutdown")?;
        }
    }
    Ok(())
}

fn bind(fd: BorrowedFd, a: &SocketAddr, what: &str) -> Result<()> {
    sock::bind_inet(fd, a).with_context(|| format!("Cannot bind {what} to {a}"))
}

fn connect(fd: BorrowedFd, a: &SocketAddr, what: &str) -> Result<()> {
    sock::connect_inet(fd, a).with_context(|| format!("Cannot connect {what} to {a}"))
}

/// Creates the socket of one entry.
/// `queue`: the datagrams queued on a UDP socket.
pub fn create(
    fe: &pb::FileEntry,
    streams: &HashMap<u32, tcp::Stream>,
    tcp_close: bool,
    queue: &[super::udpq::Datagram],
) -> Result<OwnedFd> {
    let isk = fe.isk.as_ref().context("no inet socket entry")?;
    let what = describe_entry(isk);
    let (local, peer) = addrs(isk)?;
    let s = sock::socket(isk.family as i32, isk.r#type as i32, isk.proto as i32)
        .with_context(|| format!("socket() for {what}"))?;
    let fd = s.as_fd();
    let run = || -> Result<()> {
        pre_bind(fd, isk)?;
        let bound = local.port() != 0 || !local.ip().is_unspecified();
        let is_tcp = isk.proto as i32 == libc::IPPROTO_TCP;
        match (is_tcp, isk.state) {
            (true, s) if tcp::connected(s) => {
                let peer = peer.context("no peer")?;
                match streams.get(&isk.ino) {
                    Some(st) if !tcp_close => {
                        tcp::restore_pre_connect(fd, st)?;
                        bind(fd, &local, &what)?;
                        connect(fd, &peer, &what)?;
                        tcp::restore_post_connect(fd, st)?;
                    }
                    // --tcp-close: the program finds the connection closed.
                    _ => tracing::info!("{what} restored closed"),
                }
            }
            (true, tcp::LISTEN) => {
                bind(fd, &local, &what)?;
                let backlog =
                    nsock::Backlog::new(isk.backlog.min(i32::MAX as u32) as i32).unwrap_or(nsock::Backlog::MAXCONN);
                nsock::listen(&fd, backlog).with_context(|| format!("Cannot listen on {what}"))?;
            }
            _ if isk.r#type as i32 == libc::SOCK_RAW => {
                // A raw socket's "port" is its protocol; only the address binds.
                if !local.ip().is_unspecified() {
                    bind(fd, &SocketAddr::new(local.ip(), 0), &what)?;
                }
                if let Some(r) = isk.ip_opts.as_ref().and_then(|i| i.raw.as_ref()) {
                    apply_raw_opts(fd, isk.family as i32, isk.proto as i32, r)?;
                }
            }
            _ => {
                if bound {
                    bind(fd, &local, &what)?;
                }
                if let (Some(p), false) = (peer, is_tcp) {
                    connect(fd, &p, &what)?;
                }
            }
        }
        post(fd, isk)?;
        super::set_status_flags(
            fd,
            isk.flags,
            nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_ASYNC,
        )?;
        let reuseport = isk.opts.so_reuseport == Some(true);
        if !queue.is_empty() && reuseport {
            // The kernel picks a member of the SO_REUSEPORT group for each
            // datagram: it might queue them on another socket.
            tracing::warn!(
                "{what}: {} queued datagrams not put back (SO_REUSEPORT: they could reach another socket of its group)",
                queue.len()
            );
        } else if !queue.is_empty() {
            let at = sock::inet_name(fd, false)
                .ok()
                .flatten()
                .context("the address of a socket with queued datagrams")?;
            super::udpq::requeue(fd, &at, queue)?;
        }
        Ok(())
    };
    run().with_context(|| format!("{what} (file id {})", fe.id))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_roundtrip() {
        for a in ["127.0.0.1", "10.1.2.3", "::1", "fe80::1:2", "0.0.0.0", "::"] {
            let ip: IpAddr = a.parse().unwrap();
            let fam = if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            assert_eq!(words_addr(fam as u32, &addr_words(&ip)).unwrap(), ip);
        }
        // CRIU's words: the in_addr bytes loaded native.
        let w = addr_words(&"127.0.0.1".parse().unwrap());
        assert_eq!(w, vec![u32::from_ne_bytes([127, 0, 0, 1])]);
        assert!(words_addr(libc::AF_INET as u32, &[1, 2]).is_err());
        assert_eq!(
            words_addr(libc::AF_INET6 as u32, &[]).unwrap(),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
    }

    #[test]
    fn descriptions() {
        let l: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let p: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            describe(libc::SOCK_STREAM, libc::IPPROTO_TCP, &l, Some(&p)),
            "tcp 127.0.0.1:5000 -> 127.0.0.1:40000"
        );
        assert_eq!(
            describe(libc::SOCK_DGRAM, libc::IPPROTO_UDP, &l, None),
            "udp 127.0.0.1:5000"
        );
    }
}
