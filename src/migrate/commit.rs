//! The commit handshake of a container migration, between cryo's side
//! (`cryo migrate --container` on the source, `cryo page-server
//! --container` on the destination) and the criu drop-in that runc runs
//! in between (`runc checkpoint` / `runc restore` with cryo as criu).
//!
//! cryo's side listens on a unix socket in a private directory and names
//! it in the environment variable [`ENV`] of the runc it starts; runc
//! passes its environment on to criu. The drop-in then connects:
//!
//! * dump, once the images are written and the tree is still frozen:
//!   `dumped US` (microseconds since the dump started); the answer is
//!   `committed PID` (the destination runs the container now: the dump
//!   may succeed and the tree die) or `failed REASON` (resume it, fail).
//! * restore, with every task ready and none running: `restored PID`
//!   (the root's host pid); the answer is `commit` (release the tasks) or
//!   `failed REASON` (kill them, fail).
//!
//!   Before it sends Commit to the destination, cryo's side sends `hold`:
//!   the drop-in queues SIGSTOP to the frozen tree (still held by ptrace)
//!   and answers `held`; from then on, losing cryo's side (or `unknown
//!   REASON`: the destination's answer to Commit was lost) leaves the tree
//!   stopped instead of resuming it, and `failed` takes the stop back.
//!
//! One line each way, newline-terminated. A closed connection instead of
//! an answer is a failure: the workload is never released twice.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::hooks::{Event, Hook};

/// The environment variable naming the socket.
pub const ENV: &str = "CRYO_MIGRATE_COMMIT";

/// How long the drop-in waits for the answer (the transfer of the final
/// images and the restore on the destination happen meanwhile).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// One line of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Dumped { us: u64 },
    Committed { pid: i32 },
    Restored { pid: i32 },
    Commit,
    Failed(String),
    Hold,
    Held,
    Unknown(String),
}

impl Msg {
    /// The line (without its newline); a reason is kept on one line.
    pub fn line(&self) -> String {
        match self {
            Msg::Dumped { us } => format!("dumped {us}"),
            Msg::Committed { pid } => format!("committed {pid}"),
            Msg::Restored { pid } => format!("restored {pid}"),
            Msg::Commit => "commit".into(),
            Msg::Failed(m) => format!("failed {}", m.replace(['\n', '\r'], " ")),
            Msg::Hold => "hold".into(),
            Msg::Held => "held".into(),
            Msg::Unknown(m) => format!("unknown {}", m.replace(['\n', '\r'], " ")),
        }
    }

    /// Parses one line (its newline removed).
    pub fn parse(line: &str) -> Result<Msg, String> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = |what: &str| -> Result<i64, String> {
            rest.trim()
                .parse::<i64>()
                .map_err(|_| format!("commit handshake: bad {what} in {line:?}"))
        };
        Ok(match word {
            "dumped" => Msg::Dumped {
                us: u64::try_from(num("time")?).map_err(|_| format!("commit handshake: bad time in {line:?}"))?,
            },
            "committed" | "restored" => {
                let pid = i32::try_from(num("pid")?)
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("commit handshake: bad pid in {line:?}"))?;
                if word == "committed" {
                    Msg::Committed { pid }
                } else {
                    Msg::Restored { pid }
                }
            }
            "commit" if rest.is_empty() => Msg::Commit,
            "hold" if rest.is_empty() => Msg::Hold,
            "held" if rest.is_empty() => Msg::Held,
            "failed" => Msg::Failed(rest.to_string()),
            "unknown" => Msg::Unknown(rest.to_string()),
            _ => return Err(format!("commit handshake: unexpected line {line:?}")),
        })
    }
}

/// One end of the handshake connection.
pub struct Peer {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
}

impl Peer {
    fn new(s: UnixStream) -> Result<Peer> {
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Peer {
            rd: BufReader::new(s.try_clone()?),
            wr: s,
        })
    }

    pub fn send(&mut self, m: &Msg) -> Result<()> {
        let mut l = m.line();
        l.push('\n');
        self.wr.write_all(l.as_bytes()).context("commit handshake: cannot send")
    }

    /// The next line; a closed connection is an error naming `who`.
    pub fn recv(&mut self, who: &str) -> Result<Msg> {
        let mut l = String::new();
        match self.rd.read_line(&mut l) {
            Ok(0) => bail!("{who} closed the commit handshake"),
            Ok(_) => Msg::parse(l.trim_end_matches('\n')).map_err(|e| anyhow!(e)),
            Err(e) => Err(anyhow!("commit handshake with {who}: {e}")),
        }
    }
}

