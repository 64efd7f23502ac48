//! Tests of the sys layer against live child processes (root needed for
//! most). Every test that forks or ptraces takes [`FORK_MTX`]; every child
//! is killed and reaped by pid when its guard drops.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::ptrace::Options;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{ForkResult, Pid};

use super::clone::{self, kcmp_type};
use super::inject::{Injector, SCRATCH_SIZE};
use super::ptrace::{self, WaitOutcome};
use super::vm::{self, category};
use crate::proc;

/// Serializes tests that fork, ptrace or wait for children.
pub(crate) static FORK_MTX: Mutex<()> = Mutex::new(());

macro_rules! require_root {
    () => {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP {}: needs root", module_path!());
            return;
        }
    };
}

/// Kills (SIGKILL) and reaps a child on drop, unless already reaped.
struct ChildGuard {
    pid: Pid,
    reaped: bool,
}

impl ChildGuard {
    fn new(pid: Pid) -> Self {
        ChildGuard { pid, reaped: false }
    }

    /// Waits for the child to exit; returns the raw wait status.
    fn wait_exit(&mut self) -> i32 {
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid c_int for the call.
            let r = unsafe { libc::waitpid(self.pid.as_raw(), &mut status, libc::__WALL) };
            assert_eq!(r, self.pid.as_raw(), "waitpid: {}", nix::errno::Errno::last());
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.reaped = true;
                return status;
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let mut status = 0;
            // SAFETY: `status` is a valid c_int; we wait only for our own
            // child by pid.
            unsafe {
                while libc::waitpid(self.pid.as_raw(), &mut status, libc::__WALL) == self.pid.as_raw()
                    && !(libc::WIFEXITED(status) || libc::WIFSIGNALED(status))
                {}
            }
        }
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned two fresh fds that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn read_byte(fd: RawFd) -> u8 {
    let mut b = [0u8; 1];
    // SAFETY: reads at most 1 byte into the local array.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 1, "read from child pipe");
    b[0]
}

fn write_byte(fd: RawFd, b: u8) {
    // SAFETY: writes 1 byte from a local.
    assert_eq!(unsafe { libc::write(fd, [b].as_ptr().cast(), 1) }, 1);
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The syscall a task is blocked in, from /proc/P/syscall.
fn blocked_syscall(pid: Pid) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn sig_bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

extern "C" fn usr1_handler(_: libc::c_int) {}

/// Runs in the forked child: only async-signal-safe libc calls.
fn child_main(cmd: RawFd, reply: RawFd, region: *mut u8, pattern: *mut u8) -> ! {
    // SAFETY: everything here is raw syscalls on memory this (single
    // threaded, forked) child owns: the zeroed sigaction/sigset locals, the
    // `region` mapping and `pattern` buffer inherited from the parent.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = usr1_handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        // Dirty pages 2 and 5; read-fault page 7 (maps the zero page).
        std::ptr::write_volatile(region.add(2 * 4096), 1);
        std::ptr::write_volatile(region.add(5 * 4096 + 100), 2);
        let _ = std::ptr::read_volatile(region.add(7 * 4096));
        std::ptr::copy_nonoverlapping(b"CHLD".as_ptr(), pattern, 4);
        libc::write(reply, b"r".as_ptr().cast(), 1);
        // Two rounds: answer each byte with byte + 1.
        for _ in 0..2 {
            let mut b = [0u8; 1];
            let n = libc::read(cmd, b.as_mut_ptr().cast(), 1);
            if n != 1 {
                libc::write(reply, [0xeeu8].as_ptr().cast(), 1);
                libc::_exit(3);
            }
            b[0] += 1;
            libc::write(reply, b.as_ptr().cast(), 1);
        }
        libc::_exit(0);
    }
}

#[test]
fn freeze_inspect_inject_detach() {
    require_root!();
    let _lock = FORK_MTX.lock().unwrap_or_else(|e| e.into_inner());

    let (cmd_r, cmd_w) = pipe();
    let (reply_r, reply_w) = pipe();
    // SAFETY: fresh private anonymous mapping of 16 pages, unmapped below.
    let region = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            16 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(region, libc::MAP_FAILED);
    let region = region as *mut u8;
    let mut pattern: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
    let pattern_ptr = pattern.as_mut_ptr();

    // SAFETY: the child only runs `child_main`, which sticks to
    // async-signal-safe calls and never returns.
    let pid = match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => child_main(cmd_r.as_raw_fd(), reply_w.as_raw_fd(), region, pattern_ptr),
        ForkResult::Parent { child } => child,
    };
    let mut child = ChildGuard::new(pid);
    assert_eq!(read_byte(reply_r.as_raw_fd()), b'r');
    wait_until("child blocked in read", || blocked_syscall(pid) == Some(0));

