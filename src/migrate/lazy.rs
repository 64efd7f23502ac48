//! Lazy pages (post-copy of the pre-copied memory): the restored tree runs
//! before the pages of the parent images (the pre-copy rounds) are in its
//! memory. A userfaultfd in missing mode, created inside each restored
//! process while it is still stopped in its dumped state, makes a first
//! touch of such a page wait until cryo copies it in (UFFDIO_COPY); the
//! rest are copied in the background, and cryo exits once all are in.
//!
//! Only private anonymous memory is served lazily (file-backed private
//! pages are staged as usual). Limits: a process that forks, or
//! madvise(DONTNEED)s memory, before its pages are all in is not followed
//! (no fork/remove events are asked for).

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::hooks::{Event, Hook};
use crate::image::ImageDir;
use crate::mem::{VmaKind, PAGE_SIZE};
use crate::proc;
use crate::restore::{self, parent::Fill};
use crate::sys::inject::Injector;
use crate::sys::{clone as sysc, uffd};

/// One restored process whose memory is still coming.
#[derive(Debug)]
pub struct LazyProc {
    pub pid: i32,
    /// Pid in the images (what the source knows it by).
    pub vpid: u32,
    uffd: OwnedFd,
    /// Pieces still to copy, in address order.
    fills: Vec<Fill>,
}

impl LazyProc {
    /// Whether some of its pages are only at the source.
    pub fn has_remote(&self) -> bool {
        self.fills.iter().any(|f| f.file.is_empty())
    }
}

/// Copies per prefetch step.
const CHUNK: u64 = 1 << 20;

