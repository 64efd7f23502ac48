//! Transport of the CRIU RPC: one protobuf message per SOCK_SEQPACKET
//! datagram, no length prefix (calling-conventions.md §4.1).
//!
//! The socket is the inherited descriptor named on the command line
//! (`swrk <fd>`). Requests are read by peeking their size first, so a
//! request of any size (hundreds of external mounts) fits.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, ControlMessage, MsgFlags};
use prost::Message;

use crate::image::pb::{CriuReq, CriuResp};

/// Largest request accepted (CRIU has no limit; this only guards memory).
pub const MAX_REQUEST: usize = 16 << 20;

/// Errors of the RPC transport.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The fd argument of `swrk` is not a descriptor number.
    #[error("Bad socket descriptor argument {arg:?} (expected swrk <fd>)")]
    BadFdArg { arg: String },
    /// The descriptor is not open or not a socket.
    #[error("Descriptor {fd} is not an open socket")]
    NotSocket {
        fd: RawFd,
        #[source]
        source: Errno,
    },
    /// The descriptor is a socket of the wrong type.
    #[error("Descriptor {fd} is a socket of type {ty}, not SOCK_SEQPACKET")]
    NotSeqpacket { fd: RawFd, ty: i32 },
    /// recv failed.
    #[error("Cannot receive a request on fd {fd}")]
    Recv {
        fd: RawFd,
        #[source]
        source: Errno,
    },
    /// send failed.
    #[error("Cannot send a {len}-byte reply on fd {fd}")]
    Send {
        fd: RawFd,
        len: usize,
        #[source]
        source: Errno,
    },
    /// The request is larger than [`MAX_REQUEST`].
    #[error("Request of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    /// The datagram is not a criu_req.
    #[error("Request of {len} bytes is not a valid criu_req")]
    Decode {
        len: usize,
        #[source]
        source: prost::DecodeError,
    },
    /// SO_PEERCRED failed.
    #[error("Cannot read the peer credentials of fd {fd}")]
    PeerCred {
        fd: RawFd,
        #[source]
        source: Errno,
    },
}

/// The RPC socket.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    fd: BorrowedFd<'static>,
}

/// Parses the `swrk` argument: a decimal descriptor number.
pub fn parse_fd_arg(arg: &str) -> Result<RawFd, WireError> {
    match arg.parse::<RawFd>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(WireError::BadFdArg { arg: arg.to_string() }),
    }
}

impl Conn {
    /// Takes the inherited socket `fd`; it must be a SOCK_SEQPACKET
    /// socket. The descriptor stays open for the life of the process.
    pub fn inherited(fd: RawFd) -> Result<Conn, WireError> {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(|source| WireError::NotSocket { fd, source })?;
        let b = crate::sys::rawfd::borrow(fd);
        let ty = crate::sys::fdops::getsockopt_int(b, libc::SOL_SOCKET, libc::SO_TYPE)
            .map_err(|source| WireError::NotSocket { fd, source })?;
        if ty != libc::SOCK_SEQPACKET {
            return Err(WireError::NotSeqpacket { fd, ty });
        }
        // Forked helpers of the engine that exec must not carry it.
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        Ok(Conn { fd: b })
    }

    /// The descriptor number.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Pid of the process that created the socket pair (SO_PEERCRED):
    /// the caller whose descriptors `images_dir_fd` / `work_dir_fd` name.
    pub fn peer_pid(&self) -> Result<i32, WireError> {
        socket::getsockopt(&self.fd, sockopt::PeerCredentials)
            .map(|c| c.pid())
            .map_err(|source| WireError::PeerCred { fd: self.fd(), source })
    }

    /// The next datagram, or None when the peer closed its end.
    pub fn recv_raw(&self) -> Result<Option<Vec<u8>>, WireError> {
        let fd = self.fd();
        let len = loop {
            match socket::recv(fd, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(WireError::Recv { fd, source }),
            }
        };
        if len == 0 {
            // EOF (a criu_req is never empty: `type` is required). Consume
            // a possible empty datagram so a retry does not spin.
            let _ = socket::recv(fd, &mut [], MsgFlags::MSG_DONTWAIT);
            return Ok(None);
        }
        if len > MAX_REQUEST {
            let _ = socket::recv(fd, &mut [], MsgFlags::empty());
            return Err(WireError::TooLarge {
                len,
                limit: MAX_REQUEST,
            });
        }
        let mut buf = vec![0u8; len];
        let n = loop {
            match socket::recv(fd, &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(WireError::Recv { fd, source }),
            }
        };
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// The next request, or None at EOF.
    pub fn recv_req(&self) -> Result<Option<CriuReq>, WireError> {
        match self.recv_raw()? {
            None => Ok(None),
            Some(b) => decode_req(&b).map(Some),
        }
    }

    /// Sends one reply or notification.
    pub fn send_resp(&self, r: &CriuResp) -> Result<(), WireError> {
        self.send_raw(&r.encode_to_vec(), None)
    }

    /// Sends one reply, with `fd` attached as SCM_RIGHTS when given.
    pub fn send_resp_with_fd(&self, r: &CriuResp, fd: RawFd) -> Result<(), WireError> {
        self.send_raw(&r.encode_to_vec(), Some(fd))
    }

    fn send_raw(&self, bytes: &[u8], pass: Option<RawFd>) -> Result<(), WireError> {
        let fd = self.fd();
        let iov = [IoSlice::new(bytes)];
        let fds: Vec<RawFd> = pass.into_iter().collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        loop {
            match socket::sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(WireError::Send {
                        fd,
                        len: bytes.len(),
                        source,
                    })
                }
            }
        }
    }
}

