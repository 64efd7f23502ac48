//! Established TCP connections with TCP_REPAIR (kernel-mechanics.md §5.4).
//!
//! Dump (on a pidfd_getfd duplicate, after the connection is locked): the
//! socket goes into repair mode and stays there, so that when the dumped
//! tree is killed the kernel closes it without a FIN or a reset. For each
//! queue, TCP_REPAIR_QUEUE selects it, TCP_QUEUE_SEQ gives its sequence
//! number and `recv(MSG_PEEK)` its bytes (the send queue: sent-not-acked,
//! then unsent, SIOCOUTQNSD long); TCP_INFO gives the negotiated options,
//! TCP_MAXSEG the MSS, TCP_TIMESTAMP the timestamp clock and
//! TCP_REPAIR_WINDOW the windows. All of it goes to tcp-stream-<ino>.img.
//!
//! Restore: a fresh socket in repair mode gets both queue sequence numbers
//! (the start of each queue), is bound and connected (no handshake in
//! repair mode), gets the options, the timestamp, the received bytes into
//! its receive queue and the sent-not-acked bytes into its send queue,
//! then the windows. Repair goes off, and the unsent bytes are sent the
//! ordinary way, only at the end of the task's restore ([`finish`]), so
//! that a failed restore closes the socket silently. The peer sees none of
//! this until the lock is lifted.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{bail, Context, Result};

use crate::image::{pb, ImageWriter, Kind};
use crate::sys::{fdops, sock};

const SOL_TCP: i32 = libc::SOL_TCP;
const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
pub const TCPI_OPT_SACK: u32 = 2;
pub const TCPI_OPT_WSCALE: u32 = 4;
const SIOCINQ: u64 = 0x541B;
const SIOCOUTQ: u64 = 0x5411;
const SIOCOUTQNSD: u64 = 0x894B;

/// The TCP state numbers of the kernel.
pub const ESTABLISHED: u32 = 1;
pub const FIN_WAIT1: u32 = 4;
pub const FIN_WAIT2: u32 = 5;
pub const CLOSE: u32 = 7;
pub const CLOSE_WAIT: u32 = 8;
pub const LAST_ACK: u32 = 9;
pub const LISTEN: u32 = 10;
pub const CLOSING: u32 = 11;

/// This side sent its FIN (it shut down writing).
pub fn fin_sent(state: u32) -> bool {
    matches!(state, FIN_WAIT1 | FIN_WAIT2 | LAST_ACK | CLOSING)
}

/// The peer's FIN arrived (reads end after the queue).
pub fn fin_received(state: u32) -> bool {
    matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// Our FIN is not acked yet: SIOCOUTQ counts it.
fn fin_in_outq(state: u32) -> bool {
    matches!(state, FIN_WAIT1 | LAST_ACK | CLOSING)
}

/// A connection state cryo dumps with its stream: established or
/// half-closed either way.
pub fn connected(state: u32) -> bool {
    state == ESTABLISHED || fin_sent(state) || fin_received(state)
}

/// One connection's repair state and queues.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// The TCP state (inet_sk_entry.state; not in the stream image).
    pub state: u32,
    pub e: pb::TcpStreamEntry,
    /// Received, not yet read.
    pub inq: Vec<u8>,
    /// The send queue: sent-not-acked, then `unsq_len` unsent bytes.
    pub outq: Vec<u8>,
}

/// The image name of the stream of socket inode `ino`.
pub fn image_name(ino: u32) -> String {
    format!("tcp-stream-{ino:x}.img")
}

/// tcp_info's state, options and window scales (bytes 0, 5 and 6).
pub fn info_fields(info: &[u8]) -> Option<(u32, u32, u32, u32)> {
    if info.len() < 7 {
        return None;
    }
    Some((
        u32::from(info[0]),
        u32::from(info[5]),
        u32::from(info[6] & 0xf),
        u32::from(info[6] >> 4),
    ))
}

fn tcp_info(fd: BorrowedFd) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = sock::getsockopt_buf(fd, SOL_TCP, libc::TCP_INFO, &mut buf).context("TCP_INFO")?;
    buf.truncate(n);
    Ok(buf)
}

/// The state of a TCP socket (TCP_INFO).
pub fn state(fd: BorrowedFd) -> Result<u32> {
    let info = tcp_info(fd)?;
    Ok(info_fields(&info).context("short TCP_INFO")?.0)
}

fn set(fd: BorrowedFd, name: i32, v: i32, what: &str) -> Result<()> {
    fdops::setsockopt_int(fd, SOL_TCP, name, v).with_context(|| format!("setsockopt {what}"))
}

