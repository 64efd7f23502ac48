//! The page server's copy of the pre-copy rounds in its own memory.
//!
//! Loading a few hundred MiB into the restored tree while it is stopped
//! is most of a pre-copy migration's downtime. So, while the rounds arrive
//! (the tree still runs on the source), the page server also writes each
//! round's pages into windows of its own address space that mirror the
//! source's: one window per process and [`WINDOW`]-aligned block of
//! source addresses, a private anonymous mapping without swap accounting
//! in which only the received pages take memory. The restore then moves
//! whole mappings out of the windows with mremap (see
//! `restore::prestaged`). The image files are written as before; they
//! stay the reference (the restore falls back to them for any mapping no
//! window covers whole).

use std::collections::HashMap;

use anyhow::{bail, Result};
use tracing::{info, warn};

use crate::image::{self, pb, ImageReader, Kind, PagemapIndex, PE_PRESENT};
use crate::restore::prestaged::{Prestaged, Window};
use crate::sys::mmap;

/// Source addresses per window (64 GiB, virtual only).
pub const WINDOW: u64 = 1 << 36;
/// Windows at most (virtual space: 8 TiB of the 128 TiB there is).
const MAX_WINDOWS: usize = 128;

/// Present runs of a pagemap, (vaddr, len), in pages-file order.
type Runs = Vec<(u64, u64)>;

/// The windows, and what each round's pages file maps to.
#[derive(Debug, Default)]
pub struct Shadow {
    windows: Vec<Window>,
    /// (round, pages id) → (pid, present runs in file order).
    runs: HashMap<(u32, u32), (u32, Runs)>,
    /// Set after a failure: no window is offered to the restore.
    off: bool,
    pub bytes: u64,
    /// Huge pages: off after the first failure.
    no_huge: bool,
    pub huge_blocks: u64,
}

/// Where the bytes of one pages file go.
pub struct Sink<'a> {
    shadow: &'a mut Shadow,
    pid: u32,
    runs: Vec<(u64, u64)>,
    /// Index of the current run and bytes of the file consumed so far.
    at: usize,
    used: u64,
}

impl Shadow {
    /// A round's pagemap of image pid `pid` arrived (whole file).
    pub fn pagemap(&mut self, round: u32, name: &str, pid: u32, data: &[u8]) {
        if self.off {
            return;
        }
        let parsed = (|| -> Result<(u32, Vec<(u64, u64)>)> {
            let mut r = ImageReader::new(name.to_string(), data, Kind::Pagemap)?;
            let head: pb::PagemapHead = r.read_one()?;
            let entries: Vec<pb::PagemapEntry> = r.read_all()?;
            let idx = PagemapIndex::build(name, &head, &entries)?;
            let runs = idx
                .runs
                .iter()
                .filter(|r| r.flags & PE_PRESENT != 0)
                .map(|r| (r.vaddr, r.len()))
                .collect();
            Ok((idx.pages_id, runs))
        })();
        match parsed {
            Ok((id, runs)) => {
                self.runs.insert((round, id), (pid, runs));
            }
            Err(e) => self.disable(&format!("{name}: {e:#}")),
        }
    }

    /// The pages file `pages-<id>.img` of `round` begins.
    pub fn pages(&mut self, round: u32, id: u32) -> Option<Sink<'_>> {
        if self.off {
            return None;
        }
        let (pid, runs) = self.runs.remove(&(round, id))?;
        Some(Sink {
            shadow: self,
            pid,
            runs,
            at: 0,
            used: 0,
        })
    }

    fn disable(&mut self, why: &str) {
        if !self.off {
            warn!("pre-copied pages are not kept in memory ({why}); the restore reads them from the images");
            self.off = true;
        }
    }

    /// The window holding `vaddr` of `pid`, made on first use.
    fn window(&mut self, pid: u32, vaddr: u64) -> Result<Window> {
        let base = vaddr & !(WINDOW - 1);
        if let Some(w) = self.windows.iter().find(|w| w.pid == pid && w.base == base) {
            return Ok(*w);
        }
        if self.windows.len() >= MAX_WINDOWS {
            bail!("more than {MAX_WINDOWS} windows");
        }
        let addr = mmap::reserve(WINDOW).map_err(|e| anyhow::anyhow!("Cannot reserve a window: {e}"))?;
        let w = Window {
            pid,
            base,
            len: WINDOW,
            addr,
        };
        self.windows.push(w);
        Ok(w)
    }

    /// What the restore may use (nothing after a failure).
    pub fn view(&self) -> Prestaged {
        if self.off {
            return Prestaged::default();
        }
        info!(
            "{} MiB of pre-copied pages held in memory for the restore",
            self.bytes >> 20
        );
        Prestaged {
            windows: self.windows.clone(),
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        for w in &self.windows {
            let _ = mmap::munmap(w.addr, w.len);
        }
    }
}

