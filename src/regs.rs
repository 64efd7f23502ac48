//! Per-thread CPU state ↔ CRIU's `thread_info_x86` message.
//!
//! General registers map one to one onto `user_x86_regs_entry`. The FPU
//! state is kept by the kernel as a standard-format XSAVE image
//! (PTRACE_GETREGSET NT_X86_XSTATE); CRIU's image splits it into the legacy
//! FXSAVE fields and one repeated field per extended component. Offsets of
//! the components come from CPUID leaf 0xD (`sys::cpu::xsave_layout`).

use crate::image::pb;
use crate::sys::cpu::XsaveLayout;
use crate::sys::ptrace::UserRegs;

/// Syscall restart return values (include/linux/errno.h).
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;
const EINTR: i64 = -4;

/// Applies the kernel's syscall-restart logic to registers taken at an
/// interrupt stop, so that a plain rt_sigreturn into them behaves as the
/// kernel would have on resuming: the call is re-executed, or (for
/// restart_block calls whose kernel-side state cannot be carried) returns
/// EINTR, which libc retries with the remaining time.
pub fn fixup_syscall_restart(regs: &mut UserRegs) {
    if (regs.orig_ax as i64) < 0 {
        return;
    }
    match regs.ax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            regs.ax = regs.orig_ax;
            regs.ip -= 2;
        }
        ERESTART_RESTARTBLOCK => regs.ax = EINTR as u64,
        _ => {}
    }
}

/// How a syscall interrupted by the freeze is brought back, beyond the
/// generic rule of [`fixup_syscall_restart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// The generic rule applies.
    Generic,
    /// Execute the same call again (its arguments still say the right
    /// thing: an absolute deadline, or no timeout).
    Again,
    /// A relative sleep: copy the remaining time the kernel wrote to `rem`
    /// into the request at `req`, then execute the call again.
    AgainWithRemaining { req: u64, rem: u64 },
}

const NR_NANOSLEEP: i64 = 35;
const NR_CLOCK_NANOSLEEP: i64 = 230;
const NR_EPOLL_WAIT: i64 = 232;
const NR_EPOLL_PWAIT: i64 = 281;
const NR_EPOLL_PWAIT2: i64 = 441;
const TIMER_ABSTIME: u64 = 1;

/// Sleeps and epoll waits cut short by the freeze. The kernel would resume
/// them through its restart block (sleeps) or has already turned the
/// freeze into EINTR (epoll, which a real signal would have caused, not
/// our stop); neither survives a restore as such, so they are re-executed.
pub fn restart_plan(r: &UserRegs) -> Restart {
    let (nr, ret) = (r.orig_ax as i64, r.ax as i64);
    match (nr, ret) {
        (NR_CLOCK_NANOSLEEP, ERESTART_RESTARTBLOCK) if r.si & TIMER_ABSTIME != 0 => Restart::Again,
        (NR_CLOCK_NANOSLEEP, ERESTART_RESTARTBLOCK) if r.r10 != 0 => {
            Restart::AgainWithRemaining { req: r.dx, rem: r.r10 }
        }
        (NR_NANOSLEEP, ERESTART_RESTARTBLOCK) if r.si != 0 => Restart::AgainWithRemaining { req: r.di, rem: r.si },
        // A relative sleep without a `rem` buffer: the time left is only in
        // the kernel's restart block, which a restore cannot carry. Sleeping
        // the full request again is late but honest; EINTR would be a lie
        // when the task blocks every signal.
        (NR_NANOSLEEP | NR_CLOCK_NANOSLEEP, ERESTART_RESTARTBLOCK) => Restart::Again,
        (NR_EPOLL_WAIT | NR_EPOLL_PWAIT | NR_EPOLL_PWAIT2, EINTR) => Restart::Again,
        _ => Restart::Generic,
    }
}

/// Sets the registers to execute the interrupted syscall once more.
pub fn reexecute(r: &mut UserRegs) {
    r.ax = r.orig_ax;
    r.ip -= 2;
}

