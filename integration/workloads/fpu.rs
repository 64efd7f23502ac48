//! fpu: the vector register file and MXCSR survive.
//!
//! `fpu --log F [--isa sse|avx|avx512] [--corrupt]`
//!
//! Loads known values into xmm0-15 (SSE), or the full ymm0-15 (AVX), or
//! zmm0-31 and k1-k7 (AVX-512F), picking the widest the CPU has unless
//! `--isa` says otherwise, and sets a non-default MXCSR (round toward zero,
//! FTZ, DAZ). Everything from loading the registers to storing them again
//! happens inside one asm block: it writes `READY <pid>` with a raw write
//! syscall, then loops on nanosleep (GP registers only) until the SIGUSR1
//! flag is set. The handler only sets that flag, and the kernel saves and
//! restores the FPU state around it, so nothing else touches the vector
//! registers. Afterwards the stored registers are compared with the values
//! loaded. `--corrupt` overwrites register 5 before storing, to prove the
//! comparison can fail.

use cryo_integration::wl::{self, Args, Log, Rng};
use std::arch::asm;
use std::mem::offset_of;

/// MXCSR: all exceptions masked (0x1f80), round toward zero (0x6000),
/// flush-to-zero (0x8000), denormals-are-zero (0x40).
const WANT_MXCSR: u32 = 0x1f80 | 0x6000 | 0x8000 | 0x40;
/// MXCSR bits compared (the sticky exception flags 0-5 are not).
const MXCSR_CMP: u32 = 0xffc0;

#[repr(C, align(64))]
struct Block {
    /// Values loaded: register i at want\[i\] (64 bytes each; an ISA uses
    /// the first 16, 32 or 64 bytes).
    want: [[u8; 64]; 32],
    /// Values stored back after the idle loop.
    got: [[u8; 64]; 32],
    want_k: [u64; 8],
    got_k: [u64; 8],
    want_mx: u32,
    got_mx: u32,
    saved_mx: u32,
    _pad: u32,
    ts: libc::timespec,
}

const GOT_OFF: usize = offset_of!(Block, got);
const WANT_K_OFF: usize = offset_of!(Block, want_k);
const GOT_K_OFF: usize = offset_of!(Block, got_k);
const WANT_MX_OFF: usize = offset_of!(Block, want_mx);
const GOT_MX_OFF: usize = offset_of!(Block, got_mx);
const SAVED_MX_OFF: usize = offset_of!(Block, saved_mx);
const TS_OFF: usize = offset_of!(Block, ts);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Isa {
    Sse,
    Avx,
    Avx512,
}

impl Isa {
    /// (registers, bytes per register, mask registers)
    fn shape(self) -> (usize, usize, usize) {
        match self {
            Isa::Sse => (16, 16, 0),
            Isa::Avx => (16, 32, 0),
            Isa::Avx512 => (32, 64, 7),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isa::Sse => "sse xmm0-15",
            Isa::Avx => "avx ymm0-15",
            Isa::Avx512 => "avx512 zmm0-31 k1-7",
        }
    }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    let best = if is_x86_feature_detected!("avx512f") {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx") {
        Isa::Avx
    } else {
        Isa::Sse
    };
    let isa = match args.value("isa").as_deref() {
        None => best,
        Some("sse") => Isa::Sse,
        Some("avx") if best != Isa::Sse => Isa::Avx,
        Some("avx512") if best == Isa::Avx512 => Isa::Avx512,
        Some(other) => wl::die(&format!("--isa {other}: not available on this CPU")),
    };
    wl::install_usr1();

