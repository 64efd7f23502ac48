//! Two test "hosts": network namespaces joined by a veth pair with
//! addresses of our own (10.77.0.1 and 10.77.0.2), so traffic never leaves
//! the machine. Created per test with unique names and always deleted
//! (Drop), which also removes the veth pair.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The address of host A / B inside their namespaces.
pub const ADDR_A: &str = "10.77.0.1";
pub const ADDR_B: &str = "10.77.0.2";

/// A pair of network namespaces "a" and "b".
pub struct Hosts {
    pub a: String,
    pub b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Hosts {
    /// Creates the namespaces `cryo-<pid>-<n>-a/b` and the veth pair.
    pub fn new() -> Result<Hosts, String> {
        let tag = format!("cryo-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let h = Hosts {
            a: format!("{tag}-a"),
            b: format!("{tag}-b"),
        };
        ip(&["netns", "add", &h.a])?;
        ip(&["netns", "add", &h.b])?;
        // Both ends are created directly inside their namespaces: the
        // names never meet in the root namespace.
        ip(&[
            "link", "add", "veth-a", "netns", &h.a, "type", "veth", "peer", "name", "veth-b", "netns", &h.b,
        ])?;
        for (ns, dev, addr) in [(&h.a, "veth-a", ADDR_A), (&h.b, "veth-b", ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(h)
    }

    /// `nsenter --net=/run/netns/NS bin args...`: only the network
    /// namespace changes (`ip netns exec` would also unshare the mount
    /// namespace to remount /sys, which is not what a host looks like).
    pub fn cmd(ns: &str, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(Self::enter(ns)).arg(bin).args(args);
        c
    }

    /// The arguments of `nsenter` that enter `ns` (then the program).
    pub fn enter(ns: &str) -> [String; 2] {
        [format!("--net=/run/netns/{ns}"), "--".to_string()]
    }

    /// The inode of a namespace's network namespace (to compare with
    /// /proc/PID/ns/net).
    pub fn net_ino(ns: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{ns}")).ok().map(|m| m.ino())
    }

    /// Runs `f` on a thread that joined the network namespace `ns` (for
    /// test clients and proxies that talk to a page server there).
    pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd changes only this
            // thread's network namespace; no memory is involved.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

/// The network namespace inode of a process.
pub fn pid_net_ino(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// A proxy in host B between the sender and the page server that passes
/// the stream frame by frame until the sender's Commit (kind 8). Then,
/// with `deliver`, it passes the Commit on but nothing back (the
/// destination runs the tree; its Done is lost); without, it drops the
/// Commit (the destination never hears it). Either way it then closes the
/// sender's connection.
/// With `kill_first` set to a pid, that process (the sending cryo) is
/// SIGKILLed before the Commit is passed on. After passing it on, the
/// proxy lingers `linger` (the destination releases the tree and answers
/// into the void) before it closes. The thread returns whether a Commit
/// came by.
pub fn commit_cutting_proxy(
    h: &Hosts,
    to: String,
    deliver: bool,
    kill_first: Option<std::sync::Arc<std::sync::atomic::AtomicI32>>,
    linger: std::time::Duration,
) -> (u16, std::thread::JoinHandle<bool>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let (tx, rx) = std::sync::mpsc::channel();
    let j = Hosts::in_ns(&h.b, move || {
        let l = std::net::TcpListener::bind(format!("{ADDR_B}:0")).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        let mut b = std::net::TcpStream::connect(&to).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        let back = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = b2.read(&mut buf) {
                if n == 0 || (!cut2.load(Ordering::SeqCst) && a2.write_all(&buf[..n]).is_err()) {
                    break;
                }
            }
        });
        let mut seen = false;
        loop {
            let mut head = [0u8; 24];
            if a.read_exact(&mut head).is_err() {
                break;
            }
            let kind = u32::from_le_bytes(head[4..8].try_into().unwrap());
            let len = u64::from_le_bytes(head[8..16].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; len];
            if a.read_exact(&mut payload).is_err() {
                break;
            }
            if kind == 8 {
                seen = true;
                cut.store(true, Ordering::SeqCst);
                if let Some(p) = &kill_first {
                    let pid = p.load(Ordering::SeqCst);
                    crate::signal(pid, libc::SIGKILL).unwrap();
                    // Dead (a zombie: its tracees are let go by then).
                    let end = Instant::now() + Duration::from_secs(10);
                    while !matches!(crate::pid_state(pid), Some('Z') | None) && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                if deliver {
                    let _ = b.write_all(&head);
                    std::thread::sleep(linger);
                } else {
                    let _ = b.shutdown(std::net::Shutdown::Both);
                }
                break;
            }
            if b.write_all(&head).and_then(|_| b.write_all(&payload)).is_err() {
                break;
            }
        }
        let _ = a.shutdown(std::net::Shutdown::Both);
        let _ = b.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
        seen
    });
    (rx.recv().unwrap(), j)
}
