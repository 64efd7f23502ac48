//! System V IPC: shared memory segments, semaphore sets and message
//! queues.
//!
//! **Which objects a dump takes.** SysV objects live in an IPC namespace,
//! not in a process. A tree in its own IPC namespace (a container) owns
//! everything in it: all objects are taken. A tree in the host's IPC
//! namespace shares it with everyone else, so only what the tree uses is
//! taken: shared memory segments it has attached (`SYSV` mappings in
//! /proc/PID/maps) or created or last attached/detached (`cpid`/`lpid`);
//! semaphore sets where a process of the tree did the last operation on
//! one of the semaphores (semctl GETPID); message queues where a process
//! of the tree sent or received last (`lspid`/`lrpid`). An object the tree
//! only looked at, or set up and never touched again, is not taken.
//!
//! **Images** (CRIU's): `ipcns-shm-N.img` (ipc_shm_entry + the segment's
//! bytes inline), `ipcns-sem-N.img` (ipc_sem_entry + the values),
//! `ipcns-msg-N.img` (ipc_msg_entry + each queued message, type and text,
//! in queue order, read with MSG_COPY so the queue is untouched). N is the
//! tree's ipc namespace id from ids-PID.img.
//!
//! **Restore.** The tree comes back in a fresh IPC namespace (CLONE_NEWIPC
//! on the namespace init) whenever the dump has SysV objects; there each
//! object is recreated with its old id (kernel.{shm,sem,msg}_next_id) and
//! key, uid, gid and mode, before any task exists. Each SysV mapping of a
//! task is attached again with shmat (read-only if it was) in the task's
//! staging area and moved into place by the restorer like any shared
//! mapping, so processes that attached one segment share it again.
//! Segments that were already removed (IPC_RMID while still attached) are
//! removed again once every task is attached.
//!
//! Not kept: cuid/cgid (the creator becomes root), the time stamps and
//! last pids (sem_otime, shm_atime, msg_stime...: the kernel sets them, no
//! call can), and SEM_UNDO adjustments (per-process undo lists have no
//! interface to read them).
//!
//! Entry points: [`dump`] (given the tree's pids and a pid inside its ipc
//! namespace), [`load`], [`restore_objects`] (call inside the new ipc
//! namespace), [`remove_destroyed`], and [`vma_attach`] for the tasks.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use tracing::debug;

use crate::image::{pb, ImageDir, ImageReader, ImageWriter, Kind};
use crate::sys::ipc as sys;

/// vma_entry.status bit of a SysV shared memory attachment.
pub use crate::mem::VMA_AREA_SYSVIPC;
const SHM_DEST: u32 = 0o1000;

pub fn shm_image(ns: u32) -> String {
    format!("ipcns-shm-{ns}.img")
}
pub fn sem_image(ns: u32) -> String {
    format!("ipcns-sem-{ns}.img")
}
pub fn msg_image(ns: u32) -> String {
    format!("ipcns-msg-{ns}.img")
}

/// One row of /proc/sysvipc/{shm,sem,msg}, by column name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(BTreeMap<String, i64>);

impl Row {
    fn get(&self, k: &str) -> Result<i64> {
        self.0.get(k).copied().with_context(|| format!("no {k} column"))
    }
}

/// Parses a /proc/sysvipc table: a header line of column names, then one
/// line of numbers per object (`perms` is octal).
pub fn parse_table(text: &str) -> Result<Vec<Row>> {
    let mut lines = text.lines();
    let Some(head) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols: Vec<&str> = head.split_whitespace().collect();
    let mut out = Vec::new();
    for (n, l) in lines.enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let vals: Vec<&str> = l.split_whitespace().collect();
        if vals.len() < cols.len() {
            bail!("line {}: {} columns, expected {}", n + 2, vals.len(), cols.len());
        }
        let mut m = BTreeMap::new();
        for (c, v) in cols.iter().zip(&vals) {
            let x = if *c == "perms" {
                i64::from_str_radix(v, 8)
            } else {
                v.parse::<i64>()
            }
            .with_context(|| format!("line {}: {c} = {v:?}", n + 2))?;
            m.insert((*c).to_string(), x);
        }
        out.push(Row(m));
    }
    Ok(out)
}

