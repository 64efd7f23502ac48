//! Restore of the fd tables: every open file description is created once
//! and put at its fd numbers in every task that uses it.
//!
//! Descriptions are created in *groups* (what one call creates together:
//! both ends of a pipe, a socketpair, all descriptions of one ghost file,
//! or just one file) by the *owner* of the group: the lowest common
//! ancestor of every task that uses one of its descriptions (or watches
//! one through an epoll). The owner parks each description at a fixed
//! *slot* fd number (`tmp_base + index`, above every fd the tree uses),
//! where every descendant finds it after fork. Each task then closes the
//! table it inherited and dup2s its own fds from the slots. The slots are
//! closed in `jump` (everything but the task's fds), after the children
//! have been forked, so no extra reference survives into the restored
//! tree.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::unistd;

use super::{
    anon, inotify, memfd, pipe, reg, shmem, tty, unix, FD_EVENTFD, FD_EVENTPOLL, FD_FIFO, FD_INOTIFY, FD_MEMFD,
    FD_PIDFD, FD_PIPE, FD_REG, FD_SIGNALFD, FD_TIMERFD, FD_TTY, FD_UNIXSK,
};
use crate::image::{names, pb, ImageDir, Kind};
use crate::proc;
use crate::restore::{EngineFds, Plan, RestoreOpts};

/// Everything besides files.img that the file restore needs, read and
/// checked at Stage Load.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Ghost file contents by remap id (the N of ghost-file-N.img).
    pub ghosts: HashMap<u32, reg::Ghost>,
    /// remap id of each REG entry that is a ghost.
    pub ghost_of: HashMap<u32, u32>,
    /// Pipe contents and sizes by pipe id.
    pub pipe_data: HashMap<u32, pipe::PipeData>,
    /// FIFO contents and sizes by pipe id.
    pub fifo_data: HashMap<u32, pipe::PipeData>,
    /// Queued socket messages by the socket's file id.
    pub sk_queues: HashMap<u32, Vec<Vec<u8>>>,
    /// Datagrams queued on UDP sockets, by the socket's file id.
    pub udp_queues: HashMap<u32, Vec<crate::net::udpq::Datagram>>,
    /// Descriptors in flight: socket file id → message index → file ids.
    pub sk_rights: HashMap<u32, HashMap<usize, Vec<u32>>>,
    /// memfd inodes (with their content) by inode id.
    pub memfds: HashMap<u32, memfd::Inode>,
    /// Anonymous shared memory: shmid → synthetic file id (see `shmem`).
    pub shmem: HashMap<u64, u32>,
    /// File locks (filelocks.img).
    pub locks: Vec<pb::FileLockEntry>,
    /// pty pairs of the dump and their queued bytes.
    pub ttys: tty::Loaded,
    /// Established TCP connections' streams, by socket inode.
    pub tcp: HashMap<u32, crate::net::tcp::Stream>,
    /// Restore established TCP connections closed (--tcp-close).
    pub tcp_close: bool,
    /// The caller's substitutes (CRIU's inherit_fd): "pipe:[INO]" → an
    /// engine fd every task inherits; a pipe with that inode is not
    /// recreated, its descriptors become copies of that fd.
    pub inherit: HashMap<String, RawFd>,
}

