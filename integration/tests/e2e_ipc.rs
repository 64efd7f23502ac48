//! End-to-end test of System V IPC: shared memory segments (attached,
//! detached, removed-but-attached), a semaphore set and a message queue
//! used by a tree in the host's ipc namespace. The restored tree gets a
//! fresh ipc namespace with the same ids and keys. The original's objects
//! stay in the host namespace after the dump killed it: the test removes
//! them by id (after checking their keys).

use cryo_integration::cycle::{crit_json, expect_plain_fail, expect_plain_pass, roundtrip};
use cryo_integration::{bin, log_lines};

/// The original's objects: removed at the end, even on panic.
struct HostObjects {
    pid: i32,
    ids: Vec<i32>,
}

impl HostObjects {
    fn key(&self, n: i32) -> i32 {
        0x4352_0000 | ((self.pid & 0xfff) << 4) | n
    }
}

impl Drop for HostObjects {
    fn drop(&mut self) {
        let [a, b, _d, s, q] = self.ids[..] else { return };
        // SAFETY: IPC_STAT fills the zeroed structs; IPC_RMID only on the
        // objects whose key is the one the workload gave them.
        unsafe {
            for (id, n) in [(a, 1), (b, 2)] {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                if libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0 && ds.shm_perm.__key == self.key(n) {
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                }
            }
            let mut ds: libc::semid_ds = std::mem::zeroed();
            if libc::semctl(s, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) == 0
                && ds.sem_perm.__key == self.key(3)
            {
                libc::semctl(s, 0, libc::IPC_RMID);
            }
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            if libc::msgctl(q, libc::IPC_STAT, &mut ds) == 0 && ds.msg_perm.__key == self.key(4) {
                libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut());
            }
        }
    }
}

#[test]
fn sysvipc_plain_passes_and_detects_a_changed_semaphore() {
    expect_plain_pass(bin!("sysvipc"), &[]);
    expect_plain_fail(bin!("sysvipc"), &["--corrupt"], "sem: values");
}

#[test]
fn sysvipc_roundtrip_in_a_fresh_ipc_namespace() {
    cryo_integration::require_root!();
    let (v, images, sc) = roundtrip("sysvipc", bin!("sysvipc"), &[]);
    let log = sc.path("wl.log");
    let lines = log_lines(&log);
    let ids: Vec<i32> = lines
        .iter()
        .find_map(|l| l.strip_prefix("IDS "))
        .expect("IDS line")
        .split_whitespace()
        .map(|x| x.parse().expect("id"))
        .collect();
    let pid: i32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("READY "))
        .expect("READY line")
        .trim()
        .parse()
        .expect("pid");
    let _host = HostObjects { pid, ids: ids.clone() };
    assert!(v.contains("shm A B D"), "{v}");
    assert!(
        lines.iter().any(|l| l.starts_with("MEMBER c PASS")),
        "{}",
        cryo_integration::log_tail(&log, 20)
    );
    let shm = images
        .iter()
        .find(|n| n.starts_with("ipcns-shm-"))
        .expect("ipcns-shm image");
    let sem = images
        .iter()
        .find(|n| n.starts_with("ipcns-sem-"))
        .expect("ipcns-sem image");
    assert!(images.iter().any(|n| n.starts_with("ipcns-msg-")), "{images:?}");
    let shm = crit_json(&sc.img.join(shm));
    let got: Vec<u64> = shm["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["desc"]["id"].as_u64().expect("id"))
        .collect();
    // A, B and D (removed while attached), and nothing else of the host.
    assert_eq!(got.len(), 3, "{shm}");
    for id in &ids[..3] {
        assert!(got.contains(&(*id as u64)), "shm id {id} not dumped: {got:?}");
    }
    let sem = crit_json(&sc.img.join(sem));
    assert_eq!(sem["entries"][0]["extra"], serde_json::json!([5, 2, 7]), "{sem}");
}
