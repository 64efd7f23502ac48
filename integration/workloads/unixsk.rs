//! unixsk: unix sockets keep their connections, queued data (both
//! directions, message boundaries), names, listeners, shutdowns, options
//! and flags.
//!
//! `unixsk --log F --dir D [--corrupt]`
//!
//! The parent P sets up, then forks C1 and C2:
//! - stream socketpair S: P holds s2 (O_NONBLOCK), C1 holds s1; 5000
//!   bytes queued towards s1 and 3000 towards s2;
//! - datagram socketpair G (g2 in P with SO_RCVBUF 50000, g1 in C1):
//!   three datagrams of different sizes each way;
//! - seqpacket socketpair Q (q2 in P, q1 in C1): two messages each way;
//! - a stream listener on `D/listen.sock` and a seqpacket listener on an
//!   abstract name, both in P;
//! - a connection through the path listener: the client c in C2, the
//!   accepted socket a in P, "to-c2" queued towards c, "hello" towards a;
//! - a datagram socket bound to `D/dgram.sock` (P) with two datagrams
//!   queued by a sender that is gone;
//! - a stream pair H whose h1 sent "bye", shut down writing and closed
//!   (h2 in P sees "bye", then EOF);
//! - a client k (P) waiting, not accepted, in the backlog of a listener
//!   on the abstract name `@cryo-pending-<pid>` (P).
//!
//! On SIGUSR1 P checks every queue byte for byte and then that it is
//! empty, names with getsockname, that the listeners accept new
//! connections, that the waiting client is accepted and connected, the
//! options and flags; then C1 checks its queues and answers through each
//! pair, C2 likewise through c; P reads the answers. `--corrupt` reads one
//! byte of s2's queue after the dump.

use cryo_integration::wl::{self, Args, Log};

const S_TO_C1: usize = 5000;
const S_TO_P: usize = 3000;

fn pat(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 17 + seed * 29) % 251) as u8).collect()
}

fn socketpair(ty: i32) -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) } != 0 {
        wl::die("socketpair");
    }
    (fds[0], fds[1])
}

fn socket(ty: i32) -> i32 {
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty, 0) };
    if fd < 0 {
        wl::die("socket");
    }
    fd
}

/// A sockaddr_un for `name` (a leading NUL makes it abstract).
fn addr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in name.iter().enumerate() {
        a.sun_path[i] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len() + usize::from(name.first() != Some(&0));
    (a, len as libc::socklen_t)
}

fn bind(fd: i32, name: &[u8]) {
    let (a, len) = addr(name);
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) } != 0 {
        wl::die("bind");
    }
}

fn connect(fd: i32, name: &[u8]) -> i32 {
    let (a, len) = addr(name);
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) }
}

fn listen(fd: i32, backlog: i32) {
    // SAFETY: integer arguments.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        wl::die("listen");
    }
}

fn accept(fd: i32) -> i32 {
    // SAFETY: null address pointers are allowed.
    unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK) }
}

fn send(fd: i32, b: &[u8]) {
    let mut at = 0;
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(fd, b[at..].as_ptr().cast(), b.len() - at, 0) };
        if n < 0 {
            wl::die(&format!("send on fd {fd}"));
        }
        at += n as usize;
        if at >= b.len() {
            break;
        }
    }
}

/// One recv with MSG_DONTWAIT: Ok(bytes) or Err(errno).
fn recv(fd: i32, n: usize) -> Result<Vec<u8>, i32> {
    let mut b = vec![0u8; n];
    // SAFETY: `b` is writable for n bytes.
    let got = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), n, libc::MSG_DONTWAIT) };
    if got < 0 {
        return Err(wl::errno());
    }
    b.truncate(got as usize);
    Ok(b)
}

/// Reads exactly n stream bytes (stops early on EOF/EAGAIN).
fn recv_full(fd: i32, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        match recv(fd, n - out.len()) {
            Ok(b) if b.is_empty() => break,
            Ok(b) => out.extend_from_slice(&b),
            Err(e) if e == libc::EINTR => continue,
            Err(_) => break,
        }
    }
    out
}

fn sockname(fd: i32) -> Vec<u8> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `a` is writable for `len` bytes.
    if unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut len) } != 0 {
        return b"?".to_vec();
    }
    let n = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let mut v: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
    if v.first() != Some(&0) {
        while v.last() == Some(&0) {
            v.pop();
        }
    }
    v
}

fn getsockopt(fd: i32, name: i32) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: `v` is writable for 4 bytes.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    v
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

