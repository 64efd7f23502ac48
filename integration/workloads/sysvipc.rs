//! sysvipc: System V shared memory, semaphores and message queues.
//!
//! `sysvipc --log F [--corrupt]`
//!
//! P creates (keys derived from its pid, mode 0640 or 0600):
//! - segment A (3 pages + 100 bytes), filled with a pattern, attached
//!   read-write; its child C inherits the attachment and attaches A a
//!   second time read-only;
//! - segment B, filled and detached (it exists, nobody maps it);
//! - segment D, attached, then removed (IPC_RMID) while still attached;
//! - semaphore set S of 3 (SETALL 5 0 7, then semop +2 on #1);
//! - message queue Q with messages of types 1, 2, 1 ("one", "two!", a
//!   300-byte "three..."), and qbytes lowered to 4000.
//! It writes `IDS <shm A> <shm B> <shm D> <sem S> <msg Q>` (for the test's
//! cleanup) and READY.
//!
//! On SIGUSR1: P checks the ids, keys, modes and sizes (IPC_STAT) are the
//! ones it created, A's and B's and D's contents, S's values, Q's messages
//! (type-selective receive order: type 2 first, then the type-1 ones in
//! order) and qbytes; then it writes a new word into A, and C (told with
//! SIGUSR1) must see it through both of its attachments (shared memory);
//! C's read-only attachment must still be read-only (mprotect to
//! PROT_WRITE fails), the inherited one writable.
//! At exit P removes what it created. `--corrupt` changes semaphore #2
//! after READY.

use cryo_integration::wl::{self, Args, Log};

const PAGE: usize = 4096;
const A_SIZE: usize = 3 * PAGE + 100;
const B_SIZE: usize = 2 * PAGE;
const D_SIZE: usize = PAGE;

fn fork() -> i32 {
    // SAFETY: the workload is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        wl::die("fork");
    }
    pid
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn shmget(key: i32, size: usize, mode: i32) -> i32 {
    // SAFETY: integer arguments only.
    let id = unsafe { libc::shmget(key, size, mode | libc::IPC_CREAT | libc::IPC_EXCL) };
    if id < 0 {
        wl::die("shmget");
    }
    id
}

fn shmat(id: i32, flags: i32) -> *mut u8 {
    // SAFETY: the kernel picks a free address.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if p as isize == -1 {
        wl::die("shmat");
    }
    p.cast()
}

fn bytes(p: *const u8, len: usize) -> &'static [u8] {
    // SAFETY: callers pass an attachment of at least `len` bytes that
    // stays attached for the life of the process.
    unsafe { std::slice::from_raw_parts(p, len) }
}

fn shm_stat(id: i32) -> Option<libc::shmid_ds> {
    // SAFETY: a zeroed shmid_ds is valid; IPC_STAT fills it.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        (libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0).then_some(ds)
    }
}

fn sem_getall(id: i32) -> Option<[u16; 3]> {
    let mut v = [0u16; 3];
    // SAFETY: GETALL writes 3 shorts (the set has 3 semaphores).
    (unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) } == 0).then_some(v)
}

fn msg_recv(id: i32, mtype: i64) -> Option<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + 1024];
    // SAFETY: buf holds a long and 1024 bytes.
    let n = unsafe { libc::msgrcv(id, buf.as_mut_ptr().cast(), 1024, mtype, libc::IPC_NOWAIT) };
    if n < 0 {
        return None;
    }
    let t = i64::from_ne_bytes(buf[..8].try_into().ok()?);
    Some((t, buf[8..8 + n as usize].to_vec()))
}

fn msg_send(id: i32, mtype: i64, text: &[u8]) {
    let mut buf = mtype.to_ne_bytes().to_vec();
    buf.extend_from_slice(text);
    // SAFETY: buf is a long followed by text.len() bytes.
    if unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), 0) } != 0 {
        wl::die("msgsnd");
    }
}

