//! Request handlers of `swrk`.
//!
//! PRE_DUMP copies the tree's memory while it runs (one round per
//! request, tracked with uffd-wp to the next; `parent_img` names the
//! previous round); DUMP with `parent_img` is the final round, DUMP with
//! `ps` sends the images to cryo's page server, RESTORE with `lazy_pages`
//! serves the parent images' pages after its reply, then exits.
//!
//! DUMP and RESTORE follow CRIU's service (calling-conventions.md §2.4-2.7,
//! §4.5): the images and work directories are the *caller's* descriptors
//! (`/proc/<SO_PEERCRED pid>/fd/<n>`), the process chdirs to the work
//! directory (else the images directory), the log (`log_file`, a bare
//! name) and `stats-dump` / `stats-restore` are written there, and with
//! `notify_scripts` every notification waits for the caller's ack.
//!
//! Notifications: dump `pre-dump` (before the freeze) and `post-dump`
//! (images written, tree still frozen: an engine hook). Restore
//! `pre-restore` (before anything), `setup-namespaces`(pid),
//! `post-setup-namespaces`, `post-restore`(pid) and `pre-resume` (engine
//! hook: every task ready, none running), `post-resume` (after the engine
//! returns). `network-lock`/`network-unlock` are not sent: the engine
//! never dumps a tree with a network namespace of its own, and CRIU sends
//! them only for such trees.

use std::fs::{self, File};
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use tracing::{error, info, warn};

use super::opts::{self, Review};
use super::wire::Conn;
use super::CRIU_VERSION;
use crate::hooks::{Event, Hook};
use crate::image::pb::{
    CriuDumpResp, CriuFeatures, CriuNotify, CriuOpts, CriuReq, CriuReqType, CriuResp, CriuRestoreResp, CriuVersion,
};
use crate::{criu_cli, dump, log, restore};

/// Longest `cr_errmsg` sent (callers print it; runc's reply buffer is 40 KiB).
const MAX_ERRMSG: usize = 4096;
/// CRIU's log file name when the request names none.
const DEFAULT_LOG: &str = "criu.log";
/// CRIU's system-wide configuration file, read before the request.
const DEFAULT_CONF: &str = "/etc/criu/default.conf";

/// How a `swrk` session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request succeeded.
    Done,
    /// The request was answered with success=false.
    Failed,
    /// The request could not be parsed, or had an unknown type.
    Malformed,
    /// The caller closed the socket without a request.
    NoRequest,
}

impl Outcome {
    /// CRIU's exit codes: 0, 1, 255 (malformed), 1.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Done => 0,
            Outcome::Failed | Outcome::NoRequest => 1,
            Outcome::Malformed => 255,
        }
    }
}

/// An error chain on one line ("a: b: c").
pub fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// The first errno in an error chain, if any cause carries one.
pub fn errno_of(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        c.downcast_ref::<nix::errno::Errno>().map(|n| *n as i32)
    })
}

fn resp(ty: CriuReqType, success: bool) -> CriuResp {
    CriuResp {
        r#type: ty as i32,
        success,
        ..Default::default()
    }
}