impl Drop for Sink<'_> {
    /// The file is complete: 2 MiB blocks it covers whole become huge
    /// pages. A fork then copies one entry per block instead of 512 (the
    /// restore forks twice, and the page tables of a few hundred MiB of
    /// small pages cost tens of ms each time), and unmapping is as cheap.
    fn drop(&mut self) {
        let s = &mut *self.shadow;
        if s.off || s.no_huge || self.at < self.runs.len() {
            return;
        }
        let started = std::time::Instant::now();
        for &(vaddr, len) in &self.runs {
            let mut b = vaddr.next_multiple_of(mmap::HPAGE_SIZE);
            while b + mmap::HPAGE_SIZE <= vaddr + len {
                let Some(w) = s
                    .windows
                    .iter()
                    .find(|w| w.pid == self.pid && w.base == b & !(WINDOW - 1))
                else {
                    return;
                };
                if let Err(e) = mmap::collapse(w.addr + (b - w.base)) {
                    tracing::debug!("no huge pages for the pre-copied memory: {e}");
                    s.no_huge = true;
                    return;
                }
                s.huge_blocks += 1;
                b += mmap::HPAGE_SIZE;
            }
        }
        tracing::debug!("{} huge blocks, {} us", s.huge_blocks, started.elapsed().as_micros());
    }
}

impl Sink<'_> {
    /// The next `data` bytes of the pages file.
    pub fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.shadow.off {
            let Some(&(vaddr, len)) = self.runs.get(self.at) else {
                // More bytes than the pagemap says: the file check fails
                // later; keep nothing of this round.
                self.shadow.disable("a pages file longer than its pagemap");
                return;
            };
            let n = ((len - self.used) as usize).min(data.len());
            let a = vaddr + self.used;
            // A run never crosses a window: split at the boundary.
            let n = n.min((WINDOW - (a & (WINDOW - 1))) as usize);
            match self.shadow.window(self.pid, a) {
                Ok(w) => {
                    mmap::write_into(w.addr + (a - w.base), &data[..n]);
                    self.shadow.bytes += n as u64;
                }
                Err(e) => {
                    self.shadow.disable(&format!("{e:#}"));
                    return;
                }
            }
            data = &data[n..];
            self.used += n as u64;
            if self.used == len {
                self.at += 1;
                self.used = 0;
            }
        }
    }
}

/// Round and pages id of a received file name `pre-N/pages-K.img`.
pub fn pages_file(name: &str) -> Option<(u32, u32)> {
    let (d, f) = name.split_once('/')?;
    let round = super::wire::pre_round(d)?;
    let id = f.strip_prefix("pages-")?.strip_suffix(".img")?.parse().ok()?;
    Some((round, id))
}

/// Round and image pid of `pre-N/pagemap-P.img`.
pub fn pagemap_file(name: &str) -> Option<(u32, u32)> {
    let (d, f) = name.split_once('/')?;
    let round = super::wire::pre_round(d)?;
    Some((round, image::names::pagemap_pid(f)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageWriter, PE_PARENT};

    fn pagemap(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut w = ImageWriter::new(Kind::Pagemap);
        w.write_entry(&pb::PagemapHead { pages_id: 3 }).unwrap();
        for &(a, n, fl) in entries {
            w.write_entry(&image::pages::new_entry(a, n, fl)).unwrap();
        }
        w.bytes().to_vec()
    }

    #[test]
    fn names() {
        assert_eq!(pages_file("pre-2/pages-3.img"), Some((2, 3)));
        assert_eq!(pages_file("pages-3.img"), None);
        assert_eq!(pages_file("pre-2/pagemap-3.img"), None);
        assert_eq!(pagemap_file("pre-1/pagemap-42.img"), Some((1, 42)));
        assert_eq!(pagemap_file("pagemap-42.img"), None);
    }

    #[test]
    fn rounds_land_at_their_addresses_and_later_rounds_win() {
        let mut s = Shadow::default();
        let base = 0x7f00_0000_0000u64;
        // Round 1: two present runs (1 and 2 pages) and a parent run.
        s.pagemap(
            1,
            "pre-1/pagemap-9.img",
            9,
            &pagemap(&[
                (base, 1, PE_PRESENT),
                (base + 0x3000, 1, PE_PARENT),
                (base + 0x8000, 2, PE_PRESENT),
            ]),
        );
        let mut data = vec![1u8; 4096];
        data.extend(vec![2u8; 8192]);
        {
            let mut k = s.pages(1, 3).expect("known pages file");
            // In odd pieces, as Data frames may cut them.
            k.write(&data[..100]);
            k.write(&data[100..5000]);
            k.write(&data[5000..]);
        }
        // Round 2 rewrites the second page of the second run.
        s.pagemap(2, "pre-2/pagemap-9.img", 9, &pagemap(&[(base + 0x9000, 1, PE_PRESENT)]));
        s.pages(2, 3).unwrap().write(&[3u8; 4096]);
        let v = s.view();
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let at = |a: u64| {
            use std::os::unix::fs::FileExt;
            let mut b = [0u8; 1];
            mem.read_exact_at(&mut b, v.find(9, a, a + 1).unwrap()).unwrap();
            b[0]
        };
        assert_eq!(at(base), 1);
        assert_eq!(at(base + 0xfff), 1);
        assert_eq!(at(base + 0x1000), 0);
        assert_eq!(at(base + 0x8000), 2);
        assert_eq!(at(base + 0x9000), 3);
        assert_eq!(s.bytes, 4 * 4096);
        // An unknown pages file has no sink; more data than announced
        // turns the whole copy off.
        assert!(s.pages(5, 3).is_none());
        s.pagemap(3, "pre-3/pagemap-9.img", 9, &pagemap(&[(base, 1, PE_PRESENT)]));
        s.pages(3, 3).unwrap().write(&[4u8; 8192]);
        assert!(s.view().windows.is_empty());
    }
}
