//! Unix sockets.
//!
//! Dump: the socket's state, type, bound name, peer inode and pending
//! connections come from NETLINK_SOCK_DIAG (one dump of every AF_UNIX
//! socket, cached per dump); options and the receive queue come from a
//! pidfd_getfd duplicate: with SO_PEEK_OFF set to 0, `recvmsg(MSG_PEEK)`
//! walks the queue without consuming it (each datagram keeps its
//! boundary), then the old peek offset is put back. Each socket is a
//! `unix_sk_entry` in files.img; its queued messages are
//! `sk_packet_entry`s in sk-queues.img (`id_for` = the socket's file id).
//!
//! Restore: sockets linked by a connection (a socketpair, a connected
//! pair, a datagram socket connected to a bound one, a client waiting in a
//! listener's backlog) form one group, created together: mutual pairs with
//! socketpair, names bound (stale socket files unlinked first), listeners
//! listening, one-way connections and pending clients connected by name;
//! then the queues are refilled from the peer (or sent to the bound name
//! from a scratch socket), shutdowns and options applied, flags set. A
//! stream socket whose peer had closed is rebuilt from a socketpair whose
//! other end is closed after the refill (data, then EOF).
//!
//! Limits: an accepted socket (named like a listener of the dump: it
//! shares the listener's name) comes back unnamed; a connected socket that
//! bound its own name gets it back; descriptors in flight
//! (SCM_RIGHTS) are kept: the peek receives copies, each is dumped like
//! an fd (or found to be a description the tree has open, with kcmp) and
//! listed in the message's `scm`; at restore they are created before the
//! socket's group and sent again with the refill. Sockets in flight and a
//! peer outside the dumped tree are refused at dump.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{self as sock, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use super::{fown0, FdCtx, FileTable, FD_UNIXSK};
use crate::image::pb;
use crate::sys::fdops;

// ---- sock_diag --------------------------------------------------------------

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_ICONS: u32 = 0x8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// TCP-style socket states that sock_diag reports for unix sockets.
pub const ST_ESTABLISHED: u32 = 1;
pub const ST_CLOSE: u32 = 7;
pub const ST_LISTEN: u32 = 10;

/// What sock_diag says about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diag {
    pub ino: u32,
    pub typ: u32,
    pub state: u32,
    /// Bound name (sun_path bytes; abstract names start with NUL).
    pub name: Vec<u8>,
    /// (inode, device) of the socket file of a path name.
    pub vfs: Option<(u32, u32)>,
    /// Peer inode, 0 for none.
    pub peer: u32,
    /// Peer inodes of the connections waiting in a listener's backlog.
    pub icons: Vec<u32>,
    /// (receive queue, write queue): for a listener (backlog, max backlog).
    pub rqlen: (u32, u32),
    /// sk_shutdown bits (1 = receive, 2 = send).
    pub shutdown: u32,
}

/// The netlink request for a dump of every unix socket.
pub fn diag_request(seq: u32) -> Vec<u8> {
    let show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // unix_diag_req
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
}
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]))
}

/// Parses one datagram of a sock_diag reply: the sockets in it, and
/// whether the dump is complete (NLMSG_DONE). An NLMSG_ERROR is an Err
/// with the errno.
pub fn parse_diag(buf: &[u8]) -> std::result::Result<(Vec<Diag>, bool), String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32_at(buf, off).unwrap_or(0) as usize;
        let ty = u16_at(buf, off + 4).unwrap_or(0);
        if len < 16 || off + len > buf.len() {
            return Err(format!("bad netlink message length {len} at {off}"));
        }
        match ty {
            NLMSG_DONE => return Ok((out, true)),
            NLMSG_ERROR => {
                let e = u32_at(buf, off + 16).map(|e| -(e as i32)).unwrap_or(0);
                return Err(format!("sock_diag error {e}"));
            }
            _ => {}
        }
        let m = &buf[off + 16..off + len];
        if m.len() < 16 {
            return Err(format!("short unix_diag_msg at {off}"));
        }
        let mut d = Diag {
            typ: u32::from(m[1]),
            state: u32::from(m[2]),
            ino: u32_at(m, 4).unwrap_or(0),
            ..Default::default()
        };
        let mut a = 16;
        while a + 4 <= m.len() {
            let alen = u16_at(m, a).unwrap_or(0) as usize;
            let aty = u16_at(m, a + 2).unwrap_or(0);
            if alen < 4 || a + alen > m.len() {
                return Err(format!("bad attribute length {alen} in the message at {off}"));
            }
            let v = &m[a + 4..a + alen];
            match aty {
                UNIX_DIAG_NAME => {
                    d.name = v.to_vec();
                    // A path name may come with its terminating NUL(s).
                    if d.name.first().is_some_and(|&c| c != 0) {
                        while d.name.last() == Some(&0) {
                            d.name.pop();
                        }
                    }
                }
                UNIX_DIAG_VFS if v.len() >= 8 => d.vfs = Some((u32_at(v, 0).unwrap_or(0), u32_at(v, 4).unwrap_or(0))),
                UNIX_DIAG_PEER => d.peer = u32_at(v, 0).unwrap_or(0),
                UNIX_DIAG_ICONS => {
                    d.icons = v
                        .chunks_exact(4)
                        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                UNIX_DIAG_RQLEN if v.len() >= 8 => d.rqlen = (u32_at(v, 0).unwrap_or(0), u32_at(v, 4).unwrap_or(0)),
                UNIX_DIAG_SHUTDOWN if !v.is_empty() => d.shutdown = u32::from(v[0]),
                _ => {}
            }
            a += (alen + 3) & !3;
        }
        out.push(d);
        off += (len + 3) & !3;
    }
    Ok((out, false))
}

