//! The dump orchestrator: freeze → collect → write images → kill or resume.
//!
//! Nothing here runs code inside the dumped tasks except single syscalls
//! injected through an existing `syscall` instruction of their vdso
//! (`sys::inject`); memory is read from outside with process_vm_readv.
//! Any error before the images are complete drops the [`Frozen`] tree,
//! which detaches every thread: the original keeps running untouched.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cryo_restorer::abi::{ItimerVal, KSigAction};
use nix::unistd::Pid;
use tracing::{debug, info};

use crate::files::FileTable;
use crate::freeze::{Frozen, FrozenProc};
use crate::image::{self, pb, ImageDir, Kind};
use crate::mem::{self, VmaKind, PAGE_SIZE, PE_LAZY, PE_PRESENT};
use crate::proc;
use crate::regs;
use crate::sys::cpu::{xsave_layout, XsaveLayout};
use crate::sys::inject::Injector;
use crate::sys::{clone as sysc, ptrace, vm};

/// What `cryo dump` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct DumpOpts {
    pub pid: i32,
    pub dir: PathBuf,
    pub shell_job: bool,
    pub leave_running: bool,
    /// Dump established TCP connections (TCP_REPAIR).
    pub tcp_established: bool,
    /// Dump established TCP connections to be restored closed.
    pub tcp_close: bool,
    /// External mounts of a container: mountpoint → name (CRIU's ext_mnt
    /// at dump).
    pub ext_mnt: Vec<(String, String)>,
    /// CRIU's `external` (e.g. "net[INODE]:extRootNetNS": the caller owns
    /// that namespace and hands it back at restore).
    pub external: Vec<String>,
    /// Called with [`Event::PostDump`](crate::hooks::Event) once the images
    /// are complete, before the tree is killed or resumed; an error leaves
    /// the tree running and fails the dump.
    pub hook: crate::hooks::Hook,
    /// Pre-copy: pages copied in earlier rounds and not written since are
    /// recorded as PE_PARENT instead of being copied again.
    pub prev: Option<std::sync::Arc<crate::migrate::track::Tracker>>,
    /// Filled with the frozen tree's running processes (see
    /// [`crate::freeze::StopGuard`]).
    pub stop_guard: Option<std::sync::Arc<crate::freeze::StopGuard>>,
}

/// Figures reported in stats-dump and by the CLI.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub freezing_us: u64,
    pub frozen_us: u64,
    pub memdump_us: u64,
    pub memwrite_us: u64,
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub pages_skipped_parent: u64,
    pub processes: usize,
}

const NSIG: usize = 64;

/// Runs a dump.
pub fn dump(opts: &DumpOpts) -> Result<DumpStats> {
    crate::require_root("dump")?;
    let pid = opts.pid;
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("No process with pid {pid}");
    }
    debug!("dumping pid {pid}");
    if pid as u32 == std::process::id() {
        bail!("pid {pid} is cryo itself");
    }
    let status = proc::status::read(pid as u32).with_context(|| format!("Cannot read /proc/{pid}/status"))?;
    if status.tgid != pid as u32 {
        bail!("pid {pid} is a thread of process {}; dump the process", status.tgid);
    }
    let dir = ImageDir::create(&opts.dir)?;

    let t0 = Instant::now();
    let frozen = Frozen::seize_tree(pid)?;
    let t_frozen = Instant::now();
    if let Some(g) = &opts.stop_guard {
        g.set(&frozen);
    }
    // A tree in a network namespace of its own: the dump works from inside
    // it (sockets, lock, interfaces), and writes the namespace first.
    let tree_net = crate::net::ns::owned_by(pid)?;
    let _in_net = match &tree_net {
        Some(f) => Some(crate::net::ns::Enter::new(f)?),
        None => None,
    };
    // A namespace the caller owns (CRIU's external "net[INODE]:KEY", as
    // podman passes it) is entered for the sockets but not dumped: the
    // caller hands it back at restore.
    let net_external = tree_net.is_some() && {
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(format!("/proc/{pid}/ns/net"))?);
        opts.external.iter().any(|e| e.starts_with(&format!("net[{ino}]:")))
    };
    if tree_net.is_some() && !net_external {
        let n = crate::net::ns::dump().context("Cannot dump the tree's network namespace")?;
        dir.write_bytes(crate::net::ns::IMAGE, &n.to_json())?;
    }
    info!(
        "froze {} processes in {} us",
        frozen.procs.len(),
        (t_frozen - t0).as_micros()
    );

    let mut stats = DumpStats {
        freezing_us: (t_frozen - t0).as_micros() as u64,
        processes: frozen.procs.len(),
        ..Default::default()
    };
    let mut net = crate::net::DumpNet::new(opts.tcp_established, opts.tcp_close);
    let res = write_images(opts, &dir, &frozen, &mut stats, &mut net);
    if let Err(e) = res {
        drop(net); // repair off, locks lifted
        drop(frozen); // detaches: the tree runs on untouched
        return Err(e);
    }
    stats.frozen_us = t_frozen.elapsed().as_micros() as u64;
    write_stats(&dir, &stats)?;
    dir.finish_manifest()?;
    if let Err(e) = opts.hook.fire(crate::hooks::Event::PostDump) {
        drop(net); // repair off, locks lifted
        if e.downcast_ref::<HoldStopped>().is_some() {
            frozen.hold();
        } else {
            drop(frozen); // detaches: the tree runs on untouched
        }
        return Err(e);
    }
    if opts.leave_running {
        net.finish(false);
        frozen.resume();
        info!("dump done, tree left running");
    } else {
        frozen.kill();
        net.finish(true);
        info!("dump done, tree killed");
    }
    Ok(stats)
}

/// A PostDump hook's error that asks to leave the tree stopped (SIGSTOP)
/// instead of resuming it: whether it runs elsewhere is not known (a
/// migration whose destination's answer to Commit was lost).
#[derive(Debug)]
pub struct HoldStopped(pub String);

impl std::fmt::Display for HoldStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HoldStopped {}

/// Pids as the dumped tree sees them. A tree in our pid namespace keeps
/// its host pids; a tree that is its own pid namespace (its root is pid 1
/// there) is described with the pids of that namespace.
pub struct PidView {
    /// Index into the NSpid/NSpgid/NSsid lists.
    level: usize,
    pub own_ns: bool,
}

