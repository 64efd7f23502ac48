//! Migration of a runc container: `cryo migrate --container ID` on the
//! source, `cryo page-server --container ID --bundle B` on the
//! destination.
//!
//! runc itself checkpoints and restores the container (with cryo as its
//! criu), so its bookkeeping stays right on both hosts:
//!
//! * pre-copy rounds are `runc checkpoint --pre-dump` into `pre-K/` of a
//!   private tmpfs directory (each with `--parent-path ../pre-(K-1)`),
//!   sent as they complete, until the set of pages written between rounds
//!   stops shrinking;
//! * the final round is `runc checkpoint --parent-path pre-K`. The criu
//!   drop-in writes the images, then (tree still frozen) asks this process
//!   through the commit socket ([`super::commit`]); this process sends the
//!   images (with runc's `descriptors.json`), asks the destination to
//!   restore, and answers `committed` only once the destination holds the
//!   restored container waiting for Commit and Commit is sent. Then the
//!   drop-in lets the tree die and runc removes the container. Any failure
//!   before that answers `failed`: the drop-in resumes the tree and runc
//!   leaves the container running.
//! * the destination runs `runc restore -d --bundle B ID` on the received
//!   images; its drop-in stops at "every task ready, none running" and
//!   asks the page server (commit socket), which answers Restored to the
//!   source and waits for its Commit. Without Commit the drop-in kills
//!   what it restored, runc fails, and the page server deletes whatever
//!   runc left of the container.
//! * `--lazy-pages` (after pre-copy): `runc restore --lazy-pages`; the
//!   drop-in commits once the userfaultfds are registered, the container
//!   runs, and the drop-in fills the pre-copied pages from the local
//!   images before it exits. It kills the container if the page server
//!   goes away meanwhile (nothing would be left to answer the source).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use tracing::{info, warn};

use super::commit::{self, Msg, Relay};
use super::send::Conn;
use super::wire::Frame;
use super::MigrateStats;
use crate::dump::PidView;

/// The OCI runtime and its state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `runc` (found on PATH) or a path to it.
    pub bin: PathBuf,
    /// runc's `--root`.
    pub root: Option<PathBuf>,
}

impl Runtime {
    /// Only runc is driven (its checkpoint/restore verbs and options).
    pub fn new(name: &str, root: Option<PathBuf>) -> Result<Runtime> {
        let base = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or(name);
        if base != "runc" {
            bail!("--runtime {name}: only runc containers can be migrated");
        }
        Ok(Runtime {
            bin: PathBuf::from(name),
            root,
        })
    }

    fn cmd(&self, criu: Option<&Path>) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some(r) = &self.root {
            c.arg("--root").arg(r);
        }
        if let Some(x) = criu {
            c.arg("--criu").arg(x);
        }
        c.stdin(Stdio::null());
        c
    }

    /// `runc state ID`: (status, pid), or None when runc knows no such
    /// container.
    pub fn state(&self, id: &str) -> Result<Option<(String, i32)>> {
        let o = self
            .cmd(None)
            .args(["state", id])
            .output()
            .with_context(|| format!("Cannot run {}", self.bin.display()))?;
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            if e.contains("does not exist") || e.contains("not exist") {
                return Ok(None);
            }
            bail!("{} state {id}: {}", self.bin.display(), one_line(&e));
        }
        parse_state(&String::from_utf8_lossy(&o.stdout))
            .map(Some)
            .map_err(|e| anyhow!("{} state {id}: {e}", self.bin.display()))
    }

    /// `runc delete --force ID` (kills what is left, removes the state).
    pub fn delete(&self, id: &str) {
        match self.cmd(None).args(["delete", "--force", id]).output() {
            Ok(o) if o.status.success() => info!("runc delete --force {id}"),
            Ok(o) => warn!(
                "runc delete --force {id}: {}",
                one_line(&String::from_utf8_lossy(&o.stderr))
            ),
            Err(e) => warn!("runc delete --force {id}: {e}"),
        }
    }
}