    let mut b: Box<Block> = Box::new(Block {
        want: [[0; 64]; 32],
        got: [[0; 64]; 32],
        want_k: [0; 8],
        got_k: [0; 8],
        want_mx: WANT_MXCSR,
        got_mx: 0,
        saved_mx: 0,
        _pad: 0,
        ts: libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        },
    });
    let mut rng = Rng::new(0xf00d_0000 + wl::getpid() as u64);
    for reg in b.want.iter_mut() {
        for chunk in reg.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
    }
    for k in b.want_k.iter_mut().skip(1) {
        *k = rng.next_u64() & 0xffff;
    }
    log.line(&format!("ISA {}", isa.name()));
    let ready = format!("READY {}\n", wl::getpid()).into_bytes();
    let flag = wl::USR1.as_ptr() as *const u8;
    let bp: *mut Block = &mut *b;
    // SAFETY: `isa` was checked against the CPU above; `bp` points to a
    // live, 64-byte aligned Block; the flag is a static; `ready` outlives
    // the call.
    unsafe {
        match isa {
            Isa::Sse => hold_sse(bp, flag, corrupt, &ready, log.fd()),
            Isa::Avx => hold_avx(bp, flag, corrupt, &ready, log.fd()),
            Isa::Avx512 => hold_avx512(bp, flag, corrupt, &ready, log.fd()),
        }
    }

    let (nregs, width, nk) = isa.shape();
    let mut problems = Vec::new();
    for i in 0..nregs {
        if b.got[i][..width] != b.want[i][..width] {
            problems.push(format!(
                "reg {i}: {} != {}",
                hex(&b.got[i][..width]),
                hex(&b.want[i][..width])
            ));
        }
    }
    for i in 1..=nk {
        if b.got_k[i] != b.want_k[i] {
            problems.push(format!("k{i}: {:#x} != {:#x}", b.got_k[i], b.want_k[i]));
        }
    }
    if b.got_mx & MXCSR_CMP != WANT_MXCSR & MXCSR_CMP {
        problems.push(format!("mxcsr {:#x} != {WANT_MXCSR:#x}", b.got_mx));
    }
    log.verdict(&problems, &format!("{} mxcsr={:#x}", isa.name(), b.got_mx));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().rev().map(|b| format!("{b:02x}")).collect()
}

