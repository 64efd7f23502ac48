//! A network namespace owned by the dumped tree: its interfaces (loopback
//! and veth ends whose peer is outside), their MTU, MAC address, state
//! and addresses, its routes, a set of net sysctls, and its nftables
//! ruleset. They go to `cryo-netns.json` (a file of cryo's own; CRIU's
//! netdev/ifaddr/route images are not written).
//!
//! Dump: the dump's main thread enters the tree's namespace for the whole
//! dump ([`Enter`]), so that sock_diag, the network lock and the `ip` and
//! `nft` commands all see the tree's view; [`dump`] reads `ip -json`,
//! `ip route`, /proc/sys/net and `nft list ruleset` there.
//!
//! Restore ([`restore`]): the engine's main thread unshares a fresh
//! network namespace before it forks the tree, so the tree lands in it.
//! There it brings loopback up, creates each veth with its old name, MAC
//! and MTU and puts the other end into the caller's namespace under the
//! name `--veth-pair IN=OUT` gives (up), adds the addresses, sets link
//! states, adds the routes, writes the sysctls and loads the ruleset. A
//! failure leaves nothing: the namespace (and the veth pairs in it) goes
//! away with the engine.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::image::ImageDir;

/// The image of the namespace.
pub const IMAGE: &str = "cryo-netns.json";

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// "loopback" or "veth".
    pub kind: String,
    pub mtu: u32,
    pub up: bool,
    pub mac: String,
}

/// Everything restored into the fresh namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Netns {
    pub links: Vec<Link>,
    /// (interface, address/prefix).
    pub addrs: Vec<(String, String)>,
    /// `ip route` lines (main table, not made by the kernel), IPv4 then IPv6.
    pub routes4: Vec<String>,
    pub routes6: Vec<String>,
    /// (path under /proc/sys, value).
    pub sysctls: Vec<(String, String)>,
    pub nft: String,
}

/// Whether the tree rooted at `pid` is in another network namespace than
/// cryo; then its namespace file.
pub fn owned_by(pid: i32) -> Result<Option<File>> {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).context("the tree's network namespace")?;
    let ours = std::fs::metadata("/proc/self/ns/net").context("our network namespace")?;
    use std::os::unix::fs::MetadataExt;
    if theirs.ino() == ours.ino() && theirs.dev() == ours.dev() {
        return Ok(None);
    }
    Ok(Some(
        File::open(format!("/proc/{pid}/ns/net")).context("open the tree's network namespace")?,
    ))
}

/// The calling thread inside another network namespace, until dropped.
pub struct Enter {
    back: File,
}