    // One signal in the thread's private queue, one in the shared one.
    // SAFETY: tgkill on our own child, plain integers.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_tgkill, pid.as_raw(), pid.as_raw(), libc::SIGUSR2,) },
        0
    );
    kill(pid, Signal::SIGUSR2).unwrap();
    let upid = pid.as_raw() as u32;
    wait_until("signals pending", || {
        let s = proc::status::read(upid).unwrap();
        s.sig_pnd & sig_bit(libc::SIGUSR2) != 0 && s.shd_pnd & sig_bit(libc::SIGUSR2) != 0
    });

    // Freeze.
    ptrace::seize(pid, Options::PTRACE_O_TRACESYSGOOD).unwrap();
    ptrace::interrupt(pid).unwrap();
    assert_eq!(ptrace::wait_stop(pid).unwrap(), WaitOutcome::Interrupted);
    assert_eq!(proc::stat::read(upid).unwrap().state, 't');

    // Registers: stopped inside read(), restart pending.
    let regs = ptrace::get_regs(pid).unwrap();
    assert_eq!(regs.orig_ax, 0, "orig_ax is read");
    assert_eq!(regs.ax as i64, -512, "ax is -ERESTARTSYS");
    assert_eq!(regs.di, cmd_r.as_raw_fd() as u64);
    assert_eq!(regs.cs, 0x33);
    assert_eq!(regs.fs_base, clone::arch_prctl_get_fs().unwrap());

    let xs = ptrace::get_xstate(pid).unwrap();
    assert!(xs.len() > 512 && xs.len() < 4096 * 4, "xstate {} bytes", xs.len());
    ptrace::set_xstate(pid, &xs).unwrap();

    let mask = ptrace::get_sigmask(pid).unwrap();
    assert_eq!(mask, sig_bit(libc::SIGUSR2));

    let private = ptrace::peek_siginfo(pid, false).unwrap();
    let shared = ptrace::peek_siginfo(pid, true).unwrap();
    assert_eq!(private.len(), 1);
    assert_eq!(shared.len(), 1);
    let signo = |i: &[u8; 128]| i32::from_ne_bytes(i[0..4].try_into().unwrap());
    let code = |i: &[u8; 128]| i32::from_ne_bytes(i[8..12].try_into().unwrap());
    assert_eq!(signo(&private[0]), libc::SIGUSR2);
    assert_eq!(code(&private[0]), libc::SI_TKILL);
    assert_eq!(signo(&shared[0]), libc::SIGUSR2);
    assert_eq!(code(&shared[0]), libc::SI_USER);

    if let Some(rseq) = ptrace::get_rseq(pid).unwrap() {
        assert_eq!(rseq.sig, 0x5305_3053, "glibc's rseq signature");
        assert!(rseq.len >= 20);
    }
    assert_eq!(ptrace::seccomp_filter(pid, 0).unwrap(), None);

    let (head, len) = clone::get_robust_list(pid).unwrap();
    assert_ne!(head, 0);
    assert_eq!(len, 24);
    let lim = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(clone::prlimit_get(pid, libc::RLIMIT_NOFILE as i32).unwrap(), lim);

    // Memory: the child's copy of the pattern (with its own edit).
    let mut buf = vec![0u8; 20000];
    let pairs = [(pattern_ptr as u64, 10000), (pattern_ptr as u64 + 10000, 10000)];
    assert_eq!(vm::read_remote(pid, &pairs, &mut buf).unwrap(), 20000);
    assert_eq!(&buf[..4], b"CHLD");
    assert_eq!(&buf[4..], &pattern[4..]);
    assert_ne!(&pattern[..4], b"CHLD");

    // Page selection: the written pages only, not the zero page.
    let start = region as u64;
    let end = start + 16 * 4096;
    let pm = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let runs = vm::pagemap_scan(
        &pm,
        start,
        end,
        category::PFNZERO | category::FILE,
        category::PFNZERO | category::FILE,
        category::PRESENT | category::SWAPPED,
        category::PRESENT | category::SWAPPED,
        0,
    )
    .unwrap();
    let got: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| ((r.start - start) / 4096, (r.end - start) / 4096))
        .collect();
    assert_eq!(got, [(2, 3), (5, 6)]);
    assert!(runs.iter().all(|r| r.categories == category::PRESENT));
    let present = vm::pagemap_scan(&pm, start, end, category::PRESENT, 0, 0, category::PFNZERO, 0).unwrap();
    assert!(
        present
            .iter()
            .any(|r| r.start == start + 7 * 4096 && r.categories == category::PFNZERO),
        "{present:?}"
    );
    let raw = vm::read_pagemap(pid, start, end).unwrap();
    let present_pages: Vec<usize> = (0..16).filter(|&i| raw[i] & vm::pm::PRESENT != 0).collect();
    assert_eq!(present_pages, [2, 5, 7]);
    assert_ne!(raw[2] & vm::pm::EXCLUSIVE, 0);

    // Fds: pidfd_getfd gives the same open file description.
    let pidfd = clone::pidfd_open(pid).unwrap();
    let dup = clone::pidfd_getfd(&pidfd, cmd_r.as_raw_fd()).unwrap();
    let me = Pid::this();
    let cmp = |a: Pid, b: Pid, k, x: RawFd, y: RawFd| clone::kcmp(a, b, k, x as u64, y as u64).unwrap();
    assert_eq!(cmp(me, me, kcmp_type::FILE, dup.as_raw_fd(), cmd_r.as_raw_fd()), 0);
    assert_eq!(cmp(me, pid, kcmp_type::FILE, cmd_r.as_raw_fd(), cmd_r.as_raw_fd()), 0);
    assert_ne!(cmp(me, pid, kcmp_type::FILE, cmd_r.as_raw_fd(), reply_w.as_raw_fd()), 0);
    assert_ne!(cmp(me, pid, kcmp_type::VM, 0, 0), 0);
    assert_eq!(cmp(pid, pid, kcmp_type::VM, 0, 0), 0);
    drop(dup);

    // Injection.
    let maps = proc::maps::read(upid).unwrap();
    let mut inj = Injector::new(pid, &maps).unwrap();
    let vdso = maps.iter().find(|v| v.is_vdso()).unwrap();
    assert!(inj.syscall_ip >= vdso.start && inj.syscall_ip < vdso.end);
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid.as_raw() as i64);
    assert_eq!(inj.syscall(libc::SYS_gettid, [0; 6]).unwrap(), pid.as_raw() as i64);
    let scratch = inj.scratch();
    assert_eq!(scratch % 16, 0);
    assert!(scratch + SCRATCH_SIZE as u64 <= regs.sp - 128);
    inj.write_mem(scratch, &[0xaa; 32]).unwrap();
    let r = inj
        .syscall(libc::SYS_rt_sigaction, [libc::SIGUSR1 as u64, 0, scratch, 8, 0, 0])
        .unwrap();
    assert_eq!(r, 0);
    let act = inj.read_mem(scratch, 32).unwrap();
    let word = |i: usize| u64::from_ne_bytes(act[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(word(0), usr1_handler as *const () as usize as u64, "sa_handler");
    assert_ne!(word(1) & libc::SA_RESTART as u64, 0, "sa_flags");
    // An error result comes back as -errno.
    assert_eq!(
        inj.syscall(libc::SYS_close, [9999, 0, 0, 0, 0, 0]).unwrap(),
        -(libc::EBADF as i64)
    );
    assert!(inj.syscall_ok(libc::SYS_close, [9999, 0, 0, 0, 0, 0]).is_err());
    // Bigger scratch: a fresh mapping in the child, gone afterwards.
    let big = inj.mmap(3 * 4096).unwrap();
    inj.write_mem(big + 5000, b"hello").unwrap();
    assert_eq!(inj.read_mem(big + 5000, 5).unwrap(), b"hello");
    let child_maps = proc::maps::read(upid).unwrap();
    assert!(child_maps.iter().any(|v| v.start <= big && big + 3 * 4096 <= v.end));
    inj.munmap(big, 3 * 4096).unwrap();
    assert!(inj.read_mem(big, 1).is_err());
    // Signals were blocked during injection and nothing was dequeued.
    assert!(inj.intercepted().is_empty());
    assert_eq!(inj.final_sigmask(), mask);
    inj.restore().unwrap();

    // Back exactly as found.
    assert_eq!(ptrace::get_regs(pid).unwrap(), regs);
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), mask);
    assert_eq!(ptrace::peek_siginfo(pid, false).unwrap().len(), 1);
    assert_eq!(ptrace::peek_siginfo(pid, true).unwrap().len(), 1);

    // Resume (still traced): the read restarts and returns our byte. This
    // needs the injector's final park in the signal path: resuming from a
    // plain syscall-exit stop would return -ERESTARTSYS to user space.
    ptrace::cont(pid, 0).unwrap();
    write_byte(cmd_w.as_raw_fd(), 41);
    assert_eq!(read_byte(reply_r.as_raw_fd()), 42);

    // Second round, ending with a detach.
    wait_until("child blocked in read again", || blocked_syscall(pid) == Some(0));
    ptrace::interrupt(pid).unwrap();
    assert_eq!(ptrace::wait_stop(pid).unwrap(), WaitOutcome::Interrupted);
    let regs = ptrace::get_regs(pid).unwrap();
    assert_eq!((regs.orig_ax, regs.ax as i64), (0, -512));
    let mut inj = Injector::new(pid, &maps).unwrap();
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid.as_raw() as i64);
    inj.restore().unwrap();
    ptrace::detach(pid, 0).unwrap();
    write_byte(cmd_w.as_raw_fd(), 50);
    assert_eq!(read_byte(reply_r.as_raw_fd()), 51);
    let status = child.wait_exit();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    // SAFETY: unmapping the region mapped above, no references remain.
    unsafe { libc::munmap(region.cast(), 16 * 4096) };
}

