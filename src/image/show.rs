//! `cryo show`: any image (or a whole image directory) as JSON, in crit's
//! shape: `{"magic": "PSTREE", "entries": [...]}` with CRIU's field names.
//!
//! Decoding goes through the descriptor set compiled from `proto/` (so it
//! follows the schemas, not hand-written code): integers print as plain
//! numbers (crit without `--pretty`), enums by name, bytes as base64.
//! pipes-data entries carry their data as base64 in `extra`, like crit.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{json, Map, Value};

use super::dir::names;
use super::error::{Error, Result};
use super::framing::ImageReader;
use super::magic::{foreign_name, Kind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};
use super::pb::PipeDataEntry;

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

fn options() -> SerializeOptions {
    SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(true)
}

fn decode_entry(
    file: &str,
    index: usize,
    offset: usize,
    message: &'static str,
    payload: &[u8],
) -> Result<Value> {
    let desc = message_descriptor(message).expect("every Kind message is in the schema");
    let dm = DynamicMessage::decode(desc, payload).map_err(|source| Error::Decode {
        file: file.to_string(),
        offset,
        message,
        source,
    })?;
    dm.serialize_with_options(serde_json::value::Serializer, &options())
        .map_err(|source| Error::Json {
            file: file.to_string(),
            index,
            source,
        })
}

/// Decodes one image file's bytes (`file` names it in errors).
pub fn show_bytes(file: &str, data: &[u8]) -> Result<Value> {
    let mut r = ImageReader::detect(file, data)?;
    let kind = r.kind();
    let mut entries = Vec::new();
    while let Some((offset, payload)) = r.next_payload()? {
        let index = entries.len();
        let message = if kind == Kind::Pagemap && index == 0 {
            "pagemap_head"
        } else {
            kind.message()
        };
        let mut v = decode_entry(file, index, offset, message, payload)?;
        if kind == Kind::PipesData {
            // Decodes cleanly: decode_entry just accepted the payload.
            let n = PipeDataEntry::decode(payload).map(|e| e.bytes).unwrap_or(0);
            let extra = r.read_raw(n as usize)?;
            if let Value::Object(o) = &mut v {
                o.insert(
                    "extra".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(extra)),
                );
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
                Err(Error::UnknownMagic { .. } | Error::NoHeader { .. }) => {
                    match foreign_kind(&data) {
                        Some(m) => json!({"magic": m, "decoded": false, "size": data.len()}),
                        None => raw,
                    }
                }
                Err(e) => json!({"error": e.to_string()}),
            }
        };
        out.insert(name, v);
    }
    Ok(Value::Object(out))
}
