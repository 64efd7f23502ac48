//! Terminals: pty pairs held inside the tree, and the external terminal
//! of a `--shell-job` restore.
//!
//! **pty pairs** (a tmux- or screen-like program with its shell): the
//! master (/dev/ptmx, index from fdinfo `tty-index`) and the slave
//! (/dev/pts/N) both in the dump. tty-info.img gets one entry per end
//! (id `index << 1`, `| 1` for the master): termios, window size, packet
//! mode, lock, exclusive flag, and for the slave the session whose
//! controlling terminal it is with its foreground group. Bytes queued in
//! the pair go to tty-data.img: `tty_id` = slave id for input typed but
//! not yet read by the slave's reader, master id for output the master's
//! holder has not read yet. A tty has no peek: the dump reads the queues
//! (the slave's in non-canonical mode, so a partial line comes out too)
//! and writes them straight back (see [`inject`]), so the frozen tree's
//! terminal is as it was whatever happens next. At restore the pair is
//! created anew (the index may differ: the slave is reopened by the new
//! one), queued bytes are injected the same way, and the session leader
//! takes the slave as its controlling terminal (TIOCSCTTY) before it
//! forks; the foreground group's leader sets itself with TIOCSPGRP.
//!
//! **The external terminal** (`--shell-job`):
//! At dump, tty-info.img keeps the termios and window size of the job's
//! terminal (see `FileTable::tty_info`). At restore with `--shell-job`,
//! the job gets the engine's own terminal; [`ExtTerm::apply`] puts the
//! dumped termios on it before the tree runs, so a full-screen program
//! (raw mode, no echo, its own VMIN/VTIME) finds the terminal as it left
//! it. The window size is the new terminal's: it is the size of the window
//! the user is looking at now, and forcing the old size on it would make
//! the program draw past the edge. When it differs from the dumped size,
//! the restored job gets a SIGWINCH (as the kernel sends when a window is
//! resized), so a program that cached the size asks again and redraws.
//! A failed restore puts the terminal's previous termios back.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tracing::{debug, warn};

use crate::image::{names, pb, ImageDir, Kind};
use crate::sys::{rawfd, tty as systty};

use super::{fown0, FdCtx, FileTable, FD_TTY};

/// /dev/ptmx is char 5:2.
pub const PTMX_RDEV: (u64, u64) = (5, 2);
const PTS_MAJOR: u64 = 136;

/// The tty info of the job's external terminal: the one the file entries
/// of type TTY use, preferring the controlling terminal (sid set).
pub fn external_info<'a>(
    files: &HashMap<u32, pb::FileEntry>,
    ttys: &'a HashMap<u32, pb::TtyInfoEntry>,
) -> Option<&'a pb::TtyInfoEntry> {
    let mut used: Vec<&pb::TtyInfoEntry> = files
        .values()
        .filter(|f| f.r#type == FD_TTY)
        .filter_map(|f| f.tty.as_ref())
        .filter_map(|t| ttys.get(&t.tty_info_id))
        .filter(|i| is_external(i, ttys))
        .collect();
    used.sort_by_key(|i| (i.sid == 0, i.id));
    used.first().copied()
}

/// A slave whose master is not in the dump: a terminal of the outside.
pub fn is_external(info: &pb::TtyInfoEntry, ttys: &HashMap<u32, pb::TtyInfoEntry>) -> bool {
    info.id & 1 == 0 && !ttys.contains_key(&(info.id | 1))
}

/// The engine's terminal with the job's termios on it.
pub struct ExtTerm {
    fd: RawFd,
    saved: libc::termios,
    /// The dumped window size differs from the terminal's.
    resized: bool,
    armed: bool,
}

