//! `cryo page-server`: receives one migration stream into an image
//! directory and, when the sender asks, restores it.
//!
//! The files land in `DIR/.incoming` and are moved into DIR only once the
//! stream ended cleanly (and, for a restore, the restored tree runs): a
//! broken or bad stream leaves DIR as it was, never a partial image that
//! looks valid. A restore waits, with every task ready but none running,
//! for the sender's Commit (sent once the source is stopped for good); if
//! it does not come, the restored tree is killed.

use std::fs;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tracing::{info, warn};

use super::wire::{self, Frame};
use crate::hooks::{Event, Hook};
use crate::image::names;
use crate::restore;

/// How long the receiver waits for the next frame.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// ADDRESS:PORT to listen on.
    pub listen: String,
    pub dir: PathBuf,
    /// For a restore: where to write the restored root's host pid.
    pub pidfile: Option<PathBuf>,
    /// Restore a runc container (`runc restore`) instead of a tree.
    pub container: Option<super::ctr::DstCtr>,
}

/// What a session ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The images are in DIR.
    Images,
    /// The tree was restored (host pid of its root).
    Restored(i32),
}

struct Session {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
}

impl Session {
    fn next(&mut self) -> Result<Frame> {
        wire::read_frame(&mut self.rd).map_err(|e| anyhow!("{e}"))
    }
    fn send(&mut self, f: &Frame) -> Result<()> {
        wire::write_frame(&mut self.wr, f)
            .and_then(|_| self.wr.flush())
            .map_err(|e| anyhow!("{}", wire::io_reason(&e)))
    }
}

/// Binds, prints `listening on ADDR` on stdout, serves one session.
pub fn serve(opts: &ServerOpts) -> Result<Outcome> {
    crate::require_root("page-server")?;
    if let Some(c) = &opts.container {
        c.check()?;
    }
    prepare_dir(&opts.dir)?;
    let l = TcpListener::bind(&opts.listen).with_context(|| format!("Cannot listen on {}", opts.listen))?;
    let addr = l.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "cryo page-server: listening on {addr}");
        let _ = out.flush();
    }
    info!("page server listening on {addr}, images into {}", opts.dir.display());
    let (s, peer) = l.accept().context("accept")?;
    drop(l);
    info!("connection from {peer}");
    s.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let _ = s.set_nodelay(true);
    let mut ses = Session {
        rd: BufReader::with_capacity(4 << 20, s.try_clone()?),
        wr: s,
    };
    let incoming = opts.dir.join(".incoming");
    let res = session(&mut ses, opts, &incoming);
    if let Err(e) = &res {
        let _ = ses.send(&Frame::Error(format!("{e:#}")));
        let _ = fs::remove_dir_all(&incoming);
    }
    res.with_context(|| format!("Migration stream from {peer}"))
}

