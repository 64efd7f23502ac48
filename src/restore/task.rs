//! Stage Fork: what each restored task does in its own process, from its
//! birth (clone3 with its old pid) to the jump into the restorer blob.
//!
//! Order inside a task: session and process group → files (fds at their
//! numbers, sharing descriptions inherited from the parent) → cwd, root,
//! umask → fork the children → stage memory → rlimits → blob.

use std::convert::Infallible;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use anyhow::{bail, Context, Result};
use cryo_restorer::abi::{
    Creds, ItimerVal, KSigAction, Madvise, PrctlMmMap, QueuedSignal, Range, ThreadState, VmaMove,
};
use nix::fcntl::OFlag;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{self, Pid};

use super::blob::{self, BlobPlan};
use super::plan::{Plan, TaskImage};
use super::{report_error, EngineFds};
use crate::image::pb;
use crate::mem::{self, VmaKind, PAGE_SIZE};
use crate::proc;
use crate::regs;
use crate::sys::{clone as sysc, mmap};

/// Runs task `idx` of the plan in the current (freshly cloned) process.
/// Never returns: it ends in the blob, or reports an error and exits.
pub(crate) fn run(plan: &Plan, idx: usize, efds: EngineFds) -> ! {
    let pid = plan.tasks[idx].pid;
    match restore_task(plan, idx, efds) {
        Ok(never) => match never {},
        Err(e) => {
            report_error(efds.err_w, &format!("Restore of pid {pid} failed: {e:#}"));
            // SAFETY-free: _exit skips atexit handlers of the engine image.
            crate::sys::rawfd::exit_now(1)
        }
    }
}

fn restore_task(plan: &Plan, idx: usize, efds: EngineFds) -> Result<Infallible> {
    crate::log::silence();
    let t = &plan.tasks[idx];
    // Nothing may interrupt the restore; the blob's sigreturn installs the
    // task's own mask.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None).context("sigprocmask")?;
    set_session(plan, t, efds)?;
    crate::files::restore::setup_fds(plan, idx, efds)?;
    crate::files::tty::setup_ctty(plan, idx, efds)?;
    setup_fs(plan, t)?;
    super::session::fork_children(plan, &t.children, efds)?;
    super::session::await_real_parent(plan, idx)?;
    let staged = stage_memory(plan, t, efds)?;
    set_rlimits(t);
    set_task_attrs(t)?;
    jump(plan, t, efds, staged)
}

/// A dumped zombie: take its session and group, then die the way it died.
/// The restored parent collects the status with wait() as it would have.
pub(crate) fn become_zombie(plan: &Plan, idx: usize, efds: EngineFds) -> ! {
    crate::log::silence();
    let t = &plan.tasks[idx];
    if let Err(e) = set_session(plan, t, efds) {
        report_error(efds.err_w, &format!("Restore of zombie pid {} failed: {e:#}", t.pid));
        crate::sys::rawfd::exit_now(1);
    }
    let status = t.zombie.unwrap_or(0);
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
            // SAFETY-free: resetting to SIG_DFL through nix's safe wrapper.
            let _ = crate::sys::rawfd::default_and_raise(s);
        }
    }
    crate::sys::rawfd::exit_now(libc::WEXITSTATUS(status))
}

fn set_session(plan: &Plan, t: &TaskImage, efds: EngineFds) -> Result<()> {
    let me = Pid::from_raw(t.pid);
    if t.sid == t.pid {
        unistd::setsid().with_context(|| format!("setsid for pid {}", t.pid))?;
        // A container's console: the init takes its terminal back.
        if !plan.shell_job
            && efds.tty >= 0
            && crate::ns::console_index(&plan.ttys, &plan.fx.ttys.inside, t.pid as u32).is_some()
        {
            crate::sys::ns::set_ctty(unsafe_borrow(efds.tty))
                .with_context(|| format!("pid {} cannot take its controlling terminal back", t.pid))?;
        }
        return Ok(());
    }
    let parent_pgid = t.parent.map(|p| plan.tasks[p].pgid);
    if t.pgid == t.pid {
        unistd::setpgid(me, me).context("setpgid")?;
        if t.parent.is_none() && plan.shell_job && efds.tty >= 0 {
            // The job's group becomes the terminal's foreground group, as
            // the shell had made it (SIGTTOU is blocked here).
            // SAFETY-free wrapper: nix::unistd::tcsetpgrp borrows the fd.
            let tty = unsafe_borrow(efds.tty);
            let _ = unistd::tcsetpgrp(tty, me);
        }
    } else if t.pgid != 0 && Some(t.pgid) != parent_pgid && !(t.parent.is_none() && plan.shell_job) {
        // Another group of the session: its leader (restored by another
        // branch of the tree at the same time) or, when the leader is
        // gone, a placeholder or another member (see `session`) may not
        // have made it yet: retry for a while.
        let start = std::time::Instant::now();
        loop {
            match unistd::setpgid(me, Pid::from_raw(t.pgid)) {
                Ok(()) => break,
                Err(nix::errno::Errno::EPERM) if start.elapsed() < std::time::Duration::from_secs(20) => {
                    std::thread::sleep(std::time::Duration::from_micros(500))
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("setpgid({}, {}): the process group did not appear", t.pid, t.pgid))
                }
            }
        }
    }
    Ok(())
}