impl ExtTerm {
    /// Applies the dumped termios of `info` to the terminal `fd` (the
    /// engine's, kept open by the caller while this lives).
    pub fn apply(fd: RawFd, info: &pb::TtyInfoEntry) -> Result<Option<ExtTerm>> {
        let b = rawfd::borrow(fd);
        let Ok(saved) = systty::get_termios(b) else {
            warn!("--shell-job: the engine's stdin is not a terminal; the job's termios is not restored");
            return Ok(None);
        };
        let Some(tp) = info.termios.as_ref() else {
            return Ok(None);
        };
        let mut t = saved;
        super::termios_from_pb(tp, &mut t);
        // TCSETS on a terminal whose foreground group is not ours stops
        // us with SIGTTOU unless it is ignored or blocked.
        let _g = SigttouBlocked::new();
        systty::set_termios(b, &t).context("Cannot set the job's termios on the terminal (TCSETS)")?;
        let now = systty::get_winsize(b).ok();
        let resized = match (now, info.winsize.as_ref()) {
            (Some(n), Some(w)) => u32::from(n.ws_row) != w.ws_row || u32::from(n.ws_col) != w.ws_col,
            _ => false,
        };
        debug!(
            "--shell-job: termios of tty {} applied (lflag {:#x}); window {:?} (dumped {:?})",
            info.id,
            tp.c_lflag,
            now.map(|n| (n.ws_row, n.ws_col)),
            info.winsize.as_ref().map(|w| (w.ws_row, w.ws_col))
        );
        Ok(Some(ExtTerm {
            fd,
            saved,
            resized,
            armed: true,
        }))
    }

    /// The restore went through: the job owns the terminal's settings now.
    /// Tells the job's process group (or its root) about a new size.
    pub fn keep(mut self, root_host_pid: i32, root_is_group_leader: bool) {
        self.armed = false;
        if self.resized && root_host_pid > 0 {
            let target = if root_is_group_leader {
                -root_host_pid
            } else {
                root_host_pid
            };
            debug!("--shell-job: window size changed, SIGWINCH to {target}");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), nix::sys::signal::Signal::SIGWINCH);
        }
    }
}

impl Drop for ExtTerm {
    fn drop(&mut self) {
        if self.armed {
            let _g = SigttouBlocked::new();
            let _ = systty::set_termios(rawfd::borrow(self.fd), &self.saved);
        }
    }
}

/// SIGTTOU blocked in this thread for the guard's lifetime.
struct SigttouBlocked(Option<nix::sys::signal::SigSet>);

impl SigttouBlocked {
    fn new() -> Self {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        let mut s = SigSet::empty();
        s.add(Signal::SIGTTOU);
        let mut old = SigSet::empty();
        match nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&s), Some(&mut old)) {
            Ok(()) => SigttouBlocked(Some(old)),
            Err(_) => SigttouBlocked(None),
        }
    }
}

impl Drop for SigttouBlocked {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
    }
}

// ---- pty pairs: dump ------------------------------------------------------

/// What the dump learns about terminals across all tasks.
#[derive(Default)]
pub(crate) struct DumpState {
    /// pty indexes whose master is in the dump.
    masters: HashMap<u32, ()>,
    /// Slave fds that are not the holder's own session's terminal, and
    /// not in a --shell-job: fine only if their master is in the dump.
    unowned: Vec<(i32, i32, String, u32)>,
    /// Controlling terminal (tty_nr) → (session, foreground group).
    cttys: HashMap<u64, (u32, i32)>,
    data: Vec<pb::TtyDataEntry>,
}

impl DumpState {
    /// Notes the controlling terminal of a dumped task.
    pub(crate) fn note_task(&mut self, stat: &crate::proc::stat::Stat) {
        if stat.tty_nr != 0 {
            self.cttys
                .entry(u64::from(stat.tty_nr))
                .or_insert((stat.session, stat.tpgid));
        }
    }

    /// Sessions and foreground groups as the tree sees them (`tree`: host
    /// pid → pid in the tree's pid namespace), for a tree that is its own
    /// pid namespace.
    pub(crate) fn translate(&mut self, tree: &HashMap<i32, i32>) {
        for (sid, fg) in self.cttys.values_mut() {
            if let Some(&v) = tree.get(&(*sid as i32)).filter(|&&v| v > 0) {
                *sid = v as u32;
            }
            if let Some(&v) = tree.get(fg).filter(|&&v| v > 0) {
                *fg = v;
            }
        }
    }

    /// A slave fd whose session is outside: checked when all fds are seen.
    pub(crate) fn defer_unowned(&mut self, pid: i32, fd: i32, link: &str, index: u32) {
        self.unowned.push((pid, fd, link.to_string(), index));
    }
}

