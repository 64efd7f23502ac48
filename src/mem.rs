//! Memory mappings: how a /proc VMA becomes a CRIU `vma_entry`, which of
//! its pages are dumped, and the shared constants of both directions.

use crate::image::pb;
use crate::proc::maps::Vma;

pub const PAGE_SIZE: u64 = 4096;

// vma_entry.status bits (image-format.md §3.11).
pub const VMA_AREA_REGULAR: u32 = 0x1;
pub const VMA_AREA_VSYSCALL: u32 = 0x4;
pub const VMA_AREA_VDSO: u32 = 0x8;
pub const VMA_AREA_HEAP: u32 = 0x20;
pub const VMA_FILE_PRIVATE: u32 = 0x40;
pub const VMA_FILE_SHARED: u32 = 0x80;
pub const VMA_ANON_SHARED: u32 = 0x100;
pub const VMA_ANON_PRIVATE: u32 = 0x200;
pub const VMA_AREA_SYSVIPC: u32 = 0x400;
pub const VMA_AREA_VVAR: u32 = 0x1000;

// pagemap_entry.flags.
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;

// madvise advice numbers recorded in vma_entry.madv (bit N = advice N).
const MADV_DONTFORK: u64 = 10;
const MADV_MERGEABLE: u64 = 12;
const MADV_HUGEPAGE: u64 = 14;
const MADV_NOHUGEPAGE: u64 = 15;
const MADV_DONTDUMP: u64 = 16;
const MADV_WIPEONFORK: u64 = 18;

/// What kind of mapping a VMA is, for dump and restore decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaKind {
    AnonPrivate,
    FilePrivate,
    FileShared,
    AnonShared,
    /// A System V shared memory attachment (see `ipc::sysv`).
    SysvShm,
    Vdso,
    Vvar,
    Vsyscall,
}

impl VmaKind {
    pub fn of(v: &Vma) -> VmaKind {
        if v.is_vsyscall() {
            VmaKind::Vsyscall
        } else if v.is_vdso() {
            VmaKind::Vdso
        } else if v.is_vvar() {
            VmaKind::Vvar
        } else if crate::ipc::sysv::is_sysv(v) {
            VmaKind::SysvShm
        } else if is_file_backed(v) {
            if v.shared {
                VmaKind::FileShared
            } else {
                VmaKind::FilePrivate
            }
        } else if v.shared {
            VmaKind::AnonShared
        } else {
            VmaKind::AnonPrivate
        }
    }

    /// Whether pages of this mapping go into pages-N.img.
    pub fn dumps_pages(self) -> bool {
        matches!(self, VmaKind::AnonPrivate | VmaKind::FilePrivate)
    }

    pub fn from_status(status: u32) -> Option<VmaKind> {
        Some(if status & VMA_AREA_VSYSCALL != 0 {
            VmaKind::Vsyscall
        } else if status & VMA_AREA_VDSO != 0 {
            VmaKind::Vdso
        } else if status & VMA_AREA_VVAR != 0 {
            VmaKind::Vvar
        } else if status & VMA_AREA_SYSVIPC != 0 {
            VmaKind::SysvShm
        } else if status & VMA_FILE_PRIVATE != 0 {
            VmaKind::FilePrivate
        } else if status & VMA_FILE_SHARED != 0 {
            VmaKind::FileShared
        } else if status & VMA_ANON_SHARED != 0 {
            VmaKind::AnonShared
        } else if status & VMA_ANON_PRIVATE != 0 {
            VmaKind::AnonPrivate
        } else {
            return None;
        })
    }
}

/// A mapping backed by a file with a path (not `[heap]`, `[stack]`,
/// `[anon:...]` or nameless anonymous memory).
pub fn is_file_backed(v: &Vma) -> bool {
    v.inode != 0 && v.path.as_deref().is_some_and(|p| p.starts_with('/'))
}

/// madvise bitmap from smaps VmFlags.
pub fn madv_from_vmflags(flags: &[String]) -> u64 {
    let mut m = 0u64;
    for f in flags {
        let bit = match f.as_str() {
            "rr" => 1, // MADV_RANDOM
            "sr" => 2, // MADV_SEQUENTIAL
            "dc" => MADV_DONTFORK,
            "mg" => MADV_MERGEABLE,
            "hg" => MADV_HUGEPAGE,
            "nh" => MADV_NOHUGEPAGE,
            "dd" => MADV_DONTDUMP,
            "wf" => MADV_WIPEONFORK,
            _ => continue,
        };
        m |= 1 << bit;
    }
    m
}

/// Advice numbers set in a madv bitmap, in ascending order.
pub fn madv_list(madv: u64) -> impl Iterator<Item = u64> {
    (0..64).filter(move |b| madv & (1 << b) != 0)
}

