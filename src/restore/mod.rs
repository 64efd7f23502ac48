//! The restore orchestrator, in named stages.
//!
//! 1. [`Stage::Load`]: every image is read and validated before anything is
//!    created (pstree shape, cores, CPU state vs this CPU, mm, pagemaps vs
//!    their pages files, files, vdso vs this kernel). A bad image fails here
//!    with nothing left behind.
//! 2. [`Stage::Shim`]: a small init of ours is forked into a fresh pid and
//!    mount namespace (pid 1 there); it mounts a private /proc.
//! 3. [`Stage::Fork`]: the shim forks the tree's root with clone3(set_tid =
//!    its old pid); each task sets its session/group, opens its files, forks
//!    its children the same way, stages its memory and jumps into the
//!    restorer blob (`task.rs`).
//! 4. [`Stage::Ready`]: the engine waits until every task's blob reports
//!    that its address space and state are in place. Any failure (a task's
//!    error message, a blob report with an errno, a task dying) kills the
//!    shim, which takes the whole namespace with it: no process is left.
//! 5. [`Stage::Go`]: the engine releases every task at once; each
//!    rt_sigreturns into its saved registers.

pub mod blob;
pub mod parent;
mod plan;
pub mod prestaged;
mod session;
mod shim;
mod task;
pub(crate) mod timers;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cryo_restorer::abi::{step, Report};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::image::{pb, ImageDir, Kind};
pub use plan::Plan;

/// What `cryo restore` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub dir: PathBuf,
    pub shell_job: bool,
    pub detach: bool,
    pub pidfile: Option<PathBuf>,
    /// Restore even if the image directory is writable by others than root.
    pub trust_images: bool,
    /// Restore even if an open regular file changed size since the dump.
    pub skip_file_check: bool,
    /// Restore established TCP connections closed.
    pub tcp_close: bool,
    /// For a tree with a network namespace of its own: the name in the
    /// caller's namespace of the outside end of each veth (IN, OUT).
    pub veth_pairs: Vec<(String, String)>,
    /// A container's root directory: its mount tree is rebuilt over it.
    pub root: Option<PathBuf>,
    /// External mounts: name → host path (CRIU's ext_mnt at restore).
    pub ext_mnt: Vec<(String, String)>,
    /// CRIU's inherit_fd: "pipe:[INO]" → an fd of the engine that replaces
    /// that pipe in the restored tree.
    pub inherit_fd: Vec<(String, RawFd)>,
    /// Called once every task is ready and before any runs, with
    /// setup-namespaces, post-setup-namespaces, post-restore (the root's
    /// host pid) and pre-resume; an error kills what was restored.
    pub hook: crate::hooks::Hook,
    /// Pages from the parent images (pre-copy rounds) in private anonymous
    /// memory are not staged: the caller serves them with userfaultfd
    /// after the tasks run (`run_hook` sets that up).
    pub lazy_pages: bool,
    /// Fired with [`Event::Resumable`](crate::hooks::Event) per process
    /// and then `ReadyToRun`, after the restorer is gone and before any
    /// task runs its own code; an error kills what was restored.
    pub run_hook: crate::hooks::Hook,
    /// Pre-copied memory the caller (the page server) already holds in
    /// its own address space; see [`prestaged`].
    pub prestaged: prestaged::Prestaged,
}

/// The stages of a restore, for logs and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Images are read and validated; nothing exists yet.
    Load,
    /// The namespace init (pid 1) is being created.
    Shim,
    /// Tasks are being forked and prepared.
    Fork,
    /// Every task has reported ready from inside its blob.
    Ready,
    /// Tasks were released into their restored state.
    Go,
}

/// The outcome of a restore.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Host pid of the restored root.
    pub root_host_pid: i32,
    /// Host pid of the namespace init.
    pub shim_pid: i32,
    /// With `detach == false`: the exit status of the restored root.
    pub exit_code: Option<i32>,
    pub restore_us: u64,
    /// Bytes of private anonymous mappings moved in from pre-copied memory
    /// the caller held (`RestoreOpts::prestaged`) instead of read from the
    /// images.
    pub moved_in: u64,
}

