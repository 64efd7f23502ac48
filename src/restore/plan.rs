//! Stage Load: read every image and validate it before anything is
//! created.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};

use crate::image::{self, pb, ImageDir, Kind, PagemapIndex};
use crate::mem::{VmaKind, PAGE_SIZE};
use crate::regs;
use crate::sys::cpu::{xsave_layout, XsaveLayout};

use super::RestoreOpts;

/// Everything one process needs, validated.
#[derive(Debug, Clone)]
pub struct TaskImage {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub core: pb::CoreEntry,
    pub mm: pb::MmEntry,
    pub pagemap: Vec<pb::PagemapEntry>,
    /// Where the dumped pages are (this directory's pages file, or the
    /// parent chain's), in address order.
    pub fills: Vec<super::parent::Fill>,
    pub fs: pb::FsEntry,
    pub fds: Vec<pb::FdinfoEntry>,
    /// The XSAVE image rebuilt for this CPU.
    pub xsave: Vec<u8>,
    /// Indexes of the children in `Plan::tasks`.
    pub children: Vec<usize>,
    /// Index of the parent, None for the root.
    pub parent: Option<usize>,
    /// A zombie: its raw wait status (nothing else is restored for it).
    pub zombie: Option<i32>,
    /// The process's other threads (the leader's state is `core`).
    pub threads: Vec<ThreadImage>,
}

impl TaskImage {
    /// The core of thread `tid` (the leader's or another thread's).
    pub fn core_of(&self, tid: i32) -> Option<&pb::CoreEntry> {
        if tid == self.pid {
            return Some(&self.core);
        }
        self.threads.iter().find(|th| th.tid == tid).map(|th| &th.core)
    }
}

/// A non-leader thread.
#[derive(Debug, Clone)]
pub struct ThreadImage {
    pub tid: i32,
    pub core: pb::CoreEntry,
    pub xsave: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub tasks: Vec<TaskImage>,
    /// seccomp.img's filters (absent file: none).
    pub seccomp: Vec<pb::SeccompFilter>,
    pub files: HashMap<u32, pb::FileEntry>,
    pub ttys: HashMap<u32, pb::TtyInfoEntry>,
    /// What the file restore needs besides files.img (ghosts, pipe data...).
    pub fx: crate::files::restore::Extra,
    pub shell_job: bool,
    pub layout: XsaveLayout,
    /// System V IPC objects (recreated in a fresh ipc namespace).
    pub sysv: crate::ipc::sysv::Dumped,
    /// Pre-copied memory the engine already holds.
    pub prestaged: super::prestaged::Prestaged,
}

impl Plan {
    pub fn load(dir: &ImageDir, opts: &RestoreOpts) -> Result<Plan> {
        let inv: pb::InventoryEntry = dir
            .read_image::<pb::InventoryEntry>("inventory.img", Kind::Inventory)?
            .into_iter()
            .next()
            .context("inventory.img has no entry")?;
        image::inventory::check_inventory(&inv)?;
        let pstree: Vec<pb::PstreeEntry> = dir.read_image("pstree.img", Kind::Pstree)?;
        if pstree.is_empty() {
            bail!("pstree.img lists no process");
        }
        let mut files: HashMap<u32, pb::FileEntry> = dir
            .read_image::<pb::FileEntry>("files.img", Kind::Files)?
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
        let ttys: HashMap<u32, pb::TtyInfoEntry> = if dir.exists("tty-info.img") {
            dir.read_image::<pb::TtyInfoEntry>("tty-info.img", Kind::TtyInfo)?
                .into_iter()
                .map(|t| (t.id, t))
                .collect()
        } else {
            HashMap::new()
        };
        let mut fx = crate::files::restore::load(dir, &files)?;
        fx.tcp_close = opts.tcp_close;
        let layout = xsave_layout();
        let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768);
        let own_vdso = own_vdso_facts();