fn unsafe_borrow(fd: RawFd) -> BorrowedFd<'static> {
    crate::sys::rawfd::borrow(fd)
}

fn setup_fs(plan: &Plan, t: &TaskImage) -> Result<()> {
    let path = |id: u32| -> Result<String> {
        Ok(plan.files[&id]
            .reg
            .as_ref()
            .with_context(|| format!("file id {id} is not a path"))?
            .name
            .clone())
    };
    // Both paths are as the dumper saw them (from its own root): enter the
    // working directory now; the root changes last, right before the blob
    // (the engine side still needs /proc until then).
    let cwd = path(t.fs.cwd_id)?;
    unistd::chdir(cwd.as_str()).with_context(|| format!("Cannot enter the working directory {cwd}"))?;
    nix::sys::stat::umask(Mode::from_bits_truncate(t.fs.umask.unwrap_or(0o022)));
    Ok(())
}

/// Where each staged VMA sits before the blob moves it.
pub(crate) struct Staged {
    region: Range,
    blob_base: u64,
    moves: Vec<VmaMove>,
    madvs: Vec<Madvise>,
    /// Where the fd restore parked each shared description (file id →
    /// fd), for the mappings above and a deleted executable.
    slots: std::collections::HashMap<u32, RawFd>,
}

fn stage_memory(plan: &Plan, t: &TaskImage, efds: EngineFds) -> Result<Staged> {
    let staged_vmas: Vec<&pb::VmaEntry> =
        t.mm.vmas
            .iter()
            .filter(|v| {
                matches!(
                    VmaKind::from_status(v.status),
                    Some(
                        VmaKind::AnonPrivate
                            | VmaKind::FilePrivate
                            | VmaKind::FileShared
                            | VmaKind::AnonShared
                            | VmaKind::SysvShm
                    )
                )
            })
            .collect();
    let slots = crate::files::restore::slots(plan, efds)?;
    let (stage_offs, staging_len) = staging_offsets(&staged_vmas);
    let blob_len = blob::area_size(&blob_counts(plan, t, staged_vmas.len())) as u64;
    let blob_len = blob_len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let need = blob_len + HPAGE_SIZE + staging_len + PAGE_SIZE;

    // A hole free both in the target layout and in ours.
    let own = proc::maps::parse_maps(&fs::read_to_string("/proc/self/maps").context("read /proc/self/maps")?)?;
    let mut busy: Vec<(u64, u64)> = t.mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.extend(own.iter().map(|v| (v.start, v.end)));
    let base = find_hole(&mut busy, need).context("No room to stage the restored memory")?;
    let blob_base = base;
    let region_start = (base + blob_len).next_multiple_of(HPAGE_SIZE);
    let region = Range {
        start: region_start,
        end: region_start + staging_len,
    };

    let mut pages_files = std::collections::HashMap::new();
    for f in t.fills.iter().filter(|f| !f.file.is_empty()) {
        if !pages_files.contains_key(&f.file) {
            let fd = nix::fcntl::openat(
                Some(efds.dir),
                f.file.as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("Cannot open {}", f.file))?;
            pages_files.insert(f.file.clone(), crate::sys::rawfd::own(fd));
        }
    }

    let mut moves = Vec::with_capacity(staged_vmas.len());
    let mut madvs = Vec::new();
    let mut stage_of: Vec<(u64, u64, u64)> = Vec::new(); // (target start, target end, staging start)
    let mut moved_in: Vec<(u64, u64, u64)> = Vec::new(); // the same, for pre-copied memory moved in
    for (v, &off) in staged_vmas.iter().zip(&stage_offs) {
        let at = region.start + off;
        let len = v.end - v.start;
        let kind = VmaKind::from_status(v.status).expect("filtered");
        let growsdown = v.flags & libc::MAP_GROWSDOWN as u32 != 0;
        let shm = crate::files::shmem::vma_file_id(v, &plan.files, &plan.fx.shmem, &plan.fx.ghost_of);
        match kind {
            _ if shm.is_some() => {
                // Shared memory, a memfd or a deleted file: the
                // description the fd restore parked at its slot. A private
                // mapping of it is staged writable like any private file
                // mapping (its saved pages go on top).
                let id = shm.unwrap_or_default();
                let slot = *slots.get(&id).with_context(|| format!("file id {id} has no slot"))?;
                let (prot, fl) = if kind == VmaKind::FilePrivate {
                    (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE)
                } else {
                    (v.prot as i32, libc::MAP_SHARED)
                };
                mmap::mmap_at(
                    at,
                    len,
                    prot,
                    fl | libc::MAP_FIXED_NOREPLACE,
                    Some(unsafe_borrow(slot)),
                    v.pgoff,
                )
                .with_context(|| format!("Cannot map the shared memory for {:#x}", v.start))?;
            }
            VmaKind::SysvShm => crate::ipc::sysv::vma_attach(v, at)?,
            VmaKind::AnonPrivate if prestaged(plan, t, v).is_some() => {
                // Pre-copied pages the engine already holds: move them in.
                let src = prestaged(plan, t, v).unwrap_or_default();
                mmap::move_to(src, len, at)
                    .with_context(|| format!("Cannot move the pre-copied memory for {:#x}", v.start))?;
                moved_in.push((v.start, v.end, at));
            }
            VmaKind::AnonPrivate => {
                let mut fl = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
                if growsdown {
                    fl |= libc::MAP_GROWSDOWN;
                }
                mmap::mmap_at(at, len, libc::PROT_READ | libc::PROT_WRITE, fl, None, 0)
                    .with_context(|| format!("Cannot stage anonymous memory for {:#x}", v.start))?;
            }
            VmaKind::FilePrivate | VmaKind::FileShared => {
                let fe = &plan.files[&(v.shmid as u32)];
                let reg = fe.reg.as_ref().expect("validated");
                let shared = kind == VmaKind::FileShared;
                let oflag = if v.fdflags.unwrap_or(0) as i32 & libc::O_ACCMODE == libc::O_RDWR {
                    OFlag::O_RDWR
                } else {
                    OFlag::O_RDONLY
                };
                let fd = nix::fcntl::open(reg.name.as_str(), oflag | OFlag::O_CLOEXEC, Mode::empty())
                    .with_context(|| format!("Cannot open the mapped file {}", reg.name))?;
                let fd = crate::sys::rawfd::own(fd);
                let (prot, fl) = if shared {
                    (v.prot as i32, libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE)
                } else {
                    (
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
                    )
                };
                mmap::mmap_at(at, len, prot, fl, Some(fd.as_fd()), v.pgoff)
                    .with_context(|| format!("Cannot map {} for {:#x}", reg.name, v.start))?;
            }
            _ => unreachable!(),
        }
        stage_of.push((v.start, v.end, at));
        moves.push(VmaMove {
            src: at,
            dst: v.start,
            len,
        });
        if let Some(m) = v.madv {
            for advice in mem::madv_list(m) {
                madvs.push(Madvise {
                    addr: v.start,
                    len,
                    advice,
                });
            }
            // Huge pages wanted: collapse now rather than waiting for
            // khugepaged (best effort).
            if m & (1 << 14) != 0 {
                madvs.push(Madvise {
                    addr: v.start,
                    len,
                    advice: 25,
                });
            }
        }
        for g in v.cryo_guards.chunks(2) {
            if let [gs, ge] = *g {
                madvs.push(Madvise {
                    addr: gs,
                    len: ge - gs,
                    advice: 102, // MADV_GUARD_INSTALL
                });
            }
        }
    }

    // Pre-copied memory moved in: the windows hold what the parent chain
    // resolves to; what the final images no longer have reads as zeros.
    if !moved_in.is_empty() {
        use crate::migrate::runs::RunSet;
        let covered = RunSet::from_ranges(t.fills.iter().map(|f| (f.vaddr, f.vaddr + f.len)));
        for &(vs, ve, st) in &moved_in {
            for &(hs, he) in RunSet::from_ranges([(vs, ve)]).subtract(&covered).ranges() {
                mmap::discard(st + (hs - vs), he - hs).with_context(|| format!("Cannot zero {hs:#x}"))?;
            }
        }
    }
    let in_moved = |a: u64, e: u64| moved_in.iter().any(|&(vs, ve, _)| vs <= a && e <= ve);
    // Fill the pages.
    let mut huge = HugeStager::default();
    for fill in &t.fills {
        if fill.lazy && lazy_ok(&staged_vmas, fill.vaddr, fill.vaddr + fill.len) {
            continue;
        }
        if fill.file.starts_with("parent/") && in_moved(fill.vaddr, fill.vaddr + fill.len) {
            continue;
        }
        if fill.file.is_empty() {
            bail!("post-copy pages at {:#x} outside private anonymous memory", fill.vaddr);
        }
        let pages = &pages_files[&fill.file];
        let mut a = fill.vaddr;
        let end = fill.vaddr + fill.len;
        let mut foff = fill.off;
        while a < end {
            let i = stage_of
                .iter()
                .position(|(s, e2, _)| *s <= a && a < *e2)
                .with_context(|| format!("page {a:#x} has no staged mapping"))?;
            let (vs, ve, st) = stage_of[i];
            let n = ve.min(end) - a;
            if wants_huge_pages(staged_vmas[i]) {
                huge.stage(a, st + (a - vs), n);
            }
            mmap::fill_from(pages.as_fd(), st + (a - vs), n, foff)
                .with_context(|| format!("Cannot read {} at offset {foff}", fill.file))?;
            foff += n;
            a += n;
        }
    }
    // Final protections of private mappings.
    for (v, &(_, _, st)) in staged_vmas.iter().zip(&stage_of) {
        if !matches!(
            VmaKind::from_status(v.status),
            Some(VmaKind::FileShared | VmaKind::AnonShared)
        ) && v.prot as i32 != libc::PROT_READ | libc::PROT_WRITE
        {
            mmap::mprotect(st, v.end - v.start, v.prot as i32)
                .with_context(|| format!("mprotect for {:#x}", v.start))?;
        }
    }
    // mlock'ed mappings: lock the staged copy; mremap keeps VM_LOCKED.
    for (v, &(_, _, st)) in staged_vmas.iter().zip(&stage_of) {
        if v.flags & libc::MAP_LOCKED as u32 != 0 {
            mmap::mlock(st, v.end - v.start, v.cryo_lock_onfault == Some(true))
                .with_context(|| format!("mlock for {:#x}", v.start))?;
        }
    }
    Ok(Staged {
        region,
        blob_base,
        moves,
        madvs,
        slots,
    })
}