/// Puts a socket into repair mode, or takes it out.
pub fn repair(fd: BorrowedFd, on: bool) -> Result<()> {
    set(fd, TCP_REPAIR, i32::from(on), "TCP_REPAIR")
}

fn peek_queue(fd: BorrowedFd, queue: i32, len: usize) -> Result<(u32, Vec<u8>)> {
    set(fd, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
    let seq = fdops::getsockopt_int(fd, SOL_TCP, TCP_QUEUE_SEQ).context("TCP_QUEUE_SEQ")? as u32;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    if len > 0 {
        got = sock::recv(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT).context("recv(MSG_PEEK)")?;
    }
    if got != len {
        bail!("the queue has {len} bytes but {got} could be read");
    }
    Ok((seq, buf))
}

/// Reads the state of an established connection; `fd` must be in repair
/// mode already.
pub fn dump(fd: BorrowedFd) -> Result<Stream> {
    let info = tcp_info(fd)?;
    let (st, opts, snd_ws, rcv_ws) = info_fields(&info).context("short TCP_INFO")?;
    if !connected(st) {
        bail!("it is in TCP state {st}, which cryo cannot repair");
    }
    // An unacked FIN of ours is counted in both send queue figures (it
    // is the last thing queued), but it is no data.
    let fin = usize::from(fin_in_outq(st));
    // Segments that passed the lock just before it closed may still be
    // processed: read until two rounds agree.
    let mut last = None;
    let mut rounds = 0;
    let (inq_seq, inq, outq_seq, outq, unsq_len) = loop {
        let inq_len = sock::ioctl_int(fd, SIOCINQ).context("SIOCINQ")?.max(0) as usize;
        let outq_len = (sock::ioctl_int(fd, SIOCOUTQ).context("SIOCOUTQ")?.max(0) as usize).saturating_sub(fin);
        let unsq_len =
            (sock::ioctl_int(fd, SIOCOUTQNSD).context("SIOCOUTQNSD")?.max(0) as usize).saturating_sub(fin) as u32;
        let (inq_seq, inq) = peek_queue(fd, TCP_RECV_QUEUE, inq_len).context("receive queue")?;
        let (outq_seq, outq) = peek_queue(fd, TCP_SEND_QUEUE, outq_len).context("send queue")?;
        let now = (inq_seq, inq, outq_seq, outq, unsq_len);
        if last.as_ref() == Some(&now) {
            break now;
        }
        rounds += 1;
        if rounds > 100 {
            bail!("its queues keep changing although the connection is locked");
        }
        last = Some(now);
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    set(fd, TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    let mss = fdops::getsockopt_int(fd, SOL_TCP, libc::TCP_MAXSEG).context("TCP_MAXSEG")? as u32;
    let ts = fdops::getsockopt_int(fd, SOL_TCP, TCP_TIMESTAMP).context("TCP_TIMESTAMP")? as u32;
    let mut w = [0u8; 20];
    let n = sock::getsockopt_buf(fd, SOL_TCP, TCP_REPAIR_WINDOW, &mut w).context("TCP_REPAIR_WINDOW")?;
    if n != 20 {
        bail!("TCP_REPAIR_WINDOW returned {n} bytes");
    }
    let wv = |i: usize| u32::from_ne_bytes([w[i * 4], w[i * 4 + 1], w[i * 4 + 2], w[i * 4 + 3]]);
    let nodelay = fdops::getsockopt_int(fd, SOL_TCP, libc::TCP_NODELAY).context("TCP_NODELAY")? != 0;
    let cork = fdops::getsockopt_int(fd, SOL_TCP, libc::TCP_CORK).context("TCP_CORK")? != 0;
    Ok(Stream {
        state: st,
        e: pb::TcpStreamEntry {
            inq_len: inq.len() as u32,
            inq_seq,
            outq_len: outq.len() as u32,
            outq_seq,
            opt_mask: opts,
            snd_wscale: snd_ws,
            mss_clamp: mss,
            rcv_wscale: Some(rcv_ws),
            timestamp: Some(ts),
            cork: Some(cork),
            nodelay: Some(nodelay),
            unsq_len: Some(unsq_len),
            snd_wl1: Some(wv(0)),
            snd_wnd: Some(wv(1)),
            max_window: Some(wv(2)),
            rcv_wnd: Some(wv(3)),
            rcv_wup: Some(wv(4)),
        },
        inq,
        outq,
    })
}

/// The image bytes of a stream.
pub fn encode(s: &Stream) -> Result<Vec<u8>> {
    let mut w = ImageWriter::new(Kind::TcpStream);
    w.write_entry(&s.e)?;
    w.write_raw(&s.inq);
    w.write_raw(&s.outq);
    Ok(w.into_bytes())
}

/// Parses a tcp-stream image (`path` for messages).
pub fn decode(path: &str, bytes: &[u8]) -> Result<Stream> {
    let mut r = crate::image::ImageReader::new(path, bytes, Kind::TcpStream)?;
    let e: pb::TcpStreamEntry = r.next_entry()?.with_context(|| format!("{path}: no entry"))?;
    let inq = r.read_raw(e.inq_len as usize)?.to_vec();
    let outq = r.read_raw(e.outq_len as usize)?.to_vec();
    if e.unsq_len.unwrap_or(0) > e.outq_len {
        bail!(
            "{path}: {} unsent bytes in a send queue of {}",
            e.unsq_len.unwrap_or(0),
            e.outq_len
        );
    }
    Ok(Stream {
        state: ESTABLISHED,
        e,
        inq,
        outq,
    })
}

/// Step 1 of the restore, before bind and connect: repair mode and the
/// sequence numbers at the start of both queues.
pub fn restore_pre_connect(fd: BorrowedFd, s: &Stream) -> Result<()> {
    repair(fd, true)?;
    set(fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
    set(
        fd,
        TCP_QUEUE_SEQ,
        s.e.inq_seq.wrapping_sub(s.e.inq_len) as i32,
        "TCP_QUEUE_SEQ (receive)",
    )?;
    set(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
    set(
        fd,
        TCP_QUEUE_SEQ,
        s.e.outq_seq
            .wrapping_sub(u32::from(fin_sent(s.state)))
            .wrapping_sub(s.e.outq_len) as i32,
        "TCP_QUEUE_SEQ (send)",
    )?;
    set(fd, TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    Ok(())
}

fn fill(fd: BorrowedFd, queue: i32, data: &[u8]) -> Result<()> {
    set(fd, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
    let mut off = 0;
    let mut chunk = data.len().clamp(1, 1 << 20);
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        match sock::send(fd, &data[off..end], 0) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::ENOMEM) if chunk > 4096 => chunk /= 2,
            Err(e) => return Err(e).with_context(|| format!("refill of {} bytes at {off}", data.len())),
        }
    }
    Ok(())
}

/// Makes sure a buffer can take `need` bytes at once (the restored socket
/// starts with default sizes; autotuning stays on afterwards unless the
/// image says the size was locked).
fn room(fd: BorrowedFd, name: i32, force: i32, need: usize) -> Result<()> {
    let have = fdops::getsockopt_int(fd.as_fd(), libc::SOL_SOCKET, name)
        .unwrap_or(0)
        .max(0) as usize;
    if need * 2 > have {
        let v = (need * 2).min(i32::MAX as usize) as i32;
        fdops::setsockopt_int(fd, libc::SOL_SOCKET, force, v).context("socket buffer size")?;
        // Unlock the size again: the kernel may grow it later as before.
        let _ = fdops::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_BUF_LOCK, 0);
    }
    Ok(())
}

/// Step 2, after connect: options, timestamp, queues, windows. The
/// socket stays in repair mode (if the restore fails it closes without a
/// word) until [`finish`], right before the task resumes.
pub fn restore_post_connect(fd: BorrowedFd, s: &Stream) -> Result<()> {
    let e = &s.e;
    let mut opts: Vec<(u32, u32)> = vec![(TCPOPT_MAXSEG, e.mss_clamp)];
    if e.opt_mask & TCPI_OPT_WSCALE != 0 {
        opts.push((TCPOPT_WINDOW, e.snd_wscale | (e.rcv_wscale.unwrap_or(0) << 16)));
    }
    if e.opt_mask & TCPI_OPT_SACK != 0 {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    let mut raw = Vec::with_capacity(opts.len() * 8);
    for (c, v) in &opts {
        raw.extend_from_slice(&c.to_ne_bytes());
        raw.extend_from_slice(&v.to_ne_bytes());
    }
    sock::setsockopt_buf(fd, SOL_TCP, TCP_REPAIR_OPTIONS, &raw).context("TCP_REPAIR_OPTIONS")?;
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        if let Some(ts) = e.timestamp {
            set(fd, TCP_TIMESTAMP, ts as i32, "TCP_TIMESTAMP")?;
        }
    }
    let sent = s.outq.len() - unsent(s);
    room(fd, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, s.inq.len())?;
    room(fd, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, s.outq.len())?;
    fill(fd, TCP_RECV_QUEUE, &s.inq).context("receive queue")?;
    fill(fd, TCP_SEND_QUEUE, &s.outq[..sent]).context("send queue")?;
    set(fd, TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    if let (Some(a), Some(b), Some(c), Some(d), Some(f)) = (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup) {
        let mut w = Vec::with_capacity(20);
        for v in [a, b, c, d, f] {
            w.extend_from_slice(&v.to_ne_bytes());
        }
        sock::setsockopt_buf(fd, SOL_TCP, TCP_REPAIR_WINDOW, &w).context("TCP_REPAIR_WINDOW")?;
    }
    if e.nodelay == Some(true) {
        set(fd, libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
    }
    if e.cork == Some(true) {
        set(fd, libc::TCP_CORK, 1, "TCP_CORK")?;
    }
    // Half-closed: the peer's FIN was received (its sequence number is in
    // inq_seq already): reads end after the queue. Our FIN was sent: in
    // repair mode with the send queue selected, shutdown queues it as sent
    // and transmits nothing (it is retransmitted like any unacked data).
    // The kernel state becomes ESTABLISHED or FIN_WAIT1 with the receive
    // side shut, which the program cannot tell from CLOSE_WAIT or LAST_ACK
    // except by TCP_INFO.
    use std::os::fd::AsRawFd;
    if fin_received(s.state) {
        nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Read).context("shutdown(SHUT_RD)")?;
    }
    if fin_sent(s.state) {
        set(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
        nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write).context("shutdown(SHUT_WR)")?;
        set(fd, TCP_REPAIR_QUEUE, 0, "TCP_REPAIR_QUEUE")?;
    }
    Ok(())
}

/// The bytes sent the ordinary way after repair: the unsent tail of the
/// send queue, unless our FIN went out (then everything is queued as
/// sent, before the FIN).
fn unsent(s: &Stream) -> usize {
    if fin_sent(s.state) {
        0
    } else {
        (s.e.unsq_len.unwrap_or(0) as usize).min(s.outq.len())
    }
}

/// Step 3, the last thing before the task resumes: repair off, and the
/// unsent bytes sent the ordinary way.
pub fn finish(fd: BorrowedFd, s: &Stream) -> Result<()> {
    let sent = s.outq.len() - unsent(s);
    repair(fd, false)?;
    if sent == s.outq.len() {
        return Ok(());
    }
    // The send buffer may be locked at its dumped size, which the queue
    // fills up already (the refilled packets need not have the sizes the
    // originals had): make room for the unsent bytes, then put the size
    // and its lock back.
    let sol = libc::SOL_SOCKET;
    let old = fdops::getsockopt_int(fd, sol, libc::SO_SNDBUF).context("SO_SNDBUF")?;
    let lock = fdops::getsockopt_int(fd, sol, libc::SO_BUF_LOCK).context("SO_BUF_LOCK")?;
    let need = (old as usize + 4 * (s.outq.len() - sent)).min(i32::MAX as usize / 2) as i32;
    fdops::setsockopt_int(fd, sol, libc::SO_SNDBUFFORCE, need).context("SO_SNDBUFFORCE")?;
    let mut off = sent;
    while off < s.outq.len() {
        let n = sock::send(fd, &s.outq[off..], libc::MSG_DONTWAIT).context("send of the unsent bytes")?;
        off += n;
    }
    if lock & 1 != 0 {
        fdops::setsockopt_int(fd, sol, libc::SO_SNDBUFFORCE, old / 2).context("SO_SNDBUFFORCE")?;
    }
    fdops::setsockopt_int(fd, sol, libc::SO_BUF_LOCK, lock).context("SO_BUF_LOCK")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_info_bitfields() {
        let mut info = vec![0u8; 104];
        info[0] = 1;
        info[5] = (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE) as u8;
        info[6] = 7 | (9 << 4);
        assert_eq!(info_fields(&info), Some((1, 7, 7, 9)));
        assert_eq!(info_fields(&info[..3]), None);
    }

    #[test]
    fn stream_image_roundtrip() {
        let s = Stream {
            state: ESTABLISHED,
            e: pb::TcpStreamEntry {
                inq_len: 3,
                inq_seq: 100,
                outq_len: 4,
                outq_seq: 200,
                opt_mask: 7,
                snd_wscale: 7,
                mss_clamp: 65483,
                unsq_len: Some(1),
                ..Default::default()
            },
            inq: b"abc".to_vec(),
            outq: b"wxyz".to_vec(),
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(decode("t", &bytes).unwrap(), s);
        let mut bad = s.clone();
        bad.e.unsq_len = Some(9);
        assert!(decode("t", &encode(&bad).unwrap()).is_err());
        assert_eq!(image_name(0x1f), "tcp-stream-1f.img");
    }
}
