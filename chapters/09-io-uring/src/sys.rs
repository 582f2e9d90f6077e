//! The syscall layer: every `unsafe` call into `libc` this chapter makes, each
//! wrapped so that the rest of the program reads as the algorithm, not as FFI.
//!
//! - [`check`] turns the C convention "-1 and `errno`" into `io::Result`.
//! - [`Fd`] owns a descriptor and closes it on drop; nothing else holds a raw
//!   `c_int` it could leak.
//! - [`Epoll`] is the epoll instance: `add`, `delete`, `wait`. Only the
//!   supervisor uses it now (its signals and the metrics endpoint); the
//!   reactors read and write sockets through the ring (ring.rs).
//! - [`Event`] is one readiness report, read through named predicates.
//! - [`Listener`], [`Socket`], [`SignalFd`], [`EventFd`]: the descriptors the
//!   server owns.
//! - [`accept_calls`]: the one syscall a reactor makes on sockets outside
//!   the ring (to shed a connection), for the summary line.
//! - [`allowed_cpus`], [`pin_current_thread`], [`thread_id`]: CPU affinity.
//! - From chapter 08, for the supervisor and its worker processes:
//!   [`SharedPage`] (memory shared between processes), [`DescriptorLimit`],
//!   [`kill`], [`reap_exited_child`], [`die_with_parent`], [`resident_bytes`].

use std::cell::Cell;
use std::ffi::c_int;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::Duration;

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
// The one socket syscall a reactor still makes outside the ring: `accept4`
// (only to shed a connection when descriptors run out). The ring counts its
// own `io_uring_enter` calls (see ring.rs). Per *thread*, as in chapter 08:
// each reactor publishes its own count.
thread_local! {
    static ACCEPT_CALLS: Cell<u64> = const { Cell::new(0) };
}

fn count(counter: &'static std::thread::LocalKey<Cell<u64>>) {
    counter.with(|calls| calls.set(calls.get() + 1));
}

/// The calling thread's `accept4` calls.
pub fn accept_calls() -> u64 {
    ACCEPT_CALLS.get()
}
// ANCHOR_END: counts

// ANCHOR: fd
/// An open file descriptor that this value owns: dropping it closes it.
#[derive(Debug)]
pub struct Fd(RawFd);

impl Fd {
    /// Takes ownership of a descriptor this process was handed (e.g.
    /// inherited across `exec`).
    ///
    /// # Safety
    ///
    /// `raw` must be open and owned by nobody else: dropping the `Fd`
    /// closes it.
    pub unsafe fn from_raw(raw: RawFd) -> Fd {
        Fd(raw)
    }

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

// ANCHOR: interest
/// What we ask epoll to watch a descriptor for (the `events` of `epoll_ctl`).
pub type Interest = u32;
/// Wake me when there is data to read (or EOF to see).
pub const READABLE: Interest = libc::EPOLLIN as u32;
/// Wake me when the send buffer has room.
pub const WRITABLE: Interest = libc::EPOLLOUT as u32;
/// Wake me when the peer closes its write side (half-close), and say so in
/// the event, so we know to read until EOF.
pub const READ_CLOSED: Interest = libc::EPOLLRDHUP as u32;
/// Report changes (edges), not states: one wake-up when data arrives, none
/// while it merely sits there unread.
pub const EDGE_TRIGGERED: Interest = libc::EPOLLET as u32;
// ANCHOR_END: interest

// ANCHOR: epoll
/// An epoll instance: the kernel object holding our interest list (what to
/// watch) and ready list (what has happened).
#[derive(Debug)]
pub struct Epoll {
    fd: Fd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall with a flag argument; it returns a new
        // descriptor that we immediately give to an owning `Fd`.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd: Fd(fd) })
    }

    /// Starts watching `fd`; every report about it will carry `token`.
    pub fn add(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    // No `modify`: edge-triggered connections are registered once, for
    // everything, and never changed (chapter 02 needed EPOLL_CTL_MOD).

    fn ctl(&self, op: c_int, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: interest,
            u64: token,
        };
        // SAFETY: both descriptors are open (the caller owns `fd`, we own the
        // epoll fd) and `event` is a valid epoll_event that outlives the call;
        // the kernel copies it and keeps no pointer to it.
        check(unsafe { libc::epoll_ctl(self.fd.raw(), op, fd, &mut event) })?;
        Ok(())
    }