/// The socket named by [`ENV`], if the drop-in runs under a migration.
pub fn from_env() -> Option<PathBuf> {
    std::env::var_os(ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn connect(sock: &Path) -> Result<Peer> {
    let s = UnixStream::connect(sock)
        .with_context(|| format!("Cannot reach the migration's commit socket {}", sock.display()))?;
    Peer::new(s)
}

/// Drop-in, dump: the images are written, the tree frozen. Ok once the
/// destination runs the container (the tree may die now); an error when
/// the migration failed (the tree must be resumed).
pub fn after_dump(sock: &Path, since_start: Duration, guard: &crate::freeze::StopGuard) -> Result<i32> {
    let mut p = connect(sock)?;
    p.send(&Msg::Dumped {
        us: since_start.as_micros() as u64,
    })?;
    let mut held = false;
    loop {
        let lost = match p.recv("cryo migrate") {
            Ok(Msg::Hold) if !held => {
                guard.queue_stop();
                held = true;
                match p.send(&Msg::Held) {
                    Ok(()) => continue,
                    Err(e) => e,
                }
            }
            Ok(Msg::Committed { pid }) => return Ok(pid),
            Ok(Msg::Failed(m)) => {
                if held {
                    guard.cancel_stop();
                }
                bail!("{m}")
            }
            Ok(Msg::Unknown(m)) => return Err(crate::dump::HoldStopped(m).into()),
            Ok(m) => anyhow!("commit handshake: cryo migrate answered {:?}", m.line()),
            Err(e) => e,
        };
        if held {
            // Lost once the commit began: the destination may run it.
            return Err(crate::dump::HoldStopped(format!(
                "cryo migrate went away after the commit began ({lost:#}): the destination may run the \
                 container; its processes are kept stopped (SIGSTOP)"
            ))
            .into());
        }
        return Err(lost);
    }
}

/// Drop-in, restore: every task is ready, none runs. Ok once the source
/// is stopped for good (release the tasks); an error otherwise (kill them).
pub fn before_resume(sock: &Path, pid: i32) -> Result<Peer> {
    let mut p = connect(sock)?;
    p.send(&Msg::Restored { pid })?;
    match p.recv("cryo page-server")? {
        Msg::Commit => Ok(p),
        Msg::Failed(m) => Err(anyhow!("{m}")),
        m => bail!("commit handshake: cryo page-server answered {:?}", m.line()),
    }
}

/// The drop-in's dump hook under a migration: `inner` (the caller's
/// notifications) first, then, at PostDump, the handshake.
pub fn dump_hook(inner: Hook, sock: PathBuf, guard: std::sync::Arc<crate::freeze::StopGuard>) -> Hook {
    let t0 = Instant::now();
    Hook::new(move |ev| {
        inner.fire(ev)?;
        if ev == Event::PostDump {
            let pid = after_dump(&sock, t0.elapsed(), &guard).map_err(|e| {
                if e.downcast_ref::<crate::dump::HoldStopped>().is_some() {
                    e
                } else {
                    e.context("Migration failed; the container keeps running")
                }
            })?;
            tracing::info!("migration committed: the container runs on the destination as pid {pid}");
        }
        Ok(())
    })
}

/// The drop-in's restore hook under a migration: `inner` first, then, at
/// `at` (PreResume; ReadyToRun with lazy pages, once the userfaultfds are
/// in place), the handshake with the root's host pid.
pub fn restore_hook(inner: Hook, sock: PathBuf, at: Event) -> Hook {
    let root = std::sync::Mutex::new(0i32);
    Hook::new(move |ev| {
        inner.fire(ev)?;
        match ev {
            Event::PostRestore { pid } => *root.lock().unwrap() = pid,
            ev if ev == at => {
                let pid = *root.lock().unwrap();
                let peer = before_resume(&sock, pid).context("No commit from the migration's source")?;
                tracing::info!("migration committed: releasing the restored container (pid {pid})");
                if at == Event::ReadyToRun {
                    watch_page_server(peer, pid);
                }
            }
            _ => {}
        }
        Ok(())
    })
}

/// Lazy pages: the container runs while this process (runc's criu) still
/// fills its memory, and `cryo page-server` holds the handshake open until
/// runc is done. If the page server goes away first (killed), the
/// container is killed (its init `root`, so its whole pid namespace): the
/// migration's outcome is unknown to the source then, which keeps its
/// copy stopped (see `ctr::migrate`), and no copy may run on unwatched.
fn watch_page_server(peer: Peer, root: i32) {
    std::thread::spawn(move || {
        let mut s = peer.wr;
        let _ = s.set_read_timeout(None);
        let mut b = [0u8; 64];
        loop {
            match std::io::Read::read(&mut s, &mut b) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        tracing::error!(
            "cryo page-server went away while the lazy pages are filled: killing the container (pid {root})"
        );
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(root), nix::sys::signal::Signal::SIGKILL);
    });
}

/// cryo's side: a private directory with the socket and a `criu` link to
/// this binary (for runc's `--criu`), removed on drop.
pub struct Relay {
    dir: PathBuf,
    listener: UnixListener,
}

impl Relay {
    /// In a new 0700 directory under /dev/shm (or the temp directory).
    pub fn new(tag: &str) -> Result<Relay> {
        use std::os::unix::fs::DirBuilderExt;
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let mut last = None;
        for i in 0..1000u32 {
            let d = base.join(format!("cryo-{tag}-{}-{i}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => {
                    let sock = d.join("commit.sock");
                    let listener = match UnixListener::bind(&sock) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = std::fs::remove_dir_all(&d);
                            return Err(e).with_context(|| format!("Cannot listen on {}", sock.display()));
                        }
                    };
                    listener.set_nonblocking(true)?;
                    let exe = std::env::current_exe().context("Cannot find the running binary")?;
                    let r = Relay { dir: d, listener };
                    std::os::unix::fs::symlink(&exe, r.criu())
                        .with_context(|| format!("Cannot link {}", r.criu().display()))?;
                    return Ok(r);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e).with_context(|| format!("Cannot create a directory in {}", base.display())),
            }
        }
        Err(anyhow!("Cannot create a directory in {}: {:?}", base.display(), last))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The socket (the value of [`ENV`]).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("commit.sock")
    }

    /// A link named `criu` to this binary.
    pub fn criu(&self) -> PathBuf {
        self.dir.join("criu")
    }

    /// Waits for the drop-in run by `child` to connect and say its first
    /// line; None when `child` exits first (its status is left to reap).
    pub fn wait(&self, child: &mut Child) -> Result<Option<(Peer, Msg)>> {
        let t0 = Instant::now();
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    let mut p = Peer::new(s)?;
                    let m = p.recv("the criu drop-in")?;
                    return Ok(Some((p, m)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("accept on the commit socket"),
            }
            if child.try_wait()?.is_some() {
                // A connection that raced with the exit.
                return match self.listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false)?;
                        let mut p = Peer::new(s)?;
                        let m = p.recv("the criu drop-in")?;
                        Ok(Some((p, m)))
                    }
                    Err(_) => Ok(None),
                };
            }
            let pause = if t0.elapsed() < Duration::from_secs(1) { 1 } else { 5 };
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for m in [
            Msg::Dumped { us: 1234 },
            Msg::Committed { pid: 77 },
            Msg::Restored { pid: 9 },
            Msg::Commit,
            Msg::Failed("the page server at 10.0.0.2:5 refused: no".into()),
        ] {
            assert_eq!(Msg::parse(&m.line()).unwrap(), m);
        }
        assert_eq!(Msg::Failed("a\nb".into()).line(), "failed a b");
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(Msg::parse("committed -3").unwrap_err().contains("bad pid"));
        assert!(Msg::parse("restored x").is_err());
        assert!(Msg::parse("dumped").is_err());
        assert!(Msg::parse("commit now").is_err());
        assert!(Msg::parse("hello").unwrap_err().contains("unexpected line"));
    }
}
