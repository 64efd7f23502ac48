//! cryo as CRIU's RPC server: `criu swrk <fd>`.
//!
//! runc, crun (libcriu), podman, CRI-O and containerd (go-criu) execute a
//! binary named `criu` with `swrk <fd>`, where `<fd>` is an inherited
//! AF_UNIX SOCK_SEQPACKET socket, and speak protobuf over it: one
//! `criu_req` per datagram in, `criu_resp` replies and notifications out
//! (calling-conventions.md §1, §2, §4). One process serves one request
//! (VERSION, FEATURE_CHECK and CHECK may keep the connection open with
//! `keep_open`), then exits 0 on success and non-zero on failure.
//!
//! - [`wire`]: framing over the socket.
//! - [`opts`]: which `criu_opts` fields cryo applies, accepts or refuses.
//! - [`server`]: the request handlers and notifications.

pub mod opts;
pub mod server;
pub mod wire;

pub use server::{serve, Outcome};

/// The CRIU version cryo reports: 3.17.1, the Debian 12 criu it replaces.
/// It passes every version gate of runc 1.1.5 (≥ 3.16 for LSM options),
/// podman 4.3.1 (≥ 3.11, pods ≥ 3.16), crun (≥ 3.15 / 3.16.1), CRI-O and
/// containerd (≥ 3.16). No gitid: its presence would bump the number
/// callers compute to 3.18.0.
pub const CRIU_VERSION: (i32, i32, i32) = (3, 17, 1);

/// The version as go-criu computes it (major·10000 + minor·100 + sublevel).
pub const CRIU_VERSION_NUMBER: i32 = CRIU_VERSION.0 * 10000 + CRIU_VERSION.1 * 100 + CRIU_VERSION.2;

/// `swrk <fd>`: serves the socket; returns the process exit code.
/// Nothing is printed on stdout or stderr once the socket is valid (on a
/// restore they are the container's stdio); errors go to the reply's
/// `cr_errmsg` and the log file.
pub fn swrk_main(fd_arg: &str) -> i32 {
    let conn = match wire::parse_fd_arg(fd_arg).and_then(wire::Conn::inherited) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("criu: swrk: {}", crate::rpc::server::chain(&e.into()));
            return 1;
        }
    };
    serve(conn).exit_code()
}
