//! Probes and helpers for the whole-tree workloads (threads, signals,
//! timers, credentials, memory shapes, process-tree shapes).
//!
//! Everything a workload checks is read *from inside*, the way a program
//! would see it: raw syscalls (`rt_sigaction`, `rt_sigtimedwait`,
//! `getitimer`, `prctl`, ...) and the process's own `/proc/self` and
//! `/proc/thread-self` files. A restored tree lives in a new pid namespace
//! while `/proc` is still the host's mount, so workloads never look at
//! `/proc/<pid>` of another process: those numbers would be host pids.
//!
//! Signal handlers installed here only touch atomics (no allocation, no
//! locks): they are async-signal-safe.
//!
//! The pure parsers (`parse_maps`, `parse_smaps`, `status_field`,
//! `parse_sigset_hex`) have unit tests at the bottom.

use crate::wl::{self, Args};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Page size (x86_64).
pub const PAGE: usize = 4096;

// ---- raw syscalls ------------------------------------------------------

/// A raw syscall: Ok(return value) or Err(errno).
pub fn sys(nr: libc::c_long, a: [u64; 6]) -> Result<i64, i32> {
    // SAFETY: callers pass arguments that are valid for `nr` (pointers to
    // live, correctly sized buffers); the syscall touches nothing else.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 {
        Err(wl::errno())
    } else {
        Ok(r)
    }
}

/// gettid(2): the calling thread's id (in its own pid namespace).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and no memory effects.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// tgkill(2).
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<(), i32> {
    sys(libc::SYS_tgkill, [tgid as u64, tid as u64, sig as u64, 0, 0, 0]).map(|_| ())
}

/// kill(2).
pub fn kill(pid: i32, sig: i32) -> Result<(), i32> {
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(wl::errno())
    }
}

/// prctl(2) with integer arguments; Ok(return value) or Err(errno).
pub fn prctl(op: i32, a2: u64, a3: u64, a4: u64, a5: u64) -> Result<i64, i32> {
    sys(libc::SYS_prctl, [op as u64, a2, a3, a4, a5, 0])
}

/// prctl `op` that stores an int through its second argument.
pub fn prctl_get_int(op: i32) -> Result<i32, i32> {
    let mut v: libc::c_int = -1;
    prctl(op, &mut v as *mut libc::c_int as u64, 0, 0, 0)?;
    Ok(v)
}

/// arch_prctl(ARCH_GET_FS/GS).
pub fn arch_get(code: i32) -> u64 {
    let mut v: u64 = 0;
    let _ = sys(
        libc::SYS_arch_prctl,
        [code as u64, &mut v as *mut u64 as u64, 0, 0, 0, 0],
    );
    v
}

/// ARCH_SET_GS / ARCH_GET_FS / ARCH_GET_GS codes.
pub const ARCH_SET_GS: i32 = 0x1001;
/// See [`ARCH_SET_GS`].
pub const ARCH_GET_FS: i32 = 0x1003;
/// See [`ARCH_SET_GS`].
pub const ARCH_GET_GS: i32 = 0x1004;

/// Sets this thread's gs_base.
pub fn set_gs(v: u64) {
    if sys(libc::SYS_arch_prctl, [ARCH_SET_GS as u64, v, 0, 0, 0, 0]).is_err() {
        wl::die("arch_prctl(ARCH_SET_GS)");
    }
}

/// fork(2); dies on failure.
pub fn fork() -> i32 {
    // SAFETY: the callers fork from a single-threaded process (or only call
    // async-signal-safe code in the child before exiting).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        wl::die("fork");
    }
    pid
}

