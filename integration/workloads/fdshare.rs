//! fdshare: open file descriptions shared across processes stay one
//! description; unlinked files, O_PATH fds, directories and device nodes
//! come back.
//!
//! `fdshare --log F --dir D [--corrupt]`
//!
//! The parent P opens, in D:
//! - `shared.dat` O_RDWR at offset 100 (fd S);
//! - `orphan.dat` O_RDONLY at offset 200 (fd O);
//! - `ghost.dat` O_RDWR at offset 10 (fd G) and a second description of
//!   the same file through /proc/self/fd/G, O_RDONLY at offset 20 (fd G2),
//!   then unlinks `ghost.dat`;
//! - an O_PATH fd of D, a directory fd of D, /dev/null O_WRONLY,
//!   /dev/zero and /dev/urandom O_RDONLY.
//!
//! Then it forks C1 and C2, and opens `passed.dat` at offset 300 (fd 45)
//! and sends it to C2 with SCM_RIGHTS (C2 keeps it at fd 52): shared
//! without any fork in between. P moves S to fd 40 (and dups it to 41 with
//! FD_CLOEXEC) and closes O: O lives on only in the children. C1 keeps S
//! and O at their numbers and closes G2; C2 moves S to fd 50 and O to 51.
//!
//! On SIGUSR1 P checks offsets, flags and the special fds, reads 4 bytes
//! through fd 40 (offset 100 → 104, seen by 41 too), writes into the
//! ghost through G and reads it back through G2 (one inode, still
//! unlinked), reads 4 bytes through G (10 → 14); then lets C1 check (S at
//! 104, O at 200, G at 14) and read (S → 108, O → 208, G → 16), then C2
//! (S at 108 through fd 50, O at 208 through fd 51), and finally checks
//! that fd 40 and G moved with the children's reads. Children report
//! `MEMBER name PASS|FAIL` and exit 0/1; P writes the verdict.
//! `--corrupt` replaces P's fd 40 by a fresh open of `shared.dat` after
//! the dump (a separate description), which the children's checks catch.

use cryo_integration::wl::{self, Args, Log};
use std::ffi::CString;

const SHARED_LEN: usize = 4096;
const GHOST_LEN: usize = 20000;