/// Whether the attachment at `p` may become writable (a SHM_RDONLY one
/// may not: mprotect fails with EACCES).
fn may_write(p: *mut u8) -> bool {
    // SAFETY: p is a page-aligned attachment of at least one page; making
    // it writable does not write anything, and it goes back to read-only.
    unsafe {
        let ok = libc::mprotect(p.cast(), PAGE, libc::PROT_READ | libc::PROT_WRITE) == 0;
        libc::mprotect(p.cast(), PAGE, libc::PROT_READ);
        ok
    }
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let me = wl::getpid();
    let key = |n: i32| 0x4352_0000 | ((me & 0xfff) << 4) | n;

    let a = shmget(key(1), A_SIZE, 0o640);
    let pa = shmat(a, 0);
    let pat_a = pattern(7, A_SIZE);
    // SAFETY: pa is an A_SIZE-byte writable attachment.
    unsafe { std::ptr::copy_nonoverlapping(pat_a.as_ptr(), pa, A_SIZE) };
    let b = shmget(key(2), B_SIZE, 0o600);
    let pb = shmat(b, 0);
    let pat_b = pattern(99, B_SIZE);
    // SAFETY: pb is a B_SIZE-byte writable attachment, detached right after.
    unsafe {
        std::ptr::copy_nonoverlapping(pat_b.as_ptr(), pb, B_SIZE);
        libc::shmdt(pb.cast());
    }
    let d = shmget(libc::IPC_PRIVATE, D_SIZE, 0o600);
    let pd = shmat(d, 0);
    // SAFETY: pd is a D_SIZE-byte writable attachment; IPC_RMID only marks it.
    unsafe {
        std::ptr::write_bytes(pd, 0xd5, D_SIZE);
        libc::shmctl(d, libc::IPC_RMID, std::ptr::null_mut());
    }
    // SAFETY: integer arguments; SETALL reads 3 shorts; one valid sembuf.
    let s = unsafe {
        let s = libc::semget(key(3), 3, 0o640 | libc::IPC_CREAT | libc::IPC_EXCL);
        if s < 0 {
            wl::die("semget");
        }
        let vals = [5u16, 0, 7];
        if libc::semctl(s, 0, libc::SETALL, vals.as_ptr()) != 0 {
            wl::die("SETALL");
        }
        let mut op = libc::sembuf {
            sem_num: 1,
            sem_op: 2,
            sem_flg: 0,
        };
        if libc::semop(s, &mut op, 1) != 0 {
            wl::die("semop");
        }
        s
    };
    // SAFETY: integer arguments only.
    let q = unsafe { libc::msgget(key(4), 0o640 | libc::IPC_CREAT | libc::IPC_EXCL) };
    if q < 0 {
        wl::die("msgget");
    }
    let three: Vec<u8> = pattern(3, 300);
    msg_send(q, 1, b"one");
    msg_send(q, 2, b"two!");
    msg_send(q, 1, &three);
    // SAFETY: IPC_STAT fills ds, IPC_SET reads it.
    unsafe {
        let mut ds: libc::msqid_ds = std::mem::zeroed();
        libc::msgctl(q, libc::IPC_STAT, &mut ds);
        ds.msg_qbytes = 4000;
        if libc::msgctl(q, libc::IPC_SET, &mut ds) != 0 {
            wl::die("msgctl IPC_SET");
        }
    }

    let c = fork();
    if c == 0 {
        let ro = shmat(a, libc::SHM_RDONLY);
        while !wl::usr1_seen() {
            wl::sleep_ms(10);
        }
        let mut problems = Vec::new();
        // P wrote 0xC0FFEE at offset 4096 before signalling us.
        let want = 0xC0FFEEu32.to_ne_bytes();
        if bytes(pa, A_SIZE)[PAGE..PAGE + 4] != want || bytes(ro, A_SIZE)[PAGE..PAGE + 4] != want {
            problems.push("sharing: P's write to A is not seen by C".to_string());
        }
        if may_write(ro) {
            problems.push("the read-only attachment of A can be made writable".to_string());
        }
        if !may_write(pa) {
            problems.push("the read-write attachment of A cannot be made writable".to_string());
        }
        let ok = problems.is_empty();
        log.line(&format!(
            "MEMBER c {} {}",
            if ok { "PASS" } else { "FAIL" },
            problems.join("; ")
        ));
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }

    log.line(&format!("IDS {a} {b} {d} {s} {q}"));
    log.ready();
    if corrupt {
        // SAFETY: SETVAL with an int argument.
        unsafe { libc::semctl(s, 2, libc::SETVAL, 1) };
    }
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }

    let mut problems = Vec::new();
    for (what, id, k, size, mode) in [
        ("A", a, key(1), A_SIZE, 0o640),
        ("B", b, key(2), B_SIZE, 0o600),
        ("D", d, libc::IPC_PRIVATE, D_SIZE, 0o600),
    ] {
        match shm_stat(id) {
            None => problems.push(format!("shm {what}: id {id} is gone")),
            Some(ds) => {
                let got = (ds.shm_perm.__key, ds.shm_segsz, u32::from(ds.shm_perm.mode) & 0o777);
                if got != (k, size, mode) {
                    problems.push(format!(
                        "shm {what}: key/size/mode {got:?}, expected {:?}",
                        (k, size, mode)
                    ));
                }
                let dest = u32::from(ds.shm_perm.mode) & 0o1000 != 0;
                if dest != (what == "D") {
                    problems.push(format!("shm {what}: removed flag {dest}"));
                }
            }
        }
    }
    if bytes(pa, A_SIZE) != pat_a.as_slice() {
        problems.push("shm A: content differs".to_string());
    }
    if bytes(pd, D_SIZE).iter().any(|&x| x != 0xd5) {
        problems.push("shm D: content differs".to_string());
    }
    let pb2 = shmat(b, libc::SHM_RDONLY);
    if bytes(pb2, B_SIZE) != pat_b.as_slice() {
        problems.push("shm B: content differs".to_string());
    }
    match sem_getall(s) {
        Some(v) if v == [5, 2, 7] => {}
        v => problems.push(format!("sem: values {v:?}, expected [5, 2, 7]")),
    }
    // SAFETY: IPC_STAT fills ds.
    let (qbytes, qmode) = unsafe {
        let mut ds: libc::msqid_ds = std::mem::zeroed();
        libc::msgctl(q, libc::IPC_STAT, &mut ds);
        (ds.msg_qbytes, u32::from(ds.msg_perm.mode) & 0o777)
    };
    if (qbytes, qmode) != (4000, 0o640) {
        problems.push(format!("msg: qbytes/mode {qbytes}/{qmode:o}, expected 4000/640"));
    }
    let got = [msg_recv(q, 2), msg_recv(q, 1), msg_recv(q, 1), msg_recv(q, 0)];
    let want = [
        Some((2, b"two!".to_vec())),
        Some((1, b"one".to_vec())),
        Some((1, three.clone())),
        None,
    ];
    if got != want {
        problems.push(format!(
            "msg: received {:?}",
            got.iter()
                .map(|m| m.as_ref().map(|(t, x)| (*t, x.len())))
                .collect::<Vec<_>>()
        ));
    }
    // Sharing with C.
    // SAFETY: pa is a writable A_SIZE-byte attachment.
    unsafe { std::ptr::copy_nonoverlapping(0xC0FFEEu32.to_ne_bytes().as_ptr(), pa.add(PAGE), 4) };
    // SAFETY: plain calls.
    unsafe { libc::kill(c, libc::SIGUSR1) };
    let mut st = 0;
    // SAFETY: st is a valid out-pointer.
    unsafe { libc::waitpid(c, &mut st, 0) };
    if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
        problems.push(format!("c ended with status {st:#x}"));
    }
    // SAFETY: removing what this workload created.
    unsafe {
        libc::shmctl(a, libc::IPC_RMID, std::ptr::null_mut());
        libc::shmctl(b, libc::IPC_RMID, std::ptr::null_mut());
        libc::semctl(s, 0, libc::IPC_RMID);
        libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut());
    }
    log.verdict(&problems, &format!("shm A B D, sem S, msg Q (ids {a} {b} {d} {s} {q})"))
}
