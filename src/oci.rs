//! OCI runtime conventions cryo needs when it dumps a container itself
//! (`cryo dump --bundle DIR`): which mounts of the container come from the
//! host (its bundle's bind mounts, and on cgroup v1 the controller binds
//! under a `cgroup` mount), whether its network namespace belongs to
//! somebody else (a `path` in the spec), and podman's export layout for the
//! tar bundle of a container (calling-conventions.md §5.3).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::ns::mounts;

/// What a container's dump needs from its bundle.
#[derive(Debug, Clone, Default)]
pub struct Externals {
    /// ext_mnt at dump: mountpoint → name (the name is the mountpoint).
    pub ext_mnt: Vec<(String, String)>,
    /// CRIU `external` strings (the spec's network namespace path).
    pub external: Vec<String>,
}

/// Reads `bundle/config.json`.
pub fn read_spec(bundle: &Path) -> Result<Value> {
    let p = bundle.join("config.json");
    let b = fs::read(&p).with_context(|| format!("Cannot read {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("{} is not JSON", p.display()))
}

/// The externals of the container whose init is `pid`, as runc names them
/// for CRIU: bind mounts by destination, cgroup v1 controller binds by
/// mountpoint, an external network namespace by inode.
pub fn externals(spec: &Value, pid: i32) -> Result<Externals> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("Cannot read /proc/{pid}/mountinfo"))?;
    let infos = mounts::parse_mountinfo(&text)?;
    let net_path = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .map(str::to_string);
    let ino = match &net_path {
        Some(p) => Some(
            fs::metadata(p)
                .with_context(|| format!("Cannot stat the network namespace {p}"))?
                .ino(),
        ),
        None => None,
    };
    Ok(externals_of(spec, &infos, ino))
}

/// [`externals`] over parsed inputs (pure).
pub fn externals_of(spec: &Value, infos: &[mounts::MountInfo], net_ino: Option<u64>) -> Externals {
    let mut e = Externals::default();
    for m in spec["mounts"].as_array().into_iter().flatten() {
        let Some(dest) = m["destination"].as_str() else {
            continue;
        };
        let bind = m["type"] == "bind"
            || m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
        if bind {
            e.ext_mnt.push((dest.to_string(), dest.to_string()));
        } else if m["type"] == "cgroup" {
            // cgroup v1 without a cgroup namespace: the runtime bind-mounts
            // each controller's directory from the host below `dest`.
            for i in infos.iter().filter(|i| i.fstype == "cgroup") {
                if i.mountpoint.starts_with(&format!("{}/", dest.trim_end_matches('/'))) {
                    e.ext_mnt.push((i.mountpoint.clone(), i.mountpoint.clone()));
                }
            }
        }
    }
    if let Some(ino) = net_ino {
        e.external.push(format!("net[{ino}]:{}", crate::ns::EXT_NET_KEY));
    }
    e
}

/// podman's `config.dump` for a container cryo dumped itself: the fields
/// checkpointctl reads.
pub fn config_dump(id: &str, runtime: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    serde_json::json!({
        "id": id,
        "name": id,
        "rootfsImageName": "",
        "runtime": runtime,
        "createdTime": format!("@{now}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_shaped_externals() {
        let spec = serde_json::json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rw"]},
                {"destination": "/etc/hosts", "type": "none", "source": "/x/hosts", "options": ["bind"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}
            ],
            "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}
        });
        let mi = "1 0 8:1 /r / rw - ext4 /dev/sda rw\n\
                  2 1 0:29 /c1 /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n\
                  3 1 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let infos = mounts::parse_mountinfo(mi).unwrap();
        let e = externals_of(&spec, &infos, Some(42));
        let keys: Vec<&str> = e.ext_mnt.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["/data", "/etc/hosts", "/sys/fs/cgroup/cpu"]);
        assert_eq!(e.external, ["net[42]:extRootNetNS"]);
        assert_eq!(config_dump("c", "cryo")["runtime"], "cryo");
    }
}
