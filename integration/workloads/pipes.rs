//! pipes: pipes and FIFOs keep their buffered data (no loss, no
//! duplication), size, flags and ends across processes.
//!
//! `pipes --log F --dir D [--corrupt]`
//!
//! The parent P sets up, then forks C1 and C2:
//! - pipe A, sized 1 MiB with F_SETPIPE_SZ, 200000 bytes queued; read end
//!   only in C1, write end only in P;
//! - pipe B, O_NONBLOCK, empty; read end in P, write end only in C2;
//! - pipe C, 5 bytes queued, write end closed everywhere (EOF after them);
//! - pipe D, 100 bytes queued; read end in P, write end in P and C1;
//! - FIFO `D/fifo`, 3000 bytes queued; a reader (O_NONBLOCK) in P and C2,
//!   a writer in P.
//!
//! On SIGUSR1 P checks A's size and write end, that B reads EAGAIN, C gives
//! its 5 bytes then EOF, the FIFO and D hold exactly their bytes; then C1
//! checks that A holds exactly its 200000 bytes (FIONREAD), reads and
//! compares them and writes into D; then C2 writes into B; P finally reads
//! both messages. `--corrupt` writes one extra byte into A after the dump.

use cryo_integration::wl::{self, Args, Log};
use std::ffi::CString;

const A_LEN: usize = 200_000;
const A_SIZE: i32 = 1 << 20;
const FIFO_LEN: usize = 3000;
const D_LEN: usize = 100;

fn pattern(i: usize, seed: usize) -> u8 {
    ((i * 31 + seed * 7) % 253) as u8
}

fn pipe2(flags: i32) -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
        wl::die("pipe2");
    }
    (fds[0], fds[1])
}

fn write_all(fd: i32, b: &[u8]) {
    let mut at = 0;
    while at < b.len() {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::write(fd, b[at..].as_ptr().cast(), b.len() - at) };
        if n <= 0 {
            wl::die(&format!("write to fd {fd}"));
        }
        at += n as usize;
    }
}

/// read(2) once; Err(errno) on failure.
fn read_once(fd: i32, n: usize) -> Result<Vec<u8>, i32> {
    let mut b = vec![0u8; n];
    // SAFETY: `b` is writable for n bytes.
    let got = unsafe { libc::read(fd, b.as_mut_ptr().cast(), n) };
    if got < 0 {
        return Err(wl::errno());
    }
    b.truncate(got as usize);
    Ok(b)
}

/// Reads exactly n bytes (or fewer at EOF / EAGAIN).
fn read_full(fd: i32, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match read_once(fd, n - out.len()) {
            Ok(b) if b.is_empty() => break,
            Ok(b) => out.extend_from_slice(&b),
            Err(e) if e == libc::EINTR => continue,
            Err(_) => break,
        }
    }
    out
}

fn fionread(fd: i32) -> i64 {
    let mut n: libc::c_int = -1;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return -1;
    }
    n as i64
}

fn fcntl(fd: i32, cmd: i32) -> i32 {
    // SAFETY: these commands take no pointer.
    unsafe { libc::fcntl(fd, cmd) }
}

fn close(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: closing fd numbers we own.
        unsafe { libc::close(fd) };
    }
}

fn fork() -> i32 {
    // SAFETY: the workload is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        wl::die("fork");
    }
    pid
}

