//! Container namespaces: what a dump records of the mount, UTS, network,
//! IPC and cgroup namespaces a tree owns, and how a restore recreates them
//! around the tree's root task.
//!
//! Dump reads a container's state from outside: its mount tree from
//! /proc/PID/mountinfo (files through /proc/PID/root), its host name from a
//! short-lived thread that joined its UTS namespace (setns into UTS is
//! per-thread, so the engine stays multi-thread-safe and no fork is
//! needed), its network devices from /proc/PID/net/dev.
//!
//! Restore: the root task is cloned into fresh pid, mount, UTS, IPC, net
//! (and cgroup) namespaces; before it restores anything it rebuilds the
//! mount tree over the caller's root directory (`root`), pivots into it,
//! sets the host name and brings loopback up.
//!
//! The IPC namespace is fresh; its System V objects are dumped and
//! recreated by `ipc::sysv`.
//!
//! Not yet: network devices other than loopback and addresses (refused at
//! dump; see [`dump_net`]), user and time namespaces (refused).

pub mod mounts;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use tracing::{debug, info};

use crate::image::{pb, ImageDir, Kind};
use mounts::{How, Step};

/// The inherit_fd key of an external network namespace (runc, podman).
pub const EXT_NET_KEY: &str = "extRootNetNS";

/// The namespace kinds a tree may own, with CLONE_NEW* flags.
const KINDS: [(&str, i32); 5] = [
    ("mnt", libc::CLONE_NEWNS),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
];

/// Name of the file holding a tmpfs mount's files (an uncompressed tar;
/// CRIU's own is `tmpfs-dev-N.tar.gz.img`, gzip'd).
pub fn tmpfs_image(mnt_id: u32) -> String {
    format!("tmpfs-dev-{mnt_id}.tar")
}

/// What the dump of a container's namespaces needs.
pub struct DumpCtx<'a> {
    pub pid: i32,
    /// The dumper's and the root task's namespace inodes by kind.
    pub own: &'a HashMap<&'static str, u64>,
    pub tree: &'a HashMap<&'static str, u64>,
    /// `ext_mnt` of the request: mountpoint → external name.
    pub ext_mnt: &'a [(String, String)],
    /// CRIU's `external`: "net[INODE]:KEY" marks the net namespace as the
    /// caller's (not dumped; joined again at restore via inherit_fd KEY).
    pub external: &'a [String],
}

/// Dumps the namespaces the root task owns (those that differ from the
/// dumper's). Returns their kinds; every task of the tree must share them.
pub fn dump(dir: &ImageDir, c: &DumpCtx, mut ns_id: impl FnMut(&str, u64) -> u32) -> Result<Vec<&'static str>> {
    let pid = c.pid;
    for k in ["user", "time"] {
        if c.own[k] != c.tree[k] {
            bail!("pid {pid} is in its own {k} namespace; {k} namespaces are not supported yet");
        }
    }
    let owned: Vec<&'static str> = KINDS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| c.own[k] != c.tree[k])
        .collect();
    if owned.is_empty() {
        return Ok(owned);
    }
    info!("pid {pid} owns the {} namespaces", owned.join(", "));
    if owned.contains(&"net") {
        // Its interfaces, addresses, routes and rules are dumped by
        // net::ns (which refuses what it cannot rebuild), unless external.
        let tag = format!("net[{}]:", c.tree["net"]);
        if let Some(e) = c.external.iter().find(|e| e.starts_with(&tag)) {
            info!("the network namespace is external ({e}): the caller hands it back at restore");
        }
    }
    if owned.contains(&"uts") {
        let (node, domain) = read_uts(pid)?;
        let id = ns_id("uts", c.tree["uts"]);
        dir.write_image(
            &format!("utsns-{id}.img"),
            Kind::Utsns,
            &[pb::UtsnsEntry {
                nodename: node,
                domainname: domain,
            }],
        )?;
    }
    if owned.contains(&"mnt") {
        let id = ns_id("mnt", c.tree["mnt"]);
        dump_mounts(dir, pid, id, c.ext_mnt, owned.contains(&"cgroup"))?;
    } else {
        bail!(
            "pid {pid} owns namespaces ({}) but shares cryo's mount namespace; such trees are not supported",
            owned.join(", ")
        );
    }
    Ok(owned)
}