impl PidView {
    pub(crate) fn of_tree(root: i32) -> Result<PidView> {
        let me = proc::status::read(std::process::id())?;
        let r = proc::status::read(root as u32).with_context(|| format!("Cannot read /proc/{root}/status"))?;
        let mine = me.nspid.len().max(1) - 1;
        match r.nspid.len().max(1) - 1 {
            l if l == mine => Ok(PidView {
                level: l,
                own_ns: false,
            }),
            l if l == mine + 1 && r.nspid.last() == Some(&1) => Ok(PidView { level: l, own_ns: true }),
            _ => bail!("pid {root} is inside a pid namespace it does not lead; dump that namespace's init instead"),
        }
    }
    fn get(&self, host: i32, which: &str) -> Result<u32> {
        if !self.own_ns {
            let st = proc::status::read(host as u32)?;
            return Ok(match which {
                "pid" => host as u32,
                "pgid" => *st.nspgid.get(self.level).unwrap_or(&0),
                _ => *st.nssid.get(self.level).unwrap_or(&0),
            });
        }
        let st = proc::status::read(host as u32)?;
        let list = match which {
            "pid" => &st.nspid,
            "pgid" => &st.nspgid,
            _ => &st.nssid,
        };
        match list.get(self.level) {
            Some(&v) => Ok(v),
            None => bail!("pid {host} is not in the dumped pid namespace"),
        }
    }
    pub fn pid(&self, host: i32) -> Result<u32> {
        self.get(host, "pid")
    }
    pub fn pgid(&self, host: i32) -> Result<u32> {
        self.get(host, "pgid")
    }
    pub fn sid(&self, host: i32) -> Result<u32> {
        self.get(host, "sid")
    }
}

/// Dump-wide id counters (files, kernel objects, namespaces, pages files).
struct Ids {
    next_obj: u32,
    next_pages: u32,
    ns: HashMap<(String, u64), u32>,
    next_ns: u32,
}

impl Ids {
    fn obj(&mut self) -> u32 {
        self.next_obj += 1;
        self.next_obj
    }
    fn ns_id(&mut self, kind: &str, ino: u64) -> u32 {
        let next = &mut self.next_ns;
        *self.ns.entry((kind.to_string(), ino)).or_insert_with(|| {
            *next += 1;
            *next
        })
    }
}

const NS_KINDS: [&str; 8] = ["pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time"];

fn ns_inodes(pid: i32) -> Result<HashMap<&'static str, u64>> {
    let mut m = HashMap::new();
    for k in NS_KINDS {
        let md =
            fs::metadata(format!("/proc/{pid}/ns/{k}")).with_context(|| format!("Cannot stat /proc/{pid}/ns/{k}"))?;
        m.insert(k, md.ino());
    }
    Ok(m)
}

fn kobj_ids(ids: &mut Ids, ns: &HashMap<&'static str, u64>, own: bool) -> pb::TaskKobjIdsEntry {
    let (vm, files, fs_, sighand) = if own {
        (1, 1, 1, 1)
    } else {
        (ids.obj(), ids.obj(), ids.obj(), ids.obj())
    };
    pb::TaskKobjIdsEntry {
        vm_id: vm,
        files_id: files,
        fs_id: fs_,
        sighand_id: sighand,
        pid_ns_id: Some(ids.ns_id("pid", ns["pid"])),
        net_ns_id: Some(ids.ns_id("net", ns["net"])),
        ipc_ns_id: Some(ids.ns_id("ipc", ns["ipc"])),
        uts_ns_id: Some(ids.ns_id("uts", ns["uts"])),
        mnt_ns_id: Some(ids.ns_id("mnt", ns["mnt"])),
        user_ns_id: Some(ids.ns_id("user", ns["user"])),
        cgroup_ns_id: Some(ids.ns_id("cgroup", ns["cgroup"])),
        time_ns_id: Some(ids.ns_id("time", ns["time"])),
    }
}

fn write_images(
    opts: &DumpOpts,
    dir: &ImageDir,
    frozen: &Frozen,
    stats: &mut DumpStats,
    net: &mut crate::net::DumpNet,
) -> Result<()> {
    let layout = xsave_layout();
    let mut ids = Ids {
        next_obj: 1, // 1 is the dumper itself, as CRIU numbers them
        next_pages: 0,
        ns: HashMap::new(),
        next_ns: 0,
    };
    let own = std::process::id() as i32;
    let own_ns = ns_inodes(own)?;
    let root_ids = kobj_ids(&mut ids, &own_ns, true);

    let root = &frozen.procs[0];
    let view = PidView::of_tree(root.pid)?;
    let root_sid = view.sid(root.pid)?;
    if !opts.shell_job && root_sid != view.pid(root.pid)? {
        bail!(
            "pid {} is not a session leader (its session is {}); it was started from a shell: pass --shell-job",
            root.pid,
            root_sid
        );
    }

    let tree_ns = ns_inodes(root.pid)?;
    let owned = crate::ns::dump(
        dir,
        &crate::ns::DumpCtx {
            pid: root.pid,
            own: &own_ns,
            tree: &tree_ns,
            ext_mnt: &opts.ext_mnt,
            external: &opts.external,
        },
        |k, ino| ids.ns_id(k, ino),
    )?;

    let mut files = FileTable::default();
    files.net = std::mem::take(net);
    if owned.contains(&"mnt") {
        files.root_prefix = Some(format!("/proc/{}/root", root.pid));
    }
    let mut pstree = Vec::new();
    let mut seccomp: Vec<pb::SeccompFilter> = Vec::new();
    for p in &frozen.procs {
        let vpid = view.pid(p.pid)?;
        let vppid = if p.ppid == 0 { 0 } else { view.pid(p.ppid)? };
        if let Some(code) = p.zombie {
            let stat = proc::stat::read(p.pid as u32)?;
            dir.write_image(&image::names::core(vpid), Kind::Core, &[zombie_core(&stat, code)])?;
            pstree.push(pb::PstreeEntry {
                pid: vpid,
                ppid: vppid,
                pgid: view.pgid(p.pid)?,
                sid: view.sid(p.pid)?,
                threads: vec![vpid],
            });
            continue;
        }
        let pd = dump_process(opts, dir, p, &view, &layout, &mut ids, &mut files, stats, &mut seccomp)
            .with_context(|| format!("Dump of pid {} failed", p.pid))?;
        let ns = ns_inodes(p.pid)?;
        for k in ["pid", "net", "ipc", "uts", "mnt", "user", "cgroup"] {
            if k == "pid" && view.own_ns {
                continue;
            }
            if ns[k] != own_ns[k] && !(owned.contains(&k) && ns[k] == tree_ns[k]) {
                bail!(
                    "pid {} is in a {k} namespace of its own, below the tree's; nested namespaces are not supported",
                    p.pid
                );
            }
        }
        let kids = kobj_ids(&mut ids, &ns, false);
        dir.write_image(&image::names::ids(vpid), Kind::Ids, &[kids.clone()])?;
        dir.write_image(&image::names::fdinfo(kids.files_id), Kind::Fdinfo, &pd.fdinfo)?;
        pstree.push(pb::PstreeEntry {
            pid: vpid,
            ppid: vppid,
            pgid: pd.pgid,
            sid: pd.sid,
            threads: p.tids.iter().map(|&t| view.pid(t)).collect::<Result<_>>()?,
        });
    }
    check_groups(&pstree)?;
    dir.write_image("pstree.img", Kind::Pstree, &pstree)?;
    let mut tree = HashMap::new();
    for p in &frozen.procs {
        for &t in std::iter::once(&p.pid).chain(&p.tids) {
            tree.insert(t, view.pid(t).map(|v| v as i32).unwrap_or(-1));
        }
    }
    files.resolve_pidfds(&tree)?;
    files.write_images(dir)?;
    let ipc_ino = ns_inodes(root.pid)?["ipc"];
    let live: Vec<i32> = frozen
        .procs
        .iter()
        .filter(|p| p.zombie.is_none())
        .map(|p| p.pid)
        .collect();
    crate::ipc::sysv::dump(
        dir,
        ids.ns_id("ipc", ipc_ino),
        &live,
        root.pid,
        ipc_ino != own_ns["ipc"],
    )?;
    *net = std::mem::take(&mut files.net);
    dir.write_image(
        "seccomp.img",
        Kind::Seccomp,
        &[pb::SeccompEntry {
            seccomp_filters: seccomp,
        }],
    )?;
    let now = |clk| {
        let ts = nix::time::clock_gettime(clk).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
        pb::Timespec {
            tv_sec: ts.tv_sec() as u64,
            tv_nsec: ts.tv_nsec() as u64,
        }
    };
    dir.write_image(
        "timens-0.img",
        Kind::Timens,
        &[pb::TimensEntry {
            monotonic: (now(nix::time::ClockId::CLOCK_MONOTONIC)),
            boottime: (now(nix::time::ClockId::CLOCK_BOOTTIME)),
        }],
    )?;
    let inv = image::inventory::new_inventory(root_ids);
    dir.write_image("inventory.img", Kind::Inventory, &[inv])?;
    Ok(())
}

