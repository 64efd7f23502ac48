//! procfs parsing.
//!
//! Every file format has a pure parser (`parse(&str) -> Result<T, ParseError>`)
//! with table-driven tests on captured text, and a thin reader that opens
//! `/proc/<pid>/...` and hands the text to the parser. Parsing bugs can thus
//! be found without root or a live process.
//!
//! The readers in this file cover the small one-value files and directory
//! listings (`task/`, `task/T/children`, `fd/`, the `exe`/`cwd`/`root`
//! links).

pub mod auxv;
pub mod fdinfo;
pub mod maps;
pub mod stat;
pub mod status;
pub mod timers;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// A procfs file did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Malformed {file} at line {line}: {what}")]
pub struct ParseError {
    /// Which file kind (`maps`, `stat`, `status`, ...), not a full path: the
    /// parser does not know where the text came from.
    pub file: String,
    /// 1-based line number; 0 when the error is not tied to a line.
    pub line: usize,
    /// What was wrong, with the offending token when there is one.
    pub what: String,
}

impl ParseError {
    pub(crate) fn new(file: &str, line: usize, what: impl Into<String>) -> Self {
        ParseError {
            file: file.to_string(),
            line,
            what: what.into(),
        }
    }
}

/// Errors of the procfs readers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a procfs file or link failed (ENOENT/ESRCH usually mean the
    /// task is gone).
    #[error("Failed to read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file was read but did not parse.
    #[error("Failed to parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

impl Error {
    /// The underlying I/O error kind, if this is an I/O error: lets callers
    /// treat a vanished task (NotFound / ESRCH) as a race, not a failure.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            Error::Parse { .. } => None,
        }
    }

    /// The raw errno of an I/O error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Parse { .. } => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `/proc/<pid>` as a path.
pub fn pid_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// `/proc/<pid>/task/<tid>` as a path.
pub fn task_dir(pid: u32, tid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}"))
}

/// Reads a whole procfs file as UTF-8 (lossily: paths in maps may hold any
/// bytes; the kernel escapes only newlines and a few others).
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Reads and parses one procfs file.
pub(crate) fn read_parsed<T>(
    path: PathBuf,
    parse: impl FnOnce(&str) -> std::result::Result<T, ParseError>,
) -> Result<T> {
    let text = read_text(&path)?;
    parse(&text).map_err(|source| Error::Parse { path, source })
}

/// Lists the numeric entries of a directory, sorted.
fn numeric_entries<T: std::str::FromStr + Ord>(path: &Path) -> Result<Vec<T>> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort();
    Ok(out)
}

/// Parses a whitespace-separated list of pids, as in `task/T/children`.
pub fn parse_pid_list(text: &str) -> std::result::Result<Vec<u32>, ParseError> {
    text.split_whitespace()
        .map(|w| {
            w.parse()
                .map_err(|_| ParseError::new("children", 1, format!("bad pid {w:?}")))
        })
        .collect()
}

/// The children of thread `tid` of process `pid` (`/proc/P/task/T/children`),
/// in the kernel's order. Needs CONFIG_PROC_CHILDREN. A process's children
/// are the union over all its threads.
pub fn children(pid: u32, tid: u32) -> Result<Vec<u32>> {
    read_parsed(task_dir(pid, tid).join("children"), parse_pid_list)
}

/// The thread ids of process `pid` (`/proc/P/task/`), sorted.
pub fn threads(pid: u32) -> Result<Vec<u32>> {
    numeric_entries(&pid_dir(pid).join("task"))
}

/// The open fd numbers of process `pid` (`/proc/P/fd/`), sorted.
pub fn fds(pid: u32) -> Result<Vec<i32>> {
    numeric_entries(&pid_dir(pid).join("fd"))
}

