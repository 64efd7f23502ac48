//! Process creation with chosen pids, pidfds, and small per-process
//! getters without nix wrappers.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

/// `struct clone_args` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// `CLONE_INTO_CGROUP`.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Flags that would make the child share memory or thread identity with
/// the caller, or make the kernel write through pointers: not allowed
/// without a stack, i.e. with fork semantics.
const FORBIDDEN: u64 = (libc::CLONE_VM
    | libc::CLONE_THREAD
    | libc::CLONE_SIGHAND
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_SETTID
    | libc::CLONE_CHILD_CLEARTID
    | libc::CLONE_PIDFD
    | libc::CLONE_VFORK) as u64;

/// Options of [`clone3_fork`] beyond the pid.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clone3Extra {
    /// Put the child into this cgroup (a directory fd of cgroup v2).
    pub cgroup_fd: Option<i32>,
    /// Return a pidfd for the child (CLONE_PIDFD) in the parent.
    pub want_pidfd: bool,
}

/// `clone3()` with fork semantics—Creates a child with the pid chosen by
/// `set_tid` in each pid namespace level.
///
/// `set_tid[0]` is the pid in the innermost (the child's) namespace,
/// `set_tid[1]` in its parent, and so on; an empty slice lets the kernel
/// choose. `flags` are CLONE_* (e.g. `CLONE_NEWPID | CLONE_NEWNS`); flags
/// that need a stack or pointers (CLONE_VM, CLONE_THREAD, CLONE_SETTLS,
/// *_SETTID, CLONE_PIDFD, CLONE_VFORK) are refused with EINVAL.
/// `exit_signal` is sent to the parent on exit (usually SIGCHLD).
///
/// Needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in the user namespace that
/// owns each targeted pid namespace when `set_tid` is not empty.
///
/// # Child restrictions
/// Like `fork` in a multithreaded program, but without glibc's fork
/// handlers: the child must stick to async-signal-safe calls (raw syscalls,
/// `write`, `_exit`; no allocation, no locks, no stdio) until it execs or
/// exits. glibc's cached thread id in the child is the parent's.
pub fn clone3_with_pid(flags: u64, set_tid: &[i32], exit_signal: u64) -> nix::Result<ForkResult> {
    clone3_fork(flags, set_tid, exit_signal, Clone3Extra::default()).map(|(r, _)| r)
}

/// [`clone3_with_pid`] with a cgroup and an optional pidfd for the parent.
/// Same child restrictions.
pub fn clone3_fork(
    flags: u64,
    set_tid: &[i32],
    exit_signal: u64,
    extra: Clone3Extra,
) -> nix::Result<(ForkResult, Option<OwnedFd>)> {
    if flags & FORBIDDEN != 0 || flags & CLONE_INTO_CGROUP != 0 {
        return Err(Errno::EINVAL);
    }
    let mut pidfd: i32 = -1;
    let mut args = CloneArgs {
        flags,
        exit_signal,
        set_tid: if set_tid.is_empty() { 0 } else { set_tid.as_ptr() as u64 },
        set_tid_size: set_tid.len() as u64,
        ..Default::default()
    };
    if let Some(cg) = extra.cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg as u64;
    }
    if extra.want_pidfd {
        args.flags |= libc::CLONE_PIDFD as u64;
        args.pidfd = &mut pidfd as *mut i32 as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size we pass; set_tid
    // points to `set_tid_size` live i32s and `pidfd` (if requested) to a
    // live i32, both read/written by the kernel before clone3 returns in
    // the parent. With no stack and without CLONE_VM/CLONE_THREAD (checked
    // above) the child gets a private copy of the address space, exactly
    // like fork, so it continues on its own copy of this stack frame.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let pid = Errno::result(ret)? as i32;
    if pid == 0 {
        return Ok((ForkResult::Child, None));
    }
    let fd = (extra.want_pidfd && pidfd >= 0).then(|| {
        // SAFETY: with CLONE_PIDFD the kernel stored a new fd that nothing
        // else owns.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    });
    Ok((
        ForkResult::Parent {
            child: Pid::from_raw(pid),
        },
        fd,
    ))
}

/// `pidfd_open(pid, 0)`—A pidfd referring to process `pid`.
pub fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(ret)? as i32;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(pid, flags)` (PIDFD_NONBLOCK, PIDFD_THREAD).
pub fn pidfd_open_flags(pid: Pid, flags: u32) -> nix::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), flags) };
    let fd = Errno::result(ret)? as i32;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_getfd(pidfd, fd, 0)`—Duplicates the target's fd `fd` into this
/// process: the *same* open file description (shared offset and flags),
/// with O_CLOEXEC set on our copy. Needs PTRACE_MODE_ATTACH_REALCREDS.
pub fn pidfd_getfd(pidfd: impl AsFd, fd: i32) -> nix::Result<OwnedFd> {
    // SAFETY: plain integer arguments; the pidfd is borrowed for the call.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_fd().as_raw_fd(), fd, 0) };
    let new = Errno::result(ret)? as i32;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: impl AsFd, sig: i32) -> nix::Result<()> {
    // SAFETY: integer arguments and a NULL siginfo (the kernel fills one).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(ret).map(drop)
}

/// kcmp types (linux/kcmp.h).
pub mod kcmp_type {
    pub const FILE: i32 = 0;
    pub const VM: i32 = 1;
    pub const FILES: i32 = 2;
    pub const FS: i32 = 3;
    pub const SIGHAND: i32 = 4;
    pub const IO: i32 = 5;
    pub const SYSVSEM: i32 = 6;
    pub const EPOLL_TFD: i32 = 7;
}

/// `kcmp(pid1, pid2, type, idx1, idx2)`—Compares kernel objects of two
/// processes: 0 equal, 1 less, 2 greater, 3 unequal but unordered.
/// For `kcmp_type::EPOLL_TFD`, `idx2` must point to a `struct
/// kcmp_epoll_slot` and is not supported here (EINVAL).
pub fn kcmp(pid1: Pid, pid2: Pid, kind: i32, idx1: u64, idx2: u64) -> nix::Result<i32> {
    if kind == kcmp_type::EPOLL_TFD {
        return Err(Errno::EINVAL);
    }
    // SAFETY: for every type except EPOLL_TFD (refused above) idx1/idx2 are
    // plain integers the kernel does not dereference.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.as_raw(),
            pid2.as_raw(),
            kind,
            idx1 as libc::c_ulong,
            idx2 as libc::c_ulong,
        )
    };
    Errno::result(ret).map(|r| r as i32)
}