/// Refuses, while the tree can still run on untouched, the session
/// layouts the restore could not recreate.
fn check_groups(pstree: &[pb::PstreeEntry]) -> Result<()> {
    // Sessions and groups whose leader is gone (or outside) are recreated
    // with placeholders at restore (restore/session.rs). What cannot be:
    // a task in the session of another task of the tree while its parent
    // is in a different one (the parent called setsid() after forking it:
    // a session is entered only by fork).
    let by_pid = |id: u32| pstree.iter().find(|e| e.pid == id);
    for e in pstree {
        let Some(parent) = by_pid(e.ppid) else { continue };
        if e.sid != e.pid && e.sid != parent.sid && by_pid(e.sid).is_some() {
            bail!(
                "pid {} is in session {} of pid {}, but its parent {} moved to session {} after forking it; such a tree cannot be recreated",
                e.pid,
                e.sid,
                e.sid,
                parent.pid,
                parent.sid
            );
        }
    }
    Ok(())
}

/// TASK_ZOMBIE in CRIU's task_state numbering.
pub const TASK_ZOMBIE: u32 = 6;

/// The core of a zombie: only its state, exit status and name.
fn zombie_core(stat: &proc::stat::Stat, code: i32) -> pb::CoreEntry {
    pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        tc: Some(pb::TaskCoreEntry {
            task_state: TASK_ZOMBIE,
            exit_code: code as u32,
            comm: stat.comm.clone(),
            flags: stat.flags,
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct ProcOut {
    pgid: u32,
    sid: u32,
    fdinfo: Vec<pb::FdinfoEntry>,
}

#[allow(clippy::too_many_arguments)]
fn dump_process(
    opts: &DumpOpts,
    dir: &ImageDir,
    p: &FrozenProc,
    view: &PidView,
    layout: &XsaveLayout,
    ids: &mut Ids,
    files: &mut FileTable,
    stats: &mut DumpStats,
    seccomp: &mut Vec<pb::SeccompFilter>,
) -> Result<ProcOut> {
    let pid = p.pid;
    let vpid = view.pid(pid)?;
    let stat = proc::stat::read(pid as u32)?;
    let status = proc::status::read(pid as u32)?;
    // smaps walks every page table to count pages, which costs about 10 ms
    // per 256 MiB mapped; only its VmFlags are needed, and not before the
    // VMA entries below. Read it on the side; the steps until then use the
    // maps lines (same VMAs: the tree is frozen).
    let smaps = std::thread::spawn(move || proc::maps::read_smaps(pid as u32));
    let vmas = proc::maps::read(pid as u32)?;
    // Seccomp: the leader's filter chain (newest first from ptrace) is
    // appended to seccomp.img oldest first, each pointing at its `prev`.
    let (seccomp_mode, seccomp_top) = match status.seccomp {
        0 => (None, None),
        1 => (Some(1), None),
        _ => {
            let mut chain = Vec::new();
            let mut idx = 0;
            while let Some(f) = ptrace::seccomp_filter(Pid::from_raw(pid), idx)
                .with_context(|| format!("PTRACE_SECCOMP_GET_FILTER of pid {pid}"))?
            {
                chain.push(f);
                idx += 1;
            }
            let mut top = None;
            for f in chain.into_iter().rev() {
                let i = seccomp.len() as u32;
                seccomp.push(pb::SeccompFilter {
                    filter: f,
                    prev: top,
                    flags: None,
                });
                top = Some(i);
            }
            (Some(2), top)
        }
    };

    let timers = fs::read_to_string(format!("/proc/{pid}/timers"))
        .ok()
        .map(|t| proc::timers::parse(&t))
        .transpose()
        .with_context(|| format!("Cannot parse /proc/{pid}/timers"))?
        .unwrap_or_default();
    // POSIX timer signals still queued: their overrun count exists only in
    // the kernel until delivery, so they are delivered (rt_sigtimedwait)
    // and queued again (rt_sigqueueinfo) inside the task, after which the
    // queued siginfo carries the count.
    let timer_sigs: Vec<u64> = ptrace::peek_siginfo(Pid::from_raw(pid), true)?
        .iter()
        .filter(|s| i32::from_le_bytes(s[8..12].try_into().unwrap()) == -2)
        .map(|s| u64::from(u32::from_le_bytes(s[0..4].try_into().unwrap())))
        .collect();
    // Per-task facts that need the task's own context, by injection.
    let mut inj = Injector::new(Pid::from_raw(pid), &vmas)
        .with_context(|| format!("Cannot prepare syscall injection into pid {pid}"))?;
    let inj_res = (|| -> Result<Injected> {
        let mut out = Injected::default();
        let scratch = inj.scratch();
        for sig in 1..=NSIG {
            if sig == 9 || sig == 19 {
                continue;
            }
            let r = inj.syscall(libc::SYS_rt_sigaction, [sig as u64, 0, scratch, 8, 0, 0])?;
            if r < 0 {
                bail!("rt_sigaction({sig}) in pid {pid} failed: errno {}", -r);
            }
            let b = inj.read_mem(scratch, 32)?;
            let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
            out.sigactions[sig - 1] = KSigAction {
                handler: w(0),
                flags: w(1),
                restorer: w(2),
                mask: w(3),
            };
        }
        out.timers_read_at_ns = crate::restore::timers::realtime_ns();
        for (i, which) in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF]
            .into_iter()
            .enumerate()
        {
            let r = inj.syscall(libc::SYS_getitimer, [which as u64, scratch, 0, 0, 0, 0])?;
            if r < 0 {
                bail!("getitimer in pid {pid} failed: errno {}", -r);
            }
            let b = inj.read_mem(scratch, 32)?;
            let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
            out.itimers[i] = ItimerVal {
                interval_sec: w(0),
                interval_usec: w(1),
                value_sec: w(2),
                value_usec: w(3),
            };
        }
        let r = inj.syscall(libc::SYS_sigaltstack, [0, scratch, 0, 0, 0, 0])?;
        if r == 0 {
            let b = inj.read_mem(scratch, 24)?;
            out.sas = (
                u64::from_le_bytes(b[0..8].try_into().unwrap()),
                u32::from_le_bytes(b[8..12].try_into().unwrap()),
                u64::from_le_bytes(b[16..24].try_into().unwrap()),
            );
        }
        let r = inj.syscall(libc::SYS_prctl, [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0])?;
        if r == 0 {
            let b = inj.read_mem(scratch, 8)?;
            out.clear_tid = u64::from_le_bytes(b[0..8].try_into().unwrap());
        }
        out.brk = inj.syscall(libc::SYS_brk, [0; 6])? as u64;
        if !timer_sigs.is_empty() {
            let nspid = inj.syscall(libc::SYS_getpid, [0; 6])?;
            for &sig in &timer_sigs {
                let set = (1u64 << (sig - 1)).to_le_bytes();
                inj.write_mem(scratch + 512, &set)?;
                inj.write_mem(scratch + 256, &[0u8; 16])?;
                let r = inj.syscall(
                    libc::SYS_rt_sigtimedwait,
                    [scratch + 512, scratch, scratch + 256, 8, 0, 0],
                )?;
                if r == sig as i64 {
                    let r = inj.syscall(libc::SYS_rt_sigqueueinfo, [nspid as u64, sig, scratch, 0, 0, 0])?;
                    if r < 0 {
                        bail!("Cannot queue timer signal {sig} again in pid {pid}: errno {}", -r);
                    }
                }
            }
        }
        for t in &timers {
            let r = inj.syscall(libc::SYS_timer_gettime, [t.id as u64, scratch, 0, 0, 0, 0])?;
            if r < 0 {
                bail!("timer_gettime({}) in pid {pid} failed: errno {}", t.id, -r);
            }
            let b = inj.read_mem(scratch, 32)?;
            let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
            let overrun = inj
                .syscall(libc::SYS_timer_getoverrun, [t.id as u64, 0, 0, 0, 0, 0])?
                .max(0) as u32;
            out.posix.push(pb::PosixTimerEntry {
                it_id: t.id as u32,
                clock_id: t.clock as u32,
                si_signo: t.signo as u32,
                it_sigev_notify: t.notify as u32,
                sival_ptr: t.sival,
                overrun,
                isec: w(0),
                insec: w(1),
                vsec: w(2),
                vnsec: w(3),
                notify_thread_id: (t.notify & libc::SIGEV_THREAD_ID != 0).then_some(t.notify_id),
            });
        }
        out.dumpable = inj.syscall(libc::SYS_prctl, [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0])?;
        out.thp_disabled = inj.syscall(libc::SYS_prctl, [libc::PR_GET_THP_DISABLE as u64, 0, 0, 0, 0, 0])? == 1;
        out.secbits = inj
            .syscall(libc::SYS_prctl, [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0])?
            .max(0) as u32;
        let r = inj.syscall(libc::SYS_prctl, [libc::PR_GET_PDEATHSIG as u64, scratch, 0, 0, 0, 0])?;
        if r == 0 {
            out.pdeathsig = u32::from_le_bytes(inj.read_mem(scratch, 4)?[..4].try_into().unwrap());
        }
        let r = inj.syscall(
            libc::SYS_prctl,
            [libc::PR_GET_CHILD_SUBREAPER as u64, scratch, 0, 0, 0, 0],
        )?;
        if r == 0 {
            out.subreaper = u32::from_le_bytes(inj.read_mem(scratch, 4)?[..4].try_into().unwrap()) != 0;
        }
        Ok(out)
    })();
    inj.restore()
        .with_context(|| format!("Cannot restore the registers of pid {pid}"))?;
    let inj_out = inj_res?;

    // Per-thread state, the leader first.
    let mut threads = Vec::with_capacity(p.tids.len());
    for &tid in &p.tids {
        let (sas, clear_tid) = if tid == pid {
            (inj_out.sas, inj_out.clear_tid)
        } else {
            thread_injected(tid, &vmas)?
        };
        threads.push(dump_thread(pid, tid, layout, sas, clear_tid)?);
    }
    // Files: exe, mapped files, fds, cwd/root.
    let exe = fs::read_link(format!("/proc/{pid}/exe")).with_context(|| format!("Cannot read /proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy();
    let exe_id = if exe.ends_with(" (deleted)") {
        files.unlinked_mapping(pid, &exe, &format!("/proc/{pid}/exe"), libc::O_RDONLY as u32)?
    } else {
        files.reg_path(&exe, 0, 0)?
    };
    let vmas = {
        let same = |a: &[proc::maps::Vma], b: &[proc::maps::Vma]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.start == y.start && x.end == y.end)
        };
        match smaps.join() {
            Ok(Ok(s)) if same(&s, &vmas) => s,
            // The injection above may have grown the stack meanwhile.
            _ => proc::maps::read_smaps(pid as u32)?,
        }
    };
    let mut vma_entries = Vec::with_capacity(vmas.len());
    let mut scans: HashMap<u64, Vec<vm::PageRegion>> = HashMap::new();
    let pagemap =
        fs::File::open(format!("/proc/{pid}/pagemap")).with_context(|| format!("Cannot open /proc/{pid}/pagemap"))?;
    for v in &vmas {
        if let Some(e) = files.shmem_vma(pid, v)? {
            vma_entries.push(e);
            continue;
        }
        let kind = VmaKind::of(v);
        let file_id = match kind {
            VmaKind::FilePrivate | VmaKind::FileShared => {
                let path = v.path.as_deref().unwrap_or_default();
                if v.deleted() {
                    let via = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                    Some(files.unlinked_mapping(pid, path, &via, mem::open_mode(v))?)
                } else {
                    Some(files.reg_path(path, 0, 0)?)
                }
            }
            VmaKind::AnonShared => bail!(
                "pid {pid} has shared anonymous memory at {:#x}-{:#x}; not supported yet",
                v.start,
                v.end
            ),
            _ => None,
        };
        let mut e = mem::vma_entry(v, file_id);
        if kind.dumps_pages() {
            // One page-table walk finds the guard regions (kept in the
            // VMA) and the pages to dump (used by dump_pages below).
            let rs = scan_vma(&pagemap, pid, v)?;
            for g in rs.iter().filter(|r| r.categories & vm::category::GUARD != 0) {
                e.cryo_guards.extend([g.start, g.end]);
            }
            scans.insert(v.start, rs);
        }
        vma_entries.push(e);
    }
    let nlocks = files.lock_count();
    let fdinfo = files
        .dump_fds(pid, opts.shell_job, &stat)
        .with_context(|| format!("Cannot dump the files of pid {pid}"))?;
    files.relabel_locks(nlocks, vpid as i32);
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).with_context(|| format!("Cannot read /proc/{pid}/cwd"))?;
    let root = fs::read_link(format!("/proc/{pid}/root")).with_context(|| format!("Cannot read /proc/{pid}/root"))?;
    let cwd_id = files.reg_path(&cwd.to_string_lossy(), 0, 0)?;
    let root_id = files.reg_path(&root.to_string_lossy(), 0, 0)?;
    dir.write_image(
        &image::names::fs(vpid),
        Kind::Fs,
        &[pb::FsEntry {
            cwd_id,
            root_id,
            umask: Some(status.umask),
        }],
    )?;

    // mm.
    let auxv = proc::auxv::read(pid as u32)?;
    let (vdso_size, vdso_hash, vvar_start) = vdso_facts(pid, &vmas)?;
    let mm = pb::MmEntry {
        mm_start_code: stat.start_code,
        mm_end_code: stat.end_code,
        mm_start_data: stat.start_data,
        mm_end_data: stat.end_data,
        mm_start_stack: stat.start_stack,
        mm_start_brk: stat.start_brk,
        mm_brk: inj_out.brk,
        mm_arg_start: stat.arg_start,
        mm_arg_end: stat.arg_end,
        mm_env_start: stat.env_start,
        mm_env_end: stat.env_end,
        exe_file_id: exe_id,
        mm_saved_auxv: auxv.into_iter().take(44).collect(),
        vmas: vma_entries.clone(),
        dumpable: Some(inj_out.dumpable as i32),
        aios: vec![],
        thp_disabled: Some(inj_out.thp_disabled),
        cryo_vdso_size: vdso_size,
        cryo_vdso_hash: vdso_hash,
        cryo_vvar_start: vvar_start,
    };
    dir.write_image(&image::names::mm(vpid), Kind::Mm, &[mm])?;

    // Memory pages.
    let t = Instant::now();
    ids.next_pages += 1;
    let pages_id = ids.next_pages;
    let (head, pagemap, scanned, written, write_us) =
        dump_pages(dir, pid, &vmas, scans, pages_id, opts.prev.as_deref())?;
    stats.pages_skipped_parent += pagemap
        .iter()
        .filter(|e| e.flags == Some(mem::PE_PARENT))
        .map(image::pages::entry_nr_pages)
        .sum::<u64>();
    stats.pages_scanned += scanned;
    stats.pages_written += written;
    stats.memwrite_us += write_us;
    stats.memdump_us += t.elapsed().as_micros() as u64;
    dir.write_pagemap(&image::names::pagemap(vpid), &head, &pagemap)?;

    // core.
    let pending_s = ptrace::peek_siginfo(Pid::from_raw(pid), true)?;
    let rlimits: Vec<pb::RlimitEntry> = (0..16)
        .map(|r| {
            let (cur, max) = sysc::prlimit_get(Pid::from_raw(pid), r).unwrap_or((u64::MAX, u64::MAX));
            pb::RlimitEntry { cur, max }
        })
        .collect();
    let sigactions: Vec<pb::SaEntry> = (1..=NSIG)
        .filter(|&s| s != 9 && s != 19)
        .map(|s| {
            let a = inj_out.sigactions[s - 1];
            pb::SaEntry {
                sigaction: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
                compat_sigaction: Some(false),
                mask_extended: None,
            }
        })
        .collect();
    let it = |v: &ItimerVal| pb::ItimerEntry {
        isec: v.interval_sec as u64,
        iusec: v.interval_usec as u64,
        vsec: v.value_sec as u64,
        vusec: v.value_usec as u64,
    };
    let siginfos = |v: &[[u8; 128]]| pb::SignalQueueEntry {
        signals: v.iter().map(|s| pb::SiginfoEntry { siginfo: s.to_vec() }).collect(),
    };
    let task_state = if p.stop_signal.is_some() { 3 } else { 1 };
    for th in threads {
        let leader = th.tid == pid;
        let mut thread_core = th.thread_core;
        if leader {
            thread_core.blk_sigset = None;
        }
        let core = pb::CoreEntry {
            mtype: pb::core_entry::March::X8664 as i32,
            thread_info: Some(th.thread_info),
            tc: leader.then(|| pb::TaskCoreEntry {
                task_state,
                exit_code: 0,
                personality: read_num(pid, "personality", 16).unwrap_or(0) as u32,
                flags: stat.flags,
                blk_sigset: th.sigmask,
                comm: stat.comm.clone(),
                timers: Some(pb::TaskTimersEntry {
                    real: (it(&inj_out.itimers[0])),
                    virt: (it(&inj_out.itimers[1])),
                    prof: (it(&inj_out.itimers[2])),
                    posix: inj_out.posix.clone(),
                    cryo_read_at_ns: Some(inj_out.timers_read_at_ns),
                }),
                rlimits: Some(pb::TaskRlimitsEntry {
                    rlimits: rlimits.clone(),
                }),
                signals_s: Some(siginfos(&pending_s)),
                loginuid: read_num(pid, "loginuid", 10).map(|v| v as u32),
                oom_score_adj: read_num(pid, "oom_score_adj", 10).map(|v| v as i32),
                sigactions: sigactions.clone(),
                child_subreaper: Some(inj_out.subreaper),
                stop_signo: p.stop_signal.map(|s| s as u32),
                ..Default::default()
            }),
            ids: None,
            thread_core: Some(pb::ThreadCoreEntry {
                pdeath_sig: if leader && inj_out.pdeathsig != 0 {
                    Some(inj_out.pdeathsig)
                } else {
                    None
                },
                creds: Some(creds_of(&th.status, inj_out.secbits)),
                seccomp_mode,
                seccomp_filter: seccomp_top,
                ..thread_core
            }),
        };
        dir.write_image(&image::names::core(view.pid(th.tid)?), Kind::Core, &[core])?;
    }

    let (pgid, sid) = (view.pgid(pid)?, view.sid(pid)?);
    Ok(ProcOut { pgid, sid, fdinfo })
}

/// What is dumped of one thread.
struct ThreadDump {
    tid: i32,
    thread_info: pb::ThreadInfoX86,
    thread_core: pb::ThreadCoreEntry,
    sigmask: u64,
    status: proc::status::Status,
}

/// sigaltstack and clear_child_tid of a non-leader thread, by injection.
fn thread_injected(tid: i32, vmas: &[proc::maps::Vma]) -> Result<((u64, u32, u64), u64)> {
    let mut inj = Injector::new(Pid::from_raw(tid), vmas)
        .with_context(|| format!("Cannot prepare syscall injection into thread {tid}"))?;
    let res = (|| -> Result<((u64, u32, u64), u64)> {
        let scratch = inj.scratch();
        let mut sas = (0, libc::SS_DISABLE as u32, 0);
        if inj.syscall(libc::SYS_sigaltstack, [0, scratch, 0, 0, 0, 0])? == 0 {
            let b = inj.read_mem(scratch, 24)?;
            sas = (
                u64::from_le_bytes(b[0..8].try_into().unwrap()),
                u32::from_le_bytes(b[8..12].try_into().unwrap()),
                u64::from_le_bytes(b[16..24].try_into().unwrap()),
            );
        }
        let mut clear_tid = 0;
        if inj.syscall(libc::SYS_prctl, [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0])? == 0 {
            clear_tid = u64::from_le_bytes(inj.read_mem(scratch, 8)?[..8].try_into().unwrap());
        }
        Ok((sas, clear_tid))
    })();
    inj.restore()
        .with_context(|| format!("Cannot restore the registers of thread {tid}"))?;
    res
}

/// Registers, FPU, mask, pending signals, rseq, robust list, name and
/// scheduling of one thread (stopped).
fn dump_thread(pid: i32, tid: i32, layout: &XsaveLayout, sas: (u64, u32, u64), clear_tid: u64) -> Result<ThreadDump> {
    let t = Pid::from_raw(tid);
    // The image keeps the registers as the kernel left them at the stop
    // (as CRIU's do); the restart of an interrupted syscall is worked out
    // at restore (`regs::frame_regs`, `regs::kernel_restart_regs`).
    let gp = ptrace::get_regs(t).with_context(|| format!("PTRACE_GETREGSET of thread {tid}"))?;
    if let regs::Restart::AgainWithRemaining { req, rem } = regs::restart_plan(&gp) {
        // The task's own request becomes the time left (the kernel wrote it
        // to `rem`); the original, if it runs on, resumes through its
        // restart block and does not read the request again.
        let mut ts = [0u8; 16];
        if vm::read_remote(t, &[(rem, 16)], &mut ts) == Ok(16) {
            let _ = vm::write_remote(t, &[(req, 16)], &ts);
        }
    }
    let xstate = ptrace::get_xstate(t).with_context(|| format!("Cannot read the FPU state of thread {tid}"))?;
    let sigmask = ptrace::get_sigmask(t).with_context(|| format!("PTRACE_GETSIGMASK of thread {tid}"))?;
    let pending_p = ptrace::peek_siginfo(t, false)?;
    let rseq = ptrace::get_rseq(t)?;
    let (robust, robust_len) = sysc::get_robust_list(t)?;
    let stat = proc::stat::read_task(pid as u32, tid as u32)?;
    let status = proc::status::read_task(pid as u32, tid as u32)?;
    let (nice, policy, prio) = sched_of(tid, &stat);
    let affinity = nix::sched::sched_getaffinity(t)
        .map(|set| {
            let mut words = vec![0u64; nix::sched::CpuSet::count().div_ceil(64)];
            for cpu in 0..nix::sched::CpuSet::count() {
                if set.is_set(cpu).unwrap_or(false) {
                    words[cpu / 64] |= 1 << (cpu % 64);
                }
            }
            while words.last() == Some(&0) {
                words.pop();
            }
            words
        })
        .unwrap_or_default();
    Ok(ThreadDump {
        tid,
        thread_info: pb::ThreadInfoX86 {
            clear_tid_addr: clear_tid,
            gpregs: regs::gpregs_to_pb(&gp),
            fpregs: regs::fpregs_to_pb(&xstate, layout),
            tls: (12..15)
                .map(|n| pb::UserDescT {
                    entry_number: n,
                    read_exec_only: true,
                    seg_not_present: true,
                    ..Default::default()
                })
                .collect(),
        },
        thread_core: pb::ThreadCoreEntry {
            futex_rla: robust,
            futex_rla_len: robust_len as u32,
            sched_nice: Some(nice),
            sched_policy: Some(policy),
            sched_prio: (prio != 0).then_some(prio),
            blk_sigset: Some(sigmask),
            sas: Some(pb::ThreadSasEntry {
                ss_sp: sas.0,
                ss_size: sas.2,
                ss_flags: sas.1,
            }),
            signals_p: Some(pb::SignalQueueEntry {
                signals: pending_p
                    .iter()
                    .map(|s| pb::SiginfoEntry { siginfo: s.to_vec() })
                    .collect(),
            }),
            comm: Some(stat.comm.clone()),
            cryo_cpu_affinity: affinity,
            rseq_entry: rseq.map(|r| pb::RseqEntry {
                rseq_abi_pointer: r.ptr,
                rseq_abi_size: r.len,
                signature: r.sig,
                rseq_cs_pointer: None,
            }),
            ..Default::default()
        },
        sigmask,
        status,
    })
}

struct Injected {
    sigactions: [KSigAction; 64],
    itimers: [ItimerVal; 3],
    /// (sp, flags, size)
    sas: (u64, u32, u64),
    clear_tid: u64,
    brk: u64,
    dumpable: i64,
    thp_disabled: bool,
    secbits: u32,
    pdeathsig: u32,
    subreaper: bool,
    posix: Vec<pb::PosixTimerEntry>,
    /// CLOCK_REALTIME (ns) when the timers were read.
    timers_read_at_ns: u64,
}

impl Default for Injected {
    fn default() -> Self {
        Injected {
            sigactions: [KSigAction::default(); 64],
            itimers: Default::default(),
            sas: (0, 0, 0),
            clear_tid: 0,
            brk: 0,
            dumpable: 0,
            thp_disabled: false,
            secbits: 0,
            pdeathsig: 0,
            subreaper: false,
            posix: Vec::new(),
            timers_read_at_ns: 0,
        }
    }
}

fn vdso_facts(pid: i32, vmas: &[proc::maps::Vma]) -> Result<(Option<u64>, Option<u64>, Option<u64>)> {
    let vvar = vmas.iter().find(|v| v.is_vvar()).map(|v| v.start);
    let Some(vdso) = vmas.iter().find(|v| v.is_vdso()) else {
        return Ok((None, None, vvar));
    };
    let len = (vdso.end - vdso.start) as usize;
    let mut buf = vec![0u8; len];
    vm::read_remote(Pid::from_raw(pid), &[(vdso.start, len)], &mut buf)
        .with_context(|| format!("Cannot read the vdso of pid {pid}"))?;
    Ok((Some(len as u64), Some(fnv1a(&buf)), vvar))
}

/// FNV-1a, 64 bit: identifies vdso contents (same kernel or not).
pub fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Nice value, policy (with SCHED_RESET_ON_FORK) and RT priority.
fn sched_of(tid: i32, stat: &proc::stat::Stat) -> (i32, u32, u32) {
    let (policy, prio) = crate::sys::rawfd::get_sched(tid).unwrap_or((stat.policy, 0));
    (stat.nice as i32, policy, prio)
}

/// Reads a number from /proc/PID/<name> (in the given radix).
fn read_num(pid: i32, name: &str, radix: u32) -> Option<i64> {
    let s = fs::read_to_string(format!("/proc/{pid}/{name}")).ok()?;
    i64::from_str_radix(s.trim(), radix).ok()
}

fn caps_words(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

fn creds_of(s: &proc::status::Status, secbits: u32) -> pb::CredsEntry {
    pb::CredsEntry {
        uid: s.uid[0],
        euid: s.uid[1],
        suid: s.uid[2],
        fsuid: s.uid[3],
        gid: s.gid[0],
        egid: s.gid[1],
        sgid: s.gid[2],
        fsgid: s.gid[3],
        cap_inh: caps_words(s.cap_inh),
        cap_prm: caps_words(s.cap_prm),
        cap_eff: caps_words(s.cap_eff),
        cap_bnd: caps_words(s.cap_bnd),
        secbits,
        groups: s.groups.clone(),
        no_new_privs: s.no_new_privs.then_some(1),
        cap_amb: caps_words(s.cap_amb),
        ..Default::default()
    }
}

/// Writes the pages of every private VMA that are present (or swapped) and
/// not the shared zero page, nor still backed by the file. Returns the
/// pagemap entries (head first), pages scanned and written, and the time
/// spent writing.
/// The pages of VMA `v` worth looking at, in one PAGEMAP_SCAN: present
/// or swapped, not the zero page, not still backed by the file; guard
/// regions come out as runs with the GUARD category (and are no pages).
fn scan_vma(pagemap: &fs::File, pid: i32, v: &proc::maps::Vma) -> Result<Vec<vm::PageRegion>> {
    let skip = vm::category::PFNZERO | vm::category::FILE;
    let any = vm::category::PRESENT | vm::category::SWAPPED;
    vm::pagemap_scan(pagemap, v.start, v.end, skip, skip, any, any | vm::category::GUARD, 0)
        .with_context(|| format!("PAGEMAP_SCAN of pid {pid} at {:#x}", v.start))
}

fn dump_pages(
    dir: &ImageDir,
    pid: i32,
    vmas: &[proc::maps::Vma],
    mut scans: HashMap<u64, Vec<vm::PageRegion>>,
    pages_id: u32,
    prev: Option<&crate::migrate::track::Tracker>,
) -> Result<(pb::PagemapHead, Vec<pb::PagemapEntry>, u64, u64, u64)> {
    let pagemap =
        fs::File::open(format!("/proc/{pid}/pagemap")).with_context(|| format!("Cannot open /proc/{pid}/pagemap"))?;
    let mut entries = Vec::new();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut scanned = 0u64;
    for v in vmas {
        let kind = VmaKind::of(v);
        if !kind.dumps_pages() {
            continue;
        }
        scanned += (v.end - v.start) / PAGE_SIZE;
        // Present or swapped, not the zero page, not still backed by the
        // file, not a guard region (those are recorded in the VMA).
        let rs: Vec<vm::PageRegion> = match scans.remove(&v.start) {
            Some(rs) => rs,
            None => scan_vma(&pagemap, pid, v)?,
        }
        .into_iter()
        .filter(|r| r.categories & vm::category::GUARD == 0)
        .collect();
        // While writes are tracked (pre-copy), a page dropped after a round
        // copied it can be an empty entry with a write-protect marker,
        // which the scan counts as swapped: it has no content (zeros).
        let rs: Vec<vm::PageRegion> = if prev.is_some() {
            let tagged: Vec<(u64, u64, bool)> = rs
                .iter()
                .map(|r| (r.start, r.end, r.categories & vm::category::PRESENT == 0))
                .collect();
            vm::drop_wp_markers(Pid::from_raw(pid), &tagged)
                .with_context(|| format!("Cannot read /proc/{pid}/pagemap"))?
                .into_iter()
                .map(|(start, end)| vm::PageRegion {
                    start,
                    end,
                    categories: 0,
                })
                .collect()
        } else {
            rs
        };
        let flags = if kind == VmaKind::AnonPrivate {
            PE_PRESENT | PE_LAZY
        } else {
            PE_PRESENT
        };
        let prev = prev.filter(|t| t.covers(kind));
        let pieces: Vec<(u64, u64, bool)> = match prev {
            Some(t) => {
                let rr: Vec<(u64, u64)> = rs.iter().map(|r| (r.start, r.end)).collect();
                t.split(pid, v.start, v.end, &rr)?
                    .unwrap_or_else(|| rr.iter().map(|&(s, e)| (s, e, false)).collect())
            }
            None => rs.iter().map(|r| (r.start, r.end, false)).collect(),
        };
        for (s, e, in_parent) in pieces {
            let n = (e - s) / PAGE_SIZE;
            if let (true, Some(t)) = (in_parent, prev) {
                entries.push(image::pages::new_entry(s, n, t.elsewhere_flag()));
            } else {
                entries.push(image::pages::new_entry(s, n, flags));
                runs.push((s, e - s));
            }
        }
    }
    let name = image::names::pages(pages_id);
    let out = dir.create_raw(&name)?;
    let total: u64 = runs.iter().map(|r| r.1).sum();
    let write_us = copy_runs(pid, &runs, out, &name)?;
    Ok((
        pb::PagemapHead { pages_id },
        entries,
        scanned,
        total / PAGE_SIZE,
        write_us,
    ))
}

/// Reads the part of `iov` from byte `skip` on through /proc/PID/mem
/// (FOLL_FORCE: PROT_NONE memory too) into `out`; returns bytes read.
fn read_forced(pid: i32, iov: &[(u64, usize)], skip: usize, out: &mut [u8]) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let mem = fs::File::open(format!("/proc/{pid}/mem")).with_context(|| format!("Cannot open /proc/{pid}/mem"))?;
    let mut pos = 0usize; // offset in the concatenated iovecs
    let mut done = 0usize;
    for &(addr, len) in iov {
        let end = pos + len;
        if end > skip {
            let from = skip.max(pos) - pos;
            let n = len - from;
            mem.read_exact_at(&mut out[done..done + n], addr + from as u64)
                .with_context(|| format!("Cannot read pid {pid} memory at {:#x}", addr + from as u64))?;
            done += n;
        }
        pos = end;
    }
    Ok(done)
}

/// Bytes read from the task per process_vm_readv call: small enough that a
/// chunk is still in the CPU cache when it is written out (a 1 MiB L2 here:
/// 128 KiB dumped 1 GiB about 30% faster than 1 MiB chunks), large enough
/// to keep the syscalls few.
const COPY_CHUNK: usize = 128 << 10;
/// Most threads copying at once (reading is what takes the time; writes
/// to one file serialize in the kernel).
const COPY_THREADS: usize = 4;

/// Splits the remote `runs` (start, length) into chunks of at most
/// [`COPY_CHUNK`] bytes and [`vm::IOV_MAX`] iovecs, in order.
fn copy_chunks(runs: &[(u64, u64)]) -> Vec<Vec<(u64, usize)>> {
    let mut chunks = Vec::new();
    let mut iov: Vec<(u64, usize)> = Vec::new();
    let mut len = 0usize;
    for &(start, rlen) in runs {
        let (mut start, mut rlen) = (start, rlen as usize);
        while rlen > 0 {
            if len == COPY_CHUNK || iov.len() == vm::IOV_MAX {
                chunks.push(std::mem::take(&mut iov));
                len = 0;
            }
            let take = rlen.min(COPY_CHUNK - len);
            iov.push((start, take));
            len += take;
            start += take as u64;
            rlen -= take;
        }
    }
    if !iov.is_empty() {
        chunks.push(iov);
    }
    chunks
}

/// Copies the remote `runs` of `pid`, in order, to `out` (the pages file
/// `name`). Up to one thread per CPU (at most [`COPY_THREADS`]) take chunks
/// in turn; each reads its chunk with process_vm_readv and writes it at
/// its place in the file, so some read while another writes. Returns the
/// time spent in writes, in us.
fn copy_runs(pid: i32, runs: &[(u64, u64)], out: fs::File, name: &str) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    let chunks = copy_chunks(runs);
    let mut offsets = Vec::with_capacity(chunks.len());
    let mut at = 0u64;
    for iov in &chunks {
        offsets.push(at);
        at += iov.iter().map(|r| r.1 as u64).sum::<u64>();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let write_us = AtomicU64::new(0);
    let work = || -> Result<()> {
        let mut buf = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(iov) = chunks.get(i) else { break };
            let len: usize = iov.iter().map(|r| r.1).sum();
            buf.resize(len, 0);
            let res = (|| -> Result<()> {
                let mut got = vm::read_remote(Pid::from_raw(pid), iov, &mut buf)
                    .with_context(|| format!("Cannot read the memory of pid {pid}"))?;
                if got < len {
                    // process_vm_readv stops at memory the task cannot read
                    // itself (PROT_NONE); /proc/PID/mem reads it the way a
                    // debugger does.
                    got += read_forced(pid, iov, got, &mut buf[got..])?;
                }
                if got != len {
                    bail!("Short read of the memory of pid {pid}: {got} of {len} bytes");
                }
                let tw = Instant::now();
                out.write_all_at(&buf, offsets[i])
                    .with_context(|| format!("Cannot write {name}"))?;
                write_us.fetch_add(tw.elapsed().as_micros() as u64, Ordering::Relaxed);
                Ok(())
            })();
            if res.is_err() {
                failed.store(true, Ordering::Relaxed);
                return res;
            }
        }
        Ok(())
    };
    let threads = if chunks.len() <= 1 {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, COPY_THREADS)
            .min(chunks.len())
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut res = work();
        for h in helpers {
            let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            res = res.and(r);
        }
        res
    })?;
    Ok(write_us.into_inner())
}