#[test]
fn group_stopped_task_stays_stopped() {
    require_root!();
    let _lock = FORK_MTX.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the child only loops on pause() and never returns.
    let pid = match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => loop {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        },
        ForkResult::Parent { child } => child,
    };
    let _child = ChildGuard::new(pid);
    let upid = pid.as_raw() as u32;
    wait_until("child in pause", || blocked_syscall(pid) == Some(libc::SYS_pause));
    kill(pid, Signal::SIGSTOP).unwrap();
    wait_until("child stopped", || proc::stat::read(upid).unwrap().state == 'T');

    ptrace::seize(pid, Options::PTRACE_O_TRACESYSGOOD).unwrap();
    ptrace::interrupt(pid).unwrap();
    assert_eq!(ptrace::wait_stop(pid).unwrap(), WaitOutcome::GroupStop(libc::SIGSTOP));
    let regs = ptrace::get_regs(pid).unwrap();
    let maps = proc::maps::read(upid).unwrap();
    let mut inj = Injector::new(pid, &maps).unwrap();
    assert_eq!(
        inj.syscall(libc::SYS_getppid, [0; 6]).unwrap(),
        Pid::this().as_raw() as i64
    );
    inj.restore().unwrap();
    assert_eq!(ptrace::get_regs(pid).unwrap(), regs);
    ptrace::detach(pid, 0).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(proc::stat::read(upid).unwrap().state, 'T');
    kill(pid, Signal::SIGCONT).unwrap();
    wait_until("child running again", || {
        proc::stat::read(upid).unwrap().state == 'S' && blocked_syscall(pid) == Some(libc::SYS_pause)
    });
}