/// The registers a restored thread's signal frame returns to, from the
/// registers dumped at the stop: an interrupted syscall is set up to run
/// again (or to fail with EINTR where nothing else is possible).
pub fn frame_regs(raw: &UserRegs) -> UserRegs {
    let mut r = *raw;
    match restart_plan(raw) {
        Restart::Generic => fixup_syscall_restart(&mut r),
        Restart::Again | Restart::AgainWithRemaining { .. } => reexecute(&mut r),
    }
    r
}

/// For a syscall the kernel itself knows how to restart (ERESTARTSYS,
/// ERESTARTNOINTR, ERESTARTNOHAND, and the epoll EINTR caused by our
/// stop, which is ERESTARTNOHAND's meaning): the registers to put back at
/// the end of the restore, just before the thread runs, so that the
/// kernel's own signal code decides between restarting the call and
/// EINTR (a handler that runs first makes it EINTR, as it would have).
pub fn kernel_restart_regs(raw: &UserRegs) -> Option<UserRegs> {
    if (raw.orig_ax as i64) < 0 {
        return None;
    }
    let mut r = *raw;
    match (raw.orig_ax as i64, raw.ax as i64) {
        (_, ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND) => Some(r),
        (NR_EPOLL_WAIT | NR_EPOLL_PWAIT | NR_EPOLL_PWAIT2, EINTR) => {
            r.ax = ERESTARTNOHAND as u64;
            Some(r)
        }
        _ => None,
    }
}

pub fn gpregs_to_pb(r: &UserRegs) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.bp,
        bx: r.bx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.ax,
        cx: r.cx,
        dx: r.dx,
        si: r.si,
        di: r.di,
        orig_ax: r.orig_ax,
        ip: r.ip,
        cs: r.cs,
        flags: r.flags,
        sp: r.sp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    }
}

