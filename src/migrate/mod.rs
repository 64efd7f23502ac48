//! Migration: the page server, pre-copy rounds and `cryo migrate`.
//!
//! * [`wire`]: the framed stream between sender and receiver.
//! * [`server`]: `cryo page-server`, the receiving side: writes the images
//!   it receives (all of them, so the destination has a complete image
//!   directory) and, when asked, restores them.
//! * [`track`]: write tracking with userfaultfd async write-protect and
//!   PAGEMAP_SCAN, for pre-copy rounds.
//! * [`send`]: the sending side.

pub mod cli;
pub mod commit;
pub mod ctr;
pub mod lazy;
pub mod predump;
pub mod prestage;
pub mod runs;
pub mod send;
pub mod server;
pub mod track;
pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tracing::info;

use crate::dump::{self, PidView};
use crate::hooks::{Event, Hook};
use wire::Frame;

/// What `cryo migrate` / `cryo dump --page-server` is asked to do.
#[derive(Debug, Clone)]
pub struct MigrateOpts {
    pub pid: i32,
    /// HOST:PORT of the page server.
    pub to: String,
    /// Pre-copy rounds at most (0: no pre-copy).
    pub max_rounds: u32,
    /// Ask the destination to restore (migrate) or only keep the images.
    pub restore: bool,
    /// The destination lets the tree run before the pre-copied pages are
    /// in its memory (lazy pages): the downtime no longer includes
    /// loading them.
    pub lazy: bool,
    pub shell_job: bool,
}

/// Figures of one migration.
#[derive(Debug, Clone, Default)]
pub struct MigrateStats {
    /// Bytes of pages copied in each pre-copy round.
    pub rounds: Vec<u64>,
    /// Pages copied while frozen, and taken from the rounds instead.
    pub final_pages: u64,
    pub parent_pages: u64,
    /// Bytes put on the wire.
    pub bytes_sent: u64,
    /// Freeze to images complete (dump stage), in us.
    pub frozen_us: u64,
    /// Freeze to the restored tree released on the destination (Commit):
    /// the time the workload does not run anywhere, in us.
    pub stopped_us: u64,
    pub total_us: u64,
    /// Host pid of the restored root on the destination.
    pub restored_pid: Option<i32>,
    /// Bytes the destination fetched after the restore (post-copy).
    pub post_copied: u64,
}

/// Whether pre-copy should stop after round `k` that found `dirty` bytes
/// written (`prev` in the round before): once the dirty set no longer
/// shrinks, or is tiny.
pub(crate) fn converged(k: u32, dirty: u64, prev: u64) -> bool {
    k > 1 && (dirty >= prev || dirty <= 256 << 10)
}

/// Pids of the tree rooted at `root` (children through /proc).
fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
        i += 1;
    }
    out
}

/// A private directory removed on drop.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Staging {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

