//! Packet sockets (AF_PACKET, as capture tools use them):
//! `packet_sock_entry` in files.img.
//!
//! Dump: type by SO_TYPE, protocol and bound interface by getsockname
//! (sockaddr_ll; the interface's name is kept too), the SOL_PACKET options
//! getsockopt tells (version, reserve, aux data, orig dev, vnet header,
//! loss, timestamp), the socket-level options. Fanout groups are refused.
//! Restore: socket, the options, bind to the interface found again by
//! name (a missing interface is an error naming it), flags. Multicast
//! memberships and mmap rings (which only packet_diag would show) are
//! not kept.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{bail, Context, Result};

use crate::files::{fown0, FdCtx, FileTable};
use crate::image::pb;
use crate::sys::{fdops, sock};

pub const FD_PACKETSK: i32 = 10;
const SOL_PACKET: i32 = 263;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_FANOUT: i32 = 18;

/// (protocol in host order, ifindex) of a sockaddr_ll.
pub fn parse_ll(b: &[u8]) -> Option<(u16, i32)> {
    if b.len() < 8 || u16::from_ne_bytes([b[0], b[1]]) != libc::AF_PACKET as u16 {
        return None;
    }
    Some((
        u16::from_be_bytes([b[2], b[3]]),
        i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    ))
}

/// The bytes of a sockaddr_ll for bind.
pub fn ll(protocol: u16, ifindex: i32) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[0..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
    v[2..4].copy_from_slice(&protocol.to_be_bytes());
    v[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    v
}

/// The name of interface `index`, from /proc/net/dev's names (this
/// network namespace) and their indexes.
fn ifname(index: i32) -> Option<String> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").ok()?;
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .find(|n| sock::if_index(n) == Some(index as u32))
}

fn int(fd: BorrowedFd, name: i32, what: &str) -> Result<i32> {
    fdops::getsockopt_int(fd, SOL_PACKET, name).with_context(|| format!("getsockopt {what}"))
}

/// Dumps a packet socket; returns its file id.
pub(crate) fn dump(t: &mut FileTable, f: &FdCtx, dup: OwnedFd, typ: i32) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let d = dup.as_fd();
    let what = || format!("pid {pid} fd {fd} (packet socket)");
    let (protocol, ifindex) = sock::name_raw(d, false)
        .ok()
        .as_deref()
        .and_then(parse_ll)
        .with_context(what)?;
    if int(d, PACKET_FANOUT, "PACKET_FANOUT").with_context(what)? != 0 {
        bail!("{}: fanout groups are not supported", what());
    }
    let name = if ifindex > 0 {
        Some(ifname(ifindex).with_context(|| format!("{}: no interface has index {ifindex}", what()))?)
    } else {
        None
    };
    let e = pb::PacketSockEntry {
        id: 0,
        r#type: typ as u32,
        protocol: u32::from(protocol),
        flags: f.flags,
        ifindex: ifindex.max(0) as u32,
        fown: fown0(),
        opts: super::inet::sk_opts(d, false).with_context(what)?,
        version: int(d, PACKET_VERSION, "PACKET_VERSION").with_context(what)? as u32,
        reserve: int(d, PACKET_RESERVE, "PACKET_RESERVE").with_context(what)? as u32,
        aux_data: int(d, PACKET_AUXDATA, "PACKET_AUXDATA").with_context(what)? != 0,
        orig_dev: int(d, PACKET_ORIGDEV, "PACKET_ORIGDEV").with_context(what)? != 0,
        vnet_hdr: int(d, PACKET_VNET_HDR, "PACKET_VNET_HDR").with_context(what)? != 0,
        loss: int(d, PACKET_LOSS, "PACKET_LOSS").with_context(what)? != 0,
        timestamp: int(d, PACKET_TIMESTAMP, "PACKET_TIMESTAMP").with_context(what)? as u32,
        copy_thresh: 0,
        mclist: vec![],
        fanout: None,
        rx_ring: None,
        tx_ring: None,
        ns_id: None,
        cryo_ifname: name,
    };
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_PACKETSK,
        id,
        psk: Some(pb::PacketSockEntry { id, ..e }),
        ..Default::default()
    });
    Ok(id)
}

/// Stage Load check.
pub fn check(fe: &pb::FileEntry) -> Result<()> {
    let p = fe
        .psk
        .as_ref()
        .with_context(|| format!("files.img: file id {} has no packet socket entry", fe.id))?;
    if p.rx_ring.is_some() || p.tx_ring.is_some() || p.fanout.is_some() {
        bail!(
            "files.img: packet socket file id {} has rings or a fanout group; not supported",
            fe.id
        );
    }
    Ok(())
}

fn set(fd: BorrowedFd, name: i32, v: i32, what: &str) -> Result<()> {
    fdops::setsockopt_int(fd, SOL_PACKET, name, v).with_context(|| format!("setsockopt {what}"))
}

/// Creates the socket of one entry.
pub fn create(fe: &pb::FileEntry) -> Result<OwnedFd> {
    let p = fe.psk.as_ref().context("no packet socket entry")?;
    let what = format!(
        "packet socket (protocol {:#06x}, interface {})",
        p.protocol,
        p.cryo_ifname.as_deref().unwrap_or("none")
    );
    let run = || -> Result<OwnedFd> {
        let proto = (p.protocol as u16).to_be();
        let s = sock::socket(libc::AF_PACKET, p.r#type as i32, i32::from(proto)).context("socket()")?;
        let fd = s.as_fd();
        if p.version != 0 {
            set(fd, PACKET_VERSION, p.version as i32, "PACKET_VERSION")?;
        }
        if p.reserve != 0 {
            set(fd, PACKET_RESERVE, p.reserve as i32, "PACKET_RESERVE")?;
        }
        for (on, name, w) in [
            (p.aux_data, PACKET_AUXDATA, "PACKET_AUXDATA"),
            (p.orig_dev, PACKET_ORIGDEV, "PACKET_ORIGDEV"),
            (p.vnet_hdr, PACKET_VNET_HDR, "PACKET_VNET_HDR"),
            (p.loss, PACKET_LOSS, "PACKET_LOSS"),
        ] {
            if on {
                set(fd, name, 1, w)?;
            }
        }
        if p.timestamp != 0 {
            set(fd, PACKET_TIMESTAMP, p.timestamp as i32, "PACKET_TIMESTAMP")?;
        }
        if p.ifindex != 0 {
            let index = match &p.cryo_ifname {
                Some(n) => sock::if_index(n).with_context(|| format!("interface {n} does not exist here"))? as i32,
                None => p.ifindex as i32,
            };
            sock::bind_raw(fd, &ll(p.protocol as u16, index)).context("bind")?;
        }
        super::inet::apply_sk_opts(fd, &p.opts)?;
        super::set_status_flags(fd, p.flags, nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok(s)
    };
    run().with_context(|| format!("{what} (file id {})", fe.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_ll_roundtrip() {
        assert_eq!(parse_ll(&ll(0x0003, 7)), Some((3, 7)));
        assert_eq!(parse_ll(&ll(0x0800, 1)), Some((0x800, 1)));
        assert_eq!(parse_ll(&[0u8; 20]), None);
    }
}
