//! Exercise 07 — one listener per reactor, all on one port.
//!
//! With `SO_REUSEPORT`, several sockets may bind the same address and port,
//! and the kernel spreads incoming connections over them by a hash of each
//! connection's addresses and ports. Chapter 07 gives every reactor its own
//! listener this way: each accepts only its own share, with no lock and no
//! thundering herd. Write the two functions marked `todo!()`.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[cfg(not(target_os = "linux"))]
compile_error!("this exercise uses Linux's SO_REUSEPORT semantics");

/// Listen queue length; the kernel caps it at net.core.somaxconn.
pub const BACKLOG: i32 = 1024;

/// A listening socket on `addr` that other `SO_REUSEPORT` sockets of the
/// same user may share. The option must be set on *every* socket of the
/// group, and *before* `bind`: it is checked when a second socket binds.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = new_socket(addr)?;
    set_option(&fd, libc::SO_REUSEPORT, 1)?;
    bind_and_listen(&fd, addr, BACKLOG)?;
    Ok(TcpListener::from(fd))
}

/// `n` listeners sharing one address. With port 0 the kernel picks a free
/// port for the first; the others must then bind *that* port, not 0 (which
/// would give each its own new port, and a group of one).
pub fn bind_reuseport_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let listener = reuseport_listener(addr)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A TCP socket for `addr`'s family, closed on exec.
pub fn new_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(fd, SOL_SOCKET, option, value)` for an int option.
pub fn set_option(fd: &OwnedFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, readable for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `bind(2)` then `listen(2)`.
pub fn bind_and_listen(fd: &OwnedFd, addr: SocketAddr, backlog: i32) -> io::Result<()> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr, sockaddr_in included.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const storage).cast(),
            len as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
