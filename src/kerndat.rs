//! Kernel feature probes behind `cryo check`.
//!
//! Each probe exercises the real interface (a syscall with harmless
//! arguments, a file that must exist), not the kernel version string.

use std::fs;

use crate::sys::probe;

/// One probed feature.
pub struct Feature {
    pub name: &'static str,
    pub why: &'static str,
    pub present: bool,
}

/// Probes every feature cryo relies on.
pub fn probe_all() -> Vec<Feature> {
    let root = nix::unistd::geteuid().is_root();
    vec![
        Feature {
            name: "root",
            why: "dump and restore need root (ptrace of any task, clone3 set_tid, PR_SET_MM_MAP)",
            present: root,
        },
        Feature {
            name: "/proc/PID/task/TID/children",
            why: "walking the process tree (CONFIG_PROC_CHILDREN)",
            present: fs::metadata(format!("/proc/self/task/{}/children", std::process::id())).is_ok(),
        },
        Feature {
            name: "/proc/PID/map_files",
            why: "identifying mapped files (CONFIG_CHECKPOINT_RESTORE)",
            present: fs::metadata("/proc/self/map_files").is_ok(),
        },
        Feature {
            name: "PAGEMAP_SCAN",
            why: "selecting the pages to dump (Linux 6.7)",
            present: probe::pagemap_scan(),
        },
        Feature {
            name: "clone3",
            why: "recreating tasks with their pids (set_tid, Linux 5.5)",
            present: probe::clone3(),
        },
        Feature {
            name: "pidfd_open",
            why: "taking file descriptors from tasks (Linux 5.3/5.6)",
            present: probe::pidfd_open(),
        },
        Feature {
            name: "kcmp",
            why: "finding shared open files (CONFIG_KCMP)",
            present: probe::kcmp(),
        },
        Feature {
            name: "PR_SET_MM_MAP",
            why: "restoring mm fields and the exe link (CONFIG_CHECKPOINT_RESTORE)",
            present: probe::prctl_mm_map(),
        },
        Feature {
            name: "pid namespaces",
            why: "restoring into a fresh pid namespace",
            present: fs::metadata("/proc/self/ns/pid_for_children").is_ok(),
        },
    ]
}

/// Names (with reasons) of the missing features; empty when all is there.
pub fn check() -> Vec<String> {
    probe_all()
        .into_iter()
        .filter(|f| !f.present)
        .map(|f| format!("{} ({})", f.name, f.why))
        .collect()
}
