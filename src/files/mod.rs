//! Open files: the fd table of each task and the shared `files.img`.
//!
//! Dump side ([`FileTable::dump_fds`]): every fd is classified from the
//! object behind `/proc/PID/fd/N`; fds that share one open file
//! description (dup, fork inheritance, SCM_RIGHTS) are found with
//! kcmp(KCMP_FILE) and get one file id. Each kind has its own module that
//! holds both its dump and its restore side (`reg`, `pipe`, ...). Restore
//! side: [`restore`] creates every description once, in the lowest common
//! ancestor of the tasks that use it, and hands it down by fork.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::image::{self, pb, ImageDir, Kind};
use crate::proc;
use crate::proc::fdinfo::FdInfo;
use crate::sys::{clone as sysc, tty as systty};

pub mod anon;
pub mod fown;
pub mod inotify;
pub mod locks;
pub mod memfd;
pub mod pidfd;
pub mod pipe;
pub mod reg;
pub mod restore;
pub mod shmem;
pub mod tty;
pub mod unix;

/// fd_types values (image-format.md §3.15).
pub const FD_REG: i32 = 1;
pub const FD_PIPE: i32 = 2;
pub const FD_FIFO: i32 = 3;
pub const FD_UNIXSK: i32 = 5;
pub const FD_EVENTFD: i32 = 6;
pub const FD_EVENTPOLL: i32 = 7;
pub const FD_INOTIFY: i32 = 8;
pub const FD_SIGNALFD: i32 = 9;
pub const FD_TTY: i32 = 11;
pub const FD_TIMERFD: i32 = 17;
pub const FD_MEMFD: i32 = 18;
pub const FD_PIDFD: i32 = 20;

const UNIX98_PTY_SLAVE_MAJOR: u64 = 136;
const TTYAUX_MAJOR: u64 = 5;
const TTY_MAJOR: u64 = 4;

/// What an fd refers to, as far as the dump needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    Regular,
    Directory,
    /// An O_PATH descriptor (of any file type): only the path matters.
    Path,
    /// A character device that is not a terminal (/dev/null, /dev/zero...).
    CharDev,
    /// A pty slave (/dev/pts/N) with its index.
    PtySlave(u32),
    /// Any other terminal (/dev/tty, a VT, the console, a pty master).
    OtherTty,
    Pipe,
    Fifo,
    Socket,
    AnonInode(String),
    Other(String),
}

pub fn major(rdev: u64) -> u64 {
    libc::major(rdev) as u64
}
pub fn minor(rdev: u64) -> u64 {
    libc::minor(rdev) as u64
}

/// Classifies an fd from the link text, the metadata of its target and
/// its open flags.
pub fn classify(link: &str, md: Option<&fs::Metadata>, flags: u32) -> FdKind {
    if link.starts_with("pipe:[") {
        return FdKind::Pipe;
    }
    if link.starts_with("socket:[") {
        return FdKind::Socket;
    }
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return FdKind::AnonInode(rest.to_string());
    }
    if flags & libc::O_PATH as u32 != 0 && link.starts_with('/') {
        return FdKind::Path;
    }
    let Some(md) = md else {
        return FdKind::Other(link.to_string());
    };
    let ft = md.file_type();
    if ft.is_file() {
        FdKind::Regular
    } else if ft.is_dir() {
        FdKind::Directory
    } else if ft.is_fifo() {
        FdKind::Fifo
    } else if ft.is_socket() {
        FdKind::Socket
    } else if ft.is_char_device() {
        let rdev = md.rdev();
        match major(rdev) {
            m if (UNIX98_PTY_SLAVE_MAJOR..UNIX98_PTY_SLAVE_MAJOR + 8).contains(&m) => {
                let idx = (m - UNIX98_PTY_SLAVE_MAJOR) * 256 + minor(rdev);
                FdKind::PtySlave(idx as u32)
            }
            TTY_MAJOR => FdKind::OtherTty,
            TTYAUX_MAJOR => FdKind::OtherTty,
            _ => FdKind::CharDev,
        }
    } else {
        FdKind::Other(link.to_string())
    }
}

/// One fd being dumped, with what /proc says about it.
pub(crate) struct FdCtx<'a> {
    pub pid: i32,
    pub fd: i32,
    /// readlink of /proc/PID/fd/N.
    pub link: &'a str,
    /// stat of /proc/PID/fd/N (the object behind it), if it worked.
    pub md: Option<&'a fs::Metadata>,
    pub info: &'a FdInfo,
    /// File status flags (F_GETFL) without O_CLOEXEC.
    pub flags: u32,
}

