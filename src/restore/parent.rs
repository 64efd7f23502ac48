//! Pages through the parent chain of pre-copy images: a pagemap entry
//! with PE_PARENT says the pages are in `parent/` (a link to the previous
//! round's directory), whose pagemap says PE_PRESENT (in its pages file)
//! or PE_PARENT again. Resolved once at load time into plain pieces
//! (address, length, pages file relative to the image directory, offset).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::image::{self, names, pb, ImageReader, Kind, PagemapIndex, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};

/// One piece of memory to fill from a pages file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub vaddr: u64,
    pub len: u64,
    /// Relative to the image directory (e.g. `parent/parent/pages-1.img`);
    /// empty for pages only the source has (post-copy, PE_LAZY alone).
    pub file: String,
    pub off: u64,
    /// Served after the tasks run (--lazy-pages): not staged when the
    /// mapping is private anonymous memory.
    pub lazy: bool,
}

/// Longest parent chain followed.
const MAX_DEPTH: usize = 64;

/// The pagemap of `pid` in `dir/prefix`, with its pages file checked.
fn load(dir: &Path, prefix: &str, pid: u32) -> Result<Option<PagemapIndex>> {
    let name = format!("{prefix}{}", names::pagemap(pid));
    let data = match fs::read(dir.join(&name)) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("Cannot read {name}")),
    };
    let mut r = ImageReader::new(name.clone(), &data, Kind::Pagemap)?;
    let head: pb::PagemapHead = r.read_one()?;
    let entries: Vec<pb::PagemapEntry> = r.read_all()?;
    let pages = format!("{prefix}{}", names::pages(head.pages_id));
    let size = fs::metadata(dir.join(&pages)).map(|m| m.len()).unwrap_or(0);
    Ok(Some(PagemapIndex::new(&name, &head, &entries, size)?))
}

/// The pieces that fill the present and parent runs of `idx` (the
/// top-level pagemap of `pid` in `dir`).
pub fn fills(dir: &Path, pid: u32, idx: &PagemapIndex) -> Result<Vec<Fill>> {
    let mut cache: HashMap<usize, Option<PagemapIndex>> = HashMap::new();
    let mut out = Vec::new();
    for r in &idx.runs {
        if r.flags & PE_PRESENT != 0 {
            out.push(Fill {
                vaddr: r.vaddr,
                len: r.len(),
                file: names::pages(idx.pages_id),
                off: r.offset.unwrap_or(0),
                lazy: false,
            });
        } else if r.flags & PE_PARENT != 0 {
            resolve(dir, pid, 1, r.vaddr, r.end(), &mut cache, &mut out)?;
        } else if r.flags & PE_LAZY != 0 {
            // Post-copy: served by the source after the restore.
            out.push(Fill {
                vaddr: r.vaddr,
                len: r.len(),
                file: String::new(),
                off: 0,
                lazy: true,
            });
        }
    }
    Ok(out)
}

fn prefix(depth: usize) -> String {
    "parent/".repeat(depth)
}

fn resolve(
    dir: &Path,
    pid: u32,
    depth: usize,
    start: u64,
    end: u64,
    cache: &mut HashMap<usize, Option<PagemapIndex>>,
    out: &mut Vec<Fill>,
) -> Result<()> {
    let pre = prefix(depth);
    let missing = |a: u64| {
        anyhow::anyhow!(
            "{}: pages of pid {pid} at {a:#x} are marked as in the parent images, but {pre}{} does not have them",
            image::names::pagemap(pid),
            names::pagemap(pid)
        )
    };
    if depth > MAX_DEPTH {
        bail!("{}: parent chain deeper than {MAX_DEPTH}", names::pagemap(pid));
    }
    if let std::collections::hash_map::Entry::Vacant(v) = cache.entry(depth) {
        if !dir.join(pre.trim_end_matches('/')).exists() {
            return Err(missing(start));
        }
        v.insert(load(dir, &pre, pid)?);
    }
    let Some(idx) = cache[&depth].clone() else {
        return Err(missing(start));
    };
    let mut a = start;
    while a < end {
        let r = idx.find(a).ok_or_else(|| missing(a))?;
        let e = r.end().min(end);
        if r.flags & PE_PRESENT != 0 {
            out.push(Fill {
                vaddr: a,
                len: e - a,
                file: format!("{pre}{}", names::pages(idx.pages_id)),
                off: r.offset.unwrap_or(0) + (a - r.vaddr),
                lazy: false,
            });
        } else if r.flags & PE_PARENT != 0 {
            resolve(dir, pid, depth + 1, a, e, cache, out)?;
        } else {
            return Err(missing(a));
        }
        debug_assert!(e > a && (e - a).is_multiple_of(PAGE_SIZE));
        a = e;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pages::new_entry;
    use crate::image::ImageWriter;

    fn write_round(dir: &Path, entries: &[pb::PagemapEntry], pages: usize) {
        fs::create_dir_all(dir).unwrap();
        let mut w = ImageWriter::new(Kind::Pagemap);
        w.write_entry(&pb::PagemapHead { pages_id: 1 }).unwrap();
        for e in entries {
            w.write_entry(e).unwrap();
        }
        fs::write(dir.join("pagemap-5.img"), w.bytes()).unwrap();
        fs::write(dir.join("pages-1.img"), vec![0u8; pages * 4096]).unwrap();
    }

    #[test]
    fn chain_resolves_and_gaps_fail() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        // pre-1: pages 0x10000..0x14000 present.
        write_round(&d.join("pre-1"), &[new_entry(0x10000, 4, PE_PRESENT)], 4);
        // pre-2: page 0x11000 rewritten, the rest in parent.
        write_round(
            &d.join("pre-2"),
            &[
                new_entry(0x10000, 1, PE_PARENT),
                new_entry(0x11000, 1, PE_PRESENT),
                new_entry(0x12000, 2, PE_PARENT),
            ],
            1,
        );
        std::os::unix::fs::symlink("../pre-1", d.join("pre-2/parent")).unwrap();
        std::os::unix::fs::symlink("pre-2", d.join("parent")).unwrap();
        let top = PagemapIndex::new(
            "pagemap-5.img",
            &pb::PagemapHead { pages_id: 1 },
            &[new_entry(0x10000, 3, PE_PARENT), new_entry(0x13000, 1, PE_PRESENT)],
            4096,
        )
        .unwrap();
        let f = fills(d, 5, &top).unwrap();
        let got: Vec<_> = f.iter().map(|f| (f.vaddr, f.len, f.file.as_str(), f.off)).collect();
        assert_eq!(
            got,
            vec![
                (0x10000, 0x1000, "parent/parent/pages-1.img", 0),
                (0x11000, 0x1000, "parent/pages-1.img", 0),
                (0x12000, 0x1000, "parent/parent/pages-1.img", 0x2000),
                (0x13000, 0x1000, "pages-1.img", 0),
            ]
        );
        // A page the chain does not have.
        let bad = PagemapIndex::build(
            "pagemap-5.img",
            &pb::PagemapHead { pages_id: 1 },
            &[new_entry(0x20000, 1, PE_PARENT)],
        )
        .unwrap();
        let e = fills(d, 5, &bad).unwrap_err().to_string();
        assert!(e.contains("0x20000") && e.contains("parent/pagemap-5.img"), "{e}");
        // No parent link at all.
        let t2 = tempfile::tempdir().unwrap();
        assert!(fills(t2.path(), 5, &bad).is_err());
    }
}
