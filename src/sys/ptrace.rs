//! ptrace wrappers for freezing threads and reading their CPU state.
//!
//! Everything works per thread (`tid`). Signals are plain `i32` numbers so
//! real-time signals pass through (nix's `Signal` cannot hold them); 0 means
//! "no signal".
#![allow(unsafe_code)]

use std::mem::size_of;

use nix::errno::Errno;
use nix::sys::ptrace::Options;
use nix::unistd::Pid;

/// `PTRACE_O_SUSPEND_SECCOMP`: injected syscalls bypass the tracee's
/// seccomp filters (needs CAP_SYS_ADMIN). nix does not name it.
pub const OPT_SUSPEND_SECCOMP: Options = Options::from_bits_retain(1 << 21);

/// `PTRACE_EVENT_STOP`: the event code of interrupt and group stops of a
/// seized tracee.
pub const EVENT_STOP: i32 = 128;

const PTRACE_GETREGSET: libc::c_uint = 0x4204;
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
const PTRACE_GETSIGINFO: libc::c_uint = 0x4202;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

/// `NT_PRSTATUS`: general purpose registers.
pub const NT_PRSTATUS: u32 = 1;
/// `NT_PRFPREG`: the legacy 512-byte FXSAVE area.
pub const NT_PRFPREG: u32 = 2;
/// `NT_X86_XSTATE`: the full XSAVE area, standard format.
pub const NT_X86_XSTATE: u32 = 0x202;

/// Size of a `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;
/// A raw `siginfo_t`, as the kernel copies it out.
pub type SigInfo = [u8; SIGINFO_SIZE];

/// The kernel's x86_64 `struct user_regs_struct`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

const _: () = assert!(size_of::<UserRegs>() == 27 * 8);

/// rseq registration of a thread, from `PTRACE_GET_RSEQ_CONFIGURATION`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of the thread's `struct rseq`.
    pub ptr: u64,
    /// Registered length.
    pub len: u32,
    pub flags: u32,
    /// Abort signature.
    pub sig: u32,
}

/// What `waitpid` reported for a traced thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// `PTRACE_EVENT_STOP` with SIGTRAP: the stop requested by
    /// PTRACE_INTERRUPT (or a PTRACE_LISTEN wake-up).
    Interrupted,
    /// `PTRACE_EVENT_STOP` with a stop signal: the thread is in group stop
    /// (it was stopped by SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU).
    GroupStop(i32),
    /// Another ptrace event stop (`PTRACE_EVENT_CLONE`, `EXIT`, ...).
    Event { event: i32, sig: i32 },
    /// A syscall-entry or -exit stop reported with PTRACE_O_TRACESYSGOOD.
    SyscallStop,
    /// Signal-delivery-stop: the thread is about to receive `sig`. Resuming
    /// with signal 0 suppresses it; pass it to `cont`/`detach` to deliver it.
    /// (Without TRACESYSGOOD, syscall stops also look like `Signal(SIGTRAP)`.)
    Signal(i32),
    /// The thread exited with this code.
    Exited(i32),
    /// The thread was killed by a signal.
    Killed { sig: i32, core: bool },
}

