//! Anonymous-inode descriptors: eventfd, signalfd, timerfd and epoll.
//!
//! Their state is in `/proc/PID/fdinfo/N` (see each dumper). Restore
//! recreates each with its syscall. An epoll is created after every file
//! it watches (the layout makes the watched files reach its creator, see
//! `restore`), and each target is added under the fd number it was
//! registered with (the kernel keys registrations by file and number):
//! the creator parks the target at that number for the epoll_ctl call and
//! puts back whatever was there.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use super::{fown0, FdCtx, FileTable, FD_EVENTFD, FD_EVENTPOLL, FD_SIGNALFD, FD_TIMERFD};
use crate::image::pb;
use crate::sys::{clone as sysc, fdops};

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

// ---- fdinfo values -------------------------------------------------------------

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// `(sec, nsec)` of a timerfd `it_value`/`it_interval` line.
pub fn parse_pair(s: &str) -> Option<(i64, i64)> {
    let s = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = s.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// One epoll registration from an fdinfo `tfd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tfd {
    pub tfd: u32,
    pub events: u32,
    pub data: u64,
    pub pos: u64,
    pub ino: u64,
    pub sdev: u32,
}

/// Parses the value of an fdinfo `tfd:` line:
/// `5 events:       19 data:                5  pos:0 ino:3 sdev:e`.
pub fn parse_tfd(v: &str) -> Option<Tfd> {
    let mut it = v.split_whitespace();
    let tfd = it.next()?.parse().ok()?;
    let mut t = Tfd {
        tfd,
        events: 0,
        data: 0,
        pos: 0,
        ino: 0,
        sdev: 0,
    };
    let (mut have_ev, mut have_data) = (false, false);
    while let Some(tok) = it.next() {
        match tok {
            "events:" => {
                t.events = hex(it.next()?)? as u32;
                have_ev = true;
            }
            "data:" => {
                t.data = hex(it.next()?)?;
                have_data = true;
            }
            _ => {
                if let Some(p) = tok.strip_prefix("pos:") {
                    t.pos = p.parse().ok()?;
                } else if let Some(i) = tok.strip_prefix("ino:") {
                    t.ino = hex(i)?;
                } else if let Some(d) = tok.strip_prefix("sdev:") {
                    t.sdev = hex(d)? as u32;
                }
            }
        }
    }
    (have_ev && have_data).then_some(t)
}

// ---- dump -------------------------------------------------------------------------

fn need<'a>(f: &'a FdCtx, key: &str) -> Result<&'a str> {
    f.info
        .get(key)
        .with_context(|| format!("pid {} fd {}: no `{key}` in its fdinfo", f.pid, f.fd))
}

fn bad(f: &FdCtx, what: &str, v: &str) -> anyhow::Error {
    anyhow::anyhow!("pid {} fd {}: cannot parse {what} {v:?} in its fdinfo", f.pid, f.fd)
}

pub(crate) fn dump_eventfd(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let v = need(f, "eventfd-count")?;
    let counter = hex(v).ok_or_else(|| bad(f, "eventfd-count", v))?;
    let semaphore = f.info.get("eventfd-semaphore").is_some_and(|s| s.trim() == "1");
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_EVENTFD,
        id,
        efd: Some(pb::EventfdFileEntry {
            id,
            flags: f.flags,
            fown: fown0(),
            counter,
            cryo_semaphore: semaphore.then_some(true),
        }),
        ..Default::default()
    });
    Ok(id)
}

pub(crate) fn dump_signalfd(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let v = need(f, "sigmask")?;
    let sigmask = hex(v).ok_or_else(|| bad(f, "sigmask", v))?;
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_SIGNALFD,
        id,
        sgfd: Some(pb::SignalfdEntry {
            id,
            flags: f.flags,
            fown: fown0(),
            sigmask,
        }),
        ..Default::default()
    });
    Ok(id)
}

pub(crate) fn dump_timerfd(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    // An expired periodic timer counts its overruns only when read or
    // queried: timerfd_gettime on a duplicate folds them into the tick
    // count (without consuming them), then fdinfo shows the real count.
    let dup = t.dup_fd(f.pid, f.fd)?;
    let spec =
        fdops::timerfd_gettime(dup.as_fd()).with_context(|| format!("pid {} fd {}: timerfd_gettime", f.pid, f.fd))?;
    let info = crate::proc::fdinfo::read(f.pid as u32, f.fd)?;
    let f = &FdCtx { info: &info, ..*f };
    let num = |key: &str| -> Result<u64> {
        let v = need(f, key)?;
        v.trim().parse().map_err(|_| bad(f, key, v))
    };
    let clockid = num("clockid")? as u32;
    let ticks = num("ticks")?;
    // "settime flags: 01" splits as key `settime`, value `flags: 01`.
    let sf = need(f, "settime")?;
    let settime_flags = sf
        .strip_prefix("flags:")
        .and_then(|o| u32::from_str_radix(o.trim(), 8).ok())
        .ok_or_else(|| bad(f, "settime flags", sf))?;
    let id = t.new_id();
    t.entries.push(pb::FileEntry {
        r#type: FD_TIMERFD,
        id,
        tfd: Some(pb::TimerfdEntry {
            id,
            flags: f.flags,
            fown: fown0(),
            clockid,
            ticks,
            settime_flags,
            vsec: spec.value.0 as u64,
            vnsec: spec.value.1 as u64,
            isec: spec.interval.0 as u64,
            insec: spec.interval.1 as u64,
        }),
        ..Default::default()
    });
    Ok(id)
}

