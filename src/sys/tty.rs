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