/// `/proc/P/comm` without the trailing newline.
pub fn comm(pid: u32) -> Result<String> {
    let mut s = read_text(&pid_dir(pid).join("comm"))?;
    if s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

/// `/proc/P/task/T/comm` without the trailing newline (thread names differ
/// per thread).
pub fn task_comm(pid: u32, tid: u32) -> Result<String> {
    let mut s = read_text(&task_dir(pid, tid).join("comm"))?;
    if s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

/// Reads a symlink under `/proc/P/` (e.g. `fd/3`, `exe`, `cwd`, `root`,
/// `ns/net`) as raw bytes: the target may be a path, `pipe:[123]`,
/// `anon_inode:[eventfd]`, or a path with a ` (deleted)` suffix.
pub fn read_link(pid: u32, rel: &str) -> Result<OsString> {
    let path = pid_dir(pid).join(rel);
    fs::read_link(&path)
        .map(|p| p.into_os_string())
        .map_err(|source| Error::Io { path, source })
}

/// Target of `/proc/P/fd/N`.
pub fn fd_link(pid: u32, fd: i32) -> Result<OsString> {
    read_link(pid, &format!("fd/{fd}"))
}

/// Target of `/proc/P/exe`.
pub fn exe(pid: u32) -> Result<OsString> {
    read_link(pid, "exe")
}

/// Target of `/proc/P/cwd`.
pub fn cwd(pid: u32) -> Result<OsString> {
    read_link(pid, "cwd")
}

/// Target of `/proc/P/root`.
pub fn root(pid: u32) -> Result<OsString> {
    read_link(pid, "root")
}

/// Raw bytes of a `/proc/P/<rel>` file (cmdline, environ, auxv, ...).
pub fn read_bytes(pid: u32, rel: &str) -> Result<Vec<u8>> {
    let path = pid_dir(pid).join(rel);
    fs::read(&path).map_err(|source| Error::Io { path, source })
}

/// Splits a link target into the path and whether the kernel appended
/// ` (deleted)`.
pub fn strip_deleted(target: &OsString) -> (OsString, bool) {
    let bytes = target.as_encoded_bytes();
    const SUFFIX: &[u8] = b" (deleted)";
    if bytes.ends_with(SUFFIX) {
        let head = bytes[..bytes.len() - SUFFIX.len()].to_vec();
        (OsString::from_vec(head), true)
    } else {
        (target.clone(), false)
    }
}

/// Parses a hex number without `0x` (as procfs prints them).
pub(crate) fn hex_u64(file: &str, line: usize, s: &str) -> std::result::Result<u64, ParseError> {
    u64::from_str_radix(s, 16).map_err(|_| ParseError::new(file, line, format!("bad hex {s:?}")))
}

/// Parses a decimal number of any `FromStr` type.
pub(crate) fn dec<T: std::str::FromStr>(file: &str, line: usize, s: &str) -> std::result::Result<T, ParseError> {
    s.parse()
        .map_err(|_| ParseError::new(file, line, format!("bad number {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_list() {
        assert_eq!(parse_pid_list("12 13 400 \n").unwrap(), vec![12, 13, 400]);
        assert_eq!(parse_pid_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_pid_list("12 x").is_err());
    }

    #[test]
    fn deleted_suffix() {
        let (p, d) = strip_deleted(&OsString::from("/tmp/a b (deleted)"));
        assert_eq!(p, OsString::from("/tmp/a b"));
        assert!(d);
        let (p, d) = strip_deleted(&OsString::from("pipe:[42]"));
        assert_eq!(p, OsString::from("pipe:[42]"));
        assert!(!d);
    }

    #[test]
    fn self_readers() {
        let me = std::process::id();
        let t = threads(me).unwrap();
        assert!(t.contains(&me));
        let f = fds(me).unwrap();
        assert!(f.windows(2).all(|w| w[0] < w[1]));
        assert!(!comm(me).unwrap().is_empty());
        assert!(!exe(me).unwrap().is_empty());
        assert_eq!(root(me).unwrap(), OsString::from("/"));
        // Our own children file exists (CONFIG_PROC_CHILDREN) and parses.
        children(me, me).unwrap();
        let err = comm(u32::MAX / 2).unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::NotFound));
    }
}