/// Every unix socket of this network namespace, by inode.
fn diag_all() -> Result<HashMap<u32, Diag>> {
    crate::net::diag::query("sock_diag", &diag_request(1), parse_diag, |d| d.ino)
}

// ---- dump ---------------------------------------------------------------------

/// What the dump remembers of a unix socket to check its peer at the end.
pub(crate) struct Dumped {
    pub pid: i32,
    pub fd: i32,
    pub diag: Diag,
    /// The peer recorded in the image (a waiting client's listener).
    pub peer: u32,
}

fn sock_opts(fd: BorrowedFd) -> Result<pb::SkOptsEntry> {
    let int = |name| fdops::getsockopt_int(fd, libc::SOL_SOCKET, name).with_context(|| format!("getsockopt {name}"));
    let (snd_s, snd_u) = fdops::getsockopt_timeval(fd, libc::SO_SNDTIMEO).context("SO_SNDTIMEO")?;
    let (rcv_s, rcv_u) = fdops::getsockopt_timeval(fd, libc::SO_RCVTIMEO).context("SO_RCVTIMEO")?;
    Ok(pb::SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd_s as u64,
        so_snd_tmo_usec: snd_u as u64,
        so_rcv_tmo_sec: rcv_s as u64,
        so_rcv_tmo_usec: rcv_u as u64,
        so_passcred: Some(int(libc::SO_PASSCRED)? != 0),
        so_passsec: Some(int(libc::SO_PASSSEC)? != 0),
        so_priority: Some(int(libc::SO_PRIORITY)? as u32),
        so_rcvlowat: Some(int(libc::SO_RCVLOWAT)? as u32),
        ..Default::default()
    })
}

/// One queued message: its bytes and the descriptors in flight with it
/// (copies installed in cryo by the peek).
pub(crate) type Queued = (Vec<u8>, Vec<OwnedFd>);

/// The receive queue of a socket, message by message, not consumed.
fn peek_queue(fd: BorrowedFd, typ: u32) -> Result<Vec<Queued>> {
    let old = fdops::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).context("SO_PEEK_OFF")?;
    fdops::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).context("SO_PEEK_OFF")?;
    let res = (|| -> Result<Vec<Queued>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // SCM_MAX_FD (253) descriptors per message at most.
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 253]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let r = sock::recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e).context("recvmsg(MSG_PEEK)"),
            };
            let mut rights = Vec::new();
            if let Ok(cms) = msg.cmsgs() {
                for c in cms {
                    if let sock::ControlMessageOwned::ScmRights(fds) = c {
                        rights.extend(fds.into_iter().map(crate::sys::rawfd::own));
                    }
                }
            }
            if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                bail!("a queued message carries control data that does not fit; not supported");
            }
            let n = msg.bytes;
            if n == 0 && rights.is_empty() {
                // A zero-length datagram, or the end of a stream.
                if typ == libc::SOCK_STREAM as u32 {
                    break;
                }
                out.push((Vec::new(), rights));
                continue;
            }
            if n > buf.len() {
                bail!("a queued message of {n} bytes is too big");
            }
            out.push((buf[..n].to_vec(), rights));
        }
        Ok(out)
    })();
    let _ = fdops::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    res
}