/// Loads the sse register file from `b.want`, writes READY, idles until
/// SIGUSR1, then stores the registers into `b.got`: all in one asm block,
/// so no compiler-generated code can touch the vector registers between.
///
/// # Safety
/// The CPU must support sse; `b` must be valid; `flag` must point to a
/// byte that stays valid; `ready` must be a readable buffer.
unsafe fn hold_sse(b: *mut Block, flag: *const u8, corrupt: bool, ready: &[u8], log_fd: i32) {
    // SAFETY: the caller guarantees the ISA and the pointers; every register
    // the block writes is declared as an output or clobber, and the
    // original MXCSR is put back before the block ends.
    unsafe {
        asm!(
            "stmxcsr [r12 + {saved_mx}]",
            "ldmxcsr [r12 + {want_mx}]",
            "movdqu xmm0, [r12 + 0]",
            "movdqu xmm1, [r12 + 64]",
            "movdqu xmm2, [r12 + 128]",
            "movdqu xmm3, [r12 + 192]",
            "movdqu xmm4, [r12 + 256]",
            "movdqu xmm5, [r12 + 320]",
            "movdqu xmm6, [r12 + 384]",
            "movdqu xmm7, [r12 + 448]",
            "movdqu xmm8, [r12 + 512]",
            "movdqu xmm9, [r12 + 576]",
            "movdqu xmm10, [r12 + 640]",
            "movdqu xmm11, [r12 + 704]",
            "movdqu xmm12, [r12 + 768]",
            "movdqu xmm13, [r12 + 832]",
            "movdqu xmm14, [r12 + 896]",
            "movdqu xmm15, [r12 + 960]",
            // READY <pid>: write(log_fd, ready, ready_len)
            "mov eax, 1",
            "mov edi, r9d",
            "mov rsi, r15",
            "mov rdx, r8",
            "syscall",
            // Idle: nanosleep until the SIGUSR1 flag is set; only GP registers.
            "2:",
            "movzx eax, byte ptr [r13]",
            "test eax, eax",
            "jnz 3f",
            "mov eax, 35",
            "lea rdi, [r12 + {ts}]",
            "xor esi, esi",
            "syscall",
            "jmp 2b",
            "3:",
            "test r14, r14",
            "jz 4f",
            "pcmpeqd xmm5, xmm5",
            "4:",
            "stmxcsr [r12 + {got_mx}]",
            "movdqu [r12 + {got} + 0], xmm0",
            "movdqu [r12 + {got} + 64], xmm1",
            "movdqu [r12 + {got} + 128], xmm2",
            "movdqu [r12 + {got} + 192], xmm3",
            "movdqu [r12 + {got} + 256], xmm4",
            "movdqu [r12 + {got} + 320], xmm5",
            "movdqu [r12 + {got} + 384], xmm6",
            "movdqu [r12 + {got} + 448], xmm7",
            "movdqu [r12 + {got} + 512], xmm8",
            "movdqu [r12 + {got} + 576], xmm9",
            "movdqu [r12 + {got} + 640], xmm10",
            "movdqu [r12 + {got} + 704], xmm11",
            "movdqu [r12 + {got} + 768], xmm12",
            "movdqu [r12 + {got} + 832], xmm13",
            "movdqu [r12 + {got} + 896], xmm14",
            "movdqu [r12 + {got} + 960], xmm15",
            "ldmxcsr [r12 + {saved_mx}]",
            in("r12") b,
            in("r13") flag,
            in("r14") corrupt as u64,
            in("r15") ready.as_ptr(),
            in("r8") ready.len(),
            in("r9") log_fd,
            want_mx = const WANT_MX_OFF,
            got_mx = const GOT_MX_OFF,
            saved_mx = const SAVED_MX_OFF,
            ts = const TS_OFF,
            got = const GOT_OFF,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
            out("rdi") _,
            out("rsi") _,
            out("r11") _,
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
            out("xmm3") _,
            out("xmm4") _,
            out("xmm5") _,
            out("xmm6") _,
            out("xmm7") _,
            out("xmm8") _,
            out("xmm9") _,
            out("xmm10") _,
            out("xmm11") _,
            out("xmm12") _,
            out("xmm13") _,
            out("xmm14") _,
            out("xmm15") _,
            options(nostack),
        );
    }
}

