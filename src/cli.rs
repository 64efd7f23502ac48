//! The native command line (CRIU's spellings where they exist).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{bundle, dump, kerndat, log, restore};

#[derive(Parser, Debug)]
#[command(name = "cryo", version, about = "Checkpoint/restore for Linux process trees")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone, Default)]
pub struct LogOpts {
    /// Log file (relative paths go into the image directory, as with CRIU).
    #[arg(short = 'o', long = "log-file", global = true)]
    pub log_file: Option<PathBuf>,
    /// Verbosity 0..4 (-v alone means 4).
    #[arg(short = 'v', num_args = 0..=1, default_missing_value = "4", global = true)]
    pub verbosity: Option<u8>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Checkpoint a process tree.
    Dump {
        /// Pid of the tree's root.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory.
        #[arg(short = 'D', long = "images-dir")]
        dir: Option<PathBuf>,
        /// Write one tar stream (FILE, or - for stdout) instead of a directory.
        #[arg(long)]
        tar: Option<String>,
        /// The tree was started from a shell: its session and terminal are outside.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Leave the tree running after the dump.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// Dump established TCP connections (TCP_REPAIR); their peers stay connected.
        #[arg(long = "tcp-established")]
        tcp_established: bool,
        /// Dump established TCP connections so that they come back closed.
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        /// The tree is an OCI container of this bundle: its bind mounts
        /// (and cgroup v1 binds, a network namespace given by path) are
        /// external; --tar writes podman's export layout with spec.dump.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Send the images to `cryo page-server` at HOST:PORT instead of
        /// writing them (-D then only holds the log).
        #[arg(long = "page-server", value_name = "HOST:PORT", conflicts_with_all = ["tar", "leave_running"])]
        page_server: Option<String>,
        /// The last `cryo pre-dump` directory (relative to -D): copy only
        /// the pages written since, the rest are PE_PARENT.
        #[arg(long = "prev-images-dir", conflicts_with = "page_server")]
        prev_images_dir: Option<PathBuf>,
        /// Accepted for CRIU compatibility (cryo always tracks memory
        /// between pre-dumps).
        #[arg(long = "track-mem")]
        track_mem: bool,
        #[command(flatten)]
        log: LogOpts,
    },
    /// Copy a tree's memory while it runs (pre-copy); repeat with
    /// --prev-images-dir, end with `cryo dump --prev-images-dir`.
    PreDump(crate::migrate::cli::PreDumpArgs),
    /// Receive images from `cryo dump --page-server` or `cryo migrate`
    /// (one session), and restore them when the sender asks.
    PageServer(crate::migrate::cli::PageServerArgs),
    /// Move a running tree to `cryo page-server` on another host:
    /// pre-copy, freeze, send the rest, restore there, kill the source.
    Migrate(crate::migrate::cli::MigrateArgs),
    /// Restore a process tree into a fresh pid namespace.
    Restore {
        #[arg(short = 'D', long = "images-dir")]
        dir: Option<PathBuf>,
        /// Read one tar stream (FILE, or - for stdin) instead of a directory.
        #[arg(long)]
        tar: Option<String>,
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Return once the tree runs instead of waiting for it.
        #[arg(short = 'd', long = "restore-detached")]
        detach: bool,
        /// Write the host pid of the restored root here.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Restore even from an image directory writable by non-root users.
        #[arg(long = "trust-images")]
        trust_images: bool,
        /// Restore even if an open file changed size since the dump.
        #[arg(long = "skip-file-check")]
        skip_file_check: bool,
        /// Restore established TCP connections closed.
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        /// For a tree with its own network namespace: veth IN's other end is
        /// created as OUT in this namespace (IN=OUT, repeatable).
        #[arg(long = "veth-pair")]
        veth_pair: Vec<String>,
        /// A container's root directory: its mount tree is rebuilt over it.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Where an external mount comes from: NAME:PATH (repeatable).
        #[arg(long = "ext-mount", value_name = "NAME:PATH")]
        ext_mount: Vec<String>,
        /// Start the tree before the pages of the parent (pre-copy) images
        /// are in: they are filled on first touch through userfaultfd, and
        /// in the background, while cryo stays until all are in.
        #[arg(long = "lazy-pages")]
        lazy_pages: bool,
        #[command(flatten)]
        log: LogOpts,
    },
    /// Check that this kernel has what cryo needs.
    Check {
        #[command(flatten)]
        log: LogOpts,
    },
    /// Print images (a directory or one file) as JSON.
    Show {
        path: PathBuf,
        #[command(flatten)]
        log: LogOpts,
    },
    /// Serve one CRIU RPC request on the inherited SOCK_SEQPACKET socket FD
    /// (what runc, podman and crun run as `criu swrk FD`).
    Swrk { fd: String },
    /// Make this binary the `criu` that runc, podman, crun, CRI-O and
    /// containerd find on PATH (a symlink, or a copy, named criu).
    Install {
        /// Where to put it; the file name must be `criu`.
        #[arg(long, default_value = DEFAULT_INSTALL)]
        dest: PathBuf,
        /// Copy the binary instead of linking to it.
        #[arg(long)]
        copy: bool,
        /// Replace a file at DEST that is not cryo (e.g. a real criu).
        #[arg(long)]
        force: bool,
    },
}