use crate::sys::mmap::HPAGE_SIZE;

/// Where the engine holds the pre-copied pages of the private anonymous
/// mapping `v` (one window covering all of it), when it does and they are
/// used: not for a stack (a moved mapping cannot grow down) nor for huge
/// page mappings (staged as huge pages instead).
fn prestaged(plan: &Plan, t: &TaskImage, v: &pb::VmaEntry) -> Option<u64> {
    if VmaKind::from_status(v.status) != Some(VmaKind::AnonPrivate)
        || v.flags & libc::MAP_GROWSDOWN as u32 != 0
        || wants_huge_pages(v)
    {
        return None;
    }
    plan.prestaged.find(t.pid as u32, v.start, v.end)
}

/// Bytes of mappings the tasks of `plan` will move in from pre-copied
/// memory (see [`prestaged`]).
pub(crate) fn moved_in_bytes(plan: &Plan) -> u64 {
    plan.tasks
        .iter()
        .filter(|t| t.zombie.is_none())
        .flat_map(|t| {
            t.mm.vmas
                .iter()
                .filter(|v| prestaged(plan, t, v).is_some())
                .map(|v| v.end - v.start)
        })
        .sum()
}

/// Whether `[start, end)` lies in one private anonymous mapping (where a
/// lazy piece may be left unstaged for userfaultfd to fill later).
fn lazy_ok(staged: &[&pb::VmaEntry], start: u64, end: u64) -> bool {
    staged
        .iter()
        .any(|v| v.start <= start && end <= v.end && VmaKind::from_status(v.status) == Some(VmaKind::AnonPrivate))
}

