//! Loading and entering the restorer blob.
//!
//! The blob (`restorer/src/blob.rs`, built by `build.rs` into a flat image)
//! is the last code a restored task runs before it returns into its saved
//! registers. This module lays out one *blob area* for it at an address the
//! caller chose to be free in both the engine's and the restored layout:
//!
//! ```text
//! base                     blob code, page aligned (BLOB, entry at BLOB_ENTRY)
//! base + code              Args
//!                          keep ranges, moves, madvs, auxv words, groups,
//!                          queued signals (each 16-byte aligned)
//!                          rt_sigframe (its `uc` 16-byte aligned)
//!                          XSAVE image, 64-byte aligned, + FP_XSTATE_MAGIC2
//! page aligned             blob stack (STACK_SIZE), growing down to it
//! base + area_size         stack top
//! ```
//!
//! [`place`] maps and fills the area, [`jump`] enters the blob. What the
//! blob does with it is documented in `cryo_restorer::abi`.
//!
//! The signal frame follows the x86_64 `struct rt_sigframe`: `pretcode`,
//! then `struct ucontext` (flags, link, `stack_t`, `struct sigcontext`,
//! the 64-bit signal mask), then a 128-byte siginfo. rt_sigreturn reads it
//! at `rsp - 8`, so the blob sets `rsp = frame + 8` ([`ThreadState::frame`]).
//!
//! XSAVE images: the kernel only restores the extended state from a signal
//! frame whose FXSAVE `sw_reserved` bytes (offset 464) hold
//! `magic1 = FP_XSTATE_MAGIC1`, `extended_size = xstate_size + 4`, the
//! feature mask and `xstate_size`, and which has `FP_XSTATE_MAGIC2` right
//! after `xstate_size` bytes; otherwise it silently restores the legacy
//! FXSAVE part only. The image we get is what
//! `PTRACE_GETREGSET(NT_X86_XSTATE)` returns: the standard (non-compacted)
//! XSAVE layout, `fpu_user_cfg.max_size` bytes long, which is exactly the
//! `xstate_size` the kernel itself puts in signal frames on that machine.
//! Its `sw_reserved` bytes are *not* a signal-frame descriptor: ptrace puts
//! the user XCR0 (`max_features`) in their first word and zeros after it
//! (checked by a test on the reference machine). [`prepare_xsave`] therefore
//! writes the descriptor itself: size from the image length, features from
//! that first word (or from XCR0 if it is 0), then appends magic2. Caveat:
//! on CPUs with dynamically enabled features (AMX) `max_size` can exceed a
//! task's own `user_size`; the kernel then falls back to FXSAVE-only, so
//! such images would need trimming (not handled; no AMX here).
#![allow(unsafe_code)]

use std::arch::asm;
use std::mem::{offset_of, size_of, ManuallyDrop};

pub use cryo_restorer::abi::{
    self, Args, Creds, ItimerVal, KSigAction, Madvise, PrctlMmMap, QueuedSignal, Range, Report, Rseq, ThreadState,
    VmaMove,
};

/// The flat restorer image.
pub static BLOB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/blob.bin"));
include!(concat!(env!("OUT_DIR"), "/blob_meta.rs"));

const PAGE: u64 = 4096;
/// End of the user address space the blob unmaps up to.
pub const TASK_TOP: u64 = 0x7fff_ffff_f000;
/// Size of the blob's own stack.
pub const STACK_SIZE: usize = 64 << 10;
/// glibc's rseq signature on x86 (`RSEQ_SIG`).
pub const RSEQ_SIG: u32 = 0x5305_3053;
/// `sigaltstack` flag: no alternate stack.
pub const SS_DISABLE: i32 = 2;

const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of the FXSAVE `sw_reserved` bytes in an XSAVE image.
const SW_BYTES: usize = 464;
/// Legacy area (512) plus the XSAVE header (64).
const XSAVE_MIN: usize = 576;
const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
const USER_CS: u16 = 0x33;
const USER_SS: u16 = 0x2b;

/// `struct user_regs_struct` (x86_64), in the kernel's order: what
/// `PTRACE_GETREGS` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl UserRegs {
    /// From the 27 words of `user_regs_struct`, in kernel order.
    pub fn from_words(w: &[u64; 27]) -> Self {
        Self {
            r15: w[0],
            r14: w[1],
            r13: w[2],
            r12: w[3],
            rbp: w[4],
            rbx: w[5],
            r11: w[6],
            r10: w[7],
            r9: w[8],
            r8: w[9],
            rax: w[10],
            rcx: w[11],
            rdx: w[12],
            rsi: w[13],
            rdi: w[14],
            orig_rax: w[15],
            rip: w[16],
            cs: w[17],
            eflags: w[18],
            rsp: w[19],
            ss: w[20],
            fs_base: w[21],
            gs_base: w[22],
            ds: w[23],
            es: w[24],
            fs: w[25],
            gs: w[26],
        }
    }
}

/// A `stack_t` for the frame's `uc_stack` (applied by rt_sigreturn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigAltStack {
    pub sp: u64,
    pub size: u64,
    pub flags: i32,
}

impl Default for SigAltStack {
    fn default() -> Self {
        Self {
            sp: 0,
            size: 0,
            flags: SS_DISABLE,
        }
    }
}

/// Everything the blob needs for one task, in engine terms.
#[derive(Clone, Debug)]
pub struct BlobPlan {
    /// Staged VMAs to move into place (page aligned). Their sources are
    /// kept automatically.
    pub moves: Vec<VmaMove>,
    pub madvs: Vec<Madvise>,
    /// Ranges to keep besides the blob area and the move sources.
    pub keep_extra: Vec<Range>,
    /// Start of `[vvar]` in the restored layout, 0 for no vdso.
    pub vdso_vvar_start: u64,
    /// `auxv`, `auxv_size` and `exe_fd` are filled in by [`place`].
    pub mm: PrctlMmMap,
    pub auxv: Vec<u64>,
    /// Fd of the new `/proc/pid/exe` target, -1 to leave the link alone.
    pub exe_fd: i32,
    pub sigactions: [KSigAction; 64],
    pub sigaction_mask: u64,
    pub itimers: [ItimerVal; 3],
    /// `frame`, `fs_base` and `gs_base` are filled in by [`place`] (the
    /// bases from `regs`).
    pub thread: ThreadState,
    /// `groups`/`ngroups` are filled in by [`place`] from `groups`.
    pub creds: Creds,
    pub groups: Vec<u32>,
    pub sigs: Vec<QueuedSignal>,
    pub ready_fd: i32,
    pub go_fd: i32,
    /// General registers to return to (restart fixups already applied).
    pub regs: UserRegs,
    /// Standard-format XSAVE image as `PTRACE_GETREGSET(NT_X86_XSTATE)`
    /// returns it; `None` resets the FPU.
    pub xsave: Option<Vec<u8>>,
    /// Blocked signals after the sigreturn (bit n-1 = signal n).
    pub sigmask: u64,
    pub altstack: SigAltStack,
    /// The process's other threads (the leader is described above).
    pub threads: Vec<ThreadPlan>,
    /// 0 none, 1 strict, 2 filters.
    pub seccomp_mode: u64,
    /// BPF programs (raw sock_filter bytes) and flags, oldest first.
    pub seccomp: Vec<(Vec<u8>, u32)>,
    /// POSIX timers to arm last.
    pub timers: Vec<abi::TimerArm>,
    /// userfaultfd flags for the blob (lazy pages); 0: none.
    pub uffd_flags: u64,
}

/// One extra thread: its state and the registers it returns to.
#[derive(Clone, Debug, Default)]
pub struct ThreadPlan {
    /// `frame`, `stack_top`, `fs_base` and `gs_base` are filled in by
    /// [`place`].
    pub state: ThreadState,
    pub regs: UserRegs,
    pub xsave: Option<Vec<u8>>,
    pub sigmask: u64,
    pub altstack: SigAltStack,
}