impl FileTable {
    /// A descriptor in flight in a socket's queue, received by the peek as
    /// `fd` in cryo: the file id of its description (one the tree has open
    /// too, found with kcmp, or a new entry). Kept open until the end of
    /// the dump so that later kcmp comparisons still see it.
    pub(crate) fn dump_inflight(&mut self, fd: OwnedFd) -> Result<u32> {
        use std::os::unix::fs::MetadataExt;
        let me = std::process::id() as i32;
        let n = fd.as_raw_fd();
        let lpath = format!("/proc/{me}/fd/{n}");
        let link = std::fs::read_link(&lpath)
            .with_context(|| format!("Cannot read {lpath}"))?
            .to_string_lossy()
            .into_owned();
        let md = std::fs::metadata(&lpath).ok();
        let info = crate::proc::fdinfo::read(me as u32, n)?;
        let kind = super::classify(&link, md.as_ref(), info.flags);
        if kind == super::FdKind::Socket {
            bail!("a socket in flight ({link}) is not supported");
        }
        let (dev, ino) = md.as_ref().map(|m| (m.dev(), m.ino())).unwrap_or((0, 0));
        for &(p2, fd2, d2, i2, id2) in &self.seen {
            if d2 == dev
                && i2 == ino
                && crate::sys::clone::kcmp(
                    nix::unistd::Pid::from_raw(me),
                    nix::unistd::Pid::from_raw(p2),
                    crate::sys::clone::kcmp_type::FILE,
                    n as u64,
                    fd2 as u64,
                )
                .map(|r| r == 0)
                .unwrap_or(false)
            {
                return Ok(id2);
            }
        }
        let ctx = FdCtx {
            pid: me,
            fd: n,
            link: &link,
            md: md.as_ref(),
            info: &info,
            flags: info.flags & !(libc::O_CLOEXEC as u32),
        };
        let stat = crate::proc::stat::read(me as u32)?;
        let (id, ty) = self.dump_one(&ctx, &kind, false, &stat)?;
        self.types.insert(id, ty);
        self.seen.push((me, n, dev, ino, id));
        self.inflight.push(fd);
        Ok(id)
    }
}

/// Dumps a unix socket; `dup` is our copy of it, `typ` its SO_TYPE
/// (net::dump dispatches on the family).
pub(crate) fn dump(t: &mut FileTable, f: &FdCtx, dup: OwnedFd, typ: i32) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let ino = f.md.map(|m| std::os::unix::fs::MetadataExt::ino(m) as u32).unwrap_or(0);
    if t.unix_diag.is_none() {
        t.unix_diag = Some(diag_all()?);
    }
    let diag = match t.unix_diag.as_ref().and_then(|m| m.get(&ino)) {
        Some(d) => d.clone(),
        None => {
            // Created after the cached dump: ask again.
            t.unix_diag = Some(diag_all()?);
            t.unix_diag
                .as_ref()
                .and_then(|m| m.get(&ino))
                .cloned()
                .with_context(|| format!("pid {pid} fd {fd}: sock_diag does not know socket {ino}"))?
        }
    };
    if diag.typ != typ as u32 {
        bail!(
            "pid {pid} fd {fd}: sock_diag type {} differs from SO_TYPE {typ}",
            diag.typ
        );
    }
    let opts = sock_opts(dup.as_fd()).with_context(|| format!("pid {pid} fd {fd}: socket options"))?;
    let queue = if diag.state == ST_LISTEN {
        Vec::new()
    } else {
        peek_queue(dup.as_fd(), diag.typ)
            .with_context(|| format!("pid {pid} fd {fd}: cannot read the socket's queue"))?
    };
    // A client waiting in a listener's backlog: its peer becomes the
    // listener (restore connects it there), as CRIU records it.
    let mut peer = diag.peer;
    if peer == 0 && diag.state == ST_ESTABLISHED && diag.typ != libc::SOCK_DGRAM as u32 {
        if let Some(l) = t
            .unix_diag
            .as_ref()
            .and_then(|m| m.values().find(|l| l.state == ST_LISTEN && l.icons.contains(&ino)))
        {
            peer = l.ino;
        }
    }
    let id = t.new_id();
    let (name_dir, file_perms, deleted) = bound_file(pid, &diag);
    t.entries.push(pb::FileEntry {
        r#type: FD_UNIXSK,
        id,
        usk: Some(pb::UnixSkEntry {
            id,
            ino,
            r#type: diag.typ,
            state: diag.state,
            flags: f.flags,
            uflags: 0,
            backlog: if diag.state == ST_LISTEN { diag.rqlen.1 } else { 0 },
            peer,
            fown: fown0(),
            opts,
            name: diag.name.clone(),
            shutdown: (diag.shutdown != 0).then_some(diag.shutdown as i32),
            file_perms,
            name_dir,
            deleted: deleted.then_some(true),
            ns_id: None,
            mnt_id: None,
        }),
        ..Default::default()
    });
    for (m, fds) in queue {
        let mut rights = Vec::with_capacity(fds.len());
        for f in fds {
            rights.push(
                t.dump_inflight(f)
                    .with_context(|| format!("pid {pid} fd {fd}: a descriptor queued in the socket (SCM_RIGHTS)"))?,
            );
        }
        t.sk_queues.push((
            pb::SkPacketEntry {
                id_for: id,
                length: m.len() as u32,
                addr: None,
                scm: if rights.is_empty() {
                    vec![]
                } else {
                    vec![pb::ScmEntry {
                        r#type: libc::SCM_RIGHTS as u32,
                        rights,
                    }]
                },
            },
            m,
        ));
    }
    t.unix_dumped.push(Dumped { pid, fd, diag, peer });
    Ok(id)
}