/// The engine's own descriptors that every task inherits, moved above any
/// fd number the restored tasks use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineFds {
    pub ready_w: RawFd,
    pub go_r: RawFd,
    pub err_w: RawFd,
    pub dir: RawFd,
    /// The engine's terminal (dup of fd 0) for --shell-job, or -1.
    pub tty: RawFd,
    /// Lowest engine fd: everything below is the restored tasks' space.
    pub high: RawFd,
    /// First fd number free for temporaries in the tasks.
    pub tmp_base: RawFd,
}

pub fn restore(opts: &RestoreOpts) -> Result<Restored> {
    crate::require_root("restore")?;
    let t0 = Instant::now();
    check_dir_trust(&opts.dir, opts.trust_images)?;
    let dir = ImageDir::open(&opts.dir)?;
    let mut plan = Plan::load(&dir, opts).context("Stage Load")?;
    let moved_in = task::moved_in_bytes(&plan);
    let mut nsp =
        crate::ns::load(&dir, plan.tasks[0].pid as u32, opts.root.as_deref(), &opts.ext_mnt).context("Stage Load")?;
    if nsp.is_some() && plan.tasks[0].pid != 1 {
        bail!("Stage Load: a container's root task must be pid 1 of its pid namespace");
    }
    info!("loaded images of {} processes", plan.tasks.len());
    // Lifted once the tree runs, or on any failure below.
    let mut net_lock = crate::net::RestoreLock::of(&plan.files);
    // A tree that had a network namespace gets a fresh one, entered here
    // so that everything forked from now on is in it.
    crate::net::ns::restore(&dir, &opts.veth_pairs)?;
    if dir.exists(crate::net::ns::IMAGE) {
        if let Some(n) = nsp.as_mut() {
            // The network namespace rebuilt above is the container's: its
            // root is cloned into it instead of into an empty one.
            n.flags &= !libc::CLONE_NEWNET;
        }
    }

    // Engine fds, moved high.
    let high = plan.max_fd().max(63) + 1;
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    let (go_r, go_w) = nix::unistd::pipe()?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    let (shim_r, shim_w) = nix::unistd::pipe()?;
    let (ack_r, ack_w) = nix::unistd::pipe()?;
    let dirfd = fs::File::open(&opts.dir).with_context(|| format!("Cannot open {}", opts.dir.display()))?;
    // A container's console (a pty slave whose master was outside the
    // tree): the root task makes a new pty in the container's devpts and
    // leaves the slave at the tty slot; its master comes back to us.
    let console = match &nsp {
        Some(_) if !opts.shell_job => {
            crate::ns::console_index(&plan.ttys, &plan.fx.ttys.inside, plan.tasks[0].pid as u32)
        }
        _ => None,
    };
    let console_sock = match console {
        Some(_) => Some(
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::SeqPacket,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .context("socketpair for the console")?,
        ),
        None => None,
    };
    let tty = if opts.shell_job {
        Some(nix::unistd::dup(0).context("Cannot dup stdin for --shell-job")?)
    } else if console.is_some() {
        // A placeholder holding the slot the console slave will take.
        Some(
            nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty())
                .context("open /dev/null")?,
        )
    } else {
        None
    };
    let moved = |fd: RawFd, at: RawFd| -> Result<RawFd> {
        let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(at)).context("F_DUPFD")?;
        Ok(n)
    };
    let efds = EngineFds {
        ready_w: moved(ready_w.as_raw_fd(), high)?,
        go_r: moved(go_r.as_raw_fd(), high)?,
        err_w: moved(err_w.as_raw_fd(), high)?,
        dir: moved(dirfd.as_raw_fd(), high)?,
        tty: match &tty {
            Some(t) => moved(*t, high)?,
            None => -1,
        },
        high,
        tmp_base: high + 16,
    };
    let shim_ctl = (moved(shim_r.as_raw_fd(), high)?, moved(ack_w.as_raw_fd(), high)?);
    let mut inherited = Vec::new();
    if let (Some(index), Some((_, child_end)), Some(p)) = (console, &console_sock, nsp.as_mut()) {
        let sock = moved(child_end.as_raw_fd(), high)?;
        inherited.push(sock);
        p.console = Some(crate::ns::Console {
            index,
            slot: efds.tty,
            sock,
        });
    }
    for (key, fd) in &opts.inherit_fd {
        let n = moved(*fd, high).with_context(|| format!("inherit_fd {key}: fd {fd} is not open"))?;
        inherited.push(n);
        if key == crate::ns::EXT_NET_KEY {
            match nsp.as_mut() {
                Some(p) => {
                    p.join_net = Some(n);
                    net_lock.in_namespace(n)?;
                }
                None => bail!("inherit_fd {key}: the images hold no network namespace of their own"),
            }
        } else if key.starts_with("pipe:[") {
            plan.fx.inherit.insert(key.clone(), n);
        } else {
            bail!(
                "inherit_fd {key}: only pipes (pipe:[INO]) and {} can be substituted",
                crate::ns::EXT_NET_KEY
            );
        }
    }
    // --shell-job: the job's termios on the terminal (put back on failure).
    let ext_term = match (
        tty.filter(|_| opts.shell_job),
        crate::files::tty::external_info(&plan.files, &plan.ttys),
    ) {
        (Some(t), Some(info)) => crate::files::tty::ExtTerm::apply(t, info)?,
        _ => None,
    };
    drop((ready_w, go_r, err_w, dirfd, shim_r, ack_w));

    // A tree that was its own pid namespace comes back as one (its root is
    // pid 1 again); any other tree gets an init of ours as pid 1.
    let own_ns = plan.tasks[0].pid == 1;
    let t_fork = Instant::now();
    let shim_pid = if own_ns {
        shim::spawn_root(&plan, efds, nsp.as_ref()).context("Stage Fork")?
    } else {
        shim::spawn(&plan, efds, shim_ctl).context("Stage Shim")?
    };
    // The engine keeps only the ends it reads or writes.
    for fd in [efds.ready_w, efds.go_r, efds.err_w, efds.dir, shim_ctl.0, shim_ctl.1]
        .into_iter()
        .chain(inherited)
    {
        let _ = nix::unistd::close(fd);
    }
    if efds.tty >= 0 {
        let _ = nix::unistd::close(efds.tty);
    }
    let guard = ShimGuard {
        pid: shim_pid,
        armed: true,
    };

    wait_ready(&plan, &ready_r, &err_r).context("Stage Fork")?;
    let forking_us = t_fork.elapsed().as_micros() as u64;
    // The root's host pid, read while every task waits for the go (once
    // it runs, the root may exit before the pidfile is written).
    let root_host_pid = if own_ns {
        shim_pid
    } else {
        shim::root_host_pid(shim_pid, plan.tasks[0].pid)
            .context("Stage Fork: the restored root is not the namespace init's child")?
    };
    crate::files::fown::restore(&plan, shim_pid).context("Stage Fork")?;
    debug!("all {} tasks ready", plan.tasks.len());
    let master = match &console_sock {
        Some((engine_end, _)) => Some(crate::ns::recv_console(engine_end).context("Stage Fork")?),
        None => None,
    };
    fire_ready_events(&opts.hook, root_host_pid, master.as_ref().map(|m| m.as_raw_fd()))?;
    drop(master);
    release(&plan, shim_pid, own_ns, go_w, &ready_r, efds, &opts.run_hook).context("Stage Go")?;
    if !own_ns {
        // Let the shim drop its parent-death signal (with lazy pages: once
        // they are all in, see `lazy_done`), and wait for it to say so.
        let go: &[u8] = if opts.lazy_pages { b"G" } else { b"g" };
        nix::unistd::write(&shim_w, go).context("Cannot release the namespace init")?;
        let mut b = [0u8; 1];
        match nix::unistd::read(ack_r.as_raw_fd(), &mut b) {
            Ok(1) => {}
            _ => bail!("The namespace init died after the restore"),
        }
    }
    drop(net_lock);
    let restore_us = t0.elapsed().as_micros() as u64;
    // The shim (or the own-namespace root) is in the tree's ipc namespace.
    crate::ipc::sysv::remove_destroyed(shim_pid, &plan.sysv)?;
    info!(
        "restored: root pid {} in the new namespace, host pid {root_host_pid}",
        plan.tasks[0].pid
    );
    let mut guard = guard;
    guard.armed = false;
    if let Some(et) = ext_term {
        et.keep(root_host_pid, plan.tasks[0].pgid == plan.tasks[0].pid);
    }
    if let Some(t) = tty {
        let _ = nix::unistd::close(t);
    }
    write_stats(&dir, restore_us, forking_us, &plan);
    if let Some(pf) = &opts.pidfile {
        write_pidfile(pf, root_host_pid)?;
    }
    let exit_code = if opts.detach { None } else { Some(wait_shim(shim_pid)?) };
    Ok(Restored {
        root_host_pid,
        shim_pid,
        exit_code,
        restore_us,
        moved_in,
    })
}