impl Default for BlobPlan {
    fn default() -> Self {
        Self {
            moves: Vec::new(),
            madvs: Vec::new(),
            keep_extra: Vec::new(),
            vdso_vvar_start: 0,
            mm: PrctlMmMap::default(),
            auxv: Vec::new(),
            exe_fd: -1,
            sigactions: [KSigAction::default(); 64],
            sigaction_mask: 0,
            itimers: [ItimerVal::default(); 3],
            thread: ThreadState::default(),
            creds: Creds {
                skip: 1,
                ..Creds::default()
            },
            groups: Vec::new(),
            sigs: Vec::new(),
            ready_fd: -1,
            go_fd: -1,
            regs: UserRegs::default(),
            xsave: None,
            sigmask: 0,
            altstack: SigAltStack::default(),
            threads: Vec::new(),
            seccomp_mode: 0,
            seccomp: Vec::new(),
            timers: Vec::new(),
            uffd_flags: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("Blob area base {base:#x} is not page aligned or out of range")]
    Base { base: u64 },
    #[error("Unaligned or empty {what} range {start:#x}-{end:#x}")]
    BadRange { what: &'static str, start: u64, end: u64 },
    #[error("Move destination {start:#x}-{end:#x} overlaps a kept range")]
    Overlap { start: u64, end: u64 },
    #[error("XSAVE image of {len} bytes is shorter than its header")]
    Xsave { len: usize },
    #[error("Mapping the blob area at {base:#x} ({len} bytes) failed")]
    Map {
        base: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("Blob area landed at {got:#x} instead of {base:#x}")]
    Moved { base: u64, got: u64 },
}

pub type Result<T> = std::result::Result<T, BlobError>;

// ---------------------------------------------------------------------------
// The x86_64 signal frame (arch/x86/include/uapi/asm/sigcontext.h,
// ucontext.h, signal.h).

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SigContext {
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rdi: u64,
    rsi: u64,
    rbp: u64,
    rbx: u64,
    rdx: u64,
    rax: u64,
    rcx: u64,
    rsp: u64,
    rip: u64,
    eflags: u64,
    cs: u16,
    gs: u16,
    fs: u16,
    ss: u16,
    err: u64,
    trapno: u64,
    oldmask: u64,
    cr2: u64,
    fpstate: u64,
    reserved1: [u64; 8],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct StackT {
    ss_sp: u64,
    ss_flags: i32,
    _pad: i32,
    ss_size: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UContext {
    uc_flags: u64,
    uc_link: u64,
    uc_stack: StackT,
    uc_mcontext: SigContext,
    uc_sigmask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RtSigframe {
    pretcode: u64,
    uc: UContext,
    info: [u8; 128],
}

const _: () = assert!(size_of::<SigContext>() == 256);
const _: () = assert!(size_of::<UContext>() == 304);
const _: () = assert!(offset_of!(UContext, uc_mcontext) == 40);
const _: () = assert!(offset_of!(RtSigframe, info) == 312);
const _: () = assert!(size_of::<PrctlMmMap>() == 104);

// ---------------------------------------------------------------------------
// Layout.

fn align(x: usize, a: usize) -> usize {
    (x + a - 1) & !(a - 1)
}

/// Offsets inside the blob area.
#[derive(Clone, Copy, Debug)]
struct Layout {
    args: usize,
    keep: usize,
    moves: usize,
    madvs: usize,
    auxv: usize,
    groups: usize,
    sigs: usize,
    frame: usize,
    fpstate: usize,
    /// The extra threads' ThreadState array.
    threads: usize,
    /// TimerArm array.
    timers: usize,
    /// SeccompFilter array, then the programs.
    seccomp: usize,
    seccomp_progs: usize,
    /// Top of the leader's blob stack.
    leader_top: usize,
    /// Size of the whole area (the extra threads' slots follow the
    /// leader's stack).
    total: usize,
}

/// Offsets of one extra thread's frame, fpstate and stack top.
fn thread_slots(plan: &BlobPlan, start: usize) -> (Vec<(usize, usize, usize)>, usize) {
    let mut at = start;
    let mut out = Vec::with_capacity(plan.threads.len());
    for t in &plan.threads {
        let frame = align(at, 16) + 8;
        let fp = align(frame + size_of::<RtSigframe>(), 64);
        let fp_len = t.xsave.as_ref().map_or(0, |x| x.len() + 4);
        let stack_base = align(fp + fp_len, PAGE as usize);
        let top = stack_base + abi::THREAD_STACK as usize;
        out.push((frame, fp, top));
        at = top;
    }
    (out, at)
}

fn layout(plan: &BlobPlan) -> Layout {
    let code = align(BLOB.len(), PAGE as usize);
    let args = code;
    let keep = align(args + size_of::<Args>(), 16);
    // Upper bound: the area, the extras and one per move source.
    let nr_keep = 1 + plan.keep_extra.len() + plan.moves.len();
    let moves = align(keep + nr_keep * size_of::<Range>(), 16);
    let madvs = align(moves + plan.moves.len() * size_of::<VmaMove>(), 16);
    let auxv = align(madvs + plan.madvs.len() * size_of::<Madvise>(), 16);
    let groups = align(auxv + plan.auxv.len() * 8, 16);
    let sigs = align(groups + plan.groups.len() * 4, 16);
    // rt_sigreturn wants rsp = frame + 8 and the kernel builds frames with
    // that address 16-byte aligned; do the same.
    let frame = align(sigs + plan.sigs.len() * size_of::<QueuedSignal>(), 16) + 8;
    let fpstate = align(frame + size_of::<RtSigframe>(), 64);
    let fp_len = plan.xsave.as_ref().map_or(0, |x| x.len() + 4);
    let threads = align(fpstate + fp_len, 16);
    let timers = align(threads + plan.threads.len() * size_of::<ThreadState>(), 16);
    let seccomp = align(timers + plan.timers.len() * size_of::<abi::TimerArm>(), 16);
    let seccomp_progs = align(seccomp + plan.seccomp.len() * size_of::<abi::SeccompFilter>(), 16);
    let progs_len: usize = plan.seccomp.iter().map(|p| align(p.0.len(), 8)).sum();
    let stack = align(seccomp_progs + progs_len, PAGE as usize);
    let leader_top = stack + STACK_SIZE;
    let (_, end) = thread_slots(plan, leader_top);
    Layout {
        args,
        keep,
        moves,
        madvs,
        auxv,
        groups,
        sigs,
        frame,
        fpstate,
        threads,
        timers,
        seccomp,
        seccomp_progs,
        leader_top,
        total: leader_top.max(end),
    }
}

/// Bytes the blob area for `plan` needs (a multiple of the page size).
pub fn area_size(plan: &BlobPlan) -> usize {
    layout(plan).total
}

/// Sorts `ranges` and merges overlapping or touching ones; empty ranges go.
pub fn merge_ranges(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) reads XCR0; it is valid whenever the OS enabled
    // XSAVE, which a caller holding an XSAVE image implies.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags));
    }
    (hi as u64) << 32 | lo as u64
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Returns the XSAVE image ready for a signal frame: the `sw_reserved`
/// bytes at offset 464 describe it and `FP_XSTATE_MAGIC2` follows it.
///
/// A descriptor already consistent with the image length is kept. Anything
/// else (in particular ptrace's "XCR0 in the first word" convention) is
/// replaced by one built from the length, with the feature mask taken from
/// that first word, or from XCR0 when it is 0.
pub fn prepare_xsave(img: &[u8]) -> Result<Vec<u8>> {
    let len = img.len();
    if len < XSAVE_MIN {
        return Err(BlobError::Xsave { len });
    }
    let mut out = Vec::with_capacity(len + 4);
    out.extend_from_slice(img);
    let consistent = rd32(img, SW_BYTES) == FP_XSTATE_MAGIC1
        && rd32(img, SW_BYTES + 4) as usize == len + 4
        && rd32(img, SW_BYTES + 16) as usize == len;
    if !consistent {
        let features = match rd64(img, SW_BYTES) {
            0 => xcr0(),
            f => f,
        };
        out[SW_BYTES..512].fill(0);
        out[SW_BYTES..SW_BYTES + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        out[SW_BYTES + 4..SW_BYTES + 8].copy_from_slice(&((len + 4) as u32).to_le_bytes());
        out[SW_BYTES + 8..SW_BYTES + 16].copy_from_slice(&features.to_le_bytes());
        out[SW_BYTES + 16..SW_BYTES + 20].copy_from_slice(&(len as u32).to_le_bytes());
    }
    out.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    Ok(out)
}

/// Writes `v` at `off` into `buf`.
fn put<T: Copy>(buf: &mut [u8], off: usize, v: &T) {
    assert!(off + size_of::<T>() <= buf.len(), "blob area write out of bounds");
    // SAFETY: the bounds are checked above and write_unaligned has no
    // alignment requirement; T is a plain repr(C) value.
    unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().add(off) as *mut T, *v) }
}

fn put_all<T: Copy>(buf: &mut [u8], off: usize, vs: &[T]) {
    for (i, v) in vs.iter().enumerate() {
        put(buf, off + i * size_of::<T>(), v);
    }
}

fn check_range(what: &'static str, start: u64, end: u64) -> Result<()> {
    if start & (PAGE - 1) != 0 || end & (PAGE - 1) != 0 || start >= end || end > TASK_TOP {
        return Err(BlobError::BadRange { what, start, end });
    }
    Ok(())
}

/// Writes an rt_sigframe at `frame` (and the prepared XSAVE image at
/// `fp`) that returns to `r` with `sigmask` and `altstack`.
#[allow(clippy::too_many_arguments)]
fn write_frame(
    buf: &mut [u8],
    base: u64,
    frame: usize,
    fp: usize,
    r: &UserRegs,
    xsave: Option<&[u8]>,
    sigmask: u64,
    altstack: &SigAltStack,
) {
    let mut uc_flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS;
    let mut fpstate = 0;
    if let Some(x) = xsave {
        buf[fp..fp + x.len()].copy_from_slice(x);
        uc_flags |= UC_FP_XSTATE;
        fpstate = base + fp as u64;
    }
    let f = RtSigframe {
        pretcode: 0,
        uc: UContext {
            uc_flags,
            uc_link: 0,
            uc_stack: StackT {
                ss_sp: altstack.sp,
                ss_flags: altstack.flags,
                _pad: 0,
                ss_size: altstack.size,
            },
            uc_mcontext: SigContext {
                r8: r.r8,
                r9: r.r9,
                r10: r.r10,
                r11: r.r11,
                r12: r.r12,
                r13: r.r13,
                r14: r.r14,
                r15: r.r15,
                rdi: r.rdi,
                rsi: r.rsi,
                rbp: r.rbp,
                rbx: r.rbx,
                rdx: r.rdx,
                rax: r.rax,
                rcx: r.rcx,
                rsp: r.rsp,
                rip: r.rip,
                eflags: r.eflags,
                cs: USER_CS,
                ss: USER_SS,
                fpstate,
                ..SigContext::default()
            },
            uc_sigmask: sigmask,
        },
        info: [0; 128],
    };
    put(buf, frame, &f);
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.start < b.end && b.start < a.end
}

/// Builds the whole content of the blob area for `base` (pure: nothing is
/// mapped).
fn build(plan: &BlobPlan, base: u64) -> Result<(Vec<u8>, Layout)> {
    let lay = layout(plan);
    let total = lay.total;
    if base == 0 || base & (PAGE - 1) != 0 || base.checked_add(total as u64).is_none_or(|e| e > TASK_TOP) {
        return Err(BlobError::Base { base });
    }
    let area = Range {
        start: base,
        end: base + total as u64,
    };
    let mut keep = vec![area];
    for r in &plan.keep_extra {
        check_range("keep", r.start, r.end)?;
        keep.push(*r);
    }
    for m in &plan.moves {
        let src = Range {
            start: m.src,
            end: m.src.wrapping_add(m.len),
        };
        let dst = Range {
            start: m.dst,
            end: m.dst.wrapping_add(m.len),
        };
        check_range("move source", src.start, src.end)?;
        check_range("move destination", dst.start, dst.end)?;
        if overlaps(&src, &area) {
            return Err(BlobError::Overlap {
                start: src.start,
                end: src.end,
            });
        }
        keep.push(src);
    }
    let keep = merge_ranges(keep);
    for m in &plan.moves {
        let dst = Range {
            start: m.dst,
            end: m.dst + m.len,
        };
        if keep.iter().any(|k| overlaps(k, &dst)) {
            return Err(BlobError::Overlap {
                start: dst.start,
                end: dst.end,
            });
        }
    }
    let xsave = plan.xsave.as_deref().map(prepare_xsave).transpose()?;

    let mut buf = vec![0u8; total];
    buf[..BLOB.len()].copy_from_slice(BLOB);
    let at = |off: usize| base + off as u64;

    put_all(&mut buf, lay.keep, &keep);
    put_all(&mut buf, lay.moves, &plan.moves);
    put_all(&mut buf, lay.madvs, &plan.madvs);
    put_all(&mut buf, lay.auxv, &plan.auxv);
    put_all(&mut buf, lay.groups, &plan.groups);
    put_all(&mut buf, lay.sigs, &plan.sigs);

    let r = &plan.regs;
    write_frame(
        &mut buf,
        base,
        lay.frame,
        lay.fpstate,
        r,
        xsave.as_deref(),
        plan.sigmask,
        &plan.altstack,
    );
    let (slots, _) = thread_slots(plan, lay.leader_top);
    let mut states = Vec::with_capacity(plan.threads.len());
    for (t, &(frame, fp, top)) in plan.threads.iter().zip(&slots) {
        let x = t.xsave.as_deref().map(prepare_xsave).transpose()?;
        write_frame(&mut buf, base, frame, fp, &t.regs, x.as_deref(), t.sigmask, &t.altstack);
        let mut st = t.state;
        st.frame = at(frame) + 8;
        st.stack_top = at(top);
        st.fs_base = t.regs.fs_base;
        st.gs_base = t.regs.gs_base;
        states.push(st);
    }
    put_all(&mut buf, lay.threads, &states);
    put_all(&mut buf, lay.timers, &plan.timers);
    let mut filters = Vec::with_capacity(plan.seccomp.len());
    let mut off = lay.seccomp_progs;
    for (prog, flags) in &plan.seccomp {
        buf[off..off + prog.len()].copy_from_slice(prog);
        filters.push(abi::SeccompFilter {
            insns: at(off),
            len: (prog.len() / 8) as u32,
            flags: *flags,
        });
        off += align(prog.len(), 8);
    }
    put_all(&mut buf, lay.seccomp, &filters);

    let mut mm = plan.mm;
    mm.auxv = at(lay.auxv);
    mm.auxv_size = (plan.auxv.len() * 8) as u32;
    mm.exe_fd = plan.exe_fd as u32;
    let mut thread = plan.thread;
    thread.frame = at(lay.frame) + 8;
    thread.fs_base = r.fs_base;
    thread.gs_base = r.gs_base;
    let mut creds = plan.creds;
    creds.ngroups = plan.groups.len() as u32;
    creds.groups = at(lay.groups);
    let args = Args {
        magic: abi::ARGS_MAGIC,
        size: size_of::<Args>() as u64,
        version: abi::ARGS_VERSION,
        ready_fd: plan.ready_fd,
        go_fd: plan.go_fd,
        exe_fd: plan.exe_fd,
        keep: at(lay.keep),
        nr_keep: keep.len() as u64,
        moves: at(lay.moves),
        nr_moves: plan.moves.len() as u64,
        madvs: at(lay.madvs),
        nr_madvs: plan.madvs.len() as u64,
        vdso_vvar_start: plan.vdso_vvar_start,
        engine_rseq: engine_rseq(),
        mm,
        auxv: at(lay.auxv),
        nr_auxv: plan.auxv.len() as u64,
        sigactions: plan.sigactions,
        sigaction_mask: plan.sigaction_mask,
        itimers: plan.itimers,
        thread,
        threads: at(lay.threads),
        nr_threads: plan.threads.len() as u64,
        creds,
        sigs: at(lay.sigs),
        nr_sigs: plan.sigs.len() as u64,
        seccomp_mode: plan.seccomp_mode,
        seccomp: at(lay.seccomp),
        nr_seccomp: plan.seccomp.len() as u64,
        timers: at(lay.timers),
        nr_timers: plan.timers.len() as u64,
        uffd_flags: plan.uffd_flags,
    };
    put(&mut buf, lay.args, &args);
    Ok((buf, lay))
}

/// A mapped and filled blob area. Dropping it unmaps the area.
#[derive(Debug)]
pub struct PreparedBlob {
    base: u64,
    len: usize,
    args: u64,
    stack_top: u64,
}

impl PreparedBlob {
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The area as a range (it is in the blob's `keep` list).
    pub fn range(&self) -> Range {
        Range {
            start: self.base,
            end: self.base + self.len as u64,
        }
    }

    /// The argument block inside the area, for last-minute changes.
    pub fn args_mut(&mut self) -> &mut Args {
        // SAFETY: `args` is an aligned, initialised Args inside the mapping
        // this value owns; `&mut self` makes the borrow exclusive.
        unsafe { &mut *(self.args as *mut Args) }
    }
}

impl Drop for PreparedBlob {
    fn drop(&mut self) {
        // SAFETY: the area was mapped by `place` and nothing borrows it once
        // its owner is dropped.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Maps the blob area for `plan` at `base` (`MAP_FIXED_NOREPLACE`, read,
/// write and execute) and fills it.
pub fn place(plan: &BlobPlan, base: u64) -> Result<PreparedBlob> {
    let (img, lay) = build(plan, base)?;
    let len = img.len();
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the
    // result is checked below.
    let p = unsafe {
        libc::mmap(
            base as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let source = std::io::Error::last_os_error();
        return Err(BlobError::Map { base, len, source });
    }
    if p as u64 != base {
        // SAFETY: `p` is the mapping just created, of `len` bytes.
        unsafe { libc::munmap(p, len) };
        return Err(BlobError::Moved { base, got: p as u64 });
    }
    // SAFETY: the fresh mapping holds `len` writable bytes, as does `img`.
    unsafe { std::ptr::copy_nonoverlapping(img.as_ptr(), p as *mut u8, len) };
    Ok(PreparedBlob {
        base,
        len,
        args: base + lay.args as u64,
        stack_top: base + lay.leader_top as u64,
    })
}

extern "C" {
    // glibc >= 2.35: offset of the thread's rseq area from the thread
    // pointer, and its size (0: glibc did not register rseq).
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// The calling thread's rseq registration made by glibc, which the blob
/// must undo before unmapping the engine (or the kernel faults the task
/// when it next writes `cpu_id`). Zero when glibc registered none.
///
/// The registered length is at least 32 (the original ABI size, which
/// glibc uses even when it advertises a smaller feature size).
pub fn engine_rseq() -> Rseq {
    // SAFETY: glibc sets both at startup and never changes them.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return Rseq::default();
    }
    let tp: u64;
    // SAFETY: on x86_64 glibc the first word of the TCB (at %fs:0) is the
    // thread pointer itself.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    Rseq {
        ptr: tp.wrapping_add(off as u64),
        len: size.max(32),
        sig: RSEQ_SIG,
    }
}

/// Enters the blob: records the calling thread's rseq registration in the
/// args, blocks every signal (with a raw syscall, so glibc's internal ones
/// too), switches to the blob stack and calls the entry with `rdi = &Args`.
/// Never returns; the task ends in its restored state or exits.
///
/// Async-signal-safe (no allocation, no locks), so it may run in a child
/// forked from a multi-threaded process.
///
/// # Safety
/// The process must be single-threaded (the blob unmaps everything outside
/// the kept ranges) and `p` must come from [`place`] with a plan whose
/// addresses and fds are valid in this process.
pub unsafe fn jump(p: PreparedBlob) -> ! {
    let mut p = ManuallyDrop::new(p);
    p.args_mut().engine_rseq = engine_rseq();
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask reads 8 bytes from `all`; blocking signals
    // has no memory effects.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    let entry = p.base + BLOB_ENTRY as u64;
    // SAFETY: the area holds the blob image at `base` and its stack below
    // `stack_top` (16-byte aligned, so the call leaves rsp % 16 == 8 at the
    // entry as the ABI expects); the blob never returns.
    unsafe {
        asm!(
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "call {entry}",
            "ud2",
            stack = in(reg) p.stack_top,
            entry = in(reg) entry,
            in("rdi") p.args,
            options(noreturn)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::{Mutex, MutexGuard};

    /// Fork-based tests run one at a time: a child forked by one test would
    /// otherwise inherit, and hold open, another test's sync pipes.
    static FORK_LOCK: Mutex<()> = Mutex::new(());

    fn lock() -> MutexGuard<'static, ()> {
        FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    macro_rules! require_root {
        () => {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipped: needs root");
                return;
            }
        };
    }

    const SIGUSR1: u32 = 10;
    const SIGUSR2: u32 = 12;
    const SIGWINCH: u32 = 28;
    const SI_QUEUE: i32 = -1;
    const NT_X86_XSTATE: usize = 0x202;
    const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

    fn bit(sig: u32) -> u64 {
        1 << (sig - 1)
    }

    // -----------------------------------------------------------------------
    // The target code for the full restore test. It is copied (not run in
    // place) into a staging page, so it only uses rip-relative references to
    // its own table. It compares registers and state with the table and
    // exits 42 when all match, or with the number of the first mismatch.
    std::arch::global_asm!(
        ".pushsection .rodata.cryo_blob_checker,\"a\"",
        ".balign 16",
        ".globl cryo_blob_ck_start",
        "cryo_blob_ck_start:",
        "cmp rdi, qword ptr [rip + .Lck_table + 16]",
        "jne .Lck_e3",
        "cmp rax, qword ptr [rip + .Lck_table + 0]",
        "jne .Lck_e1",
        "cmp rbx, qword ptr [rip + .Lck_table + 8]",
        "jne .Lck_e2",
        "cmp rsi, qword ptr [rip + .Lck_table + 24]",
        "jne .Lck_e4",
        "cmp r8, qword ptr [rip + .Lck_table + 32]",
        "jne .Lck_e5",
        "cmp r12, qword ptr [rip + .Lck_table + 40]",
        "jne .Lck_e6",
        "cmp r13, qword ptr [rip + .Lck_table + 48]",
        "jne .Lck_e7",
        "cmp r15, qword ptr [rip + .Lck_table + 56]",
        "jne .Lck_e8",
        "cmp rbp, qword ptr [rip + .Lck_table + 64]",
        "jne .Lck_e9",
        "cmp rsp, qword ptr [rip + .Lck_table + 72]",
        "jne .Lck_e10",
        "movq rcx, xmm0",
        "cmp rcx, qword ptr [rip + .Lck_table + 80]",
        "jne .Lck_e11",
        "cmp qword ptr [rip + .Lck_table + 88], 0",
        "je .Lck_noymm",
        "vextractf128 xmm1, ymm0, 1",
        "movq rcx, xmm1",
        "cmp rcx, qword ptr [rip + .Lck_table + 96]",
        "jne .Lck_e12",
        ".Lck_noymm:",
        "sub rsp, 512",
        // rt_sigprocmask(SIG_BLOCK, NULL, rsp, 8)
        "xor edi, edi",
        "xor esi, esi",
        "mov rdx, rsp",
        "mov r10d, 8",
        "mov eax, 14",
        "syscall",
        "test rax, rax",
        "jne .Lck_e13",
        "mov rcx, qword ptr [rsp]",
        "cmp rcx, qword ptr [rip + .Lck_table + 104]",
        "jne .Lck_e14",
        // arch_prctl(ARCH_GET_FS, rsp)
        "mov edi, 0x1003",
        "mov rsi, rsp",
        "mov eax, 158",
        "syscall",
        "test rax, rax",
        "jne .Lck_e15",
        "mov rcx, qword ptr [rsp]",
        "cmp rcx, qword ptr [rip + .Lck_table + 112]",
        "jne .Lck_e16",
        // arch_prctl(ARCH_GET_GS, rsp)
        "mov edi, 0x1004",
        "mov rsi, rsp",
        "mov eax, 158",
        "syscall",
        "test rax, rax",
        "jne .Lck_e15",
        "mov rcx, qword ptr [rsp]",
        "cmp rcx, qword ptr [rip + .Lck_table + 144]",
        "jne .Lck_e22",
        // rt_sigaction(SIGUSR1, NULL, rsp, 8): handler must be SIG_IGN
        "mov edi, 10",
        "xor esi, esi",
        "mov rdx, rsp",
        "mov r10d, 8",
        "mov eax, 13",
        "syscall",
        "test rax, rax",
        "jne .Lck_e17",
        "cmp qword ptr [rsp], 1",
        "jne .Lck_e18",
        // rt_sigtimedwait({signo}, rsp+64, {0, 0}, 8) == signo, si_value
        "mov rcx, qword ptr [rip + .Lck_table + 120]",
        "test rcx, rcx",
        "je .Lck_nosig",
        "dec rcx",
        "mov eax, 1",
        "shl rax, cl",
        "mov qword ptr [rsp], rax",
        "mov qword ptr [rsp + 8], 0",
        "mov qword ptr [rsp + 16], 0",
        "mov rdi, rsp",
        "lea rsi, [rsp + 64]",
        "lea rdx, [rsp + 8]",
        "mov r10d, 8",
        "mov eax, 128",
        "syscall",
        "cmp rax, qword ptr [rip + .Lck_table + 120]",
        "jne .Lck_e19",
        "mov ecx, dword ptr [rsp + 88]",
        "cmp ecx, dword ptr [rip + .Lck_table + 128]",
        "jne .Lck_e20",
        // rt_sigpending(rsp, 8): what is left
        "mov rdi, rsp",
        "mov esi, 8",
        "mov eax, 127",
        "syscall",
        "test rax, rax",
        "jne .Lck_e24",
        "mov rcx, qword ptr [rsp]",
        "cmp rcx, qword ptr [rip + .Lck_table + 152]",
        "jne .Lck_e23",
        ".Lck_nosig:",
        // the vdso text starts with the ELF magic
        "mov rcx, qword ptr [rip + .Lck_table + 136]",
        "test rcx, rcx",
        "je .Lck_novdso",
        "cmp dword ptr [rcx], 0x464c457f",
        "jne .Lck_e21",
        ".Lck_novdso:",
        "mov edi, 42",
        "jmp .Lck_exit",
        ".Lck_e1: mov edi, 1",
        "jmp .Lck_exit",
        ".Lck_e2: mov edi, 2",
        "jmp .Lck_exit",
        ".Lck_e3: mov edi, 3",
        "jmp .Lck_exit",
        ".Lck_e4: mov edi, 4",
        "jmp .Lck_exit",
        ".Lck_e5: mov edi, 5",
        "jmp .Lck_exit",
        ".Lck_e6: mov edi, 6",
        "jmp .Lck_exit",
        ".Lck_e7: mov edi, 7",
        "jmp .Lck_exit",
        ".Lck_e8: mov edi, 8",
        "jmp .Lck_exit",
        ".Lck_e9: mov edi, 9",
        "jmp .Lck_exit",
        ".Lck_e10: mov edi, 10",
        "jmp .Lck_exit",
        ".Lck_e11: mov edi, 11",
        "jmp .Lck_exit",
        ".Lck_e12: mov edi, 12",
        "jmp .Lck_exit",
        ".Lck_e13: mov edi, 13",
        "jmp .Lck_exit",
        ".Lck_e14: mov edi, 14",
        "jmp .Lck_exit",
        ".Lck_e15: mov edi, 15",
        "jmp .Lck_exit",
        ".Lck_e16: mov edi, 16",
        "jmp .Lck_exit",
        ".Lck_e17: mov edi, 17",
        "jmp .Lck_exit",
        ".Lck_e18: mov edi, 18",
        "jmp .Lck_exit",
        ".Lck_e19: mov edi, 19",
        "jmp .Lck_exit",
        ".Lck_e20: mov edi, 20",
        "jmp .Lck_exit",
        ".Lck_e21: mov edi, 21",
        "jmp .Lck_exit",
        ".Lck_e22: mov edi, 22",
        "jmp .Lck_exit",
        ".Lck_e23: mov edi, 23",
        "jmp .Lck_exit",
        ".Lck_e24: mov edi, 24",
        ".Lck_exit:",
        "mov eax, 231",
        "syscall",
        "ud2",
        ".balign 8",
        ".globl cryo_blob_ck_table",
        "cryo_blob_ck_table:",
        ".Lck_table:",
        ".zero 160",
        ".globl cryo_blob_ck_end",
        "cryo_blob_ck_end:",
        ".popsection",
    );

    /// Offsets in the checker's table.
    mod tbl {
        pub const RAX: usize = 0;
        pub const RBX: usize = 8;
        pub const RDI: usize = 16;
        pub const RSI: usize = 24;
        pub const R8: usize = 32;
        pub const R12: usize = 40;
        pub const R13: usize = 48;
        pub const R15: usize = 56;
        pub const RBP: usize = 64;
        pub const RSP: usize = 72;
        pub const XMM0: usize = 80;
        pub const YMM_CHECK: usize = 88;
        pub const YMM0_HI: usize = 96;
        pub const MASK: usize = 104;
        pub const FS: usize = 112;
        pub const SIGNO: usize = 120;
        pub const SIVAL: usize = 128;
        pub const VDSO: usize = 136;
        pub const GS: usize = 144;
        pub const PENDING: usize = 152;
    }

    extern "C" {
        static cryo_blob_ck_start: u8;
        static cryo_blob_ck_table: u8;
        static cryo_blob_ck_end: u8;
    }

    /// The checker's bytes and the offset of its table in them.
    fn checker() -> (Vec<u8>, usize) {
        let s = &raw const cryo_blob_ck_start as usize;
        let t = &raw const cryo_blob_ck_table as usize;
        let e = &raw const cryo_blob_ck_end as usize;
        // SAFETY: the labels delimit one contiguous block in .rodata.
        let code = unsafe { std::slice::from_raw_parts(s as *const u8, e - s) }.to_vec();
        (code, t - s)
    }

    /// `prctl(PR_GET_SECUREBITS)`, then `exit_group(result)`.
    const SECBITS_EXIT: [u8; 19] = [
        0xbf, 0x1b, 0x00, 0x00, 0x00, // mov edi, 27
        0xb8, 0x9d, 0x00, 0x00, 0x00, // mov eax, 157
        0x0f, 0x05, // syscall
        0x89, 0xc7, // mov edi, eax
        0xb8, 0xe7, 0x00, 0x00, 0x00, // mov eax, 231
    ];

    /// An anonymous private mapping owned by the test (parent side).
    struct Map {
        addr: u64,
        len: usize,
    }

    impl Map {
        fn anon(len: usize) -> Map {
            // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Map { addr: p as u64, len }
        }

        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: the mapping is ours, readable and writable (until
            // `protect`), and `&mut self` makes the borrow exclusive.
            unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
        }

        fn protect(&self, prot: i32) {
            // SAFETY: changes the protection of our own mapping only.
            let r = unsafe { libc::mprotect(self.addr as *mut libc::c_void, self.len, prot) };
            assert_eq!(r, 0);
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            // SAFETY: unmapping our own mapping; no borrows outlive `self`.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into `fds`.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are fresh and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Exit {
        Code(i32),
        Signal(i32),
    }

    /// A forked child running the blob, with the engine's ends of the pipes.
    struct Child {
        pid: libc::pid_t,
        ready: File,
        go: Option<File>,
        reaped: bool,
    }

    impl Child {
        fn report(&mut self) -> Option<Report> {
            let mut b = [0u8; 8];
            self.ready.read_exact(&mut b).ok()?;
            Some(Report {
                step: u32::from_le_bytes(b[..4].try_into().unwrap()),
                errno: i32::from_le_bytes(b[4..].try_into().unwrap()),
            })
        }

        fn go(&mut self) {
            self.go.as_mut().unwrap().write_all(&[1]).unwrap();
        }

        fn give_up(&mut self) {
            self.go = None;
        }

        fn wait(&mut self) -> Exit {
            let mut st = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut st, 0) };
            assert_eq!(r, self.pid);
            self.reaped = true;
            if libc::WIFEXITED(st) {
                Exit::Code(libc::WEXITSTATUS(st))
            } else {
                Exit::Signal(libc::WTERMSIG(st))
            }
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            if !self.reaped {
                // SAFETY: kills and reaps our own child.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, std::ptr::null_mut(), 0);
                }
            }
        }
    }

    /// Places the blob for `plan` (with fresh sync pipes) at `base`, lets
    /// `tweak` edit the prepared area, forks, and jumps in the child.
    fn spawn(plan: &mut BlobPlan, base: u64, tweak: impl FnOnce(&mut PreparedBlob)) -> Child {
        let (ready_r, ready_w) = pipe();
        let (go_r, go_w) = pipe();
        plan.ready_fd = ready_w.as_raw_fd();
        plan.go_fd = go_r.as_raw_fd();
        let mut p = place(plan, base).expect("place the blob");
        tweak(&mut p);
        let (rr, gw) = (ready_r.as_raw_fd(), go_w.as_raw_fd());
        // SAFETY: everything was prepared before the fork; the child only
        // closes two fds and calls `jump`, all async-signal-safe, in a
        // process that has a single thread after the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::close(rr);
                libc::close(gw);
                jump(p)
            }
        }
        drop(p);
        drop(ready_w);
        drop(go_r);
        Child {
            pid,
            ready: File::from(ready_r),
            go: Some(File::from(go_w)),
            reaped: false,
        }
    }

    /// Runs `f` on a child stopped under ptrace right after fork.
    fn with_stopped_child<R>(f: impl FnOnce(libc::pid_t) -> R) -> R {
        // SAFETY: the child only makes async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::kill(libc::getpid(), libc::SIGSTOP);
                libc::_exit(0);
            }
        }
        let mut st = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(libc::WIFSTOPPED(st));
        let r = f(pid);
        // SAFETY: kills and reaps our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        r
    }

    fn ptrace_xstate(pid: libc::pid_t) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: the kernel writes at most `iov_len` bytes into `buf`.
        let r = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, pid, NT_X86_XSTATE, &mut iov as *mut libc::iovec) };
        assert_eq!(r, 0, "PTRACE_GETREGSET(NT_X86_XSTATE)");
        buf.truncate(iov.iov_len);
        buf
    }

    /// Offset of the AVX (upper ymm halves) component in the standard
    /// XSAVE layout, if the OS enabled it.
    fn ymm_offset() -> Option<usize> {
        if xcr0() & 0b100 == 0 {
            return None;
        }
        // CPUID leaf 0xD, sub-leaf 2: ebx = offset of the AVX state.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is always available on x86_64.
        let r = unsafe { std::arch::x86_64::__cpuid_count(0xd, 2) };
        Some(r.ebx as usize)
    }

    fn siginfo(signo: u32, value: u32) -> [u8; 128] {
        let mut info = [0u8; 128];
        info[0..4].copy_from_slice(&signo.to_le_bytes());
        info[8..12].copy_from_slice(&SI_QUEUE.to_le_bytes());
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        info[16..20].copy_from_slice(&pid.to_le_bytes());
        info[24..28].copy_from_slice(&value.to_le_bytes());
        info
    }

    /// `(start, end)` of the first mapping named `name` in /proc/self/maps.
    fn self_mapping(name: &str) -> (u64, u64) {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.split_whitespace().nth(5) == Some(name))
            .unwrap();
        parse_range(line)
    }

    fn parse_range(line: &str) -> (u64, u64) {
        let r = line.split_whitespace().next().unwrap();
        let (a, b) = r.split_once('-').unwrap();
        (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap())
    }

    /// Fields of /proc/pid/stat, numbered as in proc(5) (index 1 = pid).
    fn stat_field(pid: libc::pid_t, n: usize) -> u64 {
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 2..];
        rest.split_whitespace().nth(n - 3).unwrap().parse().unwrap()
    }

    fn status_field(pid: libc::pid_t, key: &str) -> String {
        let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = s.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
        line[key.len() + 1..].split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn mm_for(code: u64, data: u64) -> PrctlMmMap {
        PrctlMmMap {
            start_code: code,
            end_code: code + PAGE,
            start_data: data,
            end_data: data + PAGE,
            start_brk: data + PAGE,
            brk: data + PAGE,
            start_stack: data + 0xf00,
            arg_start: data + 0x10,
            arg_end: data + 0x20,
            env_start: data + 0x20,
            env_end: data + 0x30,
            ..PrctlMmMap::default()
        }
    }

    /// A plan that moves `code` (staged) to `target` and runs it.
    fn tiny_plan(code: &[u8], target: u64) -> (BlobPlan, Map) {
        let mut stage = Map::anon(PAGE as usize);
        stage.bytes()[..code.len()].copy_from_slice(code);
        stage.protect(libc::PROT_READ | libc::PROT_EXEC);
        let plan = BlobPlan {
            moves: vec![VmaMove {
                src: stage.addr,
                dst: target,
                len: PAGE,
            }],
            mm: mm_for(target, target),
            regs: UserRegs {
                rip: target,
                rsp: target + PAGE,
                eflags: 0x202,
                ..UserRegs::default()
            },
            ..BlobPlan::default()
        };
        (plan, stage)
    }

    // -----------------------------------------------------------------------
    // Pure tests.

    #[test]
    fn merge_ranges_sorts_and_merges() {
        let r = |start, end| Range { start, end };
        let got = merge_ranges(vec![
            r(0x5000, 0x6000),
            r(0x1000, 0x2000),
            r(0x2000, 0x3000),
            r(0x9000, 0x9000),
            r(0x5800, 0x7000),
            r(0x8000, 0x9000),
        ]);
        assert_eq!(got, vec![r(0x1000, 0x3000), r(0x5000, 0x7000), r(0x8000, 0x9000)]);
    }

    fn read<T: Copy>(buf: &[u8], off: usize) -> T {
        assert!(off + size_of::<T>() <= buf.len());
        // SAFETY: in bounds; read_unaligned has no alignment requirement and
        // the bytes were written as a T by `build`.
        unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off) as *const T) }
    }

    #[test]
    fn build_lays_out_args_frame_and_xsave() {
        let base = 0x7000_0000_0000;
        let mut xsave = vec![0u8; 1000];
        xsave[160] = 0x5a;
        let plan = BlobPlan {
            moves: vec![
                VmaMove {
                    src: 0x4000_0000,
                    dst: 0x1000_0000,
                    len: 0x2000,
                },
                VmaMove {
                    src: 0x4000_2000,
                    dst: 0x2000_0000,
                    len: 0x1000,
                },
            ],
            keep_extra: vec![Range {
                start: 0x9000_0000,
                end: 0x9000_1000,
            }],
            auxv: vec![6, 4096, 0, 0],
            groups: vec![7, 8, 9],
            regs: UserRegs {
                rip: 0x1234,
                rsp: 0x5678,
                rax: 0xaa,
                r15: 0xff,
                fs_base: 0xf5,
                ..UserRegs::default()
            },
            xsave: Some(xsave),
            sigmask: 0x800,
            exe_fd: 9,
            ..BlobPlan::default()
        };
        let (img, lay) = build(&plan, base).unwrap();
        assert_eq!(img.len(), area_size(&plan));
        assert_eq!(img.len() % PAGE as usize, 0);
        assert_eq!(&img[..BLOB.len()], BLOB);

        let a: Args = read(&img, lay.args);
        assert_eq!(
            (a.magic, a.version, a.size),
            (abi::ARGS_MAGIC, abi::ARGS_VERSION, size_of::<Args>() as u64)
        );
        let keep: Vec<Range> = (0..a.nr_keep as usize)
            .map(|i| read(&img, (a.keep - base) as usize + i * 16))
            .collect();
        let area = Range {
            start: base,
            end: base + img.len() as u64,
        };
        assert_eq!(
            keep,
            vec![
                Range {
                    start: 0x4000_0000,
                    end: 0x4000_3000
                },
                Range {
                    start: 0x9000_0000,
                    end: 0x9000_1000
                },
                area
            ]
        );
        assert_eq!(a.mm.auxv, a.auxv);
        assert_eq!(a.mm.auxv_size, 32);
        assert_eq!(a.mm.exe_fd, 9);
        assert_eq!(read::<u64>(&img, (a.auxv - base) as usize + 8), 4096);
        assert_eq!(a.creds.ngroups, 3);
        assert_eq!(read::<u32>(&img, (a.creds.groups - base) as usize + 8), 9);
        assert_eq!(a.thread.fs_base, 0xf5);

        // rsp for rt_sigreturn: 16-byte aligned, frame (pretcode) 8 below.
        assert_eq!(a.thread.frame % 16, 0);
        assert_eq!(a.thread.frame, base + lay.frame as u64 + 8);
        let f: RtSigframe = read(&img, lay.frame);
        assert_eq!(f.uc.uc_flags, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
        let sc = f.uc.uc_mcontext;
        assert_eq!((sc.rip, sc.rsp, sc.rax, sc.r15), (0x1234, 0x5678, 0xaa, 0xff));
        assert_eq!((sc.cs, sc.ss), (0x33, 0x2b));
        assert_eq!(f.uc.uc_sigmask, 0x800);
        assert_eq!(f.uc.uc_stack.ss_flags, SS_DISABLE);

        // fpstate: 64-byte aligned copy with sw bytes and magic2.
        assert_eq!(sc.fpstate % 64, 0);
        let fp = (sc.fpstate - base) as usize;
        assert!(fp >= lay.frame + size_of::<RtSigframe>());
        assert_eq!(img[fp + 160], 0x5a);
        assert_eq!(rd32(&img, fp + SW_BYTES), FP_XSTATE_MAGIC1);
        assert_eq!(rd32(&img, fp + SW_BYTES + 4), 1004);
        assert_eq!(rd32(&img, fp + SW_BYTES + 16), 1000);
        assert_eq!(rd32(&img, fp + 1000), FP_XSTATE_MAGIC2);
        // The stack sits above everything else.
        assert!(lay.leader_top - STACK_SIZE >= fp + 1004);
    }

    #[test]
    fn build_without_xsave_resets_the_fpu() {
        let plan = BlobPlan::default();
        let (img, lay) = build(&plan, 0x7000_0000_0000).unwrap();
        let f: RtSigframe = read(&img, lay.frame);
        assert_eq!(f.uc.uc_mcontext.fpstate, 0);
        assert_eq!(f.uc.uc_flags, UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    }

    #[test]
    fn build_rejects_bad_layouts() {
        let base = 0x7000_0000_0000;
        let mut plan = BlobPlan::default();
        assert!(matches!(build(&plan, base + 1), Err(BlobError::Base { .. })));
        plan.moves = vec![VmaMove {
            src: 0x4000_0000,
            dst: base,
            len: 0x1000,
        }];
        assert!(matches!(build(&plan, base), Err(BlobError::Overlap { .. })));
        plan.moves = vec![VmaMove {
            src: 0x4000_0000,
            dst: 0x5000_0100,
            len: 0x1000,
        }];
        assert!(matches!(build(&plan, base), Err(BlobError::BadRange { .. })));
        plan.moves = vec![];
        plan.xsave = Some(vec![0; 512]);
        assert!(matches!(build(&plan, base), Err(BlobError::Xsave { len: 512 })));
    }

    #[test]
    fn prepare_xsave_writes_the_sigframe_descriptor() {
        let mut img = vec![0u8; 832];
        img[SW_BYTES..SW_BYTES + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        img[SW_BYTES + 4..SW_BYTES + 8].copy_from_slice(&836u32.to_le_bytes());
        img[SW_BYTES + 8..SW_BYTES + 16].copy_from_slice(&0x7u64.to_le_bytes());
        img[SW_BYTES + 16..SW_BYTES + 20].copy_from_slice(&832u32.to_le_bytes());
        let out = prepare_xsave(&img).unwrap();
        assert_eq!(&out[..832], &img[..]);
        assert_eq!(rd32(&out, 832), FP_XSTATE_MAGIC2);

        // ptrace's convention (features in the first word) is rebuilt.
        img[SW_BYTES..512].fill(0);
        img[SW_BYTES..SW_BYTES + 8].copy_from_slice(&0x207u64.to_le_bytes());
        let out = prepare_xsave(&img).unwrap();
        assert_eq!(rd32(&out, SW_BYTES), FP_XSTATE_MAGIC1);
        assert_eq!(rd32(&out, SW_BYTES + 4), 836);
        assert_eq!(rd64(&out, SW_BYTES + 8), 0x207);
        assert_eq!(rd32(&out, SW_BYTES + 16), 832);

        // No features given: XCR0.
        img[SW_BYTES..512].fill(0);
        assert_eq!(rd64(&prepare_xsave(&img).unwrap(), SW_BYTES + 8), xcr0());
    }

    // -----------------------------------------------------------------------
    // Tests against the kernel.

    #[test]
    fn engine_rseq_matches_the_kernel() {
        let _g = lock();
        let mine = engine_rseq();
        if mine.ptr == 0 {
            eprintln!("skipped: glibc registered no rseq");
            return;
        }
        // A forked child keeps the registration of the forking thread.
        let conf = with_stopped_child(|pid| {
            let mut conf = [0u8; 24];
            // SAFETY: the kernel writes at most 24 bytes (the size passed).
            let r = unsafe { libc::ptrace(PTRACE_GET_RSEQ_CONFIGURATION, pid, 24usize, conf.as_mut_ptr()) };
            assert_eq!(r, 24);
            conf
        });
        assert_eq!(rd64(&conf, 0), mine.ptr);
        assert_eq!(rd32(&conf, 8), mine.len);
        assert_eq!(rd32(&conf, 12), mine.sig);
    }

    #[test]
    fn ptrace_xstate_gets_a_sigframe_descriptor() {
        let _g = lock();
        let img = with_stopped_child(ptrace_xstate);
        let len = img.len() as u32;
        // What ptrace leaves in sw_reserved: the user XCR0 in the first
        // word, zeros after it; no signal-frame descriptor.
        assert_eq!(rd64(&img, SW_BYTES), xcr0());
        assert!(img[SW_BYTES + 8..512].iter().all(|&b| b == 0));
        let out = prepare_xsave(&img).unwrap();
        assert_eq!(rd32(&out, SW_BYTES), FP_XSTATE_MAGIC1);
        assert_eq!(rd32(&out, SW_BYTES + 4), len + 4);
        assert_eq!(rd64(&out, SW_BYTES + 8), xcr0());
        assert_eq!(rd32(&out, SW_BYTES + 16), len);
        assert_eq!(rd32(&out, img.len()), FP_XSTATE_MAGIC2);
        assert_eq!(&out[..SW_BYTES], &img[..SW_BYTES]);
        assert_eq!(&out[512..img.len()], &img[512..]);
    }

    #[test]
    fn restores_registers_xsave_mm_vdso_and_signals() {
        require_root!();
        let _g = lock();
        const BASE: u64 = 0x10_0000_0000;
        const CODE: u64 = 0x20_0000_0000;
        const DATA: u64 = 0x20_0001_0000;
        const VVAR: u64 = 0x30_0000_0000;
        const XMM0: u64 = 0x1122_3344_5566_7788;
        const YMM0_HI: u64 = 0x99aa_bbcc_ddee_ff00;
        const SIVAL: u32 = 0x1234_abcd;

        // A real XSAVE layout from the kernel, with known xmm0/ymm0 values.
        let mut xsave = with_stopped_child(ptrace_xstate);
        xsave[160..168].copy_from_slice(&XMM0.to_le_bytes());
        let mut xstate_bv = rd64(&xsave, 512) | 0b10;
        let ymm = ymm_offset();
        if let Some(o) = ymm {
            xsave[o..o + 8].copy_from_slice(&YMM0_HI.to_le_bytes());
            xstate_bv |= 0b100;
        }
        xsave[512..520].copy_from_slice(&xstate_bv.to_le_bytes());

        let (vvar, _) = self_mapping("[vvar]");
        let (vdso, vdso_end) = self_mapping("[vdso]");
        let regs = UserRegs {
            rax: 0xa0a0_0000_0000_00a0,
            rbx: 0xb0b0_0000_0000_00b0,
            rdi: 0xd1d1_0000_0000_00d1,
            rsi: 0x5151_0000_0000_0051,
            r8: 0x0808_0000_0000_0008,
            r12: 0x1212_0000_0000_0012,
            r13: 0x1313_0000_0000_0013,
            r15: 0x1515_0000_0000_0015,
            rbp: 0xbebe_0000_0000_00be,
            rsp: DATA + 0xf00,
            rip: CODE,
            eflags: 0x202,
            fs_base: DATA + 0x100,
            gs_base: DATA + 0x200,
            ..UserRegs::default()
        };
        let sigmask = bit(SIGUSR2) | bit(SIGWINCH);

        let (code, table) = checker();
        let mut code_stage = Map::anon(PAGE as usize);
        {
            let b = code_stage.bytes();
            b[..code.len()].copy_from_slice(&code);
            let mut set = |off: usize, v: u64| b[table + off..table + off + 8].copy_from_slice(&v.to_le_bytes());
            set(tbl::RAX, regs.rax);
            set(tbl::RBX, regs.rbx);
            set(tbl::RDI, regs.rdi);
            set(tbl::RSI, regs.rsi);
            set(tbl::R8, regs.r8);
            set(tbl::R12, regs.r12);
            set(tbl::R13, regs.r13);
            set(tbl::R15, regs.r15);
            set(tbl::RBP, regs.rbp);
            set(tbl::RSP, regs.rsp);
            set(tbl::XMM0, XMM0);
            set(tbl::YMM_CHECK, ymm.is_some() as u64);
            set(tbl::YMM0_HI, YMM0_HI);
            set(tbl::MASK, sigmask);
            set(tbl::FS, regs.fs_base);
            set(tbl::GS, regs.gs_base);
            set(tbl::SIGNO, SIGUSR2 as u64);
            set(tbl::SIVAL, SIVAL as u64);
            set(tbl::PENDING, bit(SIGWINCH));
            set(tbl::VDSO, VVAR + (vdso - vvar));
        }
        code_stage.protect(libc::PROT_READ | libc::PROT_EXEC);
        let data_stage = Map::anon(PAGE as usize);

        let exe = File::open("/bin/true").unwrap();
        let auxv = vec![9, CODE, 6, 4096, 0, 0];
        let mut sigactions = [KSigAction::default(); 64];
        sigactions[SIGUSR1 as usize - 1].handler = 1; // SIG_IGN
        let mut plan = BlobPlan {
            moves: vec![
                VmaMove {
                    src: code_stage.addr,
                    dst: CODE,
                    len: PAGE,
                },
                VmaMove {
                    src: data_stage.addr,
                    dst: DATA,
                    len: PAGE,
                },
            ],
            madvs: vec![Madvise {
                addr: DATA,
                len: PAGE,
                advice: libc::MADV_DONTDUMP as u64,
            }],
            vdso_vvar_start: VVAR,
            mm: mm_for(CODE, DATA),
            auxv: auxv.clone(),
            exe_fd: exe.as_raw_fd(),
            sigactions,
            sigaction_mask: bit(SIGUSR1),
            thread: ThreadState {
                clear_tid_addr: DATA + 0x800,
                ..ThreadState::default()
            },
            sigs: vec![
                QueuedSignal {
                    shared: 0,
                    tid: 0,
                    _pad: 0,
                    signo: SIGUSR2,
                    info: siginfo(SIGUSR2, SIVAL),
                },
                QueuedSignal {
                    shared: 1,
                    tid: 0,
                    _pad: 0,
                    signo: SIGWINCH,
                    info: siginfo(SIGWINCH, 0),
                },
            ],
            regs,
            xsave: Some(xsave),
            sigmask,
            ..BlobPlan::default()
        };
        let mut child = spawn(&mut plan, BASE, |_| {});
        let pid = child.pid;
        assert_eq!(
            child.report(),
            Some(Report {
                step: abi::step::READY,
                errno: 0
            })
        );

        // Parked before the go byte: inspect the new layout and mm fields.
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let (mut saw_code, mut saw_data, mut saw_vvar) = (false, false, false);
        for line in maps.lines() {
            let (start, end) = parse_range(line);
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = f.get(5).copied().unwrap_or("");
            match (start, name) {
                (BASE, "") => assert_eq!(f[1], "rwxp"),
                (CODE, "") => {
                    assert_eq!((end, f[1]), (CODE + PAGE, "r-xp"));
                    saw_code = true;
                }
                // /proc names the VMA holding mm->start_stack "[stack]".
                (DATA, "[stack]") => {
                    assert_eq!((end, f[1]), (DATA + PAGE, "rw-p"));
                    saw_data = true;
                }
                (_, "[vvar]" | "[vvar_vclock]" | "[vdso]") => {
                    assert!(start >= VVAR && end <= VVAR + (vdso_end - vvar), "{line}");
                    saw_vvar |= name == "[vvar]" && start == VVAR;
                }
                (_, "[vsyscall]") => {}
                _ => panic!("unexpected mapping after the blob's unmap: {line}"),
            }
        }
        assert!(saw_code && saw_data && saw_vvar, "{maps}");
        let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let data_flags = smaps
            .split(&format!("{DATA:x}-"))
            .nth(1)
            .and_then(|s| s.lines().find(|l| l.starts_with("VmFlags:")))
            .unwrap();
        assert!(data_flags.contains(" dd"), "{data_flags}");
        let m = &plan.mm;
        assert_eq!(stat_field(pid, 26), m.start_code);
        assert_eq!(stat_field(pid, 27), m.end_code);
        assert_eq!(stat_field(pid, 28), m.start_stack);
        assert_eq!(stat_field(pid, 45), m.start_data);
        assert_eq!(stat_field(pid, 46), m.end_data);
        assert_eq!(stat_field(pid, 47), m.start_brk);
        assert_eq!(stat_field(pid, 48), m.arg_start);
        assert_eq!(stat_field(pid, 49), m.arg_end);
        assert_eq!(stat_field(pid, 50), m.env_start);
        assert_eq!(stat_field(pid, 51), m.env_end);
        let got_auxv = fs::read(format!("/proc/{pid}/auxv")).unwrap();
        let want_auxv: Vec<u8> = auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(got_auxv, want_auxv);
        assert_eq!(
            fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
            fs::canonicalize("/bin/true").unwrap()
        );
        let exe_fd = exe.as_raw_fd();
        assert!(fs::symlink_metadata(format!("/proc/{pid}/fd/{exe_fd}")).is_err());

        child.go();
        assert_eq!(child.wait(), Exit::Code(42));
    }

    #[test]
    fn switches_credentials() {
        require_root!();
        let _g = lock();
        const BASE: u64 = 0x11_0000_0000;
        const CODE: u64 = 0x21_0000_0000;
        const SECBITS: u32 = 0x50; // KEEP_CAPS | NO_CAP_AMBIENT_RAISE
        let mut code = SECBITS_EXIT.to_vec();
        code.extend_from_slice(&[0x0f, 0x05]); // syscall
        let (mut plan, _stage) = tiny_plan(&code, CODE);
        let cap_last_cap = fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap();
        plan.creds = Creds {
            skip: 0,
            uid: 1000,
            euid: 1001,
            suid: 1002,
            fsuid: 1003,
            gid: 2000,
            egid: 2001,
            sgid: 2002,
            fsgid: 2003,
            secbits: SECBITS,
            no_new_privs: 1,
            cap_inh: [1 << 10, 0],
            cap_prm: [1 << 5 | 1 << 10, 0],
            cap_eff: [1 << 5, 0],
            cap_bnd: [0x1fff, 0],
            cap_amb: [1 << 10, 0],
            cap_last_cap: cap_last_cap.trim().parse().unwrap(),
            ..Creds::default()
        };
        plan.groups = vec![5, 6];
        let mut child = spawn(&mut plan, BASE, |_| {});
        let pid = child.pid;
        assert_eq!(
            child.report(),
            Some(Report {
                step: abi::step::READY,
                errno: 0
            })
        );
        assert_eq!(status_field(pid, "Uid"), "1000 1001 1002 1003");
        assert_eq!(status_field(pid, "Gid"), "2000 2001 2002 2003");
        assert_eq!(status_field(pid, "Groups"), "5 6");
        assert_eq!(status_field(pid, "CapInh"), "0000000000000400");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000420");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000020");
        assert_eq!(status_field(pid, "CapBnd"), "0000000000001fff");
        assert_eq!(status_field(pid, "CapAmb"), "0000000000000400");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        child.go();
        // The restored code exits with its securebits.
        assert_eq!(child.wait(), Exit::Code(SECBITS as i32));
    }

    #[test]
    fn reports_a_failed_move() {
        require_root!();
        let _g = lock();
        let mut plan = BlobPlan {
            moves: vec![VmaMove {
                src: 0x5f00_0000_0000,
                dst: 0x22_0000_0000,
                len: PAGE,
            }],
            ..BlobPlan::default()
        };
        let mut child = spawn(&mut plan, 0x12_0000_0000, |_| {});
        assert_eq!(
            child.report(),
            Some(Report {
                step: abi::step::MREMAP,
                errno: libc::EFAULT
            })
        );
        assert_eq!(child.report(), None);
        assert_eq!(child.wait(), Exit::Code(abi::EXIT_BLOB_FAILED));
    }

    #[test]
    fn rejects_a_bad_header() {
        require_root!();
        let _g = lock();
        let mut plan = BlobPlan::default();
        let mut child = spawn(&mut plan, 0x13_0000_0000, |p| p.args_mut().magic = 0);
        assert_eq!(
            child.report(),
            Some(Report {
                step: abi::step::HEADER,
                errno: libc::EINVAL
            })
        );
        assert_eq!(child.wait(), Exit::Code(abi::EXIT_BLOB_FAILED));
    }

    #[test]
    fn exits_when_the_engine_gives_up() {
        require_root!();
        let _g = lock();
        let mut code = SECBITS_EXIT.to_vec();
        code.extend_from_slice(&[0x0f, 0x05]);
        let (mut plan, _stage) = tiny_plan(&code, 0x24_0000_0000);
        let mut child = spawn(&mut plan, 0x14_0000_0000, |_| {});
        assert_eq!(
            child.report(),
            Some(Report {
                step: abi::step::READY,
                errno: 0
            })
        );
        child.give_up();
        assert_eq!(child.wait(), Exit::Code(1));
    }
}

/// Enters the blob from a restore task (see [`jump`]).
///
/// The two conditions of `jump` are checked here: a `PreparedBlob` can
/// only come from [`place`], and the calling process must have exactly one
/// thread: `threads` is the count the caller read from /proc (restore
/// tasks are forked with clone3 from the single-threaded engine, so this
/// holds).
pub fn enter(p: PreparedBlob, threads: usize) -> ! {
    if threads != 1 {
        crate::sys::rawfd::exit_now(cryo_restorer::abi::EXIT_BLOB_FAILED);
    }
    // SAFETY: single-threaded (counted by the caller in /proc before any
    // chroot) and `p` was built by `place` for this process's plan.
    unsafe { jump(p) }
}
