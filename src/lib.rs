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

pub mod image;
pub mod proc;
pub mod restore;
pub mod sys;
