//! Lazy pages (post-copy of the pre-copied memory): the restored tree runs
//! before the pages of the parent images (the pre-copy rounds) are in its
//! memory. A userfaultfd in missing mode, created inside each restored
//! process while it is still stopped in its dumped state, makes a first
//! touch of such a page wait until cryo copies it in (UFFDIO_COPY); the
//! rest are copied in the background, and cryo exits once all are in.
//!
//! Only private anonymous memory is served lazily (file-backed private
//! pages are staged as usual). The uffd asks for the non-cooperative
//! events, so the program may change its memory while pages are still
//! coming: a fork hands us the child's uffd and the child is served too
//! (what its parent was still missing at the fork, from the same
//! images); madvise(DONTNEED) and munmap drop their range from what is
//! left to fill (it reads as zeros, or is gone); mremap moves it. While
//! such an event is pending the kernel refuses copies (EAGAIN): the
//! messages are read, then the copy is tried again.
//!
//! Test aid: [`FILL_DELAY_ENV`] slows the background fill.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::unistd::Pid;
use tracing::{debug, info, warn};

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
/// Copied on a fault: the faulting page and its neighbours.
const FAULT_AROUND: u64 = 64 << 10;

/// The descriptor of the userfaultfd the restorer left in `pid` (see
/// `uffd_flags` of the restorer's arguments), if any.
fn blob_uffd(pid: i32) -> Option<i32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]"))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// A uffd without UFFD_USER_MODE_ONLY: faults from inside the kernel
/// (a read() into a lazy buffer) must wait for us too. It needs
/// CAP_SYS_PTRACE (with vm.unprivileged_userfaultfd=0), which a
/// container's task lacks once its credentials are restored: the restorer
/// creates it before (`blob`, its descriptor in `pid`), and this takes it
/// and closes it in `pid`. Without one it is created by injection.
fn uffd_in(pid: i32, blob: Option<i32>) -> Result<OwnedFd> {
    let maps = proc::maps::read(pid as u32)?;
    let mut inj = Injector::new(Pid::from_raw(pid), &maps)
        .with_context(|| format!("Cannot prepare syscall injection into restored pid {pid}"))?;
    let res = (|| -> Result<OwnedFd> {
        let fl = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let fd = match blob {
            Some(fd) => fd,
            None => inj
                .syscall_ok(libc::SYS_userfaultfd, [fl, 0, 0, 0, 0, 0])
                .with_context(|| format!("userfaultfd() in restored pid {pid}"))? as i32,
        };
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
    let blob = blob_uffd(pid);
    if fills.is_empty() {
        if blob.is_some() {
            // Not needed: out of the task before it runs.
            drop(uffd_in(pid, blob)?);
        }
        return Ok(None);
    }
    let fd = uffd_in(pid, blob)?;
    uffd::api(&fd, uffd::FEATURES_NONCOOP)
        .with_context(|| format!("UFFDIO_API (fork, remap, remove and unmap events) for restored pid {pid}"))?;
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
    /// Non-cooperative events followed: forks (children served too),
    /// madvise(DONTNEED) removes, munmaps, mremaps.
    pub forks: u64,
    pub removes: u64,
    pub unmaps: u64,
    pub remaps: u64,
    /// Copies refused with EAGAIN (an event pending) and tried again.
    pub retries: u64,
}

impl Served {
    /// `fork N, remove N, unmap N, remap N`.
    pub fn events(&self) -> String {
        format!(
            "fork {}, remove {}, unmap {}, remap {}",
            self.forks, self.removes, self.unmaps, self.remaps
        )
    }
}

/// Fetches `buf.len()` bytes of image pid `vpid` at `addr` from the
/// source (post-copy).
pub type Remote<'a> = &'a mut dyn FnMut(u32, u64, &mut [u8]) -> Result<()>;

/// A run of memory still to fill in one address space.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    len: u64,
    /// Index of its pages file, or None: only the source has it.
    file: Option<usize>,
    /// Offset in the pages file, or the address at the source (where it
    /// was when dumped: an mremap moves the destination only).
    src: u64,
}

impl Piece {
    /// The part from `skip` bytes in, `len` long.
    fn sub(&self, skip: u64, len: u64) -> Piece {
        Piece {
            len,
            file: self.file,
            src: self.src + skip,
        }
    }
}

/// What remains to fill: pieces by destination address, disjoint.
type Todo = BTreeMap<u64, Piece>;

/// Removes `[start, end)` from `todo` and returns the removed parts
/// (clipped to the range), keyed by their destination address.
fn carve(todo: &mut Todo, start: u64, end: u64) -> Vec<(u64, Piece)> {
    let hit: Vec<u64> = todo
        .range(..end)
        .rev()
        .take_while(|(a, p)| **a + p.len > start)
        .map(|(a, _)| *a)
        .collect();
    let mut out = Vec::new();
    for a in hit.into_iter().rev() {
        let p = todo.remove(&a).unwrap();
        let pe = a + p.len;
        if a < start {
            todo.insert(a, p.sub(0, start - a));
        }
        if pe > end {
            todo.insert(end, p.sub(end - a, pe - end));
        }
        let (s, e) = (a.max(start), pe.min(end));
        out.push((s, p.sub(s - a, e - s)));
    }
    out
}

/// mremap moved `[from, from+len)` to `to`: so do the pieces there.
fn remap(todo: &mut Todo, from: u64, to: u64, len: u64) {
    for (a, p) in carve(todo, from, from + len) {
        todo.insert(a - from + to, p);
    }
}

/// The piece covering `addr`.
fn piece_at(todo: &Todo, addr: u64) -> Option<(u64, &Piece)> {
    todo.range(..=addr)
        .next_back()
        .filter(|(a, p)| addr < **a + p.len)
        .map(|(a, p)| (*a, p))
}

/// One address space being filled: a restored process, or a child it
/// forked before its pages were all in (same image pid: the child's
/// missing pages are those of its parent at the fork).
struct Space {
    /// For messages: the restored pid, or "a child of pid N".
    who: String,
    /// Forked after the restore (an exec or exit of it is no news).
    forked: bool,
    vpid: u32,
    uffd: OwnedFd,
    todo: Todo,
    /// Faulted pages not served yet (their copy met EAGAIN).
    faults: Vec<u64>,
    /// The process is gone (ESRCH).
    gone: bool,
    /// A copy met EAGAIN: events pending, read them before copying on.
    again: bool,
}

/// How a copy into a space ended.
enum Copied {
    Done,
    /// Events pending (EAGAIN): read them, then try again.
    Again,
    /// The process has gone (ESRCH).
    Gone,
}

/// Test aid: `CRYO_LAZY_FILL_DELAY_MS=N` makes the background fill wait
/// N ms before each chunk (faults and events are served at once all the
/// same), so that a test can act on memory before it is all in.
pub const FILL_DELAY_ENV: &str = "CRYO_LAZY_FILL_DELAY_MS";

struct Server<'a> {
    files: Vec<fs::File>,
    names: Vec<String>,
    remote: Option<Remote<'a>>,
    buf: Vec<u8>,
    st: Served,
}

