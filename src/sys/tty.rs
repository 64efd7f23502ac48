//! Terminal ioctls not covered by nix's safe API.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);
nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_read_bad!(tcgets, libc::TCGETS, libc::termios);
nix::ioctl_write_ptr_bad!(tcsets, libc::TCSETS, libc::termios);

/// `ioctl(fd, TIOCGWINSZ)`—the window size of a terminal.
pub fn get_winsize(fd: BorrowedFd) -> nix::Result<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: fd is a live descriptor for the duration of the borrow and
    // `ws` is a valid, writable winsize the kernel fills in.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }?;
    Ok(ws)
}

/// `ioctl(fd, TIOCSWINSZ)`.
pub fn set_winsize(fd: BorrowedFd, ws: &libc::winsize) -> nix::Result<()> {
    // SAFETY: fd is live for the borrow; `ws` points to a valid winsize
    // that the kernel only reads.
    unsafe { tiocswinsz(fd.as_raw_fd(), ws) }?;
    Ok(())
}

/// `ioctl(fd, TCGETS)`—the raw kernel termios (no speed translation).
pub fn get_termios(fd: BorrowedFd) -> nix::Result<libc::termios> {
    // SAFETY: an all-zero termios is a valid value of this plain C struct.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is live for the borrow; `t` is writable and large enough
    // for the kernel's struct termios (glibc's is larger, never smaller).
    unsafe { tcgets(fd.as_raw_fd(), &mut t) }?;
    Ok(t)
}

/// `ioctl(fd, TCSETS)`.
pub fn set_termios(fd: BorrowedFd, t: &libc::termios) -> nix::Result<()> {
    // SAFETY: fd is live for the borrow; the kernel only reads `t`.
    unsafe { tcsets(fd.as_raw_fd(), t) }?;
    Ok(())
}

/// `ioctl(fd, req, &int)` for the terminal ioctls that read one int.
fn get_int(fd: BorrowedFd, req: libc::Ioctl) -> nix::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: fd is live for the borrow; every request passed here (by the
    // functions below) writes exactly one int through the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) };
    nix::errno::Errno::result(r)?;
    Ok(v)
}

/// `ioctl(fd, req, &int)` for the terminal ioctls that take one int by
/// pointer.
fn set_int(fd: BorrowedFd, req: libc::Ioctl, v: i32) -> nix::Result<()> {
    let v: libc::c_int = v;
    // SAFETY: fd is live for the borrow; every request passed here only
    // reads one int through the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) };
    nix::errno::Errno::result(r).map(drop)
}

/// `ioctl(fd, req, arg)` for the terminal ioctls that take an integer
/// argument by value (or none).
fn call_arg(fd: BorrowedFd, req: libc::Ioctl, arg: libc::c_ulong) -> nix::Result<()> {
    // SAFETY: fd is live for the borrow; the requests passed here take an
    // integer argument, not a pointer, so no memory is accessed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    nix::errno::Errno::result(r).map(drop)
}

/// TIOCGPTN on a pty master: the index N of its /dev/pts/N.
pub fn get_ptn(fd: BorrowedFd) -> nix::Result<u32> {
    get_int(fd, libc::TIOCGPTN).map(|v| v as u32)
}

/// TIOCGPTLCK on a pty master: whether its slave is locked.
pub fn get_ptlck(fd: BorrowedFd) -> nix::Result<bool> {
    get_int(fd, libc::TIOCGPTLCK).map(|v| v != 0)
}

/// TIOCSPTLCK on a pty master.
pub fn set_ptlck(fd: BorrowedFd, locked: bool) -> nix::Result<()> {
    set_int(fd, libc::TIOCSPTLCK, i32::from(locked))
}

/// TIOCGPKT on a pty master: packet mode.
pub fn get_pkt(fd: BorrowedFd) -> nix::Result<bool> {
    get_int(fd, libc::TIOCGPKT).map(|v| v != 0)
}

/// TIOCPKT on a pty master.
pub fn set_pkt(fd: BorrowedFd, on: bool) -> nix::Result<()> {
    set_int(fd, libc::TIOCPKT, i32::from(on))
}

/// TIOCGEXCL: exclusive mode of a terminal.
pub fn get_excl(fd: BorrowedFd) -> nix::Result<bool> {
    get_int(fd, libc::TIOCGEXCL).map(|v| v != 0)
}

/// TIOCEXCL: puts a terminal in exclusive mode.
pub fn set_excl(fd: BorrowedFd) -> nix::Result<()> {
    call_arg(fd, libc::TIOCEXCL, 0)
}

/// TIOCSCTTY(0): makes the terminal the caller's controlling terminal (the
/// caller is a session leader without one).
pub fn set_ctty(fd: BorrowedFd) -> nix::Result<()> {
    call_arg(fd, libc::TIOCSCTTY, 0)
}

/// TIOCINQ: bytes in the terminal's input queue (in canonical mode, up to
/// the end of the last complete line).
pub fn inq(fd: BorrowedFd) -> nix::Result<usize> {
    get_int(fd, libc::FIONREAD).map(|v| v.max(0) as usize)
}
