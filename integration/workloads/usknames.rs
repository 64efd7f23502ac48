//! usknames: a connected unix socket keeps the name it bound itself.
//!
//! `usknames --dir D --log F [--corrupt]`
//!
//! P listens on D/srv.sock. Client C1 binds D/cli.sock, C2 binds the
//! abstract name `\0cryo-usk-<pid>`, and both connect to the listener; P
//! accepts A1 and A2. On SIGUSR1 P checks getsockname of C1 and C2 (their
//! own names), getpeername of A1 and A2 (the clients' names, seen from
//! the accepted side), and that data flows both ways on both
//! connections. `--corrupt` closes C1 after READY and opens an unnamed
//! socket at its fd number.

use cryo_integration::wl::{self, Args, Log};

fn unix_socket() -> i32 {
    // SAFETY: integer arguments only.
    let s = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    if s < 0 {
        wl::die("socket");
    }
    s
}

fn addr(name: &[u8]) -> (libc::sockaddr_un, u32) {
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as u16;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    (a, (2 + name.len()) as u32)
}

fn bind(s: i32, name: &[u8]) {
    let (a, len) = addr(name);
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::bind(s, (&a as *const libc::sockaddr_un).cast(), len) } != 0 {
        wl::die("bind");
    }
}

fn connect(s: i32, name: &[u8]) {
    let (a, len) = addr(name);
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::connect(s, (&a as *const libc::sockaddr_un).cast(), len) } != 0 {
        wl::die("connect");
    }
}

/// getsockname (peer = false) or getpeername as raw name bytes.
fn name_of(s: i32, peer: bool) -> Vec<u8> {
    // SAFETY: a zeroed sockaddr_un is valid; the call writes at most `len`.
    unsafe {
        let mut a: libc::sockaddr_un = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as u32;
        let p = (&mut a as *mut libc::sockaddr_un).cast();
        let r = if peer {
            libc::getpeername(s, p, &mut len)
        } else {
            libc::getsockname(s, p, &mut len)
        };
        if r != 0 || len <= 2 {
            return Vec::new();
        }
        let n = len as usize - 2;
        let mut v: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
        if v.first() != Some(&0) {
            while v.last() == Some(&0) {
                v.pop();
            }
        }
        v
    }
}

fn ping(a: i32, b: i32) -> bool {
    let mut buf = [0u8; 4];
    // SAFETY: valid buffers of the given sizes.
    unsafe {
        libc::write(a, b"ping".as_ptr().cast(), 4) == 4
            && libc::read(b, buf.as_mut_ptr().cast(), 4) == 4
            && buf == *b"ping"
    }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let srv = format!("{dir}/srv.sock").into_bytes();
    let cli = format!("{dir}/cli.sock").into_bytes();
    let abs = format!("\0cryo-usk-{}", wl::getpid()).into_bytes();
    let l = unix_socket();
    bind(l, &srv);
    // SAFETY: integer arguments only.
    if unsafe { libc::listen(l, 4) } != 0 {
        wl::die("listen");
    }
    let c1 = unix_socket();
    bind(c1, &cli);
    connect(c1, &srv);
    // SAFETY: accept with no address wanted.
    let a1 = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    let c2 = unix_socket();
    bind(c2, &abs);
    connect(c2, &srv);
    // SAFETY: as above.
    let a2 = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    if a1 < 0 || a2 < 0 {
        wl::die("accept");
    }
    log.ready();
    if corrupt {
        let s = unix_socket();
        // SAFETY: moving a fresh socket onto c1's number.
        unsafe {
            libc::dup2(s, c1);
            libc::close(s);
        }
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let mut problems = Vec::new();
    let show = |v: &[u8]| String::from_utf8_lossy(v).replace('\0', "@");
    for (what, s, peer, want) in [
        ("C1 name", c1, false, &cli),
        ("C2 name", c2, false, &abs),
        ("A1 peer", a1, true, &cli),
        ("A2 peer", a2, true, &abs),
    ] {
        let got = name_of(s, peer);
        if &got != want {
            problems.push(format!("{what}: {:?}, expected {:?}", show(&got), show(want)));
        }
    }
    for (what, x, y) in [
        ("C1->A1", c1, a1),
        ("A1->C1", a1, c1),
        ("C2->A2", c2, a2),
        ("A2->C2", a2, c2),
    ] {
        if !ping(x, y) {
            problems.push(format!("{what}: no data"));
        }
    }
    log.verdict(&problems, "own names of connected clients kept")
}