fn desc(r: &Row, id_col: &str) -> Result<pb::IpcDescEntry> {
    Ok(pb::IpcDescEntry {
        key: r.get("key")? as i32 as u32,
        uid: r.get("uid")? as u32,
        gid: r.get("gid")? as u32,
        cuid: r.get("cuid")? as u32,
        cgid: r.get("cgid")? as u32,
        mode: r.get("perms")? as u32,
        id: r.get(id_col)? as u32,
    })
}

/// SysV segments attached in /proc/PID/maps (the inode is the shmid).
pub fn attached_shmids(maps: &str) -> Result<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    for v in crate::proc::maps::parse_maps(maps)? {
        if is_sysv(&v) {
            out.insert(v.inode as i32);
        }
    }
    Ok(out)
}

/// A SysV shared memory attachment in /proc/PID/maps.
pub fn is_sysv(v: &crate::proc::maps::Vma) -> bool {
    v.shared && v.path.as_deref().is_some_and(|p| p.starts_with("/SYSV"))
}

/// What the dump found, before writing.
#[derive(Debug, Default, Clone)]
pub struct Dumped {
    pub shm: Vec<(pb::IpcShmEntry, Vec<u8>)>,
    pub sem: Vec<(pb::IpcSemEntry, Vec<u16>)>,
    pub msg: Vec<(pb::IpcMsgEntry, Vec<(i64, Vec<u8>)>)>,
}

impl Dumped {
    pub fn is_empty(&self) -> bool {
        self.shm.is_empty() && self.sem.is_empty() && self.msg.is_empty()
    }
}

/// Runs `f` in a thread that joined the ipc namespace of `pid` (when it is
/// not ours): /proc/sysvipc and the IPC calls see that namespace.
fn in_ipc_ns<T: Send>(pid: i32, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let theirs = fs::metadata(format!("/proc/{pid}/ns/ipc")).with_context(|| format!("stat /proc/{pid}/ns/ipc"))?;
    let ours = fs::metadata("/proc/thread-self/ns/ipc").context("stat /proc/thread-self/ns/ipc")?;
    use std::os::unix::fs::MetadataExt;
    if theirs.ino() == ours.ino() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns =
                fs::File::open(format!("/proc/{pid}/ns/ipc")).with_context(|| format!("open /proc/{pid}/ns/ipc"))?;
            sys::setns(ns.as_fd(), libc::CLONE_NEWIPC)
                .with_context(|| format!("setns to the ipc namespace of {pid}"))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("the ipc namespace thread panicked"))
    })
}