/// A lazy restore's pages are all in: the namespace init of the tree
/// whose root is `root_host_pid` stops dying with this process. Until
/// then, should the process filling the pages die, the tree dies with it
/// instead of reading zeros where its memory should be.
pub fn lazy_done(shim_pid: i32, root_host_pid: i32) {
    if shim_pid <= 0 || shim_pid == root_host_pid {
        return;
    }
    let comm = || std::fs::read_to_string(format!("/proc/{shim_pid}/comm")).ok();
    let lazy = shim::LAZY_NAME.to_string_lossy();
    if nix::sys::signal::kill(Pid::from_raw(shim_pid), shim::LAZY_DONE).is_err() {
        return;
    }
    // The shim renames itself back once it no longer dies with us: wait
    // for that before this process may exit (bounded; it is gone or done).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < end {
        match comm() {
            Some(c) if c.trim_end() == lazy => std::thread::sleep(std::time::Duration::from_millis(1)),
            _ => return,
        }
    }
    tracing::warn!("the namespace init {shim_pid} did not confirm the end of the lazy restore");
}

/// The hook events of a restore whose tasks are all ready.
fn fire_ready_events(hook: &crate::hooks::Hook, pid: i32, console: Option<RawFd>) -> Result<()> {
    use crate::hooks::Event;
    hook.fire(Event::SetupNamespaces { pid })?;
    hook.fire(Event::PostSetupNamespaces)?;
    if let Some(fd) = console {
        hook.fire(Event::OrphanPtsMaster { fd })?;
    }
    hook.fire(Event::PostRestore { pid })?;
    hook.fire(Event::PreResume)
}