fn open_slave(index: u32, nonblock: bool) -> std::io::Result<fs::File> {
    let mut flags = libc::O_NOCTTY | libc::O_CLOEXEC;
    if nonblock {
        flags |= libc::O_NONBLOCK;
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(format!("/dev/pts/{index}"))
}

fn winsize_pb(ws: &libc::winsize) -> pb::WinsizeEntry {
    pb::WinsizeEntry {
        ws_row: u32::from(ws.ws_row),
        ws_col: u32::from(ws.ws_col),
        ws_xpixel: u32::from(ws.ws_xpixel),
        ws_ypixel: u32::from(ws.ws_ypixel),
    }
}

/// Dumps a pty master fd; the first time a pair is seen, its tty-info
/// entries and queued data too.
pub(crate) fn dump_master(ft: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let index: u32 = f
        .info
        .get("tty-index")
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("pid {pid} fd {fd}: /dev/ptmx without a tty-index in its fdinfo"))?;
    let info_id = (index << 1) | 1;
    if !ft.tty_state.masters.contains_key(&index) {
        let master = ft.dup_fd(pid, fd)?;
        let m = master.as_fd();
        let what = |op: &str| format!("pid {pid} fd {fd} (pty master {index}): {op}");
        let t = systty::get_termios(m).with_context(|| what("TCGETS"))?;
        let ws = systty::get_winsize(m).with_context(|| what("TIOCGWINSZ"))?;
        let locked = systty::get_ptlck(m).with_context(|| what("TIOCGPTLCK"))?;
        let packet = systty::get_pkt(m).with_context(|| what("TIOCGPKT"))?;
        let md = f.md.context("pty master without metadata")?;
        let mut exclusive = false;
        if !locked {
            let slave = open_slave(index, true).with_context(|| what("cannot open its slave"))?;
            exclusive = systty::get_excl(slave.as_fd()).unwrap_or(false);
            let (input, output) = drain(m, slave.as_fd(), packet).with_context(|| what("reading its queues"))?;
            inject(m, slave.as_fd(), &t, &input, &output).with_context(|| what("putting its queues back"))?;
            debug!(
                "pty {index}: {} bytes of input, {} of output queued",
                input.len(),
                output.len()
            );
            if !input.is_empty() {
                ft.tty_state.data.push(pb::TtyDataEntry {
                    tty_id: index << 1,
                    data: input,
                });
            }
            if !output.is_empty() {
                ft.tty_state.data.push(pb::TtyDataEntry {
                    tty_id: info_id,
                    data: output,
                });
            }
        }
        ft.tty_infos.push(pb::TtyInfoEntry {
            id: info_id,
            r#type: 1, // PTY
            locked,
            exclusive,
            packet_mode: packet,
            sid: 0,
            pgrp: 0,
            rdev: md.rdev() as u32,
            termios: Some(super::termios_to_pb(&t)),
            termios_locked: None,
            winsize: Some(winsize_pb(&ws)),
            pty: Some(pb::TtyPtyEntry { index }),
            dev: Some(md.dev() as u32),
            uid: Some(md.uid()),
            gid: Some(md.gid()),
        });
        ft.tty_state.masters.insert(index, ());
    }
    let id = ft.new_id();
    let regf = ft.reg_path("/dev/ptmx", 0, 0)?;
    ft.entries.push(pb::FileEntry {
        r#type: FD_TTY,
        id,
        tty: Some(pb::TtyFileEntry {
            id,
            tty_info_id: info_id,
            flags: f.flags,
            fown: fown0(),
            regf_id: Some(regf),
        }),
        ..Default::default()
    });
    Ok(id)
}