/// DIR must be missing or empty (a stale `.incoming` is removed).
fn prepare_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(it) => {
            let _ = fs::remove_dir_all(dir.join(".incoming"));
            let mut it = it.filter_map(|e| e.ok()).filter(|e| e.file_name() != ".incoming");
            if it.next().is_some() {
                bail!("Image directory {} is not empty", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .with_context(|| format!("Cannot create {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("Cannot read {}", dir.display())),
    }
}

fn session(ses: &mut Session, opts: &ServerOpts, incoming: &Path) -> Result<Outcome> {
    let pids = match ses.next()? {
        Frame::Hello { version, pids } if version == wire::VERSION => pids,
        Frame::Hello { version, .. } => {
            bail!(
                "the sender speaks protocol version {version}, this cryo {}",
                wire::VERSION
            )
        }
        f => bail!("expected Hello, got a {} frame", f.name()),
    };
    ses.send(&Frame::Hello {
        version: wire::VERSION,
        pids: Vec::new(),
    })?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(incoming)
        .with_context(|| format!("Cannot create {}", incoming.display()))?;
    let mut files = 0usize;
    let mut shadow = super::prestage::Shadow::default();
    loop {
        match ses.next()? {
            Frame::FileBegin { name, size } => {
                receive_file(ses, incoming, &name, size, &pids, &mut shadow)?;
                files += 1;
            }
            Frame::Symlink { name, target } => {
                let round = wire::check_name(&name).map_err(|e| anyhow!(e))?;
                check_link(&name, round, &target)?;
                mkdirs(incoming, &name)?;
                std::os::unix::fs::symlink(&target, incoming.join(&name))
                    .with_context(|| format!("Cannot create the link {name}"))?;
            }
            Frame::End => {
                check_complete(incoming, files)?;
                move_into(incoming, &opts.dir)?;
                ses.send(&Frame::Ok)?;
                info!("received {files} files into {}", opts.dir.display());
                return Ok(Outcome::Images);
            }
            f @ (Frame::Restore | Frame::RestoreLazy) if opts.container.is_some() => {
                let lazy = f == Frame::RestoreLazy;
                check_complete(incoming, files)?;
                let pid = restore_container(ses, opts, incoming, lazy)?;
                move_into(incoming, &opts.dir)?;
                if let Err(e) = ses.send(&Frame::Done) {
                    warn!("could not confirm the restore to the sender: {e}");
                }
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "cryo page-server: restored container, pid {pid}");
                if lazy {
                    // runc's criu (the drop-in) filled them before it exited.
                    match super::ctr::lazy_report(&opts.dir.join("restore.log")) {
                        Some(l) => {
                            let _ = writeln!(out, "cryo page-server: {l}");
                        }
                        None => warn!("the drop-in's restore.log does not report its lazy pages"),
                    }
                }
                let _ = out.flush();
                return Ok(Outcome::Restored(pid));
            }
            f @ (Frame::Restore | Frame::RestoreLazy) => {
                let lazy = f == Frame::RestoreLazy;
                check_complete(incoming, files)?;
                let (pid, shim, procs, moved_in) = restore_here(
                    ses,
                    opts,
                    incoming,
                    lazy,
                    if lazy { Default::default() } else { shadow.view() },
                )?;
                // The restored tasks took what they needed of the windows.
                drop(shadow);
                move_into(incoming, &opts.dir)?;
                if let Err(e) = ses.send(&Frame::Done) {
                    // The source is stopped for good once it sent Commit.
                    warn!("could not confirm the restore to the sender: {e}");
                }
                {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(
                        out,
                        "cryo page-server: restored, pid {pid} (pre-copied memory moved in: {} MiB)",
                        moved_in >> 20
                    );
                    let _ = out.flush();
                }
                if !procs.is_empty() {
                    let remote = procs.iter().any(|p| p.has_remote());
                    let mut fetch = |pid: u32, addr: u64, buf: &mut [u8]| -> Result<()> {
                        ses.send(&Frame::PageReq {
                            pid,
                            addr,
                            len: buf.len() as u32,
                        })?;
                        match ses.next()? {
                            Frame::Data(d) if d.len() == buf.len() => {
                                buf.copy_from_slice(&d);
                                Ok(())
                            }
                            Frame::Error(m) => bail!("the source failed: {m}"),
                            f => bail!("the source answered PageReq with {}", f.name()),
                        }
                    };
                    let res = super::lazy::serve(&opts.dir, procs, if remote { Some(&mut fetch) } else { None });
                    let st = match res {
                        Ok(st) => st,
                        Err(e) => {
                            // Without its memory the restored tree cannot go
                            // on: kill it (the source resumes when it loses
                            // us before AllIn).
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(shim),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                            return Err(e.context("Post-copy failed; the restored tree was killed"));
                        }
                    };
                    if remote {
                        ses.send(&Frame::AllIn)?;
                    }
                    println!(
                        "cryo page-server: lazy pages: {} KiB copied, {} faults, all in after {} ms; events: {}",
                        st.bytes >> 10,
                        st.faults,
                        st.us / 1000,
                        st.events()
                    );
                }
                if lazy {
                    // All in: the tree no longer dies with this process.
                    restore::lazy_done(shim, pid);
                }
                return Ok(Outcome::Restored(pid));
            }
            Frame::Error(m) => bail!("the sender gave up: {m}"),
            f => bail!("unexpected {} frame", f.name()),
        }
    }
}

fn mkdirs(incoming: &Path, name: &str) -> Result<()> {
    if let Some((d, _)) = name.split_once('/') {
        let p = incoming.join(d);
        if !p.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .with_context(|| format!("Cannot create {}", p.display()))?;
        }
    }
    Ok(())
}

/// A `parent` link: `pre-N` at the top, `../pre-M` (M < N) in `pre-N/`.
fn check_link(name: &str, round: u32, target: &str) -> Result<()> {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base != "parent" {
        bail!("unexpected link {name:?} from the sender (only parent links)");
    }
    let ok = if round == 0 {
        wire::pre_round(target).is_some()
    } else {
        target
            .strip_prefix("../")
            .and_then(wire::pre_round)
            .is_some_and(|m| m < round)
    };
    if !ok {
        bail!("bad parent link {name} -> {target:?} from the sender");
    }
    Ok(())
}

fn receive_file(
    ses: &mut Session,
    incoming: &Path,
    name: &str,
    size: u64,
    pids: &[u32],
    shadow: &mut super::prestage::Shadow,
) -> Result<()> {
    wire::check_name(name).map_err(|e| anyhow!(e))?;
    let base = name.rsplit('/').next().unwrap_or(name);
    if let Some(p) = names::pagemap_pid(base) {
        if !pids.contains(&p) {
            bail!("{name}: pages for unknown process {p} (the sender announced {pids:?})");
        }
    }
    mkdirs(incoming, name)?;
    let path = incoming.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("Cannot create {name} (sent twice?)"))?;
    let mut h = crc32fast::Hasher::new();
    let mut got = 0u64;
    // A pre-copy round's pagemap is kept whole (for the pages file after
    // it); the pages go into the shadow windows as they come.
    let pagemap = super::prestage::pagemap_file(name);
    let mut kept = Vec::new();
    let mut sink = super::prestage::pages_file(name).and_then(|(r, id)| shadow.pages(r, id));
    loop {
        match ses
            .next()
            .with_context(|| format!("{name}: after {got} of {size} bytes"))?
        {
            Frame::Data(d) => {
                got += d.len() as u64;
                if got > size {
                    bail!("{name}: more data than the announced {size} bytes");
                }
                h.update(&d);
                f.write_all(&d).with_context(|| format!("Cannot write {name}"))?;
                if let Some(k) = sink.as_mut() {
                    k.write(&d);
                }
                if pagemap.is_some() {
                    kept.extend_from_slice(&d);
                }
            }
            Frame::FileEnd { crc } => {
                if got != size {
                    bail!("{name}: {got} bytes received, {size} announced");
                }
                let mine = h.finalize();
                if mine != crc {
                    bail!("{name}: corrupted in transit (crc32 {mine:#010x}, sender says {crc:#010x})");
                }
                drop(sink);
                if let Some((round, pid)) = pagemap {
                    shadow.pagemap(round, name, pid, &kept);
                }
                return Ok(());
            }
            fr => bail!("{name}: unexpected {} frame inside a file", fr.name()),
        }
    }
}

