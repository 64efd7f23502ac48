//! The mount tree of a container: /proc/PID/mountinfo parsed into CRIU's
//! `mnt_entry` records at dump, and those records turned into the steps
//! that rebuild the tree over a new root at restore. Pure functions; the
//! syscalls are in `ns::mod`.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use crate::image::pb;

pub const MS_RDONLY: u32 = 1;
pub const MS_NOSUID: u32 = 2;
pub const MS_NODEV: u32 = 4;
pub const MS_NOEXEC: u32 = 8;
pub const MS_NOATIME: u32 = 1 << 10;
pub const MS_NODIRATIME: u32 = 1 << 11;
pub const MS_RELATIME: u32 = 1 << 21;
pub const MS_STRICTATIME: u32 = 1 << 24;

/// One line of /proc/PID/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    pub root: String,
    pub mountpoint: String,
    pub mnt_opts: String,
    pub shared: Option<u32>,
    pub master: Option<u32>,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/PID/mountinfo.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || format!("mountinfo line {}: {line:?}", n + 1);
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-").with_context(bad)?;
        if sep < 6 || f.len() < sep + 4 {
            bail!("{}: too few fields", bad());
        }
        let (major, minor) = f[2].split_once(':').with_context(bad)?;
        let mut shared = None;
        let mut master = None;
        for opt in &f[6..sep] {
            if let Some(v) = opt.strip_prefix("shared:") {
                shared = Some(v.parse().with_context(bad)?);
            } else if let Some(v) = opt.strip_prefix("master:") {
                master = Some(v.parse().with_context(bad)?);
            }
        }
        out.push(MountInfo {
            id: f[0].parse().with_context(bad)?,
            parent: f[1].parse().with_context(bad)?,
            major: major.parse().with_context(bad)?,
            minor: minor.parse().with_context(bad)?,
            root: unescape(f[3]),
            mountpoint: unescape(f[4]),
            mnt_opts: f[5].to_string(),
            shared,
            master,
            fstype: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
            super_opts: f[sep + 3].to_string(),
        });
    }
    Ok(out)
}

