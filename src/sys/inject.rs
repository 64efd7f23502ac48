//! Running syscalls inside a stopped thread (ptrace syscall injection).
//!
//! The thread's registers are pointed at a `syscall` instruction that
//! already exists in its `[vdso]` (found by scanning for `0f 05`), with the
//! syscall number and arguments loaded. The thread is then resumed with
//! `PTRACE_SYSCALL` twice (entry stop, exit stop) and `rax` holds the result.
//! Nothing is written into the task's code. (If the task has no vdso, the
//! first two bytes of an executable VMA are patched through `/proc/T/mem`
//! and put back afterwards.)
//!
//! Why syscall stops and not `PTRACE_SINGLESTEP`: a single-step trap is a
//! forced SIGTRAP, and forcing a blocked or ignored SIGTRAP resets the
//! task's SIGTRAP disposition to SIG_DFL.
//!
//! While injecting, all signals are blocked in the thread
//! (`PTRACE_SETSIGMASK`), so no pending signal is dequeued and no handler
//! runs. When done, the thread is *parked* in an interrupt stop
//! (`PTRACE_INTERRUPT` + `PTRACE_CONT` from the last syscall-exit stop: it
//! stops in the kernel's signal path before reaching user mode), and only
//! then are the saved registers and mask put back. That stop is where the
//! kernel applies the syscall restart logic when the thread resumes, so a
//! thread that was interrupted in a restartable syscall (`orig_ax >= 0`,
//! `ax = -ERESTART*`) restarts it as if nothing happened.
//!
//! Signal mask subtlety: a thread stopped inside `sigsuspend`, `ppoll`,
//! `pselect6` or `epoll_pwait` runs with a temporary mask, and the kernel
//! would put the original one back when the thread leaves the stop.
//! `PTRACE_GETSIGMASK` reports that original mask in this state and
//! `PTRACE_SETSIGMASK` cancels the pending switch, so saving the mask first
//! and setting it back last leaves the thread with its original mask; the
//! restarted syscall installs its temporary mask again.
//!
//! A signal-delivery-stop the thread was in before injection is replaced by
//! the final interrupt stop: a signal meant to be passed on with
//! `detach(tid, sig)` must be re-queued by other means.
//!
//! Caveats for callers:
//! * Injected syscalls pass through the thread's seccomp filters unless the
//!   thread was seized with [`super::ptrace::OPT_SUSPEND_SECCOMP`].
//! * Executing the `syscall` instruction returns to user mode once, at the
//!   vdso address; if the thread had an rseq critical section armed
//!   (`rseq_cs` set) the kernel clears it then. A thread stopped *inside* a
//!   critical section must get the rseq abort fixup (ip := abort_ip) before
//!   injection.
//! * Other threads of the process should be stopped too, and memory should
//!   not be copied while a fallback code patch is in place.
#![allow(unsafe_code)]

use std::collections::hash_map::DefaultHasher;
use std::fs::OpenOptions;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::ptrace::{self, SigInfo, UserRegs, WaitOutcome};
use super::vm;
use crate::proc::maps::Vma;

/// Bytes of scratch memory available at [`Injector::scratch`].
pub const SCRATCH_SIZE: usize = 4096;

/// x86_64 red zone below the stack pointer that leaf code may use.
const RED_ZONE: u64 = 128;