        let mut tasks: Vec<TaskImage> = Vec::new();
        let mut index: HashMap<i32, usize> = HashMap::new();
        for (i, e) in pstree.iter().enumerate() {
            let pid = e.pid as i32;
            let what = |s: &str| format!("pstree.img entry {i} (pid {pid}): {s}");
            if pid <= 0 {
                bail!(what("invalid pid"));
            }
            if i64::from(pid) >= pid_max {
                bail!(
                    "pid {pid} is not below this machine's pid_max ({pid_max}); raise /proc/sys/kernel/pid_max to restore it"
                );
            }
            if index.contains_key(&pid) {
                bail!(what("duplicate pid"));
            }
            if e.threads.first() != Some(&e.pid) {
                bail!(what("the first thread is not the process itself"));
            }
            let mut seen_tid = HashSet::new();
            for &t in &e.threads {
                if t == 0 || !seen_tid.insert(t) || i64::from(t) >= pid_max {
                    bail!(what(&format!("bad or duplicate thread id {t}")));
                }
            }
            let parent = if i == 0 {
                if e.ppid != 0 {
                    // The root's parent is outside the dump; CRIU writes 0.
                }
                None
            } else {
                match index.get(&(e.ppid as i32)) {
                    Some(&p) => Some(p),
                    None => bail!(what(&format!("parent {} is not listed before it", e.ppid))),
                }
            };
            let core: pb::CoreEntry = dir
                .read_image::<pb::CoreEntry>(&image::names::core(pid as u32), Kind::Core)?
                .into_iter()
                .next()
                .with_context(|| format!("{} is empty", image::names::core(pid as u32)))?;
            if core
                .tc
                .as_ref()
                .is_some_and(|tc| tc.task_state == crate::dump::TASK_ZOMBIE)
            {
                if i == 0 {
                    bail!("{}: the tree's root is a zombie", image::names::core(pid as u32));
                }
                let code = core.tc.as_ref().map_or(0, |tc| tc.exit_code as i32);
                index.insert(pid, tasks.len());
                tasks.push(TaskImage {
                    pid,
                    ppid: e.ppid as i32,
                    pgid: e.pgid as i32,
                    sid: e.sid as i32,
                    core,
                    mm: Default::default(),
                    pagemap: Vec::new(),
                    fills: Vec::new(),
                    fs: Default::default(),
                    fds: Vec::new(),
                    xsave: Vec::new(),
                    children: Vec::new(),
                    parent,
                    zombie: Some(code),
                    threads: Vec::new(),
                });
                continue;
            }
            validate_core(&core, pid)?;
            let fp = core
                .thread_info
                .as_ref()
                .map(|t| &t.fpregs)
                .with_context(|| format!("{}: no FPU state", image::names::core(pid as u32)))?;
            let xsave = regs::fpregs_from_pb(fp, &layout)
                .map_err(|m| anyhow::anyhow!("{}: {m}", image::names::core(pid as u32)))?;
            let mm: pb::MmEntry = dir
                .read_image::<pb::MmEntry>(&image::names::mm(pid as u32), Kind::Mm)?
                .into_iter()
                .next()
                .with_context(|| format!("{} is empty", image::names::mm(pid as u32)))?;
            validate_mm(&mm, pid, &files, own_vdso)?;
            let (_, pagemap) = dir.read_pagemap(&image::names::pagemap(pid as u32))?;
            let idx: PagemapIndex = dir.pagemap_index(pid as u32)?;
            let mut fills = super::parent::fills(dir.path(), pid as u32, &idx)?;
            for f in &mut fills {
                if f.file.is_empty() && !opts.lazy_pages {
                    bail!(
                        "{}: pages at {:#x} are left to post-copy (only the source has them); \
                         they can only be restored by the page server they were sent to",
                        image::names::pagemap(pid as u32),
                        f.vaddr
                    );
                }
                f.lazy = opts.lazy_pages && (f.file.starts_with("parent/") || f.file.is_empty());
            }
            check_pages_inside_vmas(&pagemap, &mm, pid)?;
            let fs: pb::FsEntry = dir
                .read_image::<pb::FsEntry>(&image::names::fs(pid as u32), Kind::Fs)?
                .into_iter()
                .next()
                .with_context(|| format!("{} is empty", image::names::fs(pid as u32)))?;
            for id in [fs.cwd_id, fs.root_id] {
                if !files.contains_key(&id) {
                    bail!("{}: file id {id} is not in files.img", image::names::fs(pid as u32));
                }
            }
            let ids: pb::TaskKobjIdsEntry = dir
                .read_image::<pb::TaskKobjIdsEntry>(&image::names::ids(pid as u32), Kind::Ids)?
                .into_iter()
                .next()
                .with_context(|| format!("{} is empty", image::names::ids(pid as u32)))?;
            let fdname = image::names::fdinfo(ids.files_id);
            let fds: Vec<pb::FdinfoEntry> = if dir.exists(&fdname) {
                dir.read_image(&fdname, Kind::Fdinfo)?
            } else {
                Vec::new()
            };
            let mut seen_fd = HashSet::new();
            for f in &fds {
                if !seen_fd.insert(f.fd) {
                    bail!("{fdname}: fd {} listed twice", f.fd);
                }
                let Some(fe) = files.get(&f.id) else {
                    bail!(
                        "{fdname}: fd {} refers to file id {}, which is not in files.img",
                        f.fd,
                        f.id
                    );
                };
                crate::files::restore::check_fd(&fdname, pid, f, fe, &files, &fx, opts)?;
            }
            index.insert(pid, tasks.len());
            tasks.push(TaskImage {
                pid,
                ppid: e.ppid as i32,
                pgid: e.pgid as i32,
                sid: e.sid as i32,
                core,
                mm,
                pagemap,
                fills,
                fs,
                fds,
                xsave,
                children: Vec::new(),
                parent,
                zombie: None,
                threads: load_threads(dir, &e.threads[1..], &layout)?,
            });
        }
        fx.shmem = crate::files::shmem::attach(dir, tasks.iter().map(|t| &t.mm), &mut files, &mut fx.memfds)?;
        for l in &fx.locks {
            if !tasks
                .iter()
                .any(|t| t.pid == l.pid && t.fds.iter().any(|f| f.fd as i32 == l.fd))
            {
                bail!(
                    "{}: a lock of pid {} on fd {}, which the tree does not have",
                    image::names::FILE_LOCKS,
                    l.pid,
                    l.fd
                );
            }
        }
        for i in 0..tasks.len() {
            if let Some(p) = tasks[i].parent {
                tasks[p].children.push(i);
            }
        }
        let seccomp = if dir.exists("seccomp.img") {
            dir.read_image::<pb::SeccompEntry>("seccomp.img", Kind::Seccomp)?
                .into_iter()
                .next()
                .map(|e| e.seccomp_filters)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let plan = Plan {
            tasks,
            seccomp,
            files,
            ttys,
            fx,
            shell_job: opts.shell_job,
            sysv: crate::ipc::sysv::load_dir(dir)?,
            layout,
            // Only where the pages are staged now (not left to lazy pages).
            prestaged: if opts.lazy_pages {
                Default::default()
            } else {
                opts.prestaged.clone()
            },
        };
        plan.check_sessions()?;
        Ok(plan)
    }