/// For a socket bound to a path: the directory a relative name is
/// relative to (the task's cwd), the socket file's permissions, and
/// whether the file is gone (or replaced).
fn bound_file(pid: i32, d: &Diag) -> (Option<String>, Option<pb::FilePermsEntry>, bool) {
    if d.name.is_empty() || d.name[0] == 0 {
        return (None, None, false);
    }
    let name = std::ffi::OsStr::from_bytes(&d.name);
    let rel = d.name[0] != b'/';
    let dir = if rel {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|p| p.display().to_string())
    } else {
        None
    };
    let full = match &dir {
        Some(dir) => std::path::Path::new(dir).join(name),
        None => std::path::PathBuf::from(name),
    };
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(&full) {
        Ok(m) if Some(m.ino() as u32) == d.vfs.map(|v| v.0) => (
            dir,
            Some(pb::FilePermsEntry {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
            }),
            false,
        ),
        _ => (dir, None, true),
    }
}

/// After every task: each connected socket's peer must be in the dump
/// (as a socket, or as the listener a waiting client is queued on).
pub(crate) fn check_peers(t: &FileTable) -> Result<()> {
    let dumped: HashMap<u32, &Dumped> = t.unix_dumped.iter().map(|d| (d.diag.ino, d)).collect();
    for d in &t.unix_dumped {
        let (pid, fd, g) = (d.pid, d.fd, &d.diag);
        if d.peer != 0 && !dumped.contains_key(&d.peer) {
            bail!(
                "pid {pid} fd {fd}: unix socket {} is connected to socket {}, which is outside the dumped tree",
                g.ino,
                d.peer
            );
        }
        if g.state == ST_LISTEN {
            for c in &g.icons {
                if !dumped.contains_key(c) {
                    bail!(
                        "pid {pid} fd {fd}: a connection from outside the dumped tree waits on listening socket {}",
                        g.ino
                    );
                }
            }
        }
        if d.peer == 0 && g.state == ST_ESTABLISHED && g.typ != libc::SOCK_DGRAM as u32 && g.shutdown != 3 {
            bail!(
                "pid {pid} fd {fd}: unix socket {} is connected to an unknown peer",
                g.ino
            );
        }
        if d.peer != g.peer && g.rqlen.1 != 0 {
            bail!(
                "pid {pid} fd {fd}: unix socket {} waits in the backlog of socket {} with data sent; not supported",
                g.ino,
                d.peer
            );
        }
    }
    Ok(())
}

// ---- restore ------------------------------------------------------------------

/// The unix entry of file id `id`.
fn usk(files: &HashMap<u32, pb::FileEntry>, id: u32) -> Result<&pb::UnixSkEntry> {
    files[&id]
        .usk
        .as_ref()
        .with_context(|| format!("file id {id} has no unix socket entry"))
}

