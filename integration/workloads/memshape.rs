//! memshape: the shape of the address space survives, not just its bytes.
//!
//! `memshape --log F [--check LIST] [--gib N] [--dir D] [--corrupt]`
//!
//! Checks (all but `deleted-exe` by default):
//! - `holes`: 24 pages filled with data, then pages 3-5 made PROT_NONE
//!   (their data must survive: they are read back after mprotect), page 8
//!   read-only, pages 10-11 r-x, page 14 unmapped; plus a 16-page PROT_NONE
//!   reservation whose top 4 pages are read-write with data (a thread stack
//!   with its guard). The maps lines inside both ranges (start, end,
//!   permissions), the contents, and the non-residency of the untouched
//!   reserved pages must be the same.
//! - `guard`: MADV_GUARD_INSTALL on pages 2-3 of 8: pagemap bit 58 set
//!   there and only there, those pages unreadable through process_vm_readv,
//!   the others readable with their data, still one VMA.
//! - `growsdown`: a 16-page MAP_GROWSDOWN mapping with 64 MiB of free space
//!   below: VmFlags has `gd`, the start has not moved, the data is there,
//!   and a forked child can still grow it by touching the page below.
//! - `madvise`: one 4-page region each with MADV_DONTDUMP (dd), DONTFORK
//!   (dc), WIPEONFORK (wf), RANDOM (rr), SEQUENTIAL (sr), HUGEPAGE (hg),
//!   NOHUGEPAGE (nh) and, if the kernel has KSM, MERGEABLE (mg): each flag in
//!   VmFlags, the data intact, and in a forked child the WIPEONFORK region
//!   reads zeros and the DONTFORK one is not mapped.
//! - `thp`: a 2 MiB-aligned 4 MiB MADV_HUGEPAGE region, filled: VmFlags
//!   `hg`, AnonHugePages >= 2048 kB, data intact (needs THP "always" or
//!   "madvise").
//! - `mlock`: pages 2-5 of 8 mlock'ed, and 4 pages mlock2(MLOCK_ONFAULT) of
//!   which 1 is touched: VmFlags `lo` (and `lf`), VmLck the same, the locked
//!   pages resident, the data intact.
//! - `sparse`: N GiB (default 4) MAP_NORESERVE with one page touched every
//!   256 MiB: those pages hold their data, exactly that many pages of the
//!   mapping are resident (mincore), untouched pages read as zero.
//! - `deleted-exe` (needs `--dir`): the workload copies its own binary to
//!   D, re-executes the copy and deletes it: /proc/self/exe ends in
//!   " (deleted)", the maps lines of the deleted file and the checksum of
//!   its mapped code must be the same.
//! - `deleted-data` (needs `--dir`): a 4-page file in D mapped twice, private
//!   (page 1 written: copied on write) and shared (page 2 written), then
//!   unlinked: both maps lines still end in " (deleted)", each page holds
//!   its data, and a write through the shared mapping to page 3 shows in
//!   the private one (whose page 3 was never copied): both still map one
//!   file.
//!
//! `--corrupt` changes each checked shape after the trigger (page 8 made
//! writable, a guard removed, the stack grown, DONTFORK undone, NOHUGEPAGE,
//! a page unlocked, one more sparse page touched, an exe mapping made
//! writable, a page of the deleted data file rewritten).

use cryo_integration::probe::{self, Only, Problems, PAGE};
use cryo_integration::wl::{self, Args, Log};
use std::ffi::CString;

const ALL: &[&str] = &[
    "holes",
    "guard",
    "growsdown",
    "madvise",
    "thp",
    "mlock",
    "sparse",
    "deleted-exe",
    "deleted-data",
];
const DEFAULT: &[&str] = &["holes", "guard", "growsdown", "madvise", "thp", "mlock", "sparse"];

const MADV_GUARD_INSTALL: i32 = 102;
const MADV_GUARD_REMOVE: i32 = 103;
const PM_GUARD: u64 = 1 << 58;
const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

/// The maps lines inside [start, end), clipped to it, relative to start.
fn shape(start: usize, end: usize) -> Vec<(usize, usize, String)> {
    probe::maps_in(start, end)
        .into_iter()
        .map(|m| (m.start.max(start) - start, m.end.min(end) - start, m.perms))
        .collect()
}

