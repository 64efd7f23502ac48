//! Netlink sockets a program keeps open (route, generic, audit...):
//! `netlink_sk_entry` in files.img.
//!
//! Dump: protocol and type by getsockopt, the port id and the first 32
//! groups by getsockname, the connected destination by getpeername, every
//! group membership by NETLINK_LIST_MEMBERSHIPS, the socket-level options.
//! Restore: socket, bind to the same port id and groups, the memberships
//! above 32 by NETLINK_ADD_MEMBERSHIP, connect when it was connected, the
//! options and the file status flags. Messages queued on the socket at
//! dump time (replies, notifications) are not kept.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{bail, Context, Result};

use crate::files::{fown0, FdCtx, FileTable};
use crate::image::pb;
use crate::sys::{fdops, sock};

pub const FD_NETLINKSK: i32 = 13;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// A sockaddr_nl: (port id, groups bitmask) from raw bytes.
pub fn parse_addr(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() < 12 || u16::from_ne_bytes([b[0], b[1]]) != libc::AF_NETLINK as u16 {
        return None;
    }
    Some((
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
    ))
}

/// The bytes of a sockaddr_nl.
pub fn addr(portid: u32, groups: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    v.extend_from_slice(&0u16.to_ne_bytes());
    v.extend_from_slice(&portid.to_ne_bytes());
    v.extend_from_slice(&groups.to_ne_bytes());
    v
}

/// The groups (1-based) set in a membership bitmap.
pub fn groups_of(words: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        for b in 0..32 {
            if w & (1 << b) != 0 {
                out.push(i as u32 * 32 + b + 1);
            }
        }
    }
    out
}

fn memberships(fd: BorrowedFd) -> Result<Vec<u32>> {
    let mut buf = vec![0u8; 64];
    let n = sock::getsockopt_buf(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut buf)
        .context("NETLINK_LIST_MEMBERSHIPS")?;
    let mut words: Vec<u32> = buf[..n.min(buf.len())]
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    while words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

/// Dumps a netlink socket; returns its file id.
pub(crate) fn dump(t: &mut FileTable, f: &FdCtx, dup: OwnedFd, typ: i32) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let d = dup.as_fd();
    let what = || format!("pid {pid} fd {fd} (netlink socket)");
    let proto = fdops::getsockopt_int(d, libc::SOL_SOCKET, libc::SO_PROTOCOL).with_context(what)?;
    let (portid, _) = sock::name_raw(d, false)
        .ok()
        .as_deref()
        .and_then(parse_addr)
        .with_context(what)?;
    let (dst_portid, dst_group) = sock::name_raw(d, true)
        .ok()
        .as_deref()
        .and_then(parse_addr)
        .unwrap_or((0, 0));
    let groups = memberships(d).with_context(what)?;
    let opts = super::inet::sk_opts(d, false).with_context(what)?;
    let ino = f.md.map(|m| std::os::unix::fs::MetadataExt::ino(m) as u32).unwrap_or(0);
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_NETLINKSK,
        id,
        nlsk: Some(pb::NetlinkSkEntry {
            id,
            ino,
            protocol: proto as u32,
            state: u32::from(dst_portid != 0 || dst_group != 0),
            flags: f.flags,
            portid,
            groups,
            dst_portid,
            dst_group,
            fown: fown0(),
            opts,
            ns_id: None,
            cryo_type: Some(typ as u32),
        }),
        ..Default::default()
    });
    Ok(id)
}

/// Stage Load check.
pub fn check(fe: &pb::FileEntry) -> Result<()> {
    let nl = fe
        .nlsk
        .as_ref()
        .with_context(|| format!("files.img: file id {} has no netlink entry", fe.id))?;
    let ty = nl.cryo_type.unwrap_or(libc::SOCK_RAW as u32) as i32;
    if ty != libc::SOCK_RAW && ty != libc::SOCK_DGRAM {
        bail!("files.img: netlink socket file id {} has type {ty}", fe.id);
    }
    Ok(())
}

/// Creates the socket of one entry.
pub fn create(fe: &pb::FileEntry) -> Result<OwnedFd> {
    let nl = fe.nlsk.as_ref().context("no netlink entry")?;
    let what = format!("netlink socket (protocol {}, port id {})", nl.protocol, nl.portid);
    let run = || -> Result<OwnedFd> {
        let ty = nl.cryo_type.unwrap_or(libc::SOCK_RAW as u32) as i32;
        let s = sock::socket(libc::AF_NETLINK, ty, nl.protocol as i32).context("socket()")?;
        let fd = s.as_fd();
        let low = nl.groups.first().copied().unwrap_or(0);
        if nl.portid != 0 || low != 0 {
            sock::bind_raw(fd, &addr(nl.portid, low))
                .with_context(|| format!("Cannot bind to port id {} and groups {low:#x}", nl.portid))?;
        }
        for g in groups_of(&nl.groups).into_iter().filter(|&g| g > 32) {
            fdops::setsockopt_int(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g as i32)
                .with_context(|| format!("NETLINK_ADD_MEMBERSHIP {g}"))?;
        }
        if nl.state == 1 {
            sock::connect_raw(fd, &addr(nl.dst_portid, nl.dst_group))
                .with_context(|| format!("Cannot connect to port id {}", nl.dst_portid))?;
        }
        super::inet::apply_sk_opts(fd, &nl.opts)?;
        super::set_status_flags(fd, nl.flags, nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok(s)
    };
    run().with_context(|| format!("{what} (file id {})", fe.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_nl_roundtrip() {
        assert_eq!(parse_addr(&addr(4242, 0x11)), Some((4242, 0x11)));
        assert_eq!(parse_addr(&[0u8; 12]), None);
        assert_eq!(parse_addr(&addr(1, 2)[..8]), None);
    }

    #[test]
    fn membership_bits_are_groups() {
        assert_eq!(groups_of(&[0x11, 0x1]), vec![1, 5, 33]);
        assert!(groups_of(&[]).is_empty());
    }
}