    /// Blocks until at least one watched descriptor is ready or `timeout`
    /// passes (`None`: wait forever), and fills `events` with the reports.
    /// Returns `ErrorKind::Interrupted` if a signal or a stop/continue cut
    /// the wait short; the caller simply waits again.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let timeout_ms = match timeout {
            None => -1,
            // Round up so that a 0.4 ms deadline does not become a busy 0 ms poll.
            Some(t) => c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX),
        };
        let capacity = c_int::try_from(events.list.len()).unwrap_or(c_int::MAX);
        events.ready = 0;
        // SAFETY: the pointer and capacity describe `events.list`, a live,
        // initialised buffer of epoll_event the kernel may write into.
        let ready = check(unsafe {
            libc::epoll_wait(
                self.fd.raw(),
                events.list.as_mut_ptr(),
                capacity,
                timeout_ms,
            )
        })?;
        events.ready = usize::try_from(ready).unwrap_or(0);
        Ok(())
    }
}

/// The buffer `epoll_wait` writes its reports into.
pub struct Events {
    list: Vec<libc::epoll_event>,
    ready: usize,
}

impl Events {
    pub fn with_capacity(capacity: usize) -> Events {
        Events {
            list: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            ready: 0,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        // `epoll_event` is `#[repr(packed)]` on x86-64 (the kernel's ABI
        // there has no padding between the u32 and the u64), so `&e.u64`
        // would be an unaligned reference, which Rust forbids. Copy both
        // fields out by value instead; this works on every architecture.
        self.list[..self.ready].iter().map(|e| Event {
            flags: e.events,
            token: e.u64,
        })
    }
}
// ANCHOR_END: epoll

// ANCHOR: event
/// One readiness report: which descriptor (by token) and what happened.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    token: u64,
    flags: u32,
}

impl Event {
    pub fn token(&self) -> u64 {
        self.token
    }

    /// An error is pending on the socket (e.g. ECONNRESET): EPOLLERR. Also
    /// reported without being asked for.
    pub fn is_error(&self) -> bool {
        self.flags & libc::EPOLLERR as u32 != 0
    }
}
// ANCHOR_END: event

// ANCHOR: socket
/// Most slices one `writev` gathers. Linux allows 1024 (`IOV_MAX`); 64
/// full chunks of 16 KiB is 1 MiB, often as much as a socket's send buffer
/// takes in one call. A queue of more chunks takes more calls: the caller
/// keeps writing while each call is taken whole.
pub const MAX_IOVECS: usize = 64;

/// A connected TCP socket. For a client, the ring does its reads and
/// writes; this type owns the descriptor (closed on drop) and sets options
/// on it. The supervisor's metrics endpoint reads and writes its
/// (non-blocking) scrapers' sockets directly.
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

    /// One `read(2)`: `Ok(0)` is EOF, `WouldBlock` means nothing is waiting.
    pub fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `buffer`, which is
        // writable and lives for the whole call.
        let n =
            check(unsafe { libc::read(self.fd.raw(), buffer.as_mut_ptr().cast(), buffer.len()) })?;
        Ok(n.unsigned_abs())
    }

    /// One `writev(2)` (the supervisor's metrics endpoint): writes the
    /// slices in order, as if concatenated, in one system call, and may stop
    /// part-way (a partial write) when the send buffer fills; `WouldBlock`
    /// when it is already full. Rust's runtime sets SIGPIPE to "ignore" before `main`,
    /// so writing to a reset connection returns EPIPE instead of killing
    /// the process.
    pub fn writev(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let iovecs = c_int::try_from(slices.len().min(MAX_IOVECS)).unwrap_or(0);
        // SAFETY: `IoSlice` is documented to be ABI-compatible with `struct
        // iovec` on Unix, so the pointer is an array of `iovecs` valid
        // iovecs (iovecs <= slices.len()), each describing memory borrowed
        // for the whole call. The kernel only reads through them.
        let n = check(unsafe { libc::writev(self.fd.raw(), slices.as_ptr().cast(), iovecs) })?;
        Ok(n.unsigned_abs())
    }
}

/// Unit tests use one end of a Unix socket pair as a `Socket`.
#[cfg(test)]
impl From<std::os::fd::OwnedFd> for Socket {
    fn from(fd: std::os::fd::OwnedFd) -> Socket {
        use std::os::fd::IntoRawFd;
        Socket {
            fd: Fd(fd.into_raw_fd()),
        }
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
        let listener = Listener::bind_only(addr, reuse_port)?;
        // SAFETY: plain syscall on an open, bound socket.
        check(unsafe { libc::listen(listener.fd.raw(), backlog) })?;
        Ok(listener)
    }

    // ANCHOR: reserve_port
    /// Binds `addr` with `SO_REUSEPORT` but does not listen: the socket holds
    /// the port (no other user can take it) yet receives no connections,
    /// because only listening sockets join the port's reuseport group. The
    /// supervisor uses this to learn the real port of `--addr HOST:0` and
    /// keep it while its workers, which bind that same port, come and go.
    pub fn reserve_port(addr: SocketAddr) -> io::Result<Listener> {
        Listener::bind_only(addr, true)
    }
    // ANCHOR_END: reserve_port