fn page_sums(addr: usize, pages: &[usize]) -> Vec<u64> {
    pages.iter().map(|&i| probe::sum_at(addr + i * PAGE, PAGE)).collect()
}

fn flags_at(addr: usize) -> Vec<String> {
    probe::smaps_at(addr).map(|v| v.flags).unwrap_or_default()
}

/// Runs `f` in a forked child and returns its wait status.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    let pid = probe::fork();
    if pid == 0 {
        let code = f();
        probe::exit_now(code);
    }
    probe::wait_child(pid, 10_000).unwrap_or(-1)
}

struct Holes {
    a: usize,
    r: usize,
    shape_a: Vec<(usize, usize, String)>,
    shape_r: Vec<(usize, usize, String)>,
    sums: Vec<u64>,
    rsums: Vec<u64>,
}

const HOLE_READABLE: [usize; 18] = [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21];
const HOLE_NONE: [usize; 3] = [3, 4, 5];

fn setup_holes() -> Holes {
    let a = probe::mmap_anon(0, 24 * PAGE, RW, 0);
    probe::fill_at(a, 24 * PAGE, 0x401e);
    let mut all: Vec<usize> = HOLE_READABLE.to_vec();
    all.extend_from_slice(&HOLE_NONE);
    all.push(22);
    all.push(23);
    let sums = page_sums(a, &all);
    probe::mprotect(a + 3 * PAGE, 3 * PAGE, libc::PROT_NONE);
    probe::mprotect(a + 8 * PAGE, PAGE, libc::PROT_READ);
    probe::mprotect(a + 10 * PAGE, 2 * PAGE, libc::PROT_READ | libc::PROT_EXEC);
    // SAFETY: unmaps one page of our own mapping, referenced by nothing.
    unsafe { libc::munmap((a + 14 * PAGE) as *mut libc::c_void, PAGE) };
    let r = probe::mmap_anon(0, 16 * PAGE, libc::PROT_NONE, libc::MAP_NORESERVE);
    probe::mprotect(r + 12 * PAGE, 4 * PAGE, RW);
    probe::fill_at(r + 12 * PAGE, 4 * PAGE, 0x401f);
    let rsums = page_sums(r, &[12, 13, 14, 15]);
    Holes {
        a,
        r,
        shape_a: shape(a, a + 24 * PAGE),
        shape_r: shape(r, r + 16 * PAGE),
        sums,
        rsums,
    }
}

fn check_holes(h: &Holes, p: &mut Problems) {
    let c = "holes";
    p.eq(
        c,
        "maps of the 24-page region",
        shape(h.a, h.a + 24 * PAGE),
        h.shape_a.clone(),
    );
    p.eq(
        c,
        "maps of the reservation",
        shape(h.r, h.r + 16 * PAGE),
        h.shape_r.clone(),
    );
    if p.v.iter().any(|x| x.starts_with("holes:")) {
        return; // do not touch memory whose shape is wrong
    }
    let mut all: Vec<usize> = HOLE_READABLE.to_vec();
    all.extend_from_slice(&HOLE_NONE);
    all.push(22);
    all.push(23);
    probe::mprotect(h.a + 3 * PAGE, 3 * PAGE, libc::PROT_READ);
    let now = page_sums(h.a, &all);
    probe::mprotect(h.a + 3 * PAGE, 3 * PAGE, libc::PROT_NONE);
    for (k, (x, y)) in now.iter().zip(h.sums.iter()).enumerate() {
        if x != y {
            p.add(c, format!("page {} of the region lost its data", all[k]));
        }
    }
    p.eq(
        c,
        "reservation data",
        page_sums(h.r, &[12, 13, 14, 15]),
        h.rsums.clone(),
    );
    p.eq(
        c,
        "resident untouched reserved pages",
        probe::resident_pages(h.r, 12 * PAGE),
        0,
    );
}

struct Guard {
    a: usize,
    sums: Vec<u64>,
}

fn setup_guard() -> Guard {
    let a = probe::mmap_anon(0, 8 * PAGE, RW, 0);
    probe::fill_at(a, 8 * PAGE, 0x6a4d);
    if let Err(e) = probe::madvise(a + 2 * PAGE, 2 * PAGE, MADV_GUARD_INSTALL) {
        wl::die(&format!("MADV_GUARD_INSTALL: errno {e} (kernel older than 6.13?)"));
    }
    let sums = page_sums(a, &[0, 1, 4, 5, 6, 7]);
    let g = Guard { a, sums };
    let mut p = Problems::new();
    check_guard(&g, &mut p);
    if !p.is_empty() {
        wl::die(&format!(
            "guard pages do not look as expected before the checkpoint: {:?}",
            p.v
        ));
    }
    g
}