    /// The largest fd number any task uses (-1 for none).
    pub fn max_fd(&self) -> i32 {
        self.tasks
            .iter()
            .flat_map(|t| t.fds.iter().map(|f| f.fd as i32))
            .max()
            .unwrap_or(-1)
    }

    /// The seccomp chain of a task, oldest filter first.
    pub fn seccomp_chain(&self, t: &TaskImage) -> Result<(u64, Vec<(Vec<u8>, u32)>)> {
        let Some(thc) = t.core.thread_core.as_ref() else {
            return Ok((0, Vec::new()));
        };
        match thc.seccomp_mode.unwrap_or(0) {
            0 => Ok((0, Vec::new())),
            1 => Ok((1, Vec::new())),
            _ => {
                let mut chain = Vec::new();
                let mut cur = thc.seccomp_filter;
                while let Some(i) = cur {
                    let f = self
                        .seccomp
                        .get(i as usize)
                        .with_context(|| format!("pid {}: seccomp filter {i} is not in seccomp.img", t.pid))?;
                    if f.filter.is_empty() || f.filter.len() % 8 != 0 || chain.len() > 512 {
                        bail!("seccomp.img: filter {i} is malformed");
                    }
                    chain.push((f.filter.clone(), f.flags.unwrap_or(0)));
                    cur = f.prev;
                }
                chain.reverse();
                Ok((2, chain))
            }
        }
    }

