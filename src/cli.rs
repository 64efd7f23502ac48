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
        #[command(flatten)]
        log: LogOpts,
    },
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
}

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

fn log_path(log: &LogOpts, dir: Option<&Path>) -> Option<PathBuf> {
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
            log,
        } => {
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
            let opts = dump::DumpOpts {
                pid,
                dir: dir.clone(),
                shell_job,
                leave_running,
                hook: Default::default(),
            };
            let st = dump::dump(&opts)?;
            tracing::info!(
                "dumped {} processes, {} pages, frozen {} us",
                st.processes,
                st.pages_written,
                st.frozen_us
            );
            if let Some(t) = &tar {
                if t == "-" {
                    let out = io::stdout().lock();
                    bundle::write_tar(&dir, out)?;
                } else {
                    let f = bundle::create_private(Path::new(t))?;
                    bundle::write_tar(&dir, f)?;
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
                hook: Default::default(),
            };
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
