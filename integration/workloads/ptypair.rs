//! ptypair: a pty pair held inside the tree, like tmux with its shell.
//!
//! `ptypair --log F [--corrupt]`
//!
//! P opens a pty master M (packet mode on) and a second master L whose
//! slave stays locked. Its child C calls setsid() and opens the slave S
//! (it becomes C's controlling terminal), sets termios (canonical, no
//! echo, VERASE ^H, VKILL ^K) and the window size 33x77 (640x480 px),
//! forks G into its own process group and makes that group the
//! foreground one. C writes `out1` to S (output P has not read); P then
//! writes `hello\npart` to M (input G has not read) and says READY.
//!
//! On SIGUSR1 (to P, passed on to C and G): G checks termios, window
//! size, tcgetpgrp = G, tcgetsid = C, that /dev/tty opens, and reads the
//! pending `hello\n`; it answers `ack`. P reads `out1` then `ack` from M
//! (packet mode: a status byte before each chunk), writes `ial\n`, and G
//! must read `partial\n` (the pending partial line completed), then
//! answers `bye`. P checks TIOCGPKT on M, and TIOCGPTLCK: M unlocked, L
//! locked. C checks its session. `--corrupt` writes `junk\n` to M after
//! READY, so G reads `partjunk` and the check FAILs.

use std::time::{Duration, Instant};

use cryo_integration::wl::{self, Args, Log};

fn fork() -> i32 {
    // SAFETY: the workload is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        wl::die("fork");
    }
    pid
}

fn ioctl_int(fd: i32, req: libc::Ioctl) -> Option<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the requests used here write one int.
    (unsafe { libc::ioctl(fd, req, &mut v) } == 0).then_some(v)
}

fn write_all(fd: i32, data: &[u8]) {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n != data.len() as isize {
        wl::die("write");
    }
}

/// Reads from `fd` until `want` has been collected (or 5 s passed).
/// `packet`: each read starts with a status byte that is not data.
fn read_until(fd: i32, want: &str, packet: bool) -> String {
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains(want) && Instant::now() < end {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 200) } != 1 || p.revents & libc::POLLIN == 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let skip = usize::from(packet).min(n as usize);
        got.extend_from_slice(&buf[skip..n as usize]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn tcgetattr(fd: i32) -> Option<libc::termios> {
    // SAFETY: a zeroed termios is a valid C value the call fills in.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then_some(t)
    }
}

const VERASE_MARK: u8 = 0x08;
const VKILL_MARK: u8 = 0x0b;
const WS: (u16, u16, u16, u16) = (33, 77, 640, 480);

fn wait_usr1() {
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
}

/// G: the foreground group's process, the reader of the terminal.
fn run_g(log: &Log, s: i32, c: i32) -> ! {
    wait_usr1();
    let me = wl::getpid();
    let mut problems = Vec::new();
    match tcgetattr(s) {
        None => problems.push("termios: tcgetattr".to_string()),
        Some(t) => {
            if t.c_lflag & libc::ECHO != 0 || t.c_lflag & libc::ICANON == 0 {
                problems.push(format!("termios: lflag {:#o}", t.c_lflag));
            }
            if (t.c_cc[libc::VERASE], t.c_cc[libc::VKILL]) != (VERASE_MARK, VKILL_MARK) {
                problems.push(format!(
                    "termios: VERASE/VKILL {:#x}/{:#x}",
                    t.c_cc[libc::VERASE],
                    t.c_cc[libc::VKILL]
                ));
            }
        }
    }
    // SAFETY: TIOCGWINSZ writes one winsize.
    let ws = unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        libc::ioctl(s, libc::TIOCGWINSZ, &mut ws);
        (ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel)
    };
    if ws != WS {
        problems.push(format!("winsize: {ws:?}, expected {WS:?}"));
    }
    // SAFETY: plain fd queries.
    let (fg, sid) = unsafe { (libc::tcgetpgrp(s), libc::tcgetsid(s)) };
    if fg != me || sid != c {
        problems.push(format!("tcgetpgrp/tcgetsid {fg}/{sid}, expected {me}/{c}"));
    }
    // SAFETY: the path is a valid C string.
    let tty = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if tty < 0 {
        problems.push(format!("/dev/tty: errno {}", wl::errno()));
    } else {
        // SAFETY: tty is our fd.
        let fg2 = unsafe { libc::tcgetpgrp(tty) };
        if fg2 != me {
            problems.push(format!("/dev/tty foreground group {fg2}"));
        }
    }
    let first = read_until(s, "\n", false);
    if first != "hello\n" {
        problems.push(format!("input: first line {first:?}, expected \"hello\\n\""));
    }
    write_all(s, b"ack\n");
    let second = read_until(s, "\n", false);
    if second != "partial\n" {
        problems.push(format!("input: second line {second:?}, expected \"partial\\n\""));
    }
    write_all(s, b"bye\n");
    let ok = problems.is_empty();
    log.line(&format!(
        "MEMBER g {} {}",
        if ok { "PASS" } else { "FAIL" },
        problems.join("; ")
    ));
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(if ok { 0 } else { 1 }) }
}