/// _exit(2).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Monotonic clock in nanoseconds.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// clock_gettime(clock) in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Burns roughly `ms` milliseconds of this thread's CPU time.
pub fn burn_cpu_ms(ms: u64) {
    let start = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut x: u64 = 1;
    while clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - start < ms * 1_000_000 {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

// ---- wait helpers ------------------------------------------------------

/// waitpid(pid, flags): Ok((pid, status)) or Err(errno).
pub fn waitpid(pid: i32, flags: i32) -> Result<(i32, i32), i32> {
    let mut st = 0;
    // SAFETY: `st` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut st, flags) };
    if r < 0 {
        Err(wl::errno())
    } else {
        Ok((r, st))
    }
}

/// Waits up to `ms` for child `pid` to exit (polling); Some(status).
pub fn wait_child(pid: i32, ms: u64) -> Result<i32, String> {
    let end = mono_ns() + ms * 1_000_000;
    loop {
        match waitpid(pid, libc::WNOHANG) {
            Ok((r, st)) if r == pid => return Ok(st),
            Ok(_) => {}
            Err(libc::EINTR) => {}
            Err(e) => return Err(format!("waitpid({pid}): errno {e}")),
        }
        if mono_ns() > end {
            return Err(format!("child {pid} did not exit within {ms} ms"));
        }
        wl::sleep_ms(5);
    }
}

/// "exit N" / "signal N" / "stopped N" for a wait status.
pub fn describe_status(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exit {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("signal {}", libc::WTERMSIG(st))
    } else if libc::WIFSTOPPED(st) {
        format!("stopped {}", libc::WSTOPSIG(st))
    } else {
        format!("status {st:#x}")
    }
}

/// True if `st` is a normal exit with code 0.
pub fn exited_ok(st: i32) -> bool {
    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0
}

// ---- signals -----------------------------------------------------------

/// The kernel's sigset bit of `sig`.
pub fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// The set of the given signals.
pub fn sigset_of(sigs: &[i32]) -> u64 {
    sigs.iter().fold(0, |m, &s| m | sigbit(s))
}

/// Signal numbers in a kernel sigset, for messages.
pub fn sigset_list(set: u64) -> Vec<i32> {
    (1..=64).filter(|&s| set & sigbit(s) != 0).collect()
}

/// SIGRTMIN as glibc exposes it (glibc keeps 32 and 33 for itself).
pub fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

/// rt_sigprocmask(how, set) for the calling thread; returns the old mask.
pub fn sigprocmask(how: i32, set: Option<u64>) -> u64 {
    let mut old: u64 = 0;
    let p = set.as_ref().map_or(0, |s| s as *const u64 as u64);
    if sys(
        libc::SYS_rt_sigprocmask,
        [how as u64, p, &mut old as *mut u64 as u64, 8, 0, 0],
    )
    .is_err()
    {
        wl::die("rt_sigprocmask");
    }
    old
}

/// The calling thread's blocked mask.
pub fn blocked_mask() -> u64 {
    sigprocmask(libc::SIG_BLOCK, None)
}

/// rt_sigpending: signals pending for this thread or the whole process.
pub fn sigpending() -> u64 {
    let mut set: u64 = 0;
    if sys(libc::SYS_rt_sigpending, [&mut set as *mut u64 as u64, 8, 0, 0, 0, 0]).is_err() {
        wl::die("rt_sigpending");
    }
    set
}

/// A signal action as the kernel keeps it (struct k_sigaction on x86_64).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(C)]
pub struct KSigaction {
    /// Handler address (0 = SIG_DFL, 1 = SIG_IGN).
    pub handler: u64,
    /// SA_* flags (including SA_RESTORER, which glibc adds).
    pub flags: u64,
    /// The sa_restorer trampoline.
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

/// The kernel's view of the action of `sig` (raw rt_sigaction).
pub fn get_sigaction(sig: i32) -> Result<KSigaction, i32> {
    let mut a = KSigaction::default();
    sys(
        libc::SYS_rt_sigaction,
        [sig as u64, 0, &mut a as *mut KSigaction as u64, 8, 0, 0],
    )?;
    Ok(a)
}

/// Installs `handler` (an `extern "C" fn(i32)` or, with SA_SIGINFO, an
/// `extern "C" fn(i32, *mut siginfo_t, *mut c_void)`, given as an address)
/// for `sig` with `flags` and `mask` through glibc's sigaction.
pub fn set_action(sig: i32, handler: usize, flags: i32, mask: &[i32]) {
    // SAFETY: a zeroed sigaction is a valid value; the handler address is
    // a function with the signature `flags` implies, or SIG_DFL/SIG_IGN;
    // the pointers passed are valid for the call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        for &m in mask {
            libc::sigaddset(&mut sa.sa_mask, m);
        }
        sa.sa_flags = flags;
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            wl::die(&format!("sigaction({sig})"));
        }
    }
}