fn expect(pr: &mut Vec<String>, what: &str, got: Result<Vec<u8>, i32>, want: &[u8]) {
    match got {
        Ok(b) if b == want => {}
        Ok(b) => pr.push(format!(
            "{what}: got {} bytes {:?}.., expected {} bytes",
            b.len(),
            &b[..b.len().min(8)],
            want.len()
        )),
        Err(e) => pr.push(format!("{what}: errno {e}, expected {} bytes", want.len())),
    }
}

fn expect_empty(pr: &mut Vec<String>, what: &str, fd: i32) {
    match recv(fd, 64) {
        Err(e) if e == libc::EAGAIN => {}
        other => pr.push(format!("{what}: queue should be empty, recv gave {other:?}")),
    }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let pid = wl::getpid();
    let path = |n: &str| format!("{dir}/{n}").into_bytes();
    let abs = |n: &str| {
        let mut v = vec![0u8];
        v.extend_from_slice(format!("{n}-{pid}").as_bytes());
        v
    };

    let (s1, s2) = socketpair(libc::SOCK_STREAM);
    send(s2, &pat(S_TO_C1, 1));
    send(s1, &pat(S_TO_P, 2));
    let (g1, g2) = socketpair(libc::SOCK_DGRAM);
    let to_g1 = [pat(10, 3), pat(1000, 4), pat(1, 5)];
    let to_g2 = [pat(7, 6), pat(300, 7), pat(2048, 8)];
    for m in &to_g1 {
        send(g2, m);
    }
    for m in &to_g2 {
        send(g1, m);
    }
    let rcvbuf = 50000;
    // SAFETY: the option value is a valid int.
    unsafe { libc::setsockopt(g2, libc::SOL_SOCKET, libc::SO_RCVBUF, (&rcvbuf as *const i32).cast(), 4) };
    let g2_rcvbuf = getsockopt(g2, libc::SO_RCVBUF);
    let (q1, q2) = socketpair(libc::SOCK_SEQPACKET);
    let to_q1 = [pat(50, 9), pat(60, 10)];
    let to_q2 = [pat(70, 11), pat(80, 12)];
    for m in &to_q1 {
        send(q2, m);
    }
    for m in &to_q2 {
        send(q1, m);
    }
    let lpath = path("listen.sock");
    let l = socket(libc::SOCK_STREAM);
    bind(l, &lpath);
    listen(l, 7);
    let labs = abs("cryo-seqlisten");
    let la = socket(libc::SOCK_SEQPACKET);
    bind(la, &labs);
    listen(la, 3);
    let c = socket(libc::SOCK_STREAM);
    if connect(c, &lpath) != 0 {
        wl::die("connect to listen.sock");
    }
    let a = accept(l);
    if a < 0 {
        wl::die("accept");
    }
    send(a, b"to-c2");
    send(c, b"hello");
    let dpath = path("dgram.sock");
    let d = socket(libc::SOCK_DGRAM);
    bind(d, &dpath);
    let tmp = socket(libc::SOCK_DGRAM);
    if connect(tmp, &dpath) != 0 {
        wl::die("connect to dgram.sock");
    }
    send(tmp, b"first datagram");
    send(tmp, b"second");
    close(&[tmp]);
    let (h1, h2) = socketpair(libc::SOCK_STREAM);
    send(h1, b"bye");
    // SAFETY: shutdown of our own socket.
    unsafe { libc::shutdown(h1, libc::SHUT_WR) };
    close(&[h1]);
    let pname = abs("cryo-pending");
    let pl = socket(libc::SOCK_STREAM);
    bind(pl, &pname);
    listen(pl, 4);
    let k = socket(libc::SOCK_STREAM);
    if connect(k, &pname) != 0 {
        wl::die("connect to the pending listener");
    }
    // SAFETY: F_SETFL with an integer flag.
    unsafe { libc::fcntl(s2, libc::F_SETFL, libc::O_NONBLOCK) };

    let c1 = fork();
    if c1 == 0 {
        close(&[s2, g2, q2, l, la, c, a, d, h2, pl, k]);
        idle();
        let mut pr = Vec::new();
        expect(&mut pr, "s1", Ok(recv_full(s1, S_TO_C1)), &pat(S_TO_C1, 1));
        expect_empty(&mut pr, "s1", s1);
        for (i, m) in to_g1.iter().enumerate() {
            expect(&mut pr, &format!("g1 datagram {i}"), recv(g1, 4096), m);
        }
        expect_empty(&mut pr, "g1", g1);
        for (i, m) in to_q1.iter().enumerate() {
            expect(&mut pr, &format!("q1 message {i}"), recv(q1, 4096), m);
        }
        expect_empty(&mut pr, "q1", q1);
        send(s1, b"c1-stream");
        send(g1, b"c1-dgram");
        send(q1, b"c1-seq");
        member_exit(&log, "c1", &pr);
    }
    let c2 = fork();
    if c2 == 0 {
        close(&[s1, s2, g1, g2, q1, q2, l, la, a, d, h2, pl, k]);
        idle();
        let mut pr = Vec::new();
        expect(&mut pr, "c", Ok(recv_full(c, 5)), b"to-c2");
        expect_empty(&mut pr, "c", c);
        send(c, b"c2-answer");
        member_exit(&log, "c2", &pr);
    }
    close(&[s1, g1, q1, c]);
    let table = format!("s2={s2} g2={g2} q2={q2} l={l} la={la} a={a} d={d} h2={h2} pl={pl} k={k}");
    log.line(&format!("FDS {table} c1={c1} c2={c2}"));
    log.ready();
    idle();

    let mut pr = Vec::new();
    if corrupt {
        let _ = recv(s2, 1);
    }
    // SAFETY: F_GETFL takes no argument.
    if unsafe { libc::fcntl(s2, libc::F_GETFL) } & libc::O_NONBLOCK == 0 {
        pr.push("s2 lost O_NONBLOCK".into());
    }
    expect(&mut pr, "s2", Ok(recv_full(s2, S_TO_P)), &pat(S_TO_P, 2));
    expect_empty(&mut pr, "s2", s2);
    for (i, m) in to_g2.iter().enumerate() {
        expect(&mut pr, &format!("g2 datagram {i}"), recv(g2, 4096), m);
    }
    expect_empty(&mut pr, "g2", g2);
    let rb = getsockopt(g2, libc::SO_RCVBUF);
    if rb != g2_rcvbuf {
        pr.push(format!("g2 SO_RCVBUF {rb}, expected {g2_rcvbuf}"));
    }
    for (i, m) in to_q2.iter().enumerate() {
        expect(&mut pr, &format!("q2 message {i}"), recv(q2, 4096), m);
    }
    expect_empty(&mut pr, "q2", q2);
    expect(&mut pr, "a", Ok(recv_full(a, 5)), b"hello");
    expect(&mut pr, "d datagram 0", recv(d, 100), b"first datagram");
    expect(&mut pr, "d datagram 1", recv(d, 100), b"second");
    expect_empty(&mut pr, "d", d);
    expect(&mut pr, "h2", Ok(recv_full(h2, 3)), b"bye");
    expect(&mut pr, "h2 after bye (EOF)", recv(h2, 16), b"");
    for (what, fd, name) in [
        ("l", l, &lpath),
        ("la", la, &labs),
        ("d", d, &dpath),
        ("pl", pl, &pname),
    ] {
        let got = sockname(fd);
        if &got != name {
            pr.push(format!(
                "{what} is bound to {:?}, expected {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(name)
            ));
        }
    }
    // The listeners still take connections.
    for (what, ty, fd, name) in [
        ("l", libc::SOCK_STREAM, l, &lpath),
        ("la", libc::SOCK_SEQPACKET, la, &labs),
    ] {
        let cl = socket(ty);
        if connect(cl, name) != 0 {
            pr.push(format!("connect to {what}: errno {}", wl::errno()));
            continue;
        }
        let acc = accept(fd);
        if acc < 0 {
            pr.push(format!("accept on {what}: errno {}", wl::errno()));
            continue;
        }
        send(cl, b"x");
        expect(&mut pr, &format!("{what} new connection"), Ok(recv_full(acc, 1)), b"x");
        close(&[cl, acc]);
    }
    // The waiting client is accepted now, and connected.
    // SAFETY: F_SETFL with an integer flag (never block on a lost backlog).
    unsafe { libc::fcntl(pl, libc::F_SETFL, libc::O_NONBLOCK) };
    let acc = accept(pl);
    if acc < 0 {
        pr.push(format!("the waiting connection is gone (accept errno {})", wl::errno()));
    } else {
        send(k, b"late");
        expect(&mut pr, "waiting connection", Ok(recv_full(acc, 4)), b"late");
        send(acc, b"back");
        expect(&mut pr, "waiting connection back", Ok(recv_full(k, 4)), b"back");
    }

    for ch in [c1, c2] {
        // SAFETY: sending a signal has no memory effects.
        unsafe { libc::kill(ch, libc::SIGUSR1) };
        if let Err(e) = wait_child(ch) {
            pr.push(e);
        }
    }
    expect(&mut pr, "answer on s2", Ok(recv_full(s2, 9)), b"c1-stream");
    expect(&mut pr, "answer on g2", recv(g2, 64), b"c1-dgram");
    expect(&mut pr, "answer on q2", recv(q2, 64), b"c1-seq");
    expect(&mut pr, "answer on a", Ok(recv_full(a, 9)), b"c2-answer");
    log.verdict(&pr, &table);
}