impl WaitOutcome {
    /// Decodes a raw wait status.
    pub fn from_status(status: i32) -> WaitOutcome {
        if libc::WIFEXITED(status) {
            return WaitOutcome::Exited(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return WaitOutcome::Killed {
                sig: libc::WTERMSIG(status),
                core: libc::WCOREDUMP(status),
            };
        }
        // Stopped (WIFCONTINUED cannot show up without WCONTINUED).
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        match event {
            0 if sig == (libc::SIGTRAP | 0x80) => WaitOutcome::SyscallStop,
            0 => WaitOutcome::Signal(sig),
            EVENT_STOP => match sig {
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => WaitOutcome::GroupStop(sig),
                _ => WaitOutcome::Interrupted,
            },
            _ => WaitOutcome::Event { event, sig },
        }
    }

    /// The thread is gone (exited or killed).
    pub fn is_gone(&self) -> bool {
        matches!(self, WaitOutcome::Exited(_) | WaitOutcome::Killed { .. })
    }
}

/// Issues a ptrace request.
///
/// # Safety
/// For requests that take pointers, `addr`/`data` must point to live
/// buffers of the size and mutability the request needs, for the call.
unsafe fn req(request: libc::c_uint, tid: Pid, addr: usize, data: usize) -> nix::Result<libc::c_long> {
    // SAFETY: forwarded from the caller's contract.
    let ret = unsafe {
        libc::ptrace(
            request,
            tid.as_raw(),
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    Errno::result(ret)
}

/// Issues a ptrace request whose `addr` and `data` are plain integers.
fn req_plain(request: libc::c_uint, tid: Pid, addr: usize, data: usize) -> nix::Result<()> {
    // SAFETY: only called with requests (SEIZE, INTERRUPT, CONT, DETACH,
    // SYSCALL, SINGLESTEP, LISTEN, SETOPTIONS) for which the kernel never
    // dereferences addr or data.
    unsafe { req(request, tid, addr, data) }.map(drop)
}

/// `ptrace(PTRACE_SEIZE, tid, 0, options)`—Attaches without stopping the
/// thread and without disturbing its group-stop state.
#[doc(alias = "PTRACE_SEIZE")]
pub fn seize(tid: Pid, options: Options) -> nix::Result<()> {
    req_plain(libc::PTRACE_SEIZE, tid, 0, options.bits() as usize)
}

/// `ptrace(PTRACE_INTERRUPT, tid)`—Asks a seized thread to stop; collect
/// the stop with [`wait_stop`].
#[doc(alias = "PTRACE_INTERRUPT")]
pub fn interrupt(tid: Pid) -> nix::Result<()> {
    req_plain(libc::PTRACE_INTERRUPT, tid, 0, 0)
}

/// `ptrace(PTRACE_SETOPTIONS, tid, 0, options)`.
#[doc(alias = "PTRACE_SETOPTIONS")]
pub fn set_options(tid: Pid, options: Options) -> nix::Result<()> {
    req_plain(libc::PTRACE_SETOPTIONS, tid, 0, options.bits() as usize)
}

/// `waitpid(tid, &status, __WALL)`, retried on EINTR, decoded.
pub fn wait_stop(tid: Pid) -> nix::Result<WaitOutcome> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int for the whole call.
        let ret = unsafe { libc::waitpid(tid.as_raw(), &mut status, libc::__WALL) };
        match Errno::result(ret) {
            Ok(_) => return Ok(WaitOutcome::from_status(status)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `ptrace(PTRACE_DETACH, tid, 0, sig)`—Lets the thread go. `sig` is
/// delivered only if the thread is in a signal-delivery-stop.
#[doc(alias = "PTRACE_DETACH")]
pub fn detach(tid: Pid, sig: i32) -> nix::Result<()> {
    req_plain(libc::PTRACE_DETACH, tid, 0, sig as usize)
}

/// `ptrace(PTRACE_CONT, tid, 0, sig)`.
#[doc(alias = "PTRACE_CONT")]
pub fn cont(tid: Pid, sig: i32) -> nix::Result<()> {
    req_plain(libc::PTRACE_CONT, tid, 0, sig as usize)
}

/// `ptrace(PTRACE_LISTEN, tid)`—Lets a group-stopped seized thread wait
/// for SIGCONT while staying traced.
#[doc(alias = "PTRACE_LISTEN")]
pub fn listen(tid: Pid) -> nix::Result<()> {
    req_plain(libc::PTRACE_LISTEN, tid, 0, 0)
}

/// `ptrace(PTRACE_SYSCALL, tid, 0, 0)`—Resumes until the next syscall
/// entry or exit.
#[doc(alias = "PTRACE_SYSCALL")]
pub fn syscall_step(tid: Pid) -> nix::Result<()> {
    req_plain(libc::PTRACE_SYSCALL, tid, 0, 0)
}

/// `ptrace(PTRACE_SINGLESTEP, tid, 0, 0)`—Executes one instruction.
///
/// The trap is delivered as a forced SIGTRAP: if the thread blocks or
/// ignores SIGTRAP, the kernel resets its SIGTRAP disposition to SIG_DFL.
/// [`crate::sys::inject`] uses syscall stops instead for that reason.
#[doc(alias = "PTRACE_SINGLESTEP")]
pub fn singlestep(tid: Pid) -> nix::Result<()> {
    req_plain(libc::PTRACE_SINGLESTEP, tid, 0, 0)
}

/// `PTRACE_GETREGSET` into `buf`; returns the length the kernel filled.
fn get_regset(tid: Pid, note: u32, buf: &mut [u8]) -> nix::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most iov_len bytes to iov_base (`buf`,
    // alive and exclusively borrowed) and updates iov.iov_len (`iov` lives
    // on our stack for the call).
    unsafe { req(PTRACE_GETREGSET, tid, note as usize, &mut iov as *mut _ as usize) }?;
    Ok(iov.iov_len)
}

/// `PTRACE_SETREGSET` from `buf`.
fn set_regset(tid: Pid, note: u32, buf: &[u8]) -> nix::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the kernel only reads iov_len bytes from `buf`, alive for the
    // call, and reads `iov` from our stack.
    unsafe { req(PTRACE_SETREGSET, tid, note as usize, &mut iov as *mut _ as usize) }.map(drop)
}

/// General purpose registers (`PTRACE_GETREGSET`, `NT_PRSTATUS`).
#[doc(alias = "PTRACE_GETREGS")]
pub fn get_regs(tid: Pid) -> nix::Result<UserRegs> {
    let mut regs = UserRegs::default();
    // SAFETY: UserRegs is repr(C), made only of u64 (no padding, every bit
    // pattern valid), so viewing it as bytes for the kernel to fill is sound.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut((&mut regs as *mut UserRegs).cast::<u8>(), size_of::<UserRegs>()) };
    let n = get_regset(tid, NT_PRSTATUS, bytes)?;
    if n != size_of::<UserRegs>() {
        return Err(Errno::EIO);
    }
    Ok(regs)
}

/// Sets the general purpose registers (`PTRACE_SETREGSET`, `NT_PRSTATUS`).
#[doc(alias = "PTRACE_SETREGS")]
pub fn set_regs(tid: Pid, regs: &UserRegs) -> nix::Result<()> {
    // SAFETY: UserRegs is repr(C) plain u64 fields without padding, so its
    // bytes are initialized and may be read as a byte slice.
    let bytes = unsafe { std::slice::from_raw_parts((regs as *const UserRegs).cast::<u8>(), size_of::<UserRegs>()) };
    set_regset(tid, NT_PRSTATUS, bytes)
}

/// The XSAVE area (`NT_X86_XSTATE`), standard format, as long as the
/// kernel's xstate size (about 2.7 KiB with AVX-512).
pub fn get_xstate(tid: Pid) -> nix::Result<Vec<u8>> {
    let mut size = 4096;
    loop {
        let mut buf = vec![0u8; size];
        let n = get_regset(tid, NT_X86_XSTATE, &mut buf)?;
        // The kernel truncates to our buffer, so a full buffer may mean
        // more was there.
        if n < size || size >= 1 << 20 {
            buf.truncate(n);
            return Ok(buf);
        }
        size *= 2;
    }
}

/// Loads an XSAVE area (`NT_X86_XSTATE`).
pub fn set_xstate(tid: Pid, xstate: &[u8]) -> nix::Result<()> {
    set_regset(tid, NT_X86_XSTATE, xstate)
}

/// The blocked signal mask (`PTRACE_GETSIGMASK`).
#[doc(alias = "PTRACE_GETSIGMASK")]
pub fn get_sigmask(tid: Pid) -> nix::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: addr = sizeof the kernel sigset (8), data = &mask: the kernel
    // writes exactly 8 bytes into our local u64.
    unsafe { req(PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as usize) }?;
    Ok(mask)
}

/// Sets the blocked signal mask (`PTRACE_SETSIGMASK`); SIGKILL and SIGSTOP
/// are dropped by the kernel.
#[doc(alias = "PTRACE_SETSIGMASK")]
pub fn set_sigmask(tid: Pid, mask: u64) -> nix::Result<()> {
    // SAFETY: the kernel reads 8 bytes from &mask, a live local u64.
    unsafe { req(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as usize) }.map(drop)
}

/// The siginfo of the signal the thread is stopped for (`PTRACE_GETSIGINFO`);
/// valid in signal-delivery-stops and for syscall stops (si_code tells).
#[doc(alias = "PTRACE_GETSIGINFO")]
pub fn get_siginfo(tid: Pid) -> nix::Result<SigInfo> {
    let mut info = [0u8; SIGINFO_SIZE];
    // SAFETY: the kernel writes one siginfo (128 bytes) into `info`, a local
    // 128-byte array.
    unsafe { req(PTRACE_GETSIGINFO, tid, 0, info.as_mut_ptr() as usize) }?;
    Ok(info)
}

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Pending signals with their full siginfo, without dequeuing them
/// (`PTRACE_PEEKSIGINFO`): the thread's private queue, or the thread
/// group's shared queue with `shared`.
#[doc(alias = "PTRACE_PEEKSIGINFO")]
pub fn peek_siginfo(tid: Pid, shared: bool) -> nix::Result<Vec<SigInfo>> {
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let mut args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let mut buf = [[0u8; SIGINFO_SIZE]; BATCH];
        // SAFETY: the kernel reads `args` (a live local) and copies out at
        // most args.nr siginfos into `buf`, which has room for exactly that
        // many.
        let n = unsafe {
            req(
                PTRACE_PEEKSIGINFO,
                tid,
                &mut args as *mut _ as usize,
                buf.as_mut_ptr() as usize,
            )
        }? as usize;
        out.extend_from_slice(&buf[..n.min(BATCH)]);
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Default)]
struct RseqConfigRaw {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

/// The thread's rseq registration (`PTRACE_GET_RSEQ_CONFIGURATION`),
/// `None` when it has none.
#[doc(alias = "PTRACE_GET_RSEQ_CONFIGURATION")]
pub fn get_rseq(tid: Pid) -> nix::Result<Option<RseqConfig>> {
    let mut raw = RseqConfigRaw::default();
    // SAFETY: addr = the size of `raw`, data = &raw; the kernel writes at
    // most that many bytes into the live local.
    unsafe {
        req(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            size_of::<RseqConfigRaw>(),
            &mut raw as *mut _ as usize,
        )
    }?;
    if raw.rseq_abi_pointer == 0 {
        return Ok(None);
    }
    Ok(Some(RseqConfig {
        ptr: raw.rseq_abi_pointer,
        len: raw.rseq_abi_size,
        flags: raw.flags,
        sig: raw.signature,
    }))
}

/// Classic BPF program number `idx` of the thread's seccomp filter chain
/// (`PTRACE_SECCOMP_GET_FILTER`; 0 is the most recently installed), as raw
/// `struct sock_filter` bytes (8 per instruction). `None` past the end of
/// the chain (ENOENT) or when the thread is not in filter mode (EINVAL).
/// Needs CAP_SYS_ADMIN.
#[doc(alias = "PTRACE_SECCOMP_GET_FILTER")]
pub fn seccomp_filter(tid: Pid, idx: u64) -> nix::Result<Option<Vec<u8>>> {
    // SAFETY: with a NULL buffer the kernel only returns the instruction
    // count and writes nothing.
    let count = match unsafe { req(PTRACE_SECCOMP_GET_FILTER, tid, idx as usize, 0) } {
        Ok(n) => n as usize,
        Err(Errno::ENOENT | Errno::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; count * 8];
    // SAFETY: `buf` has room for `count` sock_filter entries, the length
    // the kernel just reported for this filter; attached filters are
    // immutable, so the kernel copies exactly that many.
    let n = unsafe { req(PTRACE_SECCOMP_GET_FILTER, tid, idx as usize, buf.as_mut_ptr() as usize) }? as usize;
    buf.truncate(n * 8);
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_status() {
        // Built the way the kernel encodes them.
        let stopped = |sig: i32, event: i32| (event << 16) | (sig << 8) | 0x7f;
        assert_eq!(
            WaitOutcome::from_status(stopped(libc::SIGTRAP, EVENT_STOP)),
            WaitOutcome::Interrupted
        );
        assert_eq!(
            WaitOutcome::from_status(stopped(libc::SIGTSTP, EVENT_STOP)),
            WaitOutcome::GroupStop(libc::SIGTSTP)
        );
        assert_eq!(
            WaitOutcome::from_status(stopped(libc::SIGTRAP | 0x80, 0)),
            WaitOutcome::SyscallStop
        );
        assert_eq!(
            WaitOutcome::from_status(stopped(libc::SIGRTMIN() + 3, 0)),
            WaitOutcome::Signal(libc::SIGRTMIN() + 3)
        );
        assert_eq!(
            WaitOutcome::from_status(stopped(libc::SIGTRAP, libc::PTRACE_EVENT_CLONE)),
            WaitOutcome::Event {
                event: libc::PTRACE_EVENT_CLONE,
                sig: libc::SIGTRAP
            }
        );
        assert_eq!(WaitOutcome::from_status(3 << 8), WaitOutcome::Exited(3));
        assert_eq!(
            WaitOutcome::from_status(libc::SIGKILL),
            WaitOutcome::Killed {
                sig: libc::SIGKILL,
                core: false
            }
        );
        assert!(WaitOutcome::from_status(0).is_gone());
    }
}

/// What `PTRACE_GET_SYSCALL_INFO` says about a syscall stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallInfo {
    /// Not at a syscall stop.
    None,
    /// Syscall-entry stop with the syscall number and stack pointer.
    Entry {
        nr: u64,
        sp: u64,
    },
    /// Syscall-exit stop with the return value.
    Exit {
        rval: i64,
    },
    Other,
}

/// `ptrace(PTRACE_GET_SYSCALL_INFO, tid, size, &info)`—Which syscall stop
/// a thread is in (Linux 5.3).
#[doc(alias = "PTRACE_GET_SYSCALL_INFO")]
pub fn syscall_info(tid: Pid) -> nix::Result<SyscallInfo> {
    // struct ptrace_syscall_info: op u8, pad[3], arch u32, ip u64, sp u64,
    // then the union (entry: nr u64 + args; exit: rval s64 + is_error u8).
    let mut buf = [0u64; 11];
    // SAFETY: `buf` is a writable 88-byte buffer and its size is passed as
    // `addr`, so the kernel writes at most that many bytes.
    unsafe { req(0x420e, tid, std::mem::size_of_val(&buf), buf.as_mut_ptr() as usize) }?;
    let op = (buf[0] & 0xff) as u8;
    Ok(match op {
        0 => SyscallInfo::None,
        1 => SyscallInfo::Entry { nr: buf[3], sp: buf[2] },
        2 => SyscallInfo::Exit { rval: buf[3] as i64 },
        _ => SyscallInfo::Other,
    })
}

/// `ptrace(PTRACE_SYSCALL, tid, 0, sig)`—Resumes to the next syscall stop,
/// delivering `sig` (0 for none).
pub fn syscall_step_sig(tid: Pid, sig: i32) -> nix::Result<()> {
    req_plain(libc::PTRACE_SYSCALL, tid, 0, sig as usize)
}

/// Like [`wait_stop`] but without blocking: `None` while `tid` has nothing
/// to report.
pub fn try_wait_stop(tid: Pid) -> nix::Result<Option<WaitOutcome>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int for the whole call.
        let ret = unsafe { libc::waitpid(tid.as_raw(), &mut status, libc::__WALL | libc::WNOHANG) };
        match Errno::result(ret) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(WaitOutcome::from_status(status))),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