pub fn gpregs_from_pb(p: &pb::UserX86RegsEntry) -> UserRegs {
    UserRegs {
        r15: p.r15,
        r14: p.r14,
        r13: p.r13,
        r12: p.r12,
        bp: p.bp,
        bx: p.bx,
        r11: p.r11,
        r10: p.r10,
        r9: p.r9,
        r8: p.r8,
        ax: p.ax,
        cx: p.cx,
        dx: p.dx,
        si: p.si,
        di: p.di,
        orig_ax: p.orig_ax,
        ip: p.ip,
        cs: p.cs,
        flags: p.flags,
        sp: p.sp,
        ss: p.ss,
        fs_base: p.fs_base,
        gs_base: p.gs_base,
        ds: p.ds,
        es: p.es,
        fs: p.fs,
        gs: p.gs,
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn words32(b: &[u8], o: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| u32_at(b, o + 4 * i)).collect()
}
fn words64(b: &[u8], o: usize, n: usize) -> Vec<u64> {
    (0..n).map(|i| u64_at(b, o + 8 * i)).collect()
}
fn put32(b: &mut [u8], o: usize, w: &[u32]) {
    for (i, v) in w.iter().enumerate() {
        b[o + 4 * i..o + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
}
fn put64(b: &mut [u8], o: usize, w: &[u64]) {
    for (i, v) in w.iter().enumerate() {
        b[o + 8 * i..o + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// XSAVE component numbers used by CRIU's user_x86_xsave_entry.
const X_YMM: usize = 2;
const X_BNDREGS: usize = 3;
const X_BNDCSR: usize = 4;
const X_OPMASK: usize = 5;
const X_ZMM_HI256: usize = 6;
const X_HI16_ZMM: usize = 7;
const X_PKRU: usize = 9;

/// Splits a standard-format XSAVE image into CRIU's fpregs message.
pub fn fpregs_to_pb(x: &[u8], layout: &XsaveLayout) -> pb::UserX86FpregsEntry {
    let mut fp = pb::UserX86FpregsEntry {
        cwd: u32::from(u16_at(x, 0)),
        swd: u32::from(u16_at(x, 2)),
        twd: u32::from(u16_at(x, 4)),
        fop: u32::from(u16_at(x, 6)),
        rip: u64_at(x, 8),
        rdp: u64_at(x, 16),
        mxcsr: u32_at(x, 24),
        mxcsr_mask: u32_at(x, 28),
        st_space: words32(x, 32, 32),
        xmm_space: words32(x, 160, 64),
        ..Default::default()
    };
    if x.len() > 512 + 64 {
        let comp = |c: usize| {
            let cc = layout.comps[c];
            (layout.has(c) && cc.offset + cc.size <= x.len()).then_some(cc.offset)
        };
        let mut xs = pb::UserX86XsaveEntry {
            xstate_bv: u64_at(x, 512),
            ..Default::default()
        };
        if let Some(o) = comp(X_YMM) {
            xs.ymmh_space = words32(x, o, 64);
        }
        if let Some(o) = comp(X_BNDREGS) {
            xs.bndreg_state = words64(x, o, 8);
        }
        if let Some(o) = comp(X_BNDCSR) {
            xs.bndcsr_state = words64(x, o, 8);
        }
        if let Some(o) = comp(X_OPMASK) {
            xs.opmask_reg = words64(x, o, 8);
        }
        if let Some(o) = comp(X_ZMM_HI256) {
            xs.zmm_upper = words64(x, o, 64);
        }
        if let Some(o) = comp(X_HI16_ZMM) {
            xs.hi16_zmm = words64(x, o, 128);
        }
        if let Some(o) = comp(X_PKRU) {
            xs.pkru = words32(x, o, 2);
        }
        fp.xsave = Some(xs);
    }
    fp
}

/// Rebuilds a standard-format XSAVE image for this CPU from the image's
/// fpregs. Components the image lacks stay in their init state (their bit
/// is cleared from XSTATE_BV). Fails if the image holds a component this
/// CPU does not have in a non-init state.
pub fn fpregs_from_pb(fp: &pb::UserX86FpregsEntry, layout: &XsaveLayout) -> Result<Vec<u8>, String> {
    if fp.st_space.len() < 32 || fp.xmm_space.len() < 64 {
        return Err(format!(
            "fpregs has {} st words and {} xmm words (need 32 and 64)",
            fp.st_space.len(),
            fp.xmm_space.len()
        ));
    }
    let mut x = vec![0u8; layout.size.max(512 + 64)];
    x[0..2].copy_from_slice(&(fp.cwd as u16).to_le_bytes());
    x[2..4].copy_from_slice(&(fp.swd as u16).to_le_bytes());
    x[4..6].copy_from_slice(&(fp.twd as u16).to_le_bytes());
    x[6..8].copy_from_slice(&(fp.fop as u16).to_le_bytes());
    put64(&mut x, 8, &[fp.rip, fp.rdp]);
    put32(&mut x, 24, &[fp.mxcsr, fp.mxcsr_mask]);
    put32(&mut x, 32, &fp.st_space[..32]);
    put32(&mut x, 160, &fp.xmm_space[..64]);
    let Some(xs) = &fp.xsave else {
        // Legacy state only: x87 + SSE.
        put64(&mut x, 512, &[3]);
        return Ok(x);
    };
    let mut bv = xs.xstate_bv & layout.xcr0;
    let lost = xs.xstate_bv & !layout.xcr0;
    if lost != 0 {
        return Err(format!(
            "the image holds CPU state this CPU lacks (xstate_bv {:#x}, CPU xcr0 {:#x})",
            xs.xstate_bv, layout.xcr0
        ));
    }
    let mut place32 = |c: usize, w: &[u32], n: usize, bv: &mut u64| {
        if w.len() >= n && layout.has(c) {
            put32(&mut x, layout.comps[c].offset, &w[..n]);
        } else {
            *bv &= !(1 << c);
        }
    };
    place32(X_YMM, &xs.ymmh_space, 64, &mut bv);
    place32(X_PKRU, &xs.pkru, 2, &mut bv);
    let mut place64 = |c: usize, w: &[u64], n: usize, bv: &mut u64| {
        if w.len() >= n && layout.has(c) {
            put64(&mut x, layout.comps[c].offset, &w[..n]);
        } else {
            *bv &= !(1 << c);
        }
    };
    place64(X_BNDREGS, &xs.bndreg_state, 8, &mut bv);
    place64(X_BNDCSR, &xs.bndcsr_state, 8, &mut bv);
    place64(X_OPMASK, &xs.opmask_reg, 8, &mut bv);
    place64(X_ZMM_HI256, &xs.zmm_upper, 64, &mut bv);
    place64(X_HI16_ZMM, &xs.hi16_zmm, 128, &mut bv);
    put64(&mut x, 512, &[bv]);
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::cpu::xsave_layout;

    #[test]
    fn restart_fixup_rules() {
        let mut r = UserRegs {
            orig_ax: 0,
            ax: (-512i64) as u64,
            ip: 0x1002,
            ..Default::default()
        };
        fixup_syscall_restart(&mut r);
        assert_eq!((r.ax, r.ip), (0, 0x1000));
        let mut r = UserRegs {
            orig_ax: 230,
            ax: (-516i64) as u64,
            ip: 0x1002,
            ..Default::default()
        };
        fixup_syscall_restart(&mut r);
        assert_eq!((r.ax as i64, r.ip), (-4, 0x1002));
        let mut r = UserRegs {
            orig_ax: u64::MAX,
            ax: (-512i64) as u64,
            ip: 0x1002,
            ..Default::default()
        };
        fixup_syscall_restart(&mut r);
        assert_eq!((r.ax as i64, r.ip), (-512, 0x1002), "not in a syscall");
    }

    #[test]
    fn gpregs_round_trip() {
        let r = UserRegs {
            r15: 1,
            ax: 2,
            ip: 3,
            sp: 4,
            fs_base: 5,
            gs: 6,
            ..Default::default()
        };
        assert_eq!(gpregs_from_pb(&gpregs_to_pb(&r)), r);
    }

    #[test]
    fn xsave_round_trip_keeps_every_byte_we_model() {
        let layout = xsave_layout();
        let mut x = vec![0u8; layout.size];
        for (i, b) in x.iter_mut().enumerate().take(416) {
            *b = (i * 7 + 3) as u8;
        }
        let mut bv = 3u64;
        for c in [X_YMM, X_PKRU, X_OPMASK, X_ZMM_HI256, X_HI16_ZMM] {
            if layout.has(c) {
                let o = layout.comps[c].offset;
                for i in 0..layout.comps[c].size {
                    x[o + i] = (i * 13 + c) as u8;
                }
                bv |= 1 << c;
            }
        }
        x[512..520].copy_from_slice(&bv.to_le_bytes());
        let pbf = fpregs_to_pb(&x, &layout);
        let back = fpregs_from_pb(&pbf, &layout).unwrap();
        assert_eq!(&back[..416], &x[..416]);
        assert_eq!(&back[512..520], &x[512..520]);
        for c in [X_YMM, X_PKRU, X_OPMASK, X_ZMM_HI256, X_HI16_ZMM] {
            if layout.has(c) {
                let cc = layout.comps[c];
                assert_eq!(
                    &back[cc.offset..cc.offset + cc.size],
                    &x[cc.offset..cc.offset + cc.size]
                );
            }
        }
    }

    #[test]
    fn foreign_cpu_state_is_refused() {
        let layout = xsave_layout();
        let mut fp = pb::UserX86FpregsEntry {
            st_space: vec![0; 32],
            xmm_space: vec![0; 64],
            ..Default::default()
        };
        fp.xsave = Some(pb::UserX86XsaveEntry {
            xstate_bv: 1 << 17,
            ..Default::default()
        });
        assert!(fpregs_from_pb(&fp, &layout).is_err());
    }
}