/// Status and pid from `runc state`'s JSON.
pub fn parse_state(json: &str) -> Result<(String, i32), String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let status = v.get("status").and_then(|s| s.as_str()).ok_or("no status")?.to_string();
    let pid = v.get("pid").and_then(|p| p.as_i64()).ok_or("no pid")? as i32;
    Ok((status, pid))
}

/// Text on one line: lines trimmed, empty ones dropped, joined with "; ".
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The last error a cryo log holds (`... ERROR message`), if any.
pub fn last_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.split_once(" ERROR ").map(|(_, m)| m.trim().to_string()))
}

/// What runc and the drop-in said about a failed runc call: runc's
/// output and the last error of the drop-in's log.
fn failure_text(out: &Path, log: &Path) -> String {
    let runc = one_line(&fs::read_to_string(out).unwrap_or_default());
    match fs::read_to_string(log).ok().as_deref().and_then(last_error) {
        Some(e) => format!("{e} (runc: {runc})"),
        None => runc,
    }
}

/// What the drop-in's log (`log`) says of the lazy pages it filled: its
/// last "lazy pages: ..." line, from "lazy pages" on.
pub fn lazy_report(log: &Path) -> Option<String> {
    let t = fs::read_to_string(log).ok()?;
    t.lines()
        .rev()
        .find_map(|l| l.find("lazy pages: ").map(|i| l[i..].trim().to_string()))
        .filter(|l| l.contains("KiB copied"))
}

/// What `cryo migrate --container` is asked to do.
#[derive(Debug, Clone)]
pub struct CtrOpts {
    pub id: String,
    pub runtime: Runtime,
    pub to: String,
    pub max_rounds: u32,
    pub lazy: bool,
}

fn pages_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The dump figures the drop-in left in `dir/stats-dump`.
fn dump_stats(dir: &Path) -> Option<crate::image::pb::DumpStatsEntry> {
    use crate::image::{pb, ImageReader, Kind};
    let data = fs::read(dir.join("stats-dump")).ok()?;
    let mut r = ImageReader::new("stats-dump", &data, Kind::Stats).ok()?;
    r.read_one::<pb::StatsEntry>().ok()?.dump
}

/// Lazy pages of a container come from the destination's pre-copied
/// images (no post-copy from the source).
pub const LAZY_NEEDS_PRE_COPY: &str =
    "--lazy-pages with --container needs pre-copy (its lazy pages are the pre-copied ones): drop --no-pre-copy";