/// The top level must be a complete, consistent image directory.
fn check_complete(incoming: &Path, files: usize) -> Result<()> {
    if files == 0 || !incoming.join(names::INVENTORY).exists() {
        bail!("the stream ended without a complete image set (no inventory.img)");
    }
    crate::image::ImageDir::open(incoming).context("The received images are not valid")?;
    Ok(())
}

fn move_into(incoming: &Path, dir: &Path) -> Result<()> {
    for e in fs::read_dir(incoming)? {
        let e = e?;
        let to = dir.join(e.file_name());
        fs::rename(e.path(), &to).with_context(|| format!("Cannot move {} into place", to.display()))?;
    }
    fs::remove_dir(incoming).with_context(|| format!("Cannot remove {}", incoming.display()))
}

/// `runc restore` of the container from `incoming`; the restored
/// container waits (every task ready, none running) until the sender's
/// Commit.
fn restore_container(ses: &mut Session, opts: &ServerOpts, incoming: &Path, lazy: bool) -> Result<i32> {
    let ctr = opts.container.as_ref().expect("container mode");
    let pid = ctr
        .restore(incoming, lazy, |pid| {
            ses.send(&Frame::Restored { pid: pid as u32 })?;
            match ses.next() {
                Ok(Frame::Commit) => Ok(()),
                Ok(Frame::Error(m)) => bail!("the sender gave up: {m}"),
                Ok(f) => bail!("the sender answered Restored with {}, not Commit", f.name()),
                Err(e) => bail!("no Commit from the sender: {e}"),
            }
        })
        .with_context(|| format!("Restore of container {} failed", ctr.id))?;
    info!("restored container {}, pid {pid}", ctr.id);
    if let Some(pf) = &opts.pidfile {
        if let Err(e) = fs::write(pf, format!("{pid}")) {
            warn!("Cannot write {}: {e}", pf.display());
        }
    }
    Ok(pid)
}

