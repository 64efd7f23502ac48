//! ttyraw: a full-screen-like program that puts its terminal in raw mode.
//!
//! `ttyraw --log F [--corrupt] [--key K] [--rows R --cols C] [--expect-winch]`
//!
//! Runs on a terminal (fd 0, as a job under a shell or as a tmux pane's
//! command). It saves the terminal's termios, switches to raw mode the way
//! `vi` or `top` do (no ICANON, ECHO, ISIG, IEXTEN, IXON, ICRNL; VMIN 1,
//! VTIME 0) plus a marker (VINTR = ^G), counts SIGWINCH, writes READY and
//! idles. On SIGUSR1 it checks: the termios is still the raw one it set;
//! the key K (default `x`) that the test typed *without* Enter is readable
//! at once (a cooked terminal would hold it back until a newline); with
//! `--rows/--cols`, TIOCGWINSZ gives that size; with `--expect-winch`, at
//! least one SIGWINCH arrived (the window size changed under it). It
//! prints its verdict on the terminal too, puts the saved termios back
//! (as a well-behaved program does on exit), and exits. `--corrupt` puts
//! the cooked termios back right after READY, so the checks must FAIL.

use std::sync::atomic::{AtomicU32, Ordering};

use cryo_integration::wl::{self, Args, Log};

static WINCH: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_winch(_sig: libc::c_int) {
    WINCH.fetch_add(1, Ordering::SeqCst);
}

fn tcgetattr(fd: i32) -> Option<libc::termios> {
    // SAFETY: a zeroed termios is a valid plain C value; tcgetattr only
    // writes into it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then_some(t)
    }
}

fn tcsetattr(fd: i32, t: &libc::termios) -> bool {
    // SAFETY: `t` is a valid termios the call only reads.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) == 0 }
}

fn winsize(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0).then_some((ws.ws_row, ws.ws_col))
    }
}

fn say(msg: &str) {
    let line = format!("{msg}\r\n");
    // SAFETY: the buffer is valid for its length.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
}

const RAW_LFLAG_OFF: libc::tcflag_t = libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN;
const RAW_IFLAG_OFF: libc::tcflag_t = libc::IXON | libc::ICRNL;
const MARK_VINTR: u8 = 0x07;

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    let key = args.value("key").unwrap_or_else(|| "x".into());
    let want_ws = match (args.value("rows"), args.value("cols")) {
        (Some(r), Some(c)) => Some((
            r.parse::<u16>().unwrap_or_else(|_| wl::die("--rows")),
            c.parse::<u16>().unwrap_or_else(|_| wl::die("--cols")),
        )),
        _ => None,
    };
    let expect_winch = args.flag("expect-winch");
    wl::install_usr1();
    // SAFETY: the handler only does an atomic add (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_winch as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGWINCH, &sa, std::ptr::null_mut()) != 0 {
            wl::die("sigaction(SIGWINCH)");
        }
    }
    let cooked = tcgetattr(0).unwrap_or_else(|| wl::die("fd 0 is not a terminal"));
    let mut raw = cooked;
    raw.c_lflag &= !RAW_LFLAG_OFF;
    raw.c_iflag &= !RAW_IFLAG_OFF;
    raw.c_cc[libc::VMIN] = 1;
    raw.c_cc[libc::VTIME] = 0;
    raw.c_cc[libc::VINTR] = MARK_VINTR;
    if !tcsetattr(0, &raw) {
        wl::die("tcsetattr raw");
    }
    say("ttyraw: raw mode on, waiting");
    log.ready();
    if corrupt {
        tcsetattr(0, &cooked);
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(20);
    }

    let mut problems = Vec::new();
    match tcgetattr(0) {
        None => problems.push("termios: tcgetattr failed".to_string()),
        Some(t) => {
            if t.c_lflag & RAW_LFLAG_OFF != 0 {
                problems.push(format!(
                    "termios: lflag {:#o} has cooked bits {:#o}",
                    t.c_lflag,
                    t.c_lflag & RAW_LFLAG_OFF
                ));
            }
            if t.c_iflag & RAW_IFLAG_OFF != 0 {
                problems.push(format!("termios: iflag {:#o} has IXON/ICRNL", t.c_iflag));
            }
            let cc = (t.c_cc[libc::VMIN], t.c_cc[libc::VTIME], t.c_cc[libc::VINTR]);
            if cc != (1, 0, MARK_VINTR) {
                problems.push(format!("termios: VMIN/VTIME/VINTR {cc:?}, expected (1, 0, 7)"));
            }
        }
    }
    // The key typed without Enter: readable now only in raw mode.
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 3000) };
    if r == 1 {
        let mut buf = [0u8; 64];
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        let got = if n > 0 {
            String::from_utf8_lossy(&buf[..n as usize]).into_owned()
        } else {
            String::new()
        };
        if got != key {
            problems.push(format!("key: read {got:?}, expected {key:?}"));
        }
    } else {
        problems.push(format!(
            "key: {key:?} typed without Enter is not readable (cooked terminal?)"
        ));
    }
    let ws = winsize(0);
    if let Some(w) = want_ws {
        if ws != Some(w) {
            problems.push(format!("winsize: {ws:?}, expected {w:?}"));
        }
    }
    let winch = WINCH.load(Ordering::SeqCst);
    if expect_winch && winch == 0 {
        problems.push("winch: no SIGWINCH after the window size changed".to_string());
    }
    let details = format!(
        "raw termios, key {key:?} read at once, ws={}x{} winch={winch}",
        ws.map(|w| w.0).unwrap_or(0),
        ws.map(|w| w.1).unwrap_or(0)
    );
    say(&if problems.is_empty() {
        format!("ttyraw PASS {details}")
    } else {
        format!("ttyraw FAIL {}", problems.join("; "))
    });
    tcsetattr(0, &cooked);
    log.verdict(&problems, &details)
}