/// Stage Go. Every restored thread is seized while it waits for its go
/// byte, all are released at once, and each is followed to the end of its
/// rt_sigreturn: there it is exactly in its dumped state, and the blob area
/// (the mapping that holds the signal frame the task returned through) is
/// unmapped with an injected munmap before the thread is detached. The
/// restored address space thus holds exactly the dumped mappings.
fn release(
    plan: &Plan,
    shim: i32,
    own_ns: bool,
    go_w: OwnedFd,
    ready_r: &OwnedFd,
    efds: EngineFds,
    run_hook: &crate::hooks::Hook,
) -> Result<()> {
    use crate::sys::ptrace::{self, SyscallInfo, WaitOutcome};
    let procs = restored_procs(plan, shim, own_ns);
    let n: usize = procs.iter().map(Vec::len).sum();
    if n != plan.live_threads() {
        bail!("Found {n} restored threads, expected {}", plan.live_threads());
    }
    // Seccomp filters the blob installs must not apply until the thread
    // is back in its own code: suspend them while we trace.
    let opts = nix::sys::ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::OPT_SUSPEND_SECCOMP;
    for &t in procs.iter().flatten() {
        let p = Pid::from_raw(t);
        ptrace::seize(p, opts).with_context(|| format!("Cannot seize restored pid {t}"))?;
        ptrace::interrupt(p).with_context(|| format!("Cannot interrupt restored pid {t}"))?;
        match ptrace::wait_stop(p)? {
            WaitOutcome::Interrupted => {}
            other => bail!("Restored pid {t} stopped unexpectedly: {other:?}"),
        }
        ptrace::syscall_step(p)?;
    }
    let go = vec![b'g'; n];
    nix::unistd::write(&go_w, &go).context("Cannot release the restored tasks")?;
    drop(go_w);
    // Follow every thread to the exit of its rt_sigreturn; threads of one
    // process run concurrently, so poll them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut frame_sp: HashMap<i32, u64> = HashMap::new();
    let mut pending: Vec<i32> = procs.iter().flatten().copied().collect();
    while !pending.is_empty() {
        let mut progressed = false;
        let mut i = 0;
        while i < pending.len() {
            let t = pending[i];
            let p = Pid::from_raw(t);
            let Some(ev) = ptrace::try_wait_stop(p)? else {
                i += 1;
                continue;
            };
            progressed = true;
            match ev {
                WaitOutcome::SyscallStop => match ptrace::syscall_info(p)? {
                    SyscallInfo::Entry { nr, sp } => {
                        last.insert(t, (nr, sp));
                        ptrace::syscall_step(p)?;
                    }
                    // Through rt_sigreturn: the thread is in its dumped
                    // state. It stays stopped until its process is done.
                    SyscallInfo::Exit { .. } if last.get(&t).map(|l| l.0) == Some(libc::SYS_rt_sigreturn as u64) => {
                        frame_sp.insert(t, last[&t].1);
                        pending.swap_remove(i);
                        continue;
                    }
                    _ => ptrace::syscall_step(p)?,
                },
                WaitOutcome::Signal(sig) => ptrace::syscall_step_sig(p, sig)?,
                WaitOutcome::Exited(_) | WaitOutcome::Killed { .. } => {
                    let why = blob_failure(ready_r).unwrap_or_else(|| format!("{ev:?}"));
                    bail!("Restored pid {t} died before it resumed: {why}");
                }
                _ => ptrace::syscall_step(p)?,
            }
        }
        if !progressed {
            if Instant::now() > deadline {
                bail!("Timed out waiting for {} restored threads to resume", pending.len());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    for tids in &procs {
        let frame_sp = frame_sp.get(&tids[0]).copied().unwrap_or(0);
        // Every thread of the process is through: drop the restorer.
        cleanup_process(tids[0], frame_sp, efds)
            .with_context(|| format!("Cannot remove the restorer from pid {}", tids[0]))?;
        run_hook.fire(crate::hooks::Event::Resumable { pid: tids[0] })?;
    }
    run_hook.fire(crate::hooks::Event::ReadyToRun)?;
    for tids in &procs {
        // Per thread, from outside: scheduling, then the interrupted
        // syscall (the dumped registers go back to the kernel, whose signal
        // code restarts the call or makes it EINTR if a handler runs first,
        // exactly as it would have without the dump). Then job control.
        let image = ns_pid(tids[0]).and_then(|p| plan.tasks.iter().find(|t| t.pid == p));
        let mut stop = 0;
        if let Some(img) = image {
            for &t in tids {
                let Some(ns) = ns_pid(t) else { continue };
                let Some(core) = img.core_of(ns) else { continue };
                if let Some(thc) = core.thread_core.as_ref() {
                    set_thread_sched(t, ns, thc);
                }
                if let Some(ti) = core.thread_info.as_ref() {
                    if let Some(r) = crate::regs::kernel_restart_regs(&crate::regs::gpregs_from_pb(&ti.gpregs)) {
                        kernel_restart(t, &r)
                            .with_context(|| format!("Cannot restart the interrupted syscall of pid {ns}"))?;
                    }
                }
            }
            if let Some(tc) = img.core.tc.as_ref().filter(|tc| tc.task_state == 3) {
                stop = tc.stop_signo.unwrap_or(libc::SIGSTOP as u32) as i32;
            }
        }
        for &t in tids {
            ptrace::detach(Pid::from_raw(t), 0)?;
        }
        if stop != 0 {
            // The task was stopped by job control when dumped: stop it again.
            let _ = nix::sys::signal::kill(
                Pid::from_raw(tids[0]),
                Signal::try_from(stop).unwrap_or(Signal::SIGSTOP),
            );
        }
    }
    Ok(())
}

/// CPU affinity, nice value and policy of restored thread `t` (host tid;
/// `ns` is its tid in the image), set from outside. Failures are warnings:
/// the kernel may refuse what this machine does not allow.
fn set_thread_sched(t: i32, ns: i32, thc: &pb::ThreadCoreEntry) {
    if !thc.cryo_cpu_affinity.is_empty() {
        let mut set = nix::sched::CpuSet::new();
        for (w, bits) in thc.cryo_cpu_affinity.iter().enumerate() {
            for b in 0..64 {
                if bits & (1 << b) != 0 {
                    let _ = set.set(w * 64 + b);
                }
            }
        }
        if let Err(e) = nix::sched::sched_setaffinity(Pid::from_raw(t), &set) {
            warn!("pid {ns}: cannot restore the CPU affinity: {e}");
        }
    }
    let policy = thc.sched_policy.unwrap_or(0);
    let nice = thc.sched_nice.unwrap_or(0);
    if policy != 0 || nice != 0 {
        if let Err(e) = crate::sys::rawfd::set_sched(t, nice, policy, thc.sched_prio.unwrap_or(0)) {
            warn!("pid {ns}: cannot restore scheduling (policy {policy}, nice {nice}): {e}");
        }
    }
}

/// Puts `regs` (an interrupted syscall: orig_ax = its number, ax = a
/// restart code) into stopped thread `tid` and brings it into the kernel's
/// signal path with PTRACE_INTERRUPT, so that on detach the kernel applies
/// its restart rules to them.
fn kernel_restart(tid: i32, regs: &crate::sys::ptrace::UserRegs) -> Result<()> {
    use crate::sys::ptrace::{self, WaitOutcome};
    let p = Pid::from_raw(tid);
    ptrace::set_regs(p, regs)?;
    ptrace::interrupt(p)?;
    ptrace::cont(p, 0)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ptrace::wait_stop(p)? {
            WaitOutcome::Interrupted => return Ok(()),
            // A pending signal reaches its handler now, deciding about the
            // restart with these registers, as the kernel would.
            WaitOutcome::Signal(sig) => ptrace::cont(p, sig)?,
            WaitOutcome::Exited(_) | WaitOutcome::Killed { .. } => bail!("the thread died"),
            _ => ptrace::cont(p, 0)?,
        }
        if Instant::now() > deadline {
            bail!("the thread does not stop");
        }
    }
}

/// The innermost pid of host pid `pid` (its pid in the restored namespace).
fn ns_pid(pid: i32) -> Option<i32> {
    let st = crate::proc::status::read(pid as u32).ok()?;
    st.nspid.last().map(|&p| p as i32)
}

/// A blob failure report waiting on the ready pipe, as text.
fn blob_failure(ready_r: &OwnedFd) -> Option<String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let _ = fcntl(ready_r.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut b = [0u8; 8];
    match nix::unistd::read(ready_r.as_raw_fd(), &mut b) {
        Ok(8) => {
            let step = u32::from_le_bytes(b[0..4].try_into().ok()?);
            let errno = i32::from_le_bytes(b[4..8].try_into().ok()?);
            Some(format!(
                "the restorer failed at step {step} ({}): {}",
                step_name(step),
                nix::errno::Errno::from_raw(errno)
            ))
        }
        _ => None,
    }
}

/// In stopped thread `tid`: closes the sync fds and unmaps the blob area
/// (the mapping holding `sp`, a signal frame's address at rt_sigreturn).
fn cleanup_process(tid: i32, sp: u64, efds: EngineFds) -> Result<()> {
    let maps = crate::proc::maps::read(tid as u32)?;
    let area = maps
        .iter()
        .find(|v| v.start <= sp && sp < v.end)
        .with_context(|| format!("no mapping holds the restorer frame at {sp:#x}"))?;
    let (start, len) = (area.start, area.end - area.start);
    let mut inj = crate::sys::inject::Injector::new(Pid::from_raw(tid), &maps)?;
    let r = (|| -> Result<()> {
        for fd in [efds.ready_w, efds.go_r] {
            inj.syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
        }
        inj.munmap(start, len)?;
        Ok(())
    })();
    inj.restore()?;
    r
}

/// Host tids of the restored processes that run (zombies excluded), found
/// below the namespace init; per process, the leader first.
fn restored_procs(plan: &Plan, shim: i32, include_shim: bool) -> Vec<Vec<i32>> {
    let zombie =
        |host: u32| ns_pid(host as i32).is_some_and(|ns| plan.tasks.iter().any(|t| t.pid == ns && t.zombie.is_some()));
    let mut out = Vec::new();
    let mut queue = vec![shim];
    if include_shim {
        let mut tids: Vec<i32> = crate::proc::threads(shim as u32)
            .unwrap_or_default()
            .into_iter()
            .map(|x| x as i32)
            .collect();
        tids.sort_by_key(|&x| (x != shim, x));
        out.push(tids);
    }
    while let Some(p) = queue.pop() {
        let tasks = crate::proc::threads(p as u32).unwrap_or_default();
        for t in &tasks {
            for c in crate::proc::children(p as u32, *t).unwrap_or_default() {
                let state = crate::proc::stat::read(c).map(|s| s.state).unwrap_or('X');
                if state != 'Z' && state != 'X' && !zombie(c) {
                    let mut tids: Vec<i32> = crate::proc::threads(c)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|x| x as i32)
                        .collect();
                    tids.sort_by_key(|&x| (x != c as i32, x));
                    out.push(tids);
                    queue.push(c as i32);
                }
            }
        }
    }
    out
}

/// Kills the namespace (through its init) unless disarmed.
struct ShimGuard {
    pid: i32,
    armed: bool,
}

impl Drop for ShimGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(self.pid), None);
        }
    }
}

