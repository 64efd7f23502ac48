//! The restorer blob: the last code that runs in a restored task before it
//! returns into its saved registers.
//!
//! Built by the engine's `build.rs` as a flat, relocation-free image (see
//! kernel-mechanics.md section 9). The engine maps it, fills an
//! [`abi::Args`] block next to it, switches to the blob's own stack and
//! calls [`blob_entry`] with `rdi = &Args`. The steps it performs, in order,
//! are documented in `abi.rs`.
//!
//! Constraints that shape this file:
//! * no crates, only `core`, no libc: every kernel call is a raw `syscall`;
//! * nothing may need a relocation: no statics holding pointers, no
//!   `&str` tables, no formatting, and no code path that can panic with a
//!   `panic::Location` (so no slice indexing; raw pointer reads instead);
//! * after step 2 only the kept ranges exist, so the blob touches nothing
//!   but its own image, its stack, `Args` and what `Args` points to.
#![no_std]
#![no_main]
#![allow(unsafe_code)]

use core::arch::asm;
use core::mem::size_of;

#[allow(dead_code)]
#[path = "abi.rs"]
mod abi;

use abi::{step, Args, Creds, Report, SeccompFilter, ThreadState, ARGS_MAGIC, ARGS_VERSION, EXIT_BLOB_FAILED, THREAD_STACK};

// ---------------------------------------------------------------------------
// Raw syscalls (x86_64: number in rax, args in rdi rsi rdx r10 r8 r9; the
// instruction clobbers rcx and r11).

mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const MADVISE: usize = 28;
    pub const MREMAP: usize = 25;
    pub const MUNMAP: usize = 11;
    pub const RT_SIGACTION: usize = 13;
    pub const GETPID: usize = 39;
    pub const SETITIMER: usize = 38;
    pub const SETRESUID: usize = 117;
    pub const SETRESGID: usize = 119;
    pub const SETGROUPS: usize = 116;
    pub const SETFSUID: usize = 122;
    pub const SETFSGID: usize = 123;
    pub const CAPSET: usize = 126;
    pub const RT_SIGQUEUEINFO: usize = 129;
    pub const PRCTL: usize = 157;
    pub const ARCH_PRCTL: usize = 158;
    pub const GETTID: usize = 186;
    pub const SET_TID_ADDRESS: usize = 218;
    pub const EXIT_GROUP: usize = 231;
    pub const SET_ROBUST_LIST: usize = 273;
    pub const RT_TGSIGQUEUEINFO: usize = 297;
    pub const RSEQ: usize = 334;
    pub const CLONE3: usize = 435;
    pub const SECCOMP: usize = 317;
    pub const USERFAULTFD: usize = 323;
    pub const TIMER_CREATE: usize = 222;
    pub const TIMER_SETTIME: usize = 223;
}

