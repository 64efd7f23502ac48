//! Raw descriptor helpers for the restore path, where fds are inherited by
//! number across fork.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

/// Wraps an inherited descriptor number in a `File`.
///
/// Callers wrap the result in `ManuallyDrop` when the number must stay
/// open; dropping the `File` closes it.
pub fn file_from_raw(fd: RawFd) -> File {
    // SAFETY: used only for descriptors the engine created and handed to
    // this process by number (pipes and the image dir); each number is
    // open for the whole life of the restore task and owned by exactly one
    // wrapper at a time.
    unsafe { File::from_raw_fd(fd) }
}

/// Borrows an fd number that stays open for the rest of the process's
/// life (the restore task's inherited terminal).
pub fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass descriptors inherited from the engine that are
    // never closed while the borrow is used (they are closed only right
    // before the jump into the blob, after the last use).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Takes ownership of a descriptor number returned by a raw open call.
pub fn own(fd: RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: `fd` was just returned by open/openat and is owned by no
    // other wrapper.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// `_exit(code)`: ends a forked helper without running the engine's
/// atexit handlers or flushing its stdio buffers twice.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Dies by `sig` with its default action (for recreating a zombie that
/// was killed by a signal): the handler is reset, the signal unblocked,
/// then raised.
pub fn default_and_raise(sig: nix::sys::signal::Signal) -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL involves no Rust handler code.
    unsafe { sigaction(sig, &dfl) }?;
    let mut set = SigSet::empty();
    set.add(sig);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)?;
    nix::sys::signal::raise(sig)
}

/// `personality(p)` for the calling process (the restored execution
/// domain and flags such as ADDR_NO_RANDOMIZE).
pub fn set_personality(p: u32) -> nix::Result<()> {
    // SAFETY: personality takes an integer and touches no memory.
    let r = unsafe { libc::personality(p as libc::c_ulong) };
    nix::errno::Errno::result(r).map(drop)
}

/// Nice value and scheduling policy of thread `tid` (from outside).
pub fn set_sched(tid: i32, nice: i32, policy: u32, prio: u32) -> nix::Result<()> {
    let param = libc::sched_param {
        sched_priority: prio as i32,
    };
    // SAFETY: `param` is a valid sched_param read by the kernel.
    let r = unsafe { libc::sched_setscheduler(tid, policy as i32, &param) };
    nix::errno::Errno::result(r)?;
    // SAFETY: setpriority takes integers only.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    nix::errno::Errno::result(r).map(drop)
}

/// A POSIX timer to recreate with its old id (disarmed; the restorer arms
/// it).
#[derive(Debug, Clone, Copy)]
pub struct PosixTimerSpec {
    pub id: i32,
    pub clock: i32,
    pub signo: i32,
    pub notify: i32,
    pub sival: u64,
    pub tid: i32,
}

/// The kernel's `struct sigevent` (64 bytes on x86_64).
#[repr(C)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}

const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;

/// Whether the kernel creates POSIX timers with given ids
/// (PR_TIMER_CREATE_RESTORE_IDS; asking its state with 2 changes nothing).
pub fn timer_restore_ids_supported() -> bool {
    // SAFETY: prctl with integer arguments; PR_TIMER_CREATE_RESTORE_IDS_GET.
    unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 2, 0, 0, 0) >= 0 }
}

fn timer_create(clock: i32, sev: &KSigevent, want: i32) -> nix::Result<i32> {
    let mut id: i32 = want;
    // SAFETY: `sev` is a valid sigevent and `id` a writable timer_t the
    // kernel reads (in restore-ids mode) and writes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            clock,
            sev as *const KSigevent,
            &mut id as *mut i32,
        )
    };
    nix::errno::Errno::result(r)?;
    Ok(id)
}

fn timer_delete(id: i32) {
    // SAFETY: integer argument only.
    unsafe { libc::syscall(libc::SYS_timer_delete, id) };
}

/// Recreates POSIX timers with their old ids (PR_TIMER_CREATE_RESTORE_IDS
/// when the kernel has it, else by creating and deleting placeholder
/// timers until the id counter reaches each wanted id), disarmed: the
/// restorer arms them after queueing the pending signals.
pub fn create_posix_timers(timers: &[PosixTimerSpec]) -> nix::Result<()> {
    let mut sorted: Vec<&PosixTimerSpec> = timers.iter().collect();
    sorted.sort_by_key(|t| t.id);
    // SAFETY: prctl with integer arguments.
    let restore_ids = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) } == 0;
    let mut placeholders = Vec::new();
    for t in &sorted {
        let sev = KSigevent {
            value: t.sival,
            signo: t.signo,
            notify: t.notify,
            tid: t.tid,
            _pad: [0; 11],
        };
        let got = if restore_ids {
            timer_create(t.clock, &sev, t.id)?
        } else {
            loop {
                let got = timer_create(t.clock, &sev, 0)?;
                if got >= t.id {
                    break got;
                }
                placeholders.push(got);
            }
        };
        if got != t.id {
            timer_delete(got);
            return Err(nix::errno::Errno::EEXIST);
        }
        // Armed later, by the restorer, behind the queued signals.
    }
    for p in placeholders {
        timer_delete(p);
    }
    if restore_ids {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0) };
    }
    Ok(())
}

/// Policy (with SCHED_RESET_ON_FORK) and RT priority of thread `tid`.
pub fn get_sched(tid: i32) -> nix::Result<(u32, u32)> {
    // SAFETY: integer argument only.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    nix::errno::Errno::result(policy)?;
    let mut p = libc::sched_param { sched_priority: 0 };
    // SAFETY: `p` is a valid, writable sched_param.
    let r = unsafe { libc::sched_getparam(tid, &mut p) };
    nix::errno::Errno::result(r)?;
    Ok((policy as u32, p.sched_priority as u32))
}
