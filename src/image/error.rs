//! The one error type of the image layer.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading, writing or checking images.
///
/// `file` fields hold the path (or name) of the image as given to the
/// reader, so every message names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a file or directory failed.
    #[error("Cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The header magic does not match the expected image kind.
    #[error("{file}: magic 0x{found:08x} is not {kind} (expected 0x{expected:08x})")]
    WrongMagic {
        file: String,
        kind: &'static str,
        found: u32,
        expected: u32,
    },
    /// The file is too short to even hold the header.
    #[error("{file}: too short for an image header ({size} bytes)")]
    NoHeader { file: String, size: usize },
    /// A file whose magic is not one of the image kinds cryo knows.
    #[error("Unknown image magic 0x{magic:08x} in {file}")]
    UnknownMagic { file: String, magic: u32 },
    /// The u32 entry length is cut off by EOF.
    #[error("{file}: truncated at offset {offset}: entry length cut ({have} of 4 bytes)")]
    TruncatedLength { file: String, offset: usize, have: usize },
    /// The payload (or extra bytes) are cut off by EOF.
    #[error("{file}: truncated at offset {offset}: {what} cut ({have} of {need} bytes)")]
    TruncatedPayload {
        file: String,
        offset: usize,
        what: &'static str,
        have: usize,
        need: usize,
    },
    /// An entry claims a size over the sanity limit.
    #[error("{file}: entry at offset {offset} claims {size} bytes (limit {limit})")]
    EntryTooBig {
        file: String,
        offset: usize,
        size: usize,
        limit: usize,
    },
    /// A payload is not a valid protobuf message of the expected type.
    #[error("{file}: cannot decode {message} at offset {offset}")]
    Decode {
        file: String,
        offset: usize,
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    /// An entry was required but the file ended.
    #[error("{file}: no {message} entry at offset {offset} (end of file)")]
    MissingEntry {
        file: String,
        offset: usize,
        message: &'static str,
    },
    /// A single-entry image had zero or several entries.
    #[error("{file}: expected exactly one entry, found {found}")]
    EntryCount { file: String, found: usize },
    /// An image that must exist is missing.
    #[error("{}: image is missing", path.display())]
    Missing { path: PathBuf },
    /// The image directory does not exist.
    #[error("{}: image directory does not exist", path.display())]
    NoDir { path: PathBuf },
    /// The image path exists but is not a directory.
    #[error("{}: not a directory", path.display())]
    NotDir { path: PathBuf },
    /// The image directory is empty.
    #[error("{}: image directory is empty", path.display())]
    EmptyDir { path: PathBuf },
    /// The directory has files but no inventory.img.
    #[error("{}: not an image directory (no inventory.img)", path.display())]
    NotImageDir { path: PathBuf },
    /// A file name that is not a plain name inside the directory.
    #[error("Bad image file name {name:?}")]
    BadName { name: String },
    /// cryo.sums lists a file that is absent.
    #[error("{file}: missing (listed in cryo.sums)")]
    ManifestMissing { file: String },
    /// A file is shorter (or longer) than recorded in cryo.sums.
    #[error("{file}: truncated ({size} bytes, cryo.sums says {expected})")]
    ManifestTruncated { file: String, size: u64, expected: u64 },
    /// A file is longer than recorded in cryo.sums.
    #[error("{file}: corrupted ({size} bytes, cryo.sums says {expected})")]
    ManifestGrown { file: String, size: u64, expected: u64 },
    /// A file's CRC32 differs from cryo.sums.
    #[error("{file}: corrupted (crc32 {crc:08x}, cryo.sums says {expected:08x})")]
    Corrupted { file: String, crc: u32, expected: u32 },
    /// cryo.sums itself is damaged.
    #[error("{file}: corrupted manifest at line {line}")]
    BadManifest { file: String, line: usize },
    /// inventory.img has an img_version this cryo cannot read.
    #[error("inventory.img: images of an unknown format version {0} (this cryo reads 2)")]
    UnknownImgVersion(u32),
    /// inventory.img was written by a newer cryo.
    #[error("inventory.img: images written by a newer cryo (format {0}, this cryo reads 1)")]
    NewerFormat(u32),
    /// inventory.img predates fdinfo_per_id.
    #[error("inventory.img: images too old (no fdinfo_per_id)")]
    TooOld,
    /// A pagemap breaks an ordering or alignment rule.
    #[error("{file}: pagemap entry {index} at 0x{vaddr:x}: {what}")]
    BadPagemap {
        file: String,
        index: usize,
        vaddr: u64,
        what: &'static str,
    },
    /// pages-N.img holds fewer bytes than its pagemap needs.
    #[error("pages-{pages_id}.img is shorter than its pagemap ({size} bytes, pagemap needs {need})")]
    PagesShort { pages_id: u32, size: u64, need: u64 },
    /// pages-N.img holds more bytes than its pagemap needs.
    #[error("pages-{pages_id}.img is longer than its pagemap ({size} bytes, pagemap needs {need})")]
    PagesLong { pages_id: u32, size: u64, need: u64 },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the image layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