/// Whether the kernel gave the original VMA huge pages on fault: private
/// anonymous memory madvise(MADV_HUGEPAGE)'d (and not MADV_NOHUGEPAGE).
fn wants_huge_pages(v: &pb::VmaEntry) -> bool {
    let madv = v.madv.unwrap_or(0);
    VmaKind::from_status(v.status) == Some(VmaKind::AnonPrivate)
        && madv & (1 << libc::MADV_HUGEPAGE) != 0
        && madv & (1 << libc::MADV_NOHUGEPAGE) == 0
}

/// Stages fully present 2 MiB blocks of huge-page VMAs as huge pages, so
/// they are filled without 512 small page faults each and stay huge after
/// the move. Best effort: after the first failure (THP disabled, no huge
/// page free), or once collapsing costs more than small pages would (the
/// kernel had to compact memory, or the hypervisor to back fresh memory),
/// the task goes on with small pages.
#[derive(Default)]
struct HugeStager {
    off: bool,
    blocks: u32,
    spent: std::time::Duration,
}

impl HugeStager {
    /// What a block may cost on average: populating 512 small pages costs
    /// about this much on a slow machine (a collapse normally takes a
    /// fraction of it).
    const PER_BLOCK: std::time::Duration = std::time::Duration::from_millis(1);
    /// Slack for a few slow blocks at the start.
    const SLACK: std::time::Duration = std::time::Duration::from_millis(5);

    /// For the present run at `target` (staged at `stage`, `len` bytes):
    /// collapses each 2 MiB-aligned block the run covers entirely.
    fn stage(&mut self, target: u64, stage: u64, len: u64) {
        let mut b = target.next_multiple_of(HPAGE_SIZE);
        while !self.off && b + HPAGE_SIZE <= target + len {
            let t = std::time::Instant::now();
            let ok = mmap::stage_huge(stage + (b - target)).is_ok();
            self.spent += t.elapsed();
            self.blocks += 1;
            if !ok || self.spent > Self::SLACK + Self::PER_BLOCK * self.blocks {
                self.off = true;
            }
            b += HPAGE_SIZE;
        }
    }
}

/// Where each staged VMA goes, as offsets into a 2 MiB-aligned staging
/// region, and the region's length. VMAs of 2 MiB or more get an offset
/// congruent to their target address modulo 2 MiB: the blob's mremap then
/// moves whole page tables (and huge pages stay huge) instead of moving
/// every page table entry one by one. Smaller VMAs are packed.
fn staging_offsets(vmas: &[&pb::VmaEntry]) -> (Vec<u64>, u64) {
    let mut offs = Vec::with_capacity(vmas.len());
    let mut at = 0u64;
    for v in vmas {
        let len = v.end - v.start;
        if len >= HPAGE_SIZE {
            let want = v.start % HPAGE_SIZE;
            at += (want + HPAGE_SIZE - at % HPAGE_SIZE) % HPAGE_SIZE;
        }
        offs.push(at);
        at += len;
    }
    (offs, at)
}

