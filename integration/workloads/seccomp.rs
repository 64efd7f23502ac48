//! seccomp: seccomp filters and strict mode survive: the same syscalls are
//! still denied, the same way.
//!
//! `seccomp --log F --mode filter|strict [--corrupt]` (filter mode as root,
//! so that no_new_privs is not needed)
//!
//! filter: two filters are stacked. The first kills the process for a
//! foreign architecture, makes uname(2) fail with errno 77 and sysinfo(2)
//! trap (SIGSYS, SECCOMP_RET_DATA 0x55); the second makes syslog(2) fail
//! with errno 31. After SIGUSR1 the workload checks: /proc/self/status says
//! `Seccomp: 2` and `Seccomp_filters: 2`; uname and syslog fail with their
//! errnos; sysinfo raises SIGSYS with si_code SYS_SECCOMP, si_syscall 99 and
//! si_errno 0x55; getppid still works; a forked child inherits the filters
//! (its uname fails with 77). `--corrupt` stacks a third filter first.
//!
//! strict: a child S enters SECCOMP_MODE_STRICT (only read, write, exit and
//! rt_sigreturn remain) and spins (no syscalls allowed to sleep in) until
//! its SIGUSR2 handler sets a flag. After SIGUSR1 the root sends S SIGUSR2;
//! S writes `STRICT <pid> alive` (write is allowed) and then calls getpid,
//! which strict mode answers with SIGKILL. PASS needs both the line and S
//! killed by SIGKILL. `--corrupt` leaves S without strict mode.

use cryo_integration::probe::{self, Problems};
use cryo_integration::wl::{self, Args, Log};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const LD_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SYS_SECCOMP: i32 = 1;

fn f(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

fn install(prog: &[SockFilter]) {
    let fp = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    // seccomp(SECCOMP_SET_MODE_FILTER, 0, &fp)
    if probe::sys(libc::SYS_seccomp, [1, 0, &fp as *const SockFprog as u64, 0, 0, 0]).is_err() {
        wl::die("seccomp(SECCOMP_SET_MODE_FILTER)");
    }
}

fn filter_one() -> Vec<SockFilter> {
    vec![
        f(LD_ABS, 0, 0, 4),
        f(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        f(RET_K, 0, 0, RET_KILL_PROCESS),
        f(LD_ABS, 0, 0, 0),
        f(JEQ_K, 0, 1, libc::SYS_uname as u32),
        f(RET_K, 0, 0, RET_ERRNO | 77),
        f(JEQ_K, 0, 1, libc::SYS_sysinfo as u32),
        f(RET_K, 0, 0, RET_TRAP | 0x55),
        f(RET_K, 0, 0, RET_ALLOW),
    ]
}

fn filter_two(nr: i64, errno: u32) -> Vec<SockFilter> {
    vec![
        f(LD_ABS, 0, 0, 0),
        f(JEQ_K, 0, 1, nr as u32),
        f(RET_K, 0, 0, RET_ERRNO | errno),
        f(RET_K, 0, 0, RET_ALLOW),
    ]
}

static SYS_SYSCALL: AtomicI32 = AtomicI32::new(-1);
static SYS_ERRNO: AtomicI32 = AtomicI32::new(-1);
static SYS_CODE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // Atomics only. SAFETY: with SA_SIGINFO the kernel passes a valid
    // siginfo; for SIGSYS bytes 4..8 are si_errno, 8..12 si_code and
    // 24..28 si_syscall.
    unsafe {
        let p = info as *const u8;
        SYS_ERRNO.store(std::ptr::read_unaligned(p.add(4) as *const i32), Ordering::SeqCst);
        SYS_CODE.store(std::ptr::read_unaligned(p.add(8) as *const i32), Ordering::SeqCst);
        SYS_SYSCALL.store(std::ptr::read_unaligned(p.add(24) as *const i32), Ordering::SeqCst);
    }
}

static GO: AtomicBool = AtomicBool::new(false);

extern "C" fn on_go(_sig: libc::c_int) {
    // One atomic store and nothing else: it runs under strict seccomp.
    GO.store(true, Ordering::SeqCst);
}

fn raw_write(fd: i32, b: &[u8]) {
    // SAFETY: `b` is valid for its length; write is allowed in strict mode.
    unsafe {
        libc::syscall(libc::SYS_write, fd, b.as_ptr(), b.len());
    }
}

fn filter_mode(log: &Log, corrupt: bool) -> ! {
    probe::set_action(libc::SIGSYS, on_sigsys as *const () as usize, libc::SA_SIGINFO, &[]);
    install(&filter_one());
    install(&filter_two(libc::SYS_syslog, 31));
    let st = |k: &str| probe::self_status(k).unwrap_or_default();
    log.line(&format!(
        "SECCOMP filter Seccomp={} filters={}",
        st("Seccomp"),
        st("Seccomp_filters")
    ));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        install(&filter_two(libc::SYS_getcwd, 5));
    }
    let mut p = Problems::new();
    let c = "filter";
    p.eq(c, "Seccomp mode", st("Seccomp"), "2".to_string());
    p.eq(c, "Seccomp_filters", st("Seccomp_filters"), "2".to_string());
    let mut uts = [0u8; 512];
    p.eq(
        c,
        "uname",
        probe::sys(libc::SYS_uname, [uts.as_mut_ptr() as u64, 0, 0, 0, 0, 0]).map(|_| ()),
        Err(77),
    );
    p.eq(
        c,
        "syslog(SIZE_BUFFER)",
        probe::sys(libc::SYS_syslog, [10, 0, 0, 0, 0, 0]).map(|_| ()),
        Err(31),
    );
    let mut si = [0u8; 256];
    let _ = probe::sys(libc::SYS_sysinfo, [si.as_mut_ptr() as u64, 0, 0, 0, 0, 0]);
    p.eq(
        c,
        "sysinfo's SIGSYS (si_code, si_syscall, si_errno)",
        (
            SYS_CODE.load(Ordering::SeqCst),
            SYS_SYSCALL.load(Ordering::SeqCst),
            SYS_ERRNO.load(Ordering::SeqCst),
        ),
        (SYS_SECCOMP, libc::SYS_sysinfo as i32, 0x55),
    );
    p.ensure(c, probe::sys(libc::SYS_getppid, [0; 6]).is_ok(), || {
        "getppid is denied".into()
    });
    let kid = probe::fork();
    if kid == 0 {
        let mut uts = [0u8; 512];
        let r = probe::sys(libc::SYS_uname, [uts.as_mut_ptr() as u64, 0, 0, 0, 0, 0]);
        probe::exit_now(if r == Err(77) { 0 } else { 1 });
    }
    match probe::wait_child(kid, 5000) {
        Ok(s) if probe::exited_ok(s) => {}
        Ok(s) => p.add(
            c,
            format!("a forked child's uname is not denied ({})", probe::describe_status(s)),
        ),
        Err(e) => p.add(c, e),
    }
    log.verdict(&p.v, "mode=filter filters=2");
}

