//! nlsk: netlink sockets keep their port ids and group memberships and
//! still talk to the kernel.
//!
//! `nlsk --log F [--corrupt]`
//!
//! R: a NETLINK_ROUTE socket bound with groups RTMGRP_LINK and
//! RTMGRP_IPV4_IFADDR, joined to group 33 (above the bind mask) with
//! NETLINK_ADD_MEMBERSHIP, O_NONBLOCK. G: a NETLINK_GENERIC datagram
//! socket bound by the kernel. On SIGUSR1 both port ids and R's
//! memberships (NETLINK_LIST_MEMBERSHIPS) are compared, and R dumps the
//! links (RTM_GETLINK) and must find "lo" in the answer, addressed to its
//! port id. `--corrupt` leaves group 33 after READY.

use cryo_integration::wl::{self, Args, Log};

const SOL_NETLINK: i32 = 270;

fn nl_socket(ty: i32, proto: i32) -> i32 {
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, ty, proto) };
    if fd < 0 {
        wl::die("socket");
    }
    fd
}

fn bind(fd: i32, groups: u32) {
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as u16;
    a.nl_groups = groups;
    // SAFETY: `a` is a valid sockaddr_nl.
    if unsafe {
        libc::bind(
            fd,
            (&a as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    } != 0
    {
        wl::die("bind");
    }
}

fn portid(fd: i32) -> u32 {
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes.
    unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_nl).cast(), &mut len) };
    a.nl_pid
}

fn memberships(fd: i32) -> Vec<u32> {
    let mut w = [0u32; 8];
    let mut len: libc::socklen_t = 32;
    // SAFETY: the kernel writes at most `len` bytes.
    unsafe { libc::getsockopt(fd, SOL_NETLINK, 9, w.as_mut_ptr().cast(), &mut len) };
    let mut v = w[..(len as usize / 4).min(8)].to_vec();
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn membership(fd: i32, op: i32, group: i32) {
    // SAFETY: the kernel reads one int.
    if unsafe { libc::setsockopt(fd, SOL_NETLINK, op, (&group as *const i32).cast(), 4) } != 0 {
        wl::die("membership");
    }
}

/// Sends RTM_GETLINK (dump) and reads the answer; whether "lo" is in it
/// and every message is addressed to `me`.
fn links_have_lo(fd: i32, me: u32) -> Result<(), String> {
    let mut req = Vec::new();
    req.extend_from_slice(&32u32.to_ne_bytes());
    req.extend_from_slice(&(libc::RTM_GETLINK).to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&77u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0u8; 16]); // ifinfomsg
                                       // SAFETY: `req` is readable.
    if unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) } != req.len() as isize {
        return Err(format!("send RTM_GETLINK: errno {}", wl::errno()));
    }
    let mut buf = vec![0u8; 65536];
    let mut all = Vec::new();
    for _ in 0..500 {
        // SAFETY: `buf` is writable.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            wl::sleep_ms(10);
            continue;
        }
        let b = &buf[..n as usize];
        let mut off = 0;
        let mut done = false;
        while off + 16 <= b.len() {
            let len = u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
            let ty = u16::from_ne_bytes([b[off + 4], b[off + 5]]);
            let seq = u32::from_ne_bytes([b[off + 8], b[off + 9], b[off + 10], b[off + 11]]);
            let pid = u32::from_ne_bytes([b[off + 12], b[off + 13], b[off + 14], b[off + 15]]);
            if len < 16 {
                break;
            }
            if seq == 77 && pid != me {
                return Err(format!("an answer is addressed to port id {pid}, not {me}"));
            }
            if ty == libc::NLMSG_DONE as u16 {
                done = true;
            }
            all.extend_from_slice(&b[off..(off + len).min(b.len())]);
            off += (len + 3) & !3;
        }
        if done {
            return if all.windows(3).any(|w| w == b"lo\0") {
                Ok(())
            } else {
                Err("no \"lo\" in the link dump".into())
            };
        }
    }
    Err("no complete answer to RTM_GETLINK".into())
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let r = nl_socket(libc::SOCK_RAW, libc::NETLINK_ROUTE);
    bind(r, (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR) as u32);
    membership(r, 1, 33);
    // SAFETY: plain integer arguments.
    unsafe { libc::fcntl(r, libc::F_SETFL, libc::O_NONBLOCK) };
    let g = nl_socket(libc::SOCK_DGRAM, libc::NETLINK_GENERIC);
    bind(g, 0);
    let (rp, gp, rm) = (portid(r), portid(g), memberships(r));
    log.line(&format!("NETLINK R={rp} G={gp} groups={rm:x?}"));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        membership(r, 2, 33);
    }
    let mut pr = Vec::new();
    if portid(r) != rp || portid(g) != gp {
        pr.push(format!("port ids R={} G={}, were {rp} {gp}", portid(r), portid(g)));
    }
    if memberships(r) != rm {
        pr.push(format!("R groups {:x?}, were {rm:x?}", memberships(r)));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::fcntl(r, libc::F_GETFL) } & libc::O_NONBLOCK == 0 {
        pr.push("R lost O_NONBLOCK".into());
    }
    if let Err(e) = links_have_lo(r, rp) {
        pr.push(format!("R: {e}"));
    }
    log.verdict(&pr, &format!("R={rp} G={gp} groups={rm:x?}"));
}
