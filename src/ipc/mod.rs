//! Inter-process communication objects that live in an IPC namespace
//! rather than in a process: System V shared memory, semaphores and
//! message queues ([`sysv`]).

pub mod sysv;
