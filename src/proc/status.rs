//! `/proc/P/status` (and `/proc/P/task/T/status`).
//!
//! `Key:\tvalue` lines. Masks (signals, capabilities) are 16 hex digits,
//! ids are decimal, `Umask` is octal. Lines cryo does not use are ignored;
//! the ones it does use must be present, except `Umask`, which zombies do
//! not have.

use super::{dec, hex_u64, read_parsed, ParseError, Result};

/// The fields of `/proc/P/status` cryo uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub name: String,
    /// 0 when absent (a zombie has no fs struct, so no `Umask:` line).
    pub umask: u32,
    pub state: char,
    pub tgid: u32,
    pub pid: u32,
    pub ppid: u32,
    /// Pid of the tracer, 0 when not traced.
    pub tracer_pid: u32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// Real, effective, saved, filesystem.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The pid in each pid namespace, outermost first (the last is the one
    /// in the task's own namespace). Same for the three below.
    pub nspid: Vec<u32>,
    pub nstgid: Vec<u32>,
    pub nspgid: Vec<u32>,
    pub nssid: Vec<u32>,
    /// Pending for this thread.
    pub sig_pnd: u64,
    /// Pending for the whole thread group.
    pub shd_pnd: u64,
    /// Blocked.
    pub sig_blk: u64,
    /// Ignored.
    pub sig_ign: u64,
    /// Caught (a handler is installed).
    pub sig_cgt: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
    /// Number of filters attached (the task's filter chain length).
    pub seccomp_filters: u32,
    pub threads: u32,
}

const F: &str = "status";

fn ids(line: usize, v: &str) -> std::result::Result<Vec<u32>, ParseError> {
    v.split_whitespace().map(|w| dec(F, line, w)).collect()
}

fn four(line: usize, v: &str) -> std::result::Result<[u32; 4], ParseError> {
    let v = ids(line, v)?;
    v.try_into()
        .map_err(|v: Vec<u32>| ParseError::new(F, line, format!("{} ids, need 4", v.len())))
}

/// Parses the text of `/proc/P/status`.
pub fn parse(text: &str) -> std::result::Result<Status, ParseError> {
    let mut s = Status::default();
    // Required keys seen, so a truncated file is an error, not zeros.
    const REQUIRED: &[&str] = &[
        "Name",
        "State",
        "Tgid",
        "Pid",
        "PPid",
        "TracerPid",
        "Uid",
        "Gid",
        "Groups",
        "NStgid",
        "NSpid",
        "NSpgid",
        "NSsid",
        "Threads",
        "SigPnd",
        "ShdPnd",
        "SigBlk",
        "SigIgn",
        "SigCgt",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Seccomp_filters",
    ];
    let mut seen = vec![false; REQUIRED.len()];
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some((key, val)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(ParseError::new(F, n, format!("no ':' in {line:?}")));
        };
        let v = val.trim();
        match key {
            // Name is escaped by the kernel (\n, \\) but otherwise verbatim;
            // only the tab after the colon is separator.
            "Name" => s.name = val.strip_prefix('\t').unwrap_or(val).to_string(),
            "Umask" => {
                s.umask = u32::from_str_radix(v, 8).map_err(|_| ParseError::new(F, n, format!("bad umask {v:?}")))?
            }
            "State" => s.state = v.chars().next().ok_or_else(|| ParseError::new(F, n, "empty state"))?,
            "Tgid" => s.tgid = dec(F, n, v)?,
            "Pid" => s.pid = dec(F, n, v)?,
            "PPid" => s.ppid = dec(F, n, v)?,
            "TracerPid" => s.tracer_pid = dec(F, n, v)?,
            "Uid" => s.uid = four(n, v)?,
            "Gid" => s.gid = four(n, v)?,
            "Groups" => s.groups = ids(n, v)?,
            "NStgid" => s.nstgid = ids(n, v)?,
            "NSpid" => s.nspid = ids(n, v)?,
            "NSpgid" => s.nspgid = ids(n, v)?,
            "NSsid" => s.nssid = ids(n, v)?,
            "Threads" => s.threads = dec(F, n, v)?,
            "SigPnd" => s.sig_pnd = hex_u64(F, n, v)?,
            "ShdPnd" => s.shd_pnd = hex_u64(F, n, v)?,
            "SigBlk" => s.sig_blk = hex_u64(F, n, v)?,
            "SigIgn" => s.sig_ign = hex_u64(F, n, v)?,
            "SigCgt" => s.sig_cgt = hex_u64(F, n, v)?,
            "CapInh" => s.cap_inh = hex_u64(F, n, v)?,
            "CapPrm" => s.cap_prm = hex_u64(F, n, v)?,
            "CapEff" => s.cap_eff = hex_u64(F, n, v)?,
            "CapBnd" => s.cap_bnd = hex_u64(F, n, v)?,
            "CapAmb" => s.cap_amb = hex_u64(F, n, v)?,
            "NoNewPrivs" => s.no_new_privs = dec::<u32>(F, n, v)? != 0,
            "Seccomp" => s.seccomp = dec(F, n, v)?,
            "Seccomp_filters" => s.seccomp_filters = dec(F, n, v)?,
            _ => continue,
        }
        if let Some(k) = REQUIRED.iter().position(|r| *r == key) {
            seen[k] = true;
        }
    }
    if let Some(k) = seen.iter().position(|s| !s) {
        return Err(ParseError::new(F, 0, format!("missing {}", REQUIRED[k])));
    }
    Ok(s)
}

