//! `criu_opts` as cryo understands it: which fields map onto the engine,
//! which are accepted with no effect (permissions for resources the engine
//! would refuse anyway, tuning knobs), and which are refused because the
//! engine cannot honour them yet. Pure functions over the decoded message.

use crate::image::pb::{CriuCgMode, CriuOpts};

/// CLONE_NEWNET, the only bit `empty_ns` may carry.
pub const CLONE_NEWNET: u32 = 0x4000_0000;

/// The verdict on a request's options.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Review {
    /// Accepted, but not applied as CRIU would: logged as warnings.
    pub warnings: Vec<String>,
    /// Refused: the request fails with these (one line each).
    pub refused: Vec<String>,
}

impl Review {
    fn warn(&mut self, s: impl Into<String>) {
        self.warnings.push(s.into());
    }
    fn refuse(&mut self, s: impl Into<String>) {
        self.refused.push(s.into());
    }

    /// The refusals as one message, or None.
    pub fn error(&self) -> Option<String> {
        if self.refused.is_empty() {
            None
        } else {
            Some(format!("Unsupported options: {}", self.refused.join("; ")))
        }
    }
}

/// The effective cgroup mode: an explicit `manage_cgroups_mode` wins,
/// else `manage_cgroups` true means SOFT and false IGNORE.
pub fn cg_mode(o: &CriuOpts) -> CriuCgMode {
    match o.manage_cgroups_mode {
        Some(_) => o.manage_cgroups_mode(),
        None if o.manage_cgroups() => CriuCgMode::Soft,
        None => CriuCgMode::Ignore,
    }
}

/// Checks shared by dump and restore.
fn common(o: &CriuOpts, r: &mut Review) {
    if let Some(f) = &o.log_file {
        if f.contains('/') {
            r.refuse(format!("log_file {f:?} must be a bare file name"));
        }
    }
    if o.tls() || o.tls_cacert.is_some() || o.tls_cert.is_some() || o.tls_key.is_some() {
        r.refuse("tls (cryo's page server speaks plain TCP)");
    }
    if o.status_fd.is_some() {
        r.refuse("status_fd (cryo has no lazy-pages daemon to report on)");
    }
    if o.pidfd_store_sk.is_some() {
        r.refuse("pidfd_store_sk (cryo keeps no pidfd store between pre-dumps)");
    }
    if !o.exec_cmd.is_empty() {
        r.refuse("exec_cmd");
    }
    let ns = o.empty_ns();
    if ns & !CLONE_NEWNET != 0 {
        r.refuse(format!("empty_ns {ns:#x} (only CLONE_NEWNET is allowed)"));
    }
    for v in &o.veths {
        if v.if_in.is_empty() || v.if_out.is_empty() || v.if_out.contains('@') {
            r.refuse(format!(
                "veths {}={} (expected both names, no bridge)",
                v.if_in, v.if_out
            ));
        }
    }
    match cg_mode(o) {
        CriuCgMode::Ignore | CriuCgMode::CgNone => {}
        m => r.warn(format!(
            "manage_cgroups mode {} accepted; cgroups are not dumped or restored (tasks stay in the engine's cgroup)",
            m.as_str_name()
        )),
    }
    if o.file_locks() {
        r.warn("file_locks accepted; file locks are not dumped yet");
    }
    if o.unix_sk_ino.len() + o.irmap_scan_paths.len() + o.skip_mnt.len() + o.enable_fs.len() > 0 {
        r.warn("unix_sk_ino / irmap_scan_paths / skip_mnt / enable_fs accepted with no effect");
    }
}

/// Reviews the options of a DUMP request.
pub fn review_dump(o: &CriuOpts) -> Review {
    let mut r = Review::default();
    common(o, &mut r);
    if o.pid.is_none() {
        r.refuse("no pid (a dump of the requesting process itself is not supported)");
    }
    if o.lazy_pages() {
        r.refuse(
            "lazy_pages on dump (cryo has no lazy-pages daemon: pre-dump with parent_img, \
             then restore with lazy_pages)",
        );
    }
    if let Some(ps) = &o.ps {
        if o.parent_img.is_some() || o.leave_running() {
            r.refuse("ps with parent_img or leave_running (a dump to cryo's page server is a whole, final dump)");
        }
        if ps.port.is_none() {
            r.refuse("ps without a port");
        }
    }
    if o.leave_stopped() {
        r.refuse("leave_stopped");
    }
    // A container's root and external mounts: the mount tree is dumped
    // from the container's own view; ext_mnt names the mounts that come
    // from the host.
    for e in &o.external {
        if !e.starts_with("net[") {
            r.warn(format!(
                "external {e:?} accepted; only an external net namespace is handled"
            ));
        }
    }
    if let Some(cg) = &o.freeze_cgroup {
        r.warn(format!(
            "freeze_cgroup {cg:?} accepted; cryo freezes with ptrace, not the cgroup freezer"
        ));
    }
    r
}