/// A failure reply carrying `e` (cut to [`MAX_ERRMSG`]) and its errno.
pub fn failure(ty: CriuReqType, e: &anyhow::Error) -> CriuResp {
    let mut msg = chain(e);
    if msg.len() > MAX_ERRMSG {
        let mut cut = MAX_ERRMSG;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    let mut r = resp(ty, false);
    r.cr_errno = errno_of(e).filter(|&n| n != 0);
    r.cr_errmsg = Some(msg);
    r
}

/// The VERSION reply.
pub fn version_resp() -> CriuResp {
    let mut r = resp(CriuReqType::Version, true);
    r.version = Some(CriuVersion {
        major_number: CRIU_VERSION.0,
        minor_number: CRIU_VERSION.1,
        sublevel: Some(CRIU_VERSION.2),
        ..Default::default()
    });
    r
}

/// The FEATURE_CHECK reply: every field set, each probed on this kernel
/// the way the engine uses it. mem_track: uffd async write-protect and
/// PAGEMAP_SCAN (pre-dump tracking); lazy_pages: a kernel-fault-capable
/// userfaultfd and pidfd_getfd (restore with lazy pages); pidfd_store:
/// always false, cryo keeps no pidfd store (pidfd_store_sk is refused).
pub fn features_resp(asked: Option<&CriuFeatures>) -> CriuResp {
    let _ = asked;
    let mut r = resp(CriuReqType::FeatureCheck, true);
    r.features = Some(CriuFeatures {
        mem_track: Some(crate::sys::probe::uffd_wp_async()),
        lazy_pages: Some(crate::sys::probe::uffd_missing()),
        pidfd_store: Some(false),
    });
    r
}

fn check_resp() -> CriuResp {
    let missing = crate::kerndat::check();
    if missing.is_empty() {
        resp(CriuReqType::Check, true)
    } else {
        failure(CriuReqType::Check, &anyhow!("Missing: {}", missing.join("; ")))
    }
}

/// Serves requests until one that ends the session.
pub fn serve(conn: Conn) -> Outcome {
    let mut served = false;
    loop {
        let req = match conn.recv_req() {
            Ok(Some(r)) => r,
            Ok(None) if served => return Outcome::Done,
            Ok(None) => return Outcome::NoRequest,
            Err(e) => {
                let _ = conn.send_resp(&failure(CriuReqType::Empty, &e.into()));
                return Outcome::Malformed;
            }
        };
        let Ok(ty) = CriuReqType::try_from(req.r#type) else {
            let e = anyhow!("Unknown request type {}", req.r#type);
            let _ = conn.send_resp(&failure(CriuReqType::Empty, &e));
            return Outcome::Malformed;
        };
        let (reply, ok) = match ty {
            CriuReqType::Version => (version_resp(), true),
            CriuReqType::FeatureCheck => (features_resp(req.features.as_ref()), true),
            CriuReqType::Check => {
                let r = check_resp();
                let ok = r.success;
                (r, ok)
            }
            CriuReqType::Dump => return finish(conn, Session::run(conn, &req, Kind::Dump)),
            CriuReqType::Restore => return finish(conn, Session::run(conn, &req, Kind::Restore)),
            CriuReqType::PreDump => return finish(conn, Session::run(conn, &req, Kind::PreDump)),
            CriuReqType::Notify | CriuReqType::Empty => {
                let e = anyhow!("Unexpected {} request with no operation in progress", ty.as_str_name());
                (failure(CriuReqType::Empty, &e), false)
            }
            other => {
                let e = anyhow!("Request {} is not supported by cryo", other.as_str_name());
                (failure(other, &e), false)
            }
        };
        if conn.send_resp(&reply).is_err() {
            return Outcome::Failed;
        }
        served = true;
        let reusable = matches!(
            ty,
            CriuReqType::Version | CriuReqType::FeatureCheck | CriuReqType::Check
        );
        if !(ok && reusable && req.keep_open()) {
            return if ok { Outcome::Done } else { Outcome::Failed };
        }
    }
}

fn finish(conn: Conn, r: (CriuResp, bool, Option<Lazy>)) -> Outcome {
    let (reply, ok, lazy) = r;
    if let Err(e) = conn.send_resp(&reply) {
        error!("{}", chain(&e.into()));
        return Outcome::Failed;
    }
    // Lazy pages: the caller has its pid; this process stays until every
    // page is in (runc waits for it to exit).
    if let Some(l) = lazy {
        match crate::migrate::lazy::serve(&l.dir, l.procs, None) {
            Ok(st) => {
                crate::restore::lazy_done(l.shim_pid, l.root_pid);
                info!(
                    "lazy pages: {} KiB copied, {} faults, all in after {} ms",
                    st.bytes >> 10,
                    st.faults,
                    st.us / 1000
                )
            }
            Err(e) => {
                error!("lazy pages: {}", chain(&e));
                kill_restored(l.shim_pid);
                return Outcome::Failed;
            }
        }
    }
    if ok {
        Outcome::Done
    } else {
        Outcome::Failed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dump,
    PreDump,
    Restore,
}

impl Kind {
    fn req_type(self) -> CriuReqType {
        match self {
            Kind::Dump => CriuReqType::Dump,
            Kind::PreDump => CriuReqType::PreDump,
            Kind::Restore => CriuReqType::Restore,
        }
    }
}

/// Pages a lazily restored tree still waits for, served after the reply.
struct Lazy {
    dir: PathBuf,
    procs: Vec<crate::migrate::lazy::LazyProc>,
    shim_pid: i32,
    root_pid: i32,
}

/// A directory named by a descriptor of the caller, kept open.
struct DirRef {
    _file: File,
    path: PathBuf,
}

/// Opens the caller's descriptor `fd` (`/proc/<peer>/fd/<fd>`, else our
/// own `fd`, for clients that hand the descriptor down). The path used
/// afterwards is the directory's real path when that still names the
/// same directory, else `/proc/<our pid>/fd/<n>` of our open copy.
fn open_caller_dir(peer: i32, fd: i32, what: &str) -> Result<DirRef> {
    let candidates = [format!("/proc/{peer}/fd/{fd}"), format!("/proc/self/fd/{fd}")];
    let mut last = None;
    for c in &candidates {
        match File::open(c) {
            Ok(f) => {
                let md = f.metadata().with_context(|| format!("Cannot stat {c}"))?;
                if !md.is_dir() {
                    bail!("{what} fd {fd} of pid {peer} is not a directory");
                }
                let real = fs::read_link(c).ok().filter(|p| {
                    p.is_absolute()
                        && fs::metadata(p)
                            .map(|m| m.dev() == md.dev() && m.ino() == md.ino())
                            .unwrap_or(false)
                });
                let path = match real {
                    Some(p) => p,
                    None => {
                        use std::os::fd::AsRawFd;
                        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
                    }
                };
                return Ok(DirRef { _file: f, path });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::Error::new(last.expect("two candidates")).context(format!(
        "Cannot open {what} fd {fd} of pid {peer} (/proc/{peer}/fd/{fd})"
    )))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Sends notification `script` and waits for the ack.
pub fn notify(conn: Conn, script: &str, pid: Option<i32>) -> Result<()> {
    notify_impl(conn, script, pid, None)
}

/// A notification carrying one fd (SCM_RIGHTS), as orphan-pts-master does.
pub fn notify_with_fd(conn: Conn, script: &str, fd: RawFd) -> Result<()> {
    notify_impl(conn, script, None, Some(fd))
}

fn notify_impl(conn: Conn, script: &str, pid: Option<i32>, fd: Option<RawFd>) -> Result<()> {
    let mut r = resp(CriuReqType::Notify, true);
    r.notify = Some(CriuNotify {
        script: Some(script.to_string()),
        pid,
    });
    info!(
        "notify {script}{}{}",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        fd.map(|f| format!(" with fd {f}")).unwrap_or_default()
    );
    match fd {
        Some(f) => conn.send_resp_with_fd(&r, f),
        None => conn.send_resp(&r),
    }
    .with_context(|| format!("Cannot send notification {script}"))?;
    let ack = conn
        .recv_req()
        .with_context(|| format!("No acknowledgement of notification {script}"))?;
    match ack {
        None => bail!("The caller closed the connection at notification {script}"),
        Some(a) if a.r#type != CriuReqType::Notify as i32 => bail!(
            "The caller answered notification {script} with request type {} instead of NOTIFY",
            a.r#type
        ),
        Some(a) if !a.notify_success() => bail!("The caller failed notification {script}"),
        Some(_) => Ok(()),
    }
}

/// One DUMP or RESTORE request.
struct Session {
    conn: Conn,
    kind: Kind,
    opts: CriuOpts,
    notify: bool,
    images: DirRef,
    work: Option<DirRef>,
    lazy: Option<Lazy>,
}

impl Session {
    /// Runs the request; returns the final reply, whether it succeeded,
    /// and the lazy pages to serve after the reply.
    fn run(conn: Conn, req: &CriuReq, kind: Kind) -> (CriuResp, bool, Option<Lazy>) {
        let ty = kind.req_type();
        let mut s = match Session::prepare(conn, req, kind) {
            Ok(s) => s,
            Err(e) => {
                // The log may not exist yet: the reply is the only report.
                error!("{}", chain(&e));
                return (Session::fail_reply(kind, &e), false, None);
            }
        };
        info!(
            "cryo {} serving {} as criu {}.{}.{}",
            env!("CARGO_PKG_VERSION"),
            ty.as_str_name(),
            CRIU_VERSION.0,
            CRIU_VERSION.1,
            CRIU_VERSION.2
        );
        let r = match kind {
            Kind::Dump => s.dump(),
            Kind::PreDump => s.pre_dump(),
            Kind::Restore => s.restore(),
        };
        match r {
            Ok(reply) => (reply, true, s.lazy.take()),
            Err(e) => {
                error!("{}", chain(&e));
                (Session::fail_reply(kind, &e), false, None)
            }
        }
    }

    fn fail_reply(kind: Kind, e: &anyhow::Error) -> CriuResp {
        let mut r = failure(kind.req_type(), e);
        match kind {
            Kind::Dump | Kind::PreDump => r.dump = Some(CriuDumpResp { restored: Some(false) }),
            Kind::Restore => r.restore = Some(CriuRestoreResp { pid: -1 }),
        }
        r
    }

    /// Resolves the directories, applies the configuration files, opens
    /// the log and reviews the options.
    fn prepare(conn: Conn, req: &CriuReq, kind: Kind) -> Result<Session> {
        let mut o = req.opts.clone().context("The request carries no options (criu_opts)")?;
        // CRIU's precedence: default.conf < the request < config_file.
        if let Some(cfg) = criu_cli::load_config(Path::new(DEFAULT_CONF))? {
            let mut base = CriuOpts::default();
            criu_cli::apply_to_rpc(&cfg, &mut base);
            o = merge_under(base, o);
        }
        let mut cfg_log = None;
        if let Some(path) = o.config_file.clone() {
            if let Some(cfg) = criu_cli::load_config(Path::new(&path))? {
                criu_cli::apply_to_rpc(&cfg, &mut o);
                cfg_log = cfg.log_file.clone();
            }
        }
        let peer = conn.peer_pid()?;
        let images = match o.images_dir_fd() {
            fd if fd >= 0 => open_caller_dir(peer, fd, "images_dir")?,
            _ => match &o.images_dir {
                Some(p) => DirRef {
                    _file: File::open(p).with_context(|| format!("Cannot open images_dir {p}"))?,
                    path: PathBuf::from(p),
                },
                None => bail!("The request names no images directory (images_dir_fd or images_dir)"),
            },
        };
        let work = match o.work_dir_fd {
            Some(fd) if fd >= 0 => Some(open_caller_dir(peer, fd, "work_dir")?),
            _ => None,
        };
        let wd = work.as_ref().map_or(&images.path, |w| &w.path).clone();
        std::env::set_current_dir(&wd).with_context(|| format!("Cannot chdir to {}", wd.display()))?;
        let log_path = match cfg_log {
            Some(p) if p.is_absolute() => p,
            Some(p) => wd.join(p),
            None => wd.join(
                o.log_file
                    .as_deref()
                    .filter(|f| !f.contains('/'))
                    .unwrap_or(DEFAULT_LOG),
            ),
        };
        log::init(Some(&log_path), Some(o.log_level().clamp(0, 4) as u8))?;
        let review = match kind {
            Kind::Dump => opts::review_dump(&o),
            Kind::PreDump => opts::review_pre_dump(&o),
            Kind::Restore => {
                let host_root = o.root.as_deref().is_none_or(|r| same_dir(Path::new(r), Path::new("/")));
                opts::review_restore(&o, host_root)
            }
        };
        log_review(&review);
        if let Some(e) = review.error() {
            bail!(e);
        }
        Ok(Session {
            conn,
            kind,
            notify: o.notify_scripts(),
            opts: o,
            images,
            work,
            lazy: None,
        })
    }

    fn notify(&self, script: &str, pid: Option<i32>) -> Result<()> {
        if self.notify {
            notify(self.conn, script, pid)
        } else {
            Ok(())
        }
    }

    fn hook(&self) -> Hook {
        if !self.notify {
            return Hook::default();
        }
        let conn = self.conn;
        Hook::new(move |ev: Event| match ev {
            Event::OrphanPtsMaster { fd } => notify_with_fd(conn, ev.script(), fd),
            _ => notify(conn, ev.script(), ev.pid()),
        })
    }

    /// Copies a stats file the engine wrote next to the images into the
    /// work directory, where callers look for it.
    fn publish_stats(&self, name: &str) {
        let Some(w) = &self.work else { return };
        if same_dir(&w.path, &self.images.path) {
            return;
        }
        let from = self.images.path.join(name);
        let to = w.path.join(name);
        if let Err(e) = fs::copy(&from, &to) {
            warn!("Cannot copy {} to {}: {e}", from.display(), to.display());
        }
    }

    fn dump(&mut self) -> Result<CriuResp> {
        let o = &self.opts;
        let pid = o.pid.context("The request names no pid")?;
        self.notify("pre-dump", None)?;
        let stop_guard = std::sync::Arc::new(crate::freeze::StopGuard::default());
        let d = dump::DumpOpts {
            stop_guard: Some(stop_guard.clone()),
            pid,
            dir: self.images.path.clone(),
            shell_job: o.shell_job(),
            leave_running: o.leave_running(),
            tcp_established: o.tcp_established(),
            tcp_close: o.tcp_close(),
            ext_mnt: o.ext_mnt.iter().map(|m| (m.key.clone(), m.val.clone())).collect(),
            external: o.external.clone(),
            hook: match crate::migrate::commit::from_env() {
                // `cryo migrate --container`: commit with the destination
                // before the tree may die.
                Some(sock) => crate::migrate::commit::dump_hook(self.hook(), sock, stop_guard.clone()),
                None => self.hook(),
            },
            ..Default::default()
        };
        if let Some(ps) = &o.ps {
            // The images go to cryo's page server (`criu page-server` /
            // `cryo page-server`) instead of the images directory.
            let host = ps.address.as_deref().filter(|a| !a.is_empty()).unwrap_or("127.0.0.1");
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            let to = format!("{host}:{}", ps.port());
            let st = crate::migrate::migrate(&crate::migrate::MigrateOpts {
                pid,
                to,
                max_rounds: 0,
                restore: false,
                lazy: false,
                shell_job: o.shell_job(),
            })?;
            info!("sent the images to the page server: {} bytes", st.bytes_sent);
            let mut r = resp(CriuReqType::Dump, true);
            r.dump = Some(CriuDumpResp { restored: Some(false) });
            return Ok(r);
        }
        let st = match o.parent_img.as_deref() {
            // The final dump after pre-dumps: only what was written since
            // the parent's round is copied, the rest is PE_PARENT.
            Some(p) => crate::migrate::predump::dump_after(d, Path::new(p))?,
            None => dump::dump(&d)?,
        };
        info!(
            "dumped {} processes, {} pages, frozen {} us",
            st.processes, st.pages_written, st.frozen_us
        );
        self.publish_stats("stats-dump");
        let mut r = resp(CriuReqType::Dump, true);
        r.dump = Some(CriuDumpResp { restored: Some(false) });
        Ok(r)
    }

    /// PRE_DUMP: copies the tree's memory while it runs (all of it, or
    /// what was written since `parent_img`); one round per request, as
    /// runc sends them.
    fn pre_dump(&mut self) -> Result<CriuResp> {
        let o = &self.opts;
        let pid = o.pid.context("The request names no pid")?;
        self.notify("pre-dump", None)?;
        let parent = o.parent_img.as_deref().map(Path::new);
        let bytes = crate::migrate::predump::pre_dump(pid, &self.images.path, parent)?;
        info!("pre-dump: {} KiB copied", bytes >> 10);
        let mut r = resp(CriuReqType::PreDump, true);
        r.dump = Some(CriuDumpResp { restored: Some(false) });
        Ok(r)
    }

    fn restore(&mut self) -> Result<CriuResp> {
        debug_assert_eq!(self.kind, Kind::Restore);
        let o = &self.opts;
        self.notify("pre-restore", None)?;
        let ro = restore::RestoreOpts {
            skip_file_check: false,
            dir: self.images.path.clone(),
            shell_job: o.shell_job(),
            detach: true,
            pidfile: None,
            trust_images: false,
            tcp_close: o.tcp_close(),
            veth_pairs: o.veths.iter().map(|v| (v.if_in.clone(), v.if_out.clone())).collect(),
            root: o.root.as_ref().map(PathBuf::from),
            ext_mnt: o.ext_mnt.iter().map(|m| (m.key.clone(), m.val.clone())).collect(),
            inherit_fd: o.inherit_fd.iter().map(|i| (i.key.clone(), i.fd)).collect(),
            hook: self.hook(),
            ..Default::default()
        };
        // `cryo page-server --container` (a migration): the tasks are
        // released only on commit, with lazy pages once their
        // userfaultfds are in place.
        let commit = crate::migrate::commit::from_env();
        let lazy = o
            .lazy_pages()
            .then(|| crate::migrate::lazy::hook(self.images.path.clone(), None));
        let (ro, procs) = match (commit, lazy) {
            (Some(sock), Some(_)) => {
                let h = crate::migrate::commit::restore_hook(ro.hook.clone(), sock, Event::ReadyToRun);
                let (run, procs) = crate::migrate::lazy::hook(self.images.path.clone(), Some(h.clone()));
                (lazy_opts(restore::RestoreOpts { hook: h, ..ro }, run), Some(procs))
            }
            (Some(sock), None) => {
                let h = crate::migrate::commit::restore_hook(ro.hook.clone(), sock, Event::PreResume);
                (restore::RestoreOpts { hook: h, ..ro }, None)
            }
            // The tree starts before its parent images' pages are in;
            // they are served once the reply is sent (see finish).
            (None, Some((run, procs))) => (lazy_opts(ro, run), Some(procs)),
            (None, None) => (ro, None),
        };
        let r = restore::restore(&ro)?;
        let pid = r.root_host_pid;
        if let Some(p) = procs {
            self.lazy = Some(Lazy {
                dir: self.images.path.clone(),
                procs: std::mem::take(&mut *p.lock().unwrap()),
                shim_pid: r.shim_pid,
                root_pid: r.root_host_pid,
            });
        }
        // Past this point the tree runs: a failure must take it down.
        if let Err(e) = self.notify("post-resume", None) {
            kill_restored(r.shim_pid);
            return Err(e);
        }
        self.publish_stats("stats-restore");
        info!("restored: root host pid {pid}");
        let mut reply = resp(CriuReqType::Restore, true);
        reply.restore = Some(CriuRestoreResp { pid });
        Ok(reply)
    }
}

/// Restore options for lazy pages, `run` attaching the userfaultfds.
fn lazy_opts(ro: restore::RestoreOpts, run: Hook) -> restore::RestoreOpts {
    restore::RestoreOpts {
        lazy_pages: true,
        run_hook: run,
        ..ro
    }
}

/// Kills a restored tree through its namespace init (the whole pid
/// namespace dies with it).
fn kill_restored(shim: i32) {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(nix::unistd::Pid::from_raw(shim), Signal::SIGKILL);
}

fn log_review(r: &Review) {
    for w in &r.warnings {
        warn!("{w}");
    }
}

/// `over` with every field it leaves unset taken from `base` (proto merge:
/// set scalars of `over` win, repeated fields concatenate).
fn merge_under(base: CriuOpts, over: CriuOpts) -> CriuOpts {
    let mut m = base;
    m.merge(over.encode_to_vec().as_slice())
        .expect("re-decoding an encoded message");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reply_carries_message_and_errno() {
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ESRCH)).context("No process with pid 42");
        let r = failure(CriuReqType::Dump, &e);
        assert!(!r.success);
        assert_eq!(r.cr_errno, Some(libc::ESRCH));
        assert!(r.cr_errmsg.as_deref().unwrap().starts_with("No process with pid 42: "));
        // Required fields are on the wire even when false.
        let b = r.encode_to_vec();
        assert_eq!(&b[..4], &[0x08, 0x01, 0x10, 0x00]);
        let long = anyhow!("{}", "é".repeat(5000));
        let r = failure(CriuReqType::Dump, &long);
        assert!(r.cr_errmsg.unwrap().len() <= MAX_ERRMSG);
        assert_eq!(r.cr_errno, None);
    }

    #[test]
    fn features_are_probed_pidfd_store_is_not_kept() {
        let f = features_resp(None).features.unwrap();
        assert!(f.mem_track.is_some() && f.lazy_pages.is_some());
        assert_eq!(f.pidfd_store, Some(false));
    }

    #[test]
    fn merge_keeps_request_over_defaults() {
        let base = CriuOpts {
            tcp_established: Some(true),
            log_file: Some("base.log".into()),
            ..Default::default()
        };
        let over = CriuOpts {
            images_dir_fd: Some(3),
            log_file: Some("req.log".into()),
            ..Default::default()
        };
        let m = merge_under(base, over);
        assert!(m.tcp_established());
        assert_eq!(m.log_file.as_deref(), Some("req.log"));
        assert_eq!(m.images_dir_fd(), 3);
    }

    #[test]
    fn outcome_codes() {
        assert_eq!(Outcome::Done.exit_code(), 0);
        assert_eq!(Outcome::Failed.exit_code(), 1);
        assert_eq!(Outcome::Malformed.exit_code(), 255);
    }
}