/// Runs `f` on a thread that joined `pid`'s namespace of `kind` (UTS,
/// IPC, net: per-thread namespaces). The thread exits afterwards, so the
/// engine's own threads never change namespace.
fn in_ns_thread<T: Send + 'static>(
    pid: i32,
    kind: &str,
    flag: i32,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/proc/{pid}/ns/{kind}");
    let file = fs::File::open(&path).with_context(|| format!("Cannot open {path}"))?;
    std::thread::spawn(move || -> Result<T> {
        // The thread must not share its fs info for setns to some kinds;
        // UTS, IPC and net need nothing but CAP_SYS_ADMIN.
        nix::sched::setns(&file, nix::sched::CloneFlags::from_bits_truncate(flag))
            .with_context(|| format!("Cannot join {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace reader thread panicked"))?
}

fn read_uts(pid: i32) -> Result<(String, String)> {
    in_ns_thread(pid, "uts", libc::CLONE_NEWUTS, || {
        let u = nix::sys::utsname::uname().context("uname")?;
        Ok((
            u.nodename().to_string_lossy().into_owned(),
            u.domainname().to_string_lossy().into_owned(),
        ))
    })
}

fn dump_mounts(dir: &ImageDir, pid: i32, ns_id: u32, ext: &[(String, String)], cgroup_ns: bool) -> Result<()> {
    let path = format!("/proc/{pid}/mountinfo");
    // cgroup mounts show their root relative to the reader's cgroup
    // namespace: read them as the container sees them (its own cgroup at
    // "/", a mount the restore makes afresh in the new cgroup namespace).
    let text = if cgroup_ns {
        let p = path.clone();
        in_ns_thread(pid, "cgroup", libc::CLONE_NEWCGROUP, move || {
            fs::read_to_string(&p).with_context(|| format!("Cannot read {p}"))
        })?
    } else {
        fs::read_to_string(&path).with_context(|| format!("Cannot read {path}"))?
    };
    let infos = mounts::parse_mountinfo(&text)?;
    let entries = mounts::to_entries(&infos, ext);
    // Refuse now what the restore could not rebuild.
    let steps = mounts::plan(&entries).with_context(|| format!("pid {pid}'s mount namespace"))?;
    for s in &steps {
        if s.how == How::Fresh && s.entry.fsname.as_deref() == Some("tmpfs") {
            let at = format!("/proc/{pid}/root{}", s.entry.mountpoint);
            let skip = mounts::child_points(&entries, s.entry.mnt_id);
            let tar = tar_tree(Path::new(&at), &skip)
                .with_context(|| format!("Cannot save the tmpfs at {}", s.entry.mountpoint))?;
            dir.write_bytes(&tmpfs_image(s.entry.mnt_id), &tar)?;
        }
    }
    debug!("{} mounts in mount namespace {ns_id}", entries.len());
    Ok(dir.write_image(&format!("mountpoints-{ns_id}.img"), Kind::Mnts, &entries)?)
}

/// A tar of the tree at `base`, without descending into `skip` (child
/// mountpoints, relative). Keeps modes, owners, times, device numbers.
fn tar_tree(base: &Path, skip: &[String]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dirp = base.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dirp)
            .with_context(|| format!("Cannot list {}", dirp.display()))?
            .collect::<std::io::Result<Vec<_>>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let r = rel.join(e.file_name());
            let full = base.join(&r);
            let md = fs::symlink_metadata(&full).with_context(|| format!("Cannot stat {}", full.display()))?;
            let mut h = tar::Header::new_gnu();
            h.set_metadata(&md);
            h.set_mode(md.permissions().mode() & 0o7777);
            let ft = md.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&full)?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &r, &target)?;
            } else if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &r, std::io::empty())?;
                if !skip.iter().any(|s| Path::new(s) == r) {
                    stack.push(r);
                }
            } else if ft.is_file() {
                let mut data = Vec::new();
                fs::File::open(&full)?.read_to_end(&mut data)?;
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &r, data.as_slice())?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let rdev = md.rdev();
                h.set_entry_type(if ft.is_char_device() {
                    tar::EntryType::Char
                } else if ft.is_block_device() {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Fifo
                });
                h.set_device_major(libc::major(rdev))?;
                h.set_device_minor(libc::minor(rdev))?;
                h.set_size(0);
                b.append_data(&mut h, &r, std::io::empty())?;
            } else {
                bail!("{}: a socket cannot be saved", full.display());
            }
        }
    }
    Ok(b.into_inner()?)
}

