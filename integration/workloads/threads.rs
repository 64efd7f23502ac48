//! threads: every thread of a multi-threaded process keeps its own state.
//!
//! `threads --log F [--threads N] [--check LIST] [--corrupt]`
//!
//! N threads in all (default 8, the main thread included; 1 means the main
//! thread alone). Every thread i sets up state that differs from thread to
//! thread, then holds it in one asm block while it idles:
//! - `regs`: rbx, rbp, rdx, r8-r10, r13-r15 loaded with values of thread i;
//! - `fpu`: xmm0-15 (the full ymm0-15 when the CPU has AVX) and an MXCSR
//!   with a rounding mode / FTZ / DAZ of thread i;
//! - `tls`: a `thread_local` variable, fs_base (glibc's TLS pointer) and a
//!   gs_base set with arch_prctl(ARCH_SET_GS);
//! - `tid`: gettid() is the same after restore;
//! - `mask`: a blocked signal mask of thread i (workers block SIGUSR1);
//! - `altstack`: a sigaltstack of its own size (SS_AUTODISARM on odd i);
//! - `comm`: its name (PR_SET_NAME; also read from /proc/thread-self/comm);
//! - `robust`: its own robust futex list head (set/get_robust_list);
//! - `join`: pthread_timedjoin_np of each worker returns within 5 s, which
//!   needs the kernel's clear_child_tid futex wake (not in the default set
//!   of a single thread, which has nothing to join);
//! - `rseq` (not in the default set): glibc's rseq registration is still in
//!   place (re-registering the same area must fail with EBUSY).
//!
//! Each worker loads its registers and bumps a counter from inside the asm
//! block; when all are armed the main thread loads its own and writes
//! `READY <pid>` from inside its block with a raw write(2). Every thread
//! then loops on nanosleep (50 ms, GP registers it does not check only)
//! until SIGUSR1 sets the flag (the handler runs on the main thread: the
//! workers block SIGUSR1), stores the registers, and checks everything.
//! The main thread collects the problems of all threads, joins them and
//! writes `PASS threads=N ...` or `FAIL <check>: thread i: ...`.
//! `--corrupt` makes the last thread change each checked piece of its
//! state after the wake-up (a register, xmm5, TLS, mask, altstack, name,
//! robust list, rseq), to prove each check can fail.

use cryo_integration::probe::{self, Only, Problems};
use cryo_integration::wl::{self, Args, Log, Rng};
use std::arch::asm;
use std::cell::Cell;
use std::mem::offset_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const ALL: &[&str] = &[
    "regs", "fpu", "tls", "tid", "mask", "altstack", "comm", "robust", "join", "rseq",
];
const DEFAULT: &[&str] = &[
    "regs", "fpu", "tls", "tid", "mask", "altstack", "comm", "robust", "join",
];

const NGP: usize = 9;
const GP_NAMES: [&str; NGP] = ["rbx", "rbp", "rdx", "r8", "r9", "r10", "r13", "r14", "r15"];

#[repr(C, align(64))]
struct Block {
    want_x: [[u8; 32]; 16],
    got_x: [[u8; 32]; 16],
    want_g: [u64; NGP],
    got_g: [u64; NGP],
    want_mx: u32,
    got_mx: u32,
    saved_mx: u32,
    _pad: u32,
    saved_rbx: u64,
    saved_rbp: u64,
    flag: u64,
    armed: u64,
    corrupt: u64,
    ready_ptr: u64,
    ready_len: u64,
    log_fd: u64,
    ts: libc::timespec,
}

const WX: usize = offset_of!(Block, want_x);
const GX: usize = offset_of!(Block, got_x);
const WG: usize = offset_of!(Block, want_g);
const GG: usize = offset_of!(Block, got_g);
const WMX: usize = offset_of!(Block, want_mx);
const GMX: usize = offset_of!(Block, got_mx);
const SMX: usize = offset_of!(Block, saved_mx);
const SRBX: usize = offset_of!(Block, saved_rbx);
const SRBP: usize = offset_of!(Block, saved_rbp);
const FLAG: usize = offset_of!(Block, flag);
const ARMEDP: usize = offset_of!(Block, armed);
const CORRUPT: usize = offset_of!(Block, corrupt);
const RPTR: usize = offset_of!(Block, ready_ptr);
const RLEN: usize = offset_of!(Block, ready_len);
const LFD: usize = offset_of!(Block, log_fd);
const TS: usize = offset_of!(Block, ts);