/// Per-signal flags and counters set by [`flag_handler`].
static SIG_FLAG: [AtomicBool; 65] = [const { AtomicBool::new(false) }; 65];
static SIG_COUNT: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];
static SIG_PID: [AtomicI32; 65] = [const { AtomicI32::new(0) }; 65];
static SIG_CODE: [AtomicI32; 65] = [const { AtomicI32::new(0) }; 65];
/// (thread id << 32 | signal) of every run of the flag handler, in order
/// (at most 256).
static HIT_TIDS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
static HIT_N: AtomicUsize = AtomicUsize::new(0);

extern "C" fn flag_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // Only atomics and a raw gettid: async-signal-safe, no allocation.
    let s = sig as usize;
    if s < 65 {
        if !info.is_null() {
            // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO;
            // bytes 8..12 are si_code and 16..20 si_pid for user signals.
            let (code, pid) = unsafe {
                let p = info as *const u8;
                (
                    std::ptr::read_unaligned(p.add(8) as *const i32),
                    std::ptr::read_unaligned(p.add(16) as *const i32),
                )
            };
            SIG_CODE[s].store(code, Ordering::SeqCst);
            SIG_PID[s].store(pid, Ordering::SeqCst);
        }
        SIG_COUNT[s].fetch_add(1, Ordering::SeqCst);
        SIG_FLAG[s].store(true, Ordering::SeqCst);
    }
    let i = HIT_N.fetch_add(1, Ordering::SeqCst);
    if i < HIT_TIDS.len() {
        HIT_TIDS[i].store(((gettid() as u64) << 32) | (sig as u32 as u64), Ordering::SeqCst);
    }
}

/// Installs the flag handler for `sig` (SA_SIGINFO, plus `extra` flags;
/// no SA_RESTART unless given, so blocking calls return EINTR).
pub fn install_flag(sig: i32, extra: i32) {
    set_action(sig, flag_handler as *const () as usize, libc::SA_SIGINFO | extra, &[]);
}

/// The address of the flag handler (an SA_SIGINFO handler), for
/// [`set_action`] with a mask of one's own.
pub fn flag_handler_addr() -> usize {
    flag_handler as *const () as usize
}

/// True once the flag handler has run for `sig`.
pub fn flag(sig: i32) -> bool {
    SIG_FLAG[sig as usize].load(Ordering::SeqCst)
}

/// Clears the flag of `sig`.
pub fn clear_flag(sig: i32) {
    SIG_FLAG[sig as usize].store(false, Ordering::SeqCst);
}

/// How often the flag handler ran for `sig`.
pub fn flag_count(sig: i32) -> u32 {
    SIG_COUNT[sig as usize].load(Ordering::SeqCst)
}

/// (si_code, si_pid) of the last `sig` the flag handler saw.
pub fn flag_sender(sig: i32) -> (i32, i32) {
    (
        SIG_CODE[sig as usize].load(Ordering::SeqCst),
        SIG_PID[sig as usize].load(Ordering::SeqCst),
    )
}

/// True if the flag handler ran on thread `tid` (for any signal).
pub fn handler_ran_on(tid: i32) -> bool {
    let n = HIT_N.load(Ordering::SeqCst).min(HIT_TIDS.len());
    HIT_TIDS[..n]
        .iter()
        .any(|t| (t.load(Ordering::SeqCst) >> 32) as i32 == tid)
}

/// True if the flag handler ran on thread `tid` for `sig`.
pub fn handler_ran_for(tid: i32, sig: i32) -> bool {
    let want = ((tid as u64) << 32) | (sig as u32 as u64);
    let n = HIT_N.load(Ordering::SeqCst).min(HIT_TIDS.len());
    HIT_TIDS[..n].iter().any(|t| t.load(Ordering::SeqCst) == want)
}

/// A siginfo as the kernel fills it (128 bytes), with accessors for the
/// fields the workloads check.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct SigInfo(pub [u8; 128]);

