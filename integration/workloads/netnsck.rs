//! netnsck: a process in a network namespace of its own finds the
//! namespace as it was: interfaces (names, MAC, MTU, state), addresses,
//! routes, net sysctls and the nftables ruleset, and its veth still
//! reaches the outside.
//!
//! `netnsck --log F --peer IP:PORT [--corrupt]`
//!
//! At start it records `ip -br link`, `ip -br addr`, MTUs, `ip route` and
//! `ip -6 route`, a few sysctls and `nft list ruleset` (interface names
//! without the `@ifN` peer suffix, whose number changes). On SIGUSR1 it
//! compares them and connects to PEER (a listener outside the namespace,
//! through the veth), which must send at least one byte. `--corrupt`
//! changes net.ipv4.conf.all.rp_filter after READY.

use cryo_integration::wl::{self, Args, Log};
use std::io::Read;
use std::process::Command;

fn out(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| wl::die(&format!("{cmd}: {e}")));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn state() -> Vec<(String, String)> {
    let strip = |s: String| -> String {
        s.lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|w| w.split('@').next().unwrap_or(w))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut v = vec![
        ("links".to_string(), strip(out("ip", &["-br", "link"]))),
        ("addrs".to_string(), strip(out("ip", &["-br", "addr"]))),
        ("routes".to_string(), out("ip", &["route"])),
        ("routes6".to_string(), out("ip", &["-6", "route"])),
        ("nft".to_string(), out("nft", &["list", "ruleset"])),
    ];
    for l in out("ip", &["-br", "link"]).lines() {
        let name = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("")
            .to_string();
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).unwrap_or_default();
        v.push((format!("mtu {name}"), mtu.trim().to_string()));
    }
    for s in [
        "net/ipv4/ip_forward",
        "net/ipv4/conf/all/rp_filter",
        "net/ipv4/ip_default_ttl",
        "net/ipv6/conf/all/forwarding",
    ] {
        let val = std::fs::read_to_string(format!("/proc/sys/{s}")).unwrap_or_default();
        v.push((s.to_string(), val.trim().to_string()));
    }
    v
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    let peer = args.required("peer");
    wl::install_usr1();
    let before = state();
    log.line(&format!("NETNS {}", before.len()));
    log.ready();
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
    if corrupt {
        let _ = std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "1");
    }
    let after = state();
    let mut pr = Vec::new();
    for ((k, a), (_, b)) in before.iter().zip(after.iter()) {
        if a != b {
            pr.push(format!("{k}: {b:?}, was {a:?}"));
        }
    }
    if before.len() != after.len() {
        pr.push(format!("{} items, were {}", after.len(), before.len()));
    }
    match std::net::TcpStream::connect_timeout(
        &peer.parse().unwrap_or_else(|_| wl::die("--peer")),
        std::time::Duration::from_secs(5),
    ) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut b = [0u8; 8];
            if s.read(&mut b).unwrap_or(0) == 0 {
                pr.push(format!("nothing from {peer}"));
            }
        }
        Err(e) => pr.push(format!("connect {peer}: {e}")),
    }
    log.verdict(&pr, &format!("{} items", before.len()));
}
