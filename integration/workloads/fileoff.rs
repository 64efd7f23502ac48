//! fileoff: open files keep their numbers, offsets, flags and sharing.
//!
//! `fileoff --log F --dir D [--corrupt]`
//!
//! In D it opens:
//! - `ro.dat` O_RDONLY, positioned at offset 42;
//! - `append.log` O_WRONLY|O_APPEND (after writing `first\n`);
//! - `sparse.dat` O_RDWR, a 1 MiB sparse file, positioned at offset 4096;
//! - fd 17, a dup2 of the O_RDONLY fd (shares its offset, no cloexec);
//! - `cloexec.dat` O_RDONLY|O_CLOEXEC, positioned at offset 3;
//! - `before-rename.dat` O_RDONLY at offset 5, then renamed to
//!   `after-rename.dat` (the fd must come back on the renamed file).
//!
//! On SIGUSR1 it checks each fd number is open on the same inode with the
//! same F_GETFL access mode and O_APPEND, the same FD_CLOEXEC and the same
//! offset; that reading the O_RDONLY fd yields the expected bytes at 42 and
//! moves fd 17's offset too (one shared file description); that O_APPEND
//! still appends; and that the sparse file kept its size and data.
//! `--corrupt` moves the O_RDONLY fd to offset 43 before verifying.

use cryo_integration::wl::{self, Args, Log};
use std::ffi::CString;

const RO_LEN: usize = 8192;
const SPARSE_LEN: i64 = 1 << 20;
const SPARSE_MARK_AT: i64 = 512 * 1024;
const SPARSE_MARK: &[u8] = b"SPARSE";

fn pattern(i: usize) -> u8 {
    ((i * 7 + 3) % 251) as u8
}

fn cpath(p: &str) -> CString {
    CString::new(p).unwrap_or_else(|_| wl::die("path has a NUL"))
}

fn open(path: &str, flags: i32) -> i32 {
    let c = cpath(path);
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644) };
    if fd < 0 {
        wl::die(&format!("open {path}"));
    }
    fd
}

fn lseek(fd: i32, off: i64, whence: i32) -> i64 {
    // SAFETY: lseek on any fd number is memory-safe.
    unsafe { libc::lseek(fd, off, whence) }
}

fn fcntl(fd: i32, cmd: i32) -> i32 {
    // SAFETY: F_GETFD/F_GETFL take no pointer argument.
    unsafe { libc::fcntl(fd, cmd) }
}

/// (dev, ino) of an fd, or None if fstat fails.
fn fd_ident(fd: i32) -> Option<(u64, u64, i64)> {
    // SAFETY: a zeroed stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino, st.st_size))
}