/// Moves the running container `o.id` to the page server at `o.to`.
pub fn migrate(o: &CtrOpts) -> Result<MigrateStats> {
    crate::require_root("migrate")?;
    if o.lazy && o.max_rounds == 0 {
        bail!(LAZY_NEEDS_PRE_COPY);
    }
    let t0 = Instant::now();
    let id = o.id.as_str();
    let rt = &o.runtime;
    let pid = match rt.state(id)? {
        Some((s, p)) if s == "running" && p > 0 => p,
        Some((s, _)) => bail!("Container {id} is {s}, not running"),
        None => bail!("No container {id} (runc state)"),
    };
    let view = PidView::of_tree(pid)?;
    let vpids: Vec<u32> = super::tree_pids(pid)
        .into_iter()
        .map(|p| view.pid(p))
        .collect::<Result<_>>()?;
    let relay = Relay::new("ctrmig")?;
    let img = relay.dir().join("img");
    fs::create_dir(&img).with_context(|| format!("Cannot create {}", img.display()))?;
    let mut conn = Conn::connect(&o.to, &vpids)?;
    let mut stats = MigrateStats::default();

    // Pre-copy: runc checkpoint --pre-dump rounds, each sent as pre-K/.
    let mut prev = u64::MAX;
    let res = (|| -> Result<()> {
        for k in 1..=o.max_rounds {
            let dir = img.join(format!("pre-{k}"));
            let work = relay.dir().join(format!("work-pre-{k}"));
            let out = relay.dir().join(format!("runc-pre-{k}.out"));
            let mut c = rt.cmd(Some(&relay.criu()));
            c.args(["checkpoint", "--pre-dump", "--image-path"])
                .arg(&dir)
                .arg("--work-path")
                .arg(&work);
            if k > 1 {
                c.args(["--parent-path", &format!("../pre-{}", k - 1)]);
            }
            let st = c
                .arg(id)
                .stdout(fs::File::create(&out)?)
                .stderr(fs::File::create(&out)?)
                .status()
                .with_context(|| format!("Cannot run {}", rt.bin.display()))?;
            if !st.success() {
                bail!(
                    "runc checkpoint --pre-dump (round {k}) failed: {}",
                    failure_text(&out, &work.join("dump.log"))
                );
            }
            let dirty = pages_bytes(&dir);
            conn.send_dir_except(&dir, &format!("pre-{k}/"), &[super::predump::TRACK_FILE])?;
            conn.flush()?;
            stats.rounds.push(dirty);
            info!("pre-copy round {k}: {dirty} bytes");
            if super::converged(k, dirty, prev) {
                break;
            }
            prev = dirty;
        }
        Ok(())
    })();
    let rounds = stats.rounds.len() as u32;
    if let Err(e) = res {
        if rounds > 0 {
            // The tasks keep the write tracking of the last round: take it out.
            let last = img.join(format!("pre-{rounds}"));
            if let Err(e2) = super::predump::abandon(pid, &last) {
                warn!("cannot remove the write tracking from the container: {e2:#}");
            }
        }
        return Err(e.context(format!(
            "Migration of container {id} to {} failed; the container keeps running",
            o.to
        )));
    }

    // The final round: runc checkpoint, with the commit handshake.
    let work = relay.dir().join("work");
    let out = relay.dir().join("runc.out");
    let mut c = rt.cmd(Some(&relay.criu()));
    c.args(["checkpoint", "--image-path"])
        .arg(&img)
        .arg("--work-path")
        .arg(&work);
    if rounds > 0 {
        c.args(["--parent-path", &format!("pre-{rounds}")]);
    }
    let t_final = Instant::now();
    info!("final checkpoint of container {id} ({rounds} pre-copy rounds)");
    let mut child = c
        .arg(id)
        .env(commit::ENV, relay.socket())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&out)?)
        .spawn()
        .with_context(|| format!("Cannot run {}", rt.bin.display()))?;
    let mut committed = None;
    let mut failure = None;
    let mut held: Option<String> = None;
    match relay.wait(&mut child) {
        Ok(Some((mut peer, Msg::Dumped { us }))) => {
            let frozen_at = Instant::now()
                .checked_sub(std::time::Duration::from_micros(us))
                .unwrap_or(t_final);
            stats.frozen_us = us;
            info!("container {id} dumped ({} ms frozen so far)", us / 1000);
            let sent = (|| -> Result<i32> {
                conn.send_dir_except(&img, "", &["parent"])?;
                if rounds > 0 {
                    conn.frame(&Frame::Symlink {
                        name: "parent".into(),
                        target: format!("pre-{rounds}"),
                    })?;
                }
                // Lazy: the destination's restore leaves the pre-copied
                // pages to be filled from its local images after the resume.
                let lazy = o.lazy && rounds > 0;
                conn.frame(if lazy { &Frame::RestoreLazy } else { &Frame::Restore })?;
                conn.flush()?;
                info!("images sent ({} bytes in all); the destination restores", conn.sent);
                let rpid = match conn.answer()? {
                    Frame::Restored { pid } => pid as i32,
                    f => bail!("The page server answered Restore with {}", f.name()),
                };
                info!("restored on the destination as pid {rpid}; commit");
                // From the Commit on, the source must not run again even if
                // this process dies: the drop-in queues stop signals first.
                peer.send(&Msg::Hold)?;
                match peer.recv("the criu drop-in")? {
                    Msg::Held => {}
                    m => bail!("the criu drop-in answered hold with {:?}", m.line()),
                }
                // The commit point: from here on the destination runs it.
                conn.frame(&Frame::Commit)?;
                conn.flush()?;
                Ok(rpid)
            })();
            match sent {
                Ok(rpid) => {
                    stats.stopped_us = frozen_at.elapsed().as_micros() as u64;
                    match conn.answer() {
                        Ok(Frame::Done) => {
                            committed = Some(rpid);
                            if let Err(e) = peer.send(&Msg::Committed { pid: rpid }) {
                                warn!("the drop-in did not take the commit: {e:#}");
                            }
                        }
                        // Failed after Commit: nothing runs there.
                        Ok(Frame::Error(m)) => {
                            let _ = peer.send(&Msg::Failed(m.clone()));
                            failure = Some(anyhow!("the destination failed to start the container: {m}"));
                        }
                        other => {
                            let why = match other {
                                Ok(f) => format!("it answered {}", f.name()),
                                Err(e) => format!("{e:#}"),
                            };
                            let m = format!(
                                "no answer from the destination after Commit ({why}): it may run the container \
                                 already; the container's processes here are kept stopped (SIGSTOP): if the \
                                 destination runs it, kill them; if not, resume them with SIGCONT"
                            );
                            let _ = peer.send(&Msg::Unknown(m.clone()));
                            held = Some(m);
                        }
                    }
                }
                Err(e) => {
                    let _ = peer.send(&Msg::Failed(format!("{e:#}")));
                    failure = Some(e);
                }
            }
        }
        Ok(Some((mut peer, m))) => {
            let _ = peer.send(&Msg::Failed("unexpected message".into()));
            failure = Some(anyhow!("the criu drop-in said {:?} instead of dumped", m.line()));
        }
        Ok(None) => {}
        Err(e) => failure = Some(e),
    }
    let st = child.wait().context("wait for runc checkpoint")?;
    stats.bytes_sent = conn.sent;
    if let Some(d) = dump_stats(&work) {
        stats.final_pages = d.pages_written;
        stats.parent_pages = d.pages_skipped_parent;
    }
    stats.total_us = t0.elapsed().as_micros() as u64;
    let runc_says = || failure_text(&out, &work.join("dump.log"));
    if let Some(m) = held {
        return Err(anyhow!("Migration of container {id} to {}: {m}", o.to));
    }
    match committed {
        Some(rpid) => {
            stats.restored_pid = Some(rpid);
            if !st.success() {
                warn!("runc checkpoint failed after the commit: {}", runc_says());
            }
            // The container runs on the destination: none may be left here.
            if rt.state(id).ok().flatten().is_some() {
                rt.delete(id);
            }
            Ok(stats)
        }
        None => {
            let why = match failure {
                Some(e) => format!("{e:#}"),
                None => format!("runc checkpoint failed: {}", runc_says()),
            };
            if st.success() {
                // The drop-in never asked: it cannot have dumped for good.
                warn!("runc checkpoint succeeded without the commit handshake");
            }
            Err(anyhow!(
                "Migration of container {id} to {} failed; the container keeps running: {why}",
                o.to
            ))
        }
    }
}