/// Reads the images that go with files.img.
pub fn load(dir: &ImageDir, files: &HashMap<u32, pb::FileEntry>) -> Result<Extra> {
    let mut x = Extra::default();
    if dir.exists(names::REMAP_FPATH) {
        let remaps: Vec<pb::RemapFilePathEntry> = dir.read_image(names::REMAP_FPATH, Kind::RemapFpath)?;
        for r in remaps {
            if r.remap_type != Some(pb::RemapType::Ghost as i32) {
                bail!(
                    "{}: file id {} has a remap of a kind this cryo cannot restore",
                    names::REMAP_FPATH,
                    r.orig_id
                );
            }
            match files.get(&r.orig_id) {
                Some(fe) if fe.r#type == FD_REG => {}
                _ => bail!(
                    "{}: file id {} is not a regular file in files.img",
                    names::REMAP_FPATH,
                    r.orig_id
                ),
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = x.ghosts.entry(r.remap_id) {
                let name = names::ghost_file(r.remap_id);
                let data = dir.read_bytes(&name)?;
                let path = dir.path().join(&name).display().to_string();
                let g = reg::parse_ghost(&path, &data)?;
                if g.entry.mode & libc::S_IFMT != libc::S_IFREG {
                    bail!(
                        "{path}: only regular ghost files can be restored (mode {:o})",
                        g.entry.mode
                    );
                }
                slot.insert(g);
            }
            x.ghost_of.insert(r.orig_id, r.remap_id);
        }
    }
    x.pipe_data = pipe::load_data(dir, names::PIPES_DATA, Kind::PipesData)?;
    x.fifo_data = pipe::load_data(dir, names::FIFO_DATA, Kind::FifoData)?;
    if dir.exists(names::SK_QUEUES) {
        let bytes = dir.read_bytes(names::SK_QUEUES)?;
        let path = dir.path().join(names::SK_QUEUES).display().to_string();
        let mut r = crate::image::ImageReader::new(&path, &bytes, Kind::SkQueues)?;
        while let Some(e) = r.next_entry::<pb::SkPacketEntry>()? {
            let data = r.read_raw(e.length as usize)?.to_vec();
            match files.get(&e.id_for) {
                Some(fe) if fe.usk.is_some() => {}
                Some(fe) if crate::net::udpq::is_udp(fe) => {
                    let d = crate::net::udpq::datagram(&path, &e, data)?;
                    x.udp_queues.entry(e.id_for).or_default().push(d);
                    continue;
                }
                _ => bail!(
                    "{path}: messages for file id {}, which is not a unix or UDP socket in files.img",
                    e.id_for
                ),
            }
            let idx = x.sk_queues.get(&e.id_for).map_or(0, Vec::len);
            for scm in &e.scm {
                if scm.r#type != libc::SCM_RIGHTS as u32 {
                    bail!(
                        "{path}: a message of file id {} carries control data of type {}; not supported",
                        e.id_for,
                        scm.r#type
                    );
                }
                for r in &scm.rights {
                    match files.get(r) {
                        Some(f) if f.r#type != FD_UNIXSK => {}
                        _ => bail!(
                            "{path}: a message of file id {} carries file id {r}, which is not a file of files.img that can be in flight",
                            e.id_for
                        ),
                    }
                }
                x.sk_rights
                    .entry(e.id_for)
                    .or_default()
                    .entry(idx)
                    .or_default()
                    .extend_from_slice(&scm.rights);
            }
            x.sk_queues.entry(e.id_for).or_default().push(data);
        }
    }
    x.memfds = memfd::load(dir)?;
    x.ttys = tty::load(dir)?;
    x.tcp = crate::net::load_streams(dir, files)?;
    if dir.exists(names::FILE_LOCKS) {
        x.locks = dir.read_image(names::FILE_LOCKS, Kind::FileLocks)?;
    }
    for fe in files.values() {
        if let Some(m) = &fe.memfd {
            if !x.memfds.contains_key(&m.inode_id) {
                bail!(
                    "files.img: memfd file id {} refers to inode {}, which is not in {}",
                    fe.id,
                    m.inode_id,
                    names::MEMFD
                );
            }
        }
    }
    Ok(x)
}