impl SigInfo {
    /// An all-zero siginfo.
    pub fn zeroed() -> SigInfo {
        SigInfo([0; 128])
    }
    fn i32_at(&self, off: usize) -> i32 {
        i32::from_le_bytes(self.0[off..off + 4].try_into().unwrap_or([0; 4]))
    }
    fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.0[off..off + 8].try_into().unwrap_or([0; 8]))
    }
    fn set_i32(&mut self, off: usize, v: i32) {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// si_signo.
    pub fn signo(&self) -> i32 {
        self.i32_at(0)
    }
    /// si_code.
    pub fn code(&self) -> i32 {
        self.i32_at(8)
    }
    /// si_errno (SECCOMP_RET_DATA for SIGSYS).
    pub fn errno(&self) -> i32 {
        self.i32_at(4)
    }
    /// si_pid (kill, sigqueue, SIGCHLD).
    pub fn pid(&self) -> i32 {
        self.i32_at(16)
    }
    /// si_uid.
    pub fn uid(&self) -> u32 {
        self.i32_at(20) as u32
    }
    /// si_value (sigqueue, POSIX timers).
    pub fn value(&self) -> u64 {
        self.u64_at(24)
    }
    /// si_timerid (POSIX timers).
    pub fn timerid(&self) -> i32 {
        self.i32_at(16)
    }
    /// si_overrun (POSIX timers).
    pub fn overrun(&self) -> i32 {
        self.i32_at(20)
    }
    /// si_status (SIGCHLD).
    pub fn status(&self) -> i32 {
        self.i32_at(24)
    }
    /// si_syscall (SIGSYS).
    pub fn syscall(&self) -> i32 {
        self.i32_at(24)
    }
    /// A queued-signal siginfo (SI_QUEUE) from the caller with `value`.
    pub fn queued(sig: i32, value: u64) -> SigInfo {
        let mut s = SigInfo::zeroed();
        s.set_i32(0, sig);
        s.set_i32(8, SI_QUEUE);
        s.set_i32(16, wl::getpid());
        // SAFETY: getuid has no preconditions.
        s.set_i32(20, unsafe { libc::getuid() } as i32);
        s.0[24..32].copy_from_slice(&value.to_le_bytes());
        s
    }
    /// "sig=N code=C pid=P value=V" for messages.
    pub fn brief(&self) -> String {
        format!(
            "sig={} code={} pid={} uid={} value={:#x}",
            self.signo(),
            self.code(),
            self.pid(),
            self.uid(),
            self.value()
        )
    }
}

/// si_code values.
pub const SI_USER: i32 = 0;
/// See [`SI_USER`].
pub const SI_QUEUE: i32 = -1;
/// See [`SI_USER`].
pub const SI_TIMER: i32 = -2;
/// See [`SI_USER`].
pub const SI_TKILL: i32 = -6;

