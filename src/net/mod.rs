//! Network sockets other than unix sockets: inet (TCP, UDP) with
//! established TCP connections by TCP_REPAIR, netlink and packet sockets, and the
//! network lock that keeps TCP peers waiting (not reset) between dump and
//! restore.
//!
//! The file layer hands every socket fd to [`dump`] first; unix sockets
//! go back to `files::unix`. [`DumpNet`] is the dump-wide state: the
//! inet_diag cache, the sockets put into repair mode and the lock tables.
//! It undoes both (repair off, lock lifted) unless the dump ends with the
//! tree killed ([`DumpNet::finish`]), in which case the repaired sockets
//! close silently and the locks stay until the restore lifts them
//! ([`RestoreLock`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context, Result};

use crate::files::{FdCtx, FileTable};
use crate::image::{pb, ImageDir};
use crate::sys::fdops;

pub mod diag;
pub mod inet;
pub mod lock;
pub mod netlink;
pub mod ns;
pub mod packet;
pub mod rule;
pub mod tcp;
pub mod udpq;

pub use inet::FD_INETSK;
pub use netlink::FD_NETLINKSK;
pub use packet::FD_PACKETSK;

/// Dump-wide network state (see the module doc).
#[derive(Default)]
pub struct DumpNet {
    /// Dump established TCP connections (repair); else refuse them...
    pub tcp_established: bool,
    /// ...or record them to be restored closed.
    pub tcp_close: bool,
    diag: HashMap<(u8, u8), HashMap<u32, diag::InetDiag>>,
    /// Duplicates of sockets in repair mode.
    repaired: Vec<OwnedFd>,
    /// Locked connections: (nft table, local, peer).
    locks: Vec<(String, SocketAddr, SocketAddr)>,
}

impl DumpNet {
    pub fn new(tcp_established: bool, tcp_close: bool) -> DumpNet {
        let mut n = DumpNet::default();
        n.tcp_established = tcp_established;
        n.tcp_close = tcp_close;
        n
    }

    /// inet_diag's view of socket `ino` (one netlink dump per family and
    /// protocol, repeated once if the socket is newer than the cache).
    pub(crate) fn diag(&mut self, family: u8, proto: u8, ino: u32) -> Result<Option<diag::InetDiag>> {
        let key = (family, proto);
        if let Some(d) = self.diag.get(&key).and_then(|m| m.get(&ino)) {
            return Ok(Some(d.clone()));
        }
        let all = diag::dump_all(family, proto)?;
        let r = all.get(&ino).cloned();
        self.diag.insert(key, all);
        Ok(r)
    }

    /// Locks the connection, puts the socket into repair mode (kept until
    /// [`DumpNet::finish`]) and reads its stream.
    pub(crate) fn repair_and_dump(
        &mut self,
        dup: &OwnedFd,
        local: &SocketAddr,
        peer: &SocketAddr,
    ) -> Result<tcp::Stream> {
        let name = lock::table_name(local, peer);
        if !self.locks.iter().any(|(n, _, _)| *n == name) {
            self.locks.push((lock::lock(local, peer)?, *local, *peer));
        }
        tcp::repair(dup.as_fd(), true)?;
        self.repaired.push(dup.try_clone().context("dup of a repaired socket")?);
        tcp::dump(dup.as_fd())
    }

    /// The dump is complete. `killed`: the tree was killed, so the
    /// repaired sockets close now without a word to their peers, and the
    /// locks stay for the restore to lift. Otherwise (the tree runs on)
    /// repair goes off and the locks are lifted.
    pub fn finish(mut self, killed: bool) {
        if killed {
            self.repaired.clear();
            self.locks.clear();
        }
        // Drop undoes what is left.
    }
}

impl Drop for DumpNet {
    fn drop(&mut self) {
        for fd in self.repaired.drain(..) {
            if let Err(e) = tcp::repair(fd.as_fd(), false) {
                tracing::warn!("cannot take a socket out of repair mode: {e:#}");
            }
        }
        for (_, local, peer) in self.locks.drain(..) {
            lock::lift(&local, &peer);
        }
    }
}

