//! Pagemap entries and where their bytes sit in `pages-N.img`
//! (image-format.md §1.5).
//!
//! There is no stored offset: walking the entries in file order, each
//! PE_PRESENT entry takes the next `nr_pages * 4096` bytes of the pages
//! file. Entries without PE_PRESENT take no space.

use super::error::{Error, Result};
use super::pb::{PagemapEntry, PagemapHead};

/// Page size of every pagemap (x86_64).
pub const PAGE_SIZE: u64 = 4096;
/// The pages are in the parent image directory.
pub const PE_PARENT: u32 = 1;
/// The pages may be served lazily (anonymous private memory).
pub const PE_LAZY: u32 = 2;
/// The pages are in this directory's pages file.
pub const PE_PRESENT: u32 = 4;

/// A pagemap entry as both CRIU 4.2 and older readers want it: the count
/// in `nr_pages` (field 5) and, when it fits, in `compat_nr_pages`
/// (field 2, required; crit 3.17 shows it as `nr_pages`).
pub fn new_entry(vaddr: u64, nr_pages: u64, flags: u32) -> PagemapEntry {
    PagemapEntry {
        vaddr,
        compat_nr_pages: u32::try_from(nr_pages).unwrap_or(0),
        in_parent: None,
        flags: Some(flags),
        nr_pages: Some(nr_pages),
    }
}

/// Page count of an entry: field 5 if present, else field 2.
pub fn entry_nr_pages(e: &PagemapEntry) -> u64 {
    e.nr_pages.unwrap_or(e.compat_nr_pages as u64)
}

/// Effective flags of an entry: absent flags mean PE_PRESENT, or
/// PE_PARENT for the legacy `in_parent = true`.
pub fn entry_flags(e: &PagemapEntry) -> u32 {
    match e.flags {
        Some(f) => f,
        None if e.in_parent == Some(true) => PE_PARENT,
        None => PE_PRESENT,
    }
}

/// One validated pagemap entry with its place in the pages file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First byte covered.
    pub vaddr: u64,
    /// Number of pages covered.
    pub nr_pages: u64,
    /// Effective flags (see [`entry_flags`]).
    pub flags: u32,
    /// Offset of the first page in `pages-N.img`, for PE_PRESENT runs.
    pub offset: Option<u64>,
}

impl PageRun {
    /// One past the last byte covered.
    pub fn end(&self) -> u64 {
        self.vaddr + self.nr_pages * PAGE_SIZE
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.nr_pages * PAGE_SIZE
    }

    /// True for an empty run (never produced by [`PagemapIndex::build`]).
    pub fn is_empty(&self) -> bool {
        self.nr_pages == 0
    }
}

/// A validated pagemap: runs in ascending order with pages-file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagemapIndex {
    /// The N of `pages-N.img`.
    pub pages_id: u32,
    /// One run per pagemap entry, in file (= address) order.
    pub runs: Vec<PageRun>,
    /// Bytes the pages file must hold (present pages * 4096).
    pub pages_bytes: u64,
}

impl PagemapIndex {
    /// Validates `entries` (sorted, non-overlapping, page aligned, no
    /// empty entries) and computes the offsets. `file` names the pagemap
    /// in errors.
    pub fn build(file: &str, head: &PagemapHead, entries: &[PagemapEntry]) -> Result<Self> {
        let mut runs = Vec::with_capacity(entries.len());
        let mut off = 0u64;
        let mut prev_end = 0u64;
        for (index, e) in entries.iter().enumerate() {
            let bad = |what| Error::BadPagemap {
                file: file.to_string(),
                index,
                vaddr: e.vaddr,
                what,
            };
            let nr = entry_nr_pages(e);
            if e.vaddr % PAGE_SIZE != 0 {
                return Err(bad("address not page aligned"));
            }
            if nr == 0 {
                return Err(bad("covers no pages"));
            }
            let end = nr
                .checked_mul(PAGE_SIZE)
                .and_then(|l| e.vaddr.checked_add(l))
                .ok_or_else(|| bad("range overflows the address space"))?;
            if index > 0 && e.vaddr < prev_end {
                return Err(bad("not after the previous entry (unsorted or overlapping)"));
            }
            prev_end = end;
            let flags = entry_flags(e);
            let offset = if flags & PE_PRESENT != 0 {
                let o = off;
                off += nr * PAGE_SIZE;
                Some(o)
            } else {
                None
            };
            runs.push(PageRun {
                vaddr: e.vaddr,
                nr_pages: nr,
                flags,
                offset,
            });
        }
        Ok(PagemapIndex {
            pages_id: head.pages_id,
            runs,
            pages_bytes: off,
        })
    }