#[test]
fn sigsuspend_mask_survives_injection() {
    require_root!();
    let _lock = FORK_MTX.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the child only blocks SIGUSR2 and loops in sigsuspend with a
    // mask of SIGUSR1: raw libc calls on its own locals.
    let pid = match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => unsafe {
            let mut o: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut o);
            libc::sigaddset(&mut o, libc::SIGUSR2);
            libc::sigprocmask(libc::SIG_SETMASK, &o, std::ptr::null_mut());
            let mut t: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut t);
            libc::sigaddset(&mut t, libc::SIGUSR1);
            loop {
                libc::sigsuspend(&t);
            }
        },
        ForkResult::Parent { child } => child,
    };
    let _child = ChildGuard::new(pid);
    let upid = pid.as_raw() as u32;
    wait_until("child in sigsuspend", || {
        blocked_syscall(pid) == Some(libc::SYS_rt_sigsuspend)
    });
    let (o, t) = (sig_bit(libc::SIGUSR2), sig_bit(libc::SIGUSR1));
    assert_eq!(proc::status::read(upid).unwrap().sig_blk, t);

    ptrace::seize(pid, Options::empty()).unwrap();
    ptrace::interrupt(pid).unwrap();
    assert_eq!(ptrace::wait_stop(pid).unwrap(), WaitOutcome::Interrupted);
    let regs = ptrace::get_regs(pid).unwrap();
    assert_eq!(regs.orig_ax as i64, libc::SYS_rt_sigsuspend);
    assert_eq!(regs.ax as i64, -514, "-ERESTARTNOHAND");
    // The kernel reports the mask sigsuspend will restore, not the
    // temporary one.
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), o);

    let maps = proc::maps::read(upid).unwrap();
    let mut inj = Injector::new(pid, &maps).unwrap();
    // Without TRACESYSGOOD, syscall stops look like SIGTRAP stops.
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid.as_raw() as i64);
    assert_eq!(inj.final_sigmask(), o, "the pre-sigsuspend mask");
    inj.restore().unwrap();
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), o);
    assert_eq!(ptrace::get_regs(pid).unwrap(), regs);

    ptrace::detach(pid, 0).unwrap();
    // The restarted sigsuspend installs its temporary mask again.
    wait_until("sigsuspend restarted", || {
        blocked_syscall(pid) == Some(libc::SYS_rt_sigsuspend) && proc::status::read(upid).unwrap().sig_blk == t
    });
}