/// Dumps a socket fd of any supported family: its file id and fd type.
pub(crate) fn dump(t: &mut FileTable, f: &FdCtx) -> Result<(u32, i32)> {
    let (pid, fd) = (f.pid, f.fd);
    let dup = t.dup_fd(pid, fd)?;
    let family = fdops::getsockopt_int(dup.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
    let typ = fdops::getsockopt_int(dup.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
    match family {
        libc::AF_UNIX => Ok((crate::files::unix::dump(t, f, dup, typ)?, crate::files::FD_UNIXSK)),
        libc::AF_INET | libc::AF_INET6 => Ok((inet::dump(t, f, dup, family, typ)?, FD_INETSK)),
        libc::AF_NETLINK => Ok((netlink::dump(t, f, dup, typ)?, FD_NETLINKSK)),
        libc::AF_PACKET => Ok((packet::dump(t, f, dup, typ)?, FD_PACKETSK)),
        _ => bail!(
            "pid {pid} fd {fd}: {} {} sockets are not supported ({})",
            family_name(family),
            type_name(typ),
            f.link
        ),
    }
}

fn type_name(t: i32) -> String {
    match t {
        libc::SOCK_STREAM => "stream".into(),
        libc::SOCK_DGRAM => "datagram".into(),
        libc::SOCK_SEQPACKET => "seqpacket".into(),
        libc::SOCK_RAW => "raw".into(),
        t => format!("type {t}"),
    }
}

fn family_name(f: i32) -> String {
    match f {
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        f => format!("family {f}"),
    }
}

/// Sets the file status flags of a restored socket to those of `flags`
/// (the image's) that are in `keep` (O_NONBLOCK, O_ASYNC...).
pub(crate) fn set_status_flags(fd: impl std::os::fd::AsRawFd, flags: u32, keep: nix::fcntl::OFlag) -> Result<()> {
    let fl = nix::fcntl::OFlag::from_bits_truncate(flags as i32) & keep;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).context("F_SETFL")?;
    Ok(())
}

/// Reads the tcp-stream image of every established connection in
/// files.img that has one (Stage Load), by socket inode.
pub fn load_streams(dir: &ImageDir, files: &HashMap<u32, pb::FileEntry>) -> Result<HashMap<u32, tcp::Stream>> {
    let mut out = HashMap::new();
    for fe in files.values() {
        let Some(isk) = &fe.isk else { continue };
        if !tcp::connected(isk.state) || isk.proto as i32 != libc::IPPROTO_TCP {
            continue;
        }
        let name = tcp::image_name(isk.ino);
        if !dir.exists(&name) {
            continue;
        }
        let bytes = dir.read_bytes(&name)?;
        let path = dir.path().join(&name).display().to_string();
        let mut st = tcp::decode(&path, &bytes)?;
        st.state = isk.state;
        out.insert(isk.ino, st);
    }
    Ok(out)
}

/// The locks of the connections a restore brings back, in the network
/// namespace the connections live in: their routing rules go at once
/// (the sockets about to be created need a route; the nftables table
/// keeps the peer out meanwhile), the tables when this is dropped (once
/// the tree runs, or when the restore fails).
pub struct RestoreLock {
    /// (nft table, one end, the other end) of each connection.
    locks: Vec<(String, SocketAddr, SocketAddr)>,
    /// The caller's namespace the tree joins (a container's external one,
    /// where the dump put the locks); None: the one we are in.
    ns: Option<std::fs::File>,
}

impl RestoreLock {
    /// The locks of the connections in `files`, their routing rules
    /// deleted in our namespace.
    pub fn of(files: &HashMap<u32, pb::FileEntry>) -> RestoreLock {
        let mut locks: Vec<(String, SocketAddr, SocketAddr)> = Vec::new();
        for fe in files.values() {
            let Some(isk) = &fe.isk else { continue };
            if !tcp::connected(isk.state) || isk.proto as i32 != libc::IPPROTO_TCP {
                continue;
            }
            if let Ok((l, Some(p))) = inet::addrs(isk) {
                let n = lock::table_name(&l, &p);
                if !locks.iter().any(|(x, _, _)| *x == n) {
                    locks.push((n, l, p));
                }
            }
        }
        let r = RestoreLock { locks, ns: None };
        r.open_routes();
        r
    }

    fn open_routes(&self) {
        for (_, l, p) in &self.locks {
            rule::remove(l, p);
        }
    }

    /// The tree joins the network namespace open at `fd` (CRIU's
    /// inherit_fd extRootNetNS): the locks are lifted there (the routing
    /// rules now).
    pub fn in_namespace(&mut self, fd: std::os::fd::RawFd) -> Result<()> {
        if self.locks.is_empty() {
            return Ok(());
        }
        let f = std::fs::File::open(format!("/proc/self/fd/{fd}"))
            .with_context(|| format!("Cannot reopen the network namespace at fd {fd}"))?;
        {
            let _inside = ns::Enter::new(&f)?;
            self.open_routes();
        }
        self.ns = Some(f);
        Ok(())
    }
}

impl Drop for RestoreLock {
    fn drop(&mut self) {
        let _inside = match &self.ns {
            Some(f) => match ns::Enter::new(f) {
                Ok(e) => Some(e),
                Err(e) => {
                    let t: Vec<&String> = self.locks.iter().map(|(t, _, _)| t).collect();
                    tracing::warn!("cannot lift the network locks {t:?}: {e:#}");
                    return;
                }
            },
            None => None,
        };
        for (t, _, _) in &self.locks {
            lock::unlock(t);
        }
    }
}

/// At the end of a task's restore: the established connections it is the
/// first user of (in tree order) leave repair mode and send their unsent
/// bytes.
pub fn finish_repair(plan: &crate::restore::Plan, pid: i32) -> Result<()> {
    let Some(t) = plan.tasks.iter().find(|t| t.pid == pid) else {
        return Ok(());
    };
    if plan.fx.tcp_close {
        return Ok(());
    }
    let mut done = Vec::new();
    for f in &t.fds {
        if f.r#type != FD_INETSK || done.contains(&f.id) {
            continue;
        }
        let Some(isk) = plan.files.get(&f.id).and_then(|fe| fe.isk.as_ref()) else {
            continue;
        };
        let Some(st) = plan.fx.tcp.get(&isk.ino) else { continue };
        if !tcp::connected(isk.state) {
            continue;
        }
        let first = plan.tasks.iter().find(|x| x.fds.iter().any(|g| g.id == f.id));
        if first.map(|x| x.pid) != Some(pid) {
            continue;
        }
        done.push(f.id);
        let fd = crate::sys::rawfd::borrow(f.fd as i32);
        tcp::finish(fd, st).with_context(|| format!("pid {pid} fd {}: {}", f.fd, inet::describe_entry(isk)))?;
    }
    Ok(())
}