impl Server<'_> {
    /// The bytes of piece `p` of `vpid` into `self.buf[..p.len]`.
    fn fetch(&mut self, vpid: u32, p: &Piece) -> Result<()> {
        let buf = &mut self.buf[..p.len as usize];
        match p.file {
            None => match &mut self.remote {
                Some(r) => r(vpid, p.src, buf),
                None => bail!("pages of pid {vpid} at {:#x} are only at the source", p.src),
            },
            Some(i) => self.files[i]
                .read_exact_at(buf, p.src)
                .with_context(|| format!("Cannot read {}", self.names[i])),
        }
    }

    /// Copies what remains to fill in `[start, end)` (at most CHUNK) into
    /// space `s`; what is in (or no longer mapped) leaves its todo.
    fn fill(&mut self, s: &mut Space, start: u64, end: u64) -> Result<Copied> {
        let parts = carve(&mut s.todo, start, end);
        let mut res = Copied::Done;
        let mut rest = Vec::new();
        for (a, p) in parts {
            if !matches!(res, Copied::Done) {
                rest.push((a, p));
                continue;
            }
            self.fetch(s.vpid, &p)?;
            let mut off = 0u64;
            while off < p.len {
                let n = (p.len - off) as usize;
                match uffd::copy(&s.uffd, a + off, &self.buf[off as usize..off as usize + n]) {
                    // Present already: skip that page.
                    Ok(0) => off += PAGE_SIZE,
                    Ok(c) => {
                        off += c as u64;
                        self.st.bytes += c as u64;
                    }
                    Err(Errno::EAGAIN) => {
                        res = Copied::Again;
                        break;
                    }
                    Err(Errno::ESRCH) => {
                        res = Copied::Gone;
                        break;
                    }
                    // Not in one registered mapping any more. A copy must
                    // lie in one VMA (an mprotect may have split it): go
                    // page by page; a single page there is not ours to fill.
                    Err(Errno::ENOENT) => {
                        let c = uffd::copy(
                            &s.uffd,
                            a + off,
                            &self.buf[off as usize..off as usize + PAGE_SIZE as usize],
                        );
                        match c {
                            Ok(c) => self.st.bytes += c as u64,
                            Err(Errno::ENOENT) => {
                                debug!("{}: {:#x} is no longer lazy memory; skipped", s.who, a + off)
                            }
                            Err(Errno::EAGAIN) => {
                                res = Copied::Again;
                                break;
                            }
                            Err(Errno::ESRCH) => {
                                res = Copied::Gone;
                                break;
                            }
                            Err(e) => bail!("Cannot fill {:#x} of {}: {e}", a + off, s.who),
                        }
                        off += PAGE_SIZE;
                    }
                    Err(e) => bail!("Cannot fill {:#x} of {}: {e}", a + off, s.who),
                }
            }
            if off < p.len {
                rest.push((a + off, p.sub(off, p.len - off)));
            }
        }
        for (a, p) in rest {
            s.todo.insert(a, p);
        }
        Ok(res)
    }

    /// Serves a fault at `page`: its piece from there, up to 64 KiB (or,
    /// when the page ends its piece, as a program going down through
    /// memory meets it, up to 64 KiB ending there), or a zero page when
    /// nothing is to come there (never dumped, or dropped since by
    /// madvise).
    fn fault(&mut self, s: &mut Space, page: u64) -> Result<Copied> {
        if let Some((a, p)) = piece_at(&s.todo, page) {
            let end = (a + p.len).min(page + FAULT_AROUND);
            let start = if end == page + PAGE_SIZE {
                a.max((page + PAGE_SIZE).saturating_sub(FAULT_AROUND))
            } else {
                page
            };
            return self.fill(s, start, end);
        }
        match uffd::zeropage(&s.uffd, page, PAGE_SIZE) {
            Ok(()) => Ok(Copied::Done),
            Err(Errno::EAGAIN) => Ok(Copied::Again),
            Err(Errno::ESRCH) => Ok(Copied::Gone),
            Err(Errno::ENOENT) => {
                // Unmapped meanwhile: let the thread retry (and fault).
                let _ = uffd::wake(&s.uffd, page, PAGE_SIZE);
                Ok(Copied::Done)
            }
            Err(e) => bail!("Cannot map a zero page at {page:#x} of {}: {e}", s.who),
        }
    }

    /// Reads and applies the pending messages of `s`; returns the spaces
    /// of the children it forked.
    fn events(&mut self, s: &mut Space) -> Result<Vec<Space>> {
        let mut born = Vec::new();
        let msgs = match uffd::read_msgs(&s.uffd) {
            Ok(m) => m,
            Err(e) => bail!("Cannot read the userfaultfd of {}: {e}", s.who),
        };
        for m in msgs {
            match m {
                uffd::Msg::Fault(addr) => {
                    self.st.faults += 1;
                    s.faults.push(addr & !(PAGE_SIZE - 1));
                }
                uffd::Msg::Fork(fd) => {
                    self.st.forks += 1;
                    debug!("{} forked; its child is served too", s.who);
                    born.push(Space {
                        who: format!("a child of {}", s.who.trim_start_matches("a child of ")),
                        forked: true,
                        vpid: s.vpid,
                        uffd: fd,
                        todo: s.todo.clone(),
                        faults: Vec::new(),
                        gone: false,
                        again: false,
                    });
                }
                uffd::Msg::Remove { start, end } => {
                    self.st.removes += 1;
                    debug!("{}: {start:#x}-{end:#x} dropped (madvise)", s.who);
                    carve(&mut s.todo, start, end);
                }
                uffd::Msg::Unmap { start, end } => {
                    self.st.unmaps += 1;
                    debug!("{}: {start:#x}-{end:#x} unmapped", s.who);
                    carve(&mut s.todo, start, end);
                }
                uffd::Msg::Remap { from, to, len } => {
                    self.st.remaps += 1;
                    debug!("{}: {from:#x}+{len:#x} moved to {to:#x}", s.who);
                    remap(&mut s.todo, from, to, len);
                }
                uffd::Msg::Other(e) => warn!("{}: unexpected userfaultfd event {e:#x}", s.who),
            }
        }
        Ok(born)
    }

    /// Serves the pending faults of `s`.
    fn faults(&mut self, s: &mut Space) -> Result<()> {
        let pending = std::mem::take(&mut s.faults);
        let mut it = pending.into_iter();
        for page in it.by_ref() {
            match self.fault(s, page)? {
                Copied::Done => {}
                Copied::Again => {
                    self.st.retries += 1;
                    s.again = true;
                    s.faults.push(page);
                    break;
                }
                Copied::Gone => {
                    s.gone = true;
                    break;
                }
            }
        }
        s.faults.extend(it);
        Ok(())
    }

    /// One chunk of background fill of `s`.
    fn background(&mut self, s: &mut Space) -> Result<()> {
        let Some((&a, p)) = s.todo.first_key_value() else {
            return Ok(());
        };
        let end = a + p.len.min(CHUNK);
        match self.fill(s, a, end)? {
            Copied::Done => {}
            Copied::Again => {
                self.st.retries += 1;
                s.again = true
            }
            Copied::Gone => s.gone = true,
        }
        Ok(())
    }
}