/// Workers that have loaded their registers.
static ARMED: AtomicU64 = AtomicU64::new(0);
/// (thread index, problems) of every thread that finished its checks.
static RESULTS: Mutex<Vec<(usize, Vec<String>)>> = Mutex::new(Vec::new());

thread_local! {
    static TLSV: Cell<u64> = const { Cell::new(0) };
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: libc::c_uint;
}
const RSEQ_SIG: u64 = 0x5305_3053;

/// Holds the registers with SSE only (xmm0-15).
///
/// # Safety
/// `b` must point to a valid Block whose `flag`, `armed` and (if non-zero)
/// `ready_ptr` fields point to live memory.
unsafe fn hold_sse(b: *mut Block) {
    // SAFETY: every register the block changes is an output or clobber,
    // except rbx and rbp, which it saves first and puts back at the end;
    // all memory it touches is inside `*b` or pointed to by its fields.
    unsafe {
        asm!(
            "mov [r12 + {srbx}], rbx",
            "mov [r12 + {srbp}], rbp",
            "stmxcsr [r12 + {smx}]",
            "ldmxcsr [r12 + {wmx}]",
            "movdqu xmm0, [r12 + {wx} + 0]",
            "movdqu xmm1, [r12 + {wx} + 32]",
            "movdqu xmm2, [r12 + {wx} + 64]",
            "movdqu xmm3, [r12 + {wx} + 96]",
            "movdqu xmm4, [r12 + {wx} + 128]",
            "movdqu xmm5, [r12 + {wx} + 160]",
            "movdqu xmm6, [r12 + {wx} + 192]",
            "movdqu xmm7, [r12 + {wx} + 224]",
            "movdqu xmm8, [r12 + {wx} + 256]",
            "movdqu xmm9, [r12 + {wx} + 288]",
            "movdqu xmm10, [r12 + {wx} + 320]",
            "movdqu xmm11, [r12 + {wx} + 352]",
            "movdqu xmm12, [r12 + {wx} + 384]",
            "movdqu xmm13, [r12 + {wx} + 416]",
            "movdqu xmm14, [r12 + {wx} + 448]",
            "movdqu xmm15, [r12 + {wx} + 480]",
            "mov rbx, [r12 + {wg} + 0]",
            "mov rbp, [r12 + {wg} + 8]",
            "mov r8, [r12 + {wg} + 24]",
            "mov r9, [r12 + {wg} + 32]",
            "mov r10, [r12 + {wg} + 40]",
            "mov r13, [r12 + {wg} + 48]",
            "mov r14, [r12 + {wg} + 56]",
            "mov r15, [r12 + {wg} + 64]",
            "mov rax, [r12 + {armed}]",
            "lock inc qword ptr [rax]",
            // READY (main thread only): write(log_fd, ready_ptr, ready_len)
            "mov rsi, [r12 + {rptr}]",
            "test rsi, rsi",
            "jz 2f",
            "mov eax, 1",
            "mov rdi, [r12 + {lfd}]",
            "mov rdx, [r12 + {rlen}]",
            "syscall",
            "2:",
            "mov rdx, [r12 + {wg} + 16]",
            // Idle: nanosleep(ts, NULL) until the flag byte is set.
            "3:",
            "mov rax, [r12 + {flag}]",
            "movzx eax, byte ptr [rax]",
            "test eax, eax",
            "jnz 4f",
            "mov eax, 35",
            "lea rdi, [r12 + {ts}]",
            "xor esi, esi",
            "syscall",
            "jmp 3b",
            "4:",
            "mov rax, [r12 + {corrupt}]",
            "test rax, 1",
            "jz 5f",
            "not r14",
            "5:",
            "test rax, 2",
            "jz 6f",
            "pcmpeqd xmm5, xmm5",
            "6:",
            "stmxcsr [r12 + {gmx}]",
            "movdqu [r12 + {gx} + 0], xmm0",
            "movdqu [r12 + {gx} + 32], xmm1",
            "movdqu [r12 + {gx} + 64], xmm2",
            "movdqu [r12 + {gx} + 96], xmm3",
            "movdqu [r12 + {gx} + 128], xmm4",
            "movdqu [r12 + {gx} + 160], xmm5",
            "movdqu [r12 + {gx} + 192], xmm6",
            "movdqu [r12 + {gx} + 224], xmm7",
            "movdqu [r12 + {gx} + 256], xmm8",
            "movdqu [r12 + {gx} + 288], xmm9",
            "movdqu [r12 + {gx} + 320], xmm10",
            "movdqu [r12 + {gx} + 352], xmm11",
            "movdqu [r12 + {gx} + 384], xmm12",
            "movdqu [r12 + {gx} + 416], xmm13",
            "movdqu [r12 + {gx} + 448], xmm14",
            "movdqu [r12 + {gx} + 480], xmm15",
            "mov [r12 + {gg} + 0], rbx",
            "mov [r12 + {gg} + 8], rbp",
            "mov [r12 + {gg} + 16], rdx",
            "mov [r12 + {gg} + 24], r8",
            "mov [r12 + {gg} + 32], r9",
            "mov [r12 + {gg} + 40], r10",
            "mov [r12 + {gg} + 48], r13",
            "mov [r12 + {gg} + 56], r14",
            "mov [r12 + {gg} + 64], r15",
            "mov rbx, [r12 + {srbx}]",
            "mov rbp, [r12 + {srbp}]",
            "ldmxcsr [r12 + {smx}]",
            in("r12") b,
            srbx = const SRBX, srbp = const SRBP, smx = const SMX, wmx = const WMX, gmx = const GMX,
            wx = const WX, gx = const GX, wg = const WG, gg = const GG, armed = const ARMEDP,
            rptr = const RPTR, rlen = const RLEN, lfd = const LFD, flag = const FLAG, ts = const TS,
            corrupt = const CORRUPT,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _, out("r13") _, out("r14") _, out("r15") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
            out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        );
    }
}

