//! attrs: per-process attributes survive.
//!
//! `attrs --log F [--dir D] [--check LIST] [--corrupt]` (as root: SCHED_RR)
//!
//! Checks (all but `root` by default; `root` must be checked alone):
//! - `sched`: SCHED_RR priority 7 with SCHED_RESET_ON_FORK;
//! - `nice`: nice 7 (getpriority);
//! - `affinity`: only the last CPU (CPU 0 on a one-CPU machine);
//! - `personality`: ADDR_NO_RANDOMIZE | UNAME26;
//! - `umask`: 027 (umask(2) and /proc/self/status Umask);
//! - `dumpable`: PR_SET_DUMPABLE 0;
//! - `pdeathsig`: PR_SET_PDEATHSIG SIGWINCH (ignored by default: harmless
//!   when the test's thread that started us ends);
//! - `subreaper`: PR_SET_CHILD_SUBREAPER 1;
//! - `rlimits`: unusual soft/hard limits (hard ones only lowered) for NOFILE, CORE, NPROC, MSGQUEUE,
//!   NICE, RTPRIO, MEMLOCK, SIGPENDING, LOCKS, CPU, STACK, RSS; all 16
//!   limits must equal the snapshot;
//! - `comm`: the name "attrs-cómm" (PR_GET_NAME and /proc/self/comm);
//! - `cwd`: the directory `D/cwd dir ü` (getcwd and /proc/self/cwd);
//! - `root`: chroot into `D/root` (holding a file `root-marker`) and chdir
//!   "/": stat("/") must be that directory and /root-marker must exist.
//!
//! `--corrupt` changes each checked attribute after the trigger.

use cryo_integration::probe::{self, Only, Problems};
use cryo_integration::wl::{self, Args, Log};
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;

const ALL: &[&str] = &[
    "sched",
    "nice",
    "affinity",
    "personality",
    "umask",
    "dumpable",
    "pdeathsig",
    "subreaper",
    "rlimits",
    "comm",
    "cwd",
    "root",
];
const DEFAULT: &[&str] = &[
    "sched",
    "nice",
    "affinity",
    "personality",
    "umask",
    "dumpable",
    "pdeathsig",
    "subreaper",
    "rlimits",
    "comm",
    "cwd",
];

const COMM: &str = "attrs-cómm";
const PERSONA: u64 = 0x0040000 | 0x0020000;
const RLIMITS: &[(libc::__rlimit_resource_t, u64, u64)] = &[
    (libc::RLIMIT_NOFILE, 321, 654),
    (libc::RLIMIT_CORE, 0, 123_456_789),
    (libc::RLIMIT_NPROC, 4321, 8765),
    (libc::RLIMIT_MSGQUEUE, 111_111, 222_222),
    (libc::RLIMIT_NICE, 5, 6),
    (libc::RLIMIT_RTPRIO, 8, 9),
    (libc::RLIMIT_MEMLOCK, 131_072, 262_144),
    (libc::RLIMIT_SIGPENDING, 5000, 6000),
    (libc::RLIMIT_LOCKS, 77, 88),
    (libc::RLIMIT_CPU, 3600, 7200),
    (libc::RLIMIT_STACK, 6 << 20, 64 << 20),
    (libc::RLIMIT_RSS, 1 << 40, libc::RLIM_INFINITY),
];

fn getrlimit(r: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is a valid out-pointer.
    unsafe { libc::getrlimit(r, &mut l) };
    (l.rlim_cur, l.rlim_max)
}

fn setrlimit(r: libc::__rlimit_resource_t, cur: u64, max: u64) {
    let l = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `l` is valid for the call.
    if unsafe { libc::setrlimit(r, &l) } != 0 {
        wl::die(&format!("setrlimit({r})"));
    }
}

fn all_rlimits() -> Vec<(u64, u64)> {
    (0..16).map(getrlimit).collect()
}

fn set_sched(policy: i32, prio: i32) {
    let sp = libc::sched_param { sched_priority: prio };
    // SAFETY: `sp` is valid for the call.
    if unsafe { libc::sched_setscheduler(0, policy, &sp) } != 0 {
        wl::die(&format!("sched_setscheduler({policy:#x}, {prio})"));
    }
}

fn sched() -> (i32, i32) {
    let mut sp = libc::sched_param { sched_priority: -1 };
    // SAFETY: `sp` is a valid out-pointer.
    unsafe {
        let pol = libc::sched_getscheduler(0);
        libc::sched_getparam(0, &mut sp);
        (pol, sp.sched_priority)
    }
}

