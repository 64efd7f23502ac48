//! The command-line side of migration: `cryo page-server`, `cryo migrate`
//! and `cryo dump --page-server`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cli::{log_path, LogOpts};
use crate::log;

#[derive(Args, Debug)]
pub struct PageServerArgs {
    /// TCP port to listen on (0: any; the port is printed).
    #[arg(long)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: String,
    /// Where the received images go (missing or empty).
    #[arg(short = 'D', long = "images-dir")]
    pub dir: PathBuf,
    /// When a restore is asked for: write the restored root's host pid here.
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
    /// Restore the images as this runc container (`runc restore -d`),
    /// from `--bundle`.
    #[arg(long, requires = "bundle")]
    pub container: Option<String>,
    /// The container's bundle on this host (config.json and rootfs).
    #[arg(long, requires = "container")]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeOpts,
    #[command(flatten)]
    pub log: LogOpts,
}

/// The container runtime `--container` drives.
#[derive(Args, Debug)]
pub struct RuntimeOpts {
    /// The OCI runtime (only runc).
    #[arg(long, default_value = "runc")]
    pub runtime: String,
    /// The runtime's state root (runc --root).
    #[arg(long)]
    pub runtime_root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Pid of the tree's root.
    #[arg(short = 't', long = "tree", required_unless_present = "container")]
    pub pid: Option<i32>,
    /// Migrate this runc container instead (runc checkpoints it here; the
    /// page server restores it with `--container` and `--bundle`).
    #[arg(long, conflicts_with_all = ["pid", "shell_job"])]
    pub container: Option<String>,
    #[command(flatten)]
    pub rt: RuntimeOpts,
    /// The destination's `cryo page-server`.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Pre-copy rounds at most (they stop earlier once the set of pages
    /// written between rounds no longer shrinks).
    #[arg(long, default_value_t = 8)]
    pub max_rounds: u32,
    /// No pre-copy: freeze, send everything, restore.
    #[arg(long, conflicts_with = "max_rounds")]
    pub no_pre_copy: bool,
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Let the tree run on the destination before the pre-copied pages
    /// are in its memory; they are filled on first touch (userfaultfd)
    /// and in the background by the page server.
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    #[command(flatten)]
    pub log: LogOpts,
}

#[derive(Args, Debug)]
pub struct PreDumpArgs {
    /// Pid of the tree's root.
    #[arg(short = 't', long = "tree")]
    pub pid: i32,
    /// Where this round's pages go.
    #[arg(short = 'D', long = "images-dir")]
    pub dir: PathBuf,
    /// The previous pre-dump directory (relative to -D): copy only what
    /// was written since.
    #[arg(long = "prev-images-dir")]
    pub prev: Option<PathBuf>,
    /// Accepted for CRIU compatibility.
    #[arg(long = "track-mem")]
    pub track_mem: bool,
    #[command(flatten)]
    pub log: LogOpts,
}

pub fn pre_dump(a: PreDumpArgs) -> Result<i32> {
    log::init(log_path(&a.log, None).as_deref(), a.log.verbosity)?;
    let b = super::predump::pre_dump(a.pid, &a.dir, a.prev.as_deref())?;
    println!("cryo pre-dump: {} KiB copied", b >> 10);
    Ok(0)
}

pub fn page_server(a: PageServerArgs) -> Result<i32> {
    log::init(log_path(&a.log, None).as_deref(), a.log.verbosity)?;
    let host = if a.address.contains(':') {
        format!("[{}]", a.address)
    } else {
        a.address.clone()
    };
    let out = super::server::serve(&super::server::ServerOpts {
        listen: format!("{host}:{}", a.port),
        dir: a.dir,
        pidfile: a.pidfile,
        container: match (a.container, a.bundle) {
            (Some(id), Some(bundle)) => Some(super::ctr::DstCtr {
                id,
                bundle,
                runtime: super::ctr::Runtime::new(&a.rt.runtime, a.rt.runtime_root)?,
            }),
            _ => None,
        },
    })?;
    match out {
        super::server::Outcome::Images => println!("cryo page-server: images received"),
        super::server::Outcome::Restored(_) => {}
    }
    Ok(0)
}

fn report(st: &super::MigrateStats) {
    let rounds: Vec<String> = st.rounds.iter().map(|b| format!("{}", b >> 10)).collect();
    println!(
        "cryo migrate: pre-copy rounds (KiB) [{}], final {} pages, {} pages from the rounds, \
         {} bytes sent, frozen {} ms, stopped {} ms, total {} ms, post-copy {} KiB{}",
        rounds.join(" "),
        st.final_pages,
        st.parent_pages,
        st.bytes_sent,
        st.frozen_us / 1000,
        st.stopped_us / 1000,
        st.total_us / 1000,
        st.post_copied >> 10,
        st.restored_pid
            .map_or(String::new(), |p| format!(", restored as pid {p}"))
    );
}

pub fn migrate(a: MigrateArgs) -> Result<i32> {
    log::init(log_path(&a.log, None).as_deref(), a.log.verbosity)?;
    let max_rounds = if a.no_pre_copy { 0 } else { a.max_rounds };
    if let Some(id) = a.container {
        let st = super::ctr::migrate(&super::ctr::CtrOpts {
            id,
            runtime: super::ctr::Runtime::new(&a.rt.runtime, a.rt.runtime_root)?,
            to: a.to,
            max_rounds,
            lazy: a.lazy_pages,
        })?;
        report(&st);
        return Ok(0);
    }
    let st = super::migrate(&super::MigrateOpts {
        pid: a.pid.expect("clap: -t or --container"),
        to: a.to,
        max_rounds: if a.no_pre_copy { 0 } else { a.max_rounds },
        restore: true,
        lazy: a.lazy_pages,
        shell_job: a.shell_job,
    })?;
    report(&st);
    Ok(0)
}

pub fn dump_to(pid: i32, to: &str, shell_job: bool) -> Result<i32> {
    let st = super::migrate(&super::MigrateOpts {
        pid,
        to: to.to_string(),
        max_rounds: 0,
        restore: false,
        lazy: false,
        shell_job,
    })?;
    report(&st);
    Ok(0)
}