/// Where `cryo install` puts the `criu` link: first in every default root
/// PATH, before Debian's /usr/sbin/criu.
pub const DEFAULT_INSTALL: &str = "/usr/local/sbin/criu";

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            eprintln!("cryo: {msg}");
            1
        }
    }
}

pub(crate) fn log_path(log: &LogOpts, dir: Option<&Path>) -> Option<PathBuf> {
    let f = log.log_file.as_ref()?;
    if f.is_relative() {
        if let Some(d) = dir {
            return Some(d.join(f));
        }
    }
    Some(f.clone())
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Dump {
            pid,
            dir,
            tar,
            shell_job,
            leave_running,
            tcp_established,
            tcp_close,
            bundle: oci_bundle,
            page_server,
            prev_images_dir,
            track_mem: _,
            log,
        } => {
            if let Some(to) = page_server {
                log::init(log_path(&log, dir.as_deref()).as_deref(), log.verbosity)?;
                return crate::migrate::cli::dump_to(pid, &to, shell_job);
            }
            let (dir, tmp) = match (&dir, &tar) {
                (Some(d), None) => (d.clone(), None),
                (None, Some(_)) | (Some(_), Some(_)) => {
                    let t = bundle::TempDir::new("dump")?;
                    (t.path().to_path_buf(), Some(t))
                }
                (None, None) => bail!("dump needs an image directory (-D DIR) or --tar FILE|-"),
            };
            // The log goes next to the images unless a tar stream is made.
            let logdir = if tmp.is_some() { None } else { Some(dir.as_path()) };
            if logdir.is_some() {
                crate::image::ImageDir::create(&dir)?;
            }
            log::init(log_path(&log, logdir).as_deref(), log.verbosity)?;
            let spec = match &oci_bundle {
                Some(b) => Some(crate::oci::read_spec(b)?),
                None => None,
            };
            let ext = match &spec {
                Some(sp) => crate::oci::externals(sp, pid)?,
                None => Default::default(),
            };
            let opts = dump::DumpOpts {
                pid,
                dir: dir.clone(),
                shell_job,
                leave_running,
                tcp_established,
                tcp_close,
                ext_mnt: ext.ext_mnt,
                external: ext.external,
                hook: Default::default(),
                ..Default::default()
            };
            let st = match &prev_images_dir {
                Some(p) => crate::migrate::predump::dump_after(opts.clone(), p)?,
                None => dump::dump(&opts)?,
            };
            tracing::info!(
                "dumped {} processes, {} pages, frozen {} us",
                st.processes,
                st.pages_written,
                st.frozen_us
            );
            if let Some(t) = &tar {
                let out: Box<dyn Write> = if t == "-" {
                    Box::new(io::stdout().lock())
                } else {
                    Box::new(bundle::create_private(Path::new(t))?)
                };
                let container = fs::read_dir(&dir)?
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("mountpoints-"));
                if container {
                    let id = oci_bundle
                        .as_deref()
                        .and_then(|b| b.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| format!("cryo-{pid}"));
                    let mut meta = vec![(
                        "config.dump",
                        serde_json::to_vec_pretty(&crate::oci::config_dump(&id, "cryo"))?,
                    )];
                    if let Some(sp) = &spec {
                        meta.push(("spec.dump", serde_json::to_vec_pretty(sp)?));
                    }
                    bundle::write_container_tar(&dir, out, &meta)?;
                } else {
                    bundle::write_tar(&dir, out)?;
                }
            }
            Ok(0)
        }
        Cmd::Restore {
            dir,
            tar,
            shell_job,
            detach,
            pidfile,
            trust_images,
            skip_file_check,
            tcp_close,
            veth_pair,
            root,
            ext_mount,
            lazy_pages,
            log,
        } => {
            let (dir, _tmp) = match (&dir, &tar) {
                (Some(d), None) => (d.clone(), None),
                (_, Some(t)) => {
                    let tmp = bundle::TempDir::new("restore")?;
                    if t == "-" {
                        bundle::read_tar(io::stdin().lock(), tmp.path())?;
                    } else {
                        let f = fs::File::open(t).with_context(|| format!("Cannot open {t}"))?;
                        bundle::read_tar(f, tmp.path())?;
                    }
                    (tmp.path().to_path_buf(), Some(tmp))
                }
                (None, None) => bail!("restore needs an image directory (-D DIR) or --tar FILE|-"),
            };
            let logdir = if _tmp.is_some() { None } else { Some(dir.as_path()) };
            log::init(log_path(&log, logdir).as_deref(), log.verbosity)?;
            let opts = restore::RestoreOpts {
                dir,
                shell_job,
                detach,
                pidfile,
                trust_images: trust_images || _tmp.is_some(),
                skip_file_check,
                tcp_close,
                veth_pairs: veth_pair
                    .iter()
                    .map(|v| crate::net::ns::parse_veth_pair(v))
                    .collect::<Result<_>>()?,
                root,
                ext_mnt: ext_mount
                    .iter()
                    .map(|m| {
                        m.split_once(':')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .with_context(|| format!("--ext-mount {m}: expected NAME:PATH"))
                    })
                    .collect::<Result<_>>()?,
                inherit_fd: Vec::new(),
                hook: Default::default(),
                ..Default::default()
            };
            if lazy_pages {
                return crate::migrate::lazy::restore_lazy(opts);
            }
            let r = restore::restore(&opts)?;
            Ok(r.exit_code.unwrap_or(0))
        }
        Cmd::Check { log } => {
            log::init(log.log_file.as_deref(), log.verbosity)?;
            let missing = kerndat::check();
            if missing.is_empty() {
                println!("Looks good.");
                Ok(0)
            } else {
                for m in &missing {
                    eprintln!("cryo: missing: {m}");
                }
                Ok(1)
            }
        }
        Cmd::PreDump(a) => crate::migrate::cli::pre_dump(a),
        Cmd::PageServer(a) => crate::migrate::cli::page_server(a),
        Cmd::Migrate(a) => crate::migrate::cli::migrate(a),
        Cmd::Swrk { fd } => Ok(crate::rpc::swrk_main(&fd)),
        Cmd::Install { dest, copy, force } => {
            let exe = std::env::current_exe().context("Cannot find the running binary")?;
            println!("{}", install(&exe, &dest, copy, force)?);
            Ok(0)
        }
        Cmd::Show { path, log } => {
            log::init(log.log_file.as_deref(), log.verbosity)?;
            let v = crate::image::show::show_path(&path)?;
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &v)?;
            writeln!(out)?;
            Ok(0)
        }
    }
}

