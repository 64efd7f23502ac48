//! Support code shared by the workloads (the binaries in `workloads/`).
//!
//! The protocol every workload follows, ZDTM style:
//! 1. it is started with `--log FILE` (a regular file, opened here with
//!    `O_APPEND`; pipes are not something cryo restores yet);
//! 2. it sets up its piece of state and writes `READY <pid>`;
//! 3. it idles (single-threaded, no allocation in the signal handler: the
//!    SIGUSR1 handler only sets a flag) while it is dumped and restored;
//! 4. on SIGUSR1 it verifies the state and writes `PASS <details>` or
//!    `FAIL <what>`, then exits 0 or 1.
//!
//! Everything here calls libc directly; each unsafe block says why it is
//! sound.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the SIGUSR1 handler; read by the workload's idle loop.
pub static USR1: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe, no allocation.
    USR1.store(true, Ordering::SeqCst);
}

/// Installs the SIGUSR1 handler (without SA_RESTART, so a blocking
/// syscall returns EINTR and the idle loop notices the flag at once).
pub fn install_usr1() {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler only performs an atomic store, which is
    // async-signal-safe; the pointers passed are valid for the call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            die("sigaction(SIGUSR1) failed");
        }
    }
}

/// True once SIGUSR1 has arrived.
pub fn usr1_seen() -> bool {
    USR1.load(Ordering::SeqCst)
}

/// Sleeps `ms` milliseconds with nanosleep(2); returns early on a signal.
pub fn sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; a null remainder pointer is allowed.
    unsafe {
        libc::nanosleep(&ts, std::ptr::null_mut());
    }
}

/// getpid(2).
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// getppid(2).
pub fn getppid() -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

/// getpgrp(2).
pub fn getpgrp() -> i32 {
    // SAFETY: getpgrp has no preconditions.
    unsafe { libc::getpgrp() }
}

/// getsid(0): the caller's session id.
pub fn getsid() -> i32 {
    // SAFETY: getsid(0) has no preconditions.
    unsafe { libc::getsid(0) }
}

/// The last OS error number.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Writes a message to stderr and exits 2 (setup failures, not verdicts).
pub fn die(msg: &str) -> ! {
    let line = format!("SETUP-ERROR {msg} (errno {})\n", errno());
    // SAFETY: the buffer is valid for its length; fd 2 may be closed, in
    // which case write just fails.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(2);
    }
}

/// The workload's log: a regular file opened with O_APPEND. Each line is
/// written with a single write(2), so lines of several processes sharing
/// the file never interleave.
pub struct Log {
    fd: i32,
}

impl Log {
    /// Opens (creating) `path` for appending. The fd is close-on-exec.
    pub fn open(path: &str) -> Log {
        let c = CString::new(path).unwrap_or_else(|_| die("log path has a NUL"));
        // SAFETY: `c` is a valid NUL-terminated string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            die(&format!("open log {path}"));
        }
        Log { fd }
    }

    /// The log's file descriptor number.
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Appends `msg` and a newline in one write(2).
    pub fn line(&self, msg: &str) {
        let mut buf = Vec::with_capacity(msg.len() + 1);
        buf.extend_from_slice(msg.as_bytes());
        buf.push(b'\n');
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::write(self.fd, buf.as_ptr().cast(), buf.len()) };
        if n != buf.len() as isize {
            die("short write to the log");
        }
    }

    /// Writes `READY <pid>`.
    pub fn ready(&self) {
        self.line(&format!("READY {}", getpid()));
    }

    /// Writes `PASS details` or `FAIL problems` and exits 0 or 1.
    pub fn verdict(&self, problems: &[String], details: &str) -> ! {
        if problems.is_empty() {
            self.line(&format!("PASS {details}"));
            std::process::exit(0);
        }
        self.line(&format!("FAIL {}", problems.join("; ")));
        std::process::exit(1);
    }
}

/// Minimal `--key value` / `--flag` command-line parsing.
pub struct Args {
    args: Vec<String>,
}

impl Args {
    /// Reads the process's arguments (without argv\[0\]).
    pub fn from_env() -> Args {
        Args {
            args: std::env::args().skip(1).collect(),
        }
    }