impl FdCtx<'_> {
    /// `/proc/PID/fd/N`.
    pub fn proc_path(&self) -> String {
        format!("/proc/{}/fd/{}", self.pid, self.fd)
    }
}

/// An extra image the file dumpers produce, written at the end.
pub(crate) struct ExtraImage {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The dump-wide table of file objects (files.img), ttys (tty-info.img)
/// and the images that go with them (ghost files, pipe data...).
#[derive(Default)]
pub struct FileTable {
    pub entries: Vec<pb::FileEntry>,
    pub tty_infos: Vec<pb::TtyInfoEntry>,
    next_id: u32,
    by_path: HashMap<String, u32>,
    /// (pid, fd, dev, ino, id) of every fd dumped so far, for kcmp.
    seen: Vec<(i32, i32, u64, u64, u32)>,
    /// fd_types of every file id given to an fd.
    types: HashMap<u32, i32>,
    tty_info_by_rdev: HashMap<u64, u32>,
    pidfds: HashMap<i32, OwnedFd>,
    /// Ghost files by (dev, ino): their remap id.
    ghost_ids: HashMap<(u64, u64), u32>,
    /// Ids of deleted files reached only through mappings or exe, by
    /// (dev, ino, open flags).
    mapped_ghosts: HashMap<(u64, u64, u32), u32>,
    remaps: Vec<pb::RemapFilePathEntry>,
    pipe_data: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    fifo_data: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    /// Pipe inodes whose data was taken already.
    pipes_done: std::collections::HashSet<u64>,
    pub(crate) extra_images: Vec<ExtraImage>,
    /// Every unix socket of the net namespace (sock_diag), on first use.
    unix_diag: Option<HashMap<u32, unix::Diag>>,
    unix_dumped: Vec<unix::Dumped>,
    pub(crate) sk_queues: Vec<(pb::SkPacketEntry, Vec<u8>)>,
    /// memfd inodes by (dev, ino): their inode id.
    memfd_inodes: HashMap<(u64, u64), u32>,
    memfd_entries: Vec<pb::MemfdInodeEntry>,
    /// For a tree in its own mount namespace, "/proc/PID/root": paths the
    /// tree names are looked up through it.
    pub root_prefix: Option<String>,
    /// Anonymous shared memory objects saved so far, by (dev, ino).
    shmem_done: HashMap<(u64, u64), ()>,
    /// File locks (filelocks.img) and what they were deduplicated by.
    locks: Vec<pb::FileLockEntry>,
    lock_seen: locks::Seen,
    /// (file id, holder pid, fd) of every pidfd, until resolved.
    pidfd_holders: Vec<(u32, i32, i32)>,
    /// Inet sockets: diag cache, repaired sockets, network locks.
    pub(crate) net: crate::net::DumpNet,
    /// Raw files (memfd pages), not in the manifest.
    raw_images: Vec<ExtraImage>,
    /// pty pairs and controlling terminals (see `tty`).
    pub(crate) tty_state: tty::DumpState,
    /// Owners (F_SETOWN) of descriptions, until resolved (see `fown`).
    owners: Vec<fown::Owner>,
    /// Descriptors in flight in socket queues, as received by cryo.
    inflight: Vec<OwnedFd>,
}

pub(crate) fn fown0() -> pb::FownEntry {
    pb::FownEntry {
        uid: 0,
        euid: 0,
        signum: 0,
        pid_type: 0,
        pid: 0,
    }
}

impl FileTable {
    pub(crate) fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// A duplicate of fd `fd` of the (frozen) task `pid`: the same open
    /// file description, close-on-exec in cryo.
    pub(crate) fn dup_fd(&mut self, pid: i32, fd: i32) -> Result<OwnedFd> {
        if let std::collections::hash_map::Entry::Vacant(v) = self.pidfds.entry(pid) {
            v.insert(sysc::pidfd_open(Pid::from_raw(pid)).with_context(|| format!("pidfd_open of pid {pid}"))?);
        }
        let p = &self.pidfds[&pid];
        sysc::pidfd_getfd(p.as_fd(), fd).with_context(|| format!("pidfd_getfd of pid {pid} fd {fd}"))
    }

    /// A REG entry, with its content saved as a ghost file, for a deleted
    /// file `pid` maps or runs (see `reg::dump_unlinked_mapping`).
    pub fn unlinked_mapping(&mut self, pid: i32, link: &str, proc_path: &str, flags: u32) -> Result<u32> {
        reg::dump_unlinked_mapping(self, pid, link, proc_path, flags)
    }

