//! Network namespaces a test makes (with veth pairs between them), the
//! cryo_tcp_* lock tables in one, and the verdicts of the tcpstream
//! workload that streams across them.

use crate::describe;
use std::process::Command;

/// Network namespaces (and through them their veths) made by a test,
/// deleted when it ends.
#[derive(Default)]
pub struct Netns {
    names: Vec<String>,
}

impl Netns {
    pub fn new() -> Netns {
        Netns::default()
    }

    /// `ip ARGS`, asserted to succeed.
    pub fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), describe(&out));
    }

    /// A new namespace `name` with its loopback up.
    pub fn add(&mut self, name: &str) {
        Netns::ip(&["netns", "add", name]);
        self.names.push(name.to_string());
        Netns::ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// A veth pair between namespaces `a` and `b` with an address on each
    /// end. The ends are created in their namespaces directly: the names
    /// never appear in ours, where test runs of other checkouts make the
    /// same pairs at the same time.
    pub fn link(a: &str, a_dev: &str, a_ip: &str, b: &str, b_dev: &str, b_ip: &str) {
        Netns::ip(&[
            "link", "add", a_dev, "netns", a, "type", "veth", "peer", "name", b_dev, "netns", b,
        ]);
        for (ns, dev, ip) in [(a, a_dev, a_ip), (b, b_dev, b_ip)] {
            Netns::ip(&["-n", ns, "addr", "add", ip, "dev", dev]);
            Netns::ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Deletes namespace `name` now.
    pub fn del(&mut self, name: &str) {
        Netns::ip(&["netns", "del", name]);
        self.names.retain(|n| n != name);
    }

    /// The cryo_tcp_* lock tables in namespace `name` now.
    pub fn lock_tables(name: &str) -> Vec<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .args(["--", "nft", "list", "tables"])
            .output()
            .expect("run nft (hack/setup installs nftables)");
        assert!(out.status.success(), "nft list tables in {name}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("cryo_tcp_"))
            .map(str::to_string)
            .collect()
    }

    /// cryo's routing-lock rules in namespace `name` now (blackhole rules
    /// for one TCP 4-tuple each, `ip rule` lines).
    pub fn lock_rules(name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let o = Command::new("ip")
                .args([fam, "-n", name, "rule", "show"])
                .output()
                .expect("run ip rule");
            assert!(o.status.success(), "ip {fam} -n {name} rule show: {}", describe(&o));
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("ipproto tcp") && l.contains("blackhole"))
                    .map(str::to_string),
            );
        }
        out
    }

    /// The `Tcp:` counter KEY (OutRsts, InSegs...) of namespace `name`
    /// (/proc/net/snmp as seen from inside).
    pub fn tcp_counter(name: &str, key: &str) -> u64 {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .args(["--", "cat", "/proc/net/snmp"])
            .output()
            .expect("run nsenter cat");
        assert!(out.status.success(), "/proc/net/snmp of {name}: {}", describe(&out));
        snmp_field(&String::from_utf8_lossy(&out.stdout), "Tcp", key)
            .unwrap_or_else(|| panic!("no Tcp {key} in /proc/net/snmp of {name}"))
    }
}

/// Field KEY of protocol PROTO in /proc/net/snmp text (a header line of
/// names, then a line of values, both starting with `PROTO:`).
pub fn snmp_field(text: &str, proto: &str, key: &str) -> Option<u64> {
    let tag = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&tag));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == key)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// The `key=value` number in a tcpstream verdict.
pub fn field(v: &str, key: &str) -> u64 {
    v.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {v:?}"))
}

/// Both verdicts of a tcpstream whose server went through a dump and
/// restore (`step` names it in the messages, "dump" or "checkpoint"):
/// PASS on both sides, a pause of at least `pause_ms`, and messages in
/// both directions after it.
pub fn judge_stream(server_v: &str, client_v: &str, pause_ms: u64, step: &str) {
    eprintln!("server: {server_v}\nclient: {client_v}");
    assert!(server_v.starts_with("PASS"), "server: {server_v}");
    assert!(client_v.starts_with("PASS"), "client: {client_v}");
    for v in [server_v, client_v] {
        assert!(field(v, "received") >= 100, "too few messages: {v}");
        assert!(
            field(v, "max_gap_ms") >= pause_ms,
            "the stream never paused for the {step}: {v}"
        );
        assert!(
            field(v, "after_gap") >= 20,
            "the stream did not go on after the restore: {v}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_fields_by_name() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm InSegs OutSegs RetransSegs InErrs OutRsts\nTcp: 1 358 344 0 0 126\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(snmp_field(t, "Tcp", "OutRsts"), Some(126));
        assert_eq!(snmp_field(t, "Tcp", "InSegs"), Some(358));
        assert_eq!(snmp_field(t, "Udp", "InDatagrams"), Some(5));
        assert_eq!(snmp_field(t, "Tcp", "Nope"), None);
        assert_eq!(snmp_field("Tcp: OutRsts\n", "Tcp", "OutRsts"), None);
    }
}
