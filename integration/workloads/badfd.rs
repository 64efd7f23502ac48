//! badfd: holds a descriptor of a kind cryo cannot dump, at a known
//! number, to check that the dump fails cleanly and the tree runs on.
//!
//! `badfd --log F --kind io_uring|inet|netlink|synsent [--port N] [--corrupt]`
//!
//! `synsent` is a TCP socket whose non-blocking connect to 127.0.0.1:N
//! (a listener outside the tree whose accept queue is full, so the SYNs are
//! dropped) stays in SYN_SENT: a state TCP repair cannot recreate.
//!
//! It creates the descriptor, moves it to fd 33, writes `READY`, and on
//! SIGUSR1 checks that fd 33 is still the same object (same inode) and
//! that its idle counter went on; `--corrupt` closes fd 33 first.

use cryo_integration::wl::{self, Args, Log};

const FD: i32 = 33;

fn ino(fd: i32) -> Option<u64> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let kind = args.required("kind");
    let corrupt = args.flag("corrupt");
    wl::install_usr1();
    let fd = match kind.as_str() {
        "io_uring" => {
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup reads and writes the 120-byte params.
            unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) as i32 }
        }
        // SAFETY: plain integer arguments.
        "inet" => unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) },
        // SAFETY: plain integer arguments.
        "netlink" => unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) },
        "synsent" => {
            let port = args.num("port", 0) as u16;
            // SAFETY: plain integer arguments.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
            // SAFETY: a zeroed sockaddr_in is valid; the fields are set below.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = port.to_be();
            sa.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            // SAFETY: `sa` is a valid sockaddr_in of the size given.
            let r = unsafe {
                libc::connect(
                    fd,
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
                wl::die("the connect did not stay in progress");
            }
            fd
        }
        k => wl::die(&format!("unknown --kind {k}")),
    };
    if fd < 0 {
        wl::die(&format!("create the {kind} descriptor"));
    }
    // SAFETY: dup2/close on our own fd numbers.
    unsafe {
        if libc::dup2(fd, FD) != FD {
            wl::die("dup2");
        }
        libc::close(fd);
    }
    let before = ino(FD);
    log.line(&format!("FDS {kind}={FD}"));
    log.ready();
    let mut ticks = 0u64;
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
        ticks += 1;
    }
    if corrupt {
        // SAFETY: closing our own fd.
        unsafe { libc::close(FD) };
    }
    let mut pr = Vec::new();
    if ino(FD) != before {
        pr.push(format!("fd {FD} is {:?}, was {before:?}", ino(FD)));
    }
    if ticks == 0 {
        pr.push("no time passed".into());
    }
    log.verdict(&pr, &format!("{kind}={FD} ticks={ticks}"));
}
