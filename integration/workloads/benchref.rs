//! benchref: reference figures and a tiny workload for `hack/bench`.
//!
//! `benchref --mode copy --mib N [--reps R]`
//!     memcpy of N MiB between two buffers that were both touched first;
//!     prints the fastest and the median of R (default 3) copy times in
//!     seconds.
//! `benchref --mode write --mib N --file F [--reps R]`
//!     writes N MiB of a touched, non-zero buffer to a fresh file F
//!     (create, write, close; no fsync): the floor of a dump to F's
//!     filesystem. Prints the fastest and the median time in seconds; F is removed at the end.
//! `benchref --mode read --mib N --file F [--reps R]`
//!     writes F once, then reads it back (page cache warm) into fresh
//!     anonymous memory: the floor of a restore from F's filesystem.
//!     Prints the fastest and the median time in seconds.
//! `benchref --mode evict --dir D`
//!     writes back and drops from the page cache every regular file in D
//!     (fsync + POSIX_FADV_DONTNEED), for "cold" restores without dropping
//!     the whole machine's cache.
//! `benchref --mode mem --log F [--kib K] [--hugepage]`
//!     a self-checking workload: K KiB (default 256, the fixed-cost row) of
//!     anonymous memory with a seeded pattern (madvise(MADV_HUGEPAGE)'d with
//!     `--hugepage`, 2 MiB-aligned), `READY <pid>`, idle, and on SIGUSR1
//!     `PASS` or `FAIL` after re-checking the pattern.

use cryo_integration::wl::{self, AnonMap, Args, Log};
use std::ffi::CString;
use std::hint::black_box;
use std::time::Instant;

const MIB: usize = 1 << 20;
const HPAGE: usize = 2 << 20;

fn main() {
    let args = Args::from_env();
    match args.required("mode").as_str() {
        "copy" => copy(&args),
        "write" => write(&args),
        "read" => read(&args),
        "mem" => mem(&args),
        "evict" => evict(&args),
        m => wl::die(&format!("unknown --mode {m}")),
    }
}

fn size(args: &Args) -> usize {
    let mib = args.num("mib", 64) as usize;
    if mib == 0 {
        wl::die("--mib must be at least 1");
    }
    mib * MIB
}

fn touched(len: usize, seed: u64) -> AnonMap {
    let mut m = AnonMap::new(len);
    wl::fill(m.words_mut(), seed);
    m
}

fn copy(args: &Args) {
    let len = size(args);
    let reps = args.num("reps", 3).max(1);
    let src = touched(len, 1);
    let mut dst = touched(len, 2);
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        // SAFETY: both mappings are `len` bytes, live, and distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(src.words().as_ptr(), dst.words_mut().as_mut_ptr(), len / 8);
        }
        black_box(dst.words());
        times.push(t.elapsed().as_secs_f64());
    }
    report(times);
}

/// Prints the fastest and the median of `times`.
fn report(mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    println!("{:.6} {median:.6}", times[0]);
}

fn open(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap_or_else(|_| wl::die("path has a NUL"));
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        wl::die(&format!("open {path}"));
    }
    fd
}

fn unlink(path: &str) {
    let c = CString::new(path).unwrap_or_else(|_| wl::die("path has a NUL"));
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::unlink(c.as_ptr()) };
}

fn close(fd: i32) {
    // SAFETY: closing an fd this program opened and no longer uses.
    unsafe { libc::close(fd) };
}

/// Creates `path` afresh and writes `buf` to it; returns the seconds taken.
fn write_file(path: &str, buf: &AnonMap) -> f64 {
    unlink(path);
    let words = buf.words();
    let t = Instant::now();
    let fd = open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC);
    let mut done = 0usize;
    let len = words.len() * 8;
    while done < len {
        // SAFETY: the range [done, len) lies inside the mapping.
        let n = unsafe { libc::write(fd, words.as_ptr().cast::<u8>().add(done).cast(), len - done) };
        if n <= 0 {
            wl::die(&format!("write {path}"));
        }
        done += n as usize;
    }
    close(fd);
    t.elapsed().as_secs_f64()
}

fn write(args: &Args) {
    let len = size(args);
    let file = args.required("file");
    let reps = args.num("reps", 3).max(1);
    let buf = touched(len, 3);
    let times = (0..reps).map(|_| write_file(&file, &buf)).collect();
    unlink(&file);
    report(times);
}

fn read(args: &Args) {
    let len = size(args);
    let file = args.required("file");
    let reps = args.num("reps", 3).max(1);
    {
        let buf = touched(len, 4);
        write_file(&file, &buf);
    }
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let mut dst = AnonMap::new(len);
        let fd = open(&file, libc::O_RDONLY);
        let bytes = dst.bytes_mut();
        let mut done = 0usize;
        while done < len {
            // SAFETY: the range [done, len) lies inside the fresh mapping.
            let n = unsafe { libc::pread(fd, bytes.as_mut_ptr().add(done).cast(), len - done, done as i64) };
            if n <= 0 {
                wl::die(&format!("read {file}"));
            }
            done += n as usize;
        }
        close(fd);
        black_box(dst.words());
        times.push(t.elapsed().as_secs_f64());
    }
    unlink(&file);
    report(times);
}

fn evict(args: &Args) {
    let dir = args.required("dir");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|_| wl::die(&format!("read_dir {dir}")));
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let fd = open(
            path.to_str().unwrap_or_else(|| wl::die("non-UTF-8 path")),
            libc::O_RDONLY,
        );
        // SAFETY: fd is an open regular file of ours; fsync and fadvise
        // take no pointers.
        unsafe {
            libc::fsync(fd);
            libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        }
        close(fd);
    }
}

fn mem(args: &Args) {
    let log = Log::open(&args.required("log"));
    let kib = args.num("kib", 256) as usize;
    if kib < 4 {
        wl::die("--kib must be at least 4");
    }
    wl::install_usr1();
    let len = kib.div_ceil(4) * 4096;
    let hugepage = args.flag("hugepage");
    // With --hugepage: 2 MiB more, so that an aligned start exists.
    let mut map = AnonMap::new(if hugepage { len + HPAGE } else { len });
    let start = if hugepage {
        map.addr().next_multiple_of(HPAGE) - map.addr()
    } else {
        0
    };
    if hugepage {
        // SAFETY: advice on a range inside our own fresh mapping.
        if unsafe { libc::madvise((map.addr() + start) as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
            wl::die("madvise(MADV_HUGEPAGE)");
        }
    }
    let words = &mut map.words_mut()[start / 8..(start + len) / 8];
    wl::fill(words, 0x7100);
    let sum = wl::checksum(words);
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(100);
    }
    let now = wl::checksum(&map.words()[start / 8..(start + len) / 8]);
    let problems = if now == sum {
        vec![]
    } else {
        vec![format!("checksum {now:#x} != {sum:#x}")]
    };
    log.verdict(&problems, &format!("kib={kib} hugepage={hugepage}"));
}
