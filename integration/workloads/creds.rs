//! creds: user and group ids, groups, capabilities, securebits and
//! no_new_privs survive.
//!
//! `creds --log F [--check LIST] [--corrupt]` (must start as root)
//!
//! Setup (always all of it, in this order): setgroups [100, 200, 300];
//! setresgid 1001/1002/1003 and fsgid 1004; securebits KEEP_CAPS |
//! NO_SETUID_FIXUP | NO_SETUID_FIXUP_LOCKED; setresuid 2001/2002/2003 and
//! fsuid 2004 (the capabilities stay, thanks to NO_SETUID_FIXUP); bounding
//! set without CAP_SYS_BOOT and CAP_MKNOD; permitted {CHOWN, DAC_OVERRIDE,
//! KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, SYS_NICE}, effective
//! {KILL, SETPCAP, NET_BIND_SERVICE}, inheritable {CHOWN,
//! NET_BIND_SERVICE}; ambient {NET_BIND_SERVICE}; no_new_privs; dumpable
//! set back to 1 (the uid change cleared it).
//!
//! Checks (all by default), from inside and from /proc/self/status:
//! - `ids`: getresuid, getresgid, fsuid, fsgid (Uid:/Gid: lines);
//! - `groups`: getgroups (Groups: line);
//! - `caps`: capget (v3), PR_CAPBSET_READ and PR_CAP_AMBIENT_IS_SET of
//!   every capability up to cap_last_cap (Cap*: lines);
//! - `securebits`: PR_GET_SECUREBITS;
//! - `nnp`: PR_GET_NO_NEW_PRIVS (NoNewPrivs: line).
//!
//! `--corrupt`: after the trigger the saved uid becomes 2009, the groups
//! lose 300, KILL leaves the effective set, KEEP_CAPS is cleared; for
//! `nnp` (which cannot be unset) the flag is not set in the first place.

use cryo_integration::probe::{self, Only, Problems};
use cryo_integration::wl::{self, Args, Log};

const ALL: &[&str] = &["ids", "groups", "caps", "securebits", "nnp"];

const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_NICE: u32 = 23;
const CAP_MKNOD: u32 = 27;

const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: u64 = 1 << 3;
const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const PR_CAP_AMBIENT: i32 = 47;
const PR_CAP_AMBIENT_IS_SET: u64 = 1;
const PR_CAP_AMBIENT_RAISE: u64 = 2;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[derive(Clone, Copy, Default, PartialEq, Debug)]
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// (effective, permitted, inheritable) as 64-bit masks.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Caps {
    eff: u64,
    prm: u64,
    inh: u64,
}

fn capget() -> Caps {
    let mut h = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    if probe::sys(
        libc::SYS_capget,
        [&mut h as *mut CapHeader as u64, d.as_mut_ptr() as u64, 0, 0, 0, 0],
    )
    .is_err()
    {
        wl::die("capget");
    }
    let j = |a: u32, b: u32| a as u64 | ((b as u64) << 32);
    Caps {
        eff: j(d[0].effective, d[1].effective),
        prm: j(d[0].permitted, d[1].permitted),
        inh: j(d[0].inheritable, d[1].inheritable),
    }
}

fn capset(c: Caps) {
    let mut h = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let d = [
        CapData {
            effective: c.eff as u32,
            permitted: c.prm as u32,
            inheritable: c.inh as u32,
        },
        CapData {
            effective: (c.eff >> 32) as u32,
            permitted: (c.prm >> 32) as u32,
            inheritable: (c.inh >> 32) as u32,
        },
    ];
    if probe::sys(
        libc::SYS_capset,
        [&mut h as *mut CapHeader as u64, d.as_ptr() as u64, 0, 0, 0, 0],
    )
    .is_err()
    {
        wl::die(&format!("capset {c:x?}"));
    }
}

fn bits(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, &c| m | (1u64 << c))
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn bounding() -> u64 {
    (0..=last_cap())
        .filter(|&c| probe::prctl(libc::PR_CAPBSET_READ, c as u64, 0, 0, 0) == Ok(1))
        .fold(0, |m, c| m | (1u64 << c))
}

fn ambient() -> u64 {
    (0..=last_cap())
        .filter(|&c| probe::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c as u64, 0, 0) == Ok(1))
        .fold(0, |m, c| m | (1u64 << c))
}

fn resuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: valid out-pointers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

fn resgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: valid out-pointers.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// The current fsuid/fsgid: set*(-1) changes nothing and returns it.
fn fsids() -> (u32, u32) {
    let u = probe::sys(libc::SYS_setfsuid, [u32::MAX as u64, 0, 0, 0, 0, 0]).unwrap_or(-1) as u32;
    let g = probe::sys(libc::SYS_setfsgid, [u32::MAX as u64, 0, 0, 0, 0, 0]).unwrap_or(-1) as u32;
    (u, g)
}

fn groups() -> Vec<u32> {
    let mut v = vec![0u32; 64];
    // SAFETY: `v` has room for 64 gids.
    let n = unsafe { libc::getgroups(64, v.as_mut_ptr()) };
    v.truncate(n.max(0) as usize);
    v.sort_unstable();
    v
}

fn setgroups(g: &[u32]) {
    // SAFETY: `g` is valid for its length.
    if unsafe { libc::setgroups(g.len(), g.as_ptr()) } != 0 {
        wl::die("setgroups");
    }
}

fn ok(r: libc::c_int, what: &str) {
    if r != 0 {
        wl::die(what);
    }
}