/// Unpacks a [`tar_tree`] archive into `dest` (a fresh tmpfs).
fn untar_tree(bytes: &[u8], dest: &Path) -> Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let mut a = tar::Archive::new(bytes);
    let mut dirs = Vec::new();
    for e in a.entries()? {
        let mut e = e?;
        let rel = e.path()?.into_owned();
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("tmpfs archive entry {} escapes the mount", rel.display());
        }
        let p = dest.join(&rel);
        let h = e.header().clone();
        let mode = h.mode()? & 0o7777;
        let (uid, gid) = (h.uid()? as u32, h.gid()? as u32);
        let dev = || -> Result<u64> {
            Ok(libc::makedev(
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            ))
        };
        let mk = |kind: SFlag, rdev: u64| -> Result<()> {
            mknod(&p, kind, Mode::from_bits_truncate(mode), rdev).with_context(|| format!("mknod {}", p.display()))?;
            // The umask applied to mknod; the saved mode wins.
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
            Ok(())
        };
        match h.entry_type() {
            tar::EntryType::Directory => {
                if !p.is_dir() {
                    fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
                }
                dirs.push((p.clone(), mode));
            }
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                e.read_to_end(&mut data)?;
                fs::write(&p, &data).with_context(|| format!("write {}", p.display()))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
            }
            tar::EntryType::Symlink => {
                let t = h.link_name()?.context("symlink without a target")?.into_owned();
                std::os::unix::fs::symlink(&t, &p).with_context(|| format!("symlink {}", p.display()))?;
            }
            tar::EntryType::Char => mk(SFlag::S_IFCHR, dev()?)?,
            tar::EntryType::Block => mk(SFlag::S_IFBLK, dev()?)?,
            tar::EntryType::Fifo => mk(SFlag::S_IFIFO, 0)?,
            t => bail!("tmpfs archive entry {} has an unexpected type {t:?}", rel.display()),
        }
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))?;
    }
    // Directory modes last (a read-only directory could not be filled).
    for (p, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The namespaces a restore creates for the tree, read and checked
/// before anything exists.
#[derive(Debug, Clone)]
pub struct NsPlan {
    /// CLONE_NEW* flags besides CLONE_NEWPID.
    pub flags: i32,
    pub uts: Option<pb::UtsnsEntry>,
    pub mounts: Vec<Step>,
    /// tmpfs contents by mount id.
    pub tmpfs: HashMap<u32, Vec<u8>>,
    /// Where the tree's `/` is, and the caller's external mounts (name →
    /// host path).
    pub root: PathBuf,
    pub ext_mnt: Vec<(String, String)>,
    /// An fd of the network namespace to join instead of creating one
    /// (CRIU's inherit_fd extRootNetNS).
    pub join_net: Option<std::os::fd::RawFd>,
    /// The console pty to re-create (see [`Console`]).
    pub console: Option<Console>,
}

/// A container's console: a pty slave of the container's devpts whose
/// master was outside the tree (the runtime's console socket holds it).
#[derive(Debug, Clone, Copy)]
pub struct Console {
    /// Its index in the devpts (the slave is /dev/pts/INDEX).
    pub index: u32,
    /// The fd number where the restored tasks find the slave.
    pub slot: std::os::fd::RawFd,
    /// Where the new master goes to the engine (SCM_RIGHTS).
    pub sock: std::os::fd::RawFd,
}

/// The index of the pty whose master was outside the tree and that is a
/// controlling terminal (a container's console: its init, pid 1, leads
/// the session), if the images hold one; `inside` are the tty-info ids of
/// pairs held inside the tree.
pub fn console_index(
    ttys: &HashMap<u32, pb::TtyInfoEntry>,
    inside: &std::collections::HashSet<u32>,
    root: u32,
) -> Option<u32> {
    if root != 1 {
        return None;
    }
    ttys.values()
        .find(|t| t.sid != 0 && !inside.contains(&t.id))
        .and_then(|t| t.pty.as_ref())
        .map(|p| p.index)
}

/// Engine side: the master the root task sent while it built its mounts.
pub fn recv_console(sock: &std::os::fd::OwnedFd) -> Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut b)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)
        .context("The restored init sent no console master")?;
    for c in msg.cmsgs().context("console message")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                return Ok(crate::sys::rawfd::own(fd));
            }
        }
    }
    bail!("The console message carries no fd")
}

