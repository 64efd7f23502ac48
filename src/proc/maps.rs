//! `/proc/P/maps` and `/proc/P/smaps`.
//!
//! A maps line is
//! `start-end perms offset major:minor inode [path]`, numbers in hex except
//! the inode (decimal). The path column starts after padding and runs to the
//! end of the line, so it may contain spaces. smaps adds per-VMA
//! `Key: value` lines after each header line; only `VmFlags:` is kept.

use super::{dec, hex_u64, read_parsed, ParseError, Result};

/// `PROT_READ`
pub const PROT_READ: u32 = 0x1;
/// `PROT_WRITE`
pub const PROT_WRITE: u32 = 0x2;
/// `PROT_EXEC`
pub const PROT_EXEC: u32 = 0x4;

/// One virtual memory area.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vma {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `s` in the perms column (MAP_SHARED), else private.
    pub shared: bool,
    /// File offset in bytes (for anon VMAs the kernel prints the page
    /// offset of the mapping, usually 0).
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path column as printed: a file path (possibly with a
    /// ` (deleted)` suffix), `[heap]`, `[stack]`, `[vdso]`, `[vvar]`,
    /// `[vvar_vclock]`, `[vsyscall]`, `[anon:name]`, ... `None` for plain
    /// anonymous memory.
    pub path: Option<String>,
    /// Two-letter `VmFlags` mnemonics (`rd wr ex mr mw me gd dd ...`);
    /// empty unless parsed from smaps.
    pub vmflags: Vec<String>,
}

const DELETED: &str = " (deleted)";

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    fn path_is(&self, name: &str) -> bool {
        self.path.as_deref() == Some(name)
    }

    pub fn is_vdso(&self) -> bool {
        self.path_is("[vdso]")
    }

    /// `[vvar]` or `[vvar_vclock]` (the 6.13+ split of the vvar area).
    pub fn is_vvar(&self) -> bool {
        self.path_is("[vvar]") || self.path_is("[vvar_vclock]")
    }

    pub fn is_vsyscall(&self) -> bool {
        self.path_is("[vsyscall]")
    }

    pub fn is_heap(&self) -> bool {
        self.path_is("[heap]")
    }

    /// The main thread's stack (`[stack]`; thread stacks are plain anon).
    pub fn is_stack(&self) -> bool {
        self.path_is("[stack]")
    }

    /// The kernel appended ` (deleted)` to the path: the file was unlinked
    /// (also how memfd and SysV shm mappings appear).
    pub fn deleted(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|p| p.starts_with('/') && p.ends_with(DELETED))
    }

    /// The file path without a ` (deleted)` suffix, for file-backed VMAs
    /// (paths starting with `/`); `None` for anon and special areas.
    pub fn file_path(&self) -> Option<&str> {
        let p = self.path.as_deref()?;
        if !p.starts_with('/') {
            return None;
        }
        Some(p.strip_suffix(DELETED).unwrap_or(p))
    }

    /// The name given with `PR_SET_VMA_ANON_NAME`, from `[anon:name]`.
    pub fn anon_name(&self) -> Option<&str> {
        self.path.as_deref()?.strip_prefix("[anon:")?.strip_suffix(']')
    }

    /// Not backed by a file (inode 0): heap, stacks, named or plain anon,
    /// and the kernel's special areas.
    pub fn is_anon(&self) -> bool {
        self.inode == 0 && self.dev_major == 0 && self.dev_minor == 0
    }

    pub fn readable(&self) -> bool {
        self.prot & PROT_READ != 0
    }

    pub fn writable(&self) -> bool {
        self.prot & PROT_WRITE != 0
    }

    pub fn executable(&self) -> bool {
        self.prot & PROT_EXEC != 0
    }

    /// Whether smaps listed this `VmFlags` mnemonic (e.g. `"gd"`, `"dd"`).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vmflags.iter().any(|f| f == flag)
    }
}

/// Splits off the next whitespace-delimited token, returning it and the rest.
fn next_token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

