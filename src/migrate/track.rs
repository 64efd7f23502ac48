//! Write tracking for pre-copy without soft-dirty (kernel-mechanics.md
//! §3.3): a userfaultfd created inside each process of the tree (by
//! syscall injection, then taken with pidfd_getfd and closed in the task),
//! registered in async write-protect mode over every private mapping, and
//! PAGEMAP_SCAN with PM_SCAN_WP_MATCHING to list and re-protect the pages
//! written since the previous scan.
//!
//! The uffds live only in this cryo process: the task's fd table is the
//! same as before, and tracking ends (the registrations go away) when the
//! [`Tracker`] is dropped.

use std::fs;
use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::runs::RunSet;
use crate::freeze::Frozen;
use crate::mem::{VmaKind, PAGE_SIZE};
use crate::proc;
use crate::sys::inject::Injector;
use crate::sys::{clone as sysc, uffd, vm};

/// `UFFD_USER_MODE_ONLY`: the uffd handles user faults only (needs no
/// privilege beyond ptrace of the task).
const UFFD_USER_MODE_ONLY: u64 = 1;

/// One tracked process.
#[derive(Debug)]
pub struct Tracked {
    /// Host pid.
    pub pid: i32,
    /// Pid as named in the images.
    pub vpid: u32,
    /// Held: closing the last copy ends the tracking.
    _uffd: OwnedFd,
    pagemap: fs::File,
    /// Every byte sent in an earlier round (pre-copy images).
    pub sent: RunSet,
}

/// The tracked tree.
#[derive(Debug)]
pub struct Tracker {
    pub procs: Vec<Tracked>,
    kept: Vec<(u32, i32)>,
    /// Post-copy from the source: no page of private anonymous memory is
    /// copied by the dump; all are PE_LAZY, fetched by the destination.
    remote: bool,
}

/// Pages of one process in one round.
#[derive(Debug, Clone)]
pub struct RoundPages {
    pub vpid: u32,
    pub pid: i32,
    /// Copied in this round.
    pub dirty: RunSet,
    /// Copied in an earlier round and not written since (PE_PARENT).
    pub parent: RunSet,
}

/// Whether `pid` has exited or is exiting (gone, a zombie, or past the
/// point where its memory is released: PF_EXITING).
fn gone(pid: i32) -> bool {
    const PF_EXITING: u32 = 0x4;
    proc::stat::read(pid as u32).map_or(true, |st| {
        matches!(st.state, 'Z' | 'X' | 'x') || st.flags & PF_EXITING != 0
    })
}

/// Present or swapped, not the zero page, not file-backed, not a guard.
fn dumpable_query() -> (u64, u64, u64) {
    let skip = vm::category::PFNZERO | vm::category::FILE | vm::category::GUARD;
    (skip, skip, vm::category::PRESENT | vm::category::SWAPPED)
}

fn page_vmas(pid: i32) -> Result<Vec<proc::maps::Vma>> {
    Ok(proc::maps::read(pid as u32)?
        .into_iter()
        .filter(|v| VmaKind::of(v).dumps_pages())
        .collect())
}

/// The dumpable pages of `[start, end)` (a VMA).
fn present(pagemap: &fs::File, pid: i32, start: u64, end: u64) -> Result<RunSet> {
    let (m, inv, any) = dumpable_query();
    let rs = vm::pagemap_scan(pagemap, start, end, m, inv, any, vm::category::PRESENT, 0)
        .with_context(|| format!("PAGEMAP_SCAN of pid {pid} at {start:#x}"))?;
    // Swapped entries may be write-protect markers of dropped pages.
    let tagged: Vec<(u64, u64, bool)> = rs
        .iter()
        .map(|r| (r.start, r.end, r.categories & vm::category::PRESENT == 0))
        .collect();
    let rs =
        vm::drop_wp_markers(Pid::from_raw(pid), &tagged).with_context(|| format!("Cannot read /proc/{pid}/pagemap"))?;
    Ok(RunSet::from_ranges(rs))
}