/// Writes a 4-byte value to `fd`.
fn write_i32(fd: RawFd, v: i32) {
    // SAFETY: writes 4 bytes from a local array.
    unsafe { libc::write(fd, v.to_ne_bytes().as_ptr().cast(), 4) };
}

#[test]
fn clone3_exact_pids_in_new_pidns() {
    require_root!();
    let _lock = FORK_MTX.lock().unwrap_or_else(|e| e.into_inner());
    let (r, w) = pipe();
    let wfd = w.as_raw_fd();
    let res = clone::clone3_with_pid(libc::CLONE_NEWPID as u64, &[1], libc::SIGCHLD as u64).unwrap();
    let init = match res {
        ForkResult::Child => {
            // Pid 1 of the new namespace: report, make pid 4242, reap it.
            // SAFETY: raw getpid/waitpid/_exit only (async-signal-safe).
            unsafe {
                write_i32(wfd, libc::syscall(libc::SYS_getpid) as i32);
                match clone::clone3_with_pid(0, &[4242], libc::SIGCHLD as u64) {
                    Ok(ForkResult::Child) => {
                        write_i32(wfd, libc::syscall(libc::SYS_getpid) as i32);
                        write_i32(wfd, libc::syscall(libc::SYS_getppid) as i32);
                        libc::_exit(0);
                    }
                    Ok(ForkResult::Parent { child }) => {
                        write_i32(wfd, child.as_raw());
                        let mut st = 0;
                        libc::waitpid(child.as_raw(), &mut st, 0);
                        libc::_exit(if libc::WIFEXITED(st) { 0 } else { 5 });
                    }
                    Err(e) => {
                        write_i32(wfd, -(e as i32));
                        libc::_exit(4);
                    }
                }
            }
        }
        ForkResult::Parent { child } => child,
    };
    let mut guard = ChildGuard::new(init);
    drop(w);
    assert_ne!(init.as_raw(), 1);
    let mut vals = Vec::new();
    let mut b = [0u8; 4];
    loop {
        // SAFETY: reads at most 4 bytes into the local array.
        let n = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 4) };
        if n != 4 {
            break;
        }
        vals.push(i32::from_ne_bytes(b));
    }
    let status = guard.wait_exit();
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "values {vals:?}");
    // init saw itself as 1; the grandchild is 4242 with parent 1; init got
    // 4242 back from clone3. The order of the last three depends on
    // scheduling.
    assert_eq!(vals[0], 1);
    let mut rest = vals[1..].to_vec();
    rest.sort();
    assert_eq!(rest, [1, 4242, 4242]);
}

