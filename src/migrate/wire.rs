//! The migration stream: cryo's own framed protocol over TCP between the
//! sender (`cryo dump --page-server`, `cryo migrate`) and the receiver
//! (`cryo page-server`).
//!
//! Every frame is a 24-byte header — magic `CRYM`, kind, payload length,
//! CRC32 of the payload, CRC32 of the header's first 20 bytes — and the
//! payload. The first frame of each side is `Hello` with the protocol
//! version. Files travel as `FileBegin` (name, size), `Data` frames of at
//! most [`MAX_DATA`] bytes, and `FileEnd` with the CRC32 of the whole file.
//! All integers are little-endian. Decoding is pure and bounded: a frame
//! that is not one of ours, too long or damaged is an error naming the
//! frame's place in the stream.

use std::io::{self, Read, Write};

/// "CRYM", little-endian.
pub const MAGIC: u32 = 0x4d59_5243;
/// Version of this protocol (Hello).
pub const VERSION: u32 = 1;
/// Largest Data payload a sender produces.
pub const MAX_DATA: usize = 1 << 20;
/// Largest payload a receiver accepts.
pub const MAX_PAYLOAD: u64 = 2 << 20;
const HEADER: usize = 24;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame of each side. The sender lists the pids (as named in
    /// the images) of the processes it sends.
    Hello {
        version: u32,
        pids: Vec<u32>,
    },
    /// A file `name` (relative, see [`check_name`]) of `size` bytes follows.
    FileBegin {
        name: String,
        size: u64,
    },
    Data(Vec<u8>),
    /// The current file is complete; CRC32 of all its bytes.
    FileEnd {
        crc: u32,
    },
    /// A symbolic link `name` -> `target` (the `parent` links).
    Symlink {
        name: String,
        target: String,
    },
    /// Sender: everything is sent; keep the images.
    End,
    /// Sender: everything is sent; restore them now.
    Restore,
    /// Sender: as Restore, but let the tree run before the pages of the
    /// pre-copy rounds are in its memory (lazy pages).
    RestoreLazy,
    /// Sender: the source is stopped for good; let the restored tree run.
    Commit,
    /// Receiver (post-copy): send `len` bytes of the memory of image pid
    /// `pid` at `addr`; the answer is one Data frame.
    PageReq {
        pid: u32,
        addr: u64,
        len: u32,
    },
    /// Receiver (post-copy): every page is in; the source may go.
    AllIn,
    /// Receiver: the images are complete and kept.
    Ok,
    /// Receiver: the tree is restored and waits for Commit (host pid).
    Restored {
        pid: u32,
    },
    /// Receiver: the restored tree runs.
    Done,
    /// Either side: a one-line reason; the stream ends.
    Error(String),
}

impl Frame {
    fn kind(&self) -> u32 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::FileBegin { .. } => 2,
            Frame::Data(_) => 3,
            Frame::FileEnd { .. } => 4,
            Frame::Symlink { .. } => 5,
            Frame::End => 6,
            Frame::Restore => 7,
            Frame::Commit => 8,
            Frame::RestoreLazy => 9,
            Frame::PageReq { .. } => 10,
            Frame::AllIn => 11,
            Frame::Ok => 20,
            Frame::Restored { .. } => 21,
            Frame::Done => 22,
            Frame::Error(_) => 23,
        }
    }

    /// A short name for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::FileBegin { .. } => "FileBegin",
            Frame::Data(_) => "Data",
            Frame::FileEnd { .. } => "FileEnd",
            Frame::Symlink { .. } => "Symlink",
            Frame::End => "End",
            Frame::Restore => "Restore",
            Frame::RestoreLazy => "RestoreLazy",
            Frame::PageReq { .. } => "PageReq",
            Frame::AllIn => "AllIn",
            Frame::Commit => "Commit",
            Frame::Ok => "Ok",
            Frame::Restored { .. } => "Restored",
            Frame::Done => "Done",
            Frame::Error(_) => "Error",
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Frame::Hello { version, pids } => {
                p.extend_from_slice(&version.to_le_bytes());
                p.extend_from_slice(&(pids.len() as u32).to_le_bytes());
                for x in pids {
                    p.extend_from_slice(&x.to_le_bytes());
                }
            }
            Frame::FileBegin { name, size } => {
                p.extend_from_slice(&size.to_le_bytes());
                p.extend_from_slice(name.as_bytes());
            }
            Frame::Data(d) => p.extend_from_slice(d),
            Frame::FileEnd { crc } => p.extend_from_slice(&crc.to_le_bytes()),
            Frame::Symlink { name, target } => {
                p.extend_from_slice(&(name.len() as u32).to_le_bytes());
                p.extend_from_slice(name.as_bytes());
                p.extend_from_slice(target.as_bytes());
            }
            Frame::Restored { pid } => p.extend_from_slice(&pid.to_le_bytes()),
            Frame::PageReq { pid, addr, len } => {
                p.extend_from_slice(&pid.to_le_bytes());
                p.extend_from_slice(&addr.to_le_bytes());
                p.extend_from_slice(&len.to_le_bytes());
            }
            Frame::Error(m) => p.extend_from_slice(m.as_bytes()),
            Frame::End
            | Frame::Restore
            | Frame::RestoreLazy
            | Frame::Commit
            | Frame::Ok
            | Frame::Done
            | Frame::AllIn => {}
        }
        p
    }
}