/// The destination's container: what `cryo page-server --container` restores.
#[derive(Debug, Clone)]
pub struct DstCtr {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: Runtime,
}

impl DstCtr {
    /// Checked when the page server starts: the bundle has a config and
    /// no container of that id exists yet.
    pub fn check(&self) -> Result<()> {
        let cfg = self.bundle.join("config.json");
        if !cfg.is_file() {
            bail!("Bundle {} has no config.json", self.bundle.display());
        }
        if let Some((s, _)) = self.runtime.state(&self.id)? {
            bail!("Container {} already exists here ({s})", self.id);
        }
        Ok(())
    }

    /// Runs `runc restore -d` on the images in `dir`; `commit` is called
    /// with the restored root's host pid while every task waits, and must
    /// return Ok only once the source is stopped for good. Returns the
    /// container's pid. On any failure nothing of the container is left.
    ///
    /// `lazy`: `runc restore --lazy-pages`: the drop-in leaves the
    /// pre-copied pages out, resumes the container, then fills them from
    /// the local images before it exits (runc waits for it).
    pub fn restore(&self, dir: &Path, lazy: bool, commit: impl FnOnce(i32) -> Result<()>) -> Result<i32> {
        let relay = Relay::new("ctrdst")?;
        let out = dir.join("container.out");
        let f = fs::File::create(&out).with_context(|| format!("Cannot create {}", out.display()))?;
        let mut child = self
            .runtime
            .cmd(Some(&relay.criu()))
            .args(["restore", "-d"])
            .args(lazy.then_some("--lazy-pages"))
            .arg("--image-path")
            .arg(dir)
            .arg("--bundle")
            .arg(&self.bundle)
            .arg(&self.id)
            .current_dir(&self.bundle)
            .env(commit::ENV, relay.socket())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("Cannot run {}", self.runtime.bin.display()))?;
        let mut committed = None;
        let mut failure = None;
        // Lazy: held open until runc is done (the drop-in fills the pages
        // meanwhile, and kills the container if this process goes away).
        let mut _watched = None;
        match relay.wait(&mut child) {
            Ok(Some((mut peer, Msg::Restored { pid }))) => match commit(pid) {
                Ok(()) => {
                    committed = Some(pid);
                    if let Err(e) = peer.send(&Msg::Commit) {
                        failure = Some(e.context("The restored container could not be released"));
                    }
                    _watched = Some(peer);
                }
                Err(e) => {
                    let _ = peer.send(&Msg::Failed(format!("{e:#}")));
                    failure = Some(e);
                }
            },
            Ok(Some((mut peer, m))) => {
                let _ = peer.send(&Msg::Failed("unexpected message".into()));
                failure = Some(anyhow!("the criu drop-in said {:?} instead of restored", m.line()));
            }
            Ok(None) => {}
            Err(e) => failure = Some(e),
        }
        let st = child.wait().context("wait for runc restore")?;
        drop(_watched);
        let runc_says = || failure_text(&out, &dir.join("restore.log"));
        if st.success() && failure.is_none() {
            if let Some(pid) = committed {
                return Ok(pid);
            }
            // runc restored without the handshake: it must not run here.
            self.runtime.delete(&self.id);
            bail!("runc restore succeeded without the commit handshake; the container was removed");
        }
        let why = match failure {
            Some(e) => format!("{e:#}"),
            None => format!("runc restore failed: {}", runc_says()),
        };
        // Whatever runc left of the container goes.
        if self.runtime.state(&self.id).ok().flatten().is_some() {
            self.runtime.delete(&self.id);
        }
        if committed.is_some() {
            bail!("The restore of container {} failed after the commit: {why}", self.id);
        }
        bail!("{why}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_state_json() {
        let j = r#"{"ociVersion":"1.0.2","id":"c1","pid":4242,"status":"running","bundle":"/b"}"#;
        assert_eq!(parse_state(j).unwrap(), ("running".to_string(), 4242));
        assert!(parse_state("{}").unwrap_err().contains("no status"));
        assert!(parse_state("nope").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn messages_on_one_line() {
        assert_eq!(one_line(" a \n\n b\n"), "a; b");
        let log = "t1  INFO x\nt2 ERROR first\nt3  INFO y\nt4 ERROR Restore failed: no bundle\n";
        assert_eq!(last_error(log).as_deref(), Some("Restore failed: no bundle"));
        assert_eq!(last_error("t INFO fine"), None);
    }

    #[test]
    fn only_runc() {
        assert!(Runtime::new("runc", None).is_ok());
        assert!(Runtime::new("/usr/sbin/runc", None).is_ok());
        assert!(Runtime::new("crun", None)
            .unwrap_err()
            .to_string()
            .contains("only runc"));
    }
}