/// Loads the avx register file from `b.want`, writes READY, idles until
/// SIGUSR1, then stores the registers into `b.got`: all in one asm block,
/// so no compiler-generated code can touch the vector registers between.
///
/// # Safety
/// The CPU must support avx; `b` must be valid; `flag` must point to a
/// byte that stays valid; `ready` must be a readable buffer.
#[target_feature(enable = "avx")]
unsafe fn hold_avx(b: *mut Block, flag: *const u8, corrupt: bool, ready: &[u8], log_fd: i32) {
    // SAFETY: the caller guarantees the ISA and the pointers; every register
    // the block writes is declared as an output or clobber, and the
    // original MXCSR is put back before the block ends.
    unsafe {
        asm!(
            "stmxcsr [r12 + {saved_mx}]",
            "ldmxcsr [r12 + {want_mx}]",
            "vmovdqu ymm0, [r12 + 0]",
            "vmovdqu ymm1, [r12 + 64]",
            "vmovdqu ymm2, [r12 + 128]",
            "vmovdqu ymm3, [r12 + 192]",
            "vmovdqu ymm4, [r12 + 256]",
            "vmovdqu ymm5, [r12 + 320]",
            "vmovdqu ymm6, [r12 + 384]",
            "vmovdqu ymm7, [r12 + 448]",
            "vmovdqu ymm8, [r12 + 512]",
            "vmovdqu ymm9, [r12 + 576]",
            "vmovdqu ymm10, [r12 + 640]",
            "vmovdqu ymm11, [r12 + 704]",
            "vmovdqu ymm12, [r12 + 768]",
            "vmovdqu ymm13, [r12 + 832]",
            "vmovdqu ymm14, [r12 + 896]",
            "vmovdqu ymm15, [r12 + 960]",
            // READY <pid>: write(log_fd, ready, ready_len)
            "mov eax, 1",
            "mov edi, r9d",
            "mov rsi, r15",
            "mov rdx, r8",
            "syscall",
            // Idle: nanosleep until the SIGUSR1 flag is set; only GP registers.
            "2:",
            "movzx eax, byte ptr [r13]",
            "test eax, eax",
            "jnz 3f",
            "mov eax, 35",
            "lea rdi, [r12 + {ts}]",
            "xor esi, esi",
            "syscall",
            "jmp 2b",
            "3:",
            "test r14, r14",
            "jz 4f",
            "vpcmpeqd ymm5, ymm5, ymm5",
            "4:",
            "stmxcsr [r12 + {got_mx}]",
            "vmovdqu [r12 + {got} + 0], ymm0",
            "vmovdqu [r12 + {got} + 64], ymm1",
            "vmovdqu [r12 + {got} + 128], ymm2",
            "vmovdqu [r12 + {got} + 192], ymm3",
            "vmovdqu [r12 + {got} + 256], ymm4",
            "vmovdqu [r12 + {got} + 320], ymm5",
            "vmovdqu [r12 + {got} + 384], ymm6",
            "vmovdqu [r12 + {got} + 448], ymm7",
            "vmovdqu [r12 + {got} + 512], ymm8",
            "vmovdqu [r12 + {got} + 576], ymm9",
            "vmovdqu [r12 + {got} + 640], ymm10",
            "vmovdqu [r12 + {got} + 704], ymm11",
            "vmovdqu [r12 + {got} + 768], ymm12",
            "vmovdqu [r12 + {got} + 832], ymm13",
            "vmovdqu [r12 + {got} + 896], ymm14",
            "vmovdqu [r12 + {got} + 960], ymm15",
            "vzeroupper",
            "ldmxcsr [r12 + {saved_mx}]",
            in("r12") b,
            in("r13") flag,
            in("r14") corrupt as u64,
            in("r15") ready.as_ptr(),
            in("r8") ready.len(),
            in("r9") log_fd,
            want_mx = const WANT_MX_OFF,
            got_mx = const GOT_MX_OFF,
            saved_mx = const SAVED_MX_OFF,
            ts = const TS_OFF,
            got = const GOT_OFF,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
            out("rdi") _,
            out("rsi") _,
            out("r11") _,
            out("ymm0") _,
            out("ymm1") _,
            out("ymm2") _,
            out("ymm3") _,
            out("ymm4") _,
            out("ymm5") _,
            out("ymm6") _,
            out("ymm7") _,
            out("ymm8") _,
            out("ymm9") _,
            out("ymm10") _,
            out("ymm11") _,
            out("ymm12") _,
            out("ymm13") _,
            out("ymm14") _,
            out("ymm15") _,
            options(nostack),
        );
    }
}