fn header(kind: u32, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let hc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&hc.to_le_bytes());
    h
}

/// The bytes of `f` on the wire.
pub fn encode(f: &Frame) -> Vec<u8> {
    let p = f.payload();
    let mut out = header(f.kind(), &p).to_vec();
    out.extend_from_slice(&p);
    out
}

/// Writes a Data frame without copying `data` into a frame first.
pub fn write_data(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(&header(3, data))?;
    w.write_all(data)
}

pub fn write_frame(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    w.write_all(&encode(f))
}

/// Checks a header; returns (kind, payload length, payload crc).
pub fn decode_header(h: &[u8; HEADER]) -> Result<(u32, u64, u32), String> {
    let magic = u32::from_le_bytes(h[0..4].try_into().unwrap());
    if magic != MAGIC {
        return Err(format!("not a cryo migration stream (bad magic {magic:#010x})"));
    }
    let hc = u32::from_le_bytes(h[20..24].try_into().unwrap());
    if crc32fast::hash(&h[..20]) != hc {
        return Err("corrupted frame header (checksum mismatch)".into());
    }
    let kind = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let len = u64::from_le_bytes(h[8..16].try_into().unwrap());
    if len > MAX_PAYLOAD {
        return Err(format!(
            "frame of kind {kind} too long ({len} bytes, at most {MAX_PAYLOAD})"
        ));
    }
    Ok((kind, len, u32::from_le_bytes(h[16..20].try_into().unwrap())))
}

fn utf8(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

fn u32_at(p: &[u8], at: usize) -> Result<u32, String> {
    p.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| "frame payload too short".to_string())
}

/// Decodes a payload whose header and crc were checked.
pub fn decode_payload(kind: u32, p: Vec<u8>) -> Result<Frame, String> {
    let exact = |n: usize, f: Frame| {
        if p.len() == n {
            Ok(f)
        } else {
            Err(format!("{} frame with a {}-byte payload", f.name(), p.len()))
        }
    };
    Ok(match kind {
        1 => {
            let version = u32_at(&p, 0)?;
            let n = u32_at(&p, 4)? as usize;
            if p.len() != 8 + 4 * n {
                return Err(format!("Hello frame with a {}-byte payload for {n} pids", p.len()));
            }
            let pids = (0..n).map(|i| u32_at(&p, 8 + 4 * i)).collect::<Result<_, _>>()?;
            Frame::Hello { version, pids }
        }
        2 => {
            if p.len() < 9 {
                return Err("FileBegin frame too short".into());
            }
            let size = u64::from_le_bytes(p[0..8].try_into().unwrap());
            Frame::FileBegin {
                name: utf8(&p[8..], "file name")?,
                size,
            }
        }
        3 => Frame::Data(p),
        4 => return exact(4, Frame::FileEnd { crc: u32_at(&p, 0)? }),
        5 => {
            let n = u32_at(&p, 0)? as usize;
            if p.len() < 4 + n {
                return Err("Symlink frame too short".into());
            }
            Frame::Symlink {
                name: utf8(&p[4..4 + n], "link name")?,
                target: utf8(&p[4 + n..], "link target")?,
            }
        }
        6 => return exact(0, Frame::End),
        7 => return exact(0, Frame::Restore),
        8 => return exact(0, Frame::Commit),
        9 => return exact(0, Frame::RestoreLazy),
        10 => {
            if p.len() != 16 {
                return Err(format!("PageReq frame with a {}-byte payload", p.len()));
            }
            let len = u32_at(&p, 12)?;
            if len as usize > MAX_DATA || !len.is_multiple_of(4096) {
                return Err(format!("PageReq for {len} bytes"));
            }
            Frame::PageReq {
                pid: u32_at(&p, 0)?,
                addr: u64::from_le_bytes(p[4..12].try_into().unwrap()),
                len,
            }
        }
        11 => return exact(0, Frame::AllIn),
        20 => return exact(0, Frame::Ok),
        21 => return exact(4, Frame::Restored { pid: u32_at(&p, 0)? }),
        22 => return exact(0, Frame::Done),
        23 => Frame::Error(String::from_utf8_lossy(&p).into_owned()),
        k => return Err(format!("unknown frame kind {k}")),
    })
}