pub(crate) fn dump_epoll(t: &mut FileTable, f: &FdCtx) -> Result<u32> {
    let (pid, fd) = (f.pid, f.fd);
    let mut tfds = Vec::new();
    let mut seen: HashMap<u32, u32> = HashMap::new();
    for v in f.info.all("tfd") {
        let r = parse_tfd(v).ok_or_else(|| bad(f, "tfd", v))?;
        // The n-th registration of the same fd number is `toff` n.
        let toff = seen.entry(r.tfd).or_insert(0);
        let same = sysc::kcmp_epoll_tfd(
            Pid::from_raw(pid),
            Pid::from_raw(pid),
            r.tfd as i32,
            fd,
            r.tfd as i32,
            *toff,
        );
        *toff += 1;
        if same != Ok(0) {
            bail!(
                "pid {pid} fd {fd}: the epoll watches a file registered as fd {} that is no longer open at that number; not supported",
                r.tfd
            );
        }
        tfds.push(pb::EventpollTfdEntry {
            id: 0,
            tfd: r.tfd,
            events: r.events,
            data: r.data,
            dev: Some(r.sdev),
            inode: Some(r.ino),
            pos: Some(r.pos),
        });
    }
    let id = t.new_id();
    for e in &mut tfds {
        e.id = id;
    }
    t.entries.push(pb::FileEntry {
        r#type: FD_EVENTPOLL,
        id,
        epfd: Some(pb::EventpollFileEntry {
            id,
            flags: f.flags,
            fown: fown0(),
            tfd: tfds,
        }),
        ..Default::default()
    });
    Ok(id)
}

// ---- restore ----------------------------------------------------------------------

fn nonblock(flags: u32) -> bool {
    flags & libc::O_NONBLOCK as u32 != 0
}

pub(crate) fn create_eventfd(e: &pb::EventfdFileEntry) -> Result<OwnedFd> {
    let mut fl = libc::EFD_CLOEXEC;
    if nonblock(e.flags) {
        fl |= libc::EFD_NONBLOCK;
    }
    if e.cryo_semaphore == Some(true) {
        fl |= libc::EFD_SEMAPHORE;
    }
    let fd = fdops::eventfd(0, fl).context("eventfd")?;
    if e.counter != 0 {
        nix::unistd::write(&fd, &e.counter.to_ne_bytes()).context("Cannot set the eventfd counter")?;
    }
    Ok(fd)
}

pub(crate) fn create_signalfd(e: &pb::SignalfdEntry) -> Result<OwnedFd> {
    let mut fl = libc::SFD_CLOEXEC;
    if nonblock(e.flags) {
        fl |= libc::SFD_NONBLOCK;
    }
    fdops::signalfd(e.sigmask, fl).context("signalfd")
}

pub(crate) fn create_timerfd(e: &pb::TimerfdEntry) -> Result<OwnedFd> {
    let mut fl = libc::TFD_CLOEXEC;
    if nonblock(e.flags) {
        fl |= libc::TFD_NONBLOCK;
    }
    let fd =
        fdops::timerfd_create(e.clockid as i32, fl).with_context(|| format!("timerfd_create(clock {})", e.clockid))?;
    let mut value = (e.vsec as i64, e.vnsec as i64);
    let interval = (e.isec as i64, e.insec as i64);
    let mut flags = 0;
    if value != (0, 0) && e.settime_flags & TFD_TIMER_ABSTIME != 0 {
        // The image holds the time left: anchor it on the clock again.
        let now = nix::time::clock_gettime(nix::time::ClockId::from_raw(e.clockid as i32)).context("clock_gettime")?;
        let ns = now.tv_nsec() + value.1;
        value = (now.tv_sec() + value.0 + ns / 1_000_000_000, ns % 1_000_000_000);
        flags = (e.settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET)) as i32;
    }
    if value != (0, 0) {
        fdops::timerfd_settime(fd.as_fd(), flags, fdops::TimerSpec { value, interval }).context("timerfd_settime")?;
    }
    if e.ticks != 0 {
        fdops::timerfd_set_ticks(fd.as_fd(), e.ticks).context("TFD_IOC_SET_TICKS")?;
    }
    Ok(fd)
}