/// Loads the avx512 register file from `b.want`, writes READY, idles until
/// SIGUSR1, then stores the registers into `b.got`: all in one asm block,
/// so no compiler-generated code can touch the vector registers between.
///
/// # Safety
/// The CPU must support avx512; `b` must be valid; `flag` must point to a
/// byte that stays valid; `ready` must be a readable buffer.
#[target_feature(enable = "avx512f")]
unsafe fn hold_avx512(b: *mut Block, flag: *const u8, corrupt: bool, ready: &[u8], log_fd: i32) {
    // SAFETY: the caller guarantees the ISA and the pointers; every register
    // the block writes is declared as an output or clobber, and the
    // original MXCSR is put back before the block ends.
    unsafe {
        asm!(
            "stmxcsr [r12 + {saved_mx}]",
            "ldmxcsr [r12 + {want_mx}]",
            "vmovdqu64 zmm0, [r12 + 0]",
            "vmovdqu64 zmm1, [r12 + 64]",
            "vmovdqu64 zmm2, [r12 + 128]",
            "vmovdqu64 zmm3, [r12 + 192]",
            "vmovdqu64 zmm4, [r12 + 256]",
            "vmovdqu64 zmm5, [r12 + 320]",
            "vmovdqu64 zmm6, [r12 + 384]",
            "vmovdqu64 zmm7, [r12 + 448]",
            "vmovdqu64 zmm8, [r12 + 512]",
            "vmovdqu64 zmm9, [r12 + 576]",
            "vmovdqu64 zmm10, [r12 + 640]",
            "vmovdqu64 zmm11, [r12 + 704]",
            "vmovdqu64 zmm12, [r12 + 768]",
            "vmovdqu64 zmm13, [r12 + 832]",
            "vmovdqu64 zmm14, [r12 + 896]",
            "vmovdqu64 zmm15, [r12 + 960]",
            "vmovdqu64 zmm16, [r12 + 1024]",
            "vmovdqu64 zmm17, [r12 + 1088]",
            "vmovdqu64 zmm18, [r12 + 1152]",
            "vmovdqu64 zmm19, [r12 + 1216]",
            "vmovdqu64 zmm20, [r12 + 1280]",
            "vmovdqu64 zmm21, [r12 + 1344]",
            "vmovdqu64 zmm22, [r12 + 1408]",
            "vmovdqu64 zmm23, [r12 + 1472]",
            "vmovdqu64 zmm24, [r12 + 1536]",
            "vmovdqu64 zmm25, [r12 + 1600]",
            "vmovdqu64 zmm26, [r12 + 1664]",
            "vmovdqu64 zmm27, [r12 + 1728]",
            "vmovdqu64 zmm28, [r12 + 1792]",
            "vmovdqu64 zmm29, [r12 + 1856]",
            "vmovdqu64 zmm30, [r12 + 1920]",
            "vmovdqu64 zmm31, [r12 + 1984]",
            "kmovw k1, word ptr [r12 + {want_k} + 8]",
            "kmovw k2, word ptr [r12 + {want_k} + 16]",
            "kmovw k3, word ptr [r12 + {want_k} + 24]",
            "kmovw k4, word ptr [r12 + {want_k} + 32]",
            "kmovw k5, word ptr [r12 + {want_k} + 40]",
            "kmovw k6, word ptr [r12 + {want_k} + 48]",
            "kmovw k7, word ptr [r12 + {want_k} + 56]",
            // READY <pid>: write(log_fd, ready, ready_len)
            "mov eax, 1",
            "mov edi, r9d",
            "mov rsi, r15",
            "mov rdx, r8",
            "syscall",
            // Idle: nanosleep until the SIGUSR1 flag is set; only GP registers.
            "2:",
            "movzx eax, byte ptr [r13]",
            "test eax, eax",
            "jnz 3f",
            "mov eax, 35",
            "lea rdi, [r12 + {ts}]",
            "xor esi, esi",
            "syscall",
            "jmp 2b",
            "3:",
            "test r14, r14",
            "jz 4f",
            "vpternlogd zmm5, zmm5, zmm5, 0xff",
            "4:",
            "stmxcsr [r12 + {got_mx}]",
            "vmovdqu64 [r12 + {got} + 0], zmm0",
            "vmovdqu64 [r12 + {got} + 64], zmm1",
            "vmovdqu64 [r12 + {got} + 128], zmm2",
            "vmovdqu64 [r12 + {got} + 192], zmm3",
            "vmovdqu64 [r12 + {got} + 256], zmm4",
            "vmovdqu64 [r12 + {got} + 320], zmm5",
            "vmovdqu64 [r12 + {got} + 384], zmm6",
            "vmovdqu64 [r12 + {got} + 448], zmm7",
            "vmovdqu64 [r12 + {got} + 512], zmm8",
            "vmovdqu64 [r12 + {got} + 576], zmm9",
            "vmovdqu64 [r12 + {got} + 640], zmm10",
            "vmovdqu64 [r12 + {got} + 704], zmm11",
            "vmovdqu64 [r12 + {got} + 768], zmm12",
            "vmovdqu64 [r12 + {got} + 832], zmm13",
            "vmovdqu64 [r12 + {got} + 896], zmm14",
            "vmovdqu64 [r12 + {got} + 960], zmm15",
            "vmovdqu64 [r12 + {got} + 1024], zmm16",
            "vmovdqu64 [r12 + {got} + 1088], zmm17",
            "vmovdqu64 [r12 + {got} + 1152], zmm18",
            "vmovdqu64 [r12 + {got} + 1216], zmm19",
            "vmovdqu64 [r12 + {got} + 1280], zmm20",
            "vmovdqu64 [r12 + {got} + 1344], zmm21",
            "vmovdqu64 [r12 + {got} + 1408], zmm22",
            "vmovdqu64 [r12 + {got} + 1472], zmm23",
            "vmovdqu64 [r12 + {got} + 1536], zmm24",
            "vmovdqu64 [r12 + {got} + 1600], zmm25",
            "vmovdqu64 [r12 + {got} + 1664], zmm26",
            "vmovdqu64 [r12 + {got} + 1728], zmm27",
            "vmovdqu64 [r12 + {got} + 1792], zmm28",
            "vmovdqu64 [r12 + {got} + 1856], zmm29",
            "vmovdqu64 [r12 + {got} + 1920], zmm30",
            "vmovdqu64 [r12 + {got} + 1984], zmm31",
            "kmovw word ptr [r12 + {got_k} + 8], k1",
            "kmovw word ptr [r12 + {got_k} + 16], k2",
            "kmovw word ptr [r12 + {got_k} + 24], k3",
            "kmovw word ptr [r12 + {got_k} + 32], k4",
            "kmovw word ptr [r12 + {got_k} + 40], k5",
            "kmovw word ptr [r12 + {got_k} + 48], k6",
            "kmovw word ptr [r12 + {got_k} + 56], k7",
            "vzeroupper",
            "ldmxcsr [r12 + {saved_mx}]",
            in("r12") b,
            in("r13") flag,
            in("r14") corrupt as u64,
            in("r15") ready.as_ptr(),
            in("r8") ready.len(),
            in("r9") log_fd,
            want_mx = const WANT_MX_OFF,
            got_mx = const GOT_MX_OFF,
            saved_mx = const SAVED_MX_OFF,
            ts = const TS_OFF,
            got = const GOT_OFF,
            want_k = const WANT_K_OFF,
            got_k = const GOT_K_OFF,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
            out("rdi") _,
            out("rsi") _,
            out("r11") _,
            out("zmm0") _,
            out("zmm1") _,
            out("zmm2") _,
            out("zmm3") _,
            out("zmm4") _,
            out("zmm5") _,
            out("zmm6") _,
            out("zmm7") _,
            out("zmm8") _,
            out("zmm9") _,
            out("zmm10") _,
            out("zmm11") _,
            out("zmm12") _,
            out("zmm13") _,
            out("zmm14") _,
            out("zmm15") _,
            out("zmm16") _,
            out("zmm17") _,
            out("zmm18") _,
            out("zmm19") _,
            out("zmm20") _,
            out("zmm21") _,
            out("zmm22") _,
            out("zmm23") _,
            out("zmm24") _,
            out("zmm25") _,
            out("zmm26") _,
            out("zmm27") _,
            out("zmm28") _,
            out("zmm29") _,
            out("zmm30") _,
            out("zmm31") _,
            out("k1") _,
            out("k2") _,
            out("k3") _,
            out("k4") _,
            out("k5") _,
            out("k6") _,
            out("k7") _,
            options(nostack),
        );
    }
}