/// Reads one frame. `Err` carries a one-line reason; a clean end of the
/// stream before a header is "connection closed by the peer".
pub fn read_frame(r: &mut impl Read) -> Result<Frame, String> {
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h).map_err(|e| io_reason(&e))?;
    let (kind, len, crc) = decode_header(&h)?;
    let mut p = vec![0u8; len as usize];
    r.read_exact(&mut p).map_err(|e| io_reason(&e))?;
    if crc32fast::hash(&p) != crc {
        return Err(format!(
            "corrupted frame of kind {kind} ({len} bytes, checksum mismatch)"
        ));
    }
    decode_payload(kind, p)
}

/// A one-line reason for a socket error.
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "connection closed by the peer".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "the peer did not answer in time".into(),
        _ => format!("connection error: {e}"),
    }
}

/// Checks a file name sent by a peer: `NAME` or `pre-N/NAME`, each part
/// made of `[A-Za-z0-9._-]` and not `.` or `..`. Returns the round (0 for
/// the top level).
pub fn check_name(name: &str) -> Result<u32, String> {
    let bad = |why: &str| Err(format!("bad file name {name:?} from the peer: {why}"));
    let parts: Vec<&str> = name.split('/').collect();
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." {
            return bad("empty, . or .. component");
        }
        if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return bad("unexpected characters");
        }
        if p.len() > 100 {
            return bad("too long");
        }
    }
    match parts.as_slice() {
        [_] => Ok(0),
        [d, _] => match pre_round(d) {
            Some(n) => Ok(n),
            None => bad("only pre-N/ subdirectories are allowed"),
        },
        _ => bad("too deep"),
    }
}

/// N of a `pre-N` directory name (N ≥ 1).
pub fn pre_round(d: &str) -> Option<u32> {
    d.strip_prefix("pre-")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n >= 1 && d == format!("pre-{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let b = encode(&f);
        assert_eq!(read_frame(&mut &b[..]).unwrap(), f);
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame::Hello {
            version: VERSION,
            pids: vec![1, 77, 4000],
        });
        roundtrip(Frame::FileBegin {
            name: "pre-2/pages-1.img".into(),
            size: 1 << 33,
        });
        roundtrip(Frame::Data(vec![7; 5000]));
        roundtrip(Frame::FileEnd { crc: 0xdeadbeef });
        roundtrip(Frame::Symlink {
            name: "parent".into(),
            target: "pre-3".into(),
        });
        for f in [
            Frame::End,
            Frame::Restore,
            Frame::RestoreLazy,
            Frame::AllIn,
            Frame::PageReq {
                pid: 3,
                addr: 0x7f00_0000_1000,
                len: 8192,
            },
            Frame::Commit,
            Frame::Ok,
            Frame::Done,
            Frame::Restored { pid: 42 },
        ] {
            roundtrip(f);
        }
        roundtrip(Frame::Error("no space".into()));
        let mut v = Vec::new();
        write_data(&mut v, b"abc").unwrap();
        assert_eq!(read_frame(&mut &v[..]).unwrap(), Frame::Data(b"abc".to_vec()));
    }

    #[test]
    fn damage_is_detected() {
        let good = encode(&Frame::Data(vec![1, 2, 3, 4]));
        let e = read_frame(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]).unwrap_err();
        assert!(e.starts_with("not a cryo migration stream"), "{e}");
        let mut b = good.clone();
        *b.last_mut().unwrap() ^= 1;
        assert!(read_frame(&mut &b[..]).unwrap_err().contains("checksum mismatch"));
        let mut b = good.clone();
        b[9] ^= 1; // length
        assert!(read_frame(&mut &b[..]).unwrap_err().contains("header"));
        let e = read_frame(&mut &good[..10]).unwrap_err();
        assert_eq!(e, "connection closed by the peer");
        // A header announcing a huge payload is refused before reading it.
        let mut h = header(3, &[]);
        h[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let hc = crc32fast::hash(&h[..20]);
        h[20..24].copy_from_slice(&hc.to_le_bytes());
        assert!(read_frame(&mut &h[..]).unwrap_err().contains("too long"));
        assert!(decode_payload(99, vec![])
            .unwrap_err()
            .contains("unknown frame kind 99"));
        assert!(decode_payload(7, vec![1]).is_err());
        assert!(decode_payload(1, vec![1, 0, 0, 0, 5, 0, 0, 0]).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(check_name("pagemap-7.img"), Ok(0));
        assert_eq!(check_name("pre-12/pages-1.img"), Ok(12));
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "pre-1/../../x",
            "a/b",
            "pre-0/x",
            "pre-01/x",
            "pre-1/x/y",
            "",
            "x y",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