/// rt_sigtimedwait on `set` for up to `ms` (0 = poll): Ok(siginfo) or
/// Err(errno) (EAGAIN when nothing came).
pub fn sigtimedwait(set: u64, ms: u64) -> Result<SigInfo, i32> {
    let mut info = SigInfo::zeroed();
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        match sys(
            libc::SYS_rt_sigtimedwait,
            [
                &set as *const u64 as u64,
                &mut info as *mut SigInfo as u64,
                &ts as *const libc::timespec as u64,
                8,
                0,
                0,
            ],
        ) {
            Ok(_) => return Ok(info),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// rt_sigqueueinfo(pid, sig, SI_QUEUE with `value`) (what sigqueue(3) does).
pub fn sigqueue(pid: i32, sig: i32, value: u64) -> Result<(), i32> {
    let info = SigInfo::queued(sig, value);
    sys(
        libc::SYS_rt_sigqueueinfo,
        [pid as u64, sig as u64, &info as *const SigInfo as u64, 0, 0, 0],
    )
    .map(|_| ())
}

/// rt_tgsigqueueinfo: a queued signal with `value` for one thread.
pub fn tgsigqueue(tgid: i32, tid: i32, sig: i32, value: u64) -> Result<(), i32> {
    let info = SigInfo::queued(sig, value);
    sys(
        libc::SYS_rt_tgsigqueueinfo,
        [
            tgid as u64,
            tid as u64,
            sig as u64,
            &info as *const SigInfo as u64,
            0,
            0,
        ],
    )
    .map(|_| ())
}

/// The calling thread's sigaltstack: (ss_sp, ss_flags, ss_size).
pub fn get_altstack() -> (u64, i32, usize) {
    // SAFETY: a zeroed stack_t is valid; `old` is a valid out-pointer.
    unsafe {
        let mut old: libc::stack_t = std::mem::zeroed();
        if libc::sigaltstack(std::ptr::null(), &mut old) != 0 {
            wl::die("sigaltstack(NULL, &old)");
        }
        (old.ss_sp as u64, old.ss_flags, old.ss_size)
    }
}

/// Sets the calling thread's sigaltstack.
pub fn set_altstack(sp: u64, size: usize, flags: i32) {
    // SAFETY: `sp` is a mapping of at least `size` bytes that stays mapped
    // for the thread's life (callers leak it); `ss` is valid for the call.
    unsafe {
        let ss = libc::stack_t {
            ss_sp: sp as *mut libc::c_void,
            ss_flags: flags,
            ss_size: size,
        };
        if libc::sigaltstack(&ss, std::ptr::null_mut()) != 0 {
            wl::die("sigaltstack(set)");
        }
    }
}

/// SS_AUTODISARM.
pub const SS_AUTODISARM: i32 = 1 << 31;

// ---- memory ------------------------------------------------------------

/// mmap(2) of anonymous memory; dies on failure.
pub fn mmap_anon(addr: usize, len: usize, prot: i32, flags: i32) -> usize {
    // SAFETY: anonymous mappings at a kernel-chosen address (or a fixed one
    // the caller reserved, with MAP_FIXED_NOREPLACE or over its own
    // reservation) touch no memory Rust owns.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        wl::die(&format!("mmap {len:#x} bytes at {addr:#x}"));
    }
    p as usize
}

/// mprotect(2); dies on failure.
pub fn mprotect(addr: usize, len: usize, prot: i32) {
    // SAFETY: callers only change the protection of their own mappings,
    // which no Rust reference points into across the call.
    if unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) } != 0 {
        wl::die(&format!("mprotect {addr:#x}+{len:#x} {prot}"));
    }
}

/// madvise(2): Ok or Err(errno).
pub fn madvise(addr: usize, len: usize, advice: i32) -> Result<(), i32> {
    // SAFETY: callers advise only their own anonymous mappings.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } != 0 {
        Err(wl::errno())
    } else {
        Ok(())
    }
}

/// A u64 slice view of raw memory.
///
/// # Safety
/// `[addr, addr + len)` must be mapped readable for the life of the slice.
pub unsafe fn words<'a>(addr: usize, len: usize) -> &'a [u64] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(addr as *const u64, len / 8) }
}

/// A mutable u64 slice view of raw memory.
///
/// # Safety
/// `[addr, addr + len)` must be mapped writable and not aliased.
pub unsafe fn words_mut<'a>(addr: usize, len: usize) -> &'a mut [u64] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u64, len / 8) }
}

/// Fills `[addr, addr+len)` with the pattern of `seed` (must be writable).
pub fn fill_at(addr: usize, len: usize, seed: u64) {
    // SAFETY: callers pass their own writable mapping.
    wl::fill(unsafe { words_mut(addr, len) }, seed);
}

/// Checksum of `[addr, addr+len)` (must be readable).
pub fn sum_at(addr: usize, len: usize) -> u64 {
    // SAFETY: callers pass their own readable mapping.
    wl::checksum(std::hint::black_box(unsafe { words(addr, len) }))
}

/// mincore(2): how many of the pages of `[addr, addr+len)` are resident.
pub fn resident_pages(addr: usize, len: usize) -> usize {
    let n = len.div_ceil(PAGE);
    let mut v = vec![0u8; n];
    // SAFETY: `v` has one byte per page of the range.
    if unsafe { libc::mincore(addr as *mut libc::c_void, len, v.as_mut_ptr()) } != 0 {
        wl::die("mincore");
    }
    v.iter().filter(|b| **b & 1 != 0).count()
}

