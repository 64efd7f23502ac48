//! cryo: checkpoint/restore of Linux process trees.
//!
//! Dump: freeze the tree with ptrace (seize + interrupt every thread),
//! collect per-task state from /proc, ptrace register sets and a few
//! syscalls injected through the task's own vdso `syscall` instruction,
//! copy memory with process_vm_readv, and write CRIU-format images.
//!
//! Restore: validate every image, fork a small init into a fresh pid
//! namespace, recreate the tree with exact pids (clone3 set_tid), open the
//! files, stage memory, and jump each task into the no_std restorer blob,
//! which puts the address space in place and rt_sigreturns into the saved
//! registers.
#![deny(unsafe_code)]

pub mod bundle;
pub mod cli;
pub mod criu_cli;
pub mod dump;
pub mod files;
pub mod freeze;
pub mod hooks;
pub mod image;
pub mod ipc;
pub mod kerndat;
pub mod log;
pub mod mem;
pub mod migrate;
pub mod net;
pub mod ns;
pub mod oci;
pub mod proc;
pub mod regs;
pub mod restore;
pub mod rpc;
pub mod runtime;
pub mod sys;

/// Fails with a clear message when not running as root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        anyhow::bail!("cryo {what} needs root (running as uid {uid})");
    }
    Ok(())
}