/// The `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Errors of syscall injection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Ptrace {op} failed on tid {tid}")]
    Ptrace {
        tid: i32,
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error("No syscall instruction available in tid {tid}")]
    NoSyscallInsn { tid: i32 },
    #[error("Tid {tid} stopped unexpectedly during injection: {outcome:?}")]
    UnexpectedStop { tid: i32, outcome: WaitOutcome },
    #[error("Remote memory access at {addr:#x} (+{len}) failed in tid {tid}")]
    Memory {
        tid: i32,
        addr: u64,
        len: usize,
        #[source]
        source: Errno,
    },
    #[error("Injected syscall {nr} failed in tid {tid}")]
    Syscall {
        tid: i32,
        nr: i64,
        #[source]
        source: Errno,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Offsets of a `syscall` instruction per vdso content (hash, length).
static VDSO_CACHE: Mutex<Vec<(u64, usize, u64)>> = Mutex::new(Vec::new());

/// A code patch to undo: the address and the original bytes.
#[derive(Debug, Clone, Copy)]
struct Patch {
    addr: u64,
    orig: [u8; 2],
}

/// A stopped thread set up for syscall injection. Restores the thread's
/// registers and mask on [`Injector::restore`], or on drop.
#[derive(Debug)]
pub struct Injector {
    pub tid: Pid,
    /// Address of the `syscall` instruction used.
    pub syscall_ip: u64,
    /// The registers as found (restart state included).
    pub saved: UserRegs,
    saved_mask: u64,
    /// Signals are blocked in the thread.
    blocked: bool,
    /// The thread has been resumed at least once.
    ran: bool,
    patch: Option<Patch>,
    intercepted: Vec<SigInfo>,
    done: bool,
}

fn ptrace_err(tid: Pid, op: &'static str) -> impl FnOnce(Errno) -> Error {
    move |source| Error::Ptrace {
        tid: tid.as_raw(),
        op,
        source,
    }
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// Offset of the first `0f 05` in `code`.
fn find_syscall(code: &[u8]) -> Option<u64> {
    code.windows(2).position(|w| w == SYSCALL_INSN).map(|p| p as u64)
}

impl Injector {
    /// Prepares injection into `tid`, which must be in a ptrace stop.
    /// `maps` are the VMAs of its process (to find `[vdso]`).
    pub fn new(tid: Pid, maps: &[Vma]) -> Result<Injector> {
        let saved = ptrace::get_regs(tid).map_err(ptrace_err(tid, "GETREGSET"))?;
        let saved_mask = ptrace::get_sigmask(tid).map_err(ptrace_err(tid, "GETSIGMASK"))?;
        let mut patch = None;
        let syscall_ip = match Self::vdso_syscall(tid, maps)? {
            Some(ip) => ip,
            None => {
                let p = Self::patch_text(tid, maps)?;
                patch = Some(p);
                p.addr
            }
        };
        Ok(Injector {
            tid,
            syscall_ip,
            saved,
            saved_mask,
            blocked: false,
            ran: false,
            patch,
            intercepted: Vec::new(),
            done: false,
        })
    }

    /// Finds a `syscall` instruction in the thread's vdso.
    fn vdso_syscall(tid: Pid, maps: &[Vma]) -> Result<Option<u64>> {
        let Some(vdso) = maps.iter().find(|v| v.is_vdso()) else {
            return Ok(None);
        };
        let len = vdso.len() as usize;
        let mut code = vec![0u8; len];
        let n = vm::read_remote(tid, &[(vdso.start, len)], &mut code).map_err(|source| Error::Memory {
            tid: tid.as_raw(),
            addr: vdso.start,
            len,
            source,
        })?;
        if n != len {
            return Ok(None);
        }
        let key = hash_bytes(&code);
        let mut cache = VDSO_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(_, _, off)) = cache.iter().find(|(h, l, _)| *h == key && *l == len) {
            return Ok(Some(vdso.start + off));
        }
        let Some(off) = find_syscall(&code) else {
            return Ok(None);
        };
        cache.push((key, len, off));
        Ok(Some(vdso.start + off))
    }

    /// Fallback without a vdso: writes `syscall` over the first two bytes
    /// of an executable VMA (through /proc/T/mem, which can write
    /// read-only text).
    fn patch_text(tid: Pid, maps: &[Vma]) -> Result<Patch> {
        let vma = maps
            .iter()
            .find(|v| v.executable() && !v.is_vsyscall() && !v.is_vdso() && v.len() >= 2)
            .ok_or(Error::NoSyscallInsn { tid: tid.as_raw() })?;
        let mem_err = |e: std::io::Error| Error::Memory {
            tid: tid.as_raw(),
            addr: vma.start,
            len: 2,
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{tid}/mem"))
            .map_err(mem_err)?;
        let mut orig = [0u8; 2];
        mem.read_exact_at(&mut orig, vma.start).map_err(mem_err)?;
        mem.write_all_at(&SYSCALL_INSN, vma.start).map_err(mem_err)?;
        Ok(Patch { addr: vma.start, orig })
    }

    fn unpatch(&mut self) -> Result<()> {
        let Some(p) = self.patch.take() else {
            return Ok(());
        };
        let tid = self.tid;
        let mem_err = |e: std::io::Error| Error::Memory {
            tid: tid.as_raw(),
            addr: p.addr,
            len: 2,
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        let mem = OpenOptions::new()
            .write(true)
            .open(format!("/proc/{tid}/mem"))
            .map_err(mem_err)?;
        mem.write_all_at(&p.orig, p.addr).map_err(mem_err)
    }

    /// Blocks every signal in the thread (once).
    fn block_signals(&mut self) -> Result<()> {
        if !self.blocked {
            let tid = self.tid;
            ptrace::set_sigmask(tid, u64::MAX).map_err(ptrace_err(tid, "SETSIGMASK"))?;
            self.blocked = true;
        }
        Ok(())
    }

    /// Resumes to the next syscall stop. Signal-delivery-stops on the way
    /// (possible only for signals that cannot be blocked) are recorded and
    /// suppressed; pending job-control traps (a second PTRACE_INTERRUPT, a
    /// re-trapped group stop) are stepped over: the thread has not run any
    /// user code at that point.
    fn step_to_syscall_stop(&mut self) -> Result<()> {
        let tid = self.tid;
        for _ in 0..64 {
            ptrace::syscall_step(tid).map_err(ptrace_err(tid, "SYSCALL"))?;
            self.ran = true;
            let outcome = ptrace::wait_stop(tid).map_err(ptrace_err(tid, "waitpid"))?;
            match outcome {
                WaitOutcome::SyscallStop | WaitOutcome::Signal(libc::SIGTRAP) => return Ok(()),
                WaitOutcome::Interrupted | WaitOutcome::GroupStop(_) => {}
                WaitOutcome::Signal(_) => {
                    let info = ptrace::get_siginfo(tid).map_err(ptrace_err(tid, "GETSIGINFO"))?;
                    self.intercepted.push(info);
                }
                other => {
                    return Err(Error::UnexpectedStop {
                        tid: tid.as_raw(),
                        outcome: other,
                    })
                }
            }
        }
        Err(Error::UnexpectedStop {
            tid: tid.as_raw(),
            outcome: WaitOutcome::Signal(0),
        })
    }

    /// Runs syscall `nr` with `args` (rdi, rsi, rdx, r10, r8, r9) in the
    /// thread and returns the raw result (`-errno` on failure).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let tid = self.tid;
        self.block_signals()?;
        let regs = UserRegs {
            ax: nr as u64,
            di: args[0],
            si: args[1],
            dx: args[2],
            r10: args[3],
            r8: args[4],
            r9: args[5],
            ip: self.syscall_ip,
            // No restart fixup when the current stop ends.
            orig_ax: u64::MAX,
            ..self.saved
        };
        ptrace::set_regs(tid, &regs).map_err(ptrace_err(tid, "SETREGSET"))?;
        self.step_to_syscall_stop()?; // entry
        self.step_to_syscall_stop()?; // exit
        let out = ptrace::get_regs(tid).map_err(ptrace_err(tid, "GETREGSET"))?;
        if out.ip != self.syscall_ip + 2 {
            return Err(Error::UnexpectedStop {
                tid: tid.as_raw(),
                outcome: WaitOutcome::SyscallStop,
            });
        }
        Ok(out.ax as i64)
    }

    /// [`Injector::syscall`], turning `-errno` results into
    /// [`Error::Syscall`].
    pub fn syscall_ok(&mut self, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::Syscall {
                tid: self.tid.as_raw(),
                nr,
                source: Errno::from_raw(-r as i32),
            });
        }
        Ok(r as u64)
    }

    /// Maps `len` bytes of private anonymous read-write memory in the
    /// thread's process (for scratch larger than [`SCRATCH_SIZE`]); undo
    /// with [`Injector::munmap`].
    pub fn mmap(&mut self, len: u64) -> Result<u64> {
        self.syscall_ok(
            libc::SYS_mmap,
            [
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX, // fd -1
                0,
            ],
        )
    }

    /// Unmaps `[addr, addr + len)` in the thread's process.
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.syscall_ok(libc::SYS_munmap, [addr, len, 0, 0, 0, 0]).map(drop)
    }

    /// Start of [`SCRATCH_SIZE`] bytes of the thread's stack below the red
    /// zone, 16-byte aligned, free for output structs. Valid until restore.
    pub fn scratch(&self) -> u64 {
        (self.saved.sp - RED_ZONE - SCRATCH_SIZE as u64) & !15
    }

    /// Writes `data` at `addr` in the thread's address space.
    pub fn write_mem(&self, addr: u64, data: &[u8]) -> Result<()> {
        let err = |source| Error::Memory {
            tid: self.tid.as_raw(),
            addr,
            len: data.len(),
            source,
        };
        let n = vm::write_remote(self.tid, &[(addr, data.len())], data).map_err(err)?;
        if n != data.len() {
            return Err(err(Errno::EFAULT));
        }
        Ok(())
    }

    /// Reads `len` bytes at `addr` from the thread's address space.
    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let err = |source| Error::Memory {
            tid: self.tid.as_raw(),
            addr,
            len,
            source,
        };
        let mut buf = vec![0u8; len];
        let n = vm::read_remote(self.tid, &[(addr, len)], &mut buf).map_err(err)?;
        if n != len {
            return Err(err(Errno::EFAULT));
        }
        Ok(buf)
    }

    /// Signals dequeued (and suppressed) while injecting, as raw siginfo.
    /// Normally empty; see the module doc.
    pub fn intercepted(&self) -> &[SigInfo] {
        &self.intercepted
    }

    /// The signal mask the thread will have once restored (as
    /// `PTRACE_GETSIGMASK` reported it before injection).
    pub fn final_sigmask(&self) -> u64 {
        self.saved_mask
    }

    fn do_restore(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let tid = self.tid;
        if self.ran {
            // Park in an interrupt stop inside the kernel's signal path,
            // without returning to user mode.
            ptrace::interrupt(tid).map_err(ptrace_err(tid, "INTERRUPT"))?;
            ptrace::cont(tid, 0).map_err(ptrace_err(tid, "CONT"))?;
            loop {
                match ptrace::wait_stop(tid).map_err(ptrace_err(tid, "waitpid"))? {
                    WaitOutcome::Interrupted | WaitOutcome::GroupStop(_) => break,
                    WaitOutcome::Signal(_) => {
                        // Only unblockable signals can get here.
                        let info = ptrace::get_siginfo(tid).map_err(ptrace_err(tid, "GETSIGINFO"))?;
                        self.intercepted.push(info);
                        ptrace::cont(tid, 0).map_err(ptrace_err(tid, "CONT"))?;
                    }
                    other => {
                        return Err(Error::UnexpectedStop {
                            tid: tid.as_raw(),
                            outcome: other,
                        })
                    }
                }
            }
        }
        ptrace::set_regs(tid, &self.saved).map_err(ptrace_err(tid, "SETREGSET"))?;
        if self.blocked {
            ptrace::set_sigmask(tid, self.saved_mask).map_err(ptrace_err(tid, "SETSIGMASK"))?;
        }
        self.unpatch()
    }

    /// Puts the thread back as found: registers (with any syscall restart
    /// state), signal mask, code patch. The thread stays stopped.
    pub fn restore(mut self) -> Result<()> {
        self.do_restore()
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.do_restore() {
                tracing::warn!(tid = self.tid.as_raw(), "Failed to restore injected thread: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_scan() {
        assert_eq!(find_syscall(&[0x90, 0x0f, 0x0f, 0x05, 0xc3]), Some(2));
        assert_eq!(find_syscall(&[0x05, 0x0f]), None);
    }
}