    /// A REG entry for a path not tied to an open fd (exe, mapped file,
    /// cwd, root, a tty's path). Deduplicated by path.
    pub fn reg_path(&mut self, path: &str, flags: u32, pos: u64) -> Result<u32> {
        if flags == 0 && pos == 0 {
            if let Some(&id) = self.by_path.get(path) {
                return Ok(id);
            }
        }
        let md = match &self.root_prefix {
            Some(r) => fs::metadata(format!("{r}{path}")).ok(),
            None => fs::metadata(path).ok(),
        };
        let id = self.new_id();
        self.entries.push(pb::FileEntry {
            r#type: FD_REG,
            id,
            reg: Some(pb::RegFileEntry {
                id,
                flags,
                pos,
                fown: (fown0()),
                name: path.to_string(),
                size: md.as_ref().filter(|m| m.is_file()).map(|m| m.len()),
                mode: md.as_ref().map(|m| m.mode()),
                ..Default::default()
            }),
            ..Default::default()
        });
        if flags == 0 && pos == 0 {
            self.by_path.insert(path.to_string(), id);
        }
        Ok(id)
    }

    /// Dumps the fd table of `pid`.
    pub fn dump_fds(&mut self, pid: i32, shell_job: bool, stat: &proc::stat::Stat) -> Result<Vec<pb::FdinfoEntry>> {
        let mut out = Vec::new();
        self.tty_state.note_task(stat);
        for fd in proc::fds(pid as u32)? {
            let lpath = format!("/proc/{pid}/fd/{fd}");
            let link = match fs::read_link(&lpath) {
                Ok(l) => l.to_string_lossy().into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("Cannot read {lpath}")),
            };
            let md = fs::metadata(&lpath).ok();
            let info = proc::fdinfo::read(pid as u32, fd)?;
            let kind = classify(&link, md.as_ref(), info.flags);
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let flags = info.flags & !(libc::O_CLOEXEC as u32);
            let (dev, ino) = md.as_ref().map(|m| (m.dev(), m.ino())).unwrap_or((0, 0));

            // One open file description shared with an fd dumped before?
            let mut shared = None;
            for &(p2, fd2, d2, i2, id2) in &self.seen {
                if d2 == dev
                    && i2 == ino
                    && sysc::kcmp(
                        Pid::from_raw(pid),
                        Pid::from_raw(p2),
                        sysc::kcmp_type::FILE,
                        fd as u64,
                        fd2 as u64,
                    )
                    .map(|r| r == 0)
                    .unwrap_or(false)
                {
                    shared = Some(id2);
                    break;
                }
            }
            let ctx = FdCtx {
                pid,
                fd,
                link: &link,
                md: md.as_ref(),
                info: &info,
                flags,
            };
            let (id, ty) = match shared {
                Some(id) => (id, self.types[&id]),
                None => {
                    let (id, ty) = self.dump_one(&ctx, &kind, shell_job, stat)?;
                    self.note_owner(pid, fd, id)?;
                    (id, ty)
                }
            };
            self.types.insert(id, ty);
            self.seen.push((pid, fd, dev, ino, id));
            let lock_lines: Vec<&str> = info.all("lock").collect();
            if !lock_lines.is_empty() {
                self.note_locks(pid, fd, id, &lock_lines)?;
            }
            out.push(pb::FdinfoEntry {
                id,
                flags: u32::from(cloexec),
                r#type: ty,
                fd: fd as u32,
                xattr_security_selinux: None,
            });
        }
        Ok(out)
    }

