//! The argument block handed from the engine to the restorer blob.
//!
//! The engine prepares everything in ordinary Rust code: it maps one
//! *blob area* (blob code, then this `Args`, then the arrays it points to,
//! the signal frame with its XSAVE image, and the blob's stack) at an
//! address that is free both in the engine's layout and in the layout being
//! restored, stages every VMA's contents somewhere else that is equally
//! free, and then calls the blob's entry with `rdi = &Args` on the blob's
//! own stack. All pointers in here are absolute addresses inside the kept
//! ranges, so they stay valid after the blob unmaps the rest.
//!
//! The blob, in this order:
//!  1. unregisters the engine's rseq area (`engine_rseq`), if any;
//!  2. unmaps everything outside `keep` (this removes the engine, its libc,
//!     its stack and its vdso);
//!  3. moves each staged VMA into place (`moves`, mremap MAYMOVE|FIXED),
//!     then applies `madvs`;
//!  4. maps the vdso block at `vdso_vvar_start` (ARCH_MAP_VDSO_64);
//!  5. sets the mm fields and the exe link (PR_SET_MM_MAP with `mm`,
//!     `auxv`, `exe_fd`), then closes `exe_fd`;
//!  6. installs `sigactions`, `itimers`;
//!  7. creates the other threads (`threads`, clone3 with their old tids,
//!     each on its own stack in the blob area); every thread, the leader
//!     included, then does 8 to 12 for itself:
//!  8. sets clear_child_tid, the robust list, rseq and comm of the thread;
//!  9. switches credentials (`creds`, unless `creds.skip != 0`);
//! 10. reports on `ready_fd` (a [`Report`]) and waits for one byte on
//!     `go_fd` (EOF means the engine gave up: exit_group(1)); the fds are
//!     shared by all threads, so the engine closes them afterwards;
//! 11. (leader only) installs the seccomp filters (`seccomp`, oldest
//!     first, with TSYNC so every thread gets them; the engine traces the
//!     threads with PTRACE_O_SUSPEND_SECCOMP until they are through
//!     rt_sigreturn) or strict mode, then queues `sigs` (pending signals;
//!     all signals are blocked by then) and arms the POSIX `timers` (after
//!     the queued signals, so a timer firing now queues behind them);
//! 12. sets fs_base/gs_base and calls rt_sigreturn with rsp = its `frame`.
//!
//! On any failure the blob writes a [`Report`] with the step and errno to
//! `ready_fd` and calls exit_group(`EXIT_BLOB_FAILED`).

/// `"cryorstr"` in little-endian bytes.
pub const ARGS_MAGIC: u64 = 0x7274_7372_6f79_7263;
/// Bumped on every layout change; the engine and the blob are built from
/// the same tree, the check only catches a stale build.
pub const ARGS_VERSION: u32 = 6;
/// Stack of each extra thread inside the blob area.
pub const THREAD_STACK: u64 = 32 * 1024;
/// Exit status of a task whose blob failed.
pub const EXIT_BLOB_FAILED: i32 = 0x7e;

/// Steps reported in [`Report::step`].
pub mod step {
    pub const HEADER: u32 = 1;
    pub const RSEQ_UNREGISTER: u32 = 2;
    pub const UNMAP: u32 = 3;
    pub const MREMAP: u32 = 4;
    pub const MADVISE: u32 = 5;
    pub const VDSO: u32 = 6;
    pub const MM_MAP: u32 = 7;
    pub const SIGACTION: u32 = 8;
    pub const ITIMER: u32 = 9;
    pub const THREAD: u32 = 10;
    pub const CREDS: u32 = 11;
    pub const SYNC: u32 = 12;
    pub const SIGQUEUE: u32 = 13;
    pub const SIGRETURN: u32 = 14;
    pub const CLONE: u32 = 15;
    pub const SECCOMP: u32 = 16;
    pub const TIMERS: u32 = 17;
    pub const UFFD: u32 = 18;
    /// Sent with `errno == 0` when everything before the go wait worked.
    pub const READY: u32 = 0xff;
}

/// Written by the blob to `ready_fd`: 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// A value from [`step`].
    pub step: u32,
    /// Positive errno of the failed syscall, 0 on success.
    pub errno: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// One staged VMA: `mremap(src, len, len, MREMAP_MAYMOVE|MREMAP_FIXED, dst)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaMove {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

/// `madvise(addr, len, advice)` after the moves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Madvise {
    pub addr: u64,
    pub len: u64,
    pub advice: u64,
}

/// The kernel's `struct sigaction` for rt_sigaction(2) on x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KSigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `struct itimerval`: interval then value, each seconds + microseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItimerVal {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

/// The kernel's `struct prctl_mm_map` (include/uapi/linux/prctl.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Pointer to the auxv words (filled in by the blob from `Args::auxv`).
    pub auxv: u64,
    /// Size of the auxv array in bytes.
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// Credentials to switch to. Capability sets are two u32 words, low first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    /// Non-zero: the task keeps the engine's credentials (already equal).
    pub skip: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub secbits: u32,
    pub no_new_privs: u32,
    pub ngroups: u32,
    /// Pointer to `ngroups` u32 supplementary group ids.
    pub groups: u64,
    pub cap_inh: [u32; 2],
    pub cap_prm: [u32; 2],
    pub cap_eff: [u32; 2],
    pub cap_bnd: [u32; 2],
    pub cap_amb: [u32; 2],
    /// Highest valid capability number (from /proc/sys/kernel/cap_last_cap).
    pub cap_last_cap: u32,
    pub _pad: u32,
}

