//! userfaultfd ioctls used for write tracking (kernel-mechanics.md §3.3):
//! UFFDIO_API with the async write-protect features and UFFDIO_REGISTER
//! in write-protect mode; and for lazy pages: missing mode, UFFDIO_COPY,
//! ZEROPAGE, WAKE and the messages read from the uffd (faults and the
//! non-cooperative events fork, remap, remove, unmap). The uffd itself is
//! created inside the target (by syscall injection) and taken with
//! pidfd_getfd; these ioctls act on the mm the uffd was created in,
//! whoever calls them.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// `UFFD_API`.
const UFFD_API: u64 = 0xAA;
/// The kernel resolves write faults itself by clearing the wp bit.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Never-populated ptes are write-protected too (so first writes count).
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// Non-cooperative events: a fork of the process hands us a uffd for
/// the child (`UFFD_FEATURE_EVENT_FORK`), mremap reports the move
/// (`_EVENT_REMAP`), madvise(DONTNEED/REMOVE) the dropped range
/// (`_EVENT_REMOVE`), munmap the unmapped range (`_EVENT_UNMAP`). The
/// calling thread of the event waits until we have read it, and while an
/// event is pending UFFDIO_COPY/ZEROPAGE fail with EAGAIN.
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// All four non-cooperative events.
pub const FEATURES_NONCOOP: u64 = FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;
/// `UFFDIO_REGISTER_MODE_WP`.
const REGISTER_MODE_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

const fn iowr(nr: u64, size: usize) -> libc::c_ulong {
    ((3u64 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr) as libc::c_ulong
}

/// `_IOWR(UFFDIO, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = iowr(0x3F, std::mem::size_of::<UffdioApi>());
/// `_IOWR(UFFDIO, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = iowr(0x00, std::mem::size_of::<UffdioRegister>());

const _: () = assert!(UFFDIO_API == 0xc018aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020aa00);

/// `UFFDIO_API` asking for `features`; returns the features the kernel
/// offers. Fails (EINVAL) when one of `features` is not supported.
pub fn api(uffd: impl AsFd, features: u64) -> nix::Result<u64> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `a` is a live uffdio_api the kernel reads and writes back;
    // the fd is borrowed for the call.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_API, &mut a as *mut UffdioApi) };
    Errno::result(ret)?;
    Ok(a.features)
}