/// Reads `/proc/P/status`.
pub fn read(pid: u32) -> Result<Status> {
    read_parsed(super::pid_dir(pid).join("status"), parse)
}

/// Reads `/proc/P/task/T/status` (per-thread masks and credentials).
pub fn read_task(pid: u32, tid: u32) -> Result<Status> {
    read_parsed(super::task_dir(pid, tid).join("status"), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tmy prog (x)
Umask:\t0027
State:\tS (sleeping)
Tgid:\t7830
Ngid:\t0
Pid:\t7831
PPid:\t7827
TracerPid:\t0
Uid:\t1000\t1001\t1002\t1003
Gid:\t100\t101\t102\t103
FDSize:\t256
Groups:\t4 24 27 1000 
NStgid:\t7830\t12
NSpid:\t7831\t13
NSpgid:\t7827\t1
NSsid:\t4351\t1
Kthread:\t0
VmPeak:\t    3060 kB
Threads:\t3
SigQ:\t0/96364
SigPnd:\t0000000000000100
ShdPnd:\t0000000000004000
SigBlk:\t0000000000010000
SigIgn:\t0000000000000006
SigCgt:\t0000000180004a02
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000001
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t3
Speculation_Store_Bypass:\tthread vulnerable
Cpus_allowed_list:\t0-1
";

    #[test]
    fn full() {
        let s = parse(SAMPLE).unwrap();
        assert_eq!(s.name, "my prog (x)");
        assert_eq!(s.umask, 0o027);
        assert_eq!(s.state, 'S');
        assert_eq!((s.tgid, s.pid, s.ppid, s.tracer_pid), (7830, 7831, 7827, 0));
        assert_eq!(s.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gid, [100, 101, 102, 103]);
        assert_eq!(s.groups, [4, 24, 27, 1000]);
        assert_eq!(s.nstgid, [7830, 12]);
        assert_eq!(s.nspid, [7831, 13]);
        assert_eq!(s.nspgid, [7827, 1]);
        assert_eq!(s.nssid, [4351, 1]);
        assert_eq!(s.threads, 3);
        assert_eq!(s.sig_pnd, 0x100);
        assert_eq!(s.shd_pnd, 0x4000);
        assert_eq!(s.sig_blk, 0x10000);
        assert_eq!(s.sig_ign, 6);
        assert_eq!(s.sig_cgt, 0x180004a02);
        assert_eq!(s.cap_inh, 0);
        assert_eq!(s.cap_eff, 0x1fffeffffff);
        assert_eq!(s.cap_amb, 1);
        assert!(s.no_new_privs);
        assert_eq!((s.seccomp, s.seccomp_filters), (2, 3));
    }

    #[test]
    fn zombie_without_umask_and_empty_groups() {
        let z = SAMPLE
            .replace("Umask:\t0027\n", "")
            .replace("Groups:\t4 24 27 1000 ", "Groups:\t ");
        let s = parse(&z).unwrap();
        assert_eq!(s.umask, 0);
        assert!(s.groups.is_empty());
    }

    #[test]
    fn errors() {
        let e = parse(&SAMPLE.replace("CapBnd:\t000001fffeffffff\n", "")).unwrap_err();
        assert!(e.what.contains("CapBnd"), "{e}");
        let e = parse(&SAMPLE.replace("Uid:\t1000\t1001\t1002\t1003", "Uid:\t1000")).unwrap_err();
        assert_eq!(e.line, 9);
        assert!(parse(&SAMPLE.replace("0000000000010000", "xyz")).is_err());
        assert!(parse(&SAMPLE.replace("Umask:\t0027", "Umask:\t0089")).is_err());
    }

    #[test]
    fn live_self() {
        let me = std::process::id();
        let s = read(me).unwrap();
        assert_eq!(s.tgid, me);
        assert_eq!(*s.nspid.last().unwrap(), me);
        assert_eq!(s.uid[0], nix::unistd::getuid().as_raw());
        assert!(s.threads >= 1);
    }
}
