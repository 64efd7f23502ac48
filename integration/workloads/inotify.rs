//! inotify: an inotify instance keeps its watches, their numbers and
//! masks.
//!
//! `inotify --log F --dir D [--corrupt]`
//!
//! It watches D (IN_CREATE | IN_DELETE, wd 1) and D/a (IN_MODIFY, wd 2),
//! adds and removes a watch on D/tmp (wd 3, a gap), watches D/b
//! (IN_MODIFY | IN_ONESHOT, wd 4), and reads away every queued event. On
//! SIGUSR1 it checks that no event is queued, that /proc/self/fdinfo
//! lists wds 1, 2, 4 with their masks, then creates D/new, writes D/a and
//! D/b and expects exactly those three events under wds 1, 2 and 4.
//! `--corrupt` removes watch 2 after the dump.

use cryo_integration::wl::{self, Args, Log};
use std::ffi::CString;

fn add(fd: i32, path: &str, mask: u32) -> i32 {
    let c = CString::new(path).unwrap_or_else(|_| wl::die("path"));
    // SAFETY: `c` is NUL-terminated.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    if wd < 0 {
        wl::die(&format!("inotify_add_watch {path}"));
    }
    wd
}

/// Reads every queued event as (wd, mask, name).
fn events(fd: i32) -> Vec<(i32, u32, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        let mut at = 0usize;
        while at + 16 <= n as usize {
            let wd = i32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            let name = String::from_utf8_lossy(&buf[at + 16..at + 16 + len])
                .trim_end_matches('\0')
                .to_string();
            out.push((wd, mask, name));
            at += 16 + len;
        }
    }
}

fn touch(path: &str, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|_| wl::die(&format!("open {path}")));
    f.write_all(data).unwrap_or_else(|_| wl::die("write"));
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let p = |n: &str| format!("{dir}/{n}");
    for n in ["a", "b", "tmp"] {
        touch(&p(n), b"x");
    }
    // SAFETY: integer argument.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK) };
    if fd < 0 {
        wl::die("inotify_init1");
    }
    let w1 = add(fd, &dir, libc::IN_CREATE | libc::IN_DELETE);
    let w2 = add(fd, &p("a"), libc::IN_MODIFY);
    let w3 = add(fd, &p("tmp"), libc::IN_ATTRIB);
    // SAFETY: integer arguments.
    unsafe { libc::inotify_rm_watch(fd, w3) };
    let w4 = add(fd, &p("b"), libc::IN_MODIFY | libc::IN_ONESHOT);
    if (w1, w2, w3, w4) != (1, 2, 3, 4) {
        wl::die(&format!("unexpected wds {w1} {w2} {w3} {w4}"));
    }
    let _ = events(fd);
    log.line(&format!("FDS inotify={fd}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        // SAFETY: integer arguments.
        unsafe { libc::inotify_rm_watch(fd, w2) };
        let _ = events(fd);
    }
    let mut pr = Vec::new();
    let early = events(fd);
    if !early.is_empty() {
        pr.push(format!("events queued before any change: {early:?}"));
    }
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let mut wds: Vec<String> = info
        .lines()
        .filter_map(|l| l.strip_prefix("inotify "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!(
                "{} {}",
                f[0],
                f.iter().find(|x| x.starts_with("mask:")).copied().unwrap_or("?")
            )
        })
        .collect();
    wds.sort();
    let want = [
        format!("wd:1 mask:{:x}", libc::IN_CREATE | libc::IN_DELETE),
        format!("wd:2 mask:{:x}", libc::IN_MODIFY),
        format!("wd:4 mask:{:x}", libc::IN_MODIFY | libc::IN_ONESHOT),
    ];
    if wds != want {
        pr.push(format!("watches {wds:?}, expected {want:?}"));
    }
    touch(&p("new"), b"");
    touch(&p("a"), b"more");
    touch(&p("b"), b"more");
    let got: Vec<(i32, u32)> = events(fd).into_iter().map(|(w, m, _)| (w, m)).collect();
    let want = vec![
        (1, libc::IN_CREATE),
        (2, libc::IN_MODIFY),
        (4, libc::IN_MODIFY),
        (4, libc::IN_IGNORED),
    ];
    if got != want {
        pr.push(format!("events {got:?}, expected {want:?}"));
    }
    log.verdict(&pr, &format!("inotify={fd}"));
}
