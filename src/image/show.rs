//! `cryo show`: any image (or a whole image directory) as JSON, in crit's
//! shape: `{"magic": "PSTREE", "entries": [...]}` with CRIU's field names.
//!
//! Decoding goes through the descriptor set compiled from `proto/` (so it
//! follows the schemas, not hand-written code). The JSON is crit's
//! (without `--pretty`): integers as plain numbers, enums by name, bytes
//! as MIME-style base64; pipes-data entries carry their data in `extra`.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind as FieldKind, MessageDescriptor, Value as ReflectValue};
use serde_json::{json, Map, Value};

use super::dir::names;
use super::error::{Error, Result};
use super::framing::ImageReader;
use super::magic::{foreign_name, Kind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};
use super::pb::{GhostChunkEntry, GhostFileEntry, PipeDataEntry, SkPacketEntry};

static FDS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/images.fds"));

/// The descriptor pool of every image schema.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // images.fds is produced by build.rs from the same protos as the
        // generated code; failing to decode it is a build defect.
        DescriptorPool::decode(FDS).expect("images.fds from build.rs decodes")
    })
}

/// Descriptor of message `name` in package `cryo.images`.
pub fn message_descriptor(name: &str) -> Option<MessageDescriptor> {
    pool().get_message_by_name(&format!("cryo.images.{name}"))
}

/// Base64 as crit prints bytes (Python's `base64.encodebytes`): lines
/// of at most 76 characters, each ending in a newline.
pub fn crit_base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + bytes.len() / 57 + 4);
    for chunk in bytes.chunks(57) {
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(chunk));
        out.push('\n');
    }
    out
}

/// A decoded message as JSON: set fields in field-number order under
/// their proto names, integers as numbers, enums by name (unknown values
/// as numbers), bytes as [`crit_base64`].
pub fn message_json(m: &DynamicMessage) -> Value {
    let mut o = Map::new();
    let unix = prost_reflect::ReflectMessage::descriptor(m).full_name() == "cryo.images.unix_sk_entry";
    for (fd, v) in m.fields() {
        let j = match v {
            // crit shows unix socket names quoted-printable (CRIU's
            // `conv = "unix_name"` field option).
            ReflectValue::Bytes(b) if unix && fd.name() == "name" => json!(quoted_printable(b)),
            _ => value_json(&fd.kind(), v),
        };
        o.insert(fd.name().to_string(), j);
    }
    Value::Object(o)
}

/// Quoted-printable as Python's `quopri.encodestring` writes it: printable
/// ASCII but `=` as is, other bytes as `=XX`, a blank that ends a line
/// encoded; an encoded line longer than 76 characters is cut every 75
/// with a soft `=` break (anywhere, as Python does).
pub fn quoted_printable(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (li, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if li > 0 {
            out.push('\n');
        }
        let mut enc = String::new();
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            if (33..=126).contains(&b) && b != b'=' || (b == b' ' || b == b'\t') && !last {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("={b:02X}"));
            }
        }
        let mut rest = enc.as_str();
        while rest.len() > 76 {
            out.push_str(&rest[..75]);
            out.push_str("=\n");
            rest = &rest[75..];
        }
        out.push_str(rest);
    }
    out
}

fn value_json(kind: &FieldKind, v: &ReflectValue) -> Value {
    match v {
        ReflectValue::Bool(b) => json!(b),
        ReflectValue::I32(n) => json!(n),
        ReflectValue::I64(n) => json!(n),
        ReflectValue::U32(n) => json!(n),
        ReflectValue::U64(n) => json!(n),
        ReflectValue::F32(n) => json!(n),
        ReflectValue::F64(n) => json!(n),
        ReflectValue::String(s) => json!(s),
        ReflectValue::Bytes(b) => json!(crit_base64(b)),
        ReflectValue::EnumNumber(n) => match kind {
            FieldKind::Enum(e) => e.get_value(*n).map(|ev| json!(ev.name())).unwrap_or_else(|| json!(n)),
            _ => json!(n),
        },
        ReflectValue::Message(m) => message_json(m),
        ReflectValue::List(l) => Value::Array(l.iter().map(|x| value_json(kind, x)).collect()),
        // No map fields in the image schemas.
        ReflectValue::Map(_) => Value::Null,
    }
}

fn decode_entry(file: &str, offset: usize, message: &'static str, payload: &[u8]) -> Result<Value> {
    let desc = message_descriptor(message).expect("every Kind message is in the schema");
    let dm = DynamicMessage::decode(desc, payload).map_err(|source| Error::Decode {
        file: file.to_string(),
        offset,
        message,
        source,
    })?;
    Ok(message_json(&dm))
}