    /// [`build`](Self::build) plus the size check against the pages file.
    pub fn new(file: &str, head: &PagemapHead, entries: &[PagemapEntry], pages_file_size: u64) -> Result<Self> {
        let idx = Self::build(file, head, entries)?;
        idx.check_size(pages_file_size)?;
        Ok(idx)
    }

    /// Checks that `pages-N.img` holds exactly the bytes the pagemap needs.
    pub fn check_size(&self, pages_file_size: u64) -> Result<()> {
        let need = self.pages_bytes;
        if pages_file_size < need {
            return Err(Error::PagesShort {
                pages_id: self.pages_id,
                size: pages_file_size,
                need,
            });
        }
        if pages_file_size > need {
            return Err(Error::PagesLong {
                pages_id: self.pages_id,
                size: pages_file_size,
                need,
            });
        }
        Ok(())
    }

    /// The run containing `addr`, if any (binary search).
    pub fn find(&self, addr: u64) -> Option<&PageRun> {
        let i = self.runs.partition_point(|r| r.end() <= addr);
        self.runs.get(i).filter(|r| r.vaddr <= addr)
    }

    /// Offset in the pages file of the byte at `addr`, if it is present.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        let r = self.find(addr)?;
        r.offset.map(|o| o + (addr - r.vaddr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> PagemapHead {
        PagemapHead { pages_id: 3 }
    }

    #[test]
    fn offsets_follow_present_entries_only() {
        let es = vec![
            new_entry(0x1000, 1, PE_PRESENT),
            new_entry(0x10000, 13, PE_PRESENT),
            new_entry(0x20000, 2, PE_PARENT),
            new_entry(0x30000, 2, PE_LAZY | PE_PRESENT),
            // Legacy: no flags at all means present.
            PagemapEntry {
                vaddr: 0x40000,
                compat_nr_pages: 3,
                in_parent: None,
                flags: None,
                nr_pages: None,
            },
        ];
        let idx = PagemapIndex::new("pagemap-1.img", &head(), &es, 19 * 4096).unwrap();
        let offs: Vec<_> = idx.runs.iter().map(|r| r.offset).collect();
        assert_eq!(offs, [Some(0), Some(0x1000), None, Some(0xe000), Some(0x10000)]);
        assert_eq!(idx.pages_bytes, 19 * 4096);
        assert_eq!(idx.file_offset(0x10010), Some(0x1010));
        assert_eq!(idx.file_offset(0x20010), None);
        assert_eq!(idx.file_offset(0x42fff), Some(0x12fff));
        assert_eq!(idx.file_offset(0x43000), None);
        assert_eq!(idx.file_offset(0x0fff), None);
    }

    #[test]
    fn writer_sets_both_counts() {
        let e = new_entry(0x7000, 5, PE_PRESENT);
        assert_eq!((e.compat_nr_pages, e.nr_pages), (5, Some(5)));
        // Field 5 wins over field 2.
        let e = PagemapEntry {
            nr_pages: Some(7),
            compat_nr_pages: 0,
            ..e
        };
        assert_eq!(entry_nr_pages(&e), 7);
    }

    #[test]
    fn short_and_long_pages_files() {
        let es = vec![new_entry(0x1000, 2, PE_PRESENT)];
        let e = PagemapIndex::new("pm", &head(), &es, 4096).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pages-3.img is shorter than its pagemap (4096 bytes, pagemap needs 8192)"
        );
        let e = PagemapIndex::new("pm", &head(), &es, 3 * 4096).unwrap_err();
        assert!(matches!(e, Error::PagesLong { .. }), "{e}");
    }

    #[test]
    fn rejects_disorder_overlap_and_misalignment() {
        let h = head();
        let over = [new_entry(0x1000, 2, 4), new_entry(0x2000, 1, 4)];
        let e = PagemapIndex::build("pagemap-9.img", &h, &over).unwrap_err();
        assert!(
            e.to_string().starts_with("pagemap-9.img: pagemap entry 1 at 0x2000"),
            "{e}"
        );
        let unsorted = [new_entry(0x5000, 1, 4), new_entry(0x1000, 1, 4)];
        assert!(PagemapIndex::build("p", &h, &unsorted).is_err());
        let unaligned = [new_entry(0x1001, 1, 4)];
        assert!(PagemapIndex::build("p", &h, &unaligned).is_err());
        let empty = [new_entry(0x1000, 0, 4)];
        assert!(PagemapIndex::build("p", &h, &empty).is_err());
        let wrap = [new_entry(!0xfff, 2, 4)];
        assert!(PagemapIndex::build("p", &h, &wrap).is_err());
        let adjacent = [new_entry(0x1000, 1, 4), new_entry(0x2000, 1, 4)];
        assert!(PagemapIndex::build("p", &h, &adjacent).is_ok());
    }
}