/// The pagemap entry (64 bits) of the page at `addr`.
pub fn pagemap_entry(addr: usize) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open("/proc/self/pagemap").unwrap_or_else(|_| wl::die("open pagemap"));
    let mut b = [0u8; 8];
    if f.seek(SeekFrom::Start((addr / PAGE * 8) as u64)).is_err() || f.read_exact(&mut b).is_err() {
        wl::die("read pagemap");
    }
    u64::from_le_bytes(b)
}

/// process_vm_readv from our own address space: true if `len` bytes at
/// `addr` can be read that way (false for guard regions and holes).
pub fn self_vm_readable(addr: usize, len: usize) -> bool {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    matches!(sys(
        libc::SYS_process_vm_readv,
        [wl::getpid() as u64, &local as *const _ as u64, 1, &remote as *const _ as u64, 1, 0],
    ), Ok(n) if n as usize == len)
}

// ---- /proc parsing -----------------------------------------------------

/// Reads a /proc file of the caller; dies if it cannot.
pub fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| wl::die(&format!("read {path}: {e}")))
}

/// The value of `Key:` in a status-style text, trimmed.
pub fn status_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// A hex signal mask from /proc status (SigBlk, SigPnd, ...).
pub fn parse_sigset_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLine {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// "rwxp" style permissions.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Path or pseudo-name ("" for anonymous).
    pub path: String,
}

impl MapLine {
    /// "start-end perms path" for messages.
    pub fn brief(&self) -> String {
        format!("{:x}-{:x} {} {}", self.start, self.end, self.perms, self.path)
    }
}

fn parse_map_line(l: &str) -> Option<MapLine> {
    let mut it = l.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let _ino = it.next()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range.split_once('-')?;
    Some(MapLine {
        start: usize::from_str_radix(a, 16).ok()?,
        end: usize::from_str_radix(b, 16).ok()?,
        perms,
        offset,
        path,
    })
}

/// Parses /proc/PID/maps text.
pub fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines().filter_map(parse_map_line).collect()
}

/// One VMA of /proc/PID/smaps: its maps line, its `Key: N kB` fields and
/// its VmFlags mnemonics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmapsVma {
    /// The maps line.
    pub map: MapLine,
    /// `Key: value` fields (values in kB where the kernel says kB).
    pub fields: Vec<(String, u64)>,
    /// VmFlags ("rd", "wr", "gd", "lo", ...).
    pub flags: Vec<String>,
}