fn status_lines(keys: &[&str]) -> Vec<String> {
    let st = probe::read_proc("/proc/self/status");
    keys.iter()
        .map(|k| format!("{k}: {}", probe::status_field(&st, k).unwrap_or_default()))
        .collect()
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let only = Only::from_args(&args, ALL, ALL);
    let corrupt = args.flag("corrupt");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        wl::die("creds must start as root");
    }
    wl::install_usr1();

    setgroups(&[100, 200, 300]);
    // SAFETY: these calls take integers only.
    unsafe {
        ok(libc::setresgid(1001, 1002, 1003), "setresgid");
        libc::setfsgid(1004);
    }
    if probe::prctl(
        libc::PR_SET_SECUREBITS,
        SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED,
        0,
        0,
        0,
    )
    .is_err()
    {
        wl::die("PR_SET_SECUREBITS");
    }
    // SAFETY: integers only.
    unsafe {
        ok(libc::setresuid(2001, 2002, 2003), "setresuid");
        libc::setfsuid(2004);
    }
    for c in [CAP_SYS_BOOT, CAP_MKNOD] {
        if probe::prctl(libc::PR_CAPBSET_DROP, c as u64, 0, 0, 0).is_err() {
            wl::die("PR_CAPBSET_DROP");
        }
    }
    let prm = bits(&[
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_KILL,
        CAP_SETGID,
        CAP_SETUID,
        CAP_SETPCAP,
        CAP_NET_BIND_SERVICE,
        CAP_SYS_NICE,
    ]);
    let want = Caps {
        eff: bits(&[CAP_KILL, CAP_SETPCAP, CAP_NET_BIND_SERVICE]),
        prm,
        inh: bits(&[CAP_CHOWN, CAP_NET_BIND_SERVICE]),
    };
    capset(want);
    if probe::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE as u64, 0, 0).is_err() {
        wl::die("PR_CAP_AMBIENT_RAISE");
    }
    if !(corrupt && only.has("nnp")) && probe::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).is_err() {
        wl::die("PR_SET_NO_NEW_PRIVS");
    }
    if probe::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0).is_err() {
        wl::die("PR_SET_DUMPABLE");
    }

    let keys = [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
    ];
    let snap_status = status_lines(&keys);
    let snap = (
        resuid(),
        resgid(),
        fsids(),
        groups(),
        capget(),
        bounding(),
        ambient(),
        probe::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0).unwrap_or(-1),
    );
    log.line(&format!("CREDS {}", snap_status.join(" ")));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    if corrupt {
        if only.has("ids") {
            capset(Caps {
                eff: want.eff | bits(&[CAP_SETUID]),
                ..want
            });
            // SAFETY: integers only.
            unsafe { ok(libc::setresuid(u32::MAX, u32::MAX, 2009), "setresuid(corrupt)") };
        }
        if only.has("groups") {
            capset(Caps {
                eff: capget().eff | bits(&[CAP_SETGID]),
                ..want
            });
            setgroups(&[100, 200]);
        }
        if only.has("caps") {
            let c = capget();
            capset(Caps {
                eff: c.eff & !bits(&[CAP_KILL]),
                ..c
            });
        }
        if only.has("securebits") {
            let _ = probe::prctl(
                libc::PR_SET_SECUREBITS,
                SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED,
                0,
                0,
                0,
            );
        }
    }

    let mut p = Problems::new();
    let now_status = status_lines(&keys);
    let st = |k: &str, v: &[String]| {
        v.iter()
            .find(|l| l.starts_with(&format!("{k}:")))
            .cloned()
            .unwrap_or_default()
    };
    if only.has("ids") {
        p.eq("ids", "getresuid", resuid(), snap.0);
        p.eq("ids", "getresgid", resgid(), snap.1);
        p.eq("ids", "(fsuid, fsgid)", fsids(), snap.2);
        for k in ["Uid", "Gid"] {
            p.eq(
                "ids",
                &format!("/proc/self/status {k}"),
                st(k, &now_status),
                st(k, &snap_status),
            );
        }
    }
    if only.has("groups") {
        p.eq("groups", "getgroups", groups(), snap.3.clone());
        p.eq(
            "groups",
            "/proc/self/status Groups",
            st("Groups", &now_status),
            st("Groups", &snap_status),
        );
    }
    if only.has("caps") {
        let c = capget();
        p.eq(
            "caps",
            "effective",
            format!("{:#x}", c.eff),
            format!("{:#x}", snap.4.eff),
        );
        p.eq(
            "caps",
            "permitted",
            format!("{:#x}", c.prm),
            format!("{:#x}", snap.4.prm),
        );
        p.eq(
            "caps",
            "inheritable",
            format!("{:#x}", c.inh),
            format!("{:#x}", snap.4.inh),
        );
        p.eq(
            "caps",
            "bounding",
            format!("{:#x}", bounding()),
            format!("{:#x}", snap.5),
        );
        p.eq("caps", "ambient", format!("{:#x}", ambient()), format!("{:#x}", snap.6));
        for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            p.eq(
                "caps",
                &format!("/proc/self/status {k}"),
                st(k, &now_status),
                st(k, &snap_status),
            );
        }
    }
    if only.has("securebits") {
        p.eq(
            "securebits",
            "PR_GET_SECUREBITS",
            probe::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0).unwrap_or(-1),
            snap.7,
        );
    }
    if only.has("nnp") {
        p.eq(
            "nnp",
            "PR_GET_NO_NEW_PRIVS",
            probe::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0).unwrap_or(-1),
            1,
        );
    }
    log.verdict(&p.v, &format!("checks={} {}", only.list(), now_status.join(" ")));
}