/// Checks one fdinfo entry against its file entry (Stage Load).
pub fn check_fd(
    fdname: &str,
    pid: i32,
    f: &pb::FdinfoEntry,
    fe: &pb::FileEntry,
    files: &HashMap<u32, pb::FileEntry>,
    fx: &Extra,
    opts: &RestoreOpts,
) -> Result<()> {
    let shell_job = opts.shell_job;
    if fe.r#type != f.r#type {
        bail!(
            "{fdname}: fd {} has type {} but files.img says {}",
            f.fd,
            f.r#type,
            fe.r#type
        );
    }
    let missing = || {
        anyhow::anyhow!(
            "files.img: file id {} of type {} has no entry for its type",
            fe.id,
            fe.r#type
        )
    };
    match f.r#type {
        FD_REG if fe.reg.is_some() => {
            if !opts.skip_file_check && !fx.ghost_of.contains_key(&fe.id) {
                reg::check_size(fe.reg.as_ref().expect("matched"), opts.root.as_deref())?;
            }
        }
        FD_PIPE => {
            fe.pipe.as_ref().ok_or_else(missing)?;
        }
        FD_EVENTFD => {
            fe.efd.as_ref().ok_or_else(missing)?;
        }
        FD_MEMFD => {
            fe.memfd.as_ref().ok_or_else(missing)?;
        }
        FD_INOTIFY => {
            fe.ify.as_ref().ok_or_else(missing)?;
        }
        FD_SIGNALFD => {
            fe.sgfd.as_ref().ok_or_else(missing)?;
        }
        FD_TIMERFD => {
            fe.tfd.as_ref().ok_or_else(missing)?;
        }
        FD_EVENTPOLL => {
            fe.epfd.as_ref().ok_or_else(missing)?;
        }
        FD_PIDFD => {
            fe.pidfd.as_ref().ok_or_else(missing)?;
        }
        crate::net::FD_INETSK => crate::net::inet::check(fe)?,
        crate::net::FD_NETLINKSK => crate::net::netlink::check(fe)?,
        crate::net::FD_PACKETSK => crate::net::packet::check(fe)?,
        FD_UNIXSK => {
            let u = fe.usk.as_ref().ok_or_else(missing)?;
            if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&(u.r#type as i32)) {
                bail!(
                    "files.img: unix socket file id {} has type {}, which cannot be restored",
                    fe.id,
                    u.r#type
                );
            }
        }
        FD_FIFO => {
            let regf = fe.fifo.as_ref().ok_or_else(missing)?.regf_id;
            if regf.and_then(|r| files.get(&r)).is_none_or(|r| r.reg.is_none()) {
                bail!("files.img: FIFO file id {} has no path entry", fe.id);
            }
        }
        FD_TTY if fe.tty.is_some() => {
            let inside = fe.tty.as_ref().is_some_and(|t| fx.ttys.inside.contains(&t.tty_info_id));
            // A container's console is re-created in its devpts (ns::Console).
            if !shell_job && !inside && opts.root.is_none() {
                bail!(
                    "pid {pid} fd {} is a terminal of the dumping session; restore with --shell-job",
                    f.fd
                );
            }
        }
        FD_REG | FD_TTY => bail!(
            "files.img: file id {} of type {} has no entry for its type",
            fe.id,
            fe.r#type
        ),
        t => bail!(
            "{fdname}: fd {} has a file type ({t}) this cryo cannot restore yet",
            f.fd
        ),
    }
    Ok(())
}

/// What is created together by one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum GroupKey {
    /// One description on its own.
    Single(u32),
    /// Every description of one ghost file (by remap id).
    Ghost(u32),
    /// Every description of one pipe (by pipe id).
    Pipe(u32),
    /// Every description of one FIFO (by pipe id).
    Fifo(u32),
    /// Unix sockets linked by connections (by the smallest inode).
    Unix(u32),
    /// Every description of one memfd (by inode id).
    Memfd(u32),
    /// Both ends of a pty pair of the dump (by pty index).
    Pty(u32),
}

#[derive(Debug)]
struct Group {
    key: GroupKey,
    ids: Vec<u32>,
    owner: usize,
    /// Creation order inside the owner: 0, or for an epoll one more than
    /// the epolls it watches.
    order: u32,
}

/// Where every description is parked, and who creates it.
#[derive(Debug)]
struct Layout {
    slot: HashMap<u32, RawFd>,
    groups: Vec<Group>,
    /// First fd number above the slots, for temporaries.
    scratch: RawFd,
    /// For each epoll id: registered fd number → file id of the target.
    epoll_targets: HashMap<u32, HashMap<u32, u32>>,
}

fn group_key(plan: &Plan, id: u32, unix_comp: &HashMap<u32, u32>) -> GroupKey {
    let fe = &plan.files[&id];
    if let Some(&c) = unix_comp.get(&id) {
        return GroupKey::Unix(c);
    }
    if let Some(&g) = plan.fx.ghost_of.get(&id) {
        return GroupKey::Ghost(g);
    }
    match (fe.r#type, &fe.pipe, &fe.fifo) {
        (FD_PIPE, Some(p), _) => GroupKey::Pipe(p.pipe_id),
        (FD_FIFO, _, Some(f)) => GroupKey::Fifo(f.pipe_id),
        (FD_MEMFD, _, _) if fe.memfd.is_some() => GroupKey::Memfd(fe.memfd.as_ref().map_or(0, |m| m.inode_id)),
        (FD_TTY, _, _)
            if fe
                .tty
                .as_ref()
                .is_some_and(|t| plan.fx.ttys.inside.contains(&t.tty_info_id)) =>
        {
            GroupKey::Pty(fe.tty.as_ref().map_or(0, |t| t.tty_info_id >> 1))
        }
        _ => GroupKey::Single(id),
    }
}

fn depth(parents: &[Option<usize>], mut t: usize) -> usize {
    let mut d = 0;
    while let Some(p) = parents[t] {
        t = p;
        d += 1;
    }
    d
}