/// Which sockets must be created together: for each unix file id, the
/// smallest inode of its connected component (linked by `peer`; a client
/// waiting in a listener's backlog has the listener as its peer).
pub(crate) fn components(files: &HashMap<u32, pb::FileEntry>, ids: &[u32]) -> HashMap<u32, u32> {
    let by_ino: HashMap<u32, u32> = ids
        .iter()
        .filter_map(|&id| Some((files[&id].usk.as_ref()?.ino, id)))
        .collect();
    let mut parent: BTreeMap<u32, u32> = by_ino.keys().map(|&i| (i, i)).collect();
    fn find(p: &mut BTreeMap<u32, u32>, mut x: u32) -> u32 {
        while p[&x] != x {
            let up = p[&p[&x]];
            p.insert(x, up);
            x = up;
        }
        x
    }
    for &id in ids {
        let Some(u) = files[&id].usk.as_ref() else { continue };
        if u.peer != 0 && by_ino.contains_key(&u.peer) {
            let (ra, rb) = (find(&mut parent, u.ino), find(&mut parent, u.peer));
            if ra != rb {
                parent.insert(ra.max(rb), ra.min(rb));
            }
        }
    }
    by_ino.iter().map(|(&ino, &id)| (id, find(&mut parent, ino))).collect()
}

fn unix_addr(name: &[u8]) -> Result<UnixAddr> {
    if name.first() == Some(&0) {
        UnixAddr::new_abstract(&name[1..]).with_context(|| format!("abstract name {}", show_name(name)))
    } else {
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        UnixAddr::new(std::ffi::OsStr::from_bytes(&name[..end]))
            .with_context(|| format!("socket path {}", show_name(name)))
    }
}

fn show_name(name: &[u8]) -> String {
    if name.first() == Some(&0) {
        format!("@{}", String::from_utf8_lossy(&name[1..]))
    } else {
        String::from_utf8_lossy(name).into_owned()
    }
}

fn sock_type(t: u32) -> Result<SockType> {
    Ok(match t as i32 {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Datagram,
        libc::SOCK_SEQPACKET => SockType::SeqPacket,
        t => bail!("unix socket type {t} cannot be restored"),
    })
}

/// Runs `f` with the working directory switched to `dir` (for relative
/// socket names), switching back after.
fn in_dir<T>(dir: Option<&str>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(dir) = dir else { return f() };
    let back = nix::fcntl::open(
        ".",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .context("open of the working directory")?;
    let back = crate::sys::rawfd::own(back);
    nix::unistd::chdir(dir).with_context(|| format!("Cannot enter {dir} to bind a socket"))?;
    let r = f();
    nix::unistd::fchdir(back.as_raw_fd()).context("fchdir back")?;
    r
}

fn bind_name(fd: &OwnedFd, u: &pb::UnixSkEntry) -> Result<()> {
    let shown = show_name(&u.name);
    in_dir(u.name_dir.as_deref(), || {
        if u.name[0] != 0 {
            // The file of the dumped socket is still there: remove it.
            let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&u.name));
            if let Ok(m) = std::fs::symlink_metadata(p) {
                use std::os::unix::fs::FileTypeExt;
                if m.file_type().is_socket() {
                    std::fs::remove_file(p).with_context(|| format!("Cannot remove the stale socket file {shown}"))?;
                }
            }
        }
        sock::bind(fd.as_raw_fd(), &unix_addr(&u.name)?).with_context(|| format!("Cannot bind a socket to {shown}"))?;
        if u.name[0] != 0 {
            let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&u.name));
            if let Some(fp) = &u.file_perms {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(fp.mode & 0o7777));
                let _ = std::os::unix::fs::lchown(p, Some(fp.uid), Some(fp.gid));
            }
            if u.deleted == Some(true) {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    })
}

/// Sends one message with descriptors in flight (SCM_RIGHTS) attached.
fn send_rights(fd: BorrowedFd, data: &[u8], fds: &[std::os::fd::RawFd], stream: bool) -> Result<()> {
    let iov = [std::io::IoSlice::new(data)];
    let cmsg = [sock::ControlMessage::ScmRights(fds)];
    let n = sock::sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_DONTWAIT, None)
        .context("sendmsg with SCM_RIGHTS")?;
    if n < data.len() {
        if !stream {
            bail!("sent {n} of a {}-byte message", data.len());
        }
        send_all(fd, &data[n..], true)?;
    }
    Ok(())
}

fn send_all(fd: BorrowedFd, data: &[u8], stream: bool) -> Result<()> {
    if !stream {
        let n = sock::send(fd.as_raw_fd(), data, MsgFlags::MSG_DONTWAIT).context("send of a queued message")?;
        if n != data.len() {
            bail!("sent {n} of a {}-byte message", data.len());
        }
        return Ok(());
    }
    let mut at = 0;
    while at < data.len() {
        at += sock::send(fd.as_raw_fd(), &data[at..], MsgFlags::MSG_DONTWAIT).context("send of queued data")?;
    }
    Ok(())
}

