//! The sending side of the migration stream: files of an image
//! directory, and pre-copy rounds copied from the running tree straight
//! into the socket (their pages never touch the source's disk).

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::Pid;

use super::runs::RunSet;
use super::track::RoundPages;
use super::wire::{self, Frame};
use crate::image::{self, pb, ImageWriter, Kind};
use crate::mem::{PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::sys::vm;

/// How long the sender waits for the receiver's answer to a request
/// (a restore of a large tree included).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to a page server.
pub struct Conn {
    to: String,
    rd: TcpStream,
    wr: BufWriter<TcpStream>,
    /// Payload bytes sent so far.
    pub sent: u64,
}

impl Conn {
    /// Connects to `to` (HOST:PORT) and exchanges Hello, announcing the
    /// image pids `pids`.
    pub fn connect(to: &str, pids: &[u32]) -> Result<Conn> {
        let addrs: Vec<_> = to
            .to_socket_addrs()
            .with_context(|| format!("Bad page server address {to:?} (want HOST:PORT)"))?
            .collect();
        let mut last = None;
        let mut s = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(10)) {
                Ok(c) => {
                    s = Some(c);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let s = s.ok_or_else(|| {
            anyhow!(
                "Cannot connect to the page server at {to}: {}",
                last.map_or("no address".into(), |e| e.to_string())
            )
        })?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let rd = s.try_clone()?;
        let mut c = Conn {
            to: to.to_string(),
            rd,
            wr: BufWriter::with_capacity(1 << 20, s),
            sent: 0,
        };
        c.frame(&Frame::Hello {
            version: wire::VERSION,
            pids: pids.to_vec(),
        })?;
        c.flush()?;
        match c.answer()? {
            Frame::Hello { version, .. } if version == wire::VERSION => Ok(c),
            Frame::Hello { version, .. } => bail!(
                "The page server at {to} speaks protocol version {version}, this cryo {}",
                wire::VERSION
            ),
            f => bail!("The page server at {to} answered Hello with {}", f.name()),
        }
    }

    fn lost(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("Lost the page server at {}: {e}", self.to)
    }

    /// A write failed: the receiver may have said why before closing.
    fn write_failed(&mut self, e: std::io::Error) -> anyhow::Error {
        let _ = self.rd.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = Vec::new();
        let _ = (&self.rd).take(1 << 20).read_to_end(&mut buf);
        // Skip the frames we did not read; the last one is the reason.
        let mut r = &buf[..];
        let mut why = None;
        while let Ok(f) = wire::read_frame(&mut r) {
            if let Frame::Error(m) = f {
                why = Some(m);
            }
        }
        match why {
            Some(m) => anyhow!("The page server at {} refused: {m}", self.to),
            None => self.lost(wire::io_reason(&e)),
        }
    }

    pub fn frame(&mut self, f: &Frame) -> Result<()> {
        let b = wire::encode(f);
        self.sent += b.len() as u64;
        match self.wr.write_all(&b) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_failed(e)),
        }
    }

    fn data(&mut self, d: &[u8]) -> Result<()> {
        self.sent += d.len() as u64 + 24;
        match wire::write_data(&mut self.wr, d) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_failed(e)),
        }
    }

    pub fn flush(&mut self) -> Result<()> {
        match self.wr.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.write_failed(e)),
        }
    }

    /// Reads the receiver's next frame; an Error frame becomes an error.
    pub fn answer(&mut self) -> Result<Frame> {
        match wire::read_frame(&mut self.rd) {
            Ok(Frame::Error(m)) => bail!("The page server at {} refused: {m}", self.to),
            Ok(f) => Ok(f),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Sends `bytes` as the file `name`.
    pub fn send_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.frame(&Frame::FileBegin {
            name: name.to_string(),
            size: bytes.len() as u64,
        })?;
        for c in bytes.chunks(wire::MAX_DATA) {
            self.data(c)?;
        }
        self.frame(&Frame::FileEnd {
            crc: crc32fast::hash(bytes),
        })
    }

    /// Sends the regular files and symlinks of the image directory `dir`,
    /// under `prefix` ("" or "pre-N/").
    pub fn send_dir(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        self.send_dir_except(dir, prefix, &[])
    }

    /// [`send_dir`](Self::send_dir) without the entries named in `skip`.
    pub fn send_dir_except(&mut self, dir: &Path, prefix: &str, skip: &[&str]) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("Cannot read {}", dir.display()))?
            .collect::<std::io::Result<Vec<_>>>()?;
        names.retain(|e| !skip.iter().any(|s| e.file_name() == *s));
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_symlink() {
                let target = fs::read_link(&p)?.to_string_lossy().into_owned();
                self.frame(&Frame::Symlink {
                    name: format!("{prefix}{name}"),
                    target,
                })?;
            } else if ft.is_file() {
                let mut f = fs::File::open(&p).with_context(|| format!("Cannot open {}", p.display()))?;
                let size = f.metadata()?.len();
                self.frame(&Frame::FileBegin {
                    name: format!("{prefix}{name}"),
                    size,
                })?;
                let mut h = crc32fast::Hasher::new();
                let mut buf = vec![0u8; wire::MAX_DATA];
                let mut left = size;
                while left > 0 {
                    let n = (left as usize).min(buf.len());
                    f.read_exact(&mut buf[..n])
                        .with_context(|| format!("Cannot read {}", p.display()))?;
                    h.update(&buf[..n]);
                    self.data(&buf[..n])?;
                    left -= n as u64;
                }
                self.frame(&Frame::FileEnd { crc: h.finalize() })?;
            }
        }
        Ok(())
    }

    /// Sends one pre-copy round as the image directory `pre-K/`: for each
    /// process a pagemap (pages copied now: PE_PRESENT; copied before and
    /// unchanged: PE_PARENT) and the pages, read from the running task.
    /// Returns, per process, the runs actually copied.
    pub fn send_round(&mut self, k: u32, pages: &[RoundPages]) -> Result<Vec<RunSet>> {
        let dir = format!("pre-{k}/");
        if k > 1 {
            self.frame(&Frame::Symlink {
                name: format!("{dir}parent"),
                target: format!("../pre-{}", k - 1),
            })?;
        }
        let mut copied = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            let pages_id = i as u32 + 1;
            let mut entries: Vec<pb::PagemapEntry> = Vec::new();
            let mut all: Vec<(u64, u64, u32)> = p
                .dirty
                .ranges()
                .iter()
                .map(|r| (r.0, r.1, PE_PRESENT | PE_LAZY))
                .chain(p.parent.ranges().iter().map(|r| (r.0, r.1, PE_PARENT)))
                .collect();
            all.sort_unstable();
            for (s, e, fl) in all {
                entries.push(image::pages::new_entry(s, (e - s) / PAGE_SIZE, fl));
            }
            let mut w = ImageWriter::new(Kind::Pagemap);
            w.write_entry(&pb::PagemapHead { pages_id })?;
            for e in &entries {
                w.write_entry(e)?;
            }
            self.send_bytes(&format!("{dir}{}", image::names::pagemap(p.vpid)), w.bytes())?;
            let got = self.send_pages(&format!("{dir}{}", image::names::pages(pages_id)), p.pid, &p.dirty)?;
            copied.push(got);
        }
        Ok(copied)
    }

    /// Streams the memory of `pid` in `runs` as the file `name`. A piece
    /// the task no longer has (unmapped meanwhile) is sent as zeros and
    /// left out of the returned set, so it is never used from this round.
    fn send_pages(&mut self, name: &str, pid: i32, runs: &RunSet) -> Result<RunSet> {
        let size = runs.bytes();
        self.frame(&Frame::FileBegin {
            name: name.to_string(),
            size,
        })?;
        let mut h = crc32fast::Hasher::new();
        let mut buf = vec![0u8; wire::MAX_DATA];
        let mut ok = Vec::new();
        let mut iov: Vec<(u64, usize)> = Vec::new();
        let mut len = 0usize;
        let mut flush = |iov: &mut Vec<(u64, usize)>, len: &mut usize, c: &mut Conn| -> Result<()> {
            if *len == 0 {
                return Ok(());
            }
            let b = &mut buf[..*len];
            let got = vm::read_remote(Pid::from_raw(pid), iov, b).unwrap_or(0);
            if got == *len {
                ok.extend(iov.iter().map(|&(a, l)| (a, a + l as u64)));
            } else {
                // Page by page: keep what can be read.
                let mut at = 0usize;
                for &(a, l) in iov.iter() {
                    let mut off = 0usize;
                    while off < l {
                        let page = &mut b[at..at + PAGE_SIZE as usize];
                        let ad = a + off as u64;
                        if vm::read_remote(Pid::from_raw(pid), &[(ad, PAGE_SIZE as usize)], page).ok()
                            == Some(PAGE_SIZE as usize)
                        {
                            ok.push((ad, ad + PAGE_SIZE));
                        } else {
                            page.fill(0);
                        }
                        at += PAGE_SIZE as usize;
                        off += PAGE_SIZE as usize;
                    }
                }
            }
            h.update(b);
            c.data(b)?;
            iov.clear();
            *len = 0;
            Ok(())
        };
        for &(s, e) in runs.ranges() {
            let mut a = s;
            while a < e {
                if len == wire::MAX_DATA || iov.len() == vm::IOV_MAX {
                    flush(&mut iov, &mut len, self)?;
                }
                let take = ((e - a) as usize).min(wire::MAX_DATA - len);
                iov.push((a, take));
                len += take;
                a += take as u64;
            }
        }
        flush(&mut iov, &mut len, self)?;
        self.frame(&Frame::FileEnd { crc: h.finalize() })?;
        Ok(RunSet::from_ranges(ok))
    }
}