/// Collects the SysV objects of a tree: `pids` are its processes (host
/// pids), `root` one of them; `own_ns`: the tree has its own ipc namespace
/// (take everything in it).
pub fn collect(pids: &[i32], root: i32, own_ns: bool) -> Result<Dumped> {
    let tree: HashSet<i64> = pids.iter().map(|&p| i64::from(p)).collect();
    let mut attached = BTreeSet::new();
    for &p in pids {
        if let Ok(m) = fs::read_to_string(format!("/proc/{p}/maps")) {
            attached.extend(attached_shmids(&m).with_context(|| format!("/proc/{p}/maps"))?);
        }
    }
    in_ipc_ns(root, move || {
        let mut d = Dumped::default();
        let table = |name: &str| -> Result<Vec<Row>> {
            let path = format!("/proc/sysvipc/{name}");
            parse_table(&fs::read_to_string(&path).with_context(|| format!("Cannot read {path}"))?)
                .with_context(|| format!("Cannot parse {path}"))
        };
        for r in table("shm")? {
            let id = r.get("shmid")? as i32;
            let mine = attached.contains(&id) || tree.contains(&r.get("cpid")?) || tree.contains(&r.get("lpid")?);
            if !(own_ns || mine) {
                continue;
            }
            let size = r.get("size")? as usize;
            let addr = sys::shmat(id, 0, libc::SHM_RDONLY)
                .with_context(|| format!("Cannot attach SysV shared memory id {id} to read it"))?;
            let data = sys::read_attached(addr, size);
            let _ = sys::shmdt(addr);
            debug!("SysV shm id {id}: {size} bytes");
            d.shm.push((
                pb::IpcShmEntry {
                    desc: desc(&r, "shmid")?,
                    size: size as u64,
                    in_pagemaps: None,
                    hugetlb_flag: None,
                },
                data,
            ));
        }
        for r in table("sem")? {
            let id = r.get("semid")? as i32;
            let nsems = r.get("nsems")? as usize;
            let mut mine = false;
            for n in 0..nsems {
                let p = sys::sem_getpid(id, n as i32).with_context(|| format!("semctl GETPID of set {id}"))?;
                mine |= tree.contains(&i64::from(p));
            }
            if !(own_ns || mine) {
                continue;
            }
            let vals = sys::sem_getall(id, nsems).with_context(|| format!("semctl GETALL of set {id}"))?;
            d.sem.push((
                pb::IpcSemEntry {
                    desc: desc(&r, "semid")?,
                    nsems: nsems as u32,
                },
                vals,
            ));
        }
        let msgmax: usize = fs::read_to_string("/proc/sys/kernel/msgmax")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(8192);
        for r in table("msg")? {
            let id = r.get("msqid")? as i32;
            let mine = tree.contains(&r.get("lspid")?) || tree.contains(&r.get("lrpid")?);
            if !(own_ns || mine) {
                continue;
            }
            let qnum = r.get("qnum")? as usize;
            let mut msgs = Vec::with_capacity(qnum);
            for n in 0..qnum {
                let m = sys::msg_copy(id, n as i64, msgmax).with_context(|| {
                    format!("msgrcv(MSG_COPY) of message {n} of queue {id} (needs CONFIG_CHECKPOINT_RESTORE)")
                })?;
                msgs.push(m);
            }
            let (_, qbytes) = sys::msg_stat(id).with_context(|| format!("msgctl IPC_STAT of queue {id}"))?;
            d.msg.push((
                pb::IpcMsgEntry {
                    desc: desc(&r, "msqid")?,
                    qbytes: qbytes as u32,
                    qnum: qnum as u32,
                },
                msgs,
            ));
        }
        Ok(d)
    })
}

fn pad(w: &mut ImageWriter, len: usize, to: usize) {
    let n = len.next_multiple_of(to) - len;
    if n > 0 {
        w.write_raw(&vec![0u8; n]);
    }
}

/// Writes the three images (only those with objects).
pub fn write(dir: &ImageDir, ns: u32, d: &Dumped) -> Result<()> {
    if !d.shm.is_empty() {
        let mut w = ImageWriter::new(Kind::IpcnsShm);
        for (e, data) in &d.shm {
            w.write_entry(e)?;
            w.write_raw(data);
            pad(&mut w, data.len(), 4);
        }
        dir.save(&shm_image(ns), w)?;
    }
    if !d.sem.is_empty() {
        let mut w = ImageWriter::new(Kind::IpcnsSem);
        for (e, vals) in &d.sem {
            w.write_entry(e)?;
            let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_raw(&bytes);
            pad(&mut w, bytes.len(), 8);
        }
        dir.save(&sem_image(ns), w)?;
    }
    if !d.msg.is_empty() {
        let mut w = ImageWriter::new(Kind::IpcnsMsg);
        for (e, msgs) in &d.msg {
            w.write_entry(e)?;
            for (t, text) in msgs {
                w.write_entry(&pb::IpcMsg {
                    mtype: *t as u64,
                    msize: text.len() as u32,
                })?;
                w.write_raw(text);
                pad(&mut w, text.len(), 8);
            }
        }
        dir.save(&msg_image(ns), w)?;
    }
    Ok(())
}