/// Lowest common ancestor of a non-empty set of tasks, given each task's
/// parent index (None for the root).
fn lca(parents: &[Option<usize>], tasks: impl IntoIterator<Item = usize>) -> usize {
    let mut it = tasks.into_iter();
    let mut a = it.next().expect("a group has users");
    for mut b in it {
        let (mut da, mut db) = (depth(parents, a), depth(parents, b));
        while da > db {
            a = parents[a].expect("deeper task has a parent");
            da -= 1;
        }
        while db > da {
            b = parents[b].expect("deeper task has a parent");
            db -= 1;
        }
        while a != b {
            a = parents[a].expect("tasks share the root");
            b = parents[b].expect("tasks share the root");
        }
    }
    a
}

/// The targets of every epoll: its registrations' fd numbers are those
/// of the first task (in tree order) that has the epoll, as at dump.
fn epoll_targets(plan: &Plan) -> Result<HashMap<u32, HashMap<u32, u32>>> {
    let mut out: HashMap<u32, HashMap<u32, u32>> = HashMap::new();
    for t in &plan.tasks {
        for f in &t.fds {
            if f.r#type != FD_EVENTPOLL || out.contains_key(&f.id) {
                continue;
            }
            let ep = plan.files[&f.id].epfd.as_ref().context("no eventpoll entry")?;
            let mut m = HashMap::new();
            for r in &ep.tfd {
                let target = t.fds.iter().find(|x| x.fd == r.tfd).with_context(|| {
                    format!(
                        "epoll file id {} watches fd {} that pid {} does not have",
                        f.id, r.tfd, t.pid
                    )
                })?;
                m.insert(r.tfd, target.id);
            }
            out.insert(f.id, m);
        }
    }
    Ok(out)
}