fn check_guard(g: &Guard, p: &mut Problems) {
    let c = "guard";
    p.eq(c, "VMAs over the 8 pages", probe::maps_in(g.a, g.a + 8 * PAGE).len(), 1);
    for i in 0..8 {
        let addr = g.a + i * PAGE;
        let want = i == 2 || i == 3;
        let bit = probe::pagemap_entry(addr) & PM_GUARD != 0;
        if bit != want {
            p.add(c, format!("page {i}: pagemap guard bit {bit}, expected {want}"));
        }
        let readable = probe::self_vm_readable(addr, PAGE);
        if readable == want {
            p.add(
                c,
                format!(
                    "page {i}: readable through process_vm_readv is {readable}, expected {}",
                    !want
                ),
            );
        }
    }
    if p.v.iter().any(|x| x.starts_with("guard:")) {
        return;
    }
    p.eq(
        c,
        "data of the other pages",
        page_sums(g.a, &[0, 1, 4, 5, 6, 7]),
        g.sums.clone(),
    );
}

struct Grows {
    start: usize,
    sum: u64,
}

fn setup_growsdown() -> Grows {
    let res = probe::mmap_anon(0, 64 << 20, libc::PROT_NONE, libc::MAP_NORESERVE);
    // SAFETY: unmaps our own reservation, referenced by nothing.
    unsafe { libc::munmap(res as *mut libc::c_void, 64 << 20) };
    let want = res + (64 << 20) - 16 * PAGE;
    let a = probe::mmap_anon(want, 16 * PAGE, RW, libc::MAP_GROWSDOWN | libc::MAP_FIXED_NOREPLACE);
    if a != want {
        wl::die("MAP_FIXED_NOREPLACE placed the growsdown mapping elsewhere");
    }
    probe::fill_at(a, 16 * PAGE, 0x6d0e);
    let g = Grows {
        start: a,
        sum: probe::sum_at(a, 16 * PAGE),
    };
    let mut p = Problems::new();
    check_growsdown(&g, &mut p);
    if !p.is_empty() {
        wl::die(&format!(
            "the growsdown mapping does not behave before the checkpoint: {:?}",
            p.v
        ));
    }
    g
}

fn check_growsdown(g: &Grows, p: &mut Problems) {
    let c = "growsdown";
    match probe::smaps_at(g.start) {
        None => {
            p.add(c, format!("nothing is mapped at {:#x}", g.start));
            return;
        }
        Some(v) => {
            p.ensure(c, v.has("gd"), || format!("VmFlags {:?} lack gd", v.flags));
            p.eq(c, "start", format!("{:#x}", v.map.start), format!("{:#x}", g.start));
        }
    }
    p.eq(c, "checksum", probe::sum_at(g.start, 16 * PAGE), g.sum);
    let below = g.start - PAGE;
    let st = in_child(move || {
        // SAFETY: the page below a growsdown mapping: the kernel extends
        // the mapping on this access (or the child dies with SIGSEGV).
        unsafe { std::ptr::write_volatile(below as *mut u64, 42) };
        let ok = probe::smaps_at(below).is_some_and(|v| v.has("gd"));
        if ok {
            0
        } else {
            3
        }
    });
    if !probe::exited_ok(st) {
        p.add(
            c,
            format!(
                "touching the page below does not grow it: child {}",
                probe::describe_status(st)
            ),
        );
    }
}

