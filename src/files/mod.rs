//! Open files: the fd table of each task and the shared `files.img`.
//!
//! Dump side: every fd is classified from the object behind
//! `/proc/PID/fd/N`; fds that share one open file description (dup, fork
//! inheritance) are found with kcmp(KCMP_FILE) and get one file id. Restore
//! side: see `restore::task` (each task reopens its files by path, or takes
//! a description it inherited from its parent when the ids match).

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::image::pb;
use crate::proc;
use crate::sys::{clone as sysc, tty as systty};

/// fd_types values (image-format.md §3.15).
pub const FD_REG: i32 = 1;
pub const FD_TTY: i32 = 11;

const UNIX98_PTY_SLAVE_MAJOR: u64 = 136;
const TTYAUX_MAJOR: u64 = 5;
const TTY_MAJOR: u64 = 4;

/// What an fd refers to, as far as the dump needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    Regular,
    Directory,
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

/// Classifies an fd from the link text and the metadata of its target.
pub fn classify(link: &str, md: Option<&fs::Metadata>) -> FdKind {
    if link.starts_with("pipe:[") {
        return FdKind::Pipe;
    }
    if link.starts_with("socket:[") {
        return FdKind::Socket;
    }
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return FdKind::AnonInode(rest.to_string());
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

/// The dump-wide table of file objects (files.img) and ttys (tty-info.img).
#[derive(Default)]
pub struct FileTable {
    pub entries: Vec<pb::FileEntry>,
    pub tty_infos: Vec<pb::TtyInfoEntry>,
    next_id: u32,
    by_path: HashMap<String, u32>,
    /// (pid, fd, dev, ino, id) of every fd dumped so far, for kcmp.
    seen: Vec<(i32, i32, u64, u64, u32)>,
    tty_info_by_rdev: HashMap<u64, u32>,
}

fn fown0() -> pb::FownEntry {
    pb::FownEntry {
        uid: 0,
        euid: 0,
        signum: 0,
        pid_type: 0,
        pid: 0,
    }
}

impl FileTable {
    fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// A REG entry for a path not tied to an open fd (exe, mapped file,
    /// cwd, root, a tty's path). Deduplicated by path.
    pub fn reg_path(&mut self, path: &str, flags: u32, pos: u64) -> Result<u32> {
        if flags == 0 && pos == 0 {
            if let Some(&id) = self.by_path.get(path) {
                return Ok(id);
            }
        }
        let md = fs::metadata(path).ok();
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
        for fd in proc::fds(pid as u32)? {
            let lpath = format!("/proc/{pid}/fd/{fd}");
            let link = match fs::read_link(&lpath) {
                Ok(l) => l.to_string_lossy().into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("Cannot read {lpath}")),
            };
            let md = fs::metadata(&lpath).ok();
            let info = proc::fdinfo::read(pid as u32, fd)?;
            let kind = classify(&link, md.as_ref());
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
            let (id, ty) = match (shared, &kind) {
                (Some(id), FdKind::PtySlave(_)) => (id, FD_TTY),
                (Some(id), _) => (id, FD_REG),
                (None, FdKind::Regular | FdKind::Directory | FdKind::CharDev) => {
                    if link.ends_with(" (deleted)") {
                        bail!("pid {pid} fd {fd}: the file {link} was deleted; unlinked files are not supported yet");
                    }
                    let id = self.new_id();
                    self.entries.push(pb::FileEntry {
                        r#type: FD_REG,
                        id,
                        reg: Some(pb::RegFileEntry {
                            id,
                            flags,
                            pos: info.pos,
                            fown: (fown0()),
                            name: link.clone(),
                            size: md.as_ref().filter(|m| m.is_file()).map(|m| m.len()),
                            mode: md.as_ref().map(|m| m.mode()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                    (id, FD_REG)
                }
                (None, FdKind::PtySlave(index)) => {
                    let md = md.as_ref().expect("pty has metadata");
                    let owned_by_tree = stat.tty_nr as u64 == md.rdev() && stat.session == pid as u32;
                    if !shell_job && !owned_by_tree {
                        bail!(
                            "pid {pid} fd {fd} is the terminal {link}, which belongs to a session outside the dumped tree; pass --shell-job"
                        );
                    }
                    let info_id = self.tty_info(*index, &link, md, stat)?;
                    let regf = self.reg_path(&link, 0, 0)?;
                    let id = self.new_id();
                    self.entries.push(pb::FileEntry {
                        r#type: FD_TTY,
                        id,
                        tty: Some(pb::TtyFileEntry {
                            id,
                            tty_info_id: info_id,
                            flags,
                            fown: (fown0()),
                            regf_id: Some(regf),
                        }),
                        ..Default::default()
                    });
                    (id, FD_TTY)
                }
                (None, FdKind::OtherTty) => {
                    bail!("pid {pid} fd {fd}: terminal {link} is not supported yet (only pseudo-terminal slaves)")
                }
                (None, FdKind::Pipe) => bail!("pid {pid} fd {fd}: pipes are not supported yet ({link})"),
                (None, FdKind::Fifo) => bail!("pid {pid} fd {fd}: FIFOs are not supported yet ({link})"),
                (None, FdKind::Socket) => bail!("pid {pid} fd {fd}: sockets are not supported yet ({link})"),
                (None, FdKind::AnonInode(k)) => {
                    bail!("pid {pid} fd {fd}: {k} descriptors are not supported yet")
                }
                (None, FdKind::Other(_)) => bail!("pid {pid} fd {fd}: unsupported file kind ({link})"),
            };
            self.seen.push((pid, fd, dev, ino, id));
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

    fn tty_info(&mut self, index: u32, path: &str, md: &fs::Metadata, stat: &proc::stat::Stat) -> Result<u32> {
        if let Some(&id) = self.tty_info_by_rdev.get(&md.rdev()) {
            return Ok(id);
        }
        let id = index << 1;
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags_noctty()
            .open(path)
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
mod tests {
    use super::*;

    #[test]
    fn classify_links() {
        assert_eq!(classify("pipe:[123]", None), FdKind::Pipe);
        assert_eq!(classify("socket:[9]", None), FdKind::Socket);
        assert_eq!(
            classify("anon_inode:[eventfd]", None),
            FdKind::AnonInode("[eventfd]".into())
        );
        let md = fs::metadata("/dev/null").unwrap();
        assert_eq!(classify("/dev/null", Some(&md)), FdKind::CharDev);
        let md = fs::metadata("/").unwrap();
        assert_eq!(classify("/", Some(&md)), FdKind::Directory);
        let md = fs::metadata("/etc/hostname")
            .or_else(|_| fs::metadata("/etc/passwd"))
            .unwrap();
        assert_eq!(classify("/etc/passwd", Some(&md)), FdKind::Regular);
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