/// `UFFDIO_REGISTER` of `[start, start+len)` in write-protect mode.
pub fn register_wp(uffd: impl AsFd, start: u64, len: u64) -> nix::Result<()> {
    let mut r = UffdioRegister {
        start,
        len,
        mode: REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `r` is a live uffdio_register the kernel reads and writes
    // back (the ioctls field); the fd is borrowed for the call.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_REGISTER, &mut r as *mut UffdioRegister) };
    Errno::result(ret)?;
    Ok(())
}

/// `UFFDIO_REGISTER_MODE_MISSING`.
const REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_FORK`.
const EVENT_FORK: u8 = 0x13;
/// `UFFD_EVENT_REMAP`.
const EVENT_REMAP: u8 = 0x14;
/// `UFFD_EVENT_REMOVE`.
const EVENT_REMOVE: u8 = 0x15;
/// `UFFD_EVENT_UNMAP`.
const EVENT_UNMAP: u8 = 0x16;
/// `sizeof(struct uffd_msg)`.
const MSG_SIZE: usize = 32;

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

/// `_IOWR(UFFDIO, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = iowr(0x03, std::mem::size_of::<UffdioCopy>());
/// `_IOWR(UFFDIO, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: libc::c_ulong = iowr(0x04, std::mem::size_of::<UffdioZeropage>());

const _: () = assert!(UFFDIO_COPY == 0xc028aa03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020aa04);

/// `UFFDIO_REGISTER` of `[start, start+len)` in missing mode (anonymous
/// memory: the first touch of an unpopulated page waits for us).
pub fn register_missing(uffd: impl AsFd, start: u64, len: u64) -> nix::Result<()> {
    let mut r = UffdioRegister {
        start,
        len,
        mode: REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `r` is a live uffdio_register the kernel reads and writes
    // back; the fd is borrowed for the call.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_REGISTER, &mut r as *mut UffdioRegister) };
    Errno::result(ret)?;
    Ok(())
}

/// `UFFDIO_COPY` of `src` to `dst` in the uffd's mm (page aligned, whole
/// pages), waking the faulting threads. Returns the bytes copied: fewer
/// than `src.len()` when a page there is already present (EEXIST) — the
/// caller skips that page and goes on.
pub fn copy(uffd: impl AsFd, dst: u64, src: &[u8]) -> nix::Result<usize> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `src` is a live buffer of `len` bytes the kernel only reads;
    // `c` is a live uffdio_copy the kernel writes its result into.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_COPY, &mut c as *mut UffdioCopy) };
    if ret == 0 {
        return Ok(src.len());
    }
    let e = Errno::last();
    if c.copy > 0 {
        return Ok(c.copy as usize);
    }
    if e == Errno::EEXIST {
        return Ok(0);
    }
    Err(e)
}

/// `UFFDIO_ZEROPAGE` of `[start, start+len)`: maps zero pages, wakes.
/// Already present pages (EEXIST) are not an error.
pub fn zeropage(uffd: impl AsFd, start: u64, len: u64) -> nix::Result<()> {
    let mut z = UffdioZeropage {
        start,
        len,
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `z` is a live uffdio_zeropage the kernel reads and writes.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_ZEROPAGE, &mut z as *mut UffdioZeropage) };
    match Errno::result(ret) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One message read from a uffd, with the descriptor number of a fork's
/// new uffd still raw (see [`Msg`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMsg {
    /// A missing-page fault at this address.
    Fault(u64),
    /// The process forked; the child's uffd was installed in the reader's
    /// fd table at this number.
    Fork(i32),
    /// mremap moved `[from, from+len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// madvise(DONTNEED/REMOVE) dropped `[start, end)`.
    Remove { start: u64, end: u64 },
    /// munmap (or a mapping over it) removed `[start, end)`.
    Unmap { start: u64, end: u64 },
    /// An event we did not ask for.
    Other(u8),
}

fn le64(m: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(m[at..at + 8].try_into().unwrap())
}

/// Decodes whole `struct uffd_msg`s (32 bytes each: event u8, 7 reserved
/// bytes, then the 24-byte argument union); a trailing partial message is
/// ignored.
pub fn parse_msgs(buf: &[u8]) -> Vec<RawMsg> {
    buf.chunks_exact(MSG_SIZE)
        .map(|m| match m[0] {
            // pagefault { flags u64, address u64, feat u32 }
            EVENT_PAGEFAULT => RawMsg::Fault(le64(m, 16)),
            // fork { ufd u32 }
            EVENT_FORK => RawMsg::Fork(u32::from_le_bytes(m[8..12].try_into().unwrap()) as i32),
            // remap { from, to, len }
            EVENT_REMAP => RawMsg::Remap {
                from: le64(m, 8),
                to: le64(m, 16),
                len: le64(m, 24),
            },
            // remove { start, end } (also for unmap)
            EVENT_REMOVE => RawMsg::Remove {
                start: le64(m, 8),
                end: le64(m, 16),
            },
            EVENT_UNMAP => RawMsg::Unmap {
                start: le64(m, 8),
                end: le64(m, 16),
            },
            e => RawMsg::Other(e),
        })
        .collect()
}

/// A message read from a uffd; a fork carries the child's uffd, now ours.
#[derive(Debug)]
pub enum Msg {
    Fault(u64),
    Fork(OwnedFd),
    Remap { from: u64, to: u64, len: u64 },
    Remove { start: u64, end: u64 },
    Unmap { start: u64, end: u64 },
    Other(u8),
}

/// Reads every pending message of a non-blocking uffd, in order (empty
/// when none is pending).
pub fn read_msgs(uffd: impl AsFd) -> nix::Result<Vec<Msg>> {
    let mut out = Vec::new();
    let mut buf = [0u8; MSG_SIZE * 64];
    loop {
        let n = match nix::unistd::read(uffd.as_fd().as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        for m in parse_msgs(&buf[..n]) {
            out.push(match m {
                RawMsg::Fault(a) => Msg::Fault(a),
                // SAFETY: the kernel installed this descriptor in our fd
                // table while delivering the fork event; nothing else
                // knows or owns it.
                RawMsg::Fork(fd) => Msg::Fork(unsafe { OwnedFd::from_raw_fd(fd) }),
                RawMsg::Remap { from, to, len } => Msg::Remap { from, to, len },
                RawMsg::Remove { start, end } => Msg::Remove { start, end },
                RawMsg::Unmap { start, end } => Msg::Unmap { start, end },
                RawMsg::Other(e) => Msg::Other(e),
            });
        }
        if n < buf.len() {
            break;
        }
    }
    Ok(out)
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `_IOR(UFFDIO, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::c_ulong = ((2u64 << 30) | (16 << 16) | (0xAA << 8) | 0x02) as libc::c_ulong;
const _: () = assert!(UFFDIO_WAKE == 0x8010aa02);

/// `UFFDIO_WAKE` of the threads waiting on a fault in `[start, start+len)`.
pub fn wake(uffd: impl AsFd, start: u64, len: u64) -> nix::Result<()> {
    let mut r = UffdioRange { start, len };
    // SAFETY: `r` is a live uffdio_range the kernel only reads.
    let ret = unsafe { libc::ioctl(uffd.as_fd().as_raw_fd(), UFFDIO_WAKE, &mut r as *mut UffdioRange) };
    Errno::result(ret).map(drop)
}

#[cfg(test)]
mod msg_tests {
    use super::*;

    fn msg(event: u8, args: &[u64]) -> [u8; MSG_SIZE] {
        let mut m = [0u8; MSG_SIZE];
        m[0] = event;
        for (i, a) in args.iter().enumerate() {
            m[8 + 8 * i..16 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        m
    }

    #[test]
    fn decodes_each_event() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&msg(EVENT_PAGEFAULT, &[1, 0x7f00_1234, 99]));
        buf.extend_from_slice(&msg(EVENT_FORK, &[0xffff_ffff_0000_0007]));
        buf.extend_from_slice(&msg(EVENT_REMAP, &[0x1000, 0x9000, 0x3000]));
        buf.extend_from_slice(&msg(EVENT_REMOVE, &[0x2000, 0x4000]));
        buf.extend_from_slice(&msg(EVENT_UNMAP, &[0x5000, 0x6000]));
        buf.extend_from_slice(&msg(0x42, &[]));
        buf.extend_from_slice(&[EVENT_PAGEFAULT; 5]); // partial: ignored
        assert_eq!(
            parse_msgs(&buf),
            vec![
                RawMsg::Fault(0x7f00_1234),
                RawMsg::Fork(7),
                RawMsg::Remap {
                    from: 0x1000,
                    to: 0x9000,
                    len: 0x3000
                },
                RawMsg::Remove {
                    start: 0x2000,
                    end: 0x4000
                },
                RawMsg::Unmap {
                    start: 0x5000,
                    end: 0x6000
                },
                RawMsg::Other(0x42),
            ]
        );
    }

    #[test]
    fn wake_ioctl_number() {
        // _IOR(0xAA, 0x02, 16 bytes) as in linux/userfaultfd.h.
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
    }
}

/// poll(POLLIN) on `fds` for up to `timeout_ms`; which are readable.
pub fn poll_in(fds: &[std::os::fd::BorrowedFd], timeout_ms: i32) -> nix::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfds the kernel fills in.
    let ret = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    Errno::result(ret)?;
    Ok(p.iter().map(|x| x.revents != 0).collect())
}
