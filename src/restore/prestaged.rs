//! Memory that is already in the engine's address space before the
//! restore starts: the page server copies the pages of each pre-copy
//! round, as they arrive, into windows that mirror the source's address
//! space (see `migrate::prestage`). A task forked from the engine inherits
//! the windows (copy-on-write, no byte copied) and moves the part that
//! covers one of its private anonymous mappings into its staging area
//! with mremap, instead of reading those pages from the image files while
//! the tree is stopped. The windows hold what the parent chain of the
//! final images resolves to (a later round's copy of a page overwrote the
//! earlier one); the final images' own pages go on top, and pages the
//! final images no longer have are zeroed.

use crate::sys::mmap;

/// One window: source addresses `[base, base + len)` of image pid `pid`
/// are at `addr` in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub pid: u32,
    pub base: u64,
    pub len: u64,
    pub addr: u64,
}

/// The windows, as the restore sees them (addresses only; the owner
/// unmaps them in the engine).
#[derive(Debug, Clone, Default)]
pub struct Prestaged {
    pub windows: Vec<Window>,
}

impl Prestaged {
    /// Where `[start, end)` of `pid` is, if one window holds all of it.
    pub fn find(&self, pid: u32, start: u64, end: u64) -> Option<u64> {
        self.windows
            .iter()
            .find(|w| w.pid == pid && w.base <= start && end <= w.base + w.len)
            .map(|w| w.addr + (start - w.base))
    }

    /// Unmaps every window from this process (the shim, once it forked
    /// the root: otherwise it would share the pages with the restored
    /// tree for its whole life, and every write there would copy one).
    pub fn release(&self) {
        for w in &self.windows {
            let _ = mmap::munmap(w.addr, w.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_needs_one_window_for_the_whole_range() {
        let p = Prestaged {
            windows: vec![Window {
                pid: 7,
                base: 0x1000_0000,
                len: 0x1000_0000,
                addr: 0x7000_0000_0000,
            }],
        };
        assert_eq!(p.find(7, 0x1000_2000, 0x1000_4000), Some(0x7000_0000_2000));
        assert_eq!(p.find(8, 0x1000_2000, 0x1000_4000), None);
        assert_eq!(p.find(7, 0x1fff_f000, 0x2000_1000), None);
    }
}
