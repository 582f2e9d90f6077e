//! The syscall layer: every `unsafe` call into `libc` this chapter makes, each
//! wrapped so that the rest of the program reads as the algorithm, not as FFI.
//!
//! - [`check`] turns the C convention "-1 and `errno`" into `io::Result`.
//! - [`Fd`] owns a descriptor and closes it on drop; nothing else holds a raw
//!   `c_int` it could leak.
//! - [`Listener`], [`Socket`], [`SignalFd`], [`EventFd`]: the descriptors the
//!   server owns. Chapter 09 reads and writes sockets through the ring
//!   (ring.rs), not here: no `read`, `writev` or `epoll` left in this file.
//! - [`accept_calls`], [`eventfd_writes`]: the syscalls made outside the ring.
//! - [`allowed_cpus`], [`pin_current_thread`], [`thread_id`]: CPU affinity.

use std::cell::Cell;
use std::ffi::c_int;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

// ANCHOR: check
/// A libc return value that signals failure with `-1` (and sets `errno`).
pub trait MinusOneIsError: Copy + PartialEq {
    const MINUS_ONE: Self;
}

impl MinusOneIsError for i32 {
    const MINUS_ONE: Self = -1;
}

impl MinusOneIsError for isize {
    const MINUS_ONE: Self = -1;
}