/// Pages of `[start, end)` written since the last scan; with `rearm`,
/// write-protects them again (atomically with the scan).
fn written(pagemap: &fs::File, pid: i32, start: u64, end: u64, rearm: bool) -> Result<RunSet> {
    let flags = if rearm { vm::PM_SCAN_WP_MATCHING } else { 0 };
    let rs = vm::pagemap_scan(
        pagemap,
        start,
        end,
        vm::category::WRITTEN,
        0,
        0,
        vm::category::WRITTEN,
        flags,
    )
    .with_context(|| format!("PAGEMAP_SCAN (written) of pid {pid} at {start:#x}"))?;
    Ok(RunSet::from_ranges(rs.into_iter().map(|r| (r.start, r.end))))
}

/// Lowest fd number a uffd kept in the task between `cryo pre-dump`
/// runs gets (out of the way of the task's own low fds).
const KEEP_FD_MIN: u64 = 512;

/// Creates a uffd inside `pid` (stopped) and returns our copy of it; with
/// `keep`, the task keeps one at a high fd (close-on-exec) for the next
/// `cryo pre-dump`/`cryo dump --prev-images-dir`, whose number is returned.
fn uffd_of(pid: i32, vmas: &[proc::maps::Vma], keep: bool) -> Result<(OwnedFd, Option<i32>)> {
    let mut inj = Injector::new(Pid::from_raw(pid), vmas)
        .with_context(|| format!("Cannot prepare syscall injection into pid {pid}"))?;
    let res = (|| -> Result<(OwnedFd, Option<i32>)> {
        let fl = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY;
        let mut fd = inj
            .syscall_ok(libc::SYS_userfaultfd, [fl, 0, 0, 0, 0, 0])
            .with_context(|| format!("userfaultfd() in pid {pid}"))? as i32;
        let mut kept = None;
        if keep {
            let high = inj
                .syscall_ok(
                    libc::SYS_fcntl,
                    [fd as u64, libc::F_DUPFD_CLOEXEC as u64, KEEP_FD_MIN, 0, 0, 0],
                )
                .with_context(|| format!("fcntl(F_DUPFD_CLOEXEC) in pid {pid}"))? as i32;
            inj.syscall_ok(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
            fd = high;
            kept = Some(high);
        }
        let got = sysc::pidfd_open(Pid::from_raw(pid))
            .and_then(|pfd| sysc::pidfd_getfd(&pfd, fd))
            .with_context(|| format!("Cannot take the userfaultfd of pid {pid}"));
        if !keep {
            inj.syscall_ok(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])
                .with_context(|| format!("close() in pid {pid}"))?;
        }
        Ok((got?, kept))
    })();
    inj.restore()
        .with_context(|| format!("Cannot restore the registers of pid {pid}"))?;
    res
}

/// Takes the uffd a previous `cryo pre-dump` left at `fd` in `pid`
/// (stopped); with `close`, removes it from the task.
fn take_kept(pid: i32, fd: i32, close: bool) -> Result<OwnedFd> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    if link != "anon_inode:[userfaultfd]" {
        bail!("pid {pid}: fd {fd} is not the write-tracking userfaultfd of the previous pre-dump ({link:?})");
    }
    let got = sysc::pidfd_open(Pid::from_raw(pid))
        .and_then(|pfd| sysc::pidfd_getfd(&pfd, fd))
        .with_context(|| format!("Cannot take the userfaultfd of pid {pid}"))?;
    if close {
        let vmas = proc::maps::read(pid as u32)?;
        let mut inj = Injector::new(Pid::from_raw(pid), &vmas)
            .with_context(|| format!("Cannot prepare syscall injection into pid {pid}"))?;
        let r = inj.syscall_ok(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
        inj.restore()?;
        r.with_context(|| format!("close() in pid {pid}"))?;
    }
    Ok(got)
}

