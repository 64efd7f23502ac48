//! `/proc/P/fdinfo/N`.
//!
//! Four common lines (`pos`, `flags` in octal, `mnt_id`, `ino`), then
//! kind-specific lines. Those are kept in order as key/value pairs for the
//! per-kind dumpers:
//! * `eventfd-count: 5` → (`eventfd-count`, `5`);
//! * `tfd:        5 events:       19 data: ...` (epoll) → (`tfd`, `5 events: ...`);
//! * `inotify wd:1 ino:...` / `fanotify ...` → (`inotify`, `wd:1 ino:...`);
//! * `it_value: (0, 0)` (timerfd) → (`it_value`, `(0, 0)`).
//!
//! The key is the text before the first `:` when no blank comes first,
//! otherwise the first word.

use super::{dec, read_parsed, ParseError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FdInfo {
    pub pos: u64,
    /// Open flags (O_*), including O_CLOEXEC. Printed in octal.
    pub flags: u32,
    pub mnt_id: i32,
    /// Inode number of the file; 0 on kernels without the line.
    pub ino: u64,
    /// Every other line, in order.
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// The first value of an extra key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// All values of a repeated extra key (epoll `tfd`, `inotify`, ...).
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.extra
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits an fdinfo line into key and value (see the module doc).
pub fn split_line(line: &str) -> (&str, &str) {
    let blank = line.find([' ', '\t']);
    match line.find(':') {
        Some(c) if blank.is_none_or(|b| c < b) => (&line[..c], line[c + 1..].trim()),
        _ => match blank {
            Some(b) => (&line[..b], line[b..].trim()),
            None => (line, ""),
        },
    }
}

/// Parses the text of `/proc/P/fdinfo/N`.
pub fn parse(text: &str) -> std::result::Result<FdInfo, ParseError> {
    const F: &str = "fdinfo";
    let mut info = FdInfo::default();
    let (mut have_pos, mut have_flags, mut have_mnt) = (false, false, false);
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (key, val) = split_line(line);
        match key {
            "pos" => {
                info.pos = dec(F, n, val)?;
                have_pos = true;
            }
            "flags" => {
                info.flags = u32::from_str_radix(val, 8)
                    .map_err(|_| ParseError::new(F, n, format!("bad octal flags {val:?}")))?;
                have_flags = true;
            }
            "mnt_id" => {
                info.mnt_id = dec(F, n, val)?;
                have_mnt = true;
            }
            "ino" if info.extra.is_empty() => info.ino = dec(F, n, val)?,
            _ => info.extra.push((key.to_string(), val.to_string())),
        }
    }
    for (have, what) in [(have_pos, "pos"), (have_flags, "flags"), (have_mnt, "mnt_id")] {
        if !have {
            return Err(ParseError::new(F, 0, format!("missing {what}")));
        }
    }
    Ok(info)
}

/// Reads `/proc/P/fdinfo/N`.
pub fn read(pid: u32, fd: i32) -> Result<FdInfo> {
    read_parsed(super::pid_dir(pid).join(format!("fdinfo/{fd}")), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular() {
        let i = parse("pos:\t4096\nflags:\t02100002\nmnt_id:\t24\nino:\t3\n").unwrap();
        assert_eq!(i.pos, 4096);
        assert_eq!(i.flags, 0o2100002);
        assert_eq!(i.flags & libc::O_CLOEXEC as u32, libc::O_CLOEXEC as u32);
        assert_eq!((i.mnt_id, i.ino), (24, 3));
        assert!(i.extra.is_empty());
    }

    #[test]
    fn eventfd() {
        let t = "pos:\t0\nflags:\t02004002\nmnt_id:\t16\nino:\t1057\neventfd-count:                5\neventfd-id: 7\neventfd-semaphore: 0\n";
        let i = parse(t).unwrap();
        assert_eq!(i.get("eventfd-count"), Some("5"));
        assert_eq!(i.get("eventfd-id"), Some("7"));
        assert_eq!(i.get("eventfd-semaphore"), Some("0"));
    }

    #[test]
    fn epoll_and_inotify() {
        let t = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n\
tfd:        5 events:       19 data:                5  pos:0 ino:3 sdev:e\n\
tfd:        7 events:        1 data:       100000007  pos:0 ino:9 sdev:e\n";
        let i = parse(t).unwrap();
        let tfds: Vec<_> = i.all("tfd").collect();
        assert_eq!(tfds.len(), 2);
        assert!(tfds[0].starts_with("5 events:"));
        assert!(tfds[1].contains("ino:9"));

        let t = "pos:\t0\nflags:\t00\nmnt_id:\t16\nino:\t1057\n\
inotify wd:1 ino:2a sdev:fe00000 mask:fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2a00000012345678\n";
        let i = parse(t).unwrap();
        assert!(i.get("inotify").unwrap().starts_with("wd:1 ino:2a"));
    }

    #[test]
    fn timerfd_keeps_later_ino_like_keys() {
        let t = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\nclockid: 1\nticks: 0\nsettime flags: 01\nit_value: (0, 999)\nit_interval: (1, 0)\n";
        let i = parse(t).unwrap();
        assert_eq!(i.get("clockid"), Some("1"));
        assert_eq!(i.get("settime"), Some("flags: 01"));
        assert_eq!(i.get("it_value"), Some("(0, 999)"));
        assert_eq!(i.get("it_interval"), Some("(1, 0)"));
    }

    #[test]
    fn errors() {
        assert!(parse("pos:\t0\nflags:\t09\nmnt_id:\t1\n").is_err());
        let e = parse("pos:\t0\nmnt_id:\t1\n").unwrap_err();
        assert!(e.what.contains("flags"));
        assert!(parse("pos:\tx\nflags:\t0\nmnt_id:\t1\n").is_err());
    }

    #[test]
    fn live_self() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let i = read(std::process::id(), f.as_raw_fd()).unwrap();
        assert_eq!(i.pos, 0);
        assert_ne!(i.flags & libc::O_CLOEXEC as u32, 0);
        assert_ne!(i.ino, 0);
    }
}