fn wait_ready(plan: &Plan, ready_r: &OwnedFd, err_r: &OwnedFd) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut err_text = Vec::new();
    let mut err_open = true;
    let want = plan.live_threads();
    while ready < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("Timed out waiting for the restored tasks ({ready} of {want} ready)");
        }
        let mut fds = vec![PollFd::new(ready_r.as_fd_borrow(), PollFlags::POLLIN)];
        if err_open {
            fds.push(PollFd::new(err_r.as_fd_borrow(), PollFlags::POLLIN));
        }
        let ms = left.as_millis().min(60_000) as u16;
        poll(&mut fds, PollTimeout::from(ms)).context("poll")?;
        let rd = fds[0].revents().unwrap_or(PollFlags::empty());
        let ed = fds.get(1).and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        if !ed.is_empty() {
            let mut buf = [0u8; 4096];
            let n = nix::unistd::read(err_r.as_raw_fd(), &mut buf).unwrap_or(0);
            if n == 0 {
                err_open = false;
            } else {
                err_text.extend_from_slice(&buf[..n]);
                // Let a multi-part message arrive, then fail.
                // (Poll first: other tasks hold the pipe open, a bare
                // read would block when nothing more comes.)
                let mut more = [PollFd::new(err_r.as_fd_borrow(), PollFlags::POLLIN)];
                if poll(&mut more, PollTimeout::from(20u16)).unwrap_or(0) > 0 {
                    if let Ok(n) = nix::unistd::read(err_r.as_raw_fd(), &mut buf) {
                        err_text.extend_from_slice(&buf[..n]);
                    }
                }
                let msg = String::from_utf8_lossy(&err_text);
                let first = msg.lines().next().unwrap_or("").trim().to_string();
                return Err(anyhow!("{first}"));
            }
        }
        if !rd.is_empty() {
            let mut buf = [0u8; 512];
            let n = nix::unistd::read(ready_r.as_raw_fd(), &mut buf).context("read ready pipe")?;
            if n == 0 {
                bail!("The restored tasks died before they were ready ({ready} of {want} ready)");
            }
            pending.extend_from_slice(&buf[..n]);
            while pending.len() >= 8 {
                let r = Report {
                    step: u32::from_le_bytes(pending[0..4].try_into().unwrap()),
                    errno: i32::from_le_bytes(pending[4..8].try_into().unwrap()),
                };
                pending.drain(..8);
                if r.step == step::READY && r.errno == 0 {
                    ready += 1;
                } else {
                    bail!(
                        "The restorer failed at step {} ({}): {}",
                        r.step,
                        step_name(r.step),
                        nix::errno::Errno::from_raw(r.errno)
                    );
                }
            }
        }
    }
    Ok(())
}

