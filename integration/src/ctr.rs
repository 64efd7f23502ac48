//! What the container tests (e2e_runc, e2e_podman) share: finding their
//! tools, a busybox root filesystem, and the processes of a test's
//! workload by the marker on their command line.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A root filesystem at `root`: /bin/busybox (from the host's
/// busybox-static) with sh, sleep, echo, cat and hostname linked to it,
/// and empty proc, sys, dev, tmp and etc.
pub fn busybox_rootfs(root: &Path) {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    for tool in ["sh", "sleep", "echo", "cat", "hostname"] {
        std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
    }
}

/// Pids of the processes whose command line holds `M=<marker>` (the
/// workload scripts start with it).
pub fn marked_pids(marker: &str) -> Vec<i32> {
    let needle = format!("M={marker}");
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(&needle) {
                v.push(pid);
            }
        }
    }
    v
}