/// When every fd is dumped: slaves of outside sessions need their master
/// in the dump; the slave of an inside pair gets the session it controls
/// and its foreground group (an entry is made for a controlling terminal
/// no fd refers to). Returns the tty-data entries.
pub(crate) fn finish(ft: &mut FileTable) -> Result<Vec<pb::TtyDataEntry>> {
    for (pid, fd, link, index) in &ft.tty_state.unowned {
        if !ft.tty_state.masters.contains_key(index) {
            bail!(
                "pid {pid} fd {fd} is the terminal {link}, which belongs to a session outside the dumped tree; pass --shell-job"
            );
        }
    }
    let cttys: Vec<(u64, (u32, i32))> = ft.tty_state.cttys.iter().map(|(k, v)| (*k, *v)).collect();
    for (rdev, (sid, fg)) in cttys {
        let (maj, min) = (super::major(rdev), super::minor(rdev));
        if !(PTS_MAJOR..PTS_MAJOR + 8).contains(&maj) {
            continue;
        }
        let index = ((maj - PTS_MAJOR) * 256 + min) as u32;
        if !ft.tty_state.masters.contains_key(&index) {
            continue;
        }
        let sid_pgrp = (sid, fg.max(0) as u32);
        if let Some(e) = ft.tty_infos.iter_mut().find(|e| e.id == index << 1) {
            (e.sid, e.pgrp) = sid_pgrp;
            continue;
        }
        let Some(m) = ft.tty_infos.iter().find(|e| e.id == (index << 1) | 1).cloned() else {
            continue;
        };
        let md = fs::metadata(format!("/dev/pts/{index}")).with_context(|| format!("stat /dev/pts/{index}"))?;
        ft.tty_infos.push(pb::TtyInfoEntry {
            id: index << 1,
            locked: false,
            packet_mode: false,
            sid: sid_pgrp.0,
            pgrp: sid_pgrp.1,
            rdev: md.rdev() as u32,
            dev: Some(md.dev() as u32),
            uid: Some(md.uid()),
            gid: Some(md.gid()),
            ..m
        });
    }
    Ok(std::mem::take(&mut ft.tty_state.data))
}

/// Writes tty-data.img.
pub(crate) fn write_data(dir: &ImageDir, data: &[pb::TtyDataEntry]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    Ok(dir.write_image(names::TTY_DATA, Kind::TtyData, data)?)
}

fn poll_in(fd: BorrowedFd, ms: i32) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut p, PollTimeout::from(ms as u16)), Ok(n) if n > 0)
        && p[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
}

/// Reads what is queued in a pair: the slave's input (through `slave`,
/// our own non-blocking description, switched to non-canonical mode so a
/// partial line is readable) and the output waiting for the master's
/// reader (through `master`, the tree's own description, only while poll
/// says it is readable). In packet mode each master read starts with a
/// status byte, which is dropped.
fn drain(master: BorrowedFd, slave: BorrowedFd, packet: bool) -> Result<(Vec<u8>, Vec<u8>)> {
    let t0 = systty::get_termios(slave).context("TCGETS")?;
    let mut t1 = t0;
    t1.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
    t1.c_cc[libc::VMIN] = 0;
    t1.c_cc[libc::VTIME] = 0;
    systty::set_termios(slave, &t1).context("TCSETS")?;
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    let r = loop {
        match nix::unistd::read(slave.as_raw_fd(), &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EAGAIN) => break Ok(()),
            Ok(n) => input.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    systty::set_termios(slave, &t0).context("TCSETS")?;
    r.context("read of the slave's input")?;
    let mut output = Vec::new();
    while poll_in(master, 0) {
        match nix::unistd::read(master.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => output.extend_from_slice(&buf[usize::from(packet).min(n)..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("read of the master's queue"),
        }
    }
    Ok((input, output))
}

/// Termios under which queued input goes through the line discipline
/// unchanged: no echo, signals or input translation, no editing
/// characters; canonical mode kept, so line boundaries are rebuilt.
fn transparent(t0: &libc::termios) -> libc::termios {
    let mut t = *t0;
    t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ECHOCTL | libc::ISIG | libc::IEXTEN);
    t.c_iflag &= !(libc::ICRNL
        | libc::INLCR
        | libc::IGNCR
        | libc::ISTRIP
        | libc::IUCLC
        | libc::IXON
        | libc::IXOFF
        | libc::IMAXBEL
        | libc::PARMRK
        | libc::INPCK);
    for c in [
        libc::VERASE,
        libc::VKILL,
        libc::VWERASE,
        libc::VREPRINT,
        libc::VLNEXT,
        libc::VEOF,
    ] {
        t.c_cc[c] = 0;
    }
    t
}

/// Bytes of `data` that count in TIOCINQ once processed under `t`.
fn expected_inq(t: &libc::termios, data: &[u8]) -> usize {
    if t.c_lflag & libc::ICANON == 0 {
        return data.len();
    }
    let delim = |c: u8| c == b'\n' || (c != 0 && (c == t.c_cc[libc::VEOL] || c == t.c_cc[libc::VEOL2]));
    data.iter().rposition(|&c| delim(c)).map_or(0, |p| p + 1)
}

fn write_all(fd: BorrowedFd, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e).context("write"),
        }
    }
    Ok(())
}