/// Turns a libc return of `-1` into the `errno` it left behind, so every call
/// site reads `check(unsafe { libc::foo(..) })?` and nobody inspects `errno`.
pub fn check<T: MinusOneIsError>(result: T) -> io::Result<T> {
    if result == T::MINUS_ONE {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
// ANCHOR_END: check

// ANCHOR: counts
// The syscalls this chapter still makes outside the ring: `accept4` (only to
// shed a connection when descriptors run out) and the workers' eventfd
// writes. The ring counts its own `io_uring_enter` calls (see ring.rs).
thread_local! {
    static ACCEPT_CALLS: Cell<u64> = const { Cell::new(0) };
}
/// Bumped by worker threads, and only when they must wake their reactor:
/// rare enough for one process-wide atomic.
static EVENTFD_WRITE_CALLS: AtomicU64 = AtomicU64::new(0);

fn count(counter: &'static std::thread::LocalKey<Cell<u64>>) {
    counter.with(|calls| calls.set(calls.get() + 1));
}

/// The calling thread's `accept4` calls.
pub fn accept_calls() -> u64 {
    ACCEPT_CALLS.get()
}

/// `write`s to the workers' eventfds, all reactors together: how often a
/// worker woke its reactor.
pub fn eventfd_writes() -> u64 {
    EVENTFD_WRITE_CALLS.load(Ordering::Relaxed)
}
// ANCHOR_END: counts

// ANCHOR: fd
/// An open file descriptor that this value owns: dropping it closes it.
#[derive(Debug)]
pub struct Fd(RawFd);

impl Fd {
    pub fn raw(&self) -> RawFd {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor (every `Fd` is built from a fresh
        // descriptor a syscall just returned) and nobody uses it after drop.
        // Closing a socket also removes it from every epoll interest list it
        // was in, so connections need no EPOLL_CTL_DEL before they go.
        // close's error is ignored on purpose: the descriptor is gone either
        // way, and retrying after EINTR on Linux could close someone else's.
        unsafe { libc::close(self.0) };
    }
}
// ANCHOR_END: fd

// ANCHOR: socket
/// A connected TCP socket. The ring does its reads and writes; this type
/// only owns the descriptor (closed on drop) and sets options on it.
#[derive(Debug)]
pub struct Socket {
    fd: Fd,
}

impl Socket {
    /// Takes ownership of a descriptor the kernel just handed us in an
    /// accept completion (nobody else owns it).
    pub fn from_accepted(fd: RawFd) -> Socket {
        Socket { fd: Fd(fd) }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.raw()
    }

    /// Turns off Nagle's algorithm: an echo is a reply, and holding a small
    /// reply back until the previous one is acknowledged costs a client
    /// that pipelines up to a delayed-ACK timeout (40 ms) per message.
    pub fn set_nodelay(&self) -> io::Result<()> {
        let one: c_int = 1;
        // SAFETY: `one` is a c_int that lives across the call, and we pass
        // its exact size; the socket is open.
        check(unsafe {
            libc::setsockopt(
                self.fd.raw(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const one).cast(),
                socklen_of::<c_int>(),
            )
        })?;
        Ok(())
    }
}
// ANCHOR_END: socket

// ANCHOR: listener
/// A listening TCP socket, built from raw syscalls so that every step
/// (non-blocking, close-on-exec, address reuse, backlog) is visible.
#[derive(Debug)]
pub struct Listener {
    fd: Fd,
}

impl Listener {
    /// With `reuse_port`, other sockets with the option may bind the same
    /// address and port, and the kernel spreads new connections over them.
    pub fn bind(addr: SocketAddr, backlog: c_int, reuse_port: bool) -> io::Result<Listener> {
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: plain syscall with integer arguments; the new descriptor
        // goes straight into an owning `Fd` (closed if a later step fails).
        let fd = Fd(check(unsafe { libc::socket(domain, kind, 0) })?);

        // Let a restarted server bind its port while old connections to it
        // still sit in TIME_WAIT.
        let one: c_int = 1;
        // SAFETY: `one` is a c_int that lives across the call, and we pass
        // its exact size; the socket is open.
        check(unsafe {
            libc::setsockopt(
                fd.raw(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                socklen_of::<c_int>(),
            )
        })?;
        if reuse_port {
            // Before `bind`: the kernel checks it when the next socket of
            // the group binds, and every member must have it.
            // SAFETY: as above.
            check(unsafe {
                libc::setsockopt(
                    fd.raw(),
                    libc::SOL_SOCKET,
                    libc::SO_REUSEPORT,
                    (&raw const one).cast(),
                    socklen_of::<c_int>(),
                )
            })?;
        }

        let (storage, len) = socket_addr_to_raw(addr);
        // SAFETY: `storage` holds a sockaddr_in or sockaddr_in6 of length
        // `len`, matching the socket's address family.
        check(unsafe { libc::bind(fd.raw(), (&raw const storage).cast(), len) })?;
        // SAFETY: plain syscall on an open, bound socket.
        check(unsafe { libc::listen(fd.raw(), backlog) })?;
        Ok(Listener { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.raw()
    }

    /// The address actually bound (the real port when we asked for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = socklen_of::<libc::sockaddr_storage>();
        // SAFETY: `storage` and `len` describe a writable buffer big enough
        // for any socket address; the kernel writes at most `len` bytes.
        check(unsafe { libc::getsockname(self.fd.raw(), (&raw mut storage).cast(), &mut len) })?;
        raw_to_socket_addr(&storage)
    }

    /// Takes one connection off the accept queue, already non-blocking and
    /// close-on-exec (`accept4` does both atomically: no window in which
    /// a blocking socket exists). `WouldBlock` when the queue is empty.
    pub fn accept(&self) -> io::Result<Socket> {
        count(&ACCEPT_CALLS);
        // SAFETY: null address pointers are allowed (we do not need the
        // peer's address); the new descriptor goes into an owning `Fd`.
        let fd = check(unsafe {
            libc::accept4(
                self.fd.raw(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        })?;
        Ok(Socket { fd: Fd(fd) })
    }
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

fn socket_addr_to_raw(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is big enough and aligned for any
            // sockaddr type, sockaddr_in included.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            socklen_of::<libc::sockaddr_in>()
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
            socklen_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len)
}

fn raw_to_socket_addr(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in here.
            let sin = unsafe { *(std::ptr::from_ref(storage).cast::<libc::sockaddr_in>()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the kernel wrote a sockaddr_in6 here.
            let sin6 = unsafe { *(std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )
            .into())
        }
        family => Err(io::Error::other(format!(
            "unexpected address family {family}"
        ))),
    }
}
// ANCHOR_END: listener

// ANCHOR: signalfd
/// SIGINT and SIGTERM delivered as readable data on a descriptor, so the
/// event loop learns about them from the same `epoll_wait` as everything
/// else, instead of in an async signal handler.
#[derive(Debug)]
pub struct SignalFd {
    fd: Fd,
}

impl SignalFd {
    /// Blocks SIGINT and SIGTERM for this thread (and every thread it spawns
    /// later, which inherit the mask), so they stay pending instead of
    /// killing the process, and opens a signalfd that reports them. Call it
    /// first thing in `main`, before any other thread exists: a thread
    /// without the mask would take the default action (exit, no summary).
    pub fn for_shutdown_signals() -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `mask` is a valid sigset_t; these only fail for invalid
        // signal numbers, and SIGINT/SIGTERM are valid.
        unsafe {
            libc::sigemptyset(&mut mask);
            libc::sigaddset(&mut mask, libc::SIGINT);
            libc::sigaddset(&mut mask, libc::SIGTERM);
        }
        // SAFETY: `mask` is initialised; a null old-mask pointer is allowed.
        // pthread_sigmask returns the error number instead of setting errno.
        let error = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        // SAFETY: -1 asks for a new descriptor; `mask` is initialised.
        let fd =
            check(unsafe { libc::signalfd(-1, &mask, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
        Ok(SignalFd { fd: Fd(fd) })
    }

    /// Blocks until SIGINT or SIGTERM arrives, or until `also` (another
    /// descriptor) becomes readable. Returns the signal, or `None` for `also`.
    /// For main, which does nothing else while the reactors run.
    pub fn wait_or(&self, also: RawFd) -> io::Result<Option<c_int>> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.fd.raw(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: also,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a live array of two pollfd, its length passed.
            match check(unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Some(signal) = self.take_signal()? {
                return Ok(Some(signal));
            }
            if fds[1].revents != 0 {
                return Ok(None);
            }
        }
    }

    /// The number of a pending signal, if one is waiting.
    pub fn take_signal(&self) -> io::Result<Option<c_int>> {
        // SAFETY: signalfd_siginfo is plain data; all zeroes is valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = size_of::<libc::signalfd_siginfo>();
        // SAFETY: we pass a writable buffer of exactly one siginfo record.
        match check(unsafe { libc::read(self.fd.raw(), (&raw mut info).cast(), size) }) {
            Ok(n) if n.unsigned_abs() == size => Ok(c_int::try_from(info.ssi_signo).ok()),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}
// ANCHOR_END: signalfd

// ANCHOR: eventfd
/// A counter in the kernel that reads as a descriptor: a worker thread
/// `notify`s it, epoll reports it readable, and the event loop, which only
/// ever sleeps in `epoll_wait`, wakes up. This is how results get back to a
/// loop that cannot block on a channel.
#[derive(Debug)]
pub struct EventFd {
    fd: Fd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall with an initial value and flags; the new
        // descriptor goes straight into an owning `Fd`.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(EventFd { fd: Fd(fd) })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.raw()
    }

    /// Adds 1 to the counter, making the descriptor readable. Called from
    /// worker threads: a `write` on an eventfd is thread-safe.
    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        EVENTFD_WRITE_CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: we pass exactly one readable u64, as eventfd(2) requires.
        check(unsafe { libc::write(self.fd.raw(), (&raw const one).cast(), size_of::<u64>()) })?;
        Ok(())
    }

    /// Reads the counter back to 0, so that (level-triggered) epoll stops
    /// reporting it until the next `notify`. `WouldBlock` means it was
    /// already 0: a spurious wake-up, harmless.
    pub fn reset(&self) -> io::Result<()> {
        let mut value: u64 = 0;
        // SAFETY: we pass a writable u64, the size eventfd(2) reads into.
        match check(unsafe { libc::read(self.fd.raw(), (&raw mut value).cast(), size_of::<u64>()) })
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}
// ANCHOR_END: eventfd

// ANCHOR: affinity
// ANCHOR: affinity_1
// ANCHOR_END: affinity_1
// ANCHOR: allowed_cpus_signature
/// The CPUs the calling thread may run on, in increasing order: the mask it
/// inherited (`taskset`, a cgroup cpuset, a container), not always `0..N`.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // ANCHOR_END: allowed_cpus_signature
    // SAFETY: cpu_set_t is a plain bitmask; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is writable and its size is
    // passed, so the kernel writes at most that much.
    check(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) })?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}
// ANCHOR: affinity_2

// ANCHOR_END: affinity_2
// ANCHOR: pin_current_thread_signature
/// Lets the calling thread run on `cpu` only. Affinity is per thread on
/// Linux (pid 0 = this thread); threads it spawns afterwards inherit it.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // ANCHOR_END: pin_current_thread_signature
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is a plain bitmask; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is initialised, its size
    // passed.
    check(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) })?;
    Ok(())
}
// ANCHOR: affinity_3

/// The calling thread's id: the `<tid>` of `/proc/<pid>/task/<tid>/`.
pub fn thread_id() -> i32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::gettid() }
}
// ANCHOR_END: affinity_3
// ANCHOR_END: affinity

// ANCHOR: spare
/// Opens `/dev/null`: a descriptor held in reserve so that when `accept`
/// fails with EMFILE we can free one slot, accept the waiting connection and
/// close it (see `Server::accept_new_connections`).
pub fn open_spare_descriptor() -> io::Result<Fd> {
    // SAFETY: the path is a valid NUL-terminated C string; the new
    // descriptor goes into an owning `Fd`.
    let fd = check(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    Ok(Fd(fd))
}

/// The soft RLIMIT_NOFILE, for error messages that name the limit.
pub fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }).ok()?;
    Some(limit.rlim_cur)
}
// ANCHOR_END: spare