/// Sets the recorded options where they differ from a fresh socket's.
fn apply_opts(fd: BorrowedFd, o: &pb::SkOptsEntry) -> Result<()> {
    let set = |name, v: i32| {
        fdops::setsockopt_int(fd, libc::SOL_SOCKET, name, v).with_context(|| format!("setsockopt {name}"))
    };
    let get = |name| fdops::getsockopt_int(fd, libc::SOL_SOCKET, name).unwrap_or(-1);
    // The kernel doubles what is set; the image holds the doubled value.
    if get(libc::SO_SNDBUF) != o.so_sndbuf as i32 {
        set(libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32)?;
    }
    if get(libc::SO_RCVBUF) != o.so_rcvbuf as i32 {
        set(libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32)?;
    }
    if o.so_snd_tmo_sec != 0 || o.so_snd_tmo_usec != 0 {
        fdops::setsockopt_timeval(fd, libc::SO_SNDTIMEO, o.so_snd_tmo_sec as i64, o.so_snd_tmo_usec as i64)
            .context("SO_SNDTIMEO")?;
    }
    if o.so_rcv_tmo_sec != 0 || o.so_rcv_tmo_usec != 0 {
        fdops::setsockopt_timeval(fd, libc::SO_RCVTIMEO, o.so_rcv_tmo_sec as i64, o.so_rcv_tmo_usec as i64)
            .context("SO_RCVTIMEO")?;
    }
    for (name, v) in [(libc::SO_PASSCRED, o.so_passcred), (libc::SO_PASSSEC, o.so_passsec)] {
        if v == Some(true) {
            set(name, 1)?;
        }
    }
    if let Some(p) = o.so_priority.filter(|&p| p != 0) {
        set(libc::SO_PRIORITY, p as i32)?;
    }
    if let Some(l) = o.so_rcvlowat.filter(|&l| l > 1) {
        set(libc::SO_RCVLOWAT, l as i32)?;
    }
    Ok(())
}