/// Per-thread state the blob sets before the final sigreturn.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// Thread id in the restored pid namespace (set_tid of its clone3).
    pub tid: u32,
    pub _pad: u32,
    /// Top of the thread's blob stack (extra threads only).
    pub stack_top: u64,
    /// Thread name (PR_SET_NAME), NUL padded; all zero leaves it alone.
    pub comm: [u8; 16],
    pub fs_base: u64,
    pub gs_base: u64,
    /// set_tid_address(2) argument; 0 leaves it unset.
    pub clear_tid_addr: u64,
    /// set_robust_list(2) head and length; 0 leaves it unset.
    pub robust_list: u64,
    pub robust_len: u64,
    /// rseq(2) registration; `rseq_ptr == 0` means none.
    pub rseq_ptr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    /// Address of the prepared `rt_sigframe` + 8 (that is, of its `uc`):
    /// the rsp for rt_sigreturn.
    pub frame: u64,
}

/// One queued signal: the raw 128-byte `siginfo_t`, sent with
/// rt_tgsigqueueinfo to the task itself (shared = 0) or rt_sigqueueinfo
/// to the process (shared = 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedSignal {
    pub shared: u32,
    pub signo: u32,
    /// Target thread (restored tid) of a per-thread signal; 0 = the leader.
    pub tid: u32,
    pub _pad: u32,
    pub info: [u8; 128],
}

/// One classic BPF seccomp program: `len` 8-byte `sock_filter`s at `insns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompFilter {
    pub insns: u64,
    pub len: u32,
    pub flags: u32,
}

/// A POSIX timer to arm once the pending signals are queued:
/// timer_settime(id, 0, {interval, value}) (not called when the value is
/// zero). The engine created it, disarmed, unless `create` is set: a timer
/// that notifies a thread other than the leader (SIGEV_THREAD_ID, as
/// glibc's SIGEV_THREAD timers do) can only be created once that thread
/// exists, so the blob creates it with its old id (in
/// PR_TIMER_CREATE_RESTORE_IDS mode) from `clock` and the sigevent fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerArm {
    pub id: i64,
    pub interval_sec: i64,
    pub interval_nsec: i64,
    pub value_sec: i64,
    pub value_nsec: i64,
    /// Non-zero: create the timer first.
    pub create: i64,
    pub clock: i64,
    /// sigevent: sigev_value, sigev_signo, sigev_notify, the thread id.
    pub sival: u64,
    pub signo: i32,
    pub notify: i32,
    pub tid: i64,
}

/// The engine's own rseq registration, undone by the blob first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rseq {
    pub ptr: u64,
    pub len: u32,
    pub sig: u32,
}

/// The whole argument block. Arrays are (pointer, count) pairs pointing
/// inside the kept ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub magic: u64,
    /// `size_of::<Args>()` as the engine saw it.
    pub size: u64,
    pub version: u32,
    pub ready_fd: i32,
    pub go_fd: i32,
    pub exe_fd: i32,

    /// Ranges that survive the big unmap, sorted, non-overlapping.
    pub keep: u64,
    pub nr_keep: u64,
    /// [`VmaMove`] array.
    pub moves: u64,
    pub nr_moves: u64,
    /// [`Madvise`] array.
    pub madvs: u64,
    pub nr_madvs: u64,
    /// Start of `[vvar]` in the restored layout; 0: no vdso wanted.
    pub vdso_vvar_start: u64,

    pub engine_rseq: Rseq,
    pub mm: PrctlMmMap,
    /// auxv words (u64), `nr_auxv` of them.
    pub auxv: u64,
    pub nr_auxv: u64,

    /// Index = signal number - 1. SIGKILL and SIGSTOP are skipped.
    pub sigactions: [KSigAction; 64],
    /// Bit n-1 set: install `sigactions[n-1]`.
    pub sigaction_mask: u64,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: [ItimerVal; 3],

    /// The leader's state.
    pub thread: ThreadState,
    /// [`ThreadState`] array of the other threads, `nr_threads` of them.
    pub threads: u64,
    pub nr_threads: u64,
    pub creds: Creds,

    /// [`QueuedSignal`] array.
    pub sigs: u64,
    pub nr_sigs: u64,

    /// 0: none, 1: strict mode, 2: the `seccomp` filters.
    pub seccomp_mode: u64,
    /// [`SeccompFilter`] array, oldest first.
    pub seccomp: u64,
    pub nr_seccomp: u64,
    /// [`TimerArm`] array: POSIX timers armed by the leader last.
    pub timers: u64,
    pub nr_timers: u64,
    /// Non-zero: the leader creates a userfaultfd with these flags while it
    /// still has the engine's capabilities (lazy pages; the engine takes it).
    pub uffd_flags: u64,
}