/// Creates an epoll and adds its targets; `target` gives the fd that
/// holds the description of a registration (`None`: unresolved).
pub(crate) fn create_epoll(
    e: &pb::EventpollFileEntry,
    target: impl Fn(u32) -> Option<RawFd>,
    scratch: RawFd,
) -> Result<OwnedFd> {
    let ep = fdops::epoll_create(libc::EPOLL_CLOEXEC).context("epoll_create1")?;
    for t in &e.tfd {
        let src = target(t.tfd).with_context(|| format!("epoll target fd {} is not known", t.tfd))?;
        let at = t.tfd as RawFd;
        // Park the target at its registration number, keeping what is there.
        let saved = match nix::fcntl::fcntl(at, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(scratch)) {
            Ok(n) => Some(crate::sys::rawfd::own(n)),
            Err(_) => None,
        };
        let r = if src == at {
            Ok(())
        } else {
            nix::unistd::dup2(src, at).map(drop)
        }
        .with_context(|| format!("dup2 of an epoll target to fd {at}"))
        .and_then(|_| {
            fdops::epoll_add(ep.as_fd(), at, t.events, t.data).with_context(|| format!("epoll_ctl ADD of fd {at}"))
        });
        match &saved {
            Some(s) if s.as_raw_fd() != at => {
                nix::unistd::dup2(s.as_raw_fd(), at).context("dup2 back")?;
            }
            Some(_) => {}
            None => {
                let _ = nix::unistd::close(at);
            }
        }
        r?;
    }
    if nonblock(e.flags) {
        nix::fcntl::fcntl(
            ep.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .context("F_SETFL")?;
    }
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tfd_lines() {
        let t = parse_tfd("5 events:       19 data:                5  pos:0 ino:3 sdev:e").unwrap();
        assert_eq!(
            t,
            Tfd {
                tfd: 5,
                events: 0x19,
                data: 5,
                pos: 0,
                ino: 3,
                sdev: 0xe
            }
        );
        let t = parse_tfd("7 events: 80000001 data:  ffffffffffffffff  pos:12 ino:9a sdev:fe00000").unwrap();
        assert_eq!(
            (t.events, t.data, t.pos, t.ino, t.sdev),
            (0x8000_0001, u64::MAX, 12, 0x9a, 0xfe0_0000)
        );
        assert!(parse_tfd("x events: 1 data: 2").is_none());
        assert!(parse_tfd("5 events: 1").is_none());
    }

    #[test]
    fn timer_pairs() {
        assert_eq!(parse_pair("(0, 999)"), Some((0, 999)));
        assert_eq!(parse_pair(" (12, 5) "), Some((12, 5)));
        assert_eq!(parse_pair("12, 5"), None);
    }

    #[test]
    fn live_fdinfo_of_each_kind() {
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        let ev = fdops::eventfd(7, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE).unwrap();
        let i = crate::proc::fdinfo::read(me, ev.as_raw_fd()).unwrap();
        assert_eq!(hex(i.get("eventfd-count").unwrap()), Some(7));
        assert_eq!(i.get("eventfd-semaphore"), Some("1"));
        let sf = fdops::signalfd(1 << 9, libc::SFD_CLOEXEC).unwrap();
        let i = crate::proc::fdinfo::read(me, sf.as_raw_fd()).unwrap();
        assert_eq!(hex(i.get("sigmask").unwrap()), Some(1 << 9));
        let tf = fdops::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC).unwrap();
        fdops::timerfd_settime(
            tf.as_fd(),
            0,
            fdops::TimerSpec {
                value: (50, 0),
                interval: (3, 0),
            },
        )
        .unwrap();
        let i = crate::proc::fdinfo::read(me, tf.as_raw_fd()).unwrap();
        let (s, _) = parse_pair(i.get("it_value").unwrap()).unwrap();
        assert!((49..=50).contains(&s));
        assert_eq!(parse_pair(i.get("it_interval").unwrap()), Some((3, 0)));
        assert_eq!(i.get("settime"), Some("flags: 00"));
        let ep = fdops::epoll_create(libc::EPOLL_CLOEXEC).unwrap();
        fdops::epoll_add(
            ep.as_fd(),
            ev.as_raw_fd(),
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            0xabc,
        )
        .unwrap();
        let i = crate::proc::fdinfo::read(me, ep.as_raw_fd()).unwrap();
        let t = parse_tfd(i.get("tfd").unwrap()).unwrap();
        // The kernel adds EPOLLERR | EPOLLHUP to every registration.
        let always = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        assert_eq!(
            (t.tfd as i32, t.events & !always, t.data),
            (ev.as_raw_fd(), (libc::EPOLLIN | libc::EPOLLET) as u32, 0xabc)
        );
    }
}