fn pattern(i: usize, seed: usize) -> u8 {
    ((i * 13 + seed) % 251) as u8
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

fn pos(fd: i32) -> i64 {
    lseek(fd, 0, libc::SEEK_CUR)
}

fn fcntl(fd: i32, cmd: i32, arg: i32) -> i32 {
    // SAFETY: the commands used take an integer argument.
    unsafe { libc::fcntl(fd, cmd, arg) }
}

fn close(fd: i32) {
    // SAFETY: closing an fd number we own.
    unsafe {
        libc::close(fd);
    }
}

fn dup2(a: i32, b: i32) {
    // SAFETY: dup2 between fd numbers is memory-safe.
    if unsafe { libc::dup2(a, b) } != b {
        wl::die(&format!("dup2 {a} {b}"));
    }
}

fn read_n(fd: i32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: `b` is writable for n bytes.
    let got = unsafe { libc::read(fd, b.as_mut_ptr().cast(), n) };
    b.truncate(got.max(0) as usize);
    b
}

fn fstat(fd: i32) -> Option<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

fn stat(path: &str) -> Option<libc::stat> {
    let c = cpath(path);
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` writable.
    (unsafe { libc::stat(c.as_ptr(), &mut st) } == 0).then_some(st)
}

fn fork() -> i32 {
    // SAFETY: the workload is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        wl::die("fork");
    }
    pid
}

fn wait_child(pid: i32) -> Result<(), String> {
    let mut st = 0;
    loop {
        // SAFETY: `st` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            break;
        }
        if wl::errno() != libc::EINTR {
            return Err(format!("waitpid {pid}: errno {}", wl::errno()));
        }
    }
    if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 {
        Ok(())
    } else {
        Err(format!("child {pid} ended with status {st:#x}"))
    }
}

fn expect_pos(problems: &mut Vec<String>, what: &str, fd: i32, want: i64) {
    let got = pos(fd);
    if got != want {
        problems.push(format!("{what} (fd {fd}) at offset {got}, expected {want}"));
    }
}

fn expect_read(problems: &mut Vec<String>, what: &str, fd: i32, want: &[u8]) {
    let got = read_n(fd, want.len());
    if got != want {
        problems.push(format!("{what} (fd {fd}) read {got:?}, expected {want:?}"));
    }
}

/// Sends fd `fd` over unix socket `sock` (SCM_RIGHTS).
fn send_fd(sock: i32, fd: i32) {
    let mut byte = [b'f'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // CMSG_SPACE(4) on x86_64 is 24 bytes; use a u64 buffer for alignment.
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; every pointer set below
    // refers to a live buffer of the stated length.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        if libc::sendmsg(sock, &msg, 0) != 1 {
            wl::die("sendmsg SCM_RIGHTS");
        }
    }
}

/// Receives one fd sent with [`send_fd`].
fn recv_fd(sock: i32) -> i32 {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: as in send_fd; the kernel fills the buffers it is given.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        if libc::recvmsg(sock, &mut msg, 0) != 1 {
            wl::die("recvmsg SCM_RIGHTS");
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            wl::die("no SCM_RIGHTS");
        }
        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())
    }
}

/// Reads one directory entry through a directory fd (getdents64).
fn read_dir_ok(fd: i32) -> Option<()> {
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    (n >= 0).then_some(())
}

/// Waits for SIGUSR1 (children idle here).
fn idle() {
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
}

fn finish_member(log: &Log, name: &str, problems: &[String]) -> ! {
    if problems.is_empty() {
        log.line(&format!("MEMBER {name} PASS"));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(0) }
    }
    log.line(&format!("MEMBER {name} FAIL {}", problems.join("; ")));
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(1) }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let p = |n: &str| format!("{dir}/{n}");

    let shared: Vec<u8> = (0..SHARED_LEN).map(|i| pattern(i, 1)).collect();
    std::fs::write(p("shared.dat"), &shared).unwrap_or_else(|_| wl::die("write shared.dat"));
    let orphan: Vec<u8> = (0..SHARED_LEN).map(|i| pattern(i, 2)).collect();
    std::fs::write(p("orphan.dat"), &orphan).unwrap_or_else(|_| wl::die("write orphan.dat"));
    let ghost: Vec<u8> = (0..GHOST_LEN).map(|i| pattern(i, 3)).collect();
    let passed: Vec<u8> = (0..SHARED_LEN).map(|i| pattern(i, 4)).collect();
    std::fs::write(p("passed.dat"), &passed).unwrap_or_else(|_| wl::die("write passed.dat"));

    let s = open(&p("shared.dat"), libc::O_RDWR);
    lseek(s, 100, libc::SEEK_SET);
    let o = open(&p("orphan.dat"), libc::O_RDONLY);
    lseek(o, 200, libc::SEEK_SET);
    let g = open(&p("ghost.dat"), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC);
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::write(g, ghost.as_ptr().cast(), ghost.len()) } != ghost.len() as isize {
        wl::die("write ghost.dat");
    }
    lseek(g, 10, libc::SEEK_SET);
    let g2 = open(&format!("/proc/self/fd/{g}"), libc::O_RDONLY);
    lseek(g2, 20, libc::SEEK_SET);
    std::fs::remove_file(p("ghost.dat")).unwrap_or_else(|_| wl::die("unlink ghost.dat"));
    let opath = open(&dir, libc::O_PATH);
    let dirfd = open(&dir, libc::O_RDONLY | libc::O_DIRECTORY);
    let null = open("/dev/null", libc::O_WRONLY);
    let zero = open("/dev/zero", libc::O_RDONLY);
    let urandom = open("/dev/urandom", libc::O_RDONLY);

    let c1 = fork();
    if c1 == 0 {
        close(g2);
        idle();
        let mut pr = Vec::new();
        expect_pos(&mut pr, "shared", s, 104);
        expect_read(&mut pr, "shared", s, &shared[104..108]);
        expect_pos(&mut pr, "orphan", o, 200);
        expect_read(&mut pr, "orphan", o, &orphan[200..208]);
        expect_pos(&mut pr, "ghost", g, 14);
        expect_read(&mut pr, "ghost", g, &ghost[14..16]);
        finish_member(&log, "c1", &pr);
    }
    let mut sp = [0i32; 2];
    // SAFETY: `sp` has room for two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, sp.as_mut_ptr()) } != 0 {
        wl::die("socketpair");
    }
    let c2 = fork();
    if c2 == 0 {
        dup2(s, 50);
        close(s);
        dup2(o, 51);
        close(o);
        let got = recv_fd(sp[1]);
        dup2(got, 52);
        close(got);
        close(sp[0]);
        close(sp[1]);
        idle();
        let mut pr = Vec::new();
        expect_pos(&mut pr, "shared", 50, 108);
        expect_pos(&mut pr, "orphan", 51, 208);
        expect_read(&mut pr, "orphan", 51, &orphan[208..212]);
        expect_pos(&mut pr, "passed", 52, 305);
        expect_read(&mut pr, "passed", 52, &passed[305..310]);
        finish_member(&log, "c2", &pr);
    }
    // A description that C2 gets only through SCM_RIGHTS.
    let pf = open(&p("passed.dat"), libc::O_RDONLY);
    if fcntl(pf, libc::F_DUPFD, 45) != 45 {
        wl::die("F_DUPFD 45");
    }
    close(pf);
    lseek(45, 300, libc::SEEK_SET);
    send_fd(sp[0], 45);
    close(sp[0]);
    close(sp[1]);
    dup2(s, 40);
    close(s);
    if fcntl(40, libc::F_DUPFD_CLOEXEC, 41) != 41 {
        wl::die("F_DUPFD_CLOEXEC 41");
    }
    close(o);
    let table = format!(
        "passed=45,c2:52 S=40,41 O=c1:{o},c2:51 G={g} G2={g2} opath={opath} dir={dirfd} null={null} zero={zero} urandom={urandom}"
    );
    log.line(&format!("FDS {table} c1={c1} c2={c2}"));
    log.ready();
    idle();

    if corrupt {
        let fresh = open(&p("shared.dat"), libc::O_RDWR);
        lseek(fresh, 100, libc::SEEK_SET);
        dup2(fresh, 40);
        close(fresh);
    }

    let mut pr = Vec::new();
    // One description at 40 and 41, cloexec only on 41.
    expect_pos(&mut pr, "shared", 40, 100);
    expect_pos(&mut pr, "shared dup", 41, 100);
    if fcntl(40, libc::F_GETFD, 0) != 0 || fcntl(41, libc::F_GETFD, 0) != libc::FD_CLOEXEC {
        pr.push("FD_CLOEXEC of fds 40/41".into());
    }
    if fcntl(40, libc::F_GETFL, 0) & libc::O_ACCMODE != libc::O_RDWR {
        pr.push("fd 40 is not O_RDWR".into());
    }
    expect_read(&mut pr, "shared", 40, &shared[100..104]);
    expect_pos(&mut pr, "shared dup", 41, 104);

    // The ghost: two descriptions, one unlinked inode.
    expect_pos(&mut pr, "ghost", g, 10);
    expect_pos(&mut pr, "ghost 2nd description", g2, 20);
    match (fstat(g), fstat(g2)) {
        (Some(a), Some(b)) => {
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
                pr.push("the two ghost descriptions are different files".into());
            }
            if a.st_nlink != 0 {
                pr.push(format!("the ghost has {} links", a.st_nlink));
            }
            if a.st_size != GHOST_LEN as i64 || a.st_mode & 0o777 != 0o644 {
                pr.push(format!("ghost size {} mode {:o}", a.st_size, a.st_mode));
            }
        }
        _ => pr.push("fstat of the ghost fds".into()),
    }
    if fcntl(g2, libc::F_GETFL, 0) & libc::O_ACCMODE != libc::O_RDONLY {
        pr.push("ghost 2nd description is not O_RDONLY".into());
    }
    // SAFETY: the buffer is valid for its length.
    unsafe { libc::pwrite(g, b"ZZ".as_ptr().cast(), 2, 15000) };
    let mut zz = [0u8; 2];
    // SAFETY: `zz` is writable.
    unsafe { libc::pread(g2, zz.as_mut_ptr().cast(), 2, 15000) };
    if &zz != b"ZZ" {
        pr.push(format!("write through G not seen through G2: {zz:?}"));
    }
    let mut head = [0u8; 10];
    // SAFETY: `head` is writable.
    unsafe { libc::pread(g2, head.as_mut_ptr().cast(), 10, 0) };
    if head[..] != ghost[..10] {
        pr.push("ghost content differs".into());
    }
    expect_read(&mut pr, "ghost", g, &ghost[10..14]);
    expect_pos(&mut pr, "passed", 45, 300);
    expect_read(&mut pr, "passed", 45, &passed[300..305]);
    if std::path::Path::new(&p("ghost.dat")).exists() {
        pr.push("ghost.dat exists again".into());
    }

    // Special files.
    let dst = stat(&dir);
    let same = |fd: i32| match (fstat(fd), dst) {
        (Some(a), Some(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    };
    if !same(opath) || fcntl(opath, libc::F_GETFL, 0) & libc::O_PATH == 0 {
        pr.push("O_PATH fd of the directory".into());
    }
    if !same(dirfd) || read_dir_ok(dirfd).is_none() {
        pr.push("directory fd".into());
    }
    let rdev = |fd: i32| fstat(fd).map(|s| s.st_rdev);
    let rdev_of = |path: &str| stat(path).map(|s| s.st_rdev);
    for (name, fd, path) in [
        ("null", null, "/dev/null"),
        ("zero", zero, "/dev/zero"),
        ("urandom", urandom, "/dev/urandom"),
    ] {
        if rdev(fd).is_none() || rdev(fd) != rdev_of(path) {
            pr.push(format!("{name} fd {fd} is not {path}"));
        }
    }
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::write(null, b"x".as_ptr().cast(), 1) } != 1 {
        pr.push("write to /dev/null".into());
    }
    if read_n(zero, 8) != [0u8; 8] {
        pr.push("read from /dev/zero".into());
    }
    if read_n(urandom, 16).len() != 16 {
        pr.push("read from /dev/urandom".into());
    }

    // The children check and move the shared offsets.
    for c in [c1, c2] {
        // SAFETY: sending a signal has no memory effects.
        unsafe { libc::kill(c, libc::SIGUSR1) };
        if let Err(e) = wait_child(c) {
            pr.push(e);
        }
    }
    expect_pos(&mut pr, "shared after the children", 40, 108);
    expect_pos(&mut pr, "ghost after c1", g, 16);
    expect_pos(&mut pr, "passed after c2", 45, 310);
    log.verdict(&pr, &table);
}