impl Enter {
    pub fn new(ns: &File) -> Result<Enter> {
        let back = File::open("/proc/thread-self/ns/net").context("our network namespace")?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("Cannot enter the tree's network namespace")?;
        Ok(Enter { back })
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.back.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            tracing::warn!("cannot go back to our network namespace: {e}");
        }
    }
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("Cannot run {cmd}"))?;
    if let (Some(s), Some(mut i)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        i.write_all(s.as_bytes()).with_context(|| format!("{cmd} stdin"))?;
    }
    let out = child.wait_with_output().with_context(|| format!("{cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `ip -json -d link show`; refuses kinds cryo cannot recreate.
pub fn parse_links(json: &str) -> Result<Vec<Link>> {
    let v: Value = serde_json::from_str(json).context("ip -json link")?;
    let mut out = Vec::new();
    for l in v.as_array().context("ip -json link: not a list")? {
        let name = l["ifname"].as_str().context("ifname")?.to_string();
        let kind = if l["link_type"] == "loopback" {
            "loopback".to_string()
        } else {
            l["linkinfo"]["info_kind"].as_str().unwrap_or("?").to_string()
        };
        if kind == "veth" && l.get("link_netnsid").is_none() {
            bail!("interface {name}: a veth pair with both ends in the tree's network namespace is not supported");
        }
        if kind != "loopback" && kind != "veth" {
            bail!("interface {name} ({kind}) in the tree's network namespace is not supported");
        }
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push(Link {
            name,
            kind,
            mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
            up: flags.contains(&"UP"),
            mac: l["address"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(out)
}

/// Parses `ip -json addr show`: the addresses to add (not loopback's own,
/// not IPv6 link-local ones, which the kernel makes).
pub fn parse_addrs(json: &str) -> Result<Vec<(String, String)>> {
    let v: Value = serde_json::from_str(json).context("ip -json addr")?;
    let mut out = Vec::new();
    for l in v.as_array().context("ip -json addr: not a list")? {
        let dev = l["ifname"].as_str().context("ifname")?;
        for a in l["addr_info"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let local = a["local"].as_str().unwrap_or("");
            let plen = a["prefixlen"].as_u64().unwrap_or(0);
            let cidr = format!("{local}/{plen}");
            if local.is_empty()
                || (dev == "lo" && (cidr == "127.0.0.1/8" || cidr == "::1/128"))
                || (a["family"] == "inet6" && a["scope"] == "link")
            {
                continue;
            }
            out.push((dev.to_string(), cidr));
        }
    }
    Ok(out)
}

/// The `ip route` lines to add again: not those the kernel makes for
/// addresses (proto kernel), without state words.
pub fn parse_routes(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("proto kernel"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !matches!(*w, "linkdown" | "dead"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The sysctls kept: global ones and per-interface (all, default, each).
fn sysctl_paths(links: &[Link]) -> Vec<String> {
    let mut p: Vec<String> = [
        "net/ipv4/ip_forward",
        "net/ipv4/ping_group_range",
        "net/ipv4/ip_local_port_range",
        "net/ipv4/ip_default_ttl",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut devs = vec!["all".to_string(), "default".to_string()];
    devs.extend(links.iter().map(|l| l.name.clone()));
    for d in &devs {
        for k in [
            "forwarding",
            "rp_filter",
            "accept_redirects",
            "send_redirects",
            "proxy_arp",
            "arp_ignore",
            "route_localnet",
        ] {
            p.push(format!("net/ipv4/conf/{d}/{k}"));
        }
        for k in ["forwarding", "disable_ipv6", "accept_ra"] {
            p.push(format!("net/ipv6/conf/{d}/{k}"));
        }
    }
    p
}

/// Reads the namespace the calling thread is in (see [`Enter`]).
pub fn dump() -> Result<Netns> {
    let links = parse_links(&run("ip", &["-json", "-d", "link", "show"], None)?)?;
    let addrs = parse_addrs(&run("ip", &["-json", "addr", "show"], None)?)?;
    let routes4 = parse_routes(&run("ip", &["-4", "route", "show", "table", "main"], None)?);
    let routes6 = parse_routes(&run("ip", &["-6", "route", "show", "table", "main"], None)?);
    let mut sysctls = Vec::new();
    for p in sysctl_paths(&links) {
        if let Ok(v) = std::fs::read_to_string(format!("/proc/sys/{p}")) {
            sysctls.push((p, v.trim().to_string()));
        }
    }
    let nft = run("nft", &["list", "ruleset"], None).context("the namespace's nftables ruleset")?;
    Ok(Netns {
        links,
        addrs,
        routes4,
        routes6,
        sysctls,
        nft,
    })
}

impl Netns {
    pub fn to_json(&self) -> Vec<u8> {
        let v = json!({
            "links": self.links.iter().map(|l| json!({
                "name": l.name, "kind": l.kind, "mtu": l.mtu, "up": l.up, "mac": l.mac,
            })).collect::<Vec<_>>(),
            "addrs": self.addrs.iter().map(|(d, a)| json!([d, a])).collect::<Vec<_>>(),
            "routes4": self.routes4,
            "routes6": self.routes6,
            "sysctls": self.sysctls.iter().map(|(p, v)| json!([p, v])).collect::<Vec<_>>(),
            "nft": self.nft,
        });
        serde_json::to_vec_pretty(&v).unwrap_or_default()
    }

    pub fn from_json(path: &str, b: &[u8]) -> Result<Netns> {
        let v: Value = serde_json::from_slice(b).with_context(|| format!("{path}: not JSON"))?;
        let s = |x: &Value| {
            x.as_str()
                .map(str::to_string)
                .with_context(|| format!("{path}: {x} is not a string"))
        };
        let pairs = |k: &str| -> Result<Vec<(String, String)>> {
            v[k].as_array()
                .with_context(|| format!("{path}: no {k}"))?
                .iter()
                .map(|p| Ok((s(&p[0])?, s(&p[1])?)))
                .collect()
        };
        let lines = |k: &str| -> Result<Vec<String>> {
            v[k].as_array()
                .with_context(|| format!("{path}: no {k}"))?
                .iter()
                .map(s)
                .collect()
        };
        let mut links = Vec::new();
        for l in v["links"].as_array().with_context(|| format!("{path}: no links"))? {
            links.push(Link {
                name: s(&l["name"])?,
                kind: s(&l["kind"])?,
                mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
                up: l["up"].as_bool().unwrap_or(false),
                mac: s(&l["mac"])?,
            });
        }
        Ok(Netns {
            links,
            addrs: pairs("addrs")?,
            routes4: lines("routes4")?,
            routes6: lines("routes6")?,
            sysctls: pairs("sysctls")?,
            nft: s(&v["nft"])?,
        })
    }
}

/// `--veth-pair IN=OUT` arguments.
pub fn parse_veth_pair(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('@') => Ok((a.to_string(), b.to_string())),
        _ => bail!("--veth-pair {s}: expected IN=OUT (bridges are not supported)"),
    }
}

/// Recreates the dumped namespace, if the images have one, in a fresh
/// namespace the calling thread (the engine's main thread, before it forks
/// the tree) moves into.
pub fn restore(dir: &ImageDir, veth_pairs: &[(String, String)]) -> Result<()> {
    if !dir.exists(IMAGE) {
        return Ok(());
    }
    let path = dir.path().join(IMAGE).display().to_string();
    let ns = Netns::from_json(&path, &dir.read_bytes(IMAGE)?)?;
    let mut outside = Vec::new();
    for l in ns.links.iter().filter(|l| l.kind == "veth") {
        let out = veth_pairs
            .iter()
            .find(|(i, _)| *i == l.name)
            .map(|(_, o)| o.clone())
            .with_context(|| {
                format!(
                    "veth {} of the tree's network namespace has its other end outside; restore with --veth-pair {}=NAME",
                    l.name, l.name
                )
            })?;
        outside.push((l.clone(), out));
    }
    let orig = File::open("/proc/thread-self/ns/net").context("our network namespace")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("Cannot create a network namespace")?;
    let orig_path = format!("/proc/{}/fd/{}", std::process::id(), orig.as_raw_fd());
    let setup = || -> Result<()> {
        for l in &ns.links {
            if l.kind == "loopback" {
                run("ip", &["link", "set", "lo", "mtu", &l.mtu.to_string()], None)?;
            }
        }
        for (l, out) in &outside {
            let mtu = l.mtu.to_string();
            let mut args = vec!["link", "add", l.name.as_str(), "mtu", &mtu];
            if !l.mac.is_empty() {
                args.extend(["address", l.mac.as_str()]);
            }
            args.extend([
                "type",
                "veth",
                "peer",
                "name",
                out.as_str(),
                "mtu",
                &mtu,
                "netns",
                &orig_path,
            ]);
            run("ip", &args, None).with_context(|| format!("veth {} (outside: {out})", l.name))?;
            run(
                "nsenter",
                &[
                    &format!("--net={orig_path}"),
                    "--",
                    "ip",
                    "link",
                    "set",
                    out.as_str(),
                    "up",
                ],
                None,
            )
            .with_context(|| format!("veth end {out} outside"))?;
        }
        for (dev, a) in &ns.addrs {
            run("ip", &["addr", "add", a.as_str(), "dev", dev.as_str()], None)
                .with_context(|| format!("address {a} on {dev}"))?;
        }
        for l in &ns.links {
            run(
                "ip",
                &["link", "set", l.name.as_str(), if l.up { "up" } else { "down" }],
                None,
            )?;
        }
        for (fam, routes) in [("-4", &ns.routes4), ("-6", &ns.routes6)] {
            for r in routes {
                let mut args = vec![fam, "route", "add"];
                args.extend(r.split_whitespace());
                run("ip", &args, None).with_context(|| format!("route {r}"))?;
            }
        }
        for (p, v) in &ns.sysctls {
            let f = format!("/proc/sys/{p}");
            let now = std::fs::read_to_string(&f).unwrap_or_default();
            if now.split_whitespace().collect::<Vec<_>>() != v.split_whitespace().collect::<Vec<_>>() {
                std::fs::write(&f, v).with_context(|| format!("sysctl {p} = {v}"))?;
            }
        }
        if !ns.nft.trim().is_empty() {
            run("nft", &["-f", "-"], Some(&ns.nft)).context("the nftables ruleset")?;
        }
        Ok(())
    };
    setup().context("Cannot rebuild the tree's network namespace")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00"},
        {"ifindex":2,"link_index":22,"ifname":"va","flags":["BROADCAST","MULTICAST"],"mtu":1400,"link_type":"ether","address":"2e:a2:f9:c8:16:ca","link_netnsid":0,"linkinfo":{"info_kind":"veth"}}]"#;

    #[test]
    fn links_are_parsed_and_odd_kinds_refused() {
        let l = parse_links(LINKS).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].kind.as_str(), l[0].up), ("loopback", true));
        assert_eq!((l[1].name.as_str(), l[1].mtu, l[1].up), ("va", 1400, false));
        assert_eq!(l[1].mac, "2e:a2:f9:c8:16:ca");
        let bridge = r#"[{"ifname":"br0","mtu":1500,"link_type":"ether","linkinfo":{"info_kind":"bridge"}}]"#;
        assert!(parse_links(bridge).unwrap_err().to_string().contains("br0 (bridge)"));
        let inner = r#"[{"ifname":"va","mtu":1500,"link_type":"ether","linkinfo":{"info_kind":"veth"}}]"#;
        assert!(parse_links(inner).is_err());
    }

    #[test]
    fn addresses_skip_what_the_kernel_makes() {
        let j = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]},
            {"ifname":"va","addr_info":[{"family":"inet","local":"10.1.2.3","prefixlen":24,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},{"family":"inet6","local":"fd00::3","prefixlen":64,"scope":"global"}]}]"#;
        assert_eq!(
            parse_addrs(j).unwrap(),
            vec![("va".into(), "10.1.2.3/24".into()), ("va".into(), "fd00::3/64".into())]
        );
    }

    #[test]
    fn routes_skip_kernel_ones_and_state_words() {
        let t = "default via 10.1.2.1 dev va linkdown \n10.1.2.0/24 dev va proto kernel scope link src 10.1.2.3\n10.9.0.0/16 via 10.1.2.7 dev va metric 5\n";
        assert_eq!(
            parse_routes(t),
            vec![
                "default via 10.1.2.1 dev va",
                "10.9.0.0/16 via 10.1.2.7 dev va metric 5"
            ]
        );
    }

    #[test]
    fn image_roundtrip_and_veth_pairs() {
        let n = Netns {
            links: parse_links(LINKS).unwrap(),
            addrs: vec![("va".into(), "10.1.2.3/24".into())],
            routes4: vec!["default via 10.1.2.1 dev va".into()],
            routes6: vec![],
            sysctls: vec![("net/ipv4/ip_forward".into(), "1".into())],
            nft: "table inet t {\n}\n".into(),
        };
        assert_eq!(Netns::from_json("x", &n.to_json()).unwrap(), n);
        assert!(Netns::from_json("x", b"{}").is_err());
        assert_eq!(parse_veth_pair("va=vb").unwrap(), ("va".into(), "vb".into()));
        assert!(parse_veth_pair("va").is_err());
        assert!(parse_veth_pair("va=vb@br0").is_err());
    }
}
