//! scmrights: descriptors in flight (SCM_RIGHTS) in unix socket queues.
//!
//! `scmrights --dir D --log F [--corrupt]`
//!
//! P queues on a datagram socketpair (unread): "file" carrying a regular
//! file D/f.dat (offset 5) and the read end of a pipe whose write end P
//! keeps; "none" without descriptors; "dup" carrying the same description
//! of f.dat again. On a stream socketpair: "abc" carrying an eventfd with
//! count 7. P then closes its own copies of the file, the pipe read end and
//! the eventfd: they exist only in flight. On SIGUSR1 P receives
//! everything and checks the data and descriptors: f.dat reads from
//! offset 5; the pipe gets what P writes to its write end; the two f.dat
//! descriptors share one offset; the eventfd reads 7. `--corrupt`
//! receives (and drops) the first datagram after READY.

use cryo_integration::wl::{self, Args, Log};

const CONTENT: &[u8] = b"0123456789abcdef";

fn socketpair(ty: i32) -> (i32, i32) {
    let mut sv = [0i32; 2];
    // SAFETY: sv has room for two fds.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, sv.as_mut_ptr()) } != 0 {
        wl::die("socketpair");
    }
    (sv[0], sv[1])
}

/// sendmsg of `data` with `fds` attached.
fn send(s: i32, data: &[u8], fds: &[i32]) {
    // SAFETY: msghdr built over valid buffers: one iovec, and a control
    // buffer sized by CMSG_SPACE for the fds.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let bytes = std::mem::size_of_val(fds) as u32;
        let mut ctl = vec![0u8; libc::CMSG_SPACE(bytes) as usize];
        if !fds.is_empty() {
            msg.msg_control = ctl.as_mut_ptr().cast();
            msg.msg_controllen = ctl.len();
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        if libc::sendmsg(s, &msg, 0) != data.len() as isize {
            wl::die("sendmsg");
        }
    }
}

/// recvmsg (non-blocking): the data and the descriptors received.
fn recv(s: i32) -> Option<(Vec<u8>, Vec<i32>)> {
    let mut buf = [0u8; 256];
    // SAFETY: msghdr over valid buffers; the kernel writes at most their
    // sizes; the received fds are read from the control buffer it filled.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut ctl = vec![0u8; libc::CMSG_SPACE(64) as usize];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.as_mut_ptr().cast();
        msg.msg_controllen = ctl.len();
        let n = libc::recvmsg(s, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return None;
        }
        let mut fds = Vec::new();
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let k = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                let p = libc::CMSG_DATA(c).cast::<i32>();
                for i in 0..k {
                    fds.push(*p.add(i));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Some((buf[..n as usize].to_vec(), fds))
    }
}

fn read_some(fd: i32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: reads at most n bytes into b.
    let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), n) };
    b.truncate(r.max(0) as usize);
    b
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let dir = args.required("dir");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let path = std::ffi::CString::new(format!("{dir}/f.dat")).unwrap_or_else(|_| wl::die("path"));
    // SAFETY: valid C string; plain fd calls.
    let (file, pr, pw, efd) = unsafe {
        let f = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o600);
        if f < 0 || libc::write(f, CONTENT.as_ptr().cast(), CONTENT.len()) != CONTENT.len() as isize {
            wl::die("f.dat");
        }
        libc::lseek(f, 5, libc::SEEK_SET);
        let mut p = [0i32; 2];
        if libc::pipe(p.as_mut_ptr()) != 0 {
            wl::die("pipe");
        }
        let e = libc::eventfd(7, 0);
        if e < 0 {
            wl::die("eventfd");
        }
        (f, p[0], p[1], e)
    };
    let (d0, d1) = socketpair(libc::SOCK_DGRAM);
    let (t0, t1) = socketpair(libc::SOCK_STREAM);
    send(d0, b"file", &[file, pr]);
    send(d0, b"none", &[]);
    send(d0, b"dup", &[file]);
    send(t0, b"abc", &[efd]);
    // SAFETY: closing our own copies; they live on in flight.
    unsafe {
        libc::close(file);
        libc::close(pr);
        libc::close(efd);
    }
    log.ready();
    if corrupt {
        if let Some((_, fds)) = recv(d1) {
            for f in fds {
                // SAFETY: closing fds we received.
                unsafe { libc::close(f) };
            }
        }
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    let mut problems = Vec::new();
    let got = [recv(d1), recv(d1), recv(d1), recv(t1)];
    let shape: Vec<(String, usize)> = got
        .iter()
        .map(|m| {
            m.as_ref().map_or(("-".into(), 0), |(d, f)| {
                (String::from_utf8_lossy(d).into_owned(), f.len())
            })
        })
        .collect();
    let want = [("file", 2), ("none", 0), ("dup", 1), ("abc", 1)];
    if shape.iter().map(|(d, n)| (d.as_str(), *n)).collect::<Vec<_>>() != want {
        problems.push(format!("messages {shape:?}, expected {want:?}"));
    } else {
        let f1 = got[0].as_ref().map_or(-1, |m| m.1[0]);
        let p1 = got[0].as_ref().map_or(-1, |m| m.1[1]);
        let f3 = got[2].as_ref().map_or(-1, |m| m.1[0]);
        let e4 = got[3].as_ref().map_or(-1, |m| m.1[0]);
        let r = read_some(f1, 3);
        if r != CONTENT[5..8] {
            problems.push(format!("file: read {:?} at its offset", String::from_utf8_lossy(&r)));
        }
        // SAFETY: plain fd calls.
        let off3 = unsafe { libc::lseek(f3, 0, libc::SEEK_CUR) };
        if off3 != 8 {
            problems.push(format!(
                "dup: offset {off3}, expected 8 (one description with the first)"
            ));
        }
        // SAFETY: writes 2 bytes from a valid buffer.
        unsafe { libc::write(pw, b"zz".as_ptr().cast(), 2) };
        let r = read_some(p1, 2);
        if r != b"zz" {
            problems.push(format!("pipe: read {r:?}"));
        }
        let r = read_some(e4, 8);
        if r.len() != 8 || u64::from_ne_bytes(r.clone().try_into().unwrap_or([0; 8])) != 7 {
            problems.push(format!("eventfd: read {r:?}"));
        }
    }
    log.verdict(&problems, "descriptors in flight: file (shared), pipe, eventfd")
}