/// (dev, ino) of a path.
fn path_ident(path: &str) -> Option<(u64, u64)> {
    let c = cpath(path);
    // SAFETY: a zeroed stat is a valid out-buffer for stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is writable.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

struct Expect {
    name: &'static str,
    fd: i32,
    path: String,
    /// O_ACCMODE bits plus O_APPEND.
    fl: i32,
    cloexec: bool,
    offset: i64,
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let p = |n: &str| format!("{dir}/{n}");
    let ro_data: Vec<u8> = (0..RO_LEN).map(pattern).collect();
    std::fs::write(p("ro.dat"), &ro_data).unwrap_or_else(|_| wl::die("write ro.dat"));
    std::fs::write(p("cloexec.dat"), b"cloexec data\n").unwrap_or_else(|_| wl::die("write cloexec.dat"));

    let ro = open(&p("ro.dat"), libc::O_RDONLY);
    if lseek(ro, 42, libc::SEEK_SET) != 42 {
        wl::die("lseek ro.dat");
    }

    let app = open(
        &p("append.log"),
        libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_TRUNC,
    );
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::write(app, b"first\n".as_ptr().cast(), 6) } != 6 {
        wl::die("write append.log");
    }

    let rw = open(&p("sparse.dat"), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC);
    // SAFETY: ftruncate/pwrite on our own fd with a valid buffer.
    unsafe {
        if libc::ftruncate(rw, SPARSE_LEN) != 0 {
            wl::die("ftruncate sparse.dat");
        }
        if libc::pwrite(rw, SPARSE_MARK.as_ptr().cast(), SPARSE_MARK.len(), SPARSE_MARK_AT)
            != SPARSE_MARK.len() as isize
        {
            wl::die("pwrite sparse.dat");
        }
    }
    if lseek(rw, 4096, libc::SEEK_SET) != 4096 {
        wl::die("lseek sparse.dat");
    }

    // SAFETY: dup2 onto a free number is memory-safe.
    if unsafe { libc::dup2(ro, 17) } != 17 {
        wl::die("dup2 to 17");
    }

    let cx = open(&p("cloexec.dat"), libc::O_RDONLY | libc::O_CLOEXEC);
    if lseek(cx, 3, libc::SEEK_SET) != 3 {
        wl::die("lseek cloexec.dat");
    }

    std::fs::write(p("before-rename.dat"), b"renamed file\n").unwrap_or_else(|_| wl::die("write before-rename.dat"));
    let rn = open(&p("before-rename.dat"), libc::O_RDONLY);
    if lseek(rn, 5, libc::SEEK_SET) != 5 {
        wl::die("lseek before-rename.dat");
    }
    std::fs::rename(p("before-rename.dat"), p("after-rename.dat")).unwrap_or_else(|_| wl::die("rename"));

    let expect = [
        Expect {
            name: "ro",
            fd: ro,
            path: p("ro.dat"),
            fl: libc::O_RDONLY,
            cloexec: false,
            offset: 42,
        },
        Expect {
            name: "append",
            fd: app,
            path: p("append.log"),
            fl: libc::O_WRONLY | libc::O_APPEND,
            cloexec: false,
            offset: 6,
        },
        Expect {
            name: "sparse",
            fd: rw,
            path: p("sparse.dat"),
            fl: libc::O_RDWR,
            cloexec: false,
            offset: 4096,
        },
        Expect {
            name: "dup17",
            fd: 17,
            path: p("ro.dat"),
            fl: libc::O_RDONLY,
            cloexec: false,
            offset: 42,
        },
        Expect {
            name: "cloexec",
            fd: cx,
            path: p("cloexec.dat"),
            fl: libc::O_RDONLY,
            cloexec: true,
            offset: 3,
        },
        Expect {
            name: "renamed",
            fd: rn,
            path: p("after-rename.dat"),
            fl: libc::O_RDONLY,
            cloexec: false,
            offset: 5,
        },
    ];
    let table: Vec<String> = expect.iter().map(|e| format!("{}={}", e.name, e.fd)).collect();
    log.line(&format!("FDS {}", table.join(" ")));
    log.ready();

    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    if corrupt {
        lseek(ro, 43, libc::SEEK_SET);
    }

    let mut problems = Vec::new();
    for e in &expect {
        let fdfl = fcntl(e.fd, libc::F_GETFD);
        if fdfl < 0 {
            problems.push(format!("{} fd {} is not open", e.name, e.fd));
            continue;
        }
        let cloexec = fdfl & libc::FD_CLOEXEC != 0;
        if cloexec != e.cloexec {
            problems.push(format!("{} fd {}: cloexec {cloexec}", e.name, e.fd));
        }
        let fl = fcntl(e.fd, libc::F_GETFL) & (libc::O_ACCMODE | libc::O_APPEND);
        if fl != e.fl {
            problems.push(format!("{} fd {}: flags {fl:#o} != {:#o}", e.name, e.fd, e.fl));
        }
        let off = lseek(e.fd, 0, libc::SEEK_CUR);
        if off != e.offset {
            problems.push(format!("{} fd {}: offset {off} != {}", e.name, e.fd, e.offset));
        }
        match (fd_ident(e.fd), path_ident(&e.path)) {
            (Some((d, i, _)), Some(want)) if (d, i) == want => {}
            (got, want) => problems.push(format!(
                "{} fd {}: file {got:?} is not {} {want:?}",
                e.name, e.fd, e.path
            )),
        }
    }

    // Reading the O_RDONLY fd gives the bytes at 42 and moves fd 17 too.
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(ro, buf.as_mut_ptr().cast(), buf.len()) };
    if n != 8 || buf[..] != ro_data[42..50] {
        problems.push(format!("read at 42 gave {n} bytes {buf:?}"));
    }
    let off17 = lseek(17, 0, libc::SEEK_CUR);
    if off17 != 50 {
        problems.push(format!("fd 17 offset after reading fd {ro}: {off17} != 50"));
    }

    // O_APPEND still appends, wherever the offset is.
    lseek(app, 0, libc::SEEK_SET);
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::write(app, b"second\n".as_ptr().cast(), 7) };
    let content = std::fs::read(p("append.log")).unwrap_or_default();
    if n != 7 || content != b"first\nsecond\n" {
        problems.push(format!("append.log is {:?}", String::from_utf8_lossy(&content)));
    }

    // The sparse file kept its size and its mark.
    let size = fd_ident(rw).map_or(-1, |(_, _, s)| s);
    if size != SPARSE_LEN {
        problems.push(format!("sparse.dat size {size} != {SPARSE_LEN}"));
    }
    let mut mark = [0u8; 6];
    // SAFETY: `mark` is writable for its length.
    let n = unsafe { libc::pread(rw, mark.as_mut_ptr().cast(), mark.len(), SPARSE_MARK_AT) };
    if n != 6 || mark[..] != *SPARSE_MARK {
        problems.push(format!("sparse.dat mark is {mark:?}"));
    }

    log.verdict(&problems, &table.join(" "));
}