/// Restores from `incoming`; between "every task ready" and "released"
/// tells the sender and waits for its Commit.
fn restore_here(
    ses: &mut Session,
    opts: &ServerOpts,
    incoming: &Path,
    lazy: bool,
    prestaged: restore::prestaged::Prestaged,
) -> Result<(i32, i32, Vec<super::lazy::LazyProc>, u64)> {
    let root = Arc::new(Mutex::new(0i32));
    let conn = Arc::new(Mutex::new((
        ses.rd.get_ref().try_clone()?,
        ses.wr.try_clone()?,
        None::<String>,
    )));
    // The commit handshake: before the tasks are released (PreResume), or
    // with lazy pages once the userfaultfds are in place (ReadyToRun).
    let commit_on = if lazy { Event::ReadyToRun } else { Event::PreResume };
    let hook = {
        let root = root.clone();
        let conn = conn.clone();
        Hook::new(move |ev| {
            match ev {
                Event::PostRestore { pid } => *root.lock().unwrap() = pid,
                ev if ev == commit_on => {
                    let pid = *root.lock().unwrap();
                    let mut c = conn.lock().unwrap();
                    wire::write_frame(&mut c.1, &Frame::Restored { pid: pid as u32 })
                        .map_err(|e| anyhow!("{}", wire::io_reason(&e)))?;
                    match wire::read_frame(&mut c.0) {
                        Ok(Frame::Commit) => {}
                        Ok(f) => bail!("the sender answered Restored with {}, not Commit", f.name()),
                        Err(e) => bail!("no Commit from the sender: {e}"),
                    }
                }
                _ => {}
            }
            Ok(())
        })
    };
    let (run_hook, procs) = if lazy {
        super::lazy::hook(incoming.to_path_buf(), Some(hook.clone()))
    } else {
        (Hook::default(), Default::default())
    };
    let r = restore::restore(&restore::RestoreOpts {
        dir: incoming.to_path_buf(),
        shell_job: false,
        detach: true,
        pidfile: opts.pidfile.clone(),
        trust_images: false,
        skip_file_check: false,
        hook,
        lazy_pages: lazy,
        run_hook,
        prestaged,
        ..Default::default()
    })
    .context("Restore failed")?;
    info!("restored, root pid {}", r.root_host_pid);
    let procs = std::mem::take(&mut *procs.lock().unwrap());
    Ok((r.root_host_pid, r.shim_pid, procs, r.moved_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_links() {
        assert!(check_link("parent", 0, "pre-3").is_ok());
        assert!(check_link("pre-3/parent", 3, "../pre-2").is_ok());
        assert!(check_link("pre-3/parent", 3, "../pre-3").is_err());
        assert!(check_link("parent", 0, "/etc").is_err());
        assert!(check_link("parent", 0, "../x").is_err());
        assert!(check_link("inventory.img", 0, "pre-1").is_err());
    }
}