impl Tracker {
    /// Starts tracking every process of the tree rooted at `root`: stops
    /// it briefly to create the uffds, registers and arms them. `vpid`
    /// maps a host pid to its image pid.
    pub fn start(root: i32, vpid: impl Fn(i32) -> Result<u32>) -> Result<Tracker> {
        Self::start_with(root, vpid, false, &[], |_| RunSet::default())
    }

    /// [`start`](Self::start) for `cryo pre-dump`: `keep` leaves a uffd in
    /// each task (see [`Tracker::kept`]); `prev` lists (image pid, fd) of
    /// uffds a previous pre-dump left, which are taken over (and, without
    /// `keep`, removed from the task) instead of new ones; `sent` gives the
    /// pages the previous images hold per image pid.
    pub fn start_with(
        root: i32,
        vpid: impl Fn(i32) -> Result<u32>,
        keep: bool,
        prev: &[(u32, i32)],
        sent: impl Fn(u32) -> RunSet,
    ) -> Result<Tracker> {
        let frozen = Frozen::seize_tree(root)?;
        let mut made = Vec::new();
        let mut kept = Vec::new();
        for p in frozen.procs.iter().filter(|p| p.zombie.is_none()) {
            let v = vpid(p.pid)?;
            // An error drops `frozen`: detached, the tree runs on.
            let (fd, fresh) = match prev.iter().find(|k| k.0 == v) {
                Some(&(_, kfd)) => {
                    let fd = take_kept(p.pid, kfd, !keep)?;
                    if keep {
                        kept.push((v, kfd));
                    }
                    (fd, false)
                }
                None => {
                    let vmas = proc::maps::read(p.pid as u32)?;
                    let (fd, k) = uffd_of(p.pid, &vmas, keep)?;
                    if let Some(k) = k {
                        kept.push((v, k));
                    }
                    (fd, true)
                }
            };
            made.push((p.pid, v, fd, fresh));
        }
        drop(frozen); // detaches: the tree runs on
        let mut procs = Vec::new();
        for (pid, vpid, fd, fresh) in made {
            // A process that exits as soon as the tree runs again (a
            // `sleep` of a shell loop) is simply not tracked any more.
            if gone(pid) {
                debug!("pid {pid} exited; not tracked");
                continue;
            }
            if !fresh {
                let pagemap = fs::File::open(format!("/proc/{pid}/pagemap"))
                    .with_context(|| format!("Cannot open /proc/{pid}/pagemap"))?;
                procs.push(Tracked {
                    pid,
                    vpid,
                    _uffd: fd,
                    pagemap,
                    sent: sent(vpid),
                });
                continue;
            }
            let features = uffd::api(&fd, uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED)
                .with_context(|| format!("UFFDIO_API (async write-protect) for pid {pid}"))?;
            debug!("uffd of pid {pid}: features {features:#x}");
            let setup = (|| -> Result<fs::File> {
                let pagemap = fs::File::open(format!("/proc/{pid}/pagemap"))
                    .with_context(|| format!("Cannot open /proc/{pid}/pagemap"))?;
                for v in page_vmas(pid)? {
                    match uffd::register_wp(&fd, v.start, v.end - v.start) {
                        // Untracked mappings are copied whole in every round:
                        // their pages all read as written.
                        Err(e) => warn!("pid {pid}: mapping {:#x}-{:#x} not tracked: {e}", v.start, v.end),
                        Ok(()) => {
                            written(&pagemap, pid, v.start, v.end, true)?;
                        }
                    }
                }
                Ok(pagemap)
            })();
            let pagemap = match setup {
                Ok(p) => p,
                Err(_) if gone(pid) => {
                    debug!("pid {pid} exited; not tracked");
                    continue;
                }
                Err(e) => return Err(e),
            };
            procs.push(Tracked {
                pid,
                vpid,
                _uffd: fd,
                pagemap,
                sent: RunSet::default(),
            });
        }
        info!("tracking writes of {} processes", procs.len());
        Ok(Tracker {
            procs,
            kept,
            remote: false,
        })
    }