fn idle() {
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
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

fn member_exit(log: &Log, name: &str, pr: &[String]) -> ! {
    if pr.is_empty() {
        log.line(&format!("MEMBER {name} PASS"));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(0) }
    }
    log.line(&format!("MEMBER {name} FAIL {}", pr.join("; ")));
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(1) }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();

    let a_data: Vec<u8> = (0..A_LEN).map(|i| pattern(i, 1)).collect();
    let fifo_data: Vec<u8> = (0..FIFO_LEN).map(|i| pattern(i, 2)).collect();
    let d_data: Vec<u8> = (0..D_LEN).map(|i| pattern(i, 3)).collect();

    let (ar, aw) = pipe2(0);
    // SAFETY: F_SETPIPE_SZ takes an integer.
    if unsafe { libc::fcntl(aw, libc::F_SETPIPE_SZ, A_SIZE) } < A_SIZE {
        wl::die("F_SETPIPE_SZ");
    }
    write_all(aw, &a_data);
    let (br, bw) = pipe2(libc::O_NONBLOCK);
    let (cr, cw) = pipe2(0);
    write_all(cw, b"tail!");
    close(&[cw]);
    let (dr, dw) = pipe2(0);
    write_all(dw, &d_data);
    let fifo = format!("{dir}/fifo");
    let c = CString::new(fifo.as_str()).unwrap_or_else(|_| wl::die("fifo path"));
    // SAFETY: `c` is NUL-terminated.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        wl::die("mkfifo");
    }
    // SAFETY: `c` is NUL-terminated.
    let fr = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    // SAFETY: `c` is NUL-terminated.
    let fw = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY) };
    if fr < 0 || fw < 0 {
        wl::die("open fifo");
    }
    write_all(fw, &fifo_data);

    let c1 = fork();
    if c1 == 0 {
        close(&[aw, br, bw, cr, dr, fr, fw]);
        idle();
        let mut pr = Vec::new();
        let q = fionread(ar);
        if q != A_LEN as i64 {
            pr.push(format!("pipe A holds {q} bytes, expected {A_LEN}"));
        }
        // SAFETY: F_GETPIPE_SZ takes no argument.
        let sz = unsafe { libc::fcntl(ar, libc::F_GETPIPE_SZ) };
        if sz != A_SIZE {
            pr.push(format!("pipe A size {sz}, expected {A_SIZE}"));
        }
        let got = read_full(ar, A_LEN);
        if got != a_data {
            let at = got.iter().zip(&a_data).position(|(x, y)| x != y).unwrap_or(got.len());
            pr.push(format!("pipe A: {} bytes read, first difference at {at}", got.len()));
        }
        write_all(dw, b"from-c1");
        member_exit(&log, "c1", &pr);
    }
    let c2 = fork();
    if c2 == 0 {
        close(&[ar, aw, br, cr, dr, dw, fw]);
        idle();
        let mut pr = Vec::new();
        if fcntl(fr, libc::F_GETFL) & libc::O_NONBLOCK == 0 {
            pr.push("the FIFO reader lost O_NONBLOCK".into());
        }
        write_all(bw, b"from-c2");
        member_exit(&log, "c2", &pr);
    }
    close(&[ar, bw]);
    let table = format!("A=w{aw} B=r{br} C=r{cr} D=r{dr},w{dw} FIFO=r{fr},w{fw}");
    log.line(&format!("FDS {table} c1={c1} c2={c2}"));
    log.ready();
    idle();

    let mut pr = Vec::new();
    // SAFETY: F_GETPIPE_SZ takes no argument.
    let sz = unsafe { libc::fcntl(aw, libc::F_GETPIPE_SZ) };
    if sz != A_SIZE || fcntl(aw, libc::F_GETFL) & libc::O_ACCMODE != libc::O_WRONLY {
        pr.push(format!("pipe A write end: size {sz}"));
    }
    if fcntl(br, libc::F_GETFL) & libc::O_NONBLOCK == 0 {
        pr.push("pipe B lost O_NONBLOCK".into());
    }
    match read_once(br, 16) {
        Err(e) if e == libc::EAGAIN => {}
        other => pr.push(format!("empty pipe B read gave {other:?}, expected EAGAIN")),
    }
    let q = fionread(cr);
    let tail = read_full(cr, 5);
    let eof = read_once(cr, 16);
    if q != 5 || tail != b"tail!" || eof != Ok(Vec::new()) {
        pr.push(format!("pipe C: {q} queued, read {tail:?} then {eof:?}"));
    }
    let q = fionread(fr);
    let got = read_full(fr, FIFO_LEN);
    if q != FIFO_LEN as i64 || got != fifo_data {
        pr.push(format!("FIFO: {q} queued, {} bytes read", got.len()));
    }
    match read_once(fr, 16) {
        Err(e) if e == libc::EAGAIN => {}
        other => pr.push(format!("emptied FIFO read gave {other:?}, expected EAGAIN")),
    }
    let q = fionread(dr);
    let got = read_full(dr, D_LEN);
    if q != D_LEN as i64 || got != d_data {
        pr.push(format!("pipe D: {q} queued, {} bytes read", got.len()));
    }
    if corrupt {
        write_all(aw, b"!");
    }
    for c in [c1, c2] {
        // SAFETY: sending a signal has no memory effects.
        unsafe { libc::kill(c, libc::SIGUSR1) };
        if let Err(e) = wait_child(c) {
            pr.push(e);
        }
    }
    let got = read_full(dr, 7);
    if got != b"from-c1" {
        pr.push(format!("pipe D from C1: {:?}", String::from_utf8_lossy(&got)));
    }
    let got = read_once(br, 16);
    if got.as_deref() != Ok(b"from-c2".as_slice()) {
        pr.push(format!("pipe B from C2: {got:?}"));
    }
    log.verdict(&pr, &table);
}