    fn bind_only(addr: SocketAddr, reuse_port: bool) -> io::Result<Listener> {
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
        SignalFd::for_signals(&[libc::SIGINT, libc::SIGTERM])
    }

    /// The supervisor's set: the shutdown signals, and SIGCHLD, which says
    /// a worker process exited (so it can be reaped and restarted).
    pub fn for_shutdown_and_child_signals() -> io::Result<SignalFd> {
        SignalFd::for_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGCHLD])
    }

    fn for_signals(signals: &[c_int]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `mask` is a valid sigset_t; these only fail for invalid
        // signal numbers, and ours are constants from libc.
        unsafe {
            libc::sigemptyset(&mut mask);
            for &signal in signals {
                libc::sigaddset(&mut mask, signal);
            }
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

    pub fn raw_fd(&self) -> RawFd {
        self.fd.raw()
    }

    /// Blocks until SIGINT or SIGTERM arrives, or until `also` (another
    /// descriptor) becomes readable. Returns the signal, or `None` for `also`.
    /// For main, which does nothing else while the reactors run.
    pub fn wait_or(&self, also: RawFd) -> io::Result<Option<c_int>> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.raw_fd(),
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

// ANCHOR: shared_page
/// A region of memory shared by the supervisor and one or more workers: a
/// `memfd` (an anonymous file that lives in RAM) mapped `MAP_SHARED`, so a
/// store by one process is a load away for every other. Workers publish
/// their counters here with relaxed atomics; the supervisor reads them when
/// it prints a status line or serves `/metrics`. No syscall per update, no
/// pipe to drain, and the counters of a worker that crashed are still there
/// to be read after it is gone.
#[derive(Debug)]
pub struct SharedPage {
    address: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the only things
// placed in it are atomics, which are designed to be shared between threads.
unsafe impl Send for SharedPage {}
// SAFETY: as above: every access through `&SharedPage` goes through atomics.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    /// Creates a zero-filled memfd of `len` bytes and maps it. The descriptor
    /// is deliberately NOT close-on-exec: the supervisor's workers inherit it
    /// across `exec` and map it themselves (they are told its number with
    /// `--stats-fd`). It is sealed against shrinking, so no process can ever
    /// cut a mapping short (a load past the end of a file is SIGBUS).
    /// Returns the mapping and the descriptor.
    pub fn create(len: usize) -> io::Result<(SharedPage, Fd)> {
        // SAFETY: the name is a valid NUL-terminated string; no MFD_CLOEXEC
        // (see above). The descriptor goes into an `Fd`.
        let fd = Fd(check(unsafe {
            libc::memfd_create(c"c1m-stats".as_ptr(), libc::MFD_ALLOW_SEALING)
        })?);
        let size = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: plain syscall on the memfd we own; new bytes read as zero.
        check(unsafe { libc::ftruncate(fd.raw(), size) })?;
        // SAFETY: plain fcntl on the memfd we own, created with sealing allowed.
        check(unsafe {
            libc::fcntl(
                fd.raw(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        })?;
        let page = SharedPage::map(fd.raw(), 0, len)?;
        Ok((page, fd))
    }

    /// Maps `len` bytes of the inherited memfd `fd`, starting at `offset`
    /// (a multiple of the page size): a worker maps only its own page.
    /// The descriptor's number comes from the command line, so it is
    /// checked, not trusted: it must be a memfd sealed against shrinking
    /// (one [`SharedPage::create`] made) and long enough.
    pub fn map(fd: RawFd, offset: usize, len: usize) -> io::Result<SharedPage> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shared range overflows"))?;
        // SAFETY: plain fcntl; a descriptor that is not open or not a memfd
        // fails (EBADF, EINVAL), which we report.
        let seals = check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) }).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {fd} is not the supervisor's stats memfd: {e}"),
            )
        })?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {fd} is a memfd that may shrink: not the stats memfd"),
            ));
        }
        // SAFETY: libc::stat is plain data; all zeroes is a valid value.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is a writable stat buffer; `fd` is open (F_GET_SEALS
        // succeeded on it).
        check(unsafe { libc::fstat(fd, &raw mut stat) })?;
        if u64::try_from(stat.st_size).unwrap_or(0) < end as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "stats memfd {fd} holds {} bytes, not the {end} this worker needs",
                    stat.st_size
                ),
            ));
        }
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a null hint lets the kernel choose the address; `fd` is a
        // memfd at least `offset + len` long (checked above) that can never
        // shrink (sealed), so every byte of the mapping stays backed. A
        // failed mmap returns MAP_FAILED, which we check.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let address = std::ptr::NonNull::new(address.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedPage { address, len })
    }

    /// The `T` at byte `offset` of the mapping. `T` must be made only of
    /// atomics (so that sharing it between processes is sound), and every
    /// byte pattern, including all zeroes, must be a valid `T`.
    pub fn get<T: SharedAtomics>(&self, offset: usize) -> &T {
        assert!(
            offset.is_multiple_of(align_of::<T>())
                && offset
                    .checked_add(size_of::<T>())
                    .is_some_and(|end| end <= self.len),
            "shared struct out of the mapping"
        );
        // SAFETY: the assert keeps the reference inside the mapping and
        // aligned (mmap returns page-aligned memory); `SharedAtomics` types
        // are atomics only, valid for any bit pattern, so concurrent access
        // from other processes is the same as from other threads. The
        // reference lives no longer than `self`, which keeps the mapping.
        unsafe { &*self.address.as_ptr().add(offset).cast::<T>() }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range, and no reference into it
        // outlives `self` (`get` borrows from `self`).
        unsafe { libc::munmap(self.address.as_ptr().cast(), self.len) };
    }
}