/// Decodes a request datagram.
pub fn decode_req(b: &[u8]) -> Result<CriuReq, WireError> {
    CriuReq::decode(b).map_err(|source| WireError::Decode { len: b.len(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::pb::{CriuReqType, CriuVersion};
    use std::os::fd::AsRawFd;

    #[test]
    fn fd_argument() {
        assert_eq!(parse_fd_arg("3").unwrap(), 3);
        assert_eq!(parse_fd_arg("17").unwrap(), 17);
        for bad in ["", "-1", "x", "3x", " 3"] {
            assert!(parse_fd_arg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decodes_observed_requests() {
        // Bytes observed from real callers (calling-conventions.md §4.8).
        let r = decode_req(&[0x08, 0x0a]).unwrap();
        assert_eq!(r.r#type(), CriuReqType::Version);
        let r = decode_req(&[0x08, 0x09, 0x2a, 0x04, 0x08, 0x01, 0x10, 0x01]).unwrap();
        assert_eq!(r.r#type(), CriuReqType::FeatureCheck);
        let f = r.features.unwrap();
        assert!(f.mem_track() && f.lazy_pages() && !f.pidfd_store());
        assert!(decode_req(&[0x08]).is_err());
        // An unknown type decodes (proto2 keeps the number); the server
        // answers it with EMPTY.
        let r = decode_req(&[0x08, 0x63]).unwrap();
        assert_eq!(r.r#type, 99);
    }

    #[test]
    fn version_reply_matches_criu_bytes() {
        let r = CriuResp {
            r#type: CriuReqType::Version as i32,
            success: true,
            version: Some(CriuVersion {
                major_number: 3,
                minor_number: 17,
                sublevel: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            r.encode_to_vec(),
            [0x08, 0x0a, 0x10, 0x01, 0x52, 0x06, 0x08, 0x03, 0x10, 0x11, 0x20, 0x01]
        );
        // success=false is encoded explicitly (field 2 = 0).
        let f = CriuResp {
            r#type: CriuReqType::FeatureCheck as i32,
            success: false,
            ..Default::default()
        };
        assert_eq!(f.encode_to_vec(), [0x08, 0x09, 0x10, 0x00]);
    }

    #[test]
    fn socketpair_roundtrip_with_peek_sizing() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let conn = Conn::inherited(a.as_raw_fd()).unwrap();
        assert_eq!(conn.peer_pid().unwrap(), std::process::id() as i32);
        // A big request (larger than any fixed buffer a reader might use).
        let mut req = CriuReq {
            r#type: CriuReqType::Dump as i32,
            ..Default::default()
        };
        req.opts = Some(crate::image::pb::CriuOpts {
            external: (0..5000).map(|i| format!("mnt[/m{i}]:m{i}")).collect(),
            ..Default::default()
        });
        let bytes = req.encode_to_vec();
        assert!(bytes.len() > 65536);
        socket::send(b.as_raw_fd(), &bytes, MsgFlags::empty()).unwrap();
        socket::send(b.as_raw_fd(), &[0x08, 0x0a], MsgFlags::empty()).unwrap();
        let got = conn.recv_req().unwrap().unwrap();
        assert_eq!(got.opts.unwrap().external.len(), 5000);
        assert_eq!(conn.recv_req().unwrap().unwrap().r#type(), CriuReqType::Version);
        conn.send_resp(&CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            ..Default::default()
        })
        .unwrap();
        let mut buf = [0u8; 64];
        let n = socket::recv(b.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(&buf[..n], &[0x08, 0x06, 0x10, 0x01]);
        drop(b);
        assert!(conn.recv_req().unwrap().is_none());
        // Not a SEQPACKET socket.
        let (s1, _s2) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap();
        assert!(matches!(
            Conn::inherited(s1.as_raw_fd()),
            Err(WireError::NotSeqpacket { .. })
        ));
        drop(s1);
        std::mem::forget(a); // the Conn borrowed it for 'static
    }
}