#[test]
fn clone3_refuses_shared_vm() {
    assert_eq!(
        clone::clone3_with_pid(libc::CLONE_VM as u64, &[], libc::SIGCHLD as u64).err(),
        Some(nix::errno::Errno::EINVAL)
    );
}

#[test]
fn pidfd_signal_and_xstate_errors() {
    require_root!();
    let _lock = FORK_MTX.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the child only loops on pause().
    let pid = match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => loop {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        },
        ForkResult::Parent { child } => child,
    };
    let mut child = ChildGuard::new(pid);
    // Not traced: ptrace requests fail with ESRCH.
    assert_eq!(ptrace::get_regs(pid), Err(nix::errno::Errno::ESRCH));
    let pidfd = clone::pidfd_open(pid).unwrap();
    clone::pidfd_send_signal(&pidfd, libc::SIGTERM).unwrap();
    let status = child.wait_exit();
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
}

/// Runs `op` on another thread (a thread of ours that changes memory
/// registered with `fd` waits until we read each event) and reads the
/// messages until it is done; `before_read` runs once, when the first
/// message is pending and unread. The messages and `op`'s result.
fn uffd_events_of<T: Send + 'static>(
    fd: &OwnedFd,
    op: impl FnOnce() -> T + Send + 'static,
    mut before_read: impl FnMut(),
) -> (Vec<super::uffd::Msg>, T) {
    use std::os::fd::AsFd;
    let t = std::thread::spawn(op);
    let mut msgs = Vec::new();
    let start = Instant::now();
    let mut first = true;
    while !t.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out; read so far: {msgs:?}"
        );
        if super::uffd::poll_in(&[fd.as_fd()], 10).unwrap()[0] {
            if first {
                before_read();
                first = false;
            }
            msgs.extend(super::uffd::read_msgs(fd).unwrap());
        }
    }
    let r = t.join().unwrap();
    msgs.extend(super::uffd::read_msgs(fd).unwrap());
    (msgs, r)
}