/// As [`hold_sse`], with the full ymm0-15.
///
/// # Safety
/// As for [`hold_sse`]; the CPU must support AVX.
#[target_feature(enable = "avx")]
unsafe fn hold_avx(b: *mut Block) {
    // SAFETY: as in hold_sse; the caller checked AVX; vzeroupper at the end
    // leaves the upper halves clean for the compiled code.
    unsafe {
        asm!(
            "mov [r12 + {srbx}], rbx",
            "mov [r12 + {srbp}], rbp",
            "stmxcsr [r12 + {smx}]",
            "ldmxcsr [r12 + {wmx}]",
            "vmovdqu ymm0, [r12 + {wx} + 0]",
            "vmovdqu ymm1, [r12 + {wx} + 32]",
            "vmovdqu ymm2, [r12 + {wx} + 64]",
            "vmovdqu ymm3, [r12 + {wx} + 96]",
            "vmovdqu ymm4, [r12 + {wx} + 128]",
            "vmovdqu ymm5, [r12 + {wx} + 160]",
            "vmovdqu ymm6, [r12 + {wx} + 192]",
            "vmovdqu ymm7, [r12 + {wx} + 224]",
            "vmovdqu ymm8, [r12 + {wx} + 256]",
            "vmovdqu ymm9, [r12 + {wx} + 288]",
            "vmovdqu ymm10, [r12 + {wx} + 320]",
            "vmovdqu ymm11, [r12 + {wx} + 352]",
            "vmovdqu ymm12, [r12 + {wx} + 384]",
            "vmovdqu ymm13, [r12 + {wx} + 416]",
            "vmovdqu ymm14, [r12 + {wx} + 448]",
            "vmovdqu ymm15, [r12 + {wx} + 480]",
            "mov rbx, [r12 + {wg} + 0]",
            "mov rbp, [r12 + {wg} + 8]",
            "mov r8, [r12 + {wg} + 24]",
            "mov r9, [r12 + {wg} + 32]",
            "mov r10, [r12 + {wg} + 40]",
            "mov r13, [r12 + {wg} + 48]",
            "mov r14, [r12 + {wg} + 56]",
            "mov r15, [r12 + {wg} + 64]",
            "mov rax, [r12 + {armed}]",
            "lock inc qword ptr [rax]",
            "mov rsi, [r12 + {rptr}]",
            "test rsi, rsi",
            "jz 2f",
            "mov eax, 1",
            "mov rdi, [r12 + {lfd}]",
            "mov rdx, [r12 + {rlen}]",
            "syscall",
            "2:",
            "mov rdx, [r12 + {wg} + 16]",
            "3:",
            "mov rax, [r12 + {flag}]",
            "movzx eax, byte ptr [rax]",
            "test eax, eax",
            "jnz 4f",
            "mov eax, 35",
            "lea rdi, [r12 + {ts}]",
            "xor esi, esi",
            "syscall",
            "jmp 3b",
            "4:",
            "mov rax, [r12 + {corrupt}]",
            "test rax, 1",
            "jz 5f",
            "not r14",
            "5:",
            "test rax, 2",
            "jz 6f",
            "vpcmpeqd ymm5, ymm5, ymm5",
            "6:",
            "stmxcsr [r12 + {gmx}]",
            "vmovdqu [r12 + {gx} + 0], ymm0",
            "vmovdqu [r12 + {gx} + 32], ymm1",
            "vmovdqu [r12 + {gx} + 64], ymm2",
            "vmovdqu [r12 + {gx} + 96], ymm3",
            "vmovdqu [r12 + {gx} + 128], ymm4",
            "vmovdqu [r12 + {gx} + 160], ymm5",
            "vmovdqu [r12 + {gx} + 192], ymm6",
            "vmovdqu [r12 + {gx} + 224], ymm7",
            "vmovdqu [r12 + {gx} + 256], ymm8",
            "vmovdqu [r12 + {gx} + 288], ymm9",
            "vmovdqu [r12 + {gx} + 320], ymm10",
            "vmovdqu [r12 + {gx} + 352], ymm11",
            "vmovdqu [r12 + {gx} + 384], ymm12",
            "vmovdqu [r12 + {gx} + 416], ymm13",
            "vmovdqu [r12 + {gx} + 448], ymm14",
            "vmovdqu [r12 + {gx} + 480], ymm15",
            "mov [r12 + {gg} + 0], rbx",
            "mov [r12 + {gg} + 8], rbp",
            "mov [r12 + {gg} + 16], rdx",
            "mov [r12 + {gg} + 24], r8",
            "mov [r12 + {gg} + 32], r9",
            "mov [r12 + {gg} + 40], r10",
            "mov [r12 + {gg} + 48], r13",
            "mov [r12 + {gg} + 56], r14",
            "mov [r12 + {gg} + 64], r15",
            "mov rbx, [r12 + {srbx}]",
            "mov rbp, [r12 + {srbp}]",
            "vzeroupper",
            "ldmxcsr [r12 + {smx}]",
            in("r12") b,
            srbx = const SRBX, srbp = const SRBP, smx = const SMX, wmx = const WMX, gmx = const GMX,
            wx = const WX, gx = const GX, wg = const WG, gg = const GG, armed = const ARMEDP,
            rptr = const RPTR, rlen = const RLEN, lfd = const LFD, flag = const FLAG, ts = const TS,
            corrupt = const CORRUPT,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _, out("r13") _, out("r14") _, out("r15") _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
            out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
}

/// The blocked mask of thread `i`: a pattern of real-time signals from the
/// bits of i, SIGWINCH/SIGPIPE by i mod 3, and SIGUSR1 for every worker.
fn mask_for(i: usize) -> u64 {
    let mut m = 0u64;
    for b in 0..7 {
        if (i >> b) & 1 != 0 {
            m |= probe::sigbit(probe::sigrtmin() + 2 + b);
        }
    }
    match i % 3 {
        0 => m |= probe::sigbit(libc::SIGWINCH),
        1 => m |= probe::sigbit(libc::SIGPIPE),
        _ => {}
    }
    if i != 0 {
        m |= probe::sigbit(libc::SIGUSR1);
    }
    m
}

fn mxcsr_for(i: usize) -> u32 {
    let mut mx = 0x1f80 | (((i % 4) as u32) << 13);
    if i % 2 == 1 {
        mx |= 0x8000;
    }
    if i.is_multiple_of(3) {
        mx |= 0x40;
    }
    mx
}

fn comm_of(i: usize) -> String {
    format!("cw{i:02}-{}", wl::getpid() % 10000)
}

fn get_comm() -> String {
    let mut b = [0u8; 17];
    let _ = probe::prctl(libc::PR_GET_NAME, b.as_mut_ptr() as u64, 0, 0, 0);
    let n = b.iter().position(|&c| c == 0).unwrap_or(16);
    String::from_utf8_lossy(&b[..n]).into_owned()
}

fn set_comm(name: &str) {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    if probe::prctl(libc::PR_SET_NAME, b.as_ptr() as u64, 0, 0, 0).is_err() {
        wl::die("PR_SET_NAME");
    }
}

fn get_robust() -> (u64, u64) {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    let _ = probe::sys(
        libc::SYS_get_robust_list,
        [0, &mut head as *mut u64 as u64, &mut len as *mut u64 as u64, 0, 0, 0],
    );
    (head, len)
}

/// A leaked, empty robust list head (next points to itself).
fn new_robust_head(futex_offset: i64) -> u64 {
    let head: &'static mut [u64; 3] = Box::leak(Box::new([0u64; 3]));
    head[0] = head.as_ptr() as u64;
    head[1] = futex_offset as u64;
    head[0]
}

fn set_robust(head: u64) {
    if probe::sys(libc::SYS_set_robust_list, [head, 24, 0, 0, 0, 0]).is_err() {
        wl::die("set_robust_list");
    }
}

/// glibc's rseq area of the calling thread and the size glibc registered.
fn rseq_area() -> Option<(u64, u64)> {
    // SAFETY: glibc (2.35+) exports these two constants; reading them has
    // no side effects.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return None;
    }
    Some((
        (probe::arch_get(probe::ARCH_GET_FS) as i64 + off as i64) as u64,
        size as u64,
    ))
}

/// Ok if this thread's rseq registration is in place: registering the same
/// area again must fail with EBUSY.
fn rseq_registered() -> Result<(), String> {
    let Some((area, size)) = rseq_area() else {
        return Err("glibc registered no rseq area (__rseq_size is 0)".into());
    };
    let mut errs = Vec::new();
    for len in [size, 32] {
        match probe::sys(libc::SYS_rseq, [area, len, 0, RSEQ_SIG, 0, 0]) {
            Err(libc::EBUSY) => return Ok(()),
            Ok(_) => {
                return Err(format!(
                    "no rseq registration: the kernel accepted a new one for {area:#x} (len {len})"
                ))
            }
            Err(e) => errs.push(format!("len {len}: errno {e}")),
        }
    }
    Err(format!("rseq probe of {area:#x} failed ({})", errs.join(", ")))
}

struct Ctx {
    n: usize,
    only: Only,
    corrupt: bool,
    avx: bool,
    log_fd: i32,
}

/// Sets up thread `i`, holds its registers until SIGUSR1, checks.
fn thread_main(i: usize, ctx: &Ctx, log: &Log) -> Vec<String> {
    let tid = probe::gettid();
    let name = comm_of(i);
    set_comm(&name);
    let mask = mask_for(i);
    probe::sigprocmask(libc::SIG_SETMASK, Some(mask));
    let ss_size = 64 * 1024 + i * 4096;
    let ss_sp = probe::mmap_anon(0, ss_size, libc::PROT_READ | libc::PROT_WRITE, 0) as u64;
    let ss_flags = if i % 2 == 1 { probe::SS_AUTODISARM } else { 0 };
    probe::set_altstack(ss_sp, ss_size, ss_flags);
    let robust = new_robust_head(-16 - i as i64);
    set_robust(robust);
    let tls = 0xC0FF_EE00_0000 + i as u64;
    TLSV.with(|v| v.set(tls));
    let gs = 0x7e57_0000_0000 + (i as u64) * 0x1000;
    probe::set_gs(gs);
    let fs = probe::arch_get(probe::ARCH_GET_FS);
    if ctx.only.has("rseq") {
        if let Err(e) = rseq_registered() {
            wl::die(&format!("thread {i}: before the checkpoint: {e}"));
        }
    }

    let mut rng = Rng::new(0x7000 + i as u64);
    let mut b: Box<Block> = Box::new(Block {
        want_x: [[0; 32]; 16],
        got_x: [[0; 32]; 16],
        want_g: [0; NGP],
        got_g: [0; NGP],
        want_mx: mxcsr_for(i),
        got_mx: 0,
        saved_mx: 0,
        _pad: 0,
        saved_rbx: 0,
        saved_rbp: 0,
        flag: &wl::USR1 as *const _ as u64,
        armed: &ARMED as *const _ as u64,
        corrupt: 0,
        ready_ptr: 0,
        ready_len: 0,
        log_fd: ctx.log_fd as u64,
        ts: libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        },
    });
    for r in b.want_x.iter_mut() {
        for c in r.chunks_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
    }
    for g in b.want_g.iter_mut() {
        *g = rng.next_u64();
    }
    let last = i == ctx.n - 1;
    if ctx.corrupt && last {
        b.corrupt = u64::from(ctx.only.has("regs")) | (u64::from(ctx.only.has("fpu")) << 1);
    }
    let ready = format!("READY {}\n", wl::getpid());
    if i == 0 {
        b.ready_ptr = ready.as_ptr() as u64;
        b.ready_len = ready.len() as u64;
    }
    log.line(&format!(
        "THREAD {i} tid={tid} comm={name} mask={:#x} altstack={ss_sp:#x}+{ss_size:#x} robust={robust:#x}",
        mask
    ));
    let bp: *mut Block = &mut *b;
    if ctx.avx {
        // SAFETY: AVX was detected; `bp` points to the live Block, whose
        // pointers (flag, armed, ready) stay valid during the call.
        unsafe { hold_avx(bp) };
    } else {
        // SAFETY: as above.
        unsafe { hold_sse(bp) };
    }

    if ctx.corrupt && last {
        TLSV.with(|v| v.set(v.get() + 1));
        probe::sigprocmask(libc::SIG_BLOCK, Some(probe::sigbit(libc::SIGURG)));
        probe::set_altstack(ss_sp, ss_size - 4096, ss_flags);
        set_comm("corrupted");
        set_robust(new_robust_head(-8));
        if let Some((area, size)) = rseq_area() {
            // RSEQ_FLAG_UNREGISTER, with glibc's size or the 32 it may have used.
            for len in [size, 32] {
                if probe::sys(libc::SYS_rseq, [area, len, 1, RSEQ_SIG, 0, 0]).is_ok() {
                    break;
                }
            }
        }
    }

    let mut p = Problems::new();
    let who = format!("thread {i} (tid {tid})");
    if ctx.only.has("regs") {
        for (k, nm) in GP_NAMES.iter().enumerate() {
            if b.got_g[k] != b.want_g[k] {
                p.add(
                    "regs",
                    format!("{who}: {nm} is {:#x}, was {:#x}", b.got_g[k], b.want_g[k]),
                );
            }
        }
    }
    if ctx.only.has("fpu") {
        let w = if ctx.avx { 32 } else { 16 };
        for r in 0..16 {
            if b.got_x[r][..w] != b.want_x[r][..w] {
                p.add(
                    "fpu",
                    format!("{who}: {}mm{r} differs", if ctx.avx { 'y' } else { 'x' }),
                );
            }
        }
        if b.got_mx & 0xffc0 != b.want_mx & 0xffc0 {
            p.add("fpu", format!("{who}: mxcsr is {:#x}, was {:#x}", b.got_mx, b.want_mx));
        }
    }
    if ctx.only.has("tls") {
        p.eq(
            "tls",
            &format!("{who}: thread_local value"),
            TLSV.with(|v| v.get()),
            tls,
        );
        p.eq(
            "tls",
            &format!("{who}: fs_base"),
            probe::arch_get(probe::ARCH_GET_FS),
            fs,
        );
        p.eq(
            "tls",
            &format!("{who}: gs_base"),
            probe::arch_get(probe::ARCH_GET_GS),
            gs,
        );
    }
    if ctx.only.has("tid") {
        p.eq("tid", &format!("thread {i}: gettid"), probe::gettid(), tid);
    }
    if ctx.only.has("mask") {
        let now = probe::blocked_mask();
        if now != mask {
            p.add(
                "mask",
                format!(
                    "{who}: blocked {:?}, was {:?}",
                    probe::sigset_list(now),
                    probe::sigset_list(mask)
                ),
            );
        }
    }
    if ctx.only.has("altstack") {
        p.eq(
            "altstack",
            &format!("{who}: (sp, flags, size)"),
            probe::get_altstack(),
            (ss_sp, ss_flags, ss_size),
        );
    }
    if ctx.only.has("comm") {
        p.eq("comm", &format!("{who}: PR_GET_NAME"), get_comm(), name.clone());
        let proc_comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
        p.eq(
            "comm",
            &format!("{who}: /proc/thread-self/comm"),
            proc_comm.trim_end().to_string(),
            name,
        );
    }
    if ctx.only.has("robust") {
        p.eq(
            "robust",
            &format!("{who}: robust list (head, len)"),
            get_robust(),
            (robust, 24),
        );
    }
    if ctx.only.has("rseq") {
        if let Err(e) = rseq_registered() {
            p.add("rseq", format!("{who}: {e}"));
        }
    }
    p.v
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let n = args.num("threads", 8) as usize;
    if !(1..=256).contains(&n) {
        wl::die("--threads must be 1..=256");
    }
    let mut only = Only::from_args(&args, ALL, DEFAULT);
    if n == 1 {
        only.remove("join");
    }
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
        n,
        only,
        corrupt: args.flag("corrupt"),
        avx: is_x86_feature_detected!("avx"),
        log_fd: log.fd(),
    }));
    let log: &'static Log = Box::leak(Box::new(log));
    wl::install_usr1();

    let mut handles = Vec::new();
    for i in 1..n {
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let p = thread_main(i, ctx, log);
                RESULTS.lock().unwrap_or_else(|e| e.into_inner()).push((i, p));
            })
            .unwrap_or_else(|e| wl::die(&format!("spawn thread {i}: {e}")));
        handles.push(h);
    }
    let end = probe::mono_ns() + 20_000_000_000;
    while ARMED.load(Ordering::SeqCst) < (n - 1) as u64 {
        if probe::mono_ns() > end {
            wl::die(&format!(
                "only {} of {} workers armed",
                ARMED.load(Ordering::SeqCst),
                n - 1
            ));
        }
        wl::sleep_ms(5);
    }
    log.line(&format!(
        "THREADS {n} {} checks={}",
        if ctx.avx { "avx" } else { "sse" },
        ctx.only.list()
    ));

    let mut problems = thread_main(0, ctx, log);

    let end = probe::mono_ns() + 10_000_000_000;
    loop {
        let done = RESULTS.lock().unwrap_or_else(|e| e.into_inner()).len();
        if done == n - 1 {
            break;
        }
        if probe::mono_ns() > end {
            problems.push(format!(
                "threads: only {done} of {} workers woke up and reported",
                n - 1
            ));
            break;
        }
        wl::sleep_ms(5);
    }
    let mut results = std::mem::take(&mut *RESULTS.lock().unwrap_or_else(|e| e.into_inner()));
    results.sort_by_key(|r| r.0);
    for (_, p) in results {
        problems.extend(p);
    }
    if ctx.only.has("join") {
        use std::os::unix::thread::JoinHandleExt;
        for (k, h) in handles.into_iter().enumerate() {
            let pt = h.into_pthread_t();
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: `ts` is a valid out-pointer.
            unsafe {
                libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
            }
            ts.tv_sec += 5;
            // SAFETY: `pt` is a joinable thread of this process, joined once
            // (into_pthread_t gave up the JoinHandle without detaching).
            let r = unsafe { libc::pthread_timedjoin_np(pt as libc::pthread_t, std::ptr::null_mut(), &ts) };
            if r != 0 {
                problems.push(format!(
                    "join: thread {} did not become joinable within 5 s (error {r}; clear_child_tid not restored?)",
                    k + 1
                ));
            }
        }
    }
    log.verdict(
        &problems,
        &format!(
            "threads={n} {} checks={}",
            if ctx.avx { "avx" } else { "sse" },
            ctx.only.list()
        ),
    );
}