/// Where the source stages the final (frozen) images before sending
/// them: tmpfs (/dev/shm) when there is one, so even these pages stay in
/// memory; else the temporary directory.
fn staging_dir() -> Result<Staging> {
    use std::os::unix::fs::DirBuilderExt;
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    // Staging left by a cryo that was killed (SIGKILL skips the cleanup).
    if let Ok(it) = std::fs::read_dir(&base) {
        for e in it.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix("cryo-migrate-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(p) = owner {
                if !std::path::Path::new(&format!("/proc/{p}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    for i in 0..1000u32 {
        let p = base.join(format!("cryo-migrate-{}-{i}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(Staging(p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("Cannot create {}", p.display())),
        }
    }
    bail!("Cannot create a staging directory in {}", base.display())
}

/// Moves the tree rooted at `opts.pid` to the page server at `opts.to`:
/// pre-copy rounds while it runs (until the dirty set stops shrinking),
/// then freeze, send the rest, restore there, and only then kill the
/// source. Any failure after the freeze resumes the source untouched;
/// the destination removes what it received and kills what it restored.
pub fn migrate(opts: &MigrateOpts) -> Result<MigrateStats> {
    crate::require_root("migrate")?;
    let t0 = Instant::now();
    let pid = opts.pid;
    if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("No process with pid {pid}");
    }
    let view = PidView::of_tree(pid)?;
    let hosts: Vec<(u32, i32)> = tree_pids(pid)
        .into_iter()
        .map(|p| Ok((view.pid(p)?, p)))
        .collect::<Result<_>>()?;
    let vpids: Vec<u32> = hosts.iter().map(|h| h.0).collect();
    let mut conn = send::Conn::connect(&opts.to, &vpids)?;
    let mut stats = MigrateStats::default();

    // Pre-copy.
    let mut tracker: Option<Arc<track::Tracker>> = None;
    if opts.max_rounds > 0 {
        let mut t = track::Tracker::start(pid, |p| view.pid(p))?;
        let mut prev = u64::MAX;
        for k in 1..=opts.max_rounds {
            let pages = t.round(k == 1)?;
            let dirty: u64 = pages.iter().map(|p| p.dirty.bytes()).sum();
            let copied = conn.send_round(k, &pages)?;
            for (p, c) in pages.iter().zip(&copied) {
                t.mark_sent(p.pid, c);
            }
            conn.flush()?;
            stats.rounds.push(dirty);
            info!("pre-copy round {k}: {dirty} bytes");
            if converged(k, dirty, prev) {
                break;
            }
            prev = dirty;
        }
        tracker = Some(Arc::new(t));
    }
    let rounds = stats.rounds.len() as u32;
    // Post-copy from the source: no pre-copy, lazy pages. The dump copies
    // no private anonymous page; the destination asks for them.
    let remote = opts.restore && opts.lazy && rounds == 0;
    if remote {
        tracker = Some(Arc::new(track::Tracker::remote()));
    }
    let fetched = Arc::new(Mutex::new(0u64));

    // Freeze, dump the rest, send, restore there, commit.
    let stage = staging_dir()?;
    let conn = Arc::new(Mutex::new(conn));
    let restored = Arc::new(Mutex::new(None::<i32>));
    let committed = Arc::new(Mutex::new(None::<Instant>));
    let guard = Arc::new(crate::freeze::StopGuard::default());
    let hook = {
        let conn = conn.clone();
        let restored = restored.clone();
        let committed = committed.clone();
        let dir: PathBuf = stage.path().to_path_buf();
        let want_restore = opts.restore;
        let lazy = opts.lazy && (rounds > 0 || remote);
        let hosts = hosts.clone();
        let fetched = fetched.clone();
        let guard = guard.clone();
        Hook::new(move |ev| {
            if ev != Event::PostDump {
                return Ok(());
            }
            let mut c = conn.lock().unwrap();
            c.send_dir(&dir, "")?;
            if rounds > 0 {
                c.frame(&Frame::Symlink {
                    name: "parent".into(),
                    target: format!("pre-{rounds}"),
                })?;
            }
            if !want_restore {
                c.frame(&Frame::End)?;
                c.flush()?;
                return match c.answer()? {
                    Frame::Ok => Ok(()),
                    f => Err(anyhow!("The page server answered End with {}", f.name())),
                };
            }
            c.frame(if lazy { &Frame::RestoreLazy } else { &Frame::Restore })?;
            c.flush()?;
            let rpid = match c.answer()? {
                Frame::Restored { pid } => pid as i32,
                f => bail!("The page server answered Restore with {}", f.name()),
            };
            // The commit point: from here on the destination runs the tree.
            // Should this process die from now on, the source must not run
            // again (ptrace would let it go): stop signals are queued. Not
            // in post-copy, where the destination cannot go on without the
            // source serving its pages: if this process dies, the
            // destination kills its copy and the source runs on.
            if !remote {
                guard.queue_stop();
            }
            let res = (|| -> Result<()> {
                c.frame(&Frame::Commit)?;
                c.flush()?;
                *committed.lock().unwrap() = Some(Instant::now());
                *restored.lock().unwrap() = Some(rpid);
                match c.answer() {
                    Ok(Frame::Done) => {}
                    // The destination failed after Commit; a failed restore
                    // leaves nothing there: the source resumes.
                    Ok(Frame::Error(m)) => {
                        *restored.lock().unwrap() = None;
                        bail!("the destination failed to start the restored tree: {m}")
                    }
                    // The answer is lost (or not one we know): the
                    // destination may run the tree or may have killed it.
                    // Neither resume nor kill.
                    other if !remote => {
                        let why = match other {
                            Ok(f) => format!("it answered {}", f.name()),
                            Err(e) => format!("{e:#}"),
                        };
                        let pids: Vec<String> = hosts.iter().map(|h| h.1.to_string()).collect();
                        return Err(crate::dump::HoldStopped(format!(
                            "no answer from the destination after Commit ({why}): it may run the tree already; \
                             the source tree is kept stopped (SIGSTOP), pids {}: if the destination runs it, \
                             kill these; if not, resume them with SIGCONT",
                            pids.join(" ")
                        ))
                        .into());
                    }
                    Ok(f) => bail!("the page server answered Commit with {}", f.name()),
                    Err(e) => return Err(e),
                }
                if remote {
                    // Serve pages from the frozen source until all are in.
                    // If the destination goes away first, it has killed its
                    // copy: failing here resumes the source.
                    let mut buf = vec![0u8; wire::MAX_DATA];
                    loop {
                        match c.answer()? {
                            Frame::PageReq { pid, addr, len } => {
                                let host =
                                    hosts.iter().find(|h| h.0 == pid).map(|h| h.1).ok_or_else(|| {
                                        anyhow!("The page server asked for pages of unknown pid {pid}")
                                    })?;
                                let b = &mut buf[..len as usize];
                                let got = crate::sys::vm::read_remote(
                                    nix::unistd::Pid::from_raw(host),
                                    &[(addr, b.len())],
                                    b,
                                )
                                .unwrap_or(0);
                                if got != b.len() {
                                    bail!("Cannot read {len} bytes of pid {pid} at {addr:#x} for the page server");
                                }
                                c.frame(&Frame::Data(b.to_vec()))?;
                                c.flush()?;
                                *fetched.lock().unwrap() += len as u64;
                            }
                            Frame::AllIn => break,
                            f => bail!("The page server sent {} during post-copy", f.name()),
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = &res {
                if e.downcast_ref::<crate::dump::HoldStopped>().is_none() {
                    // The source resumes: take the queued stop back.
                    guard.cancel_stop();
                }
            }
            res?;
            Ok(())
        })
    };
    let dopts = dump::DumpOpts {
        pid,
        dir: stage.path().to_path_buf(),
        shell_job: opts.shell_job,
        leave_running: false,
        hook,
        prev: tracker.clone(),
        stop_guard: Some(guard),
        ..Default::default()
    };
    let t_freeze = Instant::now();
    let res = dump::dump(&dopts);
    drop(dopts);
    drop(tracker); // ends write tracking (on a failure the source runs on)
    let st = res.map_err(|e| {
        if e.downcast_ref::<crate::dump::HoldStopped>().is_some() {
            e.context(format!("Migration of pid {pid} to {}", opts.to))
        } else {
            e.context(format!(
                "Migration of pid {pid} to {} failed; the source keeps running",
                opts.to
            ))
        }
    })?;
    stats.final_pages = st.pages_written;
    stats.parent_pages = st.pages_skipped_parent;
    stats.frozen_us = st.frozen_us;
    stats.stopped_us = committed
        .lock()
        .unwrap()
        .map_or(0, |t| (t - t_freeze).as_micros() as u64);
    stats.bytes_sent = conn.lock().unwrap().sent;
    stats.restored_pid = *restored.lock().unwrap();
    stats.post_copied = *fetched.lock().unwrap();
    stats.total_us = t0.elapsed().as_micros() as u64;
    Ok(stats)
}