/// Dump entry point: collects and writes the tree's SysV objects.
pub fn dump(dir: &ImageDir, ns: u32, pids: &[i32], root: i32, own_ns: bool) -> Result<usize> {
    let d = collect(pids, root, own_ns).context("System V IPC")?;
    write(dir, ns, &d)?;
    Ok(d.shm.len() + d.sem.len() + d.msg.len())
}

/// The clone flags the namespace init needs: a fresh ipc namespace when
/// there are objects to recreate.
pub fn clone_flags(d: &Dumped) -> u64 {
    if d.is_empty() {
        0
    } else {
        libc::CLONE_NEWIPC as u64
    }
}

/// Restore entry point: the images of the one ipc namespace the dump has
/// (`ipcns-*-N.img`); none: no objects.
pub fn load_dir(dir: &ImageDir) -> Result<Dumped> {
    let mut ns = BTreeSet::new();
    for e in fs::read_dir(dir.path()).with_context(|| format!("read {}", dir.path().display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        for p in ["ipcns-shm-", "ipcns-sem-", "ipcns-msg-"] {
            if let Some(n) = name.strip_prefix(p).and_then(|r| r.strip_suffix(".img")) {
                ns.insert(n.parse::<u32>().with_context(|| format!("{name}: bad namespace id"))?);
            }
        }
    }
    match ns.len() {
        0 => Ok(Dumped::default()),
        1 => load(dir, *ns.first().expect("one")),
        _ => bail!("the dump has System V IPC objects of several ipc namespaces ({ns:?}); not supported"),
    }
}

/// Reads the images of ipc namespace `ns` (missing images: no objects).
pub fn load(dir: &ImageDir, ns: u32) -> Result<Dumped> {
    let mut d = Dumped::default();
    let open = |name: &str| -> Result<Option<(String, Vec<u8>)>> {
        if !dir.exists(name) {
            return Ok(None);
        }
        Ok(Some((
            dir.path().join(name).display().to_string(),
            dir.read_bytes(name)?,
        )))
    };
    if let Some((path, bytes)) = open(&shm_image(ns))? {
        let mut r = ImageReader::new(&path, &bytes, Kind::IpcnsShm)?;
        while let Some(e) = r.next_entry::<pb::IpcShmEntry>()? {
            if e.in_pagemaps == Some(true) {
                bail!(
                    "{path}: segment {} has its data in pagemap images; not supported",
                    e.desc.id
                );
            }
            let n = e.size as usize;
            let data = r.read_raw(n)?.to_vec();
            r.read_raw(n.next_multiple_of(4) - n)?;
            d.shm.push((e, data));
        }
    }
    if let Some((path, bytes)) = open(&sem_image(ns))? {
        let mut r = ImageReader::new(&path, &bytes, Kind::IpcnsSem)?;
        while let Some(e) = r.next_entry::<pb::IpcSemEntry>()? {
            let n = e.nsems as usize * 2;
            let raw = r.read_raw(n)?;
            let vals = raw.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            r.read_raw(n.next_multiple_of(8) - n)?;
            d.sem.push((e, vals));
        }
    }
    if let Some((path, bytes)) = open(&msg_image(ns))? {
        let mut r = ImageReader::new(&path, &bytes, Kind::IpcnsMsg)?;
        while let Some(e) = r.next_entry::<pb::IpcMsgEntry>()? {
            let mut msgs = Vec::new();
            for _ in 0..e.qnum {
                let m = r
                    .next_entry::<pb::IpcMsg>()?
                    .with_context(|| format!("{path}: queue {} ends early", e.desc.id))?;
                let n = m.msize as usize;
                let text = r.read_raw(n)?.to_vec();
                r.read_raw(n.next_multiple_of(8) - n)?;
                msgs.push((m.mtype as i64, text));
            }
            d.msg.push((e, msgs));
        }
    }
    Ok(d)
}

fn set_next_id(kind: &str, id: u32) -> Result<()> {
    let p = format!("/proc/sys/kernel/{kind}_next_id");
    fs::write(&p, id.to_string()).with_context(|| format!("Cannot write {p}"))
}

fn perm(d: &pb::IpcDescEntry) -> sys::Perm {
    sys::Perm {
        uid: d.uid,
        gid: d.gid,
        mode: d.mode & 0o777,
    }
}

fn check_id(what: &str, want: u32, got: i32) -> Result<()> {
    if got as u32 != want {
        bail!("{what}: the kernel gave id {got} instead of {want}");
    }
    Ok(())
}

/// Recreates every object with its id, key and permissions, in the
/// calling process's (fresh) ipc namespace.
pub fn restore_objects(d: &Dumped) -> Result<()> {
    if d.is_empty() {
        return Ok(());
    }
    for (e, data) in &d.shm {
        let what = format!("SysV shared memory id {} (key {:#x})", e.desc.id, e.desc.key);
        set_next_id("shm", e.desc.id)?;
        let id = sys::shmget(
            e.desc.key as i32,
            e.size as usize,
            (e.desc.mode & 0o777) as i32 | libc::IPC_CREAT | libc::IPC_EXCL,
        )
        .with_context(|| format!("{what}: shmget"))?;
        check_id(&what, e.desc.id, id)?;
        let addr = sys::shmat(id, 0, 0).with_context(|| format!("{what}: shmat"))?;
        sys::write_attached(addr, &data[..data.len().min(e.size as usize)]);
        let _ = sys::shmdt(addr);
        sys::shm_set(id, perm(&e.desc)).with_context(|| format!("{what}: IPC_SET"))?;
    }
    for (e, vals) in &d.sem {
        let what = format!("SysV semaphore set id {} (key {:#x})", e.desc.id, e.desc.key);
        set_next_id("sem", e.desc.id)?;
        let id = sys::semget(
            e.desc.key as i32,
            e.nsems as i32,
            (e.desc.mode & 0o777) as i32 | libc::IPC_CREAT | libc::IPC_EXCL,
        )
        .with_context(|| format!("{what}: semget"))?;
        check_id(&what, e.desc.id, id)?;
        if vals.len() != e.nsems as usize {
            bail!("{what}: {} values for {} semaphores", vals.len(), e.nsems);
        }
        sys::sem_setall(id, vals).with_context(|| format!("{what}: SETALL"))?;
        sys::sem_set(id, perm(&e.desc)).with_context(|| format!("{what}: IPC_SET"))?;
    }
    for (e, msgs) in &d.msg {
        let what = format!("SysV message queue id {} (key {:#x})", e.desc.id, e.desc.key);
        set_next_id("msg", e.desc.id)?;
        let id = sys::msgget(
            e.desc.key as i32,
            (e.desc.mode & 0o777) as i32 | libc::IPC_CREAT | libc::IPC_EXCL,
        )
        .with_context(|| format!("{what}: msgget"))?;
        check_id(&what, e.desc.id, id)?;
        // The limit first, so that a queue fuller than the default fits.
        let total: usize = msgs.iter().map(|(_, t)| t.len()).sum();
        sys::msg_set(id, perm(&sys_desc_rw(&e.desc)), u64::from(e.qbytes).max(total as u64))
            .with_context(|| format!("{what}: IPC_SET"))?;
        for (t, text) in msgs {
            sys::msg_send(id, *t, text).with_context(|| format!("{what}: msgsnd"))?;
        }
        sys::msg_set(id, perm(&e.desc), u64::from(e.qbytes)).with_context(|| format!("{what}: IPC_SET"))?;
    }
    // Later objects are created with ids the kernel picks.
    for k in ["shm", "sem", "msg"] {
        let _ = fs::write(format!("/proc/sys/kernel/{k}_next_id"), "-1");
    }
    Ok(())
}

/// The queue's permissions while cryo fills it (owner root, writable).
fn sys_desc_rw(d: &pb::IpcDescEntry) -> pb::IpcDescEntry {
    pb::IpcDescEntry {
        uid: 0,
        gid: 0,
        mode: d.mode | 0o600,
        ..d.clone()
    }
}

/// Segments that were removed while attached: removed again, in the ipc
/// namespace of `pid`, once the tasks are attached.
pub fn remove_destroyed(pid: i32, d: &Dumped) -> Result<()> {
    let ids: Vec<i32> = d
        .shm
        .iter()
        .filter(|(e, _)| e.desc.mode & SHM_DEST != 0)
        .map(|(e, _)| e.desc.id as i32)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    in_ipc_ns(pid, move || {
        for id in ids {
            sys::shm_rmid(id).with_context(|| format!("IPC_RMID of SysV shared memory id {id}"))?;
        }
        Ok(())
    })
}

/// Attaches the SysV mapping `v` at `at` (the staging address) in the
/// calling task, read-only unless it was writable.
pub fn vma_attach(v: &pb::VmaEntry, at: u64) -> Result<()> {
    let id = v.shmid as i32;
    if v.pgoff != 0 {
        bail!(
            "the SysV shared memory mapping at {:#x} (id {id}) starts inside its segment; not supported",
            v.start
        );
    }
    let mut flags = 0;
    let rw = v.fdflags.map_or(v.prot & libc::PROT_WRITE as u32 != 0, |f| {
        f as i32 & libc::O_ACCMODE == libc::O_RDWR
    });
    if !rw {
        flags |= libc::SHM_RDONLY;
    }
    if v.prot & libc::PROT_EXEC as u32 != 0 {
        flags |= libc::SHM_EXEC;
    }
    let got = sys::shmat(id, at, flags).with_context(|| format!("shmat of SysV shared memory id {id}"))?;
    if got != at {
        bail!("shmat of SysV shared memory id {id} gave {got:#x}, not {at:#x}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_tables_parse() {
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
                   1129447424          3  1600                 65536  4242  4243      2     0     0     0     0 1764130000          0 1764130000                  8192                     0\n\
                            0      32769  1600                  4096   100   100      0  1000  1000  1000  1000          0          0 1764130001                     0                     0\n";
        let rows = parse_table(shm).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get("shmid").unwrap(), 3);
        assert_eq!(rows[0].get("perms").unwrap(), 0o1600);
        assert_eq!(rows[0].get("cpid").unwrap(), 4242);
        let d = desc(&rows[1], "shmid").unwrap();
        assert_eq!((d.id, d.key, d.uid, d.mode), (32769, 0, 1000, 0o1600));
        // Keys print as signed ints.
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n\
                   -559038737          0   666          3     0     0     0     0          0 1764130000\n";
        let rows = parse_table(sem).unwrap();
        assert_eq!(desc(&rows[0], "semid").unwrap().key, 0xdeadbeef);
        assert!(parse_table("a b\n1\n").is_err());
        assert!(parse_table("").unwrap().is_empty());
    }

    #[test]
    fn sysv_mappings_in_maps() {
        let maps = "7f0000000000-7f0000010000 rw-s 00000000 00:01 3                          /SYSV4352a000 (deleted)\n\
                    7f0000010000-7f0000011000 r--s 00000000 00:01 32769                      /SYSV00000000 (deleted)\n\
                    7f0000020000-7f0000021000 rw-s 00000000 00:05 77                         /dev/zero (deleted)\n";
        let ids: Vec<i32> = attached_shmids(maps).unwrap().into_iter().collect();
        assert_eq!(ids, vec![3, 32769]);
    }
}