/// Waits until the line discipline behind `fd` holds `want` bytes
/// (writes reach it through a work queue; poll() flushes it).
fn wait_inq(fd: BorrowedFd, want: usize) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let _ = poll_in(fd, 0);
        let n = systty::inq(fd).context("TIOCINQ")?;
        if n >= want {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("only {n} of {want} bytes reached the terminal's queue");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Queues `input` for the slave's reader (written to the master) and
/// `output` for the master's reader (written to the slave without output
/// processing), then sets the pair's termios `t0`. Both queues must be
/// empty before.
fn inject(master: BorrowedFd, slave: BorrowedFd, t0: &libc::termios, input: &[u8], output: &[u8]) -> Result<()> {
    if !input.is_empty() {
        let t = transparent(t0);
        systty::set_termios(slave, &t).context("TCSETS")?;
        write_all(master, input)?;
        wait_inq(slave, expected_inq(&t, input))?;
    }
    if !output.is_empty() {
        let mut t = transparent(t0);
        t.c_oflag &= !libc::OPOST;
        systty::set_termios(slave, &t).context("TCSETS")?;
        write_all(slave, output)?;
        wait_inq(master, output.len())?;
    }
    systty::set_termios(slave, t0).context("TCSETS")?;
    Ok(())
}

// ---- pty pairs: restore ---------------------------------------------------

/// The pty index of a TTY file entry whose pair is inside the dump.
pub fn inside_index(fe: &pb::FileEntry, ttys: &HashMap<u32, pb::TtyInfoEntry>) -> Option<u32> {
    let info = ttys.get(&fe.tty.as_ref()?.tty_info_id)?;
    (!is_external(info, ttys)).then_some(info.id >> 1)
}

/// What the file restore needs to know about ttys besides files.img.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Queued bytes by tty id (tty-data.img).
    pub data: HashMap<u32, Vec<u8>>,
    /// tty-info ids of the ends of pairs inside the dump.
    pub inside: std::collections::HashSet<u32>,
}

/// Reads tty-info.img and tty-data.img for the file restore.
pub fn load(dir: &ImageDir) -> Result<Loaded> {
    let mut out = Loaded::default();
    if !dir.exists(names::TTY_INFO) {
        if dir.exists(names::TTY_DATA) {
            bail!("{} without {}", names::TTY_DATA, names::TTY_INFO);
        }
        return Ok(out);
    }
    let ttys: HashMap<u32, pb::TtyInfoEntry> = dir
        .read_image::<pb::TtyInfoEntry>(names::TTY_INFO, Kind::TtyInfo)?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    out.inside = ttys.values().filter(|i| !is_external(i, &ttys)).map(|i| i.id).collect();
    if dir.exists(names::TTY_DATA) {
        for e in dir.read_image::<pb::TtyDataEntry>(names::TTY_DATA, Kind::TtyData)? {
            if !out.inside.contains(&e.tty_id) {
                bail!(
                    "{}: data for tty {}, which is not a pty pair of the dump",
                    names::TTY_DATA,
                    e.tty_id
                );
            }
            out.data
                .entry(e.tty_id)
                .or_insert_with(Vec::new)
                .extend_from_slice(&e.data);
        }
    }
    Ok(out)
}

fn slave_flags(fe: &pb::FileEntry) -> i32 {
    let f = fe.tty.as_ref().map_or(libc::O_RDWR as u32, |t| t.flags) as i32;
    (f & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND)) | libc::O_NOCTTY | libc::O_CLOEXEC
}

