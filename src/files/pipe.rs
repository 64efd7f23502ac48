//! Pipes and FIFOs.
//!
//! Dump: each open end is a `pipe_entry` (or a `fifo_entry` whose REG
//! entry carries the path and flags), keyed by the pipe's inode number.
//! The bytes buffered in the pipe are read without consuming them: the
//! pipe is opened read-only through `/proc/PID/fd/N` (non-blocking, so it
//! works for a write end too) and `tee`d, in one call, into a scratch
//! pipe at least as big; they go to pipes-data.img (fifo-data.img) with
//! the pipe's size (F_GETPIPE_SZ).
//!
//! Restore: one group per pipe inode. A pipe is created with pipe2, sized,
//! refilled, and its ends become the descriptions (more descriptions of
//! the same end are reopened through /proc/self/fd). A FIFO is opened
//! O_RDWR first (this never blocks), refilled through that, and every
//! description is opened by path with O_NONBLOCK, then given its flags.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;

use super::{fown0, FdCtx, FileTable, FD_FIFO, FD_PIPE, FD_REG};
use crate::image::pb;
use crate::sys::fdops;

/// The capacity of a fresh pipe.
pub const DEFAULT_PIPE_SIZE: u32 = 65536;

/// File status flags set with F_SETFL on restore.
const SETFL_FLAGS: u32 = (libc::O_NONBLOCK | libc::O_APPEND | libc::O_DIRECT | libc::O_ASYNC | libc::O_NOATIME) as u32;

/// Buffered bytes and size of a pipe, read without consuming them.
fn peek_pipe(f: &FdCtx) -> Result<(u32, Vec<u8>)> {
    let path = f.proc_path();
    let src = nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("Cannot open {path} to read the pipe"))?;
    let src = crate::sys::rawfd::own(src);
    let size = fcntl(src.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).context("F_GETPIPE_SZ")? as u32;
    let queued = fdops::fionread(src.as_fd()).context("FIONREAD on the pipe")?;
    if queued == 0 {
        return Ok((size, Vec::new()));
    }
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).context("pipe2")?;
    fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size as i32)).context("F_SETPIPE_SZ of the scratch pipe")?;
    let n = fdops::tee(src.as_fd(), w.as_fd(), usize::MAX >> 1, libc::SPLICE_F_NONBLOCK).context("tee")?;
    if n != queued {
        bail!("tee copied {n} of the {queued} bytes in the pipe");
    }
    let mut data = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = nix::unistd::read(r.as_raw_fd(), &mut data[got..]).context("read of the scratch pipe")?;
        if k == 0 {
            bail!("the scratch pipe ended after {got} of {n} bytes");
        }
        got += k;
    }
    Ok((size, data))
}

impl FileTable {
    /// Records the data and size of pipe inode `ino` once.
    fn pipe_data_once(&mut self, f: &FdCtx, fifo: bool) -> Result<()> {
        let ino = f.md.map(|m| m.ino()).unwrap_or(0);
        if !self.pipes_done.insert(ino) {
            return Ok(());
        }
        let (size, data) =
            peek_pipe(f).with_context(|| format!("pid {} fd {}: cannot read the pipe's buffer", f.pid, f.fd))?;
        if data.is_empty() && size == DEFAULT_PIPE_SIZE {
            return Ok(());
        }
        let e = pb::PipeDataEntry {
            pipe_id: ino as u32,
            bytes: data.len() as u32,
            size: Some(size),
        };
        if fifo {
            self.fifo_data.push((e, data));
        } else {
            self.pipe_data.push((e, data));
        }
        Ok(())
    }
}

/// Dumps one end of a pipe.
pub(crate) fn dump_pipe(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let ino =
        f.md.map(|m| m.ino())
            .with_context(|| format!("pid {} fd {}: cannot stat {}", f.pid, f.fd, f.link))?;
    t.pipe_data_once(f, false)?;
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_PIPE,
        id,
        pipe: Some(pb::PipeEntry {
            id,
            pipe_id: ino as u32,
            flags: f.flags,
            fown: fown0(),
        }),
        ..Default::default()
    });
    Ok(id)
}