impl Layout {
    fn compute(plan: &Plan, base: RawFd) -> Result<Layout> {
        // Users of every id; an epoll's users use its targets too.
        let mut users: BTreeMap<u32, BTreeMap<usize, ()>> = BTreeMap::new();
        for (i, t) in plan.tasks.iter().enumerate() {
            for f in &t.fds {
                users.entry(f.id).or_default().insert(i, ());
            }
            for v in &t.mm.vmas {
                if let Some(id) = shmem::vma_file_id(v, &plan.files, &plan.fx.shmem, &plan.fx.ghost_of) {
                    users.entry(id).or_default().insert(i, ());
                }
            }
            // A deleted executable: the exe link is set from the ghost.
            if plan.fx.ghost_of.contains_key(&t.mm.exe_file_id) {
                users.entry(t.mm.exe_file_id).or_default().insert(i, ());
            }
        }
        for (id, i) in tty::extra_users(plan) {
            users.entry(id).or_default().insert(i, ());
        }
        // Descriptors in flight: created before their socket's group, by an
        // ancestor of every task of that group.
        let all_unix: Vec<u32> = users
            .keys()
            .copied()
            .filter(|id| plan.files[id].r#type == FD_UNIXSK)
            .collect();
        let comp = unix::components(&plan.files, &all_unix);
        let mut rights_of: HashMap<u32, Vec<u32>> = HashMap::new();
        for (s, msgs) in &plan.fx.sk_rights {
            if users.contains_key(s) {
                rights_of
                    .entry(*s)
                    .or_default()
                    .extend(msgs.values().flatten().copied());
            }
        }
        for (s, rights) in &rights_of {
            let c = comp.get(s).copied();
            let group_users: Vec<usize> = all_unix
                .iter()
                .filter(|id| *id == s || (c.is_some() && comp.get(id).copied() == c))
                .flat_map(|id| users[id].keys().copied().collect::<Vec<_>>())
                .collect();
            for r in rights {
                let u = users.entry(*r).or_default();
                for &t in &group_users {
                    u.insert(t, ());
                }
            }
        }
        let epoll_targets = epoll_targets(plan)?;
        loop {
            let mut changed = false;
            for (ep, targets) in &epoll_targets {
                let add: Vec<usize> = users[ep].keys().copied().collect();
                for t in targets.values() {
                    let u = users.entry(*t).or_default();
                    for &a in &add {
                        changed |= u.insert(a, ()).is_none();
                    }
                }
            }
            if !changed {
                break;
            }
        }
        // Epoll nesting depth, for the creation order.
        let mut depth: HashMap<u32, u32> = HashMap::new();
        for _ in 0..=epoll_targets.len() {
            for (ep, targets) in &epoll_targets {
                let d = 1 + targets
                    .values()
                    .map(|t| depth.get(t).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                depth.insert(*ep, d);
            }
        }
        for (s, rights) in &rights_of {
            let d = 1 + rights
                .iter()
                .map(|r| depth.get(r).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            let e = depth.entry(*s).or_default();
            *e = (*e).max(d);
        }
        let mut slot = HashMap::new();
        for (n, id) in users.keys().enumerate() {
            slot.insert(*id, base + n as RawFd);
        }
        let unix_ids: Vec<u32> = users
            .keys()
            .copied()
            .filter(|id| plan.files[id].r#type == FD_UNIXSK)
            .collect();
        let unix_comp = unix::components(&plan.files, &unix_ids);
        let mut by_key: BTreeMap<GroupKey, (Vec<u32>, BTreeMap<usize, ()>)> = BTreeMap::new();
        for (id, u) in &users {
            let g = by_key.entry(group_key(plan, *id, &unix_comp)).or_default();
            g.0.push(*id);
            g.1.extend(u.keys().map(|k| (*k, ())));
        }
        let parents: Vec<Option<usize>> = plan.tasks.iter().map(|t| t.parent).collect();
        let groups = by_key
            .into_iter()
            .map(|(key, (ids, u))| Group {
                order: ids
                    .iter()
                    .map(|i| depth.get(i).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0),
                key,
                ids,
                owner: lca(&parents, u.into_keys()),
            })
            .collect();
        Ok(Layout {
            scratch: base + users.len() as RawFd + 1,
            slot,
            groups,
            epoll_targets,
        })
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one, so that the slots fit
/// (the task's own limits are set later, before the blob).
fn raise_nofile() {
    if let Ok((_, hard)) = crate::sys::clone::prlimit_get(nix::unistd::Pid::from_raw(0), libc::RLIMIT_NOFILE as i32) {
        let _ = crate::sys::clone::prlimit_set(nix::unistd::Pid::from_raw(0), libc::RLIMIT_NOFILE as i32, hard, hard);
    }
}

/// Creates the descriptions of one group; returns them by file id.
fn create(plan: &Plan, g: &Group, lay: &Layout, efds: EngineFds) -> Result<Vec<(u32, OwnedFd)>> {
    let mut out = Vec::with_capacity(g.ids.len());
    match g.key {
        GroupKey::Ghost(remap) => {
            let ghost = &plan.fx.ghosts[&remap];
            let name = plan.files[&g.ids[0]]
                .reg
                .as_ref()
                .map(|r| r.name.as_str())
                .unwrap_or("?");
            let gfd = reg::make_ghost(ghost, name)?;
            for &id in &g.ids {
                out.push((id, reg::open(&plan.files[&id], Some(gfd.as_raw_fd()))?));
            }
        }
        GroupKey::Pipe(p) if plan.fx.inherit.contains_key(&format!("pipe:[{p}]")) => {
            let fd = plan.fx.inherit[&format!("pipe:[{p}]")];
            for &id in &g.ids {
                let n = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(lay.scratch))
                    .with_context(|| format!("dup of the inherited fd {fd} for pipe:[{p}]"))?;
                out.push((id, crate::sys::rawfd::own(n)));
            }
        }
        GroupKey::Pipe(p) => out = pipe::create_pipe(&plan.files, &g.ids, plan.fx.pipe_data.get(&p))?,
        GroupKey::Fifo(p) => out = pipe::create_fifo(&plan.files, &g.ids, plan.fx.fifo_data.get(&p))?,
        GroupKey::Unix(_) => {
            out = unix::create_group(&plan.files, &g.ids, &plan.fx.sk_queues, &plan.fx.sk_rights, |id| {
                lay.slot.get(&id).copied()
            })?
        }
        GroupKey::Memfd(i) => out = memfd::create(&plan.files, &g.ids, &plan.fx.memfds[&i])?,
        GroupKey::Pty(i) => out = tty::create_pair(&plan.files, &plan.ttys, &plan.fx.ttys, &g.ids, i)?,
        GroupKey::Single(id) => {
            let fe = &plan.files[&id];
            let fd = match fe.r#type {
                FD_REG => reg::open(fe, None)?,
                FD_TTY => {
                    if efds.tty < 0 {
                        bail!("file id {id} is a terminal but no terminal was given (--shell-job)");
                    }
                    let n = fcntl(efds.tty, FcntlArg::F_DUPFD_CLOEXEC(lay.scratch)).context("dup of the terminal")?;
                    crate::sys::rawfd::own(n)
                }
                FD_INOTIFY => inotify::create(fe.ify.as_ref().context("no inotify entry")?)?,
                // A placeholder: the task opens the pidfd before the blob.
                FD_PIDFD => crate::sys::rawfd::own(
                    nix::fcntl::open(
                        "/dev/null",
                        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .context("open /dev/null")?,
                ),
                crate::net::FD_INETSK => {
                    let q = plan.fx.udp_queues.get(&id).map_or(&[][..], Vec::as_slice);
                    crate::net::inet::create(fe, &plan.fx.tcp, plan.fx.tcp_close, q)?
                }
                crate::net::FD_NETLINKSK => crate::net::netlink::create(fe)?,
                crate::net::FD_PACKETSK => crate::net::packet::create(fe)?,
                FD_EVENTFD => anon::create_eventfd(fe.efd.as_ref().context("no eventfd entry")?)?,
                FD_SIGNALFD => anon::create_signalfd(fe.sgfd.as_ref().context("no signalfd entry")?)?,
                FD_TIMERFD => anon::create_timerfd(fe.tfd.as_ref().context("no timerfd entry")?)?,
                FD_EVENTPOLL => {
                    let ep = fe.epfd.as_ref().context("no eventpoll entry")?;
                    let targets = &lay.epoll_targets[&id];
                    anon::create_epoll(ep, |tfd| targets.get(&tfd).map(|t| lay.slot[t]), lay.scratch)?
                }
                t => bail!("file id {id} has a type ({t}) this cryo cannot restore yet"),
            };
            out.push((id, fd));
        }
    }
    Ok(out)
}

/// Parks freshly created descriptions at their slots. All are first
/// moved above the slots, so that none sits on a slot another one is
/// about to take.
fn park(made: Vec<(u32, OwnedFd)>, lay: &Layout) -> Result<()> {
    let mut moved = Vec::with_capacity(made.len());
    for (id, fd) in made {
        let n = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(lay.scratch)).context("F_DUPFD")?;
        drop(fd);
        moved.push((id, crate::sys::rawfd::own(n)));
    }
    for (id, fd) in moved {
        let s = lay.slot[&id];
        unistd::dup2(fd.as_raw_fd(), s).with_context(|| format!("dup2 to slot {s}"))?;
    }
    Ok(())
}

/// The slot fd of every description, where a task finds it between
/// `setup_fds` and `jump`.
pub(crate) fn slots(plan: &Plan, efds: EngineFds) -> Result<HashMap<u32, RawFd>> {
    Ok(Layout::compute(plan, efds.tmp_base)?.slot)
}

/// Puts every fd of task `idx` at its number (see the module doc).
pub(crate) fn setup_fds(plan: &Plan, idx: usize, efds: EngineFds) -> Result<()> {
    raise_nofile();
    let lay = Layout::compute(plan, efds.tmp_base)?;
    let t = &plan.tasks[idx];
    let mut mine: Vec<&Group> = lay.groups.iter().filter(|g| g.owner == idx).collect();
    mine.sort_by_key(|g| (g.order, g.key));
    for g in mine {
        let made = create(plan, g, &lay, efds).with_context(|| match g.ids.as_slice() {
            [id] => format!("file id {id}"),
            ids => format!("file ids {ids:?}"),
        })?;
        park(made, &lay)?;
    }
    // Close everything inherited below the engine's descriptors.
    for fd in proc::fds(std::process::id())? {
        if fd < efds.high {
            let _ = unistd::close(fd);
        }
    }
    for f in &t.fds {
        let s = lay.slot[&f.id];
        unistd::dup2(s, f.fd as RawFd).with_context(|| format!("dup2 to fd {}", f.fd))?;
        let flags = if f.flags & 1 != 0 {
            FdFlag::FD_CLOEXEC
        } else {
            FdFlag::empty()
        };
        fcntl(f.fd as RawFd, FcntlArg::F_SETFD(flags))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::lca;

    #[test]
    fn lowest_common_ancestor() {
        //      0
        //    1   2
        //   3 4    5
        //  6
        let parents = [None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(3)];
        assert_eq!(lca(&parents, [6]), 6);
        assert_eq!(lca(&parents, [6, 4]), 1);
        assert_eq!(lca(&parents, [4, 6]), 1);
        assert_eq!(lca(&parents, [3, 6]), 3);
        assert_eq!(lca(&parents, [6, 5]), 0);
        assert_eq!(lca(&parents, [3, 4, 6, 1]), 1);
        assert_eq!(lca(&parents, [2, 5]), 2);
    }
}