    /// Dumps a description seen for the first time; returns its id and type.
    fn dump_one(&mut self, f: &FdCtx, kind: &FdKind, shell_job: bool, stat: &proc::stat::Stat) -> Result<(u32, i32)> {
        let (pid, fd, link) = (f.pid, f.fd, f.link);
        Ok(match kind {
            FdKind::Regular if memfd::is_memfd(link) => (memfd::dump(self, f)?, FD_MEMFD),
            FdKind::Regular | FdKind::Directory | FdKind::CharDev | FdKind::Path => (reg::dump(self, f)?, FD_REG),
            FdKind::PtySlave(index) => {
                let md = f.md.expect("pty has metadata");
                let owned_by_tree = stat.tty_nr as u64 == md.rdev() && stat.session == pid as u32;
                if !shell_job && !owned_by_tree {
                    // Fine if its master is in the dump (checked at the end).
                    self.tty_state.defer_unowned(pid, fd, link, *index);
                }
                let info_id = self.tty_info(*index, link, md, stat)?;
                let regf = self.reg_path(link, 0, 0)?;
                let id = self.new_id();
                self.entries.push(pb::FileEntry {
                    r#type: FD_TTY,
                    id,
                    tty: Some(pb::TtyFileEntry {
                        id,
                        tty_info_id: info_id,
                        flags: f.flags,
                        fown: (fown0()),
                        regf_id: Some(regf),
                    }),
                    ..Default::default()
                });
                (id, FD_TTY)
            }
            FdKind::OtherTty
                if f.md
                    .is_some_and(|m| (major(m.rdev()), minor(m.rdev())) == tty::PTMX_RDEV) =>
            {
                (tty::dump_master(self, f)?, FD_TTY)
            }
            FdKind::OtherTty => {
                bail!("pid {pid} fd {fd}: terminal {link} is not supported yet (only pseudo-terminal slaves)")
            }
            FdKind::Pipe => (pipe::dump_pipe(self, f)?, FD_PIPE),
            FdKind::Fifo => (pipe::dump_fifo(self, f)?, FD_FIFO),
            FdKind::Socket => crate::net::dump(self, f)?,
            FdKind::AnonInode(k) => match k.as_str() {
                "[eventfd]" => (anon::dump_eventfd(self, f)?, FD_EVENTFD),
                "[signalfd]" => (anon::dump_signalfd(self, f)?, FD_SIGNALFD),
                "[timerfd]" => (anon::dump_timerfd(self, f)?, FD_TIMERFD),
                "[eventpoll]" => (anon::dump_epoll(self, f)?, FD_EVENTPOLL),
                "inotify" => (inotify::dump(self, f)?, FD_INOTIFY),
                "[pidfd]" => (pidfd::dump(self, f)?, FD_PIDFD),
                _ => bail!("pid {pid} fd {fd}: {k} descriptors are not supported (anon_inode:{k})"),
            },
            FdKind::Other(_) => bail!("pid {pid} fd {fd}: unsupported file kind ({link})"),
        })
    }

    /// Writes files.img and every image that goes with the file entries
    /// (tty-info, remap-fpath, ghost files, pipe and FIFO data...).
    pub fn write_images(&mut self, dir: &ImageDir) -> Result<()> {
        unix::check_peers(self)?;
        let tty_data = tty::finish(self)?;
        tty::write_data(dir, &tty_data)?;
        dir.write_image(image::names::FILES, Kind::Files, &self.entries)?;
        if !self.tty_infos.is_empty() {
            dir.write_image(image::names::TTY_INFO, Kind::TtyInfo, &self.tty_infos)?;
        }
        if !self.remaps.is_empty() {
            dir.write_image(image::names::REMAP_FPATH, Kind::RemapFpath, &self.remaps)?;
        }
        if !self.sk_queues.is_empty() {
            let mut w = image::ImageWriter::new(Kind::SkQueues);
            for (e, data) in &self.sk_queues {
                w.write_entry(e)?;
                w.write_raw(data);
            }
            dir.save(image::names::SK_QUEUES, w)?;
        }
        for (name, kind, items) in [
            (image::names::PIPES_DATA, Kind::PipesData, &self.pipe_data),
            (image::names::FIFO_DATA, Kind::FifoData, &self.fifo_data),
        ] {
            if items.is_empty() {
                continue;
            }
            let mut w = image::ImageWriter::new(kind);
            for (e, data) in items {
                w.write_entry(e)?;
                w.write_raw(data);
            }
            dir.save(name, w)?;
        }
        if !self.memfd_entries.is_empty() {
            dir.write_image(image::names::MEMFD, Kind::MemfdInode, &self.memfd_entries)?;
        }
        if !self.locks.is_empty() {
            dir.write_image(image::names::FILE_LOCKS, Kind::FileLocks, &self.locks)?;
        }
        for x in &self.extra_images {
            dir.write_bytes(&x.name, &x.bytes)?;
        }
        for x in &self.raw_images {
            use std::io::Write;
            let mut f = dir.create_raw(&x.name)?;
            f.write_all(&x.bytes)
                .with_context(|| format!("Cannot write {}", x.name))?;
        }
        Ok(())
    }