#[inline(always)]
unsafe fn syscall0(n: usize) -> isize {
    let ret: isize;
    // SAFETY: a raw syscall with no pointer arguments; the caller vouches
    // for the call itself.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
unsafe fn syscall1(n: usize, a1: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
unsafe fn syscall2(n: usize, a1: usize, a2: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
unsafe fn syscall3(n: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
unsafe fn syscall4(n: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[inline(always)]
unsafe fn syscall5(n: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, in("r8") a5,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[allow(dead_code)]
#[inline(always)]
unsafe fn syscall6(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: exit_group takes no pointers and does not return.
        unsafe { syscall1(nr::EXIT_GROUP, code as usize) };
    }
}

// ---------------------------------------------------------------------------
// The memory functions LLVM may call. `rep movsb`/`rep stosb` keep LLVM from
// recognising the loops and turning them back into calls to themselves.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both buffers are valid for `n` bytes and
    // do not overlap; the direction flag is clear per the SysV ABI.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dst is below src or the
        // buffers do not overlap; validity is the caller's contract.
        unsafe { memcpy(dst, src, n) };
    } else if n != 0 {
        // SAFETY: backwards copy for dst inside (src, src+n): start at the
        // last byte of each buffer with the direction flag set, then clear it
        // again as the ABI requires.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _,
                 inout("rdi") dst.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dst` is valid for `n` bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both buffers hold `n` bytes. The
        // volatile reads keep LLVM from recognising a memcmp idiom here.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit_group(127)
}

// ---------------------------------------------------------------------------
// Constants (include/uapi/linux/*.h, arch/x86/include/uapi/asm/prctl.h).

const TASK_TOP: u64 = 0x7fff_ffff_f000;
const MREMAP_MAYMOVE: usize = 1;
const MREMAP_FIXED: usize = 2;
const ARCH_SET_GS: usize = 0x1001;
const ARCH_SET_FS: usize = 0x1002;
const ARCH_MAP_VDSO_64: usize = 0x2003;
const PR_SET_MM: usize = 35;
const PR_SET_MM_MAP: usize = 14;
const PR_GET_SECUREBITS: usize = 27;
const PR_SET_SECUREBITS: usize = 28;
const PR_CAPBSET_DROP: usize = 24;
const PR_SET_NO_NEW_PRIVS: usize = 38;
const PR_CAP_AMBIENT: usize = 47;
const PR_CAP_AMBIENT_RAISE: usize = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: usize = 4;
const SECBIT_NO_SETUID_FIXUP: usize = 1 << 2;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_ADMIN: u32 = 21;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const RSEQ_FLAG_UNREGISTER: usize = 1;
const SIGKILL: usize = 9;
const SIGSTOP: usize = 19;
const EINVAL: i32 = 22;
const EINTR: isize = 4;
/// `sizeof(struct robust_list_head)`: set_robust_list insists on it even
/// when clearing the list with a NULL head.
const ROBUST_LIST_HEAD_LEN: usize = 24;
const PR_SET_NAME: usize = 15;
/// Threads share everything a POSIX thread shares.
const CLONE_THREAD_FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000; // VM FS FILES SIGHAND THREAD SYSVSEM

/// The kernel's `struct clone_args` (up to set_tid_size).
#[repr(C)]
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
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

// ---------------------------------------------------------------------------

struct Blob<'a> {
    a: &'a Args,
}

impl Blob<'_> {
    /// Reports `step` with `errno` on `ready_fd` and exits.
    fn fail(&self, step: u32, errno: i32) -> ! {
        let r = Report { step, errno };
        // SAFETY: `r` is a live 8-byte value; a bad fd only makes write fail.
        unsafe {
            syscall3(
                nr::WRITE,
                self.a.ready_fd as usize,
                &r as *const Report as usize,
                size_of::<Report>(),
            )
        };
        exit_group(EXIT_BLOB_FAILED)
    }

    /// Passes a syscall result through, failing `step` on an error value.
    fn check(&self, ret: isize, step: u32) -> usize {
        if (-4095..0).contains(&ret) {
            self.fail(step, -ret as i32);
        }
        ret as usize
    }

    /// Step 1.
    fn unregister_engine_rseq(&self) {
        let r = &self.a.engine_rseq;
        if r.ptr == 0 {
            return;
        }
        // SAFETY: unregistering only compares the arguments with the
        // current registration; nothing is written on failure.
        let ret = unsafe {
            syscall4(
                nr::RSEQ,
                r.ptr as usize,
                r.len as usize,
                RSEQ_FLAG_UNREGISTER,
                r.sig as usize,
            )
        };
        self.check(ret, step::RSEQ_UNREGISTER);
    }

    /// Step 2: unmap the complement of the sorted `keep` ranges.
    fn unmap_rest(&self) {
        let mut cur: u64 = 0;
        for i in 0..self.a.nr_keep {
            // SAFETY: the engine placed `nr_keep` ranges at `keep`, inside
            // the blob area, which is itself in `keep`.
            let r = unsafe { (self.a.keep as *const abi::Range).add(i as usize).read() };
            if r.start < cur || r.end < r.start || r.end > TASK_TOP {
                self.fail(step::UNMAP, EINVAL);
            }
            if r.start > cur {
                self.munmap(cur, r.start - cur);
            }
            cur = r.end;
        }
        if cur < TASK_TOP {
            self.munmap(cur, TASK_TOP - cur);
        }
    }

    fn munmap(&self, start: u64, len: u64) {
        // SAFETY: the range lies outside every kept range, so nothing this
        // code still uses is unmapped.
        let ret = unsafe { syscall2(nr::MUNMAP, start as usize, len as usize) };
        self.check(ret, step::UNMAP);
    }

    /// Step 3.
    fn place_vmas(&self) {
        for i in 0..self.a.nr_moves {
            // SAFETY: `nr_moves` entries at `moves`, inside the blob area.
            let m = unsafe { (self.a.moves as *const abi::VmaMove).add(i as usize).read() };
            // SAFETY: moving page tables; the destination is never a kept
            // range (the engine's layout guarantees it).
            let ret = unsafe {
                syscall5(
                    nr::MREMAP,
                    m.src as usize,
                    m.len as usize,
                    m.len as usize,
                    MREMAP_MAYMOVE | MREMAP_FIXED,
                    m.dst as usize,
                )
            };
            self.check(ret, step::MREMAP);
        }
        for i in 0..self.a.nr_madvs {
            // SAFETY: `nr_madvs` entries at `madvs`, inside the blob area.
            let m = unsafe { (self.a.madvs as *const abi::Madvise).add(i as usize).read() };
            // SAFETY: advice on restored memory; no memory of ours changes.
            let ret = unsafe {
                syscall3(
                    nr::MADVISE,
                    m.addr as usize,
                    m.len as usize,
                    m.advice as usize,
                )
            };
            // MADV_COLLAPSE (25) is best effort: khugepaged may still
            // collapse later; anything else must work.
            if m.advice != 25 {
                self.check(ret, step::MADVISE);
            }
        }
    }

    /// Step 4. The engine's vdso went away in step 2.
    fn map_vdso(&self) {
        if self.a.vdso_vvar_start == 0 {
            return;
        }
        // SAFETY: maps the vdso block at an address the engine chose to be
        // free; the kernel returns the vdso size (positive) on success.
        let ret = unsafe {
            syscall2(
                nr::ARCH_PRCTL,
                ARCH_MAP_VDSO_64,
                self.a.vdso_vvar_start as usize,
            )
        };
        self.check(ret, step::VDSO);
    }

    /// Step 5.
    fn set_mm(&self) {
        let mut map = self.a.mm;
        map.auxv = self.a.auxv;
        map.auxv_size = (self.a.nr_auxv * 8) as u32;
        // -1 becomes (u32)-1, which the kernel reads as "leave the exe link".
        map.exe_fd = self.a.exe_fd as u32;
        // SAFETY: `map` is a complete prctl_mm_map on our stack and its
        // auxv pointer covers `nr_auxv` words inside the blob area.
        let ret = unsafe {
            syscall5(
                nr::PRCTL,
                PR_SET_MM,
                PR_SET_MM_MAP,
                &map as *const abi::PrctlMmMap as usize,
                size_of::<abi::PrctlMmMap>(),
                0,
            )
        };
        self.check(ret, step::MM_MAP);
        if self.a.exe_fd >= 0 {
            // SAFETY: closing an fd the engine handed over for this purpose.
            unsafe { syscall1(nr::CLOSE, self.a.exe_fd as usize) };
        }
    }

    /// Step 6.
    fn set_signals_and_timers(&self) {
        for sig in 1..=64usize {
            if self.a.sigaction_mask & (1 << (sig - 1)) == 0 || sig == SIGKILL || sig == SIGSTOP {
                continue;
            }
            // Pointer arithmetic instead of indexing: no bounds-check panic
            // path (its Location would need a relocation). 1 <= sig <= 64.
            let act = self.a.sigactions.as_ptr().wrapping_add(sig - 1);
            // SAFETY: `act` is a kernel `struct sigaction` inside Args; no
            // old action is requested.
            let ret = unsafe { syscall4(nr::RT_SIGACTION, sig, act as usize, 0, 8) };
            self.check(ret, step::SIGACTION);
        }
        for (which, it) in self.a.itimers.iter().enumerate() {
            // SAFETY: `it` is a `struct itimerval` inside Args.
            let ret = unsafe {
                syscall3(
                    nr::SETITIMER,
                    which,
                    it as *const abi::ItimerVal as usize,
                    0,
                )
            };
            self.check(ret, step::ITIMER);
        }
    }

    /// Step 7. clear_child_tid and the robust list are always set, to NULL
    /// if not wanted: the engine's values point into its own (gone) TLS.
    fn set_thread(&self, t: &ThreadState) {
        // SAFETY: only records the address; never fails.
        unsafe { syscall1(nr::SET_TID_ADDRESS, t.clear_tid_addr as usize) };
        let len = if t.robust_list == 0 {
            ROBUST_LIST_HEAD_LEN
        } else {
            t.robust_len as usize
        };
        // SAFETY: only records the address for use at exit.
        let ret = unsafe { syscall2(nr::SET_ROBUST_LIST, t.robust_list as usize, len) };
        self.check(ret, step::THREAD);
        if t.rseq_ptr != 0 {
            // SAFETY: registers the restored rseq area, which the moves of
            // step 3 put in place; the kernel validates it.
            let ret = unsafe {
                syscall4(
                    nr::RSEQ,
                    t.rseq_ptr as usize,
                    t.rseq_len as usize,
                    0,
                    t.rseq_sig as usize,
                )
            };
            self.check(ret, step::THREAD);
        }
        if t.comm[0] != 0 {
            // SAFETY: `comm` is 16 bytes inside the kept Args/threads area;
            // the kernel copies at most 16 bytes.
            let ret = unsafe { syscall2(nr::PRCTL, PR_SET_NAME, t.comm.as_ptr() as usize) };
            self.check(ret, step::THREAD);
        }
    }

    /// Step 7: the other threads, with their old tids, each on its own
    /// stack. A new thread starts in `thread_entry` with its index.
    fn clone_threads(&self) {
        for i in 0..self.a.nr_threads {
            // SAFETY: `nr_threads` ThreadStates at `threads`, inside the area.
            let t = unsafe { &*(self.a.threads as *const ThreadState).add(i as usize) };
            let tid: i32 = t.tid as i32;
            let ca = CloneArgs {
                flags: CLONE_THREAD_FLAGS,
                pidfd: 0,
                child_tid: 0,
                parent_tid: 0,
                exit_signal: 0,
                stack: t.stack_top - THREAD_STACK,
                stack_size: THREAD_STACK,
                tls: 0,
                set_tid: &tid as *const i32 as u64,
                set_tid_size: 1,
            };
            let ret: isize;
            // SAFETY: clone3 with a stack inside the blob area that nothing
            // else uses. The child starts after `syscall` with rax = 0, its
            // own rsp and every other register as the parent had them: r12
            // holds the Args pointer and r13 the index, which it passes to
            // `thread_entry` (never returns). The parent continues with the
            // new tid in rax.
            unsafe {
                asm!(
                    "syscall",
                    "test rax, rax",
                    "jnz 2f",
                    "mov rdi, r12",
                    "mov rsi, r13",
                    "and rsp, -16",
                    "call {entry}",
                    "ud2",
                    "2:",
                    entry = sym thread_entry,
                    inlateout("rax") nr::CLONE3 as isize => ret,
                    in("rdi") &ca as *const CloneArgs as usize,
                    in("rsi") size_of::<CloneArgs>(),
                    in("r12") self.a as *const Args as usize,
                    in("r13") i as usize,
                    lateout("rcx") _, lateout("r11") _,
                );
            }
            self.check(ret, step::CLONE);
        }
    }

    /// Steps 8 to 12 for an extra thread.
    fn run_thread(&self, i: u64) -> ! {
        // SAFETY: `i < nr_threads`, checked by the creator loop.
        let t = unsafe { &*(self.a.threads as *const ThreadState).add(i as usize) };
        self.set_thread(t);
        self.set_creds();
        // The process's filters are installed by the main thread (TSYNC).
        self.finish_creds_after_seccomp();
        self.sync_with_engine();
        self.queue_signals(false);
        self.sigreturn(t)
    }

    fn prctl(&self, opt: usize, a2: usize, a3: usize) {
        // SAFETY: the prctl options used here take integer arguments only.
        let ret = unsafe { syscall5(nr::PRCTL, opt, a2, a3, 0, 0) };
        self.check(ret, step::CREDS);
    }

    fn capset(&self, eff: [u32; 2], prm: [u32; 2], inh: [u32; 2]) {
        let hdr = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: eff[0],
                permitted: prm[0],
                inheritable: inh[0],
            },
            CapData {
                effective: eff[1],
                permitted: prm[1],
                inheritable: inh[1],
            },
        ];
        // SAFETY: v3 header plus two data words, all on our stack.
        let ret = unsafe {
            syscall2(
                nr::CAPSET,
                &hdr as *const CapHeader as usize,
                data.as_ptr() as usize,
            )
        };
        self.check(ret, step::CREDS);
    }

    /// Step 8. The order matters because each call needs privileges a
    /// later one may drop:
    ///  1. securebits |= NO_SETUID_FIXUP, so the uid switch keeps the caps;
    ///  2. groups, gids, uids, fsgid, fsuid (need CAP_SETGID/CAP_SETUID);
    ///  3. drop the bounding set (needs CAP_SETPCAP);
    ///  4. capset with the target inheritable set and the target permitted
    ///     set plus CAP_SETPCAP (effective = that permitted set);
    ///  5. ambient set: clear, then raise (needs the cap in permitted and
    ///     inheritable, and must precede SECBIT_NO_CAP_AMBIENT_RAISE);
    ///  6. final securebits (needs CAP_SETPCAP, still effective);
    ///  7. capset with the target sets;
    ///  8. no_new_privs.
    fn set_creds(&self) {
        let c: &Creds = &self.a.creds;
        if c.skip != 0 {
            return;
        }
        // SAFETY: PR_GET_SECUREBITS takes no pointers.
        let cur = unsafe { syscall5(nr::PRCTL, PR_GET_SECUREBITS, 0, 0, 0, 0) };
        let cur = self.check(cur, step::CREDS);
        self.prctl(PR_SET_SECUREBITS, cur | SECBIT_NO_SETUID_FIXUP, 0);

        // SAFETY: `groups` points at `ngroups` u32 inside the blob area.
        let ret = unsafe { syscall2(nr::SETGROUPS, c.ngroups as usize, c.groups as usize) };
        self.check(ret, step::CREDS);
        // SAFETY: integer arguments only.
        let ret = unsafe {
            syscall3(
                nr::SETRESGID,
                c.gid as usize,
                c.egid as usize,
                c.sgid as usize,
            )
        };
        self.check(ret, step::CREDS);
        // SAFETY: integer arguments only.
        let ret = unsafe {
            syscall3(
                nr::SETRESUID,
                c.uid as usize,
                c.euid as usize,
                c.suid as usize,
            )
        };
        self.check(ret, step::CREDS);
        // setfs[ug]id return the previous id and never an error: ask again
        // with an invalid id (no change) to learn whether it took.
        // SAFETY: integer arguments only.
        unsafe { syscall1(nr::SETFSGID, c.fsgid as usize) };
        // SAFETY: integer arguments only.
        if unsafe { syscall1(nr::SETFSGID, u32::MAX as usize) } as u32 != c.fsgid {
            self.fail(step::CREDS, 1);
        }
        // SAFETY: integer arguments only.
        unsafe { syscall1(nr::SETFSUID, c.fsuid as usize) };
        // SAFETY: integer arguments only.
        if unsafe { syscall1(nr::SETFSUID, u32::MAX as usize) } as u32 != c.fsuid {
            self.fail(step::CREDS, 1);
        }

        let has = |set: [u32; 2], cap: u32| {
            let word = if cap < 32 { set[0] } else { set[1] };
            word & (1 << (cap % 32)) != 0
        };
        let mut cap = 0;
        while cap <= c.cap_last_cap && cap < 64 {
            if !has(c.cap_bnd, cap) {
                self.prctl(PR_CAPBSET_DROP, cap as usize, 0);
            }
            cap += 1;
        }

        let mut prm = c.cap_prm;
        prm[0] |= 1 << CAP_SETPCAP;
        let admin = self.seccomp_needs_admin();
        if admin {
            prm[0] |= 1 << CAP_SYS_ADMIN;
        }
        self.capset(prm, prm, c.cap_inh);

        self.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0);
        let mut cap = 0;
        while cap < 64 {
            if has(c.cap_amb, cap) {
                self.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap as usize);
            }
            cap += 1;
        }

        self.prctl(PR_SET_SECUREBITS, c.secbits as usize, 0);
        if admin {
            // Kept until the filters are in (see seccomp_needs_admin).
            let mut eff = c.cap_eff;
            let mut prm = c.cap_prm;
            eff[0] |= 1 << CAP_SYS_ADMIN;
            prm[0] |= 1 << CAP_SYS_ADMIN;
            self.capset(eff, prm, c.cap_inh);
            return;
        }
        self.capset(c.cap_eff, c.cap_prm, c.cap_inh);
        if c.no_new_privs != 0 {
            self.prctl(PR_SET_NO_NEW_PRIVS, 1, 0);
        }
    }

    /// A filter may be installed only with CAP_SYS_ADMIN or no_new_privs.
    /// A task that got its filters while privileged (a container whose
    /// runtime installed them before dropping capabilities) keeps
    /// CAP_SYS_ADMIN through the seccomp step and drops it right after.
    fn seccomp_needs_admin(&self) -> bool {
        let c: &Creds = &self.a.creds;
        c.skip == 0
            && self.a.seccomp_mode == 2
            && self.a.nr_seccomp > 0
            && c.no_new_privs == 0
            && c.cap_eff[0] & (1 << CAP_SYS_ADMIN) == 0
    }

    /// The creds' last step when [`seccomp_needs_admin`]: the final sets.
    fn finish_creds_after_seccomp(&self) {
        if self.seccomp_needs_admin() {
            let c: &Creds = &self.a.creds;
            self.capset(c.cap_eff, c.cap_prm, c.cap_inh);
        }
    }

    /// Step 9.
    fn sync_with_engine(&self) {
        let r = Report {
            step: step::READY,
            errno: 0,
        };
        // SAFETY: `r` is a live 8-byte value.
        let ret = unsafe {
            syscall3(
                nr::WRITE,
                self.a.ready_fd as usize,
                &r as *const Report as usize,
                size_of::<Report>(),
            )
        };
        if self.check(ret, step::SYNC) != size_of::<Report>() {
            self.fail(step::SYNC, EINVAL);
        }
        let mut b = 0u8;
        loop {
            // SAFETY: reads one byte into `b`.
            let ret = unsafe {
                syscall3(
                    nr::READ,
                    self.a.go_fd as usize,
                    &mut b as *mut u8 as usize,
                    1,
                )
            };
            if ret == -EINTR {
                continue;
            }
            if ret != 1 {
                // EOF or error: the engine gave up on this task.
                exit_group(1);
            }
            break;
        }
        // The fds stay open: the other threads still need them. The engine
        // closes them once every thread is through its sigreturn.
    }

    /// Step 10. All signals are blocked, so they stay pending until the
    /// sigreturn installs the saved mask.
    /// The calling thread queues its own per-thread signals (the kernel
    /// lets a task forge a kill()-style siginfo only for itself); the
    /// leader also queues the process-wide ones.
    fn queue_signals(&self, leader: bool) {
        if self.a.nr_sigs == 0 {
            return;
        }
        // SAFETY: no arguments.
        let pid = unsafe { syscall0(nr::GETPID) } as usize;
        // SAFETY: no arguments.
        let tid = unsafe { syscall0(nr::GETTID) } as usize;
        for i in 0..self.a.nr_sigs {
            // SAFETY: `nr_sigs` entries at `sigs`, inside the blob area.
            let s = unsafe { &*(self.a.sigs as *const abi::QueuedSignal).add(i as usize) };
            let mine = if s.shared != 0 {
                leader
            } else if s.tid == 0 {
                leader
            } else {
                s.tid as usize == tid
            };
            if !mine {
                continue;
            }
            let info = s.info.as_ptr() as usize;
            // SAFETY: `info` is a 128-byte siginfo inside the blob area.
            let ret = unsafe {
                if s.shared != 0 {
                    syscall3(nr::RT_SIGQUEUEINFO, pid, s.signo as usize, info)
                } else {
                    syscall4(nr::RT_TGSIGQUEUEINFO, pid, tid, s.signo as usize, info)
                }
            };
            self.check(ret, step::SIGQUEUE);
        }
    }

    /// Step 10b (before seccomp, which may deny these calls): create the
    /// POSIX timers that notify a thread other than the leader, now that
    /// it exists, with their old ids; disarmed until `arm_timers`.
    fn create_thread_timers(&self) {
        for i in 0..self.a.nr_timers {
            // SAFETY: `nr_timers` entries at `timers`, inside the area.
            let t = unsafe { &*(self.a.timers as *const abi::TimerArm).add(i as usize) };
            if t.create == 0 {
                continue;
            }
            // struct sigevent as the kernel reads it: value, signo, notify,
            // then the thread id in a 52-byte union.
            let mut sev = [0u32; 16];
            sev[0] = t.sival as u32;
            sev[1] = (t.sival >> 32) as u32;
            sev[2] = t.signo as u32;
            sev[3] = t.notify as u32;
            sev[4] = t.tid as u32;
            let mut id: i32 = t.id as i32;
            // PR_TIMER_CREATE_RESTORE_IDS (77) on: timer_create takes the
            // id it is given.
            // SAFETY: integer arguments only.
            let ret = unsafe { syscall5(nr::PRCTL, 77, 1, 0, 0, 0) };
            self.check(ret, step::TIMERS);
            // SAFETY: `sev` is a complete sigevent and `id` a writable timer
            // id, both on our stack.
            let ret = unsafe {
                syscall3(
                    nr::TIMER_CREATE,
                    t.clock as usize,
                    sev.as_ptr() as usize,
                    &mut id as *mut i32 as usize,
                )
            };
            self.check(ret, step::TIMERS);
            // SAFETY: integer arguments only.
            let off = unsafe { syscall5(nr::PRCTL, 77, 0, 0, 0, 0) };
            self.check(off, step::TIMERS);
            if id as i64 != t.id {
                self.fail(step::TIMERS, EINVAL);
            }
        }
    }

    /// Step 11c: arm the armed POSIX timers (all created, disarmed).
    fn arm_timers(&self) {
        for i in 0..self.a.nr_timers {
            // SAFETY: `nr_timers` entries at `timers`, inside the area.
            let t = unsafe { &*(self.a.timers as *const abi::TimerArm).add(i as usize) };
            if t.value_sec == 0 && t.value_nsec == 0 {
                continue;
            }
            let spec: [i64; 4] = [t.interval_sec, t.interval_nsec, t.value_sec, t.value_nsec];
            // SAFETY: `spec` is a valid itimerspec; no old value wanted.
            let ret = unsafe { syscall4(nr::TIMER_SETTIME, t.id as usize, 0, spec.as_ptr() as usize, 0) };
            self.check(ret, step::TIMERS);
        }
    }

    /// Step 11a: seccomp, synchronised to every thread.
    fn install_seccomp(&self) {
        match self.a.seccomp_mode {
            0 => {}
            1 => {
                // PR_SET_SECCOMP (22), SECCOMP_MODE_STRICT (1).
                // SAFETY: integer arguments only.
                let ret = unsafe { syscall5(nr::PRCTL, 22, 1, 0, 0, 0) };
                self.check(ret, step::SECCOMP);
            }
            _ => {
                for i in 0..self.a.nr_seccomp {
                    // SAFETY: `nr_seccomp` filters at `seccomp`, in the area.
                    let f = unsafe { &*(self.a.seccomp as *const SeccompFilter).add(i as usize) };
                    // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
                    let prog: [u64; 2] = [f.len as u64, f.insns];
                    // SECCOMP_SET_MODE_FILTER (1) with TSYNC (1) plus the
                    // filter's own flags.
                    // SAFETY: `prog` describes `len` instructions inside the
                    // area; the kernel copies them.
                    let ret = unsafe { syscall3(nr::SECCOMP, 1, 1 | f.flags as usize, prog.as_ptr() as usize) };
                    self.check(ret, step::SECCOMP);
                }
            }
        }
    }

    /// Step 11.
    fn sigreturn(&self, t: &ThreadState) -> ! {
        // SAFETY: sets our own fs base; nothing in the blob uses TLS.
        let ret = unsafe { syscall2(nr::ARCH_PRCTL, ARCH_SET_FS, t.fs_base as usize) };
        self.check(ret, step::SIGRETURN);
        // SAFETY: as above, for gs.
        let ret = unsafe { syscall2(nr::ARCH_PRCTL, ARCH_SET_GS, t.gs_base as usize) };
        self.check(ret, step::SIGRETURN);
        // SAFETY: `frame` is the address of the `uc` of a complete
        // rt_sigframe the engine built inside the blob area; the kernel
        // reads it at rsp - 8 and replaces every register. A bad frame
        // ends in SIGSEGV, never in a return here.
        unsafe {
            asm!(
                "mov rsp, {frame}",
                "mov eax, 15",
                "syscall",
                "ud2",
                frame = in(reg) t.frame,
                options(noreturn)
            )
        }
    }

    /// Lazy pages: a userfaultfd for this mm, created before the restored
    /// credentials drop CAP_SYS_PTRACE (a kernel-fault-capable userfaultfd
    /// needs it). It is left open (close-on-exec) for the engine, which
    /// takes it with pidfd_getfd and closes it here before the task runs.
    fn open_uffd(&self) {
        if self.a.uffd_flags == 0 {
            return;
        }
        // SAFETY: userfaultfd takes no pointers.
        let ret = unsafe { syscall1(nr::USERFAULTFD, self.a.uffd_flags as usize) };
        self.check(ret, step::UFFD);
    }

    fn run(&self) -> ! {
        let a = self.a;
        if a.magic != ARGS_MAGIC || a.size != size_of::<Args>() as u64 || a.version != ARGS_VERSION
        {
            self.fail(step::HEADER, EINVAL);
        }
        self.unregister_engine_rseq();
        self.unmap_rest();
        self.place_vmas();
        self.map_vdso();
        self.set_mm();
        self.set_signals_and_timers();
        self.clone_threads();
        self.set_thread(&a.thread);
        self.open_uffd();
        self.set_creds();
        self.sync_with_engine();
        self.create_thread_timers();
        self.install_seccomp();
        self.finish_creds_after_seccomp();
        self.queue_signals(true);
        self.arm_timers();
        self.sigreturn(&a.thread)
    }
}

/// Where a thread created by `clone_threads` starts (on its own stack).
extern "C" fn thread_entry(args: *const Args, i: u64) -> ! {
    // SAFETY: the creator passed its own, valid Args pointer.
    let a = unsafe { &*args };
    Blob { a }.run_thread(i)
}

/// The entry point, at offset 0 of the flat image. Called with
/// `rdi = &Args` on the blob's own stack (`rsp % 16 == 8`, as after a call)
/// with every signal blocked.
///
/// # Safety
/// `args` must point to a complete [`Args`] block laid out by the engine.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.entry")]
pub unsafe extern "C" fn blob_entry(args: *const Args) -> ! {
    // SAFETY: the engine passes a valid, aligned Args that lives in a kept
    // range for the whole run.
    let a = unsafe { &*args };
    Blob { a }.run()
}