/// Reviews the options of a PRE_DUMP request: the tree keeps running and
/// only its memory is copied (tracked with uffd-wp from one pre-dump to
/// the next).
pub fn review_pre_dump(o: &CriuOpts) -> Review {
    let mut r = Review::default();
    common(o, &mut r);
    if o.pid.is_none() {
        r.refuse("no pid (a pre-dump of the requesting process itself is not supported)");
    }
    if o.lazy_pages() {
        r.refuse("lazy_pages on pre-dump");
    }
    if o.ps.is_some() {
        r.refuse("ps on pre-dump (pre-dump rounds go to image directories; cryo migrate streams them)");
    }
    r
}

/// Reviews the options of a RESTORE request. `root_is_host` tells whether
/// `root` (if given) resolves to the host's `/`.
pub fn review_restore(o: &CriuOpts, root_is_host: bool) -> Review {
    let mut r = Review::default();
    common(o, &mut r);
    // root: the directory a container's mount tree is rebuilt over;
    // ext_mnt: the host sources of its external mounts. Both are applied
    // when the images hold a mount namespace and ignored otherwise.
    let _ = root_is_host;
    if !o.join_ns.is_empty() {
        let ns: Vec<String> = o.join_ns.iter().map(|j| format!("{}={}", j.ns, j.ns_file)).collect();
        r.refuse(format!("join_ns ({})", ns.join(", ")));
    }
    for i in &o.inherit_fd {
        if !i.key.starts_with("pipe:[") && i.key != crate::ns::EXT_NET_KEY {
            r.refuse(format!(
                "inherit_fd {}=fd {} (only pipes and {} can be substituted)",
                i.key,
                i.fd,
                crate::ns::EXT_NET_KEY
            ));
        }
    }
    if !o.cg_root.is_empty() {
        r.warn(format!(
            "cg_root ({} entries) accepted; the tree stays in the cgroups the caller put the engine in",
            o.cg_root.len()
        ));
    }

    if o.lsm_profile.is_some() || o.lsm_mount_context.is_some() {
        r.refuse("lsm_profile / lsm_mount_context (LSM labels are not applied)");
    }
    if o.inherit_fd.iter().any(|i| i.key == crate::ns::EXT_NET_KEY) {
        r.warn(format!(
            "inherit_fd {}: the container joins the caller's network namespace (empty_ns NET does not apply)",
            crate::ns::EXT_NET_KEY
        ));
    } else if o.empty_ns() & CLONE_NEWNET != 0 {
        r.warn("empty_ns NET: a container is restored into a fresh network namespace with loopback up");
    }
    if o.rst_sibling() {
        r.warn(
            "rst_sibling accepted; the restored tree is a child of cryo's namespace init, \
             which the caller inherits only as a child subreaper",
        );
    }
    if o.parent_img.is_some() {
        r.warn("parent_img on restore accepted; the images' own parent link is followed");
    }
    if o.ps.is_some() {
        r.refuse("ps on restore (cryo restores from the images directory; lazy pages come from its parents)");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pb::{ExtMountMap, InheritFd, JoinNamespace};

    fn runc_dump() -> CriuOpts {
        // What runc 1.1.5 sends for a plain `runc checkpoint` (§2.5).
        CriuOpts {
            images_dir_fd: Some(9),
            pid: Some(1234),
            leave_running: Some(false),
            ext_unix_sk: Some(false),
            tcp_established: Some(false),
            shell_job: Some(false),
            file_locks: Some(false),
            log_level: Some(4),
            log_file: Some("dump.log".into()),
            notify_scripts: Some(true),
            root: Some("/run/busybox/rootfs".into()),
            auto_dedup: Some(false),
            work_dir_fd: Some(10),
            ext_mnt: vec![ExtMountMap {
                key: "/dev/null".into(),
                val: "/dev/null".into(),
            }],
            manage_cgroups: Some(true),
            empty_ns: Some(CLONE_NEWNET),
            freeze_cgroup: Some("/sys/fs/cgroup/x".into()),
            lazy_pages: Some(false),
            orphan_pts_master: Some(true),
            config_file: Some("/etc/criu/runc.conf".into()),
            ..Default::default()
        }
    }

    #[test]
    fn runc_dump_is_accepted_with_warnings() {
        let r = review_dump(&runc_dump());
        assert!(r.refused.is_empty(), "{r:?}");
        assert!(r.warnings.iter().any(|w| w.contains("freeze_cgroup")));
        assert!(r.warnings.iter().any(|w| w.contains("SOFT")));
        assert!(r.error().is_none());
    }

    #[test]
    fn dump_refusals() {
        let mut o = runc_dump();
        o.pid = None;
        o.track_mem = Some(true);
        o.parent_img = Some("../pre".into());
        o.log_file = Some("../x.log".into());
        o.empty_ns = Some(CLONE_NEWNET | 0x20000);
        o.lazy_pages = Some(true);
        let r = review_dump(&o);
        let e = r.error().unwrap();
        assert!(!e.contains("track_mem") && !e.contains("parent_img ("), "{e}");
        for part in ["no pid", "bare file name", "empty_ns 0x40020000", "lazy_pages"] {
            assert!(e.contains(part), "{part} missing from {e}");
        }
    }

    #[test]
    fn restore_takes_runc_container_shapes() {
        // What runc 1.1.5 sends to restore a container: root, ext_mnt,
        // stdio pipes as inherit_fd, cg_root on cgroup v1.
        let mut o = runc_dump();
        o.pid = None;
        o.rst_sibling = Some(true);
        o.inherit_fd = vec![InheritFd {
            key: "pipe:[123]".into(),
            fd: 1,
        }];
        o.cg_root = vec![crate::image::pb::CgroupRoot {
            ctrl: Some("cpu".into()),
            path: "/ctr".into(),
        }];
        let r = review_restore(&o, false);
        assert!(r.refused.is_empty(), "{r:?}");
        assert!(r.warnings.iter().any(|w| w.contains("cg_root")), "{r:?}");
        assert!(
            r.warnings.iter().any(|w| w.contains("fresh network namespace")),
            "{r:?}"
        );
        // A network namespace the caller owns (config.json gave its path):
        // joined, not a fresh one.
        let mut ext = o.clone();
        ext.inherit_fd.push(InheritFd {
            key: "extRootNetNS".into(),
            fd: 5,
        });
        let r = review_restore(&ext, false);
        assert!(r.refused.is_empty(), "{r:?}");
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("joins the caller's network namespace")),
            "{r:?}"
        );
        assert!(
            !r.warnings.iter().any(|w| w.contains("fresh network namespace")),
            "{r:?}"
        );
        // What cryo cannot honour yet is refused, by name.
        o.inherit_fd.push(InheritFd {
            key: "extRootPidNS".into(),
            fd: 4,
        });
        o.join_ns = vec![JoinNamespace {
            ns: "ipc".into(),
            ns_file: "/proc/1/ns/ipc".into(),
            extra_opt: None,
        }];
        let e = review_restore(&o, false).error().unwrap();
        for part in ["inherit_fd extRootPidNS=fd 4", "join_ns (ipc=/proc/1/ns/ipc)"] {
            assert!(e.contains(part), "{part} missing from {e}");
        }
        assert!(!e.contains("pipe:[123]"), "{e}");
    }

    #[test]
    fn pre_dump_as_runc_sends_it() {
        // runc checkpoint --pre-dump --parent-path ../A: track_mem and
        // parent_img, no mounts.
        let mut o = runc_dump();
        o.ext_mnt.clear();
        o.parent_img = Some("../A".into());
        o.track_mem = Some(true);
        assert!(review_pre_dump(&o).error().is_none(), "{:?}", review_pre_dump(&o));
        assert!(review_dump(&o).error().is_none());
        o.status_fd = Some(5);
        o.pidfd_store_sk = Some(6);
        let e = review_pre_dump(&o).error().unwrap();
        assert!(e.contains("status_fd") && e.contains("pidfd_store_sk"), "{e}");
        // Restore with lazy pages and veths.
        let mut o = runc_dump();
        o.lazy_pages = Some(true);
        o.veths = vec![crate::image::pb::CriuVethPair {
            if_in: "eth0".into(),
            if_out: "veth-host".into(),
        }];
        assert!(review_restore(&o, false).error().is_none());
        assert!(review_dump(&o).error().unwrap().contains("lazy_pages on dump"));
        o.veths[0].if_out = "veth@br0".into();
        assert!(review_restore(&o, false)
            .error()
            .unwrap()
            .contains("veths eth0=veth@br0"));
    }

    #[test]
    fn cgroup_mode() {
        let mut o = CriuOpts::default();
        assert_eq!(cg_mode(&o), CriuCgMode::Ignore);
        o.manage_cgroups = Some(true);
        assert_eq!(cg_mode(&o), CriuCgMode::Soft);
        o.manage_cgroups_mode = Some(CriuCgMode::Full as i32);
        assert_eq!(cg_mode(&o), CriuCgMode::Full);
    }
}