/// Dumps one opened end of a FIFO.
pub(crate) fn dump_fifo(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let md =
        f.md.with_context(|| format!("pid {} fd {}: cannot stat {}", f.pid, f.fd, f.link))?;
    if !f.link.starts_with('/') || md.nlink() == 0 {
        bail!(
            "pid {} fd {}: the FIFO {} was deleted; not supported",
            f.pid,
            f.fd,
            f.link
        );
    }
    t.pipe_data_once(f, true)?;
    let regf = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_REG,
        id: regf,
        reg: Some(pb::RegFileEntry {
            id: regf,
            flags: f.flags,
            pos: 0,
            fown: fown0(),
            name: f.link.to_string(),
            mode: Some(md.mode()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_FIFO,
        id,
        fifo: Some(pb::FifoEntry {
            id,
            pipe_id: md.ino() as u32,
            regf_id: Some(regf),
        }),
        ..Default::default()
    });
    Ok(id)
}

// ---- restore ----------------------------------------------------------------

/// Size and content of one pipe or FIFO.
#[derive(Debug, Clone, Default)]
pub struct PipeData {
    pub size: Option<u32>,
    pub data: Vec<u8>,
}

/// Reads pipes-data.img or fifo-data.img into a map by pipe id.
pub fn load_data(dir: &crate::image::ImageDir, name: &str, kind: crate::image::Kind) -> Result<HashMap<u32, PipeData>> {
    let mut m = HashMap::new();
    if !dir.exists(name) {
        return Ok(m);
    }
    let bytes = dir.read_bytes(name)?;
    let path = dir.path().join(name).display().to_string();
    let mut r = crate::image::ImageReader::new(&path, &bytes, kind)?;
    while let Some(e) = r.next_entry::<pb::PipeDataEntry>()? {
        let data = r.read_raw(e.bytes as usize)?.to_vec();
        if let Some(s) = e.size {
            if (data.len() as u64) > u64::from(s) {
                bail!(
                    "{path}: pipe {} holds {} bytes but its size is {s}",
                    e.pipe_id,
                    data.len()
                );
            }
        }
        m.insert(e.pipe_id, PipeData { size: e.size, data });
    }
    Ok(m)
}

fn set_flags(fd: &OwnedFd, flags: u32) -> Result<()> {
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate((flags & SETFL_FLAGS) as i32)),
    )
    .context("F_SETFL")?;
    Ok(())
}

fn fill(holder: &OwnedFd, pd: Option<&PipeData>, what: &str) -> Result<()> {
    let Some(pd) = pd else { return Ok(()) };
    if let Some(s) = pd.size {
        if s != DEFAULT_PIPE_SIZE {
            fcntl(holder.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(s as i32))
                .with_context(|| format!("F_SETPIPE_SZ({s}) of {what}"))?;
        }
    }
    let mut at = 0;
    while at < pd.data.len() {
        let n = nix::unistd::write(holder, &pd.data[at..]).with_context(|| format!("Cannot refill {what}"))?;
        at += n;
    }
    Ok(())
}

/// Creates every description of one pipe (`ids`: its pipe entries).
pub(crate) fn create_pipe(
    files: &HashMap<u32, pb::FileEntry>,
    ids: &[u32],
    pd: Option<&PipeData>,
) -> Result<Vec<(u32, OwnedFd)>> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let pipe_id = files[&ids[0]].pipe.as_ref().map_or(0, |p| p.pipe_id);
    fill(&w, pd, &format!("pipe {pipe_id}"))?;
    let (mut r, mut w) = (Some(r), Some(w));
    let mut out = Vec::new();
    let (rn, wn) = (r.as_ref().unwrap().as_raw_fd(), w.as_ref().unwrap().as_raw_fd());
    for &id in ids {
        let p = files[&id]
            .pipe
            .as_ref()
            .with_context(|| format!("file id {id} has no pipe entry"))?;
        let write = p.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY;
        let end = if write { &mut w } else { &mut r };
        let fd = match end.take() {
            Some(fd) => fd,
            None => {
                // Another description of the same end.
                let src = if write { wn } else { rn };
                let acc = if write { OFlag::O_WRONLY } else { OFlag::O_RDONLY };
                let n = nix::fcntl::open(
                    format!("/proc/self/fd/{src}").as_str(),
                    acc | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .with_context(|| format!("Cannot reopen pipe {pipe_id}"))?;
                crate::sys::rawfd::own(n)
            }
        };
        set_flags(&fd, p.flags)?;
        out.push((id, fd));
    }
    // An end no description uses is closed here: a reader then sees the
    // data, then EOF; a writer gets EPIPE, as before the dump.
    drop((r, w));
    Ok(out)
}

/// Creates every description of one FIFO (`ids`: its fifo entries).
pub(crate) fn create_fifo(
    files: &HashMap<u32, pb::FileEntry>,
    ids: &[u32],
    pd: Option<&PipeData>,
) -> Result<Vec<(u32, OwnedFd)>> {
    let reg_of = |id: u32| -> Result<&pb::RegFileEntry> {
        let fifo = files[&id]
            .fifo
            .as_ref()
            .with_context(|| format!("file id {id} has no fifo entry"))?;
        let regf = fifo
            .regf_id
            .with_context(|| format!("FIFO file id {id} has no path entry"))?;
        files
            .get(&regf)
            .and_then(|f| f.reg.as_ref())
            .with_context(|| format!("FIFO file id {id}: path entry {regf} is not in files.img"))
    };
    let path = reg_of(ids[0])?.name.clone();
    let holder = nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("Cannot open the FIFO {path}"))?;
    let holder = crate::sys::rawfd::own(holder);
    let md = nix::sys::stat::fstat(holder.as_raw_fd()).context("fstat")?;
    if md.st_mode & libc::S_IFMT != libc::S_IFIFO {
        bail!("{path} is no longer a FIFO");
    }
    fill(&holder, pd, &format!("the FIFO {path}"))?;
    let mut out = Vec::new();
    for &id in ids {
        let reg = reg_of(id)?;
        let acc = OFlag::from_bits_truncate(reg.flags as i32 & libc::O_ACCMODE);
        let fd = nix::fcntl::open(
            reg.name.as_str(),
            acc | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("Cannot open the FIFO {}", reg.name))?;
        let fd = crate::sys::rawfd::own(fd);
        set_flags(&fd, reg.flags)?;
        out.push((id, fd));
    }
    drop(holder);
    Ok(out)
}
