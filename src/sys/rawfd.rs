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