fn nice() -> i32 {
    // getpriority returns 20 - nice from the raw syscall.
    20 - probe::sys(libc::SYS_getpriority, [libc::PRIO_PROCESS as u64, 0, 0, 0, 0, 0]).unwrap_or(-100) as i32
}

fn set_nice(n: i32) {
    // SAFETY: integers only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
        wl::die("setpriority");
    }
}

fn ncpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

fn affinity() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; the pointer is valid.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn set_affinity(cpus: &[usize]) {
    // SAFETY: as in `affinity`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            wl::die("sched_setaffinity");
        }
    }
}

fn get_umask() -> u32 {
    // SAFETY: umask has no memory effects; it is put back at once.
    unsafe {
        let m = libc::umask(0o777);
        libc::umask(m);
        m
    }
}

fn get_comm() -> Vec<u8> {
    let mut b = [0u8; 17];
    let _ = probe::prctl(libc::PR_GET_NAME, b.as_mut_ptr() as u64, 0, 0, 0);
    let n = b.iter().position(|&c| c == 0).unwrap_or(16);
    b[..n].to_vec()
}

fn set_comm(name: &str) {
    let c = CString::new(name).unwrap_or_default();
    if probe::prctl(libc::PR_SET_NAME, c.as_ptr() as u64, 0, 0, 0).is_err() {
        wl::die("PR_SET_NAME");
    }
}

fn chdir(p: &str) {
    let c = CString::new(p).unwrap_or_default();
    // SAFETY: `c` is a valid C string.
    if unsafe { libc::chdir(c.as_ptr()) } != 0 {
        wl::die(&format!("chdir {p}"));
    }
}

fn chroot(p: &str) {
    let c = CString::new(p).unwrap_or_default();
    // SAFETY: `c` is a valid C string.
    if unsafe { libc::chroot(c.as_ptr()) } != 0 {
        wl::die(&format!("chroot {p}"));
    }
}