    /// Tasks that run: all but zombies.
    pub fn live_tasks(&self) -> usize {
        self.tasks.iter().filter(|t| t.zombie.is_none()).count()
    }

    /// Threads that report ready from the blob: every thread of every
    /// live task.
    pub fn live_threads(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.zombie.is_none())
            .map(|t| 1 + t.threads.len())
            .sum()
    }

    pub fn pages_total(&self) -> u64 {
        self.tasks
            .iter()
            .flat_map(|t| t.pagemap.iter())
            .filter(|e| e.flags.unwrap_or(crate::mem::PE_PRESENT) & crate::mem::PE_PRESENT != 0)
            .map(pages_of)
            .sum()
    }

    pub fn is_pid(&self, pid: i32) -> bool {
        self.tasks.iter().any(|t| t.pid == pid)
    }

    /// Sessions and groups must be reproducible with setsid/setpgid in
    /// tree order (or inherited from outside with --shell-job).
    fn check_sessions(&self) -> Result<()> {
        // A session or group whose leader is not in the tree is recreated
        // with a placeholder (restore/session.rs); a session of another
        // task of the tree is entered only by being forked in it.
        for t in &self.tasks {
            let parent_sid = t.parent.map(|p| self.tasks[p].sid);
            if t.sid != t.pid && Some(t.sid) != parent_sid && self.is_pid(t.sid) {
                bail!(
                    "pid {} is in session {} of pid {}, but its parent is in session {}; such a tree cannot be recreated",
                    t.pid,
                    t.sid,
                    t.sid,
                    parent_sid.unwrap_or(0)
                );
            }
        }
        Ok(())
    }
}

fn load_threads(dir: &ImageDir, tids: &[u32], layout: &XsaveLayout) -> Result<Vec<ThreadImage>> {
    let mut out = Vec::with_capacity(tids.len());
    for &tid in tids {
        let name = image::names::core(tid);
        let core: pb::CoreEntry = dir
            .read_image::<pb::CoreEntry>(&name, Kind::Core)?
            .into_iter()
            .next()
            .with_context(|| format!("{name} is empty"))?;
        if core.mtype != pb::core_entry::March::X8664 as i32 {
            bail!("{name}: the image is for another architecture (march {})", core.mtype);
        }
        if core.tc.is_some() || core.ids.is_some() {
            bail!("{name}: a thread's core carries process state (tc or ids)");
        }
        let ti = core
            .thread_info
            .as_ref()
            .with_context(|| format!("{name}: no registers"))?;
        if ti.gpregs.cs != 0x33 || ti.gpregs.ss != 0x2b {
            bail!("{name}: unexpected segment registers");
        }
        if core.thread_core.is_none() {
            bail!("{name}: no thread state");
        }
        let xsave = regs::fpregs_from_pb(&ti.fpregs, layout).map_err(|m| anyhow::anyhow!("{name}: {m}"))?;
        out.push(ThreadImage {
            tid: tid as i32,
            core,
            xsave,
        });
    }
    Ok(out)
}

pub fn pages_of(e: &pb::PagemapEntry) -> u64 {
    e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages))
}

fn validate_core(core: &pb::CoreEntry, pid: i32) -> Result<()> {
    let name = image::names::core(pid as u32);
    if core.mtype != pb::core_entry::March::X8664 as i32 {
        bail!("{name}: the image is for another architecture (march {})", core.mtype);
    }
    let ti = core
        .thread_info
        .as_ref()
        .with_context(|| format!("{name}: no registers"))?;
    let gp = &ti.gpregs;
    if gp.mode.unwrap_or(1) != 1 {
        bail!("{name}: 32-bit (compat) tasks are not supported");
    }
    if gp.cs != 0x33 || gp.ss != 0x2b {
        bail!("{name}: unexpected segment registers cs {:#x} ss {:#x}", gp.cs, gp.ss);
    }
    let tc = core
        .tc
        .as_ref()
        .with_context(|| format!("{name}: no task state (tc)"))?;
    if tc.sigactions.len() != 62 {
        bail!("{name}: {} sigactions (expected 62)", tc.sigactions.len());
    }
    match tc.task_state {
        1 => {}
        3 => {}
        s => bail!("{name}: task state {s} is not supported yet"),
    }
    if core.thread_core.is_none() {
        bail!("{name}: no thread state");
    }
    Ok(())
}