/// What `cryo install` found at the destination.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// Already this binary (a link to it, or an identical copy).
    Same,
    /// A link to some other `cryo` binary, or an older copy we may replace.
    OtherCryo,
    /// Something else (a real criu, a script, a directory).
    Foreign,
}

fn existing(exe: &Path, dest: &Path, copy: bool) -> Result<Existing> {
    let md = match fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(e).with_context(|| format!("Cannot stat {}", dest.display())),
    };
    if md.file_type().is_symlink() {
        let target = fs::canonicalize(dest).ok();
        if !copy && target.as_deref() == Some(exe) {
            return Ok(Existing::Same);
        }
        let is_cryo = fs::read_link(dest)
            .ok()
            .and_then(|t| t.file_name().map(|n| n == "cryo"))
            .unwrap_or(false);
        return Ok(if is_cryo {
            Existing::OtherCryo
        } else {
            Existing::Foreign
        });
    }
    if md.is_file() && copy {
        let same =
            fs::read(dest).ok() == Some(fs::read(exe).with_context(|| format!("Cannot read {}", exe.display()))?);
        if same {
            return Ok(Existing::Same);
        }
    }
    Ok(Existing::Foreign)
}

/// Installs `exe` as `dest` (a symlink, or a copy with `copy`); returns
/// what was done. Idempotent; the replacement is atomic (rename).
pub fn install(exe: &Path, dest: &Path, copy: bool, force: bool) -> Result<String> {
    if dest.file_name().and_then(|n| n.to_str()) != Some("criu") {
        bail!(
            "Install destination {} must be named criu (cryo picks its dialect by that name)",
            dest.display()
        );
    }
    let exe = fs::canonicalize(exe).with_context(|| format!("Cannot resolve {}", exe.display()))?;
    match existing(&exe, dest, copy)? {
        Existing::Same => return Ok(format!("{} is already {}", dest.display(), exe.display())),
        Existing::Foreign if !force => bail!("{} exists and is not cryo; pass --force to replace it", dest.display()),
        _ => {}
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("Cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".criu.cryo-install.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if copy {
        fs::copy(&exe, &tmp).with_context(|| format!("Cannot copy {} to {}", exe.display(), tmp.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("Cannot chmod {}", tmp.display()))?;
    } else {
        std::os::unix::fs::symlink(&exe, &tmp).with_context(|| format!("Cannot create link {}", tmp.display()))?;
    }
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("Cannot rename {} to {}", tmp.display(), dest.display()));
    }
    Ok(format!(
        "{} {} {}",
        dest.display(),
        if copy { "is a copy of" } else { "->" },
        exe.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_careful() {
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("cryo");
        fs::write(&exe, b"binary").unwrap();
        let dest = t.path().join("sbin/criu");
        let m = install(&exe, &dest, false, false).unwrap();
        assert!(m.contains("->"), "{m}");
        assert_eq!(fs::read_link(&dest).unwrap(), fs::canonicalize(&exe).unwrap());
        assert!(install(&exe, &dest, false, false).unwrap().contains("already"));
        // A link to another cryo build is replaced; a foreign file is not.
        let other = t.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("cryo"), b"old").unwrap();
        fs::remove_file(&dest).unwrap();
        std::os::unix::fs::symlink(other.join("cryo"), &dest).unwrap();
        install(&exe, &dest, false, false).unwrap();
        assert_eq!(fs::canonicalize(&dest).unwrap(), fs::canonicalize(&exe).unwrap());
        fs::remove_file(&dest).unwrap();
        fs::write(&dest, b"real criu").unwrap();
        let e = install(&exe, &dest, false, false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(fs::read(&dest).unwrap(), b"real criu");
        // Copies: --force replaces, then a second copy is a no-op.
        install(&exe, &dest, true, true).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"binary");
        assert!(install(&exe, &dest, true, false).unwrap().contains("already"));
        assert!(install(&exe, &t.path().join("notcriu"), false, false).is_err());
    }
}