struct Madv {
    regions: Vec<(&'static str, usize, u64)>,
}

const MADV_LIST: &[(&str, i32)] = &[
    ("dd", libc::MADV_DONTDUMP),
    ("dc", libc::MADV_DONTFORK),
    ("wf", libc::MADV_WIPEONFORK),
    ("rr", libc::MADV_RANDOM),
    ("sr", libc::MADV_SEQUENTIAL),
    ("hg", libc::MADV_HUGEPAGE),
    ("nh", libc::MADV_NOHUGEPAGE),
    ("mg", libc::MADV_MERGEABLE),
];

fn setup_madvise() -> Madv {
    let mut regions = Vec::new();
    for (k, &(flag, adv)) in MADV_LIST.iter().enumerate() {
        let a = probe::mmap_anon(0, 4 * PAGE, RW, 0);
        probe::fill_at(a, 4 * PAGE, 0x3ad0 + k as u64);
        match probe::madvise(a, 4 * PAGE, adv) {
            Ok(()) => {}
            Err(_) if flag == "mg" => continue,
            Err(e) => wl::die(&format!("madvise {flag}: errno {e}")),
        }
        regions.push((flag, a, probe::sum_at(a, 4 * PAGE)));
    }
    Madv { regions }
}

fn check_madvise(m: &Madv, p: &mut Problems) {
    let c = "madvise";
    for &(flag, a, sum) in &m.regions {
        let f = flags_at(a);
        if !f.iter().any(|x| x == flag) {
            p.add(c, format!("region {flag} at {a:#x}: VmFlags {f:?} lack {flag}"));
        }
        p.eq(c, &format!("region {flag} checksum"), probe::sum_at(a, 4 * PAGE), sum);
    }
    let wf = m.regions.iter().find(|r| r.0 == "wf").map_or(0, |r| r.1);
    let dc = m.regions.iter().find(|r| r.0 == "dc").map_or(0, |r| r.1);
    let st = in_child(move || {
        let mut code = 0;
        if probe::sum_at(wf, 4 * PAGE) != wl::checksum(&vec![0u64; 4 * PAGE / 8]) {
            code |= 1;
        }
        let mut v = [0u8; 4];
        // SAFETY: mincore only inspects the range; `v` has one byte per page.
        let r = unsafe { libc::mincore(dc as *mut libc::c_void, 4 * PAGE, v.as_mut_ptr()) };
        if !(r != 0 && wl::errno() == libc::ENOMEM) {
            code |= 2;
        }
        code
    });
    if libc::WIFEXITED(st) {
        let code = libc::WEXITSTATUS(st);
        p.ensure(c, code & 1 == 0, || {
            "the WIPEONFORK region is not zero in a child".into()
        });
        p.ensure(c, code & 2 == 0, || "the DONTFORK region is mapped in a child".into());
    } else {
        p.add(c, format!("fork check child: {}", probe::describe_status(st)));
    }
}

struct Thp {
    a: usize,
    sum: u64,
}

fn setup_thp() -> Thp {
    let en = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if en.contains("[never]") || en.is_empty() {
        wl::die(&format!("THP is not available (enabled: {})", en.trim()));
    }
    let big = probe::mmap_anon(0, 8 << 20, RW, 0);
    let a = (big + (2 << 20) - 1) & !((2 << 20) - 1);
    if probe::madvise(a, 4 << 20, libc::MADV_HUGEPAGE).is_err() {
        wl::die("MADV_HUGEPAGE");
    }
    probe::fill_at(a, 4 << 20, 0x7a9e);
    let t = Thp {
        a,
        sum: probe::sum_at(a, 4 << 20),
    };
    let huge = probe::smaps_at(a).map_or(0, |v| v.field("AnonHugePages"));
    if huge < 2048 {
        wl::die(&format!(
            "no huge page was allocated for the region (AnonHugePages {huge} kB)"
        ));
    }
    t
}

fn check_thp(t: &Thp, p: &mut Problems) {
    let c = "thp";
    match probe::smaps_at(t.a) {
        None => p.add(c, "the region is gone"),
        Some(v) => {
            p.ensure(c, v.has("hg"), || format!("VmFlags {:?} lack hg", v.flags));
            let huge = v.field("AnonHugePages");
            p.ensure(c, huge >= 2048, || {
                format!("AnonHugePages is {huge} kB, expected >= 2048")
            });
        }
    }
    p.eq(c, "checksum", probe::sum_at(t.a, 4 << 20), t.sum);
}

struct Lock {
    a: usize,
    b: usize,
    vmlck: Option<String>,
    sum: u64,
}

fn setup_mlock() -> Lock {
    let a = probe::mmap_anon(0, 8 * PAGE, RW, 0);
    probe::fill_at(a, 8 * PAGE, 0x10c4);
    // SAFETY: locks pages of our own mapping.
    if unsafe { libc::mlock((a + 2 * PAGE) as *const libc::c_void, 4 * PAGE) } != 0 {
        wl::die("mlock");
    }
    let b = probe::mmap_anon(0, 4 * PAGE, RW, 0);
    // SAFETY: as above.
    if unsafe { libc::mlock2(b as *const libc::c_void, 4 * PAGE, libc::MLOCK_ONFAULT) } != 0 {
        wl::die("mlock2(MLOCK_ONFAULT)");
    }
    // SAFETY: the first page of our own writable mapping.
    unsafe { std::ptr::write_volatile(b as *mut u64, 0x10c4) };
    Lock {
        a,
        b,
        vmlck: probe::self_status("VmLck"),
        sum: probe::sum_at(a, 8 * PAGE),
    }
}

fn check_mlock(l: &Lock, p: &mut Problems) {
    let c = "mlock";
    p.eq(c, "VmLck", probe::self_status("VmLck"), l.vmlck.clone());
    let f = flags_at(l.a + 2 * PAGE);
    p.ensure(c, f.iter().any(|x| x == "lo"), || {
        format!("locked pages: VmFlags {f:?} lack lo")
    });
    let f0 = flags_at(l.a);
    p.ensure(c, !f0.iter().any(|x| x == "lo"), || {
        format!("page 0: VmFlags {f0:?} has lo")
    });
    let fb = flags_at(l.b);
    p.ensure(c, fb.iter().any(|x| x == "lo") && fb.iter().any(|x| x == "lf"), || {
        format!("MLOCK_ONFAULT region: VmFlags {fb:?} lack lo/lf")
    });
    p.eq(
        c,
        "resident locked pages",
        probe::resident_pages(l.a + 2 * PAGE, 4 * PAGE),
        4,
    );
    p.eq(c, "checksum", probe::sum_at(l.a, 8 * PAGE), l.sum);
}

struct Sparse {
    a: usize,
    len: usize,
    touched: Vec<usize>,
    sums: Vec<u64>,
    shape: Vec<(usize, usize, String)>,
}

fn setup_sparse(gib: usize) -> Sparse {
    let len = gib << 30;
    let a = probe::mmap_anon(0, len, RW, libc::MAP_NORESERVE);
    let touched: Vec<usize> = (0..len).step_by(256 << 20).map(|o| o + 3 * PAGE).collect();
    for (k, &o) in touched.iter().enumerate() {
        probe::fill_at(a + o, PAGE, 0x5a00 + k as u64);
    }
    let sums = touched.iter().map(|&o| probe::sum_at(a + o, PAGE)).collect();
    let s = Sparse {
        a,
        len,
        touched,
        sums,
        shape: shape(a, a + len),
    };
    let res = probe::resident_pages(a, len);
    if res != s.touched.len() {
        wl::die(&format!(
            "{res} pages resident before the checkpoint, {} touched",
            s.touched.len()
        ));
    }
    s
}

fn check_sparse(s: &Sparse, p: &mut Problems) -> String {
    let c = "sparse";
    p.eq(c, "maps", shape(s.a, s.a + s.len), s.shape.clone());
    let res = probe::resident_pages(s.a, s.len);
    if res != s.touched.len() {
        p.add(
            c,
            format!(
                "{res} pages of the {} GiB mapping are resident, {} were touched",
                s.len >> 30,
                s.touched.len()
            ),
        );
    }
    for (k, &o) in s.touched.iter().enumerate() {
        if probe::sum_at(s.a + o, PAGE) != s.sums[k] {
            p.add(c, format!("touched page at offset {o:#x} lost its data"));
        }
    }
    let zero = wl::checksum(&vec![0u64; PAGE / 8]);
    for o in [PAGE, (1 << 30) + 7 * PAGE, s.len - PAGE] {
        if probe::sum_at(s.a + o, PAGE) != zero {
            p.add(c, format!("untouched page at offset {o:#x} is not zero"));
        }
    }
    format!("sparse_gib={} touched={} resident={res}", s.len >> 30, s.touched.len())
}

struct DelExe {
    link: String,
    lines: Vec<(usize, usize, String, u64, String)>,
    text: (usize, usize),
    sum: u64,
}

fn exe_lines(path_prefix: &str) -> Vec<(usize, usize, String, u64, String)> {
    probe::parse_maps(&probe::read_proc("/proc/self/maps"))
        .into_iter()
        .filter(|m| m.path.starts_with(path_prefix))
        .map(|m| (m.start, m.end, m.perms, m.offset, m.path))
        .collect()
}

/// Re-executes a copy of ourselves from `dir` (stage 1), or deletes that
/// copy and takes the snapshot (stage 2).
fn setup_deleted_exe(args: &Args) -> DelExe {
    let dir = args.value("dir").unwrap_or_else(|| wl::die("deleted-exe needs --dir"));
    if !args.flag("stage2") {
        let copy = format!("{dir}/memshape-copy");
        let _ = std::fs::remove_file(&copy);
        std::fs::copy("/proc/self/exe", &copy).unwrap_or_else(|e| wl::die(&format!("copy exe: {e}")));
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755));
        let mut argv: Vec<CString> = std::env::args().map(|a| CString::new(a).unwrap_or_default()).collect();
        argv.push(CString::new("--stage2").unwrap_or_default());
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let c = CString::new(copy).unwrap_or_default();
        // SAFETY: `c` and `ptrs` are valid NUL-terminated arrays; on success
        // execv does not return.
        unsafe { libc::execv(c.as_ptr(), ptrs.as_ptr()) };
        wl::die("execv of the copy");
    }
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::remove_file(&exe).unwrap_or_else(|e| wl::die(&format!("unlink {exe}: {e}")));
    let link = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !link.ends_with(" (deleted)") {
        wl::die(&format!("/proc/self/exe is {link:?} after unlink"));
    }
    let lines = exe_lines(&exe);
    let text = lines
        .iter()
        .find(|l| l.2.starts_with("r-x"))
        .map(|l| (l.0, l.1))
        .unwrap_or_else(|| wl::die("no r-x mapping of the executable"));
    DelExe {
        link,
        sum: probe::sum_at(text.0, text.1 - text.0),
        lines,
        text,
    }
}