/// Decodes one image file's bytes (`file` names it in errors).
pub fn show_bytes(file: &str, data: &[u8]) -> Result<Value> {
    let mut r = ImageReader::detect(file, data)?;
    let kind = r.kind();
    let mut entries = Vec::new();
    while let Some((offset, payload)) = r.next_payload()? {
        let index = entries.len();
        let message = match (kind, index) {
            (Kind::Pagemap, 0) => "pagemap_head",
            (Kind::GhostFile, i) if i > 0 => "ghost_chunk_entry",
            _ => kind.message(),
        };
        let mut v = decode_entry(file, offset, message, payload)?;
        // Each payload below decodes cleanly: decode_entry just accepted it.
        let extra_len = match (kind, index) {
            (Kind::PipesData | Kind::FifoData, _) => {
                Some(PipeDataEntry::decode(payload).map(|e| e.bytes as usize).unwrap_or(0))
            }
            (Kind::SkQueues, _) => Some(SkPacketEntry::decode(payload).map(|e| e.length as usize).unwrap_or(0)),
            (Kind::TcpStream, _) => Some(
                super::pb::TcpStreamEntry::decode(payload)
                    .map(|e| e.inq_len as usize + e.outq_len as usize)
                    .unwrap_or(0),
            ),
            (Kind::GhostFile, 0) => {
                let chunks = GhostFileEntry::decode(payload)
                    .ok()
                    .and_then(|g| g.chunks)
                    .unwrap_or(false);
                // Without chunks the content runs to EOF.
                (!chunks).then(|| data.len() - r.offset())
            }
            (Kind::GhostFile, _) => Some(GhostChunkEntry::decode(payload).map(|c| c.len as usize).unwrap_or(0)),
            _ => None,
        };
        if let Some(n) = extra_len {
            let extra = r.read_raw(n)?;
            if let Value::Object(o) = &mut v {
                o.insert("extra".into(), Value::String(crit_base64(extra)));
            }
        }
        entries.push(v);
    }
    Ok(json!({"magic": kind.name(), "entries": entries}))
}

/// The crit name of a CRIU image that cryo does not decode, if `data`
/// starts like one.
fn foreign_kind(data: &[u8]) -> Option<&'static str> {
    let u = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match u(0)? {
        IMG_COMMON_MAGIC | IMG_SERVICE_MAGIC => foreign_name(u(4)?),
        m => foreign_name(m),
    }
}

/// Decodes an image file, or every file of an image directory.
///
/// For a directory the result is an object `{file name: decoded}`: raw
/// `pages-N.img` and files that are not images show as
/// `{"raw": true, "size": N}`, CRIU images cryo has no schema for as
/// `{"magic": NAME, "decoded": false, "size": N}`, and a damaged image as
/// `{"error": "..."}` (the others are still shown).
pub fn show_path(path: impl AsRef<Path>) -> Result<Value> {
    let path = path.as_ref();
    let meta = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_dir() {
        let data = fs::read(path).map_err(|e| Error::io("read", path, e))?;
        return show_bytes(&path.display().to_string(), &data);
    }
    let mut names_sorted = Vec::new();
    for ent in fs::read_dir(path).map_err(|e| Error::io("read directory", path, e))? {
        let ent = ent.map_err(|e| Error::io("read directory", path, e))?;
        if ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
            if let Some(n) = ent.file_name().to_str() {
                names_sorted.push(n.to_string());
            }
        }
    }
    names_sorted.sort();
    let mut out = Map::new();
    for name in names_sorted {
        let p = path.join(&name);
        let data = fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
        let raw = json!({"raw": true, "size": data.len()});
        let v = if names::pages_id(&name).is_some() || name == names::MANIFEST {
            raw
        } else {
            match show_bytes(&p.display().to_string(), &data) {
                Ok(v) => v,
                Err(Error::UnknownMagic { .. } | Error::NoHeader { .. }) => match foreign_kind(&data) {
                    Some(m) => json!({"magic": m, "decoded": false, "size": data.len()}),
                    None => raw,
                },
                Err(e) => json!({"error": e.to_string()}),
            }
        };
        out.insert(name, v);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod qp_tests {
    use super::quoted_printable;

    #[test]
    fn like_python_quopri() {
        // Reference values from Python 3's quopri.encodestring.
        assert_eq!(quoted_printable(b"/tmp/sock"), "/tmp/sock");
        assert_eq!(quoted_printable(b"\0cryo-x"), "=00cryo-x");
        assert_eq!(quoted_printable(b"a=b c "), "a=3Db c=20");
        assert_eq!(quoted_printable(&[0xff, b'z']), "=FFz");
        let long = vec![b'x'; 80];
        assert_eq!(
            quoted_printable(&long),
            format!("{}=\n{}", "x".repeat(75), "x".repeat(5))
        );
        assert_eq!(quoted_printable(&[b'x'; 76]), "x".repeat(76));
        let mut v = vec![b'x'; 75];
        v.push(b'=');
        assert_eq!(quoted_printable(&v), format!("{}=\n=3D", "x".repeat(75)));
        assert_eq!(
            quoted_printable(&[0u8; 30]),
            format!("{}=\n{}", "=00".repeat(25), "=00".repeat(5))
        );
    }
}
