//! reaper: runs a command as a child subreaper and reports what it leaves.
//!
//! `reaper --leftover FILE -- CMD [ARGS...]`
//!
//! Becomes a child subreaper (PR_SET_CHILD_SUBREAPER), runs CMD with the
//! same stdin/stdout/stderr, and waits for it. Any process CMD leaves behind
//! (a daemon, a half-restored tree, the init of a new pid namespace) is
//! re-parented to the reaper when its own parent dies. After CMD exits the
//! reaper waits `--settle-ms` (default 300), reaps dead ones, writes the pid and command
//! name of each remaining child to FILE (one per line; an empty file means
//! nothing was left), kills them with SIGKILL, reaps them, and exits with
//! CMD's exit code (128+signal if it was killed).

use cryo_integration::wl;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

fn children_of(me: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may contain spaces and ')'.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let mut rest = stat[close + 1..].split_whitespace();
        let _state = rest.next();
        if rest.next().and_then(|p| p.parse::<i32>().ok()) == Some(me) {
            out.push((pid, comm));
        }
    }
    out
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(sep) = argv.iter().position(|a| a == "--") else {
        wl::die("usage: reaper --leftover FILE [--settle-ms N] -- CMD [ARGS...]");
    };
    let opts = wl::Args::from_vec(argv[..sep].to_vec());
    let leftover = opts.required("leftover");
    let settle = opts.num("settle-ms", 300);
    let cmd = &argv[sep + 1..];
    if cmd.is_empty() {
        wl::die("reaper: no command");
    }

    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        wl::die("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    let status = match Command::new(&cmd[0]).args(&cmd[1..]).status() {
        Ok(s) => s,
        Err(e) => wl::die(&format!("reaper: cannot run {}: {e}", cmd[0])),
    };
    wl::sleep_ms(settle);
    // Dead children (zombies re-parented to us) are not "left behind".
    // SAFETY: reaping without a status pointer.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}

    let me = wl::getpid();
    let mut report = String::new();
    let left = children_of(me);
    for (pid, comm) in &left {
        report.push_str(&format!("{pid} {comm}\n"));
    }
    if std::fs::write(&leftover, report).is_err() {
        wl::die(&format!("reaper: cannot write {leftover}"));
    }
    // Kill and reap until no child remains (a killed pid-namespace init
    // takes its whole namespace with it).
    for _ in 0..200 {
        let left = children_of(me);
        if left.is_empty() {
            break;
        }
        for (pid, _) in &left {
            // SAFETY: signalling and reaping our own children.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
                libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
        wl::sleep_ms(10);
    }
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    std::process::exit(code);
}