/// Creates pair `index` (master and every slave description of `ids`).
pub(crate) fn create_pair(
    files: &HashMap<u32, pb::FileEntry>,
    ttys: &HashMap<u32, pb::TtyInfoEntry>,
    data: &Loaded,
    ids: &[u32],
    index: u32,
) -> Result<Vec<(u32, OwnedFd)>> {
    let mid = (index << 1) | 1;
    let minfo = ttys
        .get(&mid)
        .with_context(|| format!("tty-info.img has no master {mid}"))?;
    let sinfo = ttys.get(&(index << 1));
    let masters: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| files[id].tty.as_ref().is_some_and(|t| t.tty_info_id == mid))
        .collect();
    if masters.len() != 1 {
        bail!("pty {index}: {} master descriptions, expected one", masters.len());
    }
    let mfe = &files[&masters[0]];
    let master: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .context("Cannot open /dev/ptmx")?
        .into();
    let m = master.as_fd();
    systty::set_ptlck(m, false).context("TIOCSPTLCK")?;
    let n = systty::get_ptn(m).context("TIOCGPTN")?;
    debug!("pty {index} comes back as /dev/pts/{n}");
    let tmp = open_slave(n, true).with_context(|| format!("Cannot open /dev/pts/{n}"))?;
    let mut t = systty::get_termios(tmp.as_fd()).context("TCGETS")?;
    if let Some(tp) = minfo.termios.as_ref() {
        super::termios_from_pb(tp, &mut t);
    }
    if let Some(w) = minfo.winsize.as_ref() {
        let ws = libc::winsize {
            ws_row: w.ws_row as u16,
            ws_col: w.ws_col as u16,
            ws_xpixel: w.ws_xpixel as u16,
            ws_ypixel: w.ws_ypixel as u16,
        };
        systty::set_winsize(m, &ws).context("TIOCSWINSZ")?;
    }
    let empty = Vec::new();
    let input = data.data.get(&(index << 1)).unwrap_or(&empty);
    let output = data.data.get(&mid).unwrap_or(&empty);
    inject(m, tmp.as_fd(), &t, input, output).context("queued data")?;
    if minfo.packet_mode {
        systty::set_pkt(m, true).context("TIOCPKT")?;
    }
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        if id == masters[0] {
            continue;
        }
        let fd = nix::fcntl::open(
            format!("/dev/pts/{n}").as_str(),
            nix::fcntl::OFlag::from_bits_truncate(slave_flags(&files[&id])),
            nix::sys::stat::Mode::empty(),
        )
        .with_context(|| format!("Cannot open /dev/pts/{n}"))?;
        out.push((id, rawfd::own(fd)));
    }
    if sinfo.is_some_and(|s| s.exclusive) || minfo.exclusive {
        systty::set_excl(tmp.as_fd()).context("TIOCEXCL")?;
    }
    if minfo.locked {
        systty::set_ptlck(m, true).context("TIOCSPTLCK")?;
    }
    let mflags = mfe.tty.as_ref().map_or(0, |t| t.flags) as i32 & (libc::O_NONBLOCK | libc::O_APPEND);
    nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(mflags)),
    )
    .context("F_SETFL")?;
    out.push((masters[0], master));
    Ok(out)
}

