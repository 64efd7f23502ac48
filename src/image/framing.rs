//! Entry framing: header, then `u32 LE length + protobuf payload
//! [+ extra bytes]` until EOF (image-format.md §1).

use prost::Message;

use super::error::{Error, Result};
use super::magic::{Header, Kind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};

/// Largest entry payload a reader accepts (and a writer produces).
pub const MAX_ENTRY: usize = 64 << 20;

/// Short Rust type name of a message, for error messages.
fn short_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Builds one image file in memory: the header for its kind, then entries.
///
/// Hand the result to [`super::ImageDir::save`] (which writes the file and
/// records its checksum) or take the bytes with [`ImageWriter::into_bytes`].
#[derive(Debug, Clone)]
pub struct ImageWriter {
    kind: Kind,
    buf: Vec<u8>,
}

impl ImageWriter {
    /// Starts an image of `kind` (writes its header).
    pub fn new(kind: Kind) -> Self {
        ImageWriter {
            kind,
            buf: kind.header_bytes(),
        }
    }

    /// The kind this writer was started with.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Appends one entry: u32 LE length, then the encoded message.
    pub fn write_entry<M: Message>(&mut self, m: &M) -> Result<()> {
        let len = m.encoded_len();
        if len > MAX_ENTRY {
            return Err(Error::EntryTooBig {
                file: format!("{} image", self.kind.name()),
                offset: self.buf.len(),
                size: len,
                limit: MAX_ENTRY,
            });
        }
        self.buf.reserve(4 + len);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        m.encode_raw(&mut self.buf);
        Ok(())
    }

    /// Appends extra payload bytes after the last entry (pipes-data).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The image bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The finished image bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads one fully loaded image file.
///
/// The header is checked on construction. Every error names `file` and
/// the byte offset at which the problem starts.
#[derive(Debug)]
pub struct ImageReader<'a> {
    file: String,
    data: &'a [u8],
    pos: usize,
    kind: Kind,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> ImageReader<'a> {
    /// Opens `data` (the whole file named `file`) as an image of `kind`.
    /// A missing, wrong or foreign magic is an error.
    pub fn new(file: impl Into<String>, data: &'a [u8], kind: Kind) -> Result<Self> {
        let file = file.into();
        let header = kind.header();
        if data.len() < header.size() {
            return Err(Error::NoHeader { file, size: data.len() });
        }
        let first = u32_at(data, 0).unwrap_or(0);
        let (found, expected) = match header {
            Header::MagicOnly => (first, kind.magic()),
            Header::Common | Header::Service => {
                let prefix = if header == Header::Common {
                    IMG_COMMON_MAGIC
                } else {
                    IMG_SERVICE_MAGIC
                };
                if first != prefix {
                    (first, prefix)
                } else {
                    (u32_at(data, 4).unwrap_or(0), kind.magic())
                }
            }
        };
        if found != expected {
            return Err(Error::WrongMagic {
                file,
                kind: kind.name(),
                found,
                expected,
            });
        }
        Ok(ImageReader {
            file,
            data,
            pos: header.size(),
            kind,
        })
    }

    /// Opens `data` as whatever kind its magic says.
    pub fn detect(file: impl Into<String>, data: &'a [u8]) -> Result<Self> {
        let file = file.into();
        let Some(first) = u32_at(data, 0) else {
            return Err(Error::NoHeader { file, size: data.len() });
        };
        let second = u32_at(data, 4);
        match Kind::detect(first, second) {
            Some(kind) => {
                let pos = if kind == Kind::Inventory { 4 } else { 8 };
                Ok(ImageReader { file, data, pos, kind })
            }
            None => {
                let magic = if first == IMG_COMMON_MAGIC || first == IMG_SERVICE_MAGIC {
                    second.unwrap_or(0)
                } else {
                    first
                };
                Err(Error::UnknownMagic { file, magic })
            }
        }
    }

    /// The image kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The file name used in errors.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Current byte offset in the file.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// True when every byte has been consumed.
    pub fn at_eof(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next entry's payload bytes and their offset (of the length
    /// field), or `None` at a clean EOF.
    pub fn next_payload(&mut self) -> Result<Option<(usize, &'a [u8])>> {
        let start = self.pos;
        let rest = self.data.len() - start;
        if rest == 0 {
            return Ok(None);
        }
        if rest < 4 {
            return Err(Error::TruncatedLength {
                file: self.file.clone(),
                offset: start,
                have: rest,
            });
        }
        let len = u32_at(self.data, start).unwrap_or(0) as usize;
        if len > MAX_ENTRY {
            return Err(Error::EntryTooBig {
                file: self.file.clone(),
                offset: start,
                size: len,
                limit: MAX_ENTRY,
            });
        }
        let body = start + 4;
        let have = self.data.len() - body;
        if have < len {
            return Err(Error::TruncatedPayload {
                file: self.file.clone(),
                offset: body,
                what: "entry payload",
                have,
                need: len,
            });
        }
        self.pos = body + len;
        Ok(Some((start, &self.data[body..body + len])))
    }

    /// Decodes the next entry as `M`, or `None` at a clean EOF.
    pub fn next_entry<M: Message + Default>(&mut self) -> Result<Option<M>> {
        let Some((offset, payload)) = self.next_payload()? else {
            return Ok(None);
        };
        M::decode(payload).map(Some).map_err(|source| Error::Decode {
            file: self.file.clone(),
            offset,
            message: short_name::<M>(),
            source,
        })
    }

    /// Decodes the next entry as `M`; EOF is an error.
    pub fn read_one<M: Message + Default>(&mut self) -> Result<M> {
        let offset = self.pos;
        self.next_entry()?.ok_or_else(|| Error::MissingEntry {
            file: self.file.clone(),
            offset,
            message: short_name::<M>(),
        })
    }

    /// Decodes every remaining entry as `M`.
    pub fn read_all<M: Message + Default>(&mut self) -> Result<Vec<M>> {
        let mut v = Vec::new();
        while let Some(m) = self.next_entry()? {
            v.push(m);
        }
        Ok(v)
    }

    /// Decodes exactly one remaining entry (single-entry images).
    pub fn read_single<M: Message + Default>(&mut self) -> Result<M> {
        let mut all: Vec<M> = self.read_all()?;
        if all.len() != 1 {
            return Err(Error::EntryCount {
                file: self.file.clone(),
                found: all.len(),
            });
        }
        Ok(all.remove(0))
    }

    /// Takes `n` extra payload bytes that follow an entry.
    pub fn read_raw(&mut self, n: usize) -> Result<&'a [u8]> {
        let have = self.data.len() - self.pos;
        if have < n {
            return Err(Error::TruncatedPayload {
                file: self.file.clone(),
                offset: self.pos,
                what: "extra data",
                have,
                need: n,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
}