/// `struct kcmp_epoll_slot`.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// `kcmp(pid1, pid2, KCMP_EPOLL_TFD, fd1, &slot)`—Compares file `fd1` of
/// `pid1` with the target `tfd` (the `toff`-th registration of that fd)
/// in epoll instance `efd` of `pid2`.
pub fn kcmp_epoll_tfd(pid1: Pid, pid2: Pid, fd1: i32, efd: i32, tfd: i32, toff: u32) -> nix::Result<i32> {
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: idx2 points to a live kcmp_epoll_slot the kernel only reads.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.as_raw(),
            pid2.as_raw(),
            kcmp_type::EPOLL_TFD,
            fd1 as libc::c_ulong,
            &slot as *const KcmpEpollSlot,
        )
    };
    Errno::result(ret).map(|r| r as i32)
}

/// `get_robust_list(tid, &head, &len)`—The robust futex list head address
/// and length registered by thread `tid`.
pub fn get_robust_list(tid: Pid) -> nix::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: the kernel writes one pointer-sized value to each of the two
    // live locals.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid.as_raw(),
            &mut head as *mut u64,
            &mut len as *mut libc::size_t,
        )
    };
    Errno::result(ret)?;
    Ok((head, len as u64))
}

/// `prlimit64(pid, resource, NULL, &old)`—Reads a resource limit of
/// another process: `(soft, hard)`, `u64::MAX` for RLIM_INFINITY.
#[doc(alias = "prlimit64")]
pub fn prlimit_get(pid: Pid, resource: i32) -> nix::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: new limit is NULL (read only); the kernel writes one rlimit64
    // into the live local.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            pid.as_raw(),
            resource,
            std::ptr::null::<libc::rlimit64>(),
            &mut old as *mut libc::rlimit64,
        )
    };
    Errno::result(ret)?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// `prlimit64(pid, resource, &new, NULL)`—Sets a resource limit of a
/// process (raising the hard limit needs CAP_SYS_RESOURCE).
pub fn prlimit_set(pid: Pid, resource: i32, soft: u64, hard: u64) -> nix::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: the kernel reads one rlimit64 from the live local; old is NULL.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            pid.as_raw(),
            resource,
            &new as *const libc::rlimit64,
            std::ptr::null_mut::<libc::rlimit64>(),
        )
    };
    Errno::result(ret).map(drop)
}

const ARCH_GET_FS: i32 = 0x1003;

/// `arch_prctl(ARCH_GET_FS, &addr)`—The calling thread's fs base (its TLS
/// pointer).
#[doc(alias = "arch_prctl")]
pub fn arch_prctl_get_fs() -> nix::Result<u64> {
    let mut addr: u64 = 0;
    // SAFETY: the kernel writes one unsigned long to the live local.
    let ret = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut addr as *mut u64) };
    Errno::result(ret)?;
    Ok(addr)
}