/// Builds the `vma_entry` of a VMA. `file_id` is the files.img id of the
/// mapped file for file VMAs.
pub fn vma_entry(v: &Vma, file_id: Option<u32>) -> pb::VmaEntry {
    let kind = VmaKind::of(v);
    let growsdown = v.vmflags.iter().any(|f| f == "gd") || v.is_stack();
    let mut flags = if v.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE } as u32;
    let mut status = VMA_AREA_REGULAR;
    match kind {
        VmaKind::AnonPrivate => {
            flags |= libc::MAP_ANONYMOUS as u32;
            status |= VMA_ANON_PRIVATE;
            if v.is_heap() {
                status |= VMA_AREA_HEAP;
            }
        }
        VmaKind::AnonShared => {
            flags |= libc::MAP_ANONYMOUS as u32;
            status |= VMA_ANON_SHARED;
        }
        VmaKind::FilePrivate => status |= VMA_FILE_PRIVATE,
        VmaKind::FileShared => status |= VMA_FILE_SHARED,
        VmaKind::SysvShm => status |= VMA_AREA_SYSVIPC,
        VmaKind::Vdso => {
            flags |= libc::MAP_ANONYMOUS as u32;
            status |= VMA_AREA_VDSO | VMA_ANON_PRIVATE;
        }
        VmaKind::Vvar => {
            flags |= libc::MAP_ANONYMOUS as u32;
            status |= VMA_AREA_VVAR | VMA_ANON_PRIVATE;
        }
        VmaKind::Vsyscall => {
            flags |= libc::MAP_ANONYMOUS as u32;
            status = VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE;
        }
    }
    if growsdown {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    if v.vmflags.iter().any(|f| f == "lo") {
        flags |= libc::MAP_LOCKED as u32;
    }
    let sysv = kind == VmaKind::SysvShm;
    let file = matches!(kind, VmaKind::FilePrivate | VmaKind::FileShared) || sysv;
    let madv = madv_from_vmflags(&v.vmflags);
    pb::VmaEntry {
        start: v.start,
        end: v.end,
        pgoff: if file { v.offset } else { 0 },
        // A SysV attachment: the segment id (its inode number in maps).
        shmid: if sysv {
            v.inode
        } else if file {
            u64::from(file_id.unwrap_or(0))
        } else {
            0
        },
        prot: v.prot,
        flags,
        status,
        fd: -1,
        madv: (madv != 0).then_some(madv),
        cryo_lock_onfault: v.vmflags.iter().any(|f| f == "lf").then_some(true),
        cryo_guards: Vec::new(),
        // SysV: attached writable (VM_MAYWRITE) or SHM_RDONLY.
        fdflags: file.then_some(open_mode(v)),
    }
}

/// The open mode a restore needs to map `v`'s file again: read-write for a
/// writable shared mapping (SysV: attached writable, VM_MAYWRITE), else
/// read-only.
pub fn open_mode(v: &Vma) -> u32 {
    let sysv = VmaKind::of(v) == VmaKind::SysvShm;
    if v.shared && (v.prot & libc::PROT_WRITE as u32 != 0 || (sysv && v.vmflags.iter().any(|f| f == "mw"))) {
        libc::O_RDWR as u32
    } else {
        libc::O_RDONLY as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(path: Option<&str>, inode: u64, shared: bool) -> Vma {
        Vma {
            start: 0x1000,
            end: 0x3000,
            prot: 3,
            shared,
            offset: 0x2000,
            inode,
            path: path.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn kinds_and_entries() {
        let heap = vma(Some("[heap]"), 0, false);
        assert_eq!(VmaKind::of(&heap), VmaKind::AnonPrivate);
        let e = vma_entry(&heap, None);
        assert_eq!(e.status, VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_HEAP);
        assert_eq!(e.flags, 0x22);
        assert_eq!(e.pgoff, 0);

        let lib = vma(Some("/usr/lib/libc.so.6"), 42, false);
        assert_eq!(VmaKind::of(&lib), VmaKind::FilePrivate);
        let e = vma_entry(&lib, Some(7));
        assert_eq!((e.status, e.flags, e.pgoff, e.shmid), (0x41, 0x2, 0x2000, 7));
        assert_eq!(e.fdflags, Some(0));

        let mut stack = vma(Some("[stack]"), 0, false);
        stack.vmflags = vec!["rd".into(), "wr".into(), "gd".into()];
        assert_eq!(vma_entry(&stack, None).flags, 0x122);

        assert_eq!(VmaKind::of(&vma(Some("[vdso]"), 0, false)), VmaKind::Vdso);
        assert_eq!(VmaKind::of(&vma(Some("[vvar_vclock]"), 0, false)), VmaKind::Vvar);
        assert_eq!(VmaKind::of(&vma(None, 0, true)), VmaKind::AnonShared);
        for k in [
            VmaKind::AnonPrivate,
            VmaKind::FilePrivate,
            VmaKind::FileShared,
            VmaKind::Vdso,
            VmaKind::Vvar,
        ] {
            let v = match k {
                VmaKind::AnonPrivate => vma(None, 0, false),
                VmaKind::FilePrivate => vma(Some("/x"), 1, false),
                VmaKind::FileShared => vma(Some("/x"), 1, true),
                VmaKind::Vdso => vma(Some("[vdso]"), 0, false),
                _ => vma(Some("[vvar]"), 0, false),
            };
            assert_eq!(VmaKind::from_status(vma_entry(&v, Some(1)).status), Some(k));
        }
    }

    #[test]
    fn madvise_bits() {
        let m = madv_from_vmflags(&["dd".into(), "nh".into(), "rd".into()]);
        assert_eq!(m, (1 << 16) | (1 << 15));
        assert_eq!(madv_list(m).collect::<Vec<_>>(), vec![15, 16]);
    }
}