/// Creates one connected component of unix sockets (see the module doc).
/// `queues`: queued messages by file id.
pub(crate) fn create_group(
    files: &HashMap<u32, pb::FileEntry>,
    ids: &[u32],
    queues: &HashMap<u32, Vec<Vec<u8>>>,
    rights: &HashMap<u32, HashMap<usize, Vec<u32>>>,
    slot_of: impl Fn(u32) -> Option<std::os::fd::RawFd>,
) -> Result<Vec<(u32, OwnedFd)>> {
    let mut ents: Vec<(u32, &pb::UnixSkEntry)> = Vec::new();
    for &id in ids {
        ents.push((id, usk(files, id)?));
    }
    let by_ino: HashMap<u32, (u32, &pb::UnixSkEntry)> = ents.iter().map(|&(id, u)| (u.ino, (id, u))).collect();
    for (_, u) in &ents {
        if u.peer != 0 && !by_ino.contains_key(&u.peer) {
            bail!(
                "unix socket {} is connected to socket {}, which is not in the images",
                u.ino,
                u.peer
            );
        }
    }
    let mut fds: HashMap<u32, OwnedFd> = HashMap::new();
    // Ends of socketpairs that stand in for a closed peer.
    let mut ghosts: HashMap<u32, OwnedFd> = HashMap::new();
    let stream_like = |u: &pb::UnixSkEntry| u.r#type != libc::SOCK_DGRAM as u32;
    let mutual = |u: &pb::UnixSkEntry| by_ino.get(&u.peer).is_some_and(|(_, p)| p.peer == u.ino);

    // 1. Create: socketpairs for mutual pairs and closed-peer streams,
    //    plain sockets for the rest.
    for &(id, u) in &ents {
        if fds.contains_key(&id) {
            continue;
        }
        let ty = sock_type(u.r#type)?;
        if mutual(u) {
            let (pid, _) = by_ino[&u.peer];
            let (a, b) =
                sock::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC).context("socketpair")?;
            fds.insert(id, a);
            fds.insert(pid, b);
        } else if u.peer == 0 && stream_like(u) && u.state == ST_ESTABLISHED {
            let (a, b) =
                sock::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC).context("socketpair")?;
            fds.insert(id, a);
            ghosts.insert(id, b);
        } else {
            let s = sock::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None).context("socket")?;
            fds.insert(id, s);
        }
    }
    // 2. Names. A connected stream socket named like a listener of the
    //    dump was accepted from it (it shares the listener's name): not
    //    rebound. Any other connected one bound its own name before
    //    connecting: bound again (best effort: the socketpair is connected
    //    already).
    let listener_named = |u: &pb::UnixSkEntry| {
        files
            .values()
            .filter_map(|f| f.usk.as_ref())
            .any(|x| x.state == ST_LISTEN && x.name == u.name)
    };
    for &(id, u) in &ents {
        let connected_stream = stream_like(u) && u.state == ST_ESTABLISHED;
        if u.name.is_empty() {
            continue;
        }
        if !connected_stream {
            bind_name(&fds[&id], u)?;
        } else if !listener_named(u) {
            if let Err(e) = bind_name(&fds[&id], u) {
                tracing::warn!("unix socket {}: its own name is not kept: {e:#}", u.ino);
            }
        }
    }
    // 3. Listeners.
    for &(id, u) in &ents {
        if u.state == ST_LISTEN {
            let backlog = sock::Backlog::new(u.backlog.max(1) as i32).unwrap_or(sock::Backlog::MAXCONN);
            sock::listen(&fds[&id], backlog).with_context(|| format!("Cannot listen on {}", show_name(&u.name)))?;
        }
    }
    // 4. One-way connections (datagram to a bound socket) and clients
    //    waiting in a listener's backlog (their peer is the listener).
    for &(id, u) in &ents {
        let target = (u.peer != 0 && !mutual(u))
            .then(|| by_ino.get(&u.peer).map(|(_, p)| p.name.clone()))
            .flatten();
        if let Some(name) = target {
            if name.is_empty() {
                bail!("unix socket {} is connected to an unnamed socket {}", u.ino, u.peer);
            }
            sock::connect(fds[&id].as_raw_fd(), &unix_addr(&name)?)
                .with_context(|| format!("Cannot connect a socket to {}", show_name(&name)))?;
        }
    }
    // 5. Queues, sent from the peer (or to the bound name).
    for &(id, u) in &ents {
        let Some(msgs) = queues.get(&id).filter(|m| !m.is_empty()) else {
            continue;
        };
        let stream = u.r#type == libc::SOCK_STREAM as u32;
        let sender: OwnedFd;
        let from: BorrowedFd = if let Some(g) = ghosts.get(&id) {
            g.as_fd()
        } else if mutual(u) {
            fds[&by_ino[&u.peer].0].as_fd()
        } else if !u.name.is_empty() && u.r#type == libc::SOCK_DGRAM as u32 {
            sender = sock::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
                .context("socket")?;
            sock::connect(sender.as_raw_fd(), &unix_addr(&u.name)?).context("connect of the refill socket")?;
            sender.as_fd()
        } else {
            bail!("unix socket {} has queued data but no way to refill it", u.ino);
        };
        let total: usize = msgs.iter().map(|m| m.len()).sum();
        let _ = fdops::setsockopt_int(
            from,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (total as i32).saturating_mul(2).max(1 << 16),
        );
        for (i, m) in msgs.iter().enumerate() {
            let what = || format!("Cannot refill the queue of unix socket {}", u.ino);
            match rights.get(&id).and_then(|r| r.get(&i)) {
                Some(r) => {
                    let fds: Vec<std::os::fd::RawFd> = r
                        .iter()
                        .map(|f| slot_of(*f).with_context(|| format!("file id {f} in flight has no slot")))
                        .collect::<Result<_>>()?;
                    send_rights(from, m, &fds, stream).with_context(what)?
                }
                None => send_all(from, m, stream).with_context(what)?,
            }
        }
    }
    drop(ghosts);
    // 6. Shutdowns, options, flags.
    for &(id, u) in &ents {
        let fd = &fds[&id];
        let how = match u.shutdown.unwrap_or(0) {
            1 => Some(sock::Shutdown::Read),
            2 => Some(sock::Shutdown::Write),
            3 => Some(sock::Shutdown::Both),
            _ => None,
        };
        if let (Some(how), false) = (how, u.peer == 0 && u.state == ST_ESTABLISHED && stream_like(u)) {
            sock::shutdown(fd.as_raw_fd(), how).with_context(|| format!("shutdown of unix socket {}", u.ino))?;
        }
        apply_opts(fd.as_fd(), &u.opts).with_context(|| format!("options of unix socket {}", u.ino))?;
        let fl = nix::fcntl::OFlag::from_bits_truncate((u.flags as i32) & (libc::O_NONBLOCK | libc::O_ASYNC));
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).context("F_SETFL")?;
    }
    Ok(ids
        .iter()
        .map(|id| (*id, fds.remove(id).expect("created above")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&2u16.to_ne_bytes());
        v.extend_from_slice(&1u32.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(body);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn attr(ty: u16, val: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(val);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_a_listener_and_a_pair_then_done() {
        let mut m = vec![1u8, 1, 10, 0];
        m.extend_from_slice(&77u32.to_ne_bytes());
        m.extend_from_slice(&[0xff; 8]);
        m.extend(attr(UNIX_DIAG_NAME, b"\0abs-name"));
        m.extend(attr(UNIX_DIAG_VFS, &[0u8; 8]));
        let icons: Vec<u8> = [5u32, 6].iter().flat_map(|x| x.to_ne_bytes()).collect();
        m.extend(attr(UNIX_DIAG_ICONS, &icons));
        let rq: Vec<u8> = [2u32, 5].iter().flat_map(|x| x.to_ne_bytes()).collect();
        m.extend(attr(UNIX_DIAG_RQLEN, &rq));
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, &m);
        let mut p = vec![1u8, 5, 1, 0];
        p.extend_from_slice(&78u32.to_ne_bytes());
        p.extend_from_slice(&[0xff; 8]);
        p.extend(attr(UNIX_DIAG_PEER, &79u32.to_ne_bytes()));
        p.extend(attr(UNIX_DIAG_SHUTDOWN, &[2]));
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, &p));
        let (v, done) = parse_diag(&buf).unwrap();
        assert!(!done);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].ino, 77);
        assert_eq!(v[0].state, ST_LISTEN);
        assert_eq!(v[0].name, b"\0abs-name");
        assert_eq!(v[0].icons, vec![5, 6]);
        assert_eq!(v[0].rqlen, (2, 5));
        assert_eq!((v[1].typ, v[1].peer, v[1].shutdown), (5, 79, 2));
        let mut n = vec![1u8, 2, 7, 0];
        n.extend_from_slice(&80u32.to_ne_bytes());
        n.extend_from_slice(&[0xff; 8]);
        n.extend(attr(UNIX_DIAG_NAME, b"/tmp/sock\0"));
        let (v, _) = parse_diag(&nlmsg(SOCK_DIAG_BY_FAMILY, &n)).unwrap();
        assert_eq!(v[0].name, b"/tmp/sock", "a path keeps no NUL");
        let (v, done) = parse_diag(&nlmsg(NLMSG_DONE, &[0; 4])).unwrap();
        assert!(done && v.is_empty());
        let e = parse_diag(&nlmsg(NLMSG_ERROR, &(-22i32).to_ne_bytes())).unwrap_err();
        assert!(e.contains("22"), "{e}");
        let mut bad = nlmsg(SOCK_DIAG_BY_FAMILY, &p);
        bad[0] = 200;
        assert!(parse_diag(&bad).is_err());
    }

    #[test]
    fn live_diag_sees_a_socketpair() {
        let (a, b) = sock::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_raw_fd()).map(|s| s.st_ino as u32).unwrap();
        let all = diag_all().unwrap();
        let da = &all[&ino(&a)];
        assert_eq!(da.peer, ino(&b));
        assert_eq!(da.typ, libc::SOCK_SEQPACKET as u32);
        let _ = std::fs::metadata("/").map(|m| m.ino());
    }

    #[test]
    fn peeking_keeps_the_queue() {
        let (a, b) = sock::socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC).unwrap();
        // (A zero-length datagram is seen by the first peek only: the
        // kernel skips already-peeked empty skbs at a peek offset.)
        for m in [&b"one"[..], b"2", b"three"] {
            sock::send(b.as_raw_fd(), m, MsgFlags::empty()).unwrap();
        }
        let bytes = |q: Vec<Queued>| q.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
        let q = bytes(peek_queue(a.as_fd(), libc::SOCK_DGRAM as u32).unwrap());
        assert_eq!(q, vec![b"one".to_vec(), b"2".to_vec(), b"three".to_vec()]);
        let q2 = bytes(peek_queue(a.as_fd(), libc::SOCK_DGRAM as u32).unwrap());
        assert_eq!(q, q2);
        let mut buf = [0u8; 8];
        assert_eq!(sock::recv(a.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap(), 3);
    }
}