/// Inside the fresh devpts mounted at `pts`: a new pty with the saved
/// index; the slave goes to the tty slot, the master to the engine.
fn make_console(pts: &Path, c: &Console) -> Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::{AsFd, AsRawFd};
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let m = nix::fcntl::open(&pts.join("ptmx"), flags, nix::sys::stat::Mode::empty())
        .with_context(|| format!("Cannot open {}/ptmx", pts.display()))?;
    let master = crate::sys::rawfd::own(m);
    let idx = crate::sys::ns::pty_unlock_index(master.as_fd()).context("Cannot unlock the new pty")?;
    if idx != c.index {
        bail!("the console came back as pts {idx}, not {}", c.index);
    }
    let sl = nix::fcntl::open(&pts.join(idx.to_string()), flags, nix::sys::stat::Mode::empty())
        .with_context(|| format!("Cannot open the console slave {}/{idx}", pts.display()))?;
    let slave = crate::sys::rawfd::own(sl);
    nix::unistd::dup2(slave.as_raw_fd(), c.slot).context("dup2 of the console slave")?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        c.sock,
        &[std::io::IoSlice::new(b"m")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("Cannot send the console master to the engine")?;
    Ok(())
}

impl NsPlan {
    /// CLONE_NEW* flags of the namespaces the root task is cloned into.
    pub fn clone_flags(&self) -> i32 {
        if self.join_net.is_some() {
            self.flags & !libc::CLONE_NEWNET
        } else {
            self.flags
        }
    }
}

/// Reads the namespace images of a dump whose root task is `root_pid`;
/// None when the tree owns no namespace besides pid.
pub fn load(
    dir: &ImageDir,
    root_pid: u32,
    root: Option<&Path>,
    ext_mnt: &[(String, String)],
) -> Result<Option<NsPlan>> {
    let inv: pb::InventoryEntry = dir.read_single("inventory.img", Kind::Inventory)?;
    let Some(host) = inv.root_ids else {
        return Ok(None);
    };
    let ids: pb::TaskKobjIdsEntry = dir.read_single(&crate::image::names::ids(root_pid), Kind::Ids)?;
    let differs = |a: Option<u32>, b: Option<u32>| a.is_some() && b.is_some() && a != b;
    let mut flags = 0;
    for (k, f) in KINDS {
        let (a, b) = match k {
            "mnt" => (ids.mnt_ns_id, host.mnt_ns_id),
            "uts" => (ids.uts_ns_id, host.uts_ns_id),
            "ipc" => (ids.ipc_ns_id, host.ipc_ns_id),
            "net" => (ids.net_ns_id, host.net_ns_id),
            _ => (ids.cgroup_ns_id, host.cgroup_ns_id),
        };
        if differs(a, b) {
            flags |= f;
        }
    }
    if flags == 0 {
        return Ok(None);
    }
    if flags & libc::CLONE_NEWNS == 0 {
        bail!("the tree owns namespaces but not its mount namespace; not supported");
    }
    let root = root
        .context("the images are of a container (it has its own mount namespace): give the root directory to restore it over (--root / root)")?
        .to_path_buf();
    if !root.is_dir() {
        bail!("root {} is not a directory", root.display());
    }
    let uts = match ids.uts_ns_id {
        Some(id) if flags & libc::CLONE_NEWUTS != 0 => {
            Some(dir.read_single::<pb::UtsnsEntry>(&format!("utsns-{id}.img"), Kind::Utsns)?)
        }
        _ => None,
    };
    let mnt_id = ids.mnt_ns_id.unwrap_or(0);
    let entries: Vec<pb::MntEntry> = dir.read_image(&format!("mountpoints-{mnt_id}.img"), Kind::Mnts)?;
    let steps = mounts::plan(&entries).with_context(|| format!("mountpoints-{mnt_id}.img"))?;
    let mut tmpfs = HashMap::new();
    for s in &steps {
        match &s.how {
            How::Fresh if s.entry.fsname.as_deref() == Some("tmpfs") => {
                tmpfs.insert(s.entry.mnt_id, dir.read_bytes(&tmpfs_image(s.entry.mnt_id))?);
            }
            How::External { key } => {
                ext_source(ext_mnt, key, &s.entry.mountpoint)?;
            }
            _ => {}
        }
    }
    Ok(Some(NsPlan {
        flags,
        uts,
        mounts: steps,
        tmpfs,
        root,
        ext_mnt: ext_mnt.to_vec(),
        join_net: None,
        console: None,
    }))
}