/// Serves faults and copies every remaining piece; returns when all are
/// in (or the processes are gone). Follows forks (the child is served as
/// well), madvise(DONTNEED) and munmap (the range is never filled) and
/// mremap (the pieces move). `remote` fetches post-copy pages.
pub fn serve(dir: &Path, procs: Vec<LazyProc>, remote: Option<Remote>) -> Result<Served> {
    let t0 = Instant::now();
    let mut names: Vec<String> = Vec::new();
    let mut files = Vec::new();
    let mut spaces = Vec::new();
    for p in procs {
        let mut todo = Todo::new();
        for f in p.fills {
            let (file, src) = if f.file.is_empty() {
                (None, f.vaddr)
            } else {
                let i = match names.iter().position(|n| *n == f.file) {
                    Some(i) => i,
                    None => {
                        let h = fs::File::open(dir.join(&f.file)).with_context(|| format!("Cannot open {}", f.file))?;
                        files.push(h);
                        names.push(f.file.clone());
                        names.len() - 1
                    }
                };
                (Some(i), f.off)
            };
            // Pieces of at most CHUNK bytes: the copy buffer's size.
            let mut at = 0;
            while at < f.len {
                let n = (f.len - at).min(CHUNK);
                todo.insert(
                    f.vaddr + at,
                    Piece {
                        len: n,
                        file,
                        src: src + at,
                    },
                );
                at += n;
            }
        }
        spaces.push(Space {
            who: format!("pid {}", p.pid),
            forked: false,
            vpid: p.vpid,
            uffd: p.uffd,
            todo,
            faults: Vec::new(),
            gone: false,
            again: false,
        });
    }
    let delay = std::env::var(FILL_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    if !delay.is_zero() {
        info!("{FILL_DELAY_ENV}: the background fill waits {delay:?} per chunk (test aid)");
    }
    let mut srv = Server {
        files,
        names,
        remote,
        buf: vec![0u8; CHUNK as usize],
        st: Served::default(),
    };
    let mut next_fill = Instant::now() + delay;
    while !spaces.is_empty() {
        // Wait for messages: not at all when there is copying to do now,
        // a little after EAGAIN (the event is on its way), else until the
        // next background chunk is due.
        let now = Instant::now();
        let timeout = if spaces.iter().any(|s| s.again) {
            1
        } else if spaces.iter().any(|s| !s.faults.is_empty()) || now >= next_fill {
            0
        } else {
            (next_fill - now).as_millis().clamp(1, 1000) as i32
        };
        let ready = {
            let fds: Vec<_> = spaces.iter().map(|s| s.uffd.as_fd()).collect();
            uffd::poll_in(&fds, timeout)?
        };
        let mut born = Vec::new();
        for (s, r) in spaces.iter_mut().zip(ready) {
            s.again = false;
            if r || !s.faults.is_empty() {
                born.extend(srv.events(s)?);
            }
        }
        spaces.extend(born);
        // Faults first, then (when due) one chunk per space.
        for s in spaces.iter_mut() {
            srv.faults(s)?;
        }
        if Instant::now() >= next_fill {
            for s in spaces.iter_mut().filter(|s| !s.gone && !s.again && s.faults.is_empty()) {
                srv.background(s)?;
            }
            next_fill = Instant::now() + delay;
        }
        spaces.retain(|s| {
            if s.gone && !s.todo.is_empty() {
                if s.forked {
                    debug!("{} exited or exec'd before its lazy pages were all in", s.who);
                } else {
                    warn!("{} went away before its lazy pages were all in", s.who);
                }
            }
            !s.gone && !(s.todo.is_empty() && s.faults.is_empty())
        });
    }
    let mut st = srv.st;
    st.us = t0.elapsed().as_micros() as u64;
    info!(
        "lazy pages: {} KiB copied, {} faults served, in {} ms; events: {}; {} copies retried after EAGAIN",
        st.bytes >> 10,
        st.faults,
        st.us / 1000,
        st.events(),
        st.retries
    );
    Ok(st)
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
    restore::lazy_done(r.shim_pid, r.root_host_pid);
    println!(
        "cryo restore: pid {} runs; lazy pages: {} KiB copied, {} faults, all in after {} ms; events: {}",
        r.root_host_pid,
        st.bytes >> 10,
        st.faults,
        st.us / 1000,
        st.events()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: u64, src: u64) -> Piece {
        Piece {
            len,
            file: Some(0),
            src,
        }
    }

    fn todo(parts: &[(u64, u64, u64)]) -> Todo {
        parts.iter().map(|&(a, l, s)| (a, piece(l, s))).collect()
    }

    #[test]
    fn carve_splits_and_returns_the_middle() {
        let mut t = todo(&[(0x1000, 0x4000, 0), (0x8000, 0x2000, 0x4000)]);
        let got = carve(&mut t, 0x2000, 0x9000);
        assert_eq!(
            got,
            vec![(0x2000, piece(0x3000, 0x1000)), (0x8000, piece(0x1000, 0x4000))]
        );
        assert_eq!(t, todo(&[(0x1000, 0x1000, 0), (0x9000, 0x1000, 0x5000)]));
        // Nothing there: nothing changes.
        assert!(carve(&mut t, 0x3000, 0x8000).is_empty());
        assert_eq!(t.len(), 2);
        // Exactly one piece.
        assert_eq!(carve(&mut t, 0x1000, 0x2000), vec![(0x1000, piece(0x1000, 0))]);
        assert_eq!(t, todo(&[(0x9000, 0x1000, 0x5000)]));
    }

    #[test]
    fn remap_moves_the_pieces_but_keeps_their_source() {
        let mut t = todo(&[(0x10000, 0x4000, 0x100)]);
        // The middle two pages move up; the source offsets stay.
        remap(&mut t, 0x11000, 0x80000, 0x2000);
        assert_eq!(
            t,
            todo(&[
                (0x10000, 0x1000, 0x100),
                (0x13000, 0x1000, 0x3100),
                (0x80000, 0x2000, 0x1100)
            ])
        );
        assert_eq!(piece_at(&t, 0x81fff), Some((0x80000, &piece(0x2000, 0x1100))));
        assert_eq!(piece_at(&t, 0x11000), None);
        assert_eq!(piece_at(&t, 0x82000), None);
    }
}