    fn tty_info(&mut self, index: u32, path: &str, md: &fs::Metadata, stat: &proc::stat::Stat) -> Result<u32> {
        if let Some(&id) = self.tty_info_by_rdev.get(&md.rdev()) {
            return Ok(id);
        }
        let id = index << 1;
        let open_path = match &self.root_prefix {
            Some(r) => format!("{r}{path}"),
            None => path.to_string(),
        };
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags_noctty()
            .open(&open_path)
            .with_context(|| format!("Cannot open the terminal {path}"))?;
        let t = systty::get_termios(f.as_fd()).with_context(|| format!("TCGETS on {path}"))?;
        let ws = systty::get_winsize(f.as_fd()).with_context(|| format!("TIOCGWINSZ on {path}"))?;
        let is_ctty = stat.tty_nr as u64 == md.rdev();
        self.tty_infos.push(pb::TtyInfoEntry {
            id,
            r#type: 1, // PTY
            locked: false,
            exclusive: false,
            packet_mode: false,
            sid: if is_ctty { stat.session } else { 0 },
            pgrp: if is_ctty { stat.tpgid.max(0) as u32 } else { 0 },
            rdev: md.rdev() as u32,
            termios: Some(termios_to_pb(&t)),
            termios_locked: None,
            winsize: Some(pb::WinsizeEntry {
                ws_row: u32::from(ws.ws_row),
                ws_col: u32::from(ws.ws_col),
                ws_xpixel: u32::from(ws.ws_xpixel),
                ws_ypixel: u32::from(ws.ws_ypixel),
            }),
            pty: Some(pb::TtyPtyEntry { index }),
            dev: Some(md.dev() as u32),
            uid: Some(md.uid()),
            gid: Some(md.gid()),
        });
        self.tty_info_by_rdev.insert(md.rdev(), id);
        Ok(id)
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}
impl NoCtty for fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
    }
}

/// CRIU's termios encoding: the 32 c_cc bytes packed little-endian into
/// the first 8 of 19 u32 words (the rest zero).
pub fn termios_to_pb(t: &libc::termios) -> pb::TermiosEntry {
    let mut cc = vec![0u32; 19];
    for (i, chunk) in t.c_cc.chunks(4).enumerate().take(8) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        cc[i] = u32::from_le_bytes(w);
    }
    pb::TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: u32::from(t.c_line),
        c_ispeed: 0,
        c_ospeed: 0,
        c_cc: cc,
    }
}

/// Inverse of [`termios_to_pb`] applied onto an existing termios.
pub fn termios_from_pb(p: &pb::TermiosEntry, t: &mut libc::termios) {
    t.c_iflag = p.c_iflag;
    t.c_oflag = p.c_oflag;
    t.c_cflag = p.c_cflag;
    t.c_lflag = p.c_lflag;
    t.c_line = p.c_line as u8;
    let mut bytes = Vec::with_capacity(32);
    for w in p.c_cc.iter().take(8) {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    let n = bytes.len().min(t.c_cc.len());
    t.c_cc[..n].copy_from_slice(&bytes[..n]);
}

#[cfg(test)]
mod kind_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_links() {
        assert_eq!(classify("pipe:[123]", None, 0), FdKind::Pipe);
        assert_eq!(classify("socket:[9]", None, 0), FdKind::Socket);
        assert_eq!(
            classify("anon_inode:[eventfd]", None, 2),
            FdKind::AnonInode("[eventfd]".into())
        );
        let md = fs::metadata("/dev/null").unwrap();
        assert_eq!(classify("/dev/null", Some(&md), 1), FdKind::CharDev);
        assert_eq!(classify("/dev/null", Some(&md), libc::O_PATH as u32), FdKind::Path);
        let md = fs::metadata("/").unwrap();
        assert_eq!(classify("/", Some(&md), 0), FdKind::Directory);
        let md = fs::metadata("/etc/hostname")
            .or_else(|_| fs::metadata("/etc/passwd"))
            .unwrap();
        assert_eq!(classify("/etc/passwd", Some(&md), 0), FdKind::Regular);
    }

    #[test]
    fn termios_packing() {
        // SAFETY-free: zeroed termios built field by field.
        let mut t: libc::termios = libc::termios {
            c_iflag: 1,
            c_oflag: 2,
            c_cflag: 3,
            c_lflag: 4,
            c_line: 0,
            c_cc: [0; 32],
            c_ispeed: 0,
            c_ospeed: 0,
        };
        t.c_cc[0] = 3;
        t.c_cc[1] = 0x1c;
        t.c_cc[2] = 0x7f;
        t.c_cc[3] = 0x15;
        t.c_cc[31] = 9;
        let p = termios_to_pb(&t);
        assert_eq!(p.c_cc.len(), 19);
        assert_eq!(p.c_cc[0], 0x157F_1C03);
        let mut back = libc::termios { c_cc: [0; 32], ..t };
        back.c_iflag = 0;
        termios_from_pb(&p, &mut back);
        assert_eq!(back.c_cc, t.c_cc);
        assert_eq!(back.c_iflag, 1);
    }
}