/// The non-cooperative events as lazy pages use them, on this process:
/// while an event is pending, copies fail with EAGAIN; the fork message
/// hands over the child's uffd (ours now; ESRCH once the child is gone);
/// madvise(DONTNEED), mremap and munmap report their ranges.
#[test]
fn uffd_noncooperative_events() {
    use super::uffd::{self, Msg};
    use nix::errno::Errno;
    require_root!();
    let _g = FORK_MTX.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: userfaultfd takes only flags.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert!(raw >= 0, "userfaultfd: {}", Errno::last());
    // SAFETY: a descriptor just returned to us, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    uffd::api(&fd, uffd::FEATURES_NONCOOP).expect("UFFDIO_API with the four events");
    const PG: usize = 4096;
    let len = 16 * PG;
    // SAFETY: a fresh anonymous mapping; only this test uses it, and it
    // reads only pages it has filled (a missing page would wait for us).
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as usize;
    assert_ne!(area, libc::MAP_FAILED as usize);
    uffd::register_missing(&fd, area as u64, len as u64).unwrap();
    let page = [7u8; PG];
    let at = |p: usize| (area + p * PG) as u64;

    // fork: a copy meanwhile is refused; the message brings the child's uffd.
    let mut refused = None;
    let (msgs, child) = uffd_events_of(
        &fd,
        || {
            // A raw fork (clone with SIGCHLD only): glibc's fork() holds
            // its malloc locks across the syscall, and the fork waits for
            // our reader thread, which allocates.
            // SAFETY: no stack or tls arguments; the child only leaves.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) } as i32;
            if pid == 0 {
                // SAFETY: ends the child at once, with no libc state used.
                unsafe { libc::syscall(libc::SYS_exit_group, 0) };
            }
            pid
        },
        || refused = Some(uffd::copy(&fd, at(9), &page)),
    );
    assert_eq!(refused, Some(Err(Errno::EAGAIN)));
    assert!(child > 0);
    let mut guard = ChildGuard::new(Pid::from_raw(child));
    guard.wait_exit();
    let mut it = msgs.into_iter();
    let Some(Msg::Fork(cfd)) = it.next() else {
        panic!("no fork message")
    };
    assert!(it.next().is_none());
    let link = std::fs::read_link(format!("/proc/self/fd/{}", cfd.as_raw_fd())).unwrap();
    assert!(link.to_string_lossy().contains("userfaultfd"), "{link:?}");
    assert_eq!(uffd::copy(&cfd, at(0), &page), Err(Errno::ESRCH));
    assert_eq!(uffd::copy(&fd, at(0), &page), Ok(PG));
    // SAFETY: page 0 was just filled.
    assert_eq!(unsafe { *(area as *const u8) }, 7);

    let (msgs, r) = uffd_events_of(
        &fd,
        move || {
            // SAFETY: pages 1-2 of the area, which nothing reads.
            unsafe { libc::madvise((area + PG) as *mut libc::c_void, 2 * PG, libc::MADV_DONTNEED) }
        },
        || {},
    );
    assert_eq!(r, 0);
    assert!(
        matches!(msgs[..], [Msg::Remove { start, end }] if start == at(1) && end == at(3)),
        "{msgs:?}"
    );

    let (msgs, r) = uffd_events_of(
        &fd,
        move || {
            // SAFETY: moves pages 4-5 over pages 12-13 of the same area
            // (MREMAP_FIXED replaces them); nothing reads either.
            unsafe {
                libc::mremap(
                    (area + 4 * PG) as *mut libc::c_void,
                    2 * PG,
                    2 * PG,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    (area + 12 * PG) as *mut libc::c_void,
                ) as usize
            }
        },
        || {},
    );
    assert_eq!(r as u64, at(12));
    // The move unmaps its target first (an unmap event), then moves.
    let remap = msgs.iter().find_map(|m| match m {
        Msg::Remap { from, to, len } => Some((*from, *to, *len)),
        _ => None,
    });
    assert_eq!(remap, Some((at(4), at(12), 2 * PG as u64)), "{msgs:?}");

    let (msgs, r) = uffd_events_of(
        &fd,
        move || {
            // SAFETY: pages 6-7 of the area, which nothing reads.
            unsafe { libc::munmap((area + 6 * PG) as *mut libc::c_void, 2 * PG) }
        },
        || {},
    );
    assert_eq!(r, 0);
    assert!(
        matches!(msgs[..], [Msg::Unmap { start, end }] if start == at(6) && end == at(8)),
        "{msgs:?}"
    );
    // The copy refused during the fork goes through now.
    assert_eq!(uffd::copy(&fd, at(9), &page), Ok(PG));
    drop(fd);
    // SAFETY: unmaps what is left of the test's own mapping.
    unsafe { libc::munmap(area as *mut libc::c_void, len) };
}