/// Finds the lowest hole of `need` bytes above 1 GiB that overlaps none of
/// `busy` (with a page of margin on both sides).
pub(crate) fn find_hole(busy: &mut [(u64, u64)], need: u64) -> Option<u64> {
    const LOW: u64 = 1 << 30;
    const TOP: u64 = 0x7fff_f000_0000;
    busy.sort();
    let mut cand = LOW;
    for &(s, e) in busy.iter() {
        let s = s.saturating_sub(PAGE_SIZE);
        let e = e + PAGE_SIZE;
        if e <= cand {
            continue;
        }
        if s >= cand + need {
            break;
        }
        cand = cand.max(e);
    }
    (cand + need <= TOP).then_some(cand)
}

/// Process attributes that survive the blob (they live in the task, not
/// in its address space): personality, parent-death signal, child
/// subreaper, THP and dumpable flags. Scheduling is set per thread by the
/// engine once the threads exist (`restore::release`).
fn set_task_attrs(t: &TaskImage) -> Result<()> {
    let tc = t.core.tc.as_ref().expect("validated");
    let thc = t.core.thread_core.as_ref().expect("validated");
    crate::sys::rawfd::set_personality(tc.personality).context("personality")?;
    // Always set: a namespace root was given SIGKILL by us until now.
    let pdeath = match thc.pdeath_sig.filter(|&s| s != 0) {
        Some(sig) => Some(nix::sys::signal::Signal::try_from(sig as i32).context("pdeathsig")?),
        None => None,
    };
    nix::sys::prctl::set_pdeathsig(pdeath).context("PR_SET_PDEATHSIG")?;
    // Always set: a session placeholder made this task a subreaper for a
    // moment (see `session`).
    {
        nix::sys::prctl::set_child_subreaper(tc.child_subreaper == Some(true)).context("PR_SET_CHILD_SUBREAPER")?;
    }
    if t.mm.thp_disabled == Some(true) {
        nix::sys::prctl::set_thp_disable(true).context("PR_SET_THP_DISABLE")?;
    }
    if let Some(d) = t.mm.dumpable {
        let _ = nix::sys::prctl::set_dumpable(d == 1);
    }
    let posix = tc.timers.as_ref().map(|tm| tm.posix.as_slice()).unwrap_or(&[]);
    if posix.iter().any(|p| notifies_other_thread(t, p)) && !crate::sys::rawfd::timer_restore_ids_supported() {
        bail!("a POSIX timer notifies a thread other than the leader, and this kernel cannot create timers with given ids (PR_TIMER_CREATE_RESTORE_IDS)");
    }
    if !posix.is_empty() {
        let timers: Vec<crate::sys::rawfd::PosixTimerSpec> = posix
            .iter()
            .filter(|p| !notifies_other_thread(t, p))
            .map(|p| {
                let tid = p.notify_thread_id.unwrap_or(0);
                Ok(crate::sys::rawfd::PosixTimerSpec {
                    id: p.it_id as i32,
                    clock: p.clock_id as i32,
                    signo: p.si_signo as i32,
                    notify: p.it_sigev_notify as i32,
                    sival: p.sival_ptr,
                    tid,
                })
            })
            .collect::<Result<_>>()?;
        crate::sys::rawfd::create_posix_timers(&timers).context("Cannot recreate the POSIX timers")?;
    }
    Ok(())
}

fn set_rlimits(t: &TaskImage) {
    let Some(rl) = t.core.tc.as_ref().and_then(|tc| tc.rlimits.as_ref()) else {
        return;
    };
    for (res, r) in rl.rlimits.iter().enumerate() {
        // Raising a hard limit needs CAP_SYS_RESOURCE, which this machine
        // may lack: keep what the kernel allows.
        if sysc::prlimit_set(Pid::from_raw(0), res as i32, r.cur, r.max).is_err() {
            let (_, cur_max) = sysc::prlimit_get(Pid::from_raw(0), res as i32).unwrap_or((0, 0));
            let _ = sysc::prlimit_set(Pid::from_raw(0), res as i32, r.cur.min(cur_max), cur_max);
        }
    }
}

/// Counts the blob needs to size its area (the addresses come later).
fn blob_counts(plan: &Plan, t: &TaskImage, nr_moves: usize) -> BlobPlan {
    let mut p = BlobPlan::default();
    p.moves = vec![VmaMove::default(); nr_moves];
    let madv =
        t.mm.vmas
            .iter()
            .map(|v| v.madv.map_or(0, |m| m.count_ones() as usize))
            .sum();
    p.madvs = vec![Madvise::default(); madv];
    p.auxv = vec![0; t.mm.mm_saved_auxv.len() + 2];
    p.groups = vec![0; 64];
    p.sigs = vec![
        QueuedSignal {
            shared: 0,
            signo: 0,
            tid: 0,
            _pad: 0,
            info: [0; 128]
        };
        count_sigs(t)
    ];
    p.xsave = Some(t.xsave.clone());
    p.threads = thread_plans(t);
    p.seccomp = plan.seccomp_chain(t).map(|c| c.1).unwrap_or_default();
    p.timers = t.core.tc.as_ref().map(|tc| timer_arms(t, tc)).unwrap_or_default();
    p
}