    /// From an explicit list (for tests).
    pub fn from_vec(args: Vec<String>) -> Args {
        Args { args }
    }

    /// The value following `--name`, if present.
    pub fn value(&self, name: &str) -> Option<String> {
        let flag = format!("--{name}");
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if *a == flag {
                return it.next().cloned();
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(v.to_string());
            }
        }
        None
    }

    /// The value of `--name` or die with a usage message.
    pub fn required(&self, name: &str) -> String {
        self.value(name).unwrap_or_else(|| die(&format!("missing --{name}")))
    }

    /// `--name` parsed as a number, or `default`.
    pub fn num(&self, name: &str, default: u64) -> u64 {
        match self.value(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| die(&format!("--{name}: not a number: {v}"))),
        }
    }

    /// True if the bare flag `--name` is present.
    pub fn flag(&self, name: &str) -> bool {
        let flag = format!("--{name}");
        self.args.contains(&flag)
    }
}

/// xorshift64*: a small seeded pseudo-random generator for fill patterns.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is mapped to a fixed non-zero seed).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fills `buf` with the pattern of `seed`.
pub fn fill(buf: &mut [u64], seed: u64) {
    let mut r = Rng::new(seed);
    for w in buf.iter_mut() {
        *w = r.next_u64();
    }
}

/// A 64-bit checksum of `buf` (order-sensitive).
pub fn checksum(buf: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &w in buf {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(29);
    }
    h
}

/// An anonymous private read-write mapping of `len` bytes, viewed as u64s.
pub struct AnonMap {
    ptr: *mut u64,
    len: usize,
}

impl AnonMap {
    /// mmap(2)s `len` bytes (a multiple of 8) of anonymous memory.
    pub fn new(len: usize) -> AnonMap {
        assert!(len.is_multiple_of(8) && len > 0);
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address
        // touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            die(&format!("mmap {len} bytes"));
        }
        AnonMap { ptr: p.cast(), len }
    }

    /// The mapping as a slice of u64.
    pub fn words(&self) -> &[u64] {
        // SAFETY: the mapping is `len` bytes, readable, page-aligned and
        // lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len / 8) }
    }

    /// The mapping as a mutable slice of u64.
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `words`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len / 8) }
    }

    /// The mapping as bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `words_mut`; u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast(), self.len) }
    }

    /// Start address of the mapping.
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// `madvise(MADV_DONTNEED)` of `[off, off + len)` (page-aligned): the
    /// range reads as zeros afterwards.
    pub fn discard(&mut self, off: usize, len: usize) {
        assert!(off.is_multiple_of(4096) && off + len <= self.len);
        // SAFETY: the range lies inside the mapping made in `new`, and the
        // `&mut self` borrow means no slice of it is alive.
        let r = unsafe { libc::madvise(self.ptr.cast::<u8>().add(off).cast(), len, libc::MADV_DONTNEED) };
        if r != 0 {
            die("madvise(MADV_DONTNEED)");
        }
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; no slice
        // borrowed from it can outlive `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_values_and_flags() {
        let a = Args::from_vec(
            ["--mib", "4", "--log=/tmp/x", "--corrupt"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        assert_eq!(a.num("mib", 1), 4);
        assert_eq!(a.value("log").as_deref(), Some("/tmp/x"));
        assert!(a.flag("corrupt"));
        assert!(!a.flag("mib2"));
        assert_eq!(a.num("children", 3), 3);
    }

    #[test]
    fn checksum_sees_one_bit() {
        let mut v = vec![0u64; 1024];
        fill(&mut v, 7);
        let a = checksum(&v);
        v[513] ^= 1 << 17;
        assert_ne!(a, checksum(&v));
        v[513] ^= 1 << 17;
        assert_eq!(a, checksum(&v));
    }

    #[test]
    fn fill_depends_on_seed() {
        let mut a = vec![0u64; 16];
        let mut b = vec![0u64; 16];
        fill(&mut a, 1);
        fill(&mut b, 2);
        assert_ne!(a, b);
        fill(&mut b, 1);
        assert_eq!(a, b);
    }
}
