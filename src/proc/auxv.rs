//! `/proc/P/auxv`: the ELF auxiliary vector, binary.
//!
//! Native-endian machine words in (type, value) pairs, ending with an
//! `AT_NULL` pair. The image stores the words as they are (CRIU's
//! `mm.mm_saved_auxv`), so the parser returns the flat word list.

use super::{ParseError, Result};

/// `AT_NULL`: end of the vector.
pub const AT_NULL: u64 = 0;

/// Splits the raw bytes into 8-byte words.
pub fn parse(bytes: &[u8]) -> std::result::Result<Vec<u64>, ParseError> {
    if bytes.len() & 15 != 0 {
        return Err(ParseError::new(
            "auxv",
            0,
            format!("{} bytes is not a whole number of pairs", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunk of 8")))
        .collect())
}

/// The value of entry `kind` in a parsed vector (stops at `AT_NULL`).
pub fn lookup(words: &[u64], kind: u64) -> Option<u64> {
    words
        .chunks_exact(2)
        .take_while(|p| p[0] != AT_NULL)
        .find(|p| p[0] == kind)
        .map(|p| p[1])
}

/// Reads `/proc/P/auxv`.
pub fn read(pid: u32) -> Result<Vec<u64>> {
    let path = super::pid_dir(pid).join("auxv");
    let bytes = super::read_bytes(pid, "auxv")?;
    parse(&bytes).map_err(|source| super::Error::Parse { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let mut b = Vec::new();
        for w in [33u64, 0x7ffd_0000_1000, 6, 4096, 0, 0] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        let v = parse(&b).unwrap();
        assert_eq!(v, [33, 0x7ffd_0000_1000, 6, 4096, 0, 0]);
        assert_eq!(lookup(&v, 6), Some(4096));
        assert_eq!(lookup(&v, 7), None);
        assert!(parse(&b[..12]).is_err());
    }

    #[test]
    fn live_self() {
        let v = read(std::process::id()).unwrap();
        assert_eq!(lookup(&v, libc::AT_PAGESZ), Some(4096));
        assert_eq!(&v[v.len() - 2..], [0, 0]);
    }
}