/// The POSIX timers with a value, for the blob to arm last.
fn timer_arms(t: &TaskImage, tc: &pb::TaskCoreEntry) -> Vec<cryo_restorer::abi::TimerArm> {
    let Some(tm) = tc.timers.as_ref() else {
        return Vec::new();
    };
    let elapsed = super::timers::elapsed_since(tm.cryo_read_at_ns);
    tm.posix
        .iter()
        .filter(|p| p.vsec != 0 || p.vnsec != 0 || notifies_other_thread(t, p))
        .map(|p| {
            let (vsec, vnsec) = if super::timers::is_wall_clock(p.clock_id) {
                super::timers::shift(p.vsec, p.vnsec, 1, elapsed)
            } else {
                (p.vsec, p.vnsec)
            };
            cryo_restorer::abi::TimerArm {
                id: i64::from(p.it_id),
                interval_sec: p.isec as i64,
                interval_nsec: p.insec as i64,
                value_sec: vsec as i64,
                value_nsec: vnsec as i64,
                create: i64::from(notifies_other_thread(t, p)),
                clock: i64::from(p.clock_id as i32),
                sival: p.sival_ptr,
                signo: p.si_signo as i32,
                notify: p.it_sigev_notify as i32,
                tid: i64::from(p.notify_thread_id.unwrap_or(0)),
            }
        })
        .collect()
}

/// A timer whose signal goes to a thread other than the leader: created
/// by the blob once that thread exists.
fn notifies_other_thread(t: &TaskImage, p: &pb::PosixTimerEntry) -> bool {
    matches!(p.notify_thread_id, Some(tid) if tid != 0 && tid != t.pid)
}

/// 16 NUL-padded bytes of a thread name.
fn comm_bytes(name: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    let b = name.as_bytes();
    let n = b.len().min(15);
    c[..n].copy_from_slice(&b[..n]);
    c
}

fn thread_state(tid: i32, ti: &pb::ThreadInfoX86, thc: &pb::ThreadCoreEntry, comm: &str) -> ThreadState {
    ThreadState {
        tid: tid as u32,
        comm: comm_bytes(comm),
        clear_tid_addr: ti.clear_tid_addr,
        robust_list: thc.futex_rla,
        robust_len: u64::from(thc.futex_rla_len),
        rseq_ptr: thc.rseq_entry.as_ref().map_or(0, |r| r.rseq_abi_pointer),
        rseq_len: thc.rseq_entry.as_ref().map_or(0, |r| r.rseq_abi_size),
        rseq_sig: thc.rseq_entry.as_ref().map_or(0, |r| r.signature),
        ..Default::default()
    }
}

fn altstack_of(thc: &pb::ThreadCoreEntry) -> blob::SigAltStack {
    thc.sas
        .as_ref()
        .map_or(blob::SigAltStack::default(), |s| blob::SigAltStack {
            sp: s.ss_sp,
            size: s.ss_size,
            flags: s.ss_flags as i32,
        })
}

/// The blob's view of the non-leader threads.
fn thread_plans(t: &TaskImage) -> Vec<blob::ThreadPlan> {
    t.threads
        .iter()
        .map(|th| {
            let ti = th.core.thread_info.as_ref().expect("validated");
            let thc = th.core.thread_core.as_ref().expect("validated");
            let gp = regs::frame_regs(&regs::gpregs_from_pb(&ti.gpregs));
            blob::ThreadPlan {
                state: thread_state(th.tid, ti, thc, thc.comm.as_deref().unwrap_or("")),
                regs: blob_regs(&gp),
                xsave: Some(th.xsave.clone()),
                sigmask: thc.blk_sigset.unwrap_or(0),
                altstack: altstack_of(thc),
            }
        })
        .collect()
}

fn count_sigs(t: &TaskImage) -> usize {
    let s = t
        .core
        .tc
        .as_ref()
        .and_then(|tc| tc.signals_s.as_ref())
        .map_or(0, |q| q.signals.len());
    let p = t
        .core
        .thread_core
        .as_ref()
        .and_then(|tc| tc.signals_p.as_ref())
        .map_or(0, |q| q.signals.len());
    s + p
}