trait AsFdBorrow {
    fn as_fd_borrow(&self) -> std::os::fd::BorrowedFd<'_>;
}
impl AsFdBorrow for OwnedFd {
    fn as_fd_borrow(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.as_fd()
    }
}

pub fn step_name(s: u32) -> &'static str {
    match s {
        step::HEADER => "argument header",
        step::RSEQ_UNREGISTER => "rseq unregister",
        step::UNMAP => "unmap",
        step::MREMAP => "moving memory into place",
        step::MADVISE => "madvise",
        step::VDSO => "vdso",
        step::MM_MAP => "PR_SET_MM_MAP",
        step::SIGACTION => "sigaction",
        step::ITIMER => "itimers",
        step::THREAD => "thread state",
        step::CREDS => "credentials",
        step::SYNC => "sync",
        step::SIGQUEUE => "pending signals",
        step::SIGRETURN => "sigreturn",
        step::UFFD => "userfaultfd (lazy pages)",
        _ => "unknown",
    }
}

fn wait_shim(shim: i32) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(shim), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the restored tree"),
        }
    }
}

fn write_pidfile(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{pid}\n")).with_context(|| format!("Cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("Cannot write {}", path.display()))?;
    Ok(())
}

/// stats-restore; forking_time is the time from the first fork until every
/// task was ready (CRIU's "forking" phase covers the same ground).
fn write_stats(dir: &ImageDir, restore_us: u64, forking_us: u64, plan: &Plan) {
    let e = pb::StatsEntry {
        dump: None,
        restore: Some(pb::RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: forking_us as u32,
            restore_time: restore_us as u32,
            pages_restored: Some(plan.pages_total()),
        }),
    };
    if let Err(e) = dir.write_image("stats-restore", Kind::Stats, &[e]) {
        warn!("cannot write stats-restore: {e:#}");
    }
}

