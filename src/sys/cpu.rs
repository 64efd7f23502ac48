//! CPU facts the engine needs: the XSAVE layout (CPUID leaf 0xD).
#![allow(unsafe_code)]

use std::arch::x86_64::{__cpuid_count, _xgetbv};

/// Where one XSAVE component lives in the standard (non-compacted) format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XComponent {
    pub offset: usize,
    pub size: usize,
}

/// The XSAVE layout of this CPU for the features the OS enabled (XCR0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XsaveLayout {
    /// XCR0: the user state components enabled by the kernel.
    pub xcr0: u64,
    /// Size of the standard-format buffer for all enabled components.
    pub size: usize,
    /// Indexed by component number (0..=31); size 0 = not present.
    pub comps: [XComponent; 32],
}

impl XsaveLayout {
    pub fn has(&self, comp: usize) -> bool {
        self.xcr0 & (1 << comp) != 0 && self.comps[comp].size != 0
    }
}

/// Reads the layout with CPUID leaf 0xD and XGETBV(0).
pub fn xsave_layout() -> XsaveLayout {
    let has_xsave = {
        let l1 = __cpuid_count(1, 0);
        l1.ecx & (1 << 27) != 0 // OSXSAVE
    };
    let mut out = XsaveLayout {
        size: 512,
        xcr0: 3,
        ..Default::default()
    };
    if !has_xsave {
        return out;
    }
    // SAFETY: OSXSAVE is set (checked above), so XGETBV is enabled and
    // XCR0 (index 0) is readable from user mode.
    out.xcr0 = unsafe { xgetbv0() };
    let l = __cpuid_count(0xd, 0);
    out.size = l.ebx as usize;
    for c in 2..32usize {
        if out.xcr0 & (1 << c) == 0 {
            continue;
        }
        let s = __cpuid_count(0xd, c as u32);
        out.comps[c] = XComponent {
            offset: s.ebx as usize,
            size: s.eax as usize,
        };
    }
    out
}

#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller checked OSXSAVE, which makes XGETBV legal.
    unsafe { _xgetbv(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_sse_and_a_sane_size() {
        let l = xsave_layout();
        assert!(l.xcr0 & 3 == 3, "x87 and SSE are always enabled");
        assert!(l.size >= 512 + 64, "xsave area at least legacy + header");
        if l.has(2) {
            assert_eq!(l.comps[2].offset, 576, "AVX state follows the header");
            assert_eq!(l.comps[2].size, 256);
        }
    }
}