fn jump(plan: &Plan, t: &TaskImage, efds: EngineFds, staged: Staged) -> Result<Infallible> {
    let core = &t.core;
    let ti = core.thread_info.as_ref().expect("validated");
    let tc = core.tc.as_ref().expect("validated");
    let thc = core.thread_core.as_ref().expect("validated");
    let gp = regs::frame_regs(&regs::gpregs_from_pb(&ti.gpregs));

    let mut sigactions = [KSigAction::default(); 64];
    let mut sigaction_mask = 0u64;
    let sigs_in_order = (1..=64usize).filter(|&s| s != 9 && s != 19);
    for (sig, sa) in sigs_in_order.zip(&tc.sigactions) {
        sigactions[sig - 1] = KSigAction {
            handler: sa.sigaction,
            flags: sa.flags,
            restorer: sa.restorer,
            mask: sa.mask,
        };
        sigaction_mask |= 1 << (sig - 1);
    }
    let mut itimers = [ItimerVal::default(); 3];
    if let Some(tm) = &tc.timers {
        let elapsed = super::timers::elapsed_since(tm.cryo_read_at_ns);
        for (i, it) in [&tm.real, &tm.virt, &tm.prof].into_iter().enumerate() {
            // Only ITIMER_REAL counts wall-clock time.
            let (vsec, vusec) = if i == 0 {
                super::timers::shift(it.vsec, it.vusec, 1000, elapsed)
            } else {
                (it.vsec, it.vusec)
            };
            itimers[i] = ItimerVal {
                interval_sec: it.isec as i64,
                interval_usec: it.iusec as i64,
                value_sec: vsec as i64,
                value_usec: vusec as i64,
            };
        }
    }
    let mut sigs = Vec::new();
    let mut push_sigs = |q: Option<&pb::SignalQueueEntry>, shared: u32, tid: u32| {
        for s in q.map(|q| q.signals.as_slice()).unwrap_or(&[]) {
            let mut info = [0u8; 128];
            let n = s.siginfo.len().min(128);
            info[..n].copy_from_slice(&s.siginfo[..n]);
            let signo = u32::from_le_bytes(info[0..4].try_into().unwrap());
            sigs.push(QueuedSignal {
                shared,
                signo,
                tid,
                _pad: 0,
                info,
            });
        }
    };
    push_sigs(tc.signals_s.as_ref(), 1, 0);
    push_sigs(thc.signals_p.as_ref(), 0, 0);
    for th in &t.threads {
        let q = th.core.thread_core.as_ref().and_then(|c| c.signals_p.as_ref());
        push_sigs(q, 0, th.tid as u32);
    }

    let mut auxv = t.mm.mm_saved_auxv.clone();
    if auxv.len() < 2 || auxv[auxv.len() - 2] != 0 {
        auxv.extend_from_slice(&[0, 0]);
    }
    let exe_name = plan.files[&t.mm.exe_file_id]
        .reg
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let exe_fd = if plan.fx.ghost_of.contains_key(&t.mm.exe_file_id) {
        // A deleted executable: the recreated ghost parked at its slot.
        let slot = *staged
            .slots
            .get(&t.mm.exe_file_id)
            .with_context(|| format!("the deleted executable {exe_name} has no slot"))?;
        nix::fcntl::fcntl(slot, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))
            .with_context(|| format!("Cannot open the deleted executable {exe_name}"))?
    } else {
        nix::fcntl::open(exe_name.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("Cannot open the executable {exe_name}"))?
    };
    let mm = &t.mm;
    let mmap_ = PrctlMmMap {
        start_code: mm.mm_start_code,
        end_code: mm.mm_end_code,
        start_data: mm.mm_start_data,
        end_data: mm.mm_end_data,
        start_brk: mm.mm_start_brk,
        brk: mm.mm_brk,
        start_stack: mm.mm_start_stack,
        arg_start: mm.mm_arg_start,
        arg_end: mm.mm_arg_end,
        env_start: mm.mm_env_start,
        env_end: mm.mm_env_end,
        auxv: 0,
        auxv_size: (auxv.len() * 8) as u32,
        exe_fd: exe_fd as u32,
    };
    let vvar = mm
        .vmas
        .iter()
        .find(|v| VmaKind::from_status(v.status) == Some(VmaKind::Vvar))
        .map(|v| v.start);
    let creds = thc.creds.as_ref().map(creds_for).unwrap_or(Ok((
        Creds {
            skip: 1,
            ..Default::default()
        },
        vec![],
    )))?;
    let seccomp = plan.seccomp_chain(t)?;
    let plan_b = BlobPlan {
        moves: staged.moves,
        madvs: staged.madvs,
        keep_extra: vec![staged.region],
        vdso_vvar_start: vvar.unwrap_or(0),
        mm: mmap_,
        auxv,
        exe_fd,
        sigactions,
        sigaction_mask,
        itimers,
        thread: thread_state(t.pid, ti, thc, thc.comm.as_deref().unwrap_or(&tc.comm)),
        creds: creds.0,
        groups: creds.1,
        sigs,
        ready_fd: efds.ready_w,
        go_fd: efds.go_r,
        regs: blob_regs(&gp),
        xsave: Some(t.xsave.clone()),
        sigmask: tc.blk_sigset,
        altstack: altstack_of(thc),
        threads: thread_plans(t),
        seccomp_mode: seccomp.0,
        seccomp: seccomp.1,
        timers: timer_arms(t, tc),
        // Lazy pages: the engine takes this uffd (migrate::lazy::attach).
        uffd_flags: if t.fills.iter().any(|f| f.lazy) {
            (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64
        } else {
            0
        },
    };
    // pidfds: their targets exist now or soon (the tree is being built).
    crate::files::pidfd::restore(&plan.files, &t.fds, t.pid)?;
    // Established TCP connections leave repair mode last.
    crate::net::finish_repair(plan, t.pid)?;
    // Close what the restored task must not see: everything but its own
    // fds and the three the blob closes itself (ready, go, exe). The
    // error pipe goes too: from here on failures travel as blob reports.
    let keep: Vec<RawFd> = t
        .fds
        .iter()
        .map(|f| f.fd as RawFd)
        .chain([efds.ready_w, efds.go_r, efds.err_w, exe_fd])
        .collect();
    for fd in proc::fds(std::process::id())? {
        if !keep.contains(&fd) {
            let _ = unistd::close(fd);
        }
    }
    // After the closes: closing any fd of a file drops our POSIX locks on it.
    crate::files::locks::restore(&plan.fx.locks, t.pid)?;
    crate::files::fown::set_async(plan, t.pid, &t.fds)?;
    let threads = fs::read_dir("/proc/thread-self/..").map(|d| d.count()).unwrap_or(0);
    let root = plan.files[&t.fs.root_id]
        .reg
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| "/".into());
    if root != "/" {
        unistd::chroot(root.as_str()).with_context(|| format!("chroot {root}"))?;
    }
    let prepared = blob::place(&plan_b, staged.blob_base).context("Cannot place the restorer blob")?;
    let _ = unistd::close(efds.err_w);
    blob::enter(prepared, threads)
}