/// Refuses image directories that a non-root user could have tampered with:
/// restoring runs their content as whatever user the images say.
fn check_dir_trust(dir: &Path, trust: bool) -> Result<()> {
    let md = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("Image directory {} does not exist", dir.display()),
        Err(e) => return Err(e).with_context(|| format!("Cannot stat {}", dir.display())),
    };
    if !md.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if trust {
        return Ok(());
    }
    let writable_by_others = |m: &fs::Metadata| m.uid() != 0 || m.mode() & 0o022 != 0;
    if writable_by_others(&md) {
        bail!(
            "Image directory {} can be written by users other than root (owner uid {}, mode {:o}); refusing to restore from it (pass --trust-images to override)",
            dir.display(),
            md.uid(),
            md.mode() & 0o7777
        );
    }
    for e in fs::read_dir(dir)?.flatten() {
        let m = e.metadata()?;
        if m.is_file() && writable_by_others(&m) {
            bail!(
                "Image file {} can be written by users other than root (owner uid {}, mode {:o}); refusing to restore from it (pass --trust-images to override)",
                e.path().display(),
                m.uid(),
                m.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// Writes one error line for the engine, from inside a task or the shim.
pub(crate) fn report_error(err_w: RawFd, msg: &str) {
    let line = format!("{}\n", msg.replace('\n', " "));
    let mut f = std::mem::ManuallyDrop::new(crate::sys::rawfd::file_from_raw(err_w));
    let _ = f.write_all(line.as_bytes());
}