fn strict_mode(log: &Log, log_path: &str, corrupt: bool) -> ! {
    probe::set_action(libc::SIGUSR2, on_go as *const () as usize, 0, &[]);
    let s = probe::fork();
    if s == 0 {
        let me = wl::getpid();
        let alive = format!("STRICT {me} alive\n");
        let allowed = format!("STRICT {me} getpid allowed\n");
        let fd = log.fd();
        if !corrupt && probe::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_STRICT as u64, 0, 0, 0).is_err() {
            wl::die("PR_SET_SECCOMP strict");
        }
        // No syscalls from here on but read, write, exit and rt_sigreturn.
        while !GO.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        raw_write(fd, alive.as_bytes());
        // SAFETY: getpid takes no arguments; strict mode kills us here.
        unsafe { libc::syscall(libc::SYS_getpid) };
        raw_write(fd, allowed.as_bytes());
        // SAFETY: exit (not exit_group) is allowed in strict mode.
        unsafe { libc::syscall(libc::SYS_exit, 3) };
        probe::exit_now(3);
    }
    if !corrupt {
        let end = probe::mono_ns() + 10_000_000_000;
        loop {
            let st = std::fs::read_to_string(format!("/proc/{s}/status")).unwrap_or_default();
            if probe::status_field(&st, "Seccomp").as_deref() == Some("1") {
                break;
            }
            if probe::mono_ns() > end {
                wl::die("the child did not enter strict mode");
            }
            wl::sleep_ms(5);
        }
    }
    log.line(&format!("SECCOMP strict child={s}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let _ = probe::kill(s, libc::SIGUSR2);
    let mut p = Problems::new();
    let c = "strict";
    match probe::wait_child(s, 5000) {
        Ok(st) if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL => {}
        Ok(st) => p.add(
            c,
            format!(
                "child {s} ended with {}, not killed by its getpid",
                probe::describe_status(st)
            ),
        ),
        Err(e) => {
            p.add(c, e);
            let _ = probe::kill(s, libc::SIGKILL);
        }
    }
    let lines = probe::log_lines_with(log_path, "STRICT ");
    if !lines.contains(&format!("STRICT {s} alive")) {
        p.add(
            c,
            format!("child {s} never wrote its alive line (write denied, or it never woke): {lines:?}"),
        );
    }
    if lines.contains(&format!("STRICT {s} getpid allowed")) {
        p.add(c, format!("child {s}: getpid was allowed"));
    }
    log.verdict(&p.v, "mode=strict");
}

fn main() {
    let args = Args::from_env();
    let log_path = args.required("log");
    let log = Log::open(&log_path);
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    match args.value("mode").as_deref() {
        Some("filter") | None => filter_mode(&log, corrupt),
        Some("strict") => strict_mode(&log, &log_path, corrupt),
        Some(o) => wl::die(&format!("--mode {o}: filter or strict")),
    }
}