/// (vdso size, vdso hash, vdso offset from vvar) of this kernel.
fn own_vdso_facts() -> Option<(u64, u64, u64)> {
    let maps = crate::proc::maps::parse_maps(&std::fs::read_to_string("/proc/self/maps").ok()?).ok()?;
    let vdso = maps.iter().find(|v| v.is_vdso())?;
    let vvar = maps.iter().find(|v| v.is_vvar())?;
    let len = (vdso.end - vdso.start) as usize;
    let mut buf = vec![0u8; len];
    crate::sys::vm::read_remote(nix::unistd::getpid(), &[(vdso.start, len)], &mut buf).ok()?;
    Some((len as u64, crate::dump::fnv1a(&buf), vdso.start - vvar.start))
}

fn validate_mm(
    mm: &pb::MmEntry,
    pid: i32,
    files: &HashMap<u32, pb::FileEntry>,
    own: Option<(u64, u64, u64)>,
) -> Result<()> {
    let name = image::names::mm(pid as u32);
    let mut last_end = 0u64;
    let mut vdso_start = None;
    for (i, v) in mm.vmas.iter().enumerate() {
        if v.start >= v.end || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 {
            bail!("{name}: VMA {i} has a bad range {:#x}-{:#x}", v.start, v.end);
        }
        if v.start < last_end {
            bail!("{name}: VMA {i} at {:#x} overlaps or is out of order", v.start);
        }
        last_end = v.end;
        let kind = VmaKind::from_status(v.status)
            .with_context(|| format!("{name}: VMA {i} has unknown status {:#x}", v.status))?;
        match kind {
            VmaKind::FilePrivate | VmaKind::FileShared => {
                let id = v.shmid as u32;
                match files.get(&id) {
                    Some(f) if f.reg.is_some() => {}
                    Some(f) if f.memfd.is_some() && kind == VmaKind::FileShared => {}
                    _ => bail!("{name}: VMA {i} maps file id {id}, which is not a regular file in files.img"),
                }
            }
            VmaKind::AnonShared => {}
            VmaKind::Vdso => vdso_start = Some(v.start),
            _ => {}
        }
    }
    if !files.contains_key(&mm.exe_file_id) {
        bail!("{name}: exe file id {} is not in files.img", mm.exe_file_id);
    }
    if mm.mm_saved_auxv.len() > 64 || mm.mm_saved_auxv.len() % 2 != 0 {
        bail!(
            "{name}: {} auxv words (expected an even number up to 64)",
            mm.mm_saved_auxv.len()
        );
    }
    if let (Some(size), Some(hash), Some((own_size, own_hash, own_off))) = (mm.cryo_vdso_size, mm.cryo_vdso_hash, own) {
        if size != own_size || hash != own_hash {
            bail!("{name}: the vdso of the dumped kernel differs from this kernel's; restoring across kernels is not supported yet");
        }
        if let (Some(vv), Some(vd)) = (mm.cryo_vvar_start, vdso_start) {
            if vd.checked_sub(vv) != Some(own_off) {
                bail!("{name}: the vvar/vdso layout differs from this kernel's");
            }
        }
    }
    Ok(())
}

fn check_pages_inside_vmas(pagemap: &[pb::PagemapEntry], mm: &pb::MmEntry, pid: i32) -> Result<()> {
    for e in pagemap {
        let start = e.vaddr;
        let end = start + pages_of(e) * PAGE_SIZE;
        // Every page must be inside a VMA whose kind carries pages.
        let mut a = start;
        while a < end {
            let Some(v) = mm.vmas.iter().find(|v| v.start <= a && a < v.end) else {
                bail!(
                    "{}: page at {a:#x} lies outside every mapping of {}",
                    image::names::pagemap(pid as u32),
                    image::names::mm(pid as u32)
                );
            };
            let kind = VmaKind::from_status(v.status);
            if !kind.is_some_and(|k| k.dumps_pages()) {
                bail!(
                    "{}: pages at {a:#x} belong to a mapping that cannot hold dumped pages",
                    image::names::pagemap(pid as u32)
                );
            }
            a = v.end.min(end);
        }
    }
    Ok(())
}