struct DelData {
    path: String,
    private: usize,
    shared: usize,
    /// Checksums of the private mapping's 4 pages, then the shared one's.
    sums: Vec<u64>,
}

fn open_flags(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap_or_default();
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        wl::die(&format!("open {path}: {}", std::io::Error::last_os_error()));
    }
    fd
}

fn map_file(fd: i32, len: usize, flags: i32) -> usize {
    // SAFETY: a new mapping chosen by the kernel; no existing memory is touched.
    let a = unsafe { libc::mmap(std::ptr::null_mut(), len, RW, flags, fd, 0) };
    if a == libc::MAP_FAILED {
        wl::die(&format!("mmap of the data file: {}", std::io::Error::last_os_error()));
    }
    a as usize
}

fn setup_deleted_data(args: &Args) -> DelData {
    let dir = args.value("dir").unwrap_or_else(|| wl::die("deleted-data needs --dir"));
    let path = format!("{dir}/memshape-data");
    let mut content = vec![0u8; 4 * PAGE];
    for (i, b) in content.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(&path, &content).unwrap_or_else(|e| wl::die(&format!("write {path}: {e}")));
    let fd = open_flags(&path, libc::O_RDWR);
    let private = map_file(fd, 4 * PAGE, libc::MAP_PRIVATE);
    let shared = map_file(fd, 4 * PAGE, libc::MAP_SHARED);
    // SAFETY: our own descriptor, no longer needed (the mappings hold the file).
    unsafe { libc::close(fd) };
    probe::fill_at(private + PAGE, PAGE, 0xd1);
    probe::fill_at(shared + 2 * PAGE, PAGE, 0xd2);
    std::fs::remove_file(&path).unwrap_or_else(|e| wl::die(&format!("unlink {path}: {e}")));
    let sums = (0..4)
        .map(|i| probe::sum_at(private + i * PAGE, PAGE))
        .chain((0..4).map(|i| probe::sum_at(shared + i * PAGE, PAGE)))
        .collect();
    DelData {
        path,
        private,
        shared,
        sums,
    }
}