/// Marker for structs that may live in a [`SharedPage`]: `#[repr(C)]`, made
/// only of atomic integers, valid when all bytes are zero.
///
/// # Safety
///
/// Implement it only for such structs.
pub unsafe trait SharedAtomics: Sized {}

/// The memory page size: mappings start and end on page boundaries.
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
// ANCHOR_END: shared_page

/// Returns freed heap memory to the kernel (glibc's `malloc_trim(0)`, which
/// also releases whole free pages in the middle of every arena). Other C
/// libraries have no such call; there this does nothing.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under
    // its locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

// ANCHOR: rlimit
/// `RLIMIT_NOFILE`: how many descriptors one process may have open. The soft
/// limit is what applies; a process may raise it up to the hard limit on
/// its own, and only root (CAP_SYS_RESOURCE) may raise the hard limit.
#[derive(Clone, Copy, Debug)]
pub struct DescriptorLimit {
    pub soft: u64,
    pub hard: u64,
}

impl DescriptorLimit {
    pub fn get() -> io::Result<DescriptorLimit> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit.
        check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
        Ok(DescriptorLimit {
            soft: limit.rlim_cur,
            hard: limit.rlim_max,
        })
    }

    /// Raises the soft limit to the hard one (no privilege needed) and
    /// returns the limit now in force.
    pub fn raise_soft_to_hard() -> io::Result<DescriptorLimit> {
        let now = DescriptorLimit::get()?;
        if now.soft < now.hard {
            let limit = libc::rlimit {
                rlim_cur: now.hard,
                rlim_max: now.hard,
            };
            // SAFETY: `limit` is a valid rlimit; soft <= hard is allowed.
            check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
        }
        DescriptorLimit::get()
    }
}
// ANCHOR_END: rlimit

// ANCHOR: processes
/// Sends `signal` to process `pid`.
pub fn kill(pid: libc::pid_t, signal: c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    Code(c_int),
    Signal(c_int),
}

impl std::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitKind::Code(code) => write!(f, "exit code {code}"),
            ExitKind::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// Collects one child that has exited, without blocking: `Ok(None)` when
/// none has (yet). One SIGCHLD may stand for several exits (standard signals
/// do not queue), so call it until it returns `None`.
pub fn reap_exited_child() -> io::Result<Option<(libc::pid_t, ExitKind)>> {
    let mut status: c_int = 0;
    // SAFETY: `status` is a valid, writable int.
    match check(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }) {
        Ok(0) => Ok(None),
        Ok(pid) => {
            let kind = if libc::WIFSIGNALED(status) {
                ExitKind::Signal(libc::WTERMSIG(status))
            } else {
                ExitKind::Code(libc::WEXITSTATUS(status))
            };
            Ok(Some((pid, kind)))
        }
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Asks the kernel to send us SIGTERM when the process that started us
/// dies, so a supervisor killed with SIGKILL leaves no workers behind.
/// Returns an error if the parent is already gone (then we should exit).
pub fn die_with_parent(expected_parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; the rest are unused.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) })?;
    // The parent may have died between our exec and the prctl: then we
    // were re-parented and no signal will ever come.
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != expected_parent {
        return Err(io::Error::other("the supervisor is gone"));
    }
    Ok(())
}

/// A process's resident set size in bytes, from `/proc/PID/statm`, or
/// `None` if it is gone.
pub fn resident_bytes(pid: libc::pid_t) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident_pages * page_size() as u64)
}
// ANCHOR_END: processes