fn parse_line(file: &str, lineno: usize, line: &str) -> std::result::Result<Vma, ParseError> {
    let missing = |what: &str| ParseError::new(file, lineno, format!("missing {what}"));
    let (range, rest) = next_token(line).ok_or_else(|| missing("range"))?;
    let (perms, rest) = next_token(rest).ok_or_else(|| missing("perms"))?;
    let (offset, rest) = next_token(rest).ok_or_else(|| missing("offset"))?;
    let (dev, rest) = next_token(rest).ok_or_else(|| missing("device"))?;
    let (inode, rest) = next_token(rest).ok_or_else(|| missing("inode"))?;

    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| ParseError::new(file, lineno, format!("bad range {range:?}")))?;
    let start = hex_u64(file, lineno, start)?;
    let end = hex_u64(file, lineno, end)?;
    if end < start {
        return Err(ParseError::new(file, lineno, format!("end before start in {range:?}")));
    }

    let p = perms.as_bytes();
    if p.len() != 4 {
        return Err(ParseError::new(file, lineno, format!("bad perms {perms:?}")));
    }
    let mut prot = 0;
    for (i, (set, bit)) in [(b'r', PROT_READ), (b'w', PROT_WRITE), (b'x', PROT_EXEC)]
        .into_iter()
        .enumerate()
    {
        match p[i] {
            c if c == set => prot |= bit,
            b'-' => {}
            _ => return Err(ParseError::new(file, lineno, format!("bad perms {perms:?}"))),
        }
    }
    let shared = match p[3] {
        b's' => true,
        b'p' => false,
        _ => return Err(ParseError::new(file, lineno, format!("bad perms {perms:?}"))),
    };

    let (maj, min) = dev
        .split_once(':')
        .ok_or_else(|| ParseError::new(file, lineno, format!("bad device {dev:?}")))?;
    let dev_major = hex_u64(file, lineno, maj)? as u32;
    let dev_minor = hex_u64(file, lineno, min)? as u32;

    // The path column: after the padding, to the end of the line. Only
    // leading blanks are padding; trailing ones belong to the name.
    let path = rest.trim_start_matches([' ', '\t']);
    let path = (!path.is_empty()).then(|| path.to_string());

    Ok(Vma {
        start,
        end,
        prot,
        shared,
        offset: hex_u64(file, lineno, offset)?,
        dev_major,
        dev_minor,
        inode: dec(file, lineno, inode)?,
        path,
        vmflags: Vec::new(),
    })
}

/// Parses `/proc/P/maps`.
pub fn parse_maps(text: &str) -> std::result::Result<Vec<Vma>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| parse_line("maps", i + 1, l))
        .collect()
}

/// Whether an smaps line is a `Key: value` line rather than a VMA header.
fn is_smaps_field(line: &str) -> bool {
    match next_token(line) {
        Some((tok, _)) => tok.ends_with(':'),
        None => false,
    }
}

/// Parses `/proc/P/smaps`: the VMAs with `vmflags` filled in.
pub fn parse_smaps(text: &str) -> std::result::Result<Vec<Vma>, ParseError> {
    let mut out: Vec<Vma> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        if !is_smaps_field(line) {
            out.push(parse_line("smaps", lineno, line)?);
            continue;
        }
        let Some(vma) = out.last_mut() else {
            return Err(ParseError::new("smaps", lineno, "field before any VMA header"));
        };
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            vma.vmflags = flags.split_whitespace().map(str::to_string).collect();
        }
    }
    Ok(out)
}

/// Reads `/proc/P/maps`.
pub fn read(pid: u32) -> Result<Vec<Vma>> {
    read_parsed(super::pid_dir(pid).join("maps"), parse_maps)
}