/// The host path the caller maps an external mount to.
fn ext_source<'a>(ext: &'a [(String, String)], key: &str, mountpoint: &str) -> Result<&'a str> {
    ext.iter()
        .find(|(k, _)| k == key)
        .or_else(|| ext.iter().find(|(k, _)| k == mountpoint))
        .map(|(_, v)| v.as_str())
        .with_context(|| {
            format!("the external mount {mountpoint} (named {key:?}) has no source: pass ext_mnt / --external mnt[{key}]:PATH")
        })
}

/// Inside the new namespaces (the restored root task, pid 1 of its pid
/// namespace, before it restores anything): rebuild the mount tree over
/// the root, enter it, set the host name and bring loopback up.
pub fn enter(p: &NsPlan) -> Result<()> {
    let none = None::<&str>;
    if let Some(fd) = p.join_net {
        // Before sysfs is mounted: it shows the mounter's network namespace.
        nix::sched::setns(crate::sys::rawfd::borrow(fd), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("Cannot join the network namespace given as extRootNetNS")?;
    }
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .context("Cannot make the mount namespace private")?;
    let root = &p.root;
    // The root must be a mount of its own for pivot_root.
    mount(
        Some(root.as_path()),
        root.as_path(),
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .with_context(|| format!("Cannot bind {} onto itself", root.display()))?;
    let mut targets: HashMap<u32, PathBuf> = HashMap::new();
    let mut remounts = Vec::new();
    for s in &p.mounts {
        let e = &s.entry;
        let target = if s.how == How::Root {
            root.clone()
        } else {
            root.join(e.mountpoint.trim_start_matches('/'))
        };
        let mut flags = MsFlags::from_bits_truncate(e.flags as _);
        // mountinfo names no atime mode for strictatime.
        if e.flags & (mounts::MS_NOATIME | mounts::MS_RELATIME) == 0 {
            flags |= MsFlags::MS_STRICTATIME;
        }
        let keep = flags
            & (MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME);
        let fsname = e.fsname.clone().unwrap_or_default();
        let ctx = || format!("Cannot mount {} ({fsname}) at {}", e.mountpoint, target.display());
        match &s.how {
            How::Root => {}
            How::Fresh => {
                make_point(&target, true).with_context(ctx)?;
                let mut opts = e.options.clone();
                if fsname == "devpts" {
                    opts = if opts.is_empty() {
                        "newinstance".into()
                    } else {
                        format!("newinstance,{opts}")
                    };
                }
                mount(
                    Some(e.source.as_str()),
                    &target,
                    Some(fsname.as_str()),
                    keep,
                    Some(opts.as_str()),
                )
                .with_context(ctx)?;
                if fsname == "devpts" {
                    if let Some(c) = &p.console {
                        make_console(&target, c)?;
                    }
                }
                if let Some(tar) = p.tmpfs.get(&e.mnt_id) {
                    untar_tree(tar, &target).with_context(|| format!("Cannot fill the tmpfs at {}", e.mountpoint))?;
                }
            }
            How::Bind { from, sub } => {
                let src_base = targets
                    .get(from)
                    .with_context(|| format!("{}: its source mount {from} is missing", e.mountpoint))?;
                let src = if sub.is_empty() {
                    src_base.clone()
                } else {
                    src_base.join(sub)
                };
                make_point(&target, src.is_dir()).with_context(ctx)?;
                mount(Some(&src), &target, none, MsFlags::MS_BIND, none).with_context(ctx)?;
            }
            How::External { key } => {
                let src = PathBuf::from(ext_source(&p.ext_mnt, key, &e.mountpoint)?);
                make_point(&target, src.is_dir()).with_context(ctx)?;
                mount(Some(&src), &target, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).with_context(ctx)?;
            }
        }
        let ro = e.flags & mounts::MS_RDONLY != 0;
        let sb_ro = e.sb_flags.unwrap_or(0) & mounts::MS_RDONLY != 0;
        let fresh = matches!(s.how, How::Fresh);
        if fresh && sb_ro {
            // The file system itself read-only (after a tmpfs was filled).
            remounts.push((
                target.clone(),
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
                Some(e.options.clone()),
            ));
        }
        if ro || (!fresh && s.how != How::Root && !keep.is_empty()) {
            let ro_flag = if ro { MsFlags::MS_RDONLY } else { MsFlags::empty() };
            remounts.push((
                target.clone(),
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | keep | ro_flag,
                None,
            ));
        }
        targets.insert(e.mnt_id, target);
    }
    // Read-only last: children had to be mounted (and tmpfs filled) first.
    for (t, f, data) in remounts.into_iter().rev() {
        mount(none, &t, none, f, data.as_deref())
            .with_context(|| format!("Cannot remount {} with {f:?}", t.display()))?;
    }
    nix::unistd::chdir(root.as_path()).with_context(|| format!("Cannot enter {}", root.display()))?;
    nix::unistd::pivot_root(".", ".").with_context(|| format!("pivot_root into {}", root.display()))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).context("Cannot detach the old root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    if let Some(u) = &p.uts {
        nix::unistd::sethostname(&u.nodename).with_context(|| format!("sethostname {:?}", u.nodename))?;
        crate::sys::ns::set_domainname(&u.domainname).with_context(|| format!("setdomainname {:?}", u.domainname))?;
    }
    if p.clone_flags() & libc::CLONE_NEWNET != 0 {
        crate::sys::ns::loopback_up().context("Cannot bring lo up in the new network namespace")?;
    }
    Ok(())
}

/// Creates a missing mountpoint (a directory, or an empty file for a
/// file bind).
fn make_point(p: &Path, dir: bool) -> Result<()> {
    if fs::symlink_metadata(p).is_ok() {
        return Ok(());
    }
    if dir {
        fs::create_dir_all(p)?;
    } else {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::File::create(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_round_trip_keeps_types_and_skips_child_mounts() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("pts")).unwrap();
        fs::write(src.join("pts/hidden"), b"x").unwrap();
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"hello").unwrap();
        fs::set_permissions(src.join("sub/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("/proc/self/fd", src.join("fd")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let tar = tar_tree(&src, &["pts".to_string()]).unwrap();
        let dst = d.path().join("dst");
        fs::create_dir(&dst).unwrap();
        untar_tree(&tar, &dst).unwrap();
        assert_eq!(fs::read(dst.join("sub/f")).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(dst.join("sub/f")).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_link(dst.join("fd")).unwrap(), Path::new("/proc/self/fd"));
        assert!(fs::symlink_metadata(dst.join("fifo")).unwrap().file_type().is_fifo());
        assert!(dst.join("pts").is_dir() && !dst.join("pts/hidden").exists());
    }
}
