//! System V IPC calls (shared memory, semaphores, message queues) and
//! setns, as thin checked wrappers.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `MSG_COPY` (Linux, CONFIG_CHECKPOINT_RESTORE): msgrcv copies message
/// number `msgtyp` without removing it.
pub const MSG_COPY: i32 = 0o40000;

/// The permission fields of an IPC object that IPC_SET can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// shmget(2).
pub fn shmget(key: i32, size: usize, flags: i32) -> nix::Result<i32> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::shmget(key, size, flags) })
}

/// shmat(2) at `addr` (0: anywhere); returns the address.
pub fn shmat(id: i32, addr: u64, flags: i32) -> nix::Result<u64> {
    // SAFETY: the kernel maps the segment at `addr` or a free spot; it never
    // replaces existing mappings without SHM_REMAP, which callers pass only
    // for ranges they own.
    let p = unsafe { libc::shmat(id, addr as *const libc::c_void, flags) };
    if p as isize == -1 {
        return Err(Errno::last());
    }
    Ok(p as u64)
}

/// shmdt(2).
pub fn shmdt(addr: u64) -> nix::Result<()> {
    // SAFETY: detaching only removes the mapping at `addr`, which the
    // caller attached and no longer references.
    Errno::result(unsafe { libc::shmdt(addr as *const libc::c_void) }).map(drop)
}

/// Reads `len` bytes of the segment attached at `addr`.
pub fn read_attached(addr: u64, len: usize) -> Vec<u8> {
    // SAFETY: the caller attached at least `len` readable bytes at `addr`
    // and keeps them attached for the duration of the copy.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
}

/// Writes `data` into the segment attached (writable) at `addr`.
pub fn write_attached(addr: u64, data: &[u8]) {
    // SAFETY: the caller attached at least `data.len()` writable bytes at
    // `addr`, which nothing else in this process references.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

fn stat_perm(p: &libc::ipc_perm) -> Perm {
    Perm {
        uid: p.uid,
        gid: p.gid,
        mode: u32::from(p.mode),
    }
}

/// shmctl(IPC_STAT): permissions and size.
pub fn shm_stat(id: i32) -> nix::Result<(Perm, usize)> {
    // SAFETY: a zeroed shmid_ds is a valid plain C value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds into `ds`.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok((stat_perm(&ds.shm_perm), ds.shm_segsz))
}

/// shmctl(IPC_SET) of uid, gid and mode.
pub fn shm_set(id: i32, p: Perm) -> nix::Result<()> {
    // SAFETY: a zeroed shmid_ds is a valid plain C value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds into `ds`.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    ds.shm_perm.uid = p.uid;
    ds.shm_perm.gid = p.gid;
    ds.shm_perm.mode = p.mode as u16;
    // SAFETY: IPC_SET reads one shmid_ds.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

/// shmctl(IPC_RMID).
pub fn shm_rmid(id: i32) -> nix::Result<()> {
    // SAFETY: IPC_RMID ignores the buffer.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// semget(2).
pub fn semget(key: i32, nsems: i32, flags: i32) -> nix::Result<i32> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::semget(key, nsems, flags) })
}

/// semctl(GETPID) of semaphore `n`: the pid of its last operation.
pub fn sem_getpid(id: i32, n: i32) -> nix::Result<i32> {
    // SAFETY: GETPID takes no fourth argument.
    Errno::result(unsafe { libc::semctl(id, n, libc::GETPID) })
}

/// semctl(GETALL): the values of all `nsems` semaphores.
pub fn sem_getall(id: i32, nsems: usize) -> nix::Result<Vec<u16>> {
    let mut v = vec![0u16; nsems];
    // SAFETY: GETALL writes `nsems` unsigned shorts through the pointer
    // (the union semun's `array` member); `v` has exactly that room.
    Errno::result(unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) })?;
    Ok(v)
}

/// semctl(SETALL).
pub fn sem_setall(id: i32, vals: &[u16]) -> nix::Result<()> {
    // SAFETY: SETALL reads nsems unsigned shorts; `vals` has as many as
    // the set (the caller created it with vals.len() semaphores).
    Errno::result(unsafe { libc::semctl(id, 0, libc::SETALL, vals.as_ptr()) }).map(drop)
}

/// semctl(IPC_SET) of uid, gid and mode.
pub fn sem_set(id: i32, p: Perm) -> nix::Result<()> {
    // SAFETY: a zeroed semid_ds is a valid plain C value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one semid_ds through the pointer.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) })?;
    ds.sem_perm.uid = p.uid;
    ds.sem_perm.gid = p.gid;
    ds.sem_perm.mode = p.mode as u16;
    // SAFETY: IPC_SET reads one semid_ds.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) }).map(drop)
}

/// msgget(2).
pub fn msgget(key: i32, flags: i32) -> nix::Result<i32> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::msgget(key, flags) })
}

/// msgctl(IPC_STAT): permissions and the queue's byte limit.
pub fn msg_stat(id: i32) -> nix::Result<(Perm, u64)> {
    // SAFETY: a zeroed msqid_ds is a valid plain C value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one msqid_ds.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok((stat_perm(&ds.msg_perm), ds.msg_qbytes))
}

/// msgctl(IPC_SET) of uid, gid, mode and the byte limit.
pub fn msg_set(id: i32, p: Perm, qbytes: u64) -> nix::Result<()> {
    // SAFETY: a zeroed msqid_ds is a valid plain C value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one msqid_ds.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) })?;
    ds.msg_perm.uid = p.uid;
    ds.msg_perm.gid = p.gid;
    ds.msg_perm.mode = p.mode as u16;
    ds.msg_qbytes = qbytes;
    // SAFETY: IPC_SET reads one msqid_ds.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

/// msgrcv(IPC_NOWAIT | MSG_COPY) of message number `n` (0-based): its
/// type and text, the queue unchanged. `max` bounds the text size.
pub fn msg_copy(id: i32, n: i64, max: usize) -> nix::Result<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: `buf` holds a long (the type) followed by `max` bytes, as
    // msgrcv requires for msgsz = max.
    let r = unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            max,
            n,
            libc::IPC_NOWAIT | MSG_COPY | libc::MSG_NOERROR,
        )
    };
    let len = Errno::result(r)? as usize;
    let mtype = i64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
    Ok((mtype, buf[8..8 + len].to_vec()))
}

/// msgsnd(IPC_NOWAIT) of one message.
pub fn msg_send(id: i32, mtype: i64, text: &[u8]) -> nix::Result<()> {
    let mut buf = Vec::with_capacity(8 + text.len());
    buf.extend_from_slice(&mtype.to_ne_bytes());
    buf.extend_from_slice(text);
    // SAFETY: `buf` is a long followed by text.len() bytes, as msgsnd reads.
    Errno::result(unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) }).map(drop)
}

/// setns(2) of the calling thread into the namespace behind `fd`.
pub fn setns(fd: BorrowedFd, nstype: i32) -> nix::Result<()> {
    // SAFETY: fd is live for the borrow; setns changes only this thread's
    // namespace.
    Errno::result(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}