    /// For post-copy from the source: the dump copies no private
    /// anonymous page (see [`Tracker::elsewhere_flag`]).
    pub fn remote() -> Tracker {
        Tracker {
            procs: Vec::new(),
            kept: Vec::new(),
            remote: true,
        }
    }

    /// Whether the pages of a mapping of `kind` may be left out of the dump.
    pub fn covers(&self, kind: VmaKind) -> bool {
        !self.remote || kind == VmaKind::AnonPrivate
    }

    /// The pagemap flag of pages left out: in the parent images, or lazy
    /// (served by the source after the restore).
    pub fn elsewhere_flag(&self) -> u32 {
        if self.remote {
            crate::mem::PE_LAZY
        } else {
            crate::mem::PE_PARENT
        }
    }

    /// (image pid, fd) of the uffds left in the tasks (`keep`).
    pub fn kept(&self) -> &[(u32, i32)] {
        &self.kept
    }

    /// One pre-copy round (the tree runs): the first returns every
    /// dumpable page, later ones the pages written since the previous
    /// round (re-protected). The caller copies `dirty` and then calls
    /// [`Tracker::sent`].
    pub fn round(&mut self, first: bool) -> Result<Vec<RoundPages>> {
        let mut out = Vec::new();
        let mut exited = Vec::new();
        for t in &self.procs {
            let scan = || -> Result<Vec<(u64, u64)>> {
                let mut dirty = Vec::new();
                for v in page_vmas(t.pid)? {
                    let pres = present(&t.pagemap, t.pid, v.start, v.end)?;
                    let d = if first {
                        pres
                    } else {
                        let w = written(&t.pagemap, t.pid, v.start, v.end, true)?;
                        // Written since the last round, or never sent (a new
                        // mapping, a page swapped in unwritten...).
                        w.intersect(&pres).union(&pres.subtract(&t.sent))
                    };
                    dirty.extend_from_slice(d.ranges());
                }
                Ok(dirty)
            };
            let dirty = match scan() {
                Ok(d) => d,
                // Exited since the last round: nothing more to copy.
                Err(_) if gone(t.pid) => {
                    debug!("pid {} exited; no longer tracked", t.pid);
                    exited.push(t.pid);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let dirty = RunSet::from_ranges(dirty);
            let parent = t.sent.subtract(&dirty);
            out.push(RoundPages {
                vpid: t.vpid,
                pid: t.pid,
                dirty,
                parent,
            });
        }
        self.procs.retain(|t| !exited.contains(&t.pid));
        Ok(out)
    }

    /// Records what a round copied for `pid`.
    pub fn mark_sent(&mut self, pid: i32, copied: &RunSet) {
        if let Some(t) = self.procs.iter_mut().find(|t| t.pid == pid) {
            t.sent = t.sent.union(copied);
        }
    }

    /// For the final dump (tree frozen): splits the dumpable runs of the
    /// VMA `[start, end)` of `pid` into pages still valid in the parent
    /// images (true) and pages to copy now (false). None when `pid` is not
    /// tracked.
    pub fn split(&self, pid: i32, start: u64, end: u64, runs: &[(u64, u64)]) -> Result<Option<Vec<(u64, u64, bool)>>> {
        if self.remote {
            return Ok(Some(runs.iter().map(|&(s, e)| (s, e, true)).collect()));
        }
        let Some(t) = self.procs.iter().find(|t| t.pid == pid) else {
            return Ok(None);
        };
        let w = written(&t.pagemap, pid, start, end, false)?;
        let valid = t.sent.subtract(&w);
        let mut out = Vec::new();
        for &(s, e) in runs {
            if s % PAGE_SIZE != 0 || e % PAGE_SIZE != 0 {
                bail!("unaligned run {s:#x}-{e:#x}");
            }
            out.extend(valid.split(s, e));
        }
        Ok(Some(out))
    }
}