/// The file id of the master of pair `index`.
fn master_file(files: &HashMap<u32, pb::FileEntry>, index: u32) -> Option<u32> {
    let mid = (index << 1) | 1;
    let mut ids: Vec<u32> = files
        .values()
        .filter(|f| f.r#type == FD_TTY && f.tty.as_ref().is_some_and(|t| t.tty_info_id == mid))
        .map(|f| f.id)
        .collect();
    ids.sort_unstable();
    ids.first().copied()
}

/// Controlling terminals inside the dump: (slave info, task index of the
/// session leader, master file id).
fn inside_cttys(plan: &crate::restore::Plan) -> Vec<(&pb::TtyInfoEntry, usize, u32)> {
    let mut out = Vec::new();
    for info in plan.ttys.values() {
        if info.id & 1 != 0 || info.sid == 0 || is_external(info, &plan.ttys) {
            continue;
        }
        let Some(leader) = plan
            .tasks
            .iter()
            .position(|t| t.pid == info.sid as i32 && t.zombie.is_none())
        else {
            continue;
        };
        if let Some(m) = master_file(&plan.files, info.id >> 1) {
            out.push((info, leader, m));
        }
    }
    out
}

/// Tasks that need a description without having it as an fd: the leader
/// of a session whose controlling terminal is an inside pty reads the
/// new index from the master's slot. (file id, task index) pairs.
pub(crate) fn extra_users(plan: &crate::restore::Plan) -> Vec<(u32, usize)> {
    inside_cttys(plan).into_iter().map(|(_, l, m)| (m, l)).collect()
}

/// After its fds are in place, before it forks: a session leader takes
/// its controlling terminal back, and the leader of a foreground group
/// makes its group the foreground one.
pub(crate) fn setup_ctty(plan: &crate::restore::Plan, idx: usize, efds: crate::restore::EngineFds) -> Result<()> {
    let t = &plan.tasks[idx];
    for (info, leader, master) in inside_cttys(plan) {
        if leader == idx {
            let slots = super::restore::slots(plan, efds)?;
            let slot = *slots.get(&master).context("the pty master has no slot")?;
            let n = systty::get_ptn(rawfd::borrow(slot)).context("TIOCGPTN")?;
            let f = open_slave(n, false).with_context(|| format!("Cannot open /dev/pts/{n}"))?;
            systty::set_ctty(f.as_fd()).with_context(|| format!("TIOCSCTTY on /dev/pts/{n}"))?;
            if info.pgrp as i32 == t.pid {
                nix::unistd::tcsetpgrp(f.as_fd(), nix::unistd::Pid::from_raw(t.pid))
                    .with_context(|| format!("TIOCSPGRP {} on /dev/pts/{n}", t.pid))?;
            }
        } else if info.pgrp as i32 == t.pid && t.pgid == t.pid && t.sid == info.sid as i32 {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open("/dev/tty")
                .with_context(|| format!("pid {}: Cannot open its controlling terminal /dev/tty", t.pid))?;
            nix::unistd::tcsetpgrp(f.as_fd(), nix::unistd::Pid::from_raw(t.pid))
                .with_context(|| format!("TIOCSPGRP {} on the session's terminal", t.pid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32, sid: u32) -> pb::TtyInfoEntry {
        pb::TtyInfoEntry {
            id,
            r#type: 1,
            sid,
            ..Default::default()
        }
    }

    fn tty_file(id: u32, info: u32) -> pb::FileEntry {
        pb::FileEntry {
            r#type: FD_TTY,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info,
                flags: 2,
                fown: super::super::fown0(),
                regf_id: None,
            }),
            ..Default::default()
        }
    }

    fn cooked() -> libc::termios {
        // SAFETY-free: a termios built field by field.
        let mut t = libc::termios {
            c_iflag: libc::ICRNL | libc::IXON,
            c_oflag: libc::OPOST | libc::ONLCR,
            c_cflag: 0,
            c_lflag: libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN,
            c_line: 0,
            c_cc: [0; 32],
            c_ispeed: 0,
            c_ospeed: 0,
        };
        t.c_cc[libc::VERASE] = 0x7f;
        t.c_cc[libc::VEOF] = 4;
        t
    }

    #[test]
    fn injected_input_is_not_edited_and_lines_count_to_the_last_delimiter() {
        let t = transparent(&cooked());
        assert_eq!(t.c_lflag & (libc::ECHO | libc::ISIG | libc::IEXTEN), 0);
        assert_ne!(t.c_lflag & libc::ICANON, 0, "canonical mode is kept");
        assert_eq!(t.c_iflag & (libc::ICRNL | libc::IXON), 0);
        assert_eq!((t.c_cc[libc::VERASE], t.c_cc[libc::VEOF]), (0, 0));
        assert_eq!(expected_inq(&t, b"hello\npart"), 6);
        assert_eq!(expected_inq(&t, b"part"), 0);
        assert_eq!(expected_inq(&t, b"a\nb\n"), 4);
        let mut eol = t;
        eol.c_cc[libc::VEOL] = b';';
        assert_eq!(expected_inq(&eol, b"a;bc"), 2);
        let mut raw = t;
        raw.c_lflag &= !libc::ICANON;
        assert_eq!(expected_inq(&raw, b"hello\npart"), 10);
    }

    #[test]
    fn external_terminal_is_the_controlling_slave_without_master() {
        let ttys: HashMap<u32, pb::TtyInfoEntry> = [info(0, 0), info(4, 77), info(6, 0), info(7, 0)]
            .into_iter()
            .map(|i| (i.id, i))
            .collect();
        let files: HashMap<u32, pb::FileEntry> = [tty_file(1, 0), tty_file(2, 4), tty_file(3, 6), tty_file(4, 7)]
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
        // pts/3 (id 6) has its master (id 7) in the dump: not external.
        assert!(!is_external(&ttys[&6], &ttys));
        assert!(is_external(&ttys[&4], &ttys));
        assert_eq!(external_info(&files, &ttys).map(|i| i.id), Some(4));
        let files: HashMap<u32, pb::FileEntry> = [tty_file(3, 6)].into_iter().map(|f| (f.id, f)).collect();
        assert!(external_info(&files, &ttys).is_none());
    }
}