/// Reads `/proc/P/smaps` (slower than maps: the kernel walks page tables).
pub fn read_smaps(pid: u32) -> Result<Vec<Vma>> {
    read_parsed(super::pid_dir(pid).join("smaps"), parse_smaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55fbbf328000-55fbbf32a000 r--p 00000000 fe:00 247030                     /usr/bin/cat
55fbbf333000-55fbbf334000 rw-p 0000a000 fe:00 247030                     /usr/bin/cat
55fbc877b000-55fbc879c000 rw-p 00000000 00:00 0                          [heap]
7f0a8a050000-7f0a8a072000 rw-p 00000000 00:00 0 
7f0a8a0d5000-7f0a8a0fb000 r--p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0a8a2b8000-7f0a8a2bf000 r--s 00000000 fe:00 325745                     /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache
7f0a8a2c0000-7f0a8a2c1000 rw-s 00000000 00:01 3077                       /dev/zero (deleted)
7f0a8a2c1000-7f0a8a2c2000 rw-p 00001000 00:0b 12                         /tmp/my dir/data file.bin (deleted)
7f0a8a2c2000-7f0a8a2c6000 r--p 00000000 00:00 0                          [vvar]
7f0a8a2c6000-7f0a8a2c8000 r--p 00000000 00:00 0                          [vvar_vclock]
7f0a8a2c8000-7f0a8a2ca000 r-xp 00000000 00:00 0                          [vdso]
7f0a8a2ca000-7f0a8a2cb000 rw-p 00000000 00:00 0                          [anon:my arena]
7f0a8a2cb000-7f0a8a2cc000 ---p 00000000 00:00 0 
7f0a8a2cc000-7f0a8a2cd000 rw-s 00000000 00:01 2049                       /memfd:buf (deleted)
7ffc2b871000-7ffc2b892000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_lines() {
        let v = parse_maps(MAPS).unwrap();
        assert_eq!(v.len(), 16);

        let exe = &v[0];
        assert_eq!((exe.start, exe.end), (0x55fbbf328000, 0x55fbbf32a000));
        assert_eq!(exe.prot, PROT_READ);
        assert!(!exe.shared);
        assert_eq!((exe.dev_major, exe.dev_minor, exe.inode), (0xfe, 0, 247030));
        assert_eq!(exe.path.as_deref(), Some("/usr/bin/cat"));
        assert_eq!(exe.file_path(), Some("/usr/bin/cat"));
        assert!(!exe.deleted());

        assert_eq!(v[1].offset, 0xa000);
        assert_eq!(v[1].prot, PROT_READ | PROT_WRITE);
        assert!(v[2].is_heap());
        assert!(v[2].is_anon());
        assert_eq!(v[3].path, None, "trailing blank is not a path");
        assert!(v[5].shared);

        let shm = &v[6];
        assert!(shm.shared && shm.deleted());
        assert_eq!(shm.file_path(), Some("/dev/zero"));

        let spaced = &v[7];
        assert_eq!(spaced.path.as_deref(), Some("/tmp/my dir/data file.bin (deleted)"));
        assert_eq!(spaced.file_path(), Some("/tmp/my dir/data file.bin"));
        assert!(spaced.deleted());
        assert_eq!((spaced.dev_major, spaced.dev_minor), (0, 0xb));
        assert_eq!(spaced.offset, 0x1000);

        assert!(v[8].is_vvar() && v[9].is_vvar() && !v[10].is_vvar());
        assert!(v[10].is_vdso());
        assert_eq!(v[10].prot, PROT_READ | PROT_EXEC);
        assert_eq!(v[10].file_path(), None);
        assert_eq!(v[11].anon_name(), Some("my arena"));
        assert_eq!(v[12].prot, 0);
        assert!(v[13].deleted());
        assert_eq!(v[13].file_path(), Some("/memfd:buf"));
        assert!(v[14].is_stack());
        assert!(v[15].is_vsyscall());
        assert_eq!(v[15].end, 0xffffffffff601000);
        assert_eq!(v[15].prot, PROT_EXEC);
        assert!(v.iter().all(|m| m.vmflags.is_empty()));
    }

    #[test]
    fn maps_errors() {
        let e = parse_maps("0-1000 r--p 0 00:00 0\nzz-1000 r--p 0 00:00 0\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("maps", 2));
        assert!(parse_maps("1000-0 r--p 0 00:00 0").is_err());
        assert!(parse_maps("0-1000 rxwp 0 00:00 0").is_err());
        assert!(parse_maps("0-1000 r--q 0 00:00 0").is_err());
        assert!(parse_maps("0-1000 r--p 0 0000 0").is_err());
        assert!(parse_maps("0-1000 r--p 0 00:00").is_err());
    }

    const SMAPS: &str = "\
5598fd209000-5598fd20b000 r--p 00000000 fe:00 247030                     /usr/bin/cat
Size:                  8 kB
KernelPageSize:        4 kB
Rss:                   8 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd mr mw me 
7ffc2b871000-7ffc2b892000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Anonymous:            12 kB
VmFlags: rd wr mr mw me gd ac 
7f0a8a2c8000-7f0a8a2ca000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
VmFlags: rd ex mr mw me de sd 
";

    #[test]
    fn smaps_flags() {
        let v = parse_smaps(SMAPS).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].vmflags, ["rd", "mr", "mw", "me"]);
        assert!(v[1].is_stack() && v[1].has_flag("gd") && !v[0].has_flag("gd"));
        assert!(v[2].is_vdso() && v[2].has_flag("sd"));
        let e = parse_smaps("Size: 8 kB\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn live_self() {
        let me = std::process::id();
        let maps = read(me).unwrap();
        let smaps = read_smaps(me).unwrap();
        assert!(maps.iter().any(Vma::is_vdso));
        assert!(maps.iter().any(Vma::is_stack));
        // Same VMAs in both views (ranges may differ if we mapped in between,
        // so only check that smaps carries flags and vdso is there).
        assert!(smaps.iter().all(|v| !v.vmflags.is_empty()));
        assert!(smaps.iter().any(|v| v.is_vdso() && v.has_flag("ex")));
    }
}