impl SmapsVma {
    /// A numeric field (kB), 0 if absent.
    pub fn field(&self, key: &str) -> u64 {
        self.fields.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
    }
    /// True if VmFlags has `f`.
    pub fn has(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

/// Parses /proc/PID/smaps text.
pub fn parse_smaps(text: &str) -> Vec<SmapsVma> {
    let mut out: Vec<SmapsVma> = Vec::new();
    for l in text.lines() {
        let first = l.split(' ').next().unwrap_or("");
        let is_header = first.contains('-') && !first.ends_with(':');
        if is_header {
            if let Some(m) = parse_map_line(l) {
                out.push(SmapsVma {
                    map: m,
                    fields: Vec::new(),
                    flags: Vec::new(),
                });
                continue;
            }
        }
        let Some(cur) = out.last_mut() else { continue };
        if let Some(f) = l.strip_prefix("VmFlags:") {
            cur.flags = f.split_whitespace().map(str::to_string).collect();
        } else if let Some((k, v)) = l.split_once(':') {
            if let Some(n) = v.split_whitespace().next().and_then(|x| x.parse().ok()) {
                cur.fields.push((k.to_string(), n));
            }
        }
    }
    out
}

/// Our own maps lines overlapping `[start, end)`.
pub fn maps_in(start: usize, end: usize) -> Vec<MapLine> {
    parse_maps(&read_proc("/proc/self/maps"))
        .into_iter()
        .filter(|m| m.start < end && m.end > start)
        .collect()
}

/// Our own smaps VMA containing `addr`.
pub fn smaps_at(addr: usize) -> Option<SmapsVma> {
    parse_smaps(&read_proc("/proc/self/smaps"))
        .into_iter()
        .find(|v| v.map.start <= addr && addr < v.map.end)
}

/// A field of /proc/self/status.
pub fn self_status(key: &str) -> Option<String> {
    status_field(&read_proc("/proc/self/status"), key)
}

/// A field of /proc/thread-self/status (the calling thread).
pub fn thread_status(key: &str) -> Option<String> {
    status_field(&read_proc("/proc/thread-self/status"), key)
}

// ---- verdict bookkeeping -----------------------------------------------

/// Which of a workload's checks are enabled (`--check a,b,c`).
pub struct Only {
    on: Vec<String>,
}

impl Only {
    /// Parses `--check LIST` against `all` (unknown names die); without
    /// `--check`, `default` is used.
    pub fn from_args(args: &Args, all: &[&str], default: &[&str]) -> Only {
        let on: Vec<String> = match args.value("check") {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(v) if v == "all" => all.iter().map(|s| s.to_string()).collect(),
            Some(v) => v.split(',').map(|s| s.trim().to_string()).collect(),
        };
        for c in &on {
            if !all.contains(&c.as_str()) {
                wl::die(&format!("--check {c}: not one of {}", all.join(",")));
            }
        }
        Only { on }
    }

    /// True if `name` is enabled.
    pub fn has(&self, name: &str) -> bool {
        self.on.iter().any(|c| c == name)
    }

    /// Disables `name` (for checks that do not apply to a configuration).
    pub fn remove(&mut self, name: &str) {
        self.on.retain(|c| c != name);
    }

    /// The enabled names, comma-separated.
    pub fn list(&self) -> String {
        self.on.join(",")
    }
}

/// Collects problems, each prefixed with the name of its check.
#[derive(Default)]
pub struct Problems {
    /// "check: detail" entries.
    pub v: Vec<String>,
}

impl Problems {
    /// An empty list.
    pub fn new() -> Problems {
        Problems::default()
    }
    /// Records a problem of `check`.
    pub fn add(&mut self, check: &str, msg: impl Into<String>) {
        self.v.push(format!("{check}: {}", msg.into()));
    }
    /// Records a problem unless `got == want`.
    pub fn eq<T: PartialEq + Debug>(&mut self, check: &str, what: &str, got: T, want: T) {
        if got != want {
            self.add(check, format!("{what} is {got:?}, was {want:?}"));
        }
    }
    /// Records a problem unless `ok`.
    pub fn ensure(&mut self, check: &str, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.add(check, msg());
        }
    }
    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }
}

// ---- setup communication between the members of a tree ----------------

/// A pipe used only during setup (members report their pid and then close
/// it; it is gone before READY, so no pipe is left when the tree is dumped).
pub struct SetupPipe {
    /// Read end (kept by the root).
    pub r: i32,
    /// Write end (kept by the members until they are set up).
    pub w: i32,
}

impl SetupPipe {
    /// pipe2(O_CLOEXEC).
    pub fn new() -> SetupPipe {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            wl::die("pipe2");
        }
        SetupPipe { r: fds[0], w: fds[1] }
    }

    /// A member reports `(tag, pid)` (8 bytes, one atomic write).
    pub fn send(&self, tag: i32, pid: i32) {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&tag.to_le_bytes());
        b[4..].copy_from_slice(&pid.to_le_bytes());
        // SAFETY: `b` is valid for 8 bytes.
        if unsafe { libc::write(self.w, b.as_ptr().cast(), 8) } != 8 {
            wl::die("write setup pipe");
        }
    }

    /// Closes the read end (in members).
    pub fn close_r(&self) {
        close(self.r);
    }

    /// Closes the write end.
    pub fn close_w(&self) {
        close(self.w);
    }

    /// The root reads `n` reports (blocking); returns them.
    pub fn recv(&self, n: usize) -> Vec<(i32, i32)> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut b = [0u8; 8];
            // SAFETY: `b` is writable for 8 bytes.
            let r = unsafe { libc::read(self.r, b.as_mut_ptr().cast(), 8) };
            if r == 8 {
                let tag = i32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]));
                let pid = i32::from_le_bytes(b[4..].try_into().unwrap_or([0; 4]));
                out.push((tag, pid));
            } else if r < 0 && wl::errno() == libc::EINTR {
                continue;
            } else {
                wl::die(&format!("setup pipe: {} of {n} reports", out.len()));
            }
        }
        out
    }
}