#[cfg(test)]
mod restart_tests {
    use crate::regs::{restart_plan, Restart};
    use crate::sys::ptrace::UserRegs;

    fn at(nr: u64, ret: i64) -> UserRegs {
        UserRegs {
            orig_ax: nr,
            ax: ret as u64,
            ip: 0x1002,
            ..Default::default()
        }
    }

    #[test]
    fn sleeps_and_epoll_are_executed_again() {
        let mut r = at(230, -516);
        r.si = 1; // TIMER_ABSTIME
        assert_eq!(restart_plan(&r), Restart::Again);
        let mut r = at(230, -516);
        r.dx = 0x100;
        r.r10 = 0x200;
        assert_eq!(restart_plan(&r), Restart::AgainWithRemaining { req: 0x100, rem: 0x200 });
        let mut r = at(35, -516);
        r.di = 0x300;
        r.si = 0x400;
        assert_eq!(restart_plan(&r), Restart::AgainWithRemaining { req: 0x300, rem: 0x400 });
        assert_eq!(restart_plan(&at(35, -516)), Restart::Again);
        assert_eq!(restart_plan(&at(232, -4)), Restart::Again);
        assert_eq!(restart_plan(&at(0, -512)), Restart::Generic);
        assert_eq!(restart_plan(&at(232, 3)), Restart::Generic);
    }
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    #[test]
    fn chunks_split_runs_by_size_and_iovec_count() {
        let c = COPY_CHUNK as u64;
        // One run of 2.5 chunks: three chunks, the last one short.
        let chunks = copy_chunks(&[(0x10000, 2 * c + c / 2)]);
        assert_eq!(
            chunks,
            vec![
                vec![(0x10000, COPY_CHUNK)],
                vec![(0x10000 + c, COPY_CHUNK)],
                vec![(0x10000 + 2 * c, COPY_CHUNK / 2)]
            ]
        );
        // A run crossing a chunk boundary is split there.
        let chunks = copy_chunks(&[(0x1000, c - 0x1000), (0x80_0000, 0x3000)]);
        assert_eq!(
            chunks,
            vec![
                vec![(0x1000, COPY_CHUNK - 0x1000), (0x80_0000, 0x1000)],
                vec![(0x80_1000, 0x2000)]
            ]
        );
        // Many small runs: at most IOV_MAX iovecs per chunk.
        let runs: Vec<(u64, u64)> = (0..(vm::IOV_MAX as u64 + 10)).map(|i| (i * 0x2000, 16)).collect();
        let chunks = copy_chunks(&runs);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [vm::IOV_MAX, 10]);
        let all: Vec<(u64, usize)> = chunks.concat();
        assert_eq!(all, runs.iter().map(|&(a, l)| (a, l as usize)).collect::<Vec<_>>());
        assert!(copy_chunks(&[]).is_empty());
    }

    #[test]
    fn copy_runs_writes_remote_memory_in_order() {
        // Our own memory stands in for the task's.
        let data: Vec<u8> = (0..3 * COPY_CHUNK + 5000).map(|i| (i % 251) as u8).collect();
        let base = data.as_ptr() as u64;
        let runs = [
            (base + 100, 5000u64),
            (base + 7000, (2 * COPY_CHUNK) as u64),
            (base + 9, 3),
        ];
        let tmp = std::env::temp_dir().join(format!("cryo-copy-runs-{}", std::process::id()));
        let out = fs::File::create(&tmp).unwrap();
        copy_runs(std::process::id() as i32, &runs, out, "test").unwrap();
        let got = fs::read(&tmp).unwrap();
        let _ = fs::remove_file(&tmp);
        let mut want = Vec::new();
        for &(a, l) in &runs {
            let o = (a - base) as usize;
            want.extend_from_slice(&data[o..o + l as usize]);
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        // An unreadable range fails instead of writing a short file.
        let out = fs::File::create(&tmp).unwrap();
        let err = copy_runs(std::process::id() as i32, &[(base, 4096), (0x1000, 4096)], out, "test");
        let _ = fs::remove_file(&tmp);
        assert!(err.is_err());
    }
}

fn write_stats(dir: &ImageDir, s: &DumpStats) -> Result<()> {
    let e = pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: s.freezing_us as u32,
            frozen_time: s.frozen_us as u32,
            memdump_time: s.memdump_us as u32,
            memwrite_time: s.memwrite_us as u32,
            pages_scanned: s.pages_scanned,
            pages_skipped_parent: s.pages_skipped_parent,
            pages_written: s.pages_written,
            irmap_resolve: Some(0),
            pages_lazy: 0,
            ..Default::default()
        }),
        restore: None,
    };
    dir.write_image("stats-dump", Kind::Stats, &[e])?;
    Ok(())
}