/// C: the session leader whose controlling terminal is the slave.
fn run_c(log: &Log, name: &str, sync_w: i32) -> ! {
    // SAFETY: setsid has no memory effects.
    if unsafe { libc::setsid() } < 0 {
        wl::die("setsid");
    }
    let cname = std::ffi::CString::new(name).unwrap_or_else(|_| wl::die("pts name"));
    // SAFETY: valid C string; no O_NOCTTY: it becomes our terminal.
    let s = unsafe { libc::open(cname.as_ptr(), libc::O_RDWR) };
    if s < 0 {
        wl::die("open slave");
    }
    // SAFETY: TIOCSCTTY takes an int argument.
    unsafe { libc::ioctl(s, libc::TIOCSCTTY, 0) };
    let mut t = tcgetattr(s).unwrap_or_else(|| wl::die("tcgetattr"));
    t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
    t.c_lflag |= libc::ICANON | libc::ISIG;
    t.c_cc[libc::VERASE] = VERASE_MARK;
    t.c_cc[libc::VKILL] = VKILL_MARK;
    // SAFETY: t is a valid termios; ws a valid winsize.
    unsafe {
        if libc::tcsetattr(s, libc::TCSANOW, &t) != 0 {
            wl::die("tcsetattr");
        }
        let ws = libc::winsize {
            ws_row: WS.0,
            ws_col: WS.1,
            ws_xpixel: WS.2,
            ws_ypixel: WS.3,
        };
        if libc::ioctl(s, libc::TIOCSWINSZ, &ws) != 0 {
            wl::die("TIOCSWINSZ");
        }
    }
    let me = wl::getpid();
    let g = fork();
    if g == 0 {
        // SAFETY: setpgid on ourselves.
        unsafe { libc::setpgid(0, 0) };
        run_g(log, s, me);
    }
    // SAFETY: plain calls on our child and our terminal; SIGTTOU is
    // ignored around tcsetpgrp so the (now background) leader may call it.
    unsafe {
        libc::setpgid(g, g);
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        if libc::tcsetpgrp(s, g) != 0 {
            wl::die("tcsetpgrp");
        }
        libc::signal(libc::SIGTTOU, libc::SIG_DFL);
    }
    write_all(s, b"out1\n");
    write_all(sync_w, b"c");
    wait_usr1();
    let mut problems = Vec::new();
    // SAFETY: plain queries.
    let (sid, tsid) = unsafe { (libc::getsid(0), libc::tcgetsid(s)) };
    if sid != me || tsid != me {
        problems.push(format!("session {sid}, terminal's session {tsid}, expected {me}"));
    }
    // SAFETY: plain call.
    unsafe { libc::kill(g, libc::SIGUSR1) };
    let mut st = 0;
    // SAFETY: `st` is a valid out-pointer.
    unsafe { libc::waitpid(g, &mut st, 0) };
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        problems.push(format!("g ended with status {st:#x}"));
    }
    let ok = problems.is_empty();
    log.line(&format!(
        "MEMBER c {} {}",
        if ok { "PASS" } else { "FAIL" },
        problems.join("; ")
    ));
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(if ok { 0 } else { 1 }) }
}

fn open_master() -> i32 {
    // SAFETY: plain call.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    if m < 0 {
        wl::die("posix_openpt");
    }
    m
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let m = open_master();
    let l = open_master();
    // SAFETY: grantpt/unlockpt/ptsname on our master; ptsname's static
    // buffer is copied at once (single-threaded).
    let name = unsafe {
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            wl::die("unlockpt");
        }
        let p = libc::ptsname(m);
        if p.is_null() {
            wl::die("ptsname");
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    // SAFETY: TIOCPKT reads one int.
    if unsafe { libc::ioctl(m, libc::TIOCPKT, &1i32) } != 0 {
        wl::die("TIOCPKT");
    }
    let mut sync = [0i32; 2];
    // SAFETY: `sync` has room for two fds.
    if unsafe { libc::pipe(sync.as_mut_ptr()) } != 0 {
        wl::die("pipe");
    }
    let c = fork();
    if c == 0 {
        run_c(&log, &name, sync[1]);
    }
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into b.
    if unsafe { libc::read(sync[0], b.as_mut_ptr().cast(), 1) } != 1 {
        wl::die("child setup");
    }
    write_all(m, b"hello\npart");
    log.ready();
    if corrupt {
        write_all(m, b"junk\n");
    }
    wait_usr1();

    let mut problems = Vec::new();
    // SAFETY: plain call.
    unsafe { libc::kill(c, libc::SIGUSR1) };
    let out = read_until(m, "ack\r\n", true);
    if out != "out1\r\nack\r\n" {
        problems.push(format!("output: {out:?}, expected \"out1\\r\\nack\\r\\n\""));
    }
    write_all(m, b"ial\n");
    let bye = read_until(m, "bye\r\n", true);
    if bye != "bye\r\n" {
        problems.push(format!("output: {bye:?}, expected \"bye\\r\\n\""));
    }
    let flags = (
        ioctl_int(m, libc::TIOCGPKT),
        ioctl_int(m, libc::TIOCGPTLCK),
        ioctl_int(l, libc::TIOCGPTLCK),
    );
    if flags != (Some(1), Some(0), Some(1)) {
        problems.push(format!(
            "pkt/lock flags {flags:?}, expected packet mode, M unlocked, L locked"
        ));
    }
    let mut st = 0;
    // SAFETY: `st` is a valid out-pointer.
    unsafe { libc::waitpid(c, &mut st, 0) };
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        problems.push(format!("c ended with status {st:#x}"));
    }
    log.verdict(
        &problems,
        "pty pair: termios, winsize, session, foreground group, queued data both ways",
    )
}