impl Default for SetupPipe {
    fn default() -> Self {
        SetupPipe::new()
    }
}

/// close(2), errors ignored.
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor number the caller owns.
    unsafe {
        libc::close(fd);
    }
}

/// Lines of the log at `path` starting with `prefix`.
pub fn log_lines_with(path: &str, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234                       /usr/bin/x y
7f0000000000-7f0000004000 rw-p 00000000 00:00 0 
7f0000004000-7f0000005000 ---p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7f1000000000-7f1000001000 r-xp 00001000 fe:01 99                         /tmp/wl copy (deleted)
";

    #[test]
    fn maps_are_parsed() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].start, 0x55d0c0a00000);
        assert_eq!(m[0].end, 0x55d0c0a02000);
        assert_eq!(m[0].perms, "r--p");
        assert_eq!(m[0].path, "/usr/bin/x y");
        assert_eq!(m[1].path, "");
        assert_eq!(m[2].perms, "---p");
        assert_eq!(m[3].path, "[stack]");
        assert_eq!(m[4].offset, 0x1000);
        assert_eq!(m[4].path, "/tmp/wl copy (deleted)");
    }

    #[test]
    fn smaps_fields_and_flags() {
        let text = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
Size:               4096 kB
AnonHugePages:      2048 kB
THPeligible:    1
VmFlags: rd wr mr mw me ac hg 
7f0000400000-7f0000401000 ---p 00000000 00:00 0 
Size:                  4 kB
VmFlags: mr mw me gd 
";
        let v = parse_smaps(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].field("AnonHugePages"), 2048);
        assert_eq!(v[0].field("Size"), 4096);
        assert_eq!(v[0].field("Nope"), 0);
        assert!(v[0].has("hg"));
        assert!(!v[0].has("gd"));
        assert!(v[1].has("gd"));
        assert_eq!(v[1].map.perms, "---p");
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nUmask:\t0027\nSigBlk:\t0000000000010002\nSeccomp:\t2\n";
        assert_eq!(status_field(s, "Umask").as_deref(), Some("0027"));
        assert_eq!(status_field(s, "Seccomp").as_deref(), Some("2"));
        assert_eq!(status_field(s, "Nope"), None);
        let m = parse_sigset_hex(&status_field(s, "SigBlk").unwrap()).unwrap();
        assert_eq!(sigset_list(m), vec![2, 17]);
        assert_eq!(sigset_of(&[2, 17]), m);
    }

    #[test]
    fn problems_prefix_their_check() {
        let mut p = Problems::new();
        p.eq("umask", "umask", 0o22, 0o27);
        p.eq("nice", "nice", 7, 7);
        p.ensure("x", false, || "bad".into());
        assert_eq!(
            p.v,
            vec!["umask: umask is 18, was 23".to_string(), "x: bad".to_string()]
        );
    }

    #[test]
    fn siginfo_accessors() {
        let s = SigInfo::queued(40, 0x1122_3344_5566_7788);
        assert_eq!(s.signo(), 40);
        assert_eq!(s.code(), SI_QUEUE);
        assert_eq!(s.pid(), wl::getpid());
        assert_eq!(s.value(), 0x1122_3344_5566_7788);
    }

    #[test]
    fn only_parses_lists() {
        let a = Args::from_vec(vec!["--check".into(), "b,c".into()]);
        let o = Only::from_args(&a, &["a", "b", "c"], &["a"]);
        assert!(!o.has("a") && o.has("b") && o.has("c"));
        let d = Only::from_args(&Args::from_vec(vec![]), &["a", "b"], &["a"]);
        assert!(d.has("a") && !d.has("b"));
        let all = Only::from_args(&Args::from_vec(vec!["--check".into(), "all".into()]), &["a", "b"], &[]);
        assert!(all.has("a") && all.has("b"));
    }

    #[test]
    fn own_signal_probes_work() {
        let a = get_sigaction(libc::SIGKILL).unwrap();
        assert_eq!(a.handler, 0);
        assert!(get_sigaction(65).is_err());
        let m = blocked_mask();
        assert_eq!(sigprocmask(libc::SIG_SETMASK, Some(m)), m);
    }
}
