//! tcpstream: two peers stream numbered messages to each other over one
//! TCP connection and check that none is lost, duplicated or reordered and
//! that the connection is never reset, whatever happens to the other side
//! (a dump and restore of the server, even into another network
//! namespace).
//!
//! `tcpstream --role server --log F [--addr IP] [--corrupt]`
//! `tcpstream --role client --log F --addr IP --port P [--corrupt]`
//!
//! The server listens on IP (default 127.0.0.1) port 0, writes
//! `PORT <port>`, accepts one client and writes READY; the client connects
//! and writes READY. Each side then sends the next 8-byte big-endian
//! counter every 2 ms and checks that what it receives is 0, 1, 2, ...;
//! after a silence of 100 ms or more it writes `GAP <ms> AT <n>` when data
//! flows again. On SIGUSR1 a side sends the end marker (all ones), reads
//! on until the peer's end marker, and writes PASS with its counts, the
//! longest gap and the number of messages after it. `--corrupt` skips
//! message 100 in what this side sends (the peer must FAIL).

use cryo_integration::wl::{self, Args, Log};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const END: u64 = u64::MAX;

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let addr = args.value("addr").unwrap_or_else(|| "127.0.0.1".into());
    let mut s = match args.required("role").as_str() {
        "server" => {
            let l = TcpListener::bind((addr.as_str(), 0)).unwrap_or_else(|e| wl::die(&format!("bind {addr}: {e}")));
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            log.line(&format!("PORT {port}"));
            let (s, _) = l.accept().unwrap_or_else(|e| wl::die(&format!("accept: {e}")));
            s
        }
        "client" => {
            let port = args.num("port", 0) as u16;
            TcpStream::connect((addr.as_str(), port)).unwrap_or_else(|e| wl::die(&format!("connect: {e}")))
        }
        r => wl::die(&format!("unknown role {r}")),
    };
    s.set_nonblocking(true).unwrap_or_else(|_| wl::die("nonblocking"));
    s.set_nodelay(true).unwrap_or_else(|_| wl::die("nodelay"));
    log.ready();
    let mut pr: Vec<String> = Vec::new();
    let (mut next_send, mut next_recv) = (0u64, 0u64);
    let mut out: Vec<u8> = Vec::new();
    let mut inb: Vec<u8> = Vec::new();
    let mut last_send = Instant::now();
    let mut last_recv = Instant::now();
    let (mut max_gap, mut after_gap) = (Duration::ZERO, 0u64);
    let mut ended_at: Option<Instant> = None;
    let mut got_end = false;
    let mut buf = [0u8; 4096];
    loop {
        if wl::usr1_seen() && ended_at.is_none() {
            out.extend_from_slice(&END.to_be_bytes());
            ended_at = Some(Instant::now());
        }
        if ended_at.is_none() && out.len() < 64 && last_send.elapsed() >= Duration::from_millis(2) {
            if corrupt && next_send == 100 {
                next_send += 1;
            }
            out.extend_from_slice(&next_send.to_be_bytes());
            next_send += 1;
            last_send = Instant::now();
        }
        if !out.is_empty() {
            match s.write(&out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => {
                    pr.push(format!("send failed after {next_send} messages: {e}"));
                    break;
                }
            }
        }
        match s.read(&mut buf) {
            // The peer may have had both end markers (and closed) before
            // this side saw its own SIGUSR1 and the peer's marker together:
            // EOF after both markers is the normal end.
            Ok(0) if got_end && ended_at.is_some() && out.is_empty() => break,
            Ok(0) => {
                pr.push(format!("EOF after {next_recv} messages, before the end marker"));
                break;
            }
            Ok(n) => {
                let gap = last_recv.elapsed();
                last_recv = Instant::now();
                if gap >= Duration::from_millis(100) {
                    log.line(&format!("GAP {} AT {next_recv}", gap.as_millis()));
                }
                if gap > max_gap {
                    max_gap = gap;
                    after_gap = 0;
                }
                inb.extend_from_slice(&buf[..n]);
                let whole = inb.len() / 8 * 8;
                for c in inb[..whole].chunks_exact(8) {
                    let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    if v == END {
                        got_end = true;
                    } else if got_end || v != next_recv {
                        pr.push(format!("expected message {next_recv}, got {v}"));
                        break;
                    } else {
                        next_recv += 1;
                        after_gap += 1;
                    }
                }
                inb.drain(..whole);
                if !pr.is_empty() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => {
                pr.push(format!("receive failed after {next_recv} messages: {e}"));
                break;
            }
        }
        if let Some(t) = ended_at {
            if got_end && out.is_empty() {
                break;
            }
            if t.elapsed() > Duration::from_secs(20) {
                pr.push(format!("no end marker from the peer (received {next_recv})"));
                break;
            }
        }
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&s),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 2) };
    }
    if pr.is_empty() && next_recv == 0 {
        pr.push("nothing received".into());
    }
    log.verdict(
        &pr,
        &format!(
            "sent={next_send} received={next_recv} max_gap_ms={} after_gap={after_gap}",
            max_gap.as_millis()
        ),
    );
}
