//! The kernel interface layer: the only place in the engine (with
//! `restore/blob.rs`) where `unsafe` is allowed. Each file opts in with
//! `#![allow(unsafe_code)]` and every unsafe block states its invariant.
//!
//! * [`ptrace`]: seize/interrupt/wait, register sets, sigmask, siginfo,
//!   rseq, seccomp filters.
//! * [`inject`]: running syscalls inside a stopped thread.
//! * [`vm`]: process_vm_readv/writev, PAGEMAP_SCAN, pagemap.
//! * [`clone`]: clone3 with set_tid, pidfds, kcmp, robust list, prlimit.
//!
//! Errors are plain `nix::Errno` / `std::io::Error` (no context: callers
//! add pid, fd or address), except [`inject::Error`].

pub mod clone;
pub mod inject;
pub mod ptrace;
pub mod vm;

pub mod cpu;
pub mod fdops;
pub mod ipc;
pub mod mmap;
pub mod ns;
pub mod probe;
pub mod rawfd;
pub mod sock;
#[cfg(test)]
mod tests;
pub mod tty;
pub mod uffd;
