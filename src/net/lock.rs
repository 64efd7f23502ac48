//! The network lock: while a connection is dumped, and until it is
//! restored, every packet of its 4-tuple is dropped, so that the peer
//! sees a delay (and retransmits) instead of a reset.
//!
//! Each connection gets its own nftables table, `inet cryo_tcp_<hash>`,
//! named by a hash of its two endpoints in a canonical order: the dump
//! creates it before the socket goes into repair mode, and the restore
//! (which reads the same endpoints from the image) deletes it once the
//! tree runs, or when the restore fails. A failed dump deletes the tables
//! it created. The rules sit on the input hook: on loopback every packet
//! passes there, and packets from outside arrive there too.
//!
//! With the table come two routing rules ([`super::rule`]) that keep the
//! namespace from answering the peer while it is torn down (its nftables
//! hooks go before its interfaces); the restore deletes them before it
//! creates the sockets.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The table name for the connection between `a` and `b` (either order).
pub fn table_name(a: &SocketAddr, b: &SocketAddr) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let h = crate::image::fnv1a64(format!("{x}|{y}").as_bytes());
    format!("cryo_tcp_{h:016x}")
}

/// The nft script that creates the table dropping both directions. A
/// dual-stack socket's IPv4 connection (IPv4-mapped addresses) is matched
/// as the IPv4 packets it is made of.
pub fn script(name: &str, a: &SocketAddr, b: &SocketAddr) -> String {
    let wire = |x: &SocketAddr| SocketAddr::new(x.ip().to_canonical(), x.port());
    let (a, b) = (&wire(a), &wire(b));
    let fam = match a.ip() {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    };
    let rule = |s: &SocketAddr, d: &SocketAddr| {
        format!(
            "    {fam} saddr {} {fam} daddr {} tcp sport {} tcp dport {} drop\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        )
    };
    format!(
        "table inet {name} {{\n  chain input {{\n    type filter hook input priority -300; policy accept;\n{}{}  }}\n}}\n",
        rule(a, b),
        rule(b, a)
    )
}

/// Runs nft, again when it was interrupted by a concurrent change of the
/// ruleset (nft's cache fill fails with EINTR or EBUSY then).
fn nft(stdin: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut out = nft_once(stdin, args)?;
    for _ in 0..50 {
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !(err.contains("Interrupted system call") || err.contains("resource busy")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        out = nft_once(stdin, args)?;
    }
    Ok(out)
}

fn nft_once(stdin: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("Cannot run nft (the network lock needs nftables: run hack/setup)")?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).context("nft stdin")?;
    }
    child.wait_with_output().context("nft")
}

/// Locks the connection between `local` and `peer` (the table and the
/// routing rules); returns the table.
pub fn lock(local: &SocketAddr, peer: &SocketAddr) -> Result<String> {
    let name = table_name(local, peer);
    // A table left by an earlier dump of the same connection is replaced.
    unlock(&name);
    let out = nft(&script(&name, local, peer), &["-f", "-"])?;
    if !out.status.success() {
        bail!(
            "Cannot lock the connection {local} -> {peer} with nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Err(e) = super::rule::add(local, peer) {
        unlock(&name);
        return Err(e.context(format!("Cannot lock the connection {local} -> {peer}")));
    }
    tracing::debug!("network lock {name} for {local} <-> {peer}");
    Ok(name)
}

/// Lifts the whole lock of the connection between `local` and `peer`.
pub fn lift(local: &SocketAddr, peer: &SocketAddr) {
    super::rule::remove(local, peer);
    unlock(&table_name(local, peer));
}

/// Deletes a lock table; a missing table is fine.
pub fn unlock(name: &str) {
    match nft("", &["delete", "table", "inet", name]) {
        Ok(o) if o.status.success() => tracing::debug!("network lock {name} lifted"),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("No such file or directory") {
                tracing::warn!("cannot lift the network lock {name}: {}", err.trim());
            }
        }
        Err(e) => tracing::warn!("cannot lift the network lock {name}: {e:#}"),
    }
}

/// Whether nft can be run here.
pub fn available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_symmetric_and_distinct() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(table_name(&a, &b), table_name(&b, &a));
        assert_ne!(table_name(&a, &b), table_name(&a, &c));
        assert!(table_name(&a, &b).starts_with("cryo_tcp_"));
    }

    #[test]
    fn script_drops_both_directions() {
        let a: SocketAddr = "[::1]:80".parse().unwrap();
        let b: SocketAddr = "[::1]:4242".parse().unwrap();
        let s = script("t", &a, &b);
        assert!(s.contains("ip6 saddr ::1 ip6 daddr ::1 tcp sport 80 tcp dport 4242 drop"));
        assert!(s.contains("ip6 saddr ::1 ip6 daddr ::1 tcp sport 4242 tcp dport 80 drop"));
        assert!(s.contains("hook input"));
        let m: SocketAddr = "[::ffff:10.0.0.2]:80".parse().unwrap();
        let n: SocketAddr = "[::ffff:10.0.0.1]:4242".parse().unwrap();
        let s = script("t", &m, &n);
        assert!(
            s.contains("ip saddr 10.0.0.2 ip daddr 10.0.0.1 tcp sport 80 tcp dport 4242 drop"),
            "{s}"
        );
    }
}