/// The per-mount flags of a mountinfo option list (`ro,nosuid,relatime`).
pub fn mnt_flags(opts: &str) -> u32 {
    opts.split(',')
        .map(|o| match o {
            "ro" => MS_RDONLY,
            "nosuid" => MS_NOSUID,
            "nodev" => MS_NODEV,
            "noexec" => MS_NOEXEC,
            "noatime" => MS_NOATIME,
            "nodiratime" => MS_NODIRATIME,
            "relatime" => MS_RELATIME,
            "strictatime" => MS_STRICTATIME,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// CRIU's fstype number of a file system name.
pub fn fstype_of(name: &str) -> pb::Fstype {
    use pb::Fstype as F;
    match name {
        "proc" => F::Proc,
        "sysfs" => F::Sysfs,
        "devtmpfs" => F::Devtmpfs,
        "binfmt_misc" => F::BinfmtMisc,
        "tmpfs" => F::Tmpfs,
        "devpts" => F::Devpts,
        "pstore" => F::Pstore,
        "securityfs" => F::Securityfs,
        "fusectl" => F::Fusectl,
        "debugfs" => F::Debugfs,
        "cgroup" => F::Cgroup,
        "cgroup2" => F::Cgroup2,
        "mqueue" => F::Mqueue,
        "overlay" => F::Overlayfs,
        "tracefs" => F::Tracefs,
        _ => F::Unsupported,
    }
}

/// Kernel-internal device number (`MKKDEV`), as CRIU stores `root_dev`.
fn kdev(major: u32, minor: u32) -> u32 {
    (major << 20) | minor
}

/// The mnt_entry records of a mount namespace, in mountinfo order.
/// `ext` maps a mountpoint (relative to the container's root) to the name
/// the caller gave it (`ext_mnt` at dump: key = mountpoint, val = name).
pub fn to_entries(mounts: &[MountInfo], ext: &[(String, String)]) -> Vec<pb::MntEntry> {
    mounts
        .iter()
        .map(|m| {
            let ext_key = ext.iter().find(|(k, _)| *k == m.mountpoint).map(|(_, v)| v.clone());
            let sb_ro = m.super_opts.split(',').any(|o| o == "ro");
            let options: Vec<&str> = m.super_opts.split(',').filter(|o| *o != "ro" && *o != "rw").collect();
            pb::MntEntry {
                fstype: fstype_of(&m.fstype) as u32,
                mnt_id: m.id,
                root_dev: kdev(m.major, m.minor),
                parent_mnt_id: m.parent,
                flags: mnt_flags(&m.mnt_opts),
                root: m.root.clone(),
                mountpoint: m.mountpoint.clone(),
                source: m.source.clone(),
                options: options.join(","),
                shared_id: m.shared,
                master_id: m.master,
                with_plugin: None,
                ext_mount: ext_key.as_ref().map(|_| true),
                fsname: Some(m.fstype.clone()),
                internal_sharing: None,
                deleted: None,
                sb_flags: Some(if sb_ro { MS_RDONLY } else { 0 }),
                ext_key,
            }
        })
        .collect()
}

/// How one mount comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// The namespace's root: the restore's `root` directory.
    Root,
    /// A new instance of its file system (proc, sysfs, tmpfs, devpts,
    /// mqueue, cgroup2); a tmpfs gets its saved contents.
    Fresh,
    /// A bind of `sub` (relative, may be empty) below the mount `from`.
    Bind { from: u32, sub: String },
    /// A bind of what the caller maps the external name `key` to.
    External { key: String },
}

/// One step of rebuilding the tree: mount `entry` as `how`.
#[derive(Debug, Clone)]
pub struct Step {
    pub entry: pb::MntEntry,
    pub how: How,
}

fn is_fresh_kind(fsname: &str) -> bool {
    // cgroup (v1) and cgroup2 with root "/" are the container's own cgroup
    // in its cgroup namespace: mounted afresh in the new one.
    matches!(
        fsname,
        "proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup" | "cgroup2"
    )
}

/// Orders the entries parents first and decides how each comes back.
/// Fails, naming the mount, for one that cannot be recreated.
pub fn plan(entries: &[pb::MntEntry]) -> Result<Vec<Step>> {
    if entries.is_empty() {
        bail!("the mount namespace image lists no mount");
    }
    let ids: HashMap<u32, usize> = entries.iter().enumerate().map(|(i, e)| (e.mnt_id, i)).collect();
    let roots: Vec<&pb::MntEntry> = entries.iter().filter(|e| !ids.contains_key(&e.parent_mnt_id)).collect();
    if roots.len() != 1 || roots[0].mountpoint != "/" {
        bail!(
            "the mount namespace has {} root mounts ({}); expected one at /",
            roots.len(),
            roots
                .iter()
                .map(|r| r.mountpoint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Parents first (breadth by depth of the parent chain).
    let depth = |e: &pb::MntEntry| -> usize {
        let mut d = 0;
        let mut cur = e;
        while let Some(&i) = ids.get(&cur.parent_mnt_id) {
            d += 1;
            cur = &entries[i];
            if d > entries.len() {
                break;
            }
        }
        d
    };
    let mut order: Vec<(usize, usize)> = entries.iter().enumerate().map(|(i, e)| (depth(e), i)).collect();
    order.sort();
    let mut steps: Vec<Step> = Vec::with_capacity(entries.len());
    for (d, i) in order {
        let e = &entries[i];
        let fsname = e.fsname.clone().unwrap_or_default();
        let how = if d == 0 {
            How::Root
        } else if e.ext_mount() {
            How::External {
                key: e.ext_key.clone().unwrap_or_else(|| e.mountpoint.clone()),
            }
        } else if let Some(src) = steps
            .iter()
            .find(|s| s.how != How::Root && s.entry.root_dev == e.root_dev && within(&e.root, &s.entry.root).is_some())
        {
            How::Bind {
                from: src.entry.mnt_id,
                sub: within(&e.root, &src.entry.root).unwrap_or_default(),
            }
        } else if is_fresh_kind(&fsname) && e.root == "/" {
            How::Fresh
        } else if e.root_dev == entries[roots_idx(entries, &ids)].root_dev
            && within(&e.root, &entries[roots_idx(entries, &ids)].root).is_some()
        {
            How::Bind {
                from: entries[roots_idx(entries, &ids)].mnt_id,
                sub: within(&e.root, &entries[roots_idx(entries, &ids)].root).unwrap_or_default(),
            }
        } else {
            bail!(
                "mount {} ({fsname}, root {}) is a bind mount from outside the container that the caller did not \
                 declare external (ext_mnt / --external mnt[{}]:NAME)",
                e.mountpoint,
                e.root,
                e.mountpoint
            );
        };
        steps.push(Step { entry: e.clone(), how });
    }
    Ok(steps)
}

fn roots_idx(entries: &[pb::MntEntry], ids: &HashMap<u32, usize>) -> usize {
    entries
        .iter()
        .position(|e| !ids.contains_key(&e.parent_mnt_id))
        .unwrap_or(0)
}

/// `path` relative to `base` when it lies within it ("" for equal).
fn within(path: &str, base: &str) -> Option<String> {
    if base == "/" {
        return Some(path.trim_start_matches('/').to_string());
    }
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some(String::new())
    } else {
        rest.strip_prefix('/').map(str::to_string)
    }
}

/// The mountpoints of `id`'s direct children, relative to `id`'s own
/// mountpoint (a tmpfs dump does not descend into them).
pub fn child_points(entries: &[pb::MntEntry], id: u32) -> Vec<String> {
    let Some(me) = entries.iter().find(|e| e.mnt_id == id) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|e| e.parent_mnt_id == id)
        .filter_map(|e| within(&e.mountpoint, &me.mountpoint))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC: &str = "\
67 43 254:0 /tmp/cx/b/rootfs / rw,relatime - ext4 /dev/vda rw,discard
68 67 0:40 / /proc rw,relatime - proc proc rw
69 67 0:41 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
70 69 0:42 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
72 69 0:39 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
73 67 0:44 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
74 73 0:45 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
75 74 0:29 /cx1 /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu
44 68 0:40 /bus /proc/bus ro,relatime - proc proc rw
49 68 0:41 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
51 73 0:47 / /sys/firmware ro,relatime - tmpfs tmpfs ro
80 67 254:0 /tmp/data /data rw shared:5 - ext4 /dev/vda rw
";

    #[test]
    fn parses_runc_mountinfo() {
        let m = parse_mountinfo(RUNC).unwrap();
        assert_eq!(m.len(), 12);
        assert_eq!((m[0].id, m[0].parent, m[0].major, m[0].minor), (67, 43, 254, 0));
        assert_eq!(m[0].root, "/tmp/cx/b/rootfs");
        assert_eq!(m[3].fstype, "devpts");
        assert_eq!(m[3].super_opts, "rw,gid=5,mode=620,ptmxmode=666");
        assert_eq!(m[11].shared, Some(5));
        assert_eq!(
            mnt_flags(&m[5].mnt_opts),
            MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
        );
        assert!(parse_mountinfo("1 2 3\n").is_err());
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn plans_a_runc_tree() {
        let m = parse_mountinfo(RUNC).unwrap();
        // Without the caller's names the cgroup bind and /data are refused.
        let err = plan(&to_entries(&m, &[])).unwrap_err().to_string();
        assert!(err.contains("mount /data "), "{err}");
        let data = vec![("/data".to_string(), "data-vol".to_string())];
        let err = plan(&to_entries(&m, &data)).unwrap_err().to_string();
        assert!(err.contains("mount /sys/fs/cgroup/cpu "), "{err}");
        let ext = vec![
            ("/sys/fs/cgroup/cpu".to_string(), "/sys/fs/cgroup/cpu".to_string()),
            ("/data".to_string(), "data-vol".to_string()),
        ];
        let e = to_entries(&m, &ext);
        assert_eq!(e[5].sb_flags, Some(MS_RDONLY));
        assert_eq!(e[1].options, "");
        assert_eq!(e[3].options, "gid=5,mode=620,ptmxmode=666");
        let steps = plan(&e).unwrap();
        let how = |p: &str| steps.iter().find(|s| s.entry.mountpoint == p).unwrap().how.clone();
        assert_eq!(how("/"), How::Root);
        assert_eq!(how("/proc"), How::Fresh);
        assert_eq!(how("/dev/pts"), How::Fresh);
        assert_eq!(
            how("/proc/bus"),
            How::Bind {
                from: 68,
                sub: "bus".into()
            }
        );
        assert_eq!(
            how("/proc/keys"),
            How::Bind {
                from: 69,
                sub: "null".into()
            }
        );
        assert_eq!(how("/data"), How::External { key: "data-vol".into() });
        // Parents come before children.
        let pos = |p: &str| steps.iter().position(|s| s.entry.mountpoint == p).unwrap();
        assert!(pos("/dev") < pos("/dev/pts") && pos("/proc") < pos("/proc/keys") && pos("/dev") < pos("/proc/keys"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup") && pos("/sys/fs/cgroup") < pos("/sys/fs/cgroup/cpu"));
        assert_eq!(child_points(&e, 69), vec!["pts".to_string(), "mqueue".to_string()]);
    }

    #[test]
    fn a_bind_from_inside_the_root_fs_is_a_bind_of_the_root() {
        let t = "1 0 8:1 /rootfs / rw - ext4 /dev/sda rw\n2 1 8:1 /rootfs/etc /mnt rw - ext4 /dev/sda rw\n";
        let e = to_entries(&parse_mountinfo(t).unwrap(), &[]);
        let steps = plan(&e).unwrap();
        assert_eq!(
            steps[1].how,
            How::Bind {
                from: 1,
                sub: "etc".into()
            }
        );
        let t = "1 0 8:1 /rootfs / rw - ext4 /dev/sda rw\n2 1 8:1 /home /mnt rw - ext4 /dev/sda rw\n";
        assert!(plan(&to_entries(&parse_mountinfo(t).unwrap(), &[])).is_err());
    }
}