fn blob_regs(r: &crate::sys::ptrace::UserRegs) -> blob::UserRegs {
    blob::UserRegs::from_words(&[
        r.r15, r.r14, r.r13, r.r12, r.bp, r.bx, r.r11, r.r10, r.r9, r.r8, r.ax, r.cx, r.dx, r.si, r.di, r.orig_ax,
        r.ip, r.cs, r.flags, r.sp, r.ss, r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs,
    ])
}

/// The blob's credential block; `skip` when they equal ours already.
fn creds_for(c: &pb::CredsEntry) -> Result<(Creds, Vec<u32>)> {
    let own = proc::status::read(std::process::id())?;
    let w = |v: &[u32]| -> [u32; 2] { [v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0)] };
    let cw = |v: u64| -> [u32; 2] { [v as u32, (v >> 32) as u32] };
    let same = own.uid == [c.uid, c.euid, c.suid, c.fsuid]
        && own.gid == [c.gid, c.egid, c.sgid, c.fsgid]
        && own.groups == c.groups
        && cw(own.cap_inh) == w(&c.cap_inh)
        && cw(own.cap_prm) == w(&c.cap_prm)
        && cw(own.cap_eff) == w(&c.cap_eff)
        && cw(own.cap_bnd) == w(&c.cap_bnd)
        && cw(own.cap_amb) == w(&c.cap_amb)
        && c.secbits == 0
        && c.no_new_privs.unwrap_or(0) == 0;
    if c.groups.len() > 64 {
        bail!("{} supplementary groups (at most 64 supported)", c.groups.len());
    }
    let last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    Ok((
        Creds {
            skip: u32::from(same),
            uid: c.uid,
            gid: c.gid,
            euid: c.euid,
            egid: c.egid,
            suid: c.suid,
            sgid: c.sgid,
            fsuid: c.fsuid,
            fsgid: c.fsgid,
            secbits: c.secbits,
            no_new_privs: c.no_new_privs.unwrap_or(0),
            ngroups: c.groups.len() as u32,
            groups: 0,
            cap_inh: w(&c.cap_inh),
            cap_prm: w(&c.cap_prm),
            cap_eff: w(&c.cap_eff),
            cap_bnd: w(&c.cap_bnd),
            cap_amb: w(&c.cap_amb),
            cap_last_cap: last_cap,
            _pad: 0,
        },
        c.groups.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::find_hole;

    #[test]
    fn staging_keeps_big_vmas_congruent_to_their_targets() {
        use super::{staging_offsets, HPAGE_SIZE};
        use crate::image::pb;
        let vma = |start: u64, len: u64| pb::VmaEntry {
            start,
            end: start + len,
            ..Default::default()
        };
        let m = 1u64 << 20;
        let vmas = [
            vma(0x5555_0000_1000, 0x3000),           // small: packed at 0
            vma(0x7f00_0010_3000, 4 * m),            // big: offset = 0x103000 mod 2 MiB
            vma(0x7f00_1000_0000, 0x1000),           // small: right after
            vma(0x7f00_2000_0000 + 5 * 4096, 2 * m), // big, 5 pages past a 2 MiB boundary
        ];
        let refs: Vec<&pb::VmaEntry> = vmas.iter().collect();
        let (offs, len) = staging_offsets(&refs);
        assert_eq!(offs[0], 0);
        assert_eq!(offs[1], 0x10_3000);
        assert_eq!(offs[2], 0x10_3000 + 4 * m);
        assert_eq!(offs[3] % HPAGE_SIZE, 5 * 4096);
        assert!(offs[3] >= offs[2] + 0x1000);
        assert_eq!(len, offs[3] + 2 * m);
        for (v, o) in vmas.iter().zip(&offs) {
            if v.end - v.start >= HPAGE_SIZE {
                assert_eq!(o % HPAGE_SIZE, v.start % HPAGE_SIZE);
            }
        }
        // No two staged VMAs overlap.
        for i in 1..vmas.len() {
            assert!(offs[i] >= offs[i - 1] + (vmas[i - 1].end - vmas[i - 1].start));
        }
    }

    #[test]
    fn hole_search_skips_busy_ranges() {
        let g = 1u64 << 30;
        let mut busy = vec![(g, g + 0x10000), (g + 0x20000, g + 0x30000)];
        // Needs 0x8000: fits between the two (with a page of margin).
        assert_eq!(find_hole(&mut busy, 0x8000), Some(g + 0x11000));
        // Needs 0x20000: only after the second.
        assert_eq!(find_hole(&mut busy, 0x20000), Some(g + 0x31000));
        let mut none: Vec<(u64, u64)> = vec![];
        assert_eq!(find_hole(&mut none, 0x1000), Some(g));
    }
}