fn check_deleted_data(d: &DelData, p: &mut Problems) {
    let c = "deleted-data";
    for (name, at) in [("private", d.private), ("shared", d.shared)] {
        let path = probe::maps_in(at, at + 4 * PAGE).first().map(|m| m.path.clone());
        p.eq(
            c,
            &format!("{name} mapping's file"),
            path,
            Some(format!("{} (deleted)", d.path)),
        );
    }
    let sums: Vec<u64> = (0..4)
        .map(|i| probe::sum_at(d.private + i * PAGE, PAGE))
        .chain((0..4).map(|i| probe::sum_at(d.shared + i * PAGE, PAGE)))
        .collect();
    p.eq(c, "page checksums (private then shared)", sums, d.sums.clone());
    probe::fill_at(d.shared + 3 * PAGE, PAGE, 0xd3);
    p.eq(
        c,
        "page 3 written through the shared mapping, read through the private one",
        probe::sum_at(d.private + 3 * PAGE, PAGE),
        probe::sum_at(d.shared + 3 * PAGE, PAGE),
    );
}

fn check_deleted_exe(d: &DelExe, p: &mut Problems) {
    let c = "deleted-exe";
    let link = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.eq(c, "/proc/self/exe", link, d.link.clone());
    let prefix = d.link.trim_end_matches(" (deleted)");
    p.eq(c, "maps lines of the executable", exe_lines(prefix), d.lines.clone());
    p.eq(c, "code checksum", probe::sum_at(d.text.0, d.text.1 - d.text.0), d.sum);
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let only = Only::from_args(&args, ALL, DEFAULT);
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let holes = only.has("holes").then(setup_holes);
    let guard = only.has("guard").then(setup_guard);
    let grows = only.has("growsdown").then(setup_growsdown);
    let madv = only.has("madvise").then(setup_madvise);
    let thp = only.has("thp").then(setup_thp);
    let lock = only.has("mlock").then(setup_mlock);
    let sparse = only.has("sparse").then(|| setup_sparse(args.num("gib", 4) as usize));
    let dexe = only.has("deleted-exe").then(|| setup_deleted_exe(&args));
    let ddata = only.has("deleted-data").then(|| setup_deleted_data(&args));
    log.line(&format!("MEMSHAPE checks={}", only.list()));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    if corrupt {
        if let Some(h) = &holes {
            probe::mprotect(h.a + 8 * PAGE, PAGE, RW);
        }
        if let Some(g) = &guard {
            let _ = probe::madvise(g.a + 2 * PAGE, PAGE, MADV_GUARD_REMOVE);
        }
        if let Some(g) = &grows {
            // SAFETY: grows the growsdown mapping by one page.
            unsafe { std::ptr::write_volatile((g.start - PAGE) as *mut u64, 1) };
        }
        if let Some(m) = &madv {
            if let Some(r) = m.regions.iter().find(|r| r.0 == "dc") {
                let _ = probe::madvise(r.1, 4 * PAGE, libc::MADV_DOFORK);
            }
        }
        if let Some(t) = &thp {
            let _ = probe::madvise(t.a, 4 << 20, libc::MADV_NOHUGEPAGE);
        }
        if let Some(l) = &lock {
            // SAFETY: unlocks a page of our own mapping.
            unsafe { libc::munlock((l.a + 2 * PAGE) as *const libc::c_void, PAGE) };
        }
        if let Some(s) = &sparse {
            probe::fill_at(s.a + (2 << 30) + 9 * PAGE, PAGE, 1);
        }
        if let Some(d) = &dexe {
            if let Some(l) = d.lines.first() {
                probe::mprotect(l.0, l.1 - l.0, RW);
            }
        }
        if let Some(d) = &ddata {
            probe::fill_at(d.private, PAGE, 0xbad);
        }
    }

    let mut p = Problems::new();
    let mut details = format!("checks={}", only.list());
    if let Some(h) = &holes {
        check_holes(h, &mut p);
    }
    if let Some(g) = &guard {
        check_guard(g, &mut p);
    }
    if let Some(g) = &grows {
        check_growsdown(g, &mut p);
    }
    if let Some(m) = &madv {
        check_madvise(m, &mut p);
        let flags: Vec<&str> = m.regions.iter().map(|r| r.0).collect();
        details += &format!(" madvise={}", flags.join(","));
    }
    if let Some(t) = &thp {
        check_thp(t, &mut p);
    }
    if let Some(l) = &lock {
        check_mlock(l, &mut p);
    }
    if let Some(s) = &sparse {
        details += " ";
        details += &check_sparse(s, &mut p);
    }
    if let Some(d) = &dexe {
        check_deleted_exe(d, &mut p);
    }
    if let Some(d) = &ddata {
        check_deleted_data(d, &mut p);
    }
    log.verdict(&p.v, &details);
}