fn cwd() -> String {
    std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("<getcwd: {e}>"))
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let only = Only::from_args(&args, ALL, DEFAULT);
    let corrupt = args.flag("corrupt");
    if only.has("root") && only.list() != "root" {
        wl::die("--check root must be alone (/proc is not visible after chroot)");
    }
    let dir = args.value("dir");
    if (only.has("cwd") || only.has("root")) && dir.is_none() {
        wl::die("cwd and root need --dir");
    }
    wl::install_usr1();
    let last_cpu = ncpus() - 1;

    if only.has("sched") {
        set_sched(libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, 7);
    }
    if only.has("nice") {
        set_nice(7);
    }
    if only.has("affinity") {
        set_affinity(&[last_cpu]);
    }
    if only.has("personality") {
        // SAFETY: personality takes an integer.
        unsafe { libc::personality(PERSONA as libc::c_ulong) };
    }
    if only.has("umask") {
        // SAFETY: umask takes an integer.
        unsafe { libc::umask(0o027) };
    }
    if only.has("dumpable") && probe::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0).is_err() {
        wl::die("PR_SET_DUMPABLE");
    }
    if only.has("pdeathsig") && probe::prctl(libc::PR_SET_PDEATHSIG, libc::SIGWINCH as u64, 0, 0, 0).is_err() {
        wl::die("PR_SET_PDEATHSIG");
    }
    if only.has("subreaper") && probe::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).is_err() {
        wl::die("PR_SET_CHILD_SUBREAPER");
    }
    if only.has("rlimits") {
        // Only lower hard limits (raising needs CAP_SYS_RESOURCE, which a
        // container may lack).
        for &(r, c, m) in RLIMITS {
            let (_, hard) = getrlimit(r);
            let m = m.min(hard);
            setrlimit(r, c.min(m), m);
        }
    }
    if only.has("comm") {
        set_comm(COMM);
    }
    let mut cwd_path = String::new();
    if only.has("cwd") {
        cwd_path = format!("{}/cwd dir ü", dir.as_deref().unwrap_or(""));
        let _ = std::fs::create_dir_all(&cwd_path);
        chdir(&cwd_path);
        cwd_path = cwd();
    }
    let mut root_id = (0, 0);
    if only.has("root") {
        let r = format!("{}/root", dir.as_deref().unwrap_or(""));
        let _ = std::fs::create_dir_all(format!("{r}/sub"));
        let _ = std::fs::write(format!("{r}/root-marker"), "x");
        let md = std::fs::metadata(&r).unwrap_or_else(|e| wl::die(&format!("stat {r}: {e}")));
        root_id = (md.dev(), md.ino());
        chdir(&r);
        chroot(&r);
        chdir("/");
    }
    let snap_sched = sched();
    let snap_aff = affinity();
    let snap_rl = all_rlimits();
    log.line(&format!(
        "ATTRS checks={} sched={snap_sched:?} nice={} affinity={snap_aff:?} cwd={cwd_path:?}",
        only.list(),
        nice()
    ));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    if corrupt {
        if only.has("sched") {
            set_sched(libc::SCHED_OTHER, 0);
        }
        if only.has("nice") {
            set_nice(3);
        }
        if only.has("affinity") && last_cpu > 0 {
            set_affinity(&[0]);
        }
        if only.has("personality") {
            // SAFETY: personality takes an integer.
            unsafe { libc::personality(0) };
        }
        if only.has("umask") {
            // SAFETY: umask takes an integer.
            unsafe { libc::umask(0o022) };
        }
        if only.has("dumpable") {
            let _ = probe::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        }
        if only.has("pdeathsig") {
            let _ = probe::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
        }
        if only.has("subreaper") {
            let _ = probe::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
        }
        if only.has("rlimits") {
            setrlimit(libc::RLIMIT_NOFILE, 320, 654);
        }
        if only.has("comm") {
            set_comm("attrs-changed");
        }
        if only.has("cwd") {
            chdir("/");
        }
        if only.has("root") {
            chroot("/sub");
            chdir("/");
        }
    }

    let mut p = Problems::new();
    if only.has("sched") {
        p.eq("sched", "(policy, priority)", sched(), snap_sched);
        p.eq(
            "sched",
            "(policy, priority)",
            snap_sched,
            (libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, 7),
        );
    }
    if only.has("nice") {
        p.eq("nice", "nice", nice(), 7);
    }
    if only.has("affinity") {
        p.eq("affinity", "CPUs", affinity(), vec![last_cpu]);
    }
    if only.has("personality") {
        // SAFETY: 0xffffffff queries without changing.
        let pers = unsafe { libc::personality(0xffff_ffff) } as u64;
        p.eq(
            "personality",
            "personality",
            format!("{pers:#x}"),
            format!("{PERSONA:#x}"),
        );
    }
    if only.has("umask") {
        p.eq("umask", "umask", format!("{:o}", get_umask()), "27".to_string());
        p.eq(
            "umask",
            "Umask in /proc/self/status",
            probe::self_status("Umask"),
            Some("0027".to_string()),
        );
    }
    if only.has("dumpable") {
        p.eq(
            "dumpable",
            "PR_GET_DUMPABLE",
            probe::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0),
            Ok(0),
        );
    }
    if only.has("pdeathsig") {
        p.eq(
            "pdeathsig",
            "PR_GET_PDEATHSIG",
            probe::prctl_get_int(libc::PR_GET_PDEATHSIG),
            Ok(libc::SIGWINCH),
        );
    }
    if only.has("subreaper") {
        p.eq(
            "subreaper",
            "PR_GET_CHILD_SUBREAPER",
            probe::prctl_get_int(libc::PR_GET_CHILD_SUBREAPER),
            Ok(1),
        );
    }
    if only.has("rlimits") {
        let now = all_rlimits();
        for (r, (a, b)) in now.iter().zip(snap_rl.iter()).enumerate() {
            if a != b {
                p.add("rlimits", format!("limit {r} is {a:?}, was {b:?}"));
            }
        }
    }
    if only.has("comm") {
        p.eq(
            "comm",
            "PR_GET_NAME",
            String::from_utf8_lossy(&get_comm()).into_owned(),
            COMM.to_string(),
        );
        let pc = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        p.eq("comm", "/proc/self/comm", pc.trim_end().to_string(), COMM.to_string());
    }
    if only.has("cwd") {
        p.eq("cwd", "getcwd", cwd(), cwd_path.clone());
        let link = std::fs::read_link("/proc/self/cwd")
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        p.eq("cwd", "/proc/self/cwd", link, cwd_path.clone());
    }
    if only.has("root") {
        match std::fs::metadata("/") {
            Ok(md) => p.eq("root", "(dev, ino) of /", (md.dev(), md.ino()), root_id),
            Err(e) => p.add("root", format!("stat /: {e}")),
        }
        p.ensure("root", std::path::Path::new("/root-marker").exists(), || {
            "/root-marker is not there".into()
        });
        p.eq("root", "getcwd", cwd(), "/".to_string());
    }
    log.verdict(&p.v, &format!("checks={}", only.list()));
}
