//! `cryo runtime` (or the binary called as `cryo-runtime`): an OCI runtime
//! wrapper for podman's `--runtime`. Every verb goes to the real runtime
//! unchanged; `checkpoint` and `restore` (runc's flags) are served with
//! cryo as the checkpoint engine.
//!
//! The real runtime is `$CRYO_RUNTIME` (a name on PATH or a path), else
//! the suffix of the wrapper's name (`cryo-runtime-runc` wraps runc: podman
//! passes no environment through conmon), else crun, else runc. With runc underneath, checkpoint and restore run
//! `runc --criu <cryo as criu> ...`, so the container is checkpointed by
//! cryo whatever `criu` is on PATH. crun 1.8.1 (Debian's, built without
//! CRIU) cannot host a restored container, and on this machine's hybrid
//! cgroup layout it cannot start one at all: with crun underneath the two
//! verbs fail with that reason.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Global options of runc and crun that take a value.
const VALUED: [&str; 7] = [
    "root",
    "log",
    "log-format",
    "criu",
    "rootless",
    "cgroup-manager",
    "log-level",
];

/// The index of the verb in `args` (after the global options), if any.
pub fn verb_index(args: &[String]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) {
            if !body.contains('=') && VALUED.contains(&body) {
                i += 1;
            }
            i += 1;
            continue;
        }
        return Some(i);
    }
    None
}

/// The search path when the caller gives none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    // podman runs some verbs with an empty environment: the usual
    // directories after the caller's.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(DEFAULT_PATH))
        .map(|d| d.join(name))
        .find(|c| c.is_file())
}

/// The real runtime: $CRYO_RUNTIME, the name's suffix, crun, runc.
fn real_runtime(argv0: &str) -> Result<PathBuf> {
    if let Some(r) = std::env::var_os("CRYO_RUNTIME") {
        let r = r.to_string_lossy().into_owned();
        return on_path(&r).with_context(|| format!("CRYO_RUNTIME={r} is not on PATH"));
    }
    if let Some(r) = argv0.strip_prefix("cryo-runtime-") {
        return on_path(r).with_context(|| format!("{argv0}: {r} is not on PATH"));
    }
    ["crun", "runc"]
        .iter()
        .find_map(|n| on_path(n))
        .context("no OCI runtime (crun or runc) on PATH; set CRYO_RUNTIME")
}

/// A file named `criu` that runs this binary (runc execs `--criu PATH` as
/// `PATH swrk N` and cryo speaks CRIU under that name).
fn criu_link() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("Cannot find the running binary")?;
    let dir = Path::new("/run/cryo");
    std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    let link = dir.join("criu");
    if std::fs::read_link(&link).ok().as_deref() != Some(exe.as_path()) {
        let tmp = dir.join(format!(".criu.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&exe, &tmp).with_context(|| format!("Cannot link {}", tmp.display()))?;
        std::fs::rename(&tmp, &link).with_context(|| format!("Cannot create {}", link.display()))?;
    }
    Ok(link)
}

/// Runs the wrapper (called as `argv0`) with `args`; returns only on error.
pub fn run(argv0: &str, args: &[String]) -> Result<i32> {
    let rt = real_runtime(argv0)?;
    let name = rt
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    if let Some(v) = verb_index(args) {
        if matches!(args[v].as_str(), "checkpoint" | "restore") {
            if name != "runc" {
                bail!(
                    "{} {}: {name} has no checkpoint support, and cryo runtime serves checkpoint and restore \
                     only over runc (call it as cryo-runtime-runc or set CRYO_RUNTIME=runc)",
                    rt.display(),
                    args[v]
                );
            }
            let link = criu_link()?;
            argv.insert(v, link.into_os_string());
            argv.insert(v, "--criu".into());
        }
    }
    let err = Command::new(&rt).args(&argv).exec();
    Err(err).with_context(|| format!("Cannot run {}", rt.display()))
}

/// Entry point for `cryo-runtime` / `cryo runtime`.
pub fn main_with(argv0: &str, args: &[String]) -> i32 {
    match run(argv0, args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cryo runtime: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn finds_the_verb_after_global_options() {
        assert_eq!(
            verb_index(&v("--root /run/x --log-format json checkpoint --leave-running c1")),
            Some(4)
        );
        assert_eq!(verb_index(&v("--root=/run/x --systemd-cgroup restore c1")), Some(2));
        assert_eq!(verb_index(&v("--debug state c1")), Some(1));
        assert_eq!(verb_index(&v("--version")), None);
    }
}