/// A uffd without UFFD_USER_MODE_ONLY: faults from inside the kernel
/// (a read() into a lazy buffer) must wait for us too.
fn uffd_in(pid: i32) -> Result<OwnedFd> {
    let maps = proc::maps::read(pid as u32)?;
    let mut inj = Injector::new(Pid::from_raw(pid), &maps)
        .with_context(|| format!("Cannot prepare syscall injection into restored pid {pid}"))?;
    let res = (|| -> Result<OwnedFd> {
        let fl = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let fd = inj
            .syscall_ok(libc::SYS_userfaultfd, [fl, 0, 0, 0, 0, 0])
            .with_context(|| format!("userfaultfd() in restored pid {pid}"))? as i32;
        let got = sysc::pidfd_open(Pid::from_raw(pid))
            .and_then(|pfd| sysc::pidfd_getfd(&pfd, fd))
            .with_context(|| format!("Cannot take the userfaultfd of restored pid {pid}"));
        inj.syscall_ok(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
        got
    })();
    inj.restore()?;
    res
}

/// Sets up lazy pages for the restored process `pid` (stopped): its
/// parent-image pieces in private anonymous mappings are registered.
pub fn attach(dir: &Path, pid: i32) -> Result<Option<LazyProc>> {
    let st = proc::status::read(pid as u32)?;
    let vpid = *st.nspid.last().unwrap_or(&(pid as u32));
    let idx = ImageDir::open_unverified(dir)?.pagemap_index(vpid)?;
    let all = restore::parent::fills(dir, vpid, &idx)?;
    let vmas: Vec<_> = proc::maps::read(pid as u32)?
        .into_iter()
        .filter(|v| VmaKind::of(v) == VmaKind::AnonPrivate)
        .collect();
    let fills: Vec<Fill> = all
        .into_iter()
        .filter(|f| f.file.starts_with("parent/") || f.file.is_empty())
        .filter(|f| vmas.iter().any(|v| v.start <= f.vaddr && f.vaddr + f.len <= v.end))
        .collect();
    if fills.is_empty() {
        return Ok(None);
    }
    let fd = uffd_in(pid)?;
    uffd::api(&fd, 0).with_context(|| format!("UFFDIO_API for restored pid {pid}"))?;
    for v in vmas
        .iter()
        .filter(|v| fills.iter().any(|f| v.start <= f.vaddr && f.vaddr < v.end))
    {
        uffd::register_missing(&fd, v.start, v.end - v.start).with_context(|| {
            format!(
                "Cannot register {:#x}-{:#x} of restored pid {pid} for lazy pages",
                v.start, v.end
            )
        })?;
    }
    info!(
        "pid {pid}: {} KiB of memory to come lazily",
        fills.iter().map(|f| f.len).sum::<u64>() >> 10
    );
    Ok(Some(LazyProc {
        pid,
        vpid,
        uffd: fd,
        fills,
    }))
}

/// The `run_hook` that attaches every restored process; the attached
/// processes are collected in the returned list.
pub fn hook(dir: PathBuf, then: Option<Hook>) -> (Hook, Arc<Mutex<Vec<LazyProc>>>) {
    let procs = Arc::new(Mutex::new(Vec::new()));
    let p2 = procs.clone();
    let h = Hook::new(move |ev| {
        match ev {
            Event::Resumable { pid } => {
                if let Some(l) = attach(&dir, pid)? {
                    p2.lock().unwrap().push(l);
                }
            }
            Event::ReadyToRun => {
                if let Some(t) = &then {
                    t.fire(ev)?;
                }
            }
            _ => {}
        }
        Ok(())
    });
    (h, procs)
}

/// Figures of a lazy serve.
#[derive(Debug, Default, Clone)]
pub struct Served {
    pub faults: u64,
    pub bytes: u64,
    pub us: u64,
}

/// Fetches `buf.len()` bytes of image pid `vpid` at `addr` from the
/// source (post-copy).
pub type Remote<'a> = &'a mut dyn FnMut(u32, u64, &mut [u8]) -> Result<()>;

/// The bytes of `len` at `at` of piece `f` of `vpid`: from its pages file,
/// or (empty file name) from the source.
fn fetch(
    files: &HashMap<String, fs::File>,
    remote: &mut Option<Remote>,
    vpid: u32,
    f: &Fill,
    at: u64,
    buf: &mut [u8],
) -> Result<()> {
    if f.file.is_empty() {
        match remote {
            Some(r) => r(vpid, f.vaddr + at, buf),
            None => bail!("pages of pid {vpid} at {:#x} are only at the source", f.vaddr + at),
        }
    } else {
        files[&f.file]
            .read_exact_at(buf, f.off + at)
            .with_context(|| format!("Cannot read {}", f.file))
    }
}

/// Serves faults and copies every remaining piece; returns when all are
/// in (or the processes are gone). `remote` fetches post-copy pages.
pub fn serve(dir: &Path, procs: Vec<LazyProc>, mut remote: Option<Remote>) -> Result<Served> {
    let t0 = Instant::now();
    let mut files: HashMap<String, fs::File> = HashMap::new();
    for p in &procs {
        for f in p.fills.iter().filter(|f| !f.file.is_empty()) {
            if !files.contains_key(&f.file) {
                let h = fs::File::open(dir.join(&f.file)).with_context(|| format!("Cannot open {}", f.file))?;
                files.insert(f.file.clone(), h);
            }
        }
    }
    let mut st = Served::default();
    let mut procs: Vec<(LazyProc, usize, u64)> = procs.into_iter().map(|p| (p, 0usize, 0u64)).collect();
    let mut buf = vec![0u8; CHUNK as usize];
    while !procs.is_empty() {
        // Faults first.
        let fds: Vec<_> = procs.iter().map(|p| p.0.uffd.as_fd()).collect();
        let ready = uffd::poll_in(&fds, 0)?;
        let mut gone = Vec::new();
        for (i, (p, _, _)) in procs.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            for addr in uffd::read_faults(&p.uffd)? {
                st.faults += 1;
                let page = addr & !(PAGE_SIZE - 1);
                let r = match p.fills.iter().find(|f| f.vaddr <= page && page < f.vaddr + f.len) {
                    Some(f) => {
                        // The faulting page and up to 64 KiB after it.
                        let n = (f.vaddr + f.len - page).min(64 << 10) as usize;
                        fetch(&files, &mut remote, p.vpid, f, page - f.vaddr, &mut buf[..n])?;
                        copy_all(&p.uffd, page, &buf[..n]).map(|c| st.bytes += c as u64)
                    }
                    None => uffd::zeropage(&p.uffd, page, PAGE_SIZE),
                };
                match r {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => gone.push(i),
                    Err(e) => bail!("Cannot fill page {page:#x} of pid {}: {e}", p.pid),
                }
            }
        }
        // Then one chunk of background copying per process.
        for (i, (p, next, done)) in procs.iter_mut().enumerate() {
            let Some(f) = p.fills.get(*next) else {
                gone.push(i);
                continue;
            };
            let n = (f.len - *done).min(CHUNK) as usize;
            fetch(&files, &mut remote, p.vpid, f, *done, &mut buf[..n])?;
            match copy_all(&p.uffd, f.vaddr + *done, &buf[..n]) {
                Ok(c) => st.bytes += c as u64,
                Err(Errno::ESRCH) => gone.push(i),
                Err(e) => bail!("Cannot fill {:#x} of pid {}: {e}", f.vaddr + *done, p.pid),
            }
            *done += n as u64;
            if *done == f.len {
                *next += 1;
                *done = 0;
            }
        }
        gone.sort_unstable();
        gone.dedup();
        for i in gone.into_iter().rev() {
            let (p, next, _) = procs.swap_remove(i);
            if next < p.fills.len() {
                warn!("pid {} went away before its lazy pages were all in", p.pid);
            }
        }
    }
    st.us = t0.elapsed().as_micros() as u64;
    info!(
        "lazy pages: {} KiB copied, {} faults served, in {} ms",
        st.bytes >> 10,
        st.faults,
        st.us / 1000
    );
    Ok(st)
}

/// UFFDIO_COPY of `data` to `dst`, page by page past pages already there.
fn copy_all(fd: impl AsFd, dst: u64, data: &[u8]) -> nix::Result<usize> {
    let mut off = 0usize;
    let mut copied = 0usize;
    while off < data.len() {
        match uffd::copy(fd.as_fd(), dst + off as u64, &data[off..])? {
            0 => off += PAGE_SIZE as usize, // present already: skip it
            n => {
                off += n;
                copied += n;
            }
        }
    }
    Ok(copied)
}

/// `cryo restore --lazy-pages`: restores (detached), then serves the lazy
/// pages until all are in.
pub fn restore_lazy(mut opts: restore::RestoreOpts) -> Result<i32> {
    let (h, procs) = hook(opts.dir.clone(), None);
    opts.lazy_pages = true;
    opts.detach = true;
    opts.run_hook = h;
    let dir = opts.dir.clone();
    let r = restore::restore(&opts)?;
    let procs = std::mem::take(&mut *procs.lock().unwrap());
    let st = serve(&dir, procs, None)?;
    println!(
        "cryo restore: pid {} runs; lazy pages: {} KiB copied, {} faults, all in after {} ms",
        r.root_host_pid,
        st.bytes >> 10,
        st.faults,
        st.us / 1000
    );
    Ok(0)
}
