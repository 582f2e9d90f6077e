//! The event loop: one thread, one epoll instance, every client.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::sys::{self, Epoll, Event, Events, Fd, Listener, READABLE, SignalFd, Socket};

/// How many readiness reports one `epoll_wait` may return. More are not
/// lost: they wait in the kernel's ready list for the next call.
const EVENTS_PER_WAIT: usize = 1024;
/// One `read` takes at most this much; with level-triggered epoll, whatever
/// is left is reported again on the next `epoll_wait`.
const READ_CHUNK: usize = 64 * 1024;
/// How long to stop accepting when accept fails and we cannot shed the
/// connection (see `accept_new_connections`).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most connections accepted in one turn. Like reading one chunk per event,
/// it keeps a flood of connects from holding the loop away from the
/// connections it already has; the listener is level-triggered, so epoll
/// reports the rest of the queue on the next turn.
const ACCEPTS_PER_TURN: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `--work-us`: CPU time to burn per newline before echoing it.
    pub work_per_newline: Duration,
    /// `--max-pending`: stop reading a client that owes this many bytes.
    pub max_pending: usize,
}

/// What the summary line reports besides the syscall counts.
#[derive(Clone, Copy, Debug)]
pub struct Totals {
    pub connections_served: u64,
    pub connections_shed: u64,
}

// ANCHOR: server
pub struct Server {
    epoll: Epoll,
    listener: Listener,
    signals: SignalFd,
    /// Every open connection, indexed by its descriptor number: the kernel
    /// already hands out small unique integers, so the fd is the token we
    /// give epoll and the index we look the connection up by.
    connections: Vec<Option<Connection>>,
    /// One read buffer shared by all connections: data only stays in it
    /// between a `read` and the `write` that echoes it.
    read_buffer: Box<[u8]>,
    /// Held in reserve for EMFILE (see `accept_new_connections`).
    spare_descriptor: Option<Fd>,
    /// Set while accepting is paused after an accept error we could not shed.
    accept_paused_until: Option<Instant>,
    /// Whether we already said we are out of descriptors (say it once).
    out_of_descriptors_reported: bool,
    config: Config,
    totals: Totals,
}
// ANCHOR_END: server

impl Server {
    pub fn new(listener: Listener, signals: SignalFd, config: Config) -> io::Result<Server> {
        let epoll = Epoll::new()?;
        epoll.add(listener.raw_fd(), READABLE, token(listener.raw_fd()))?;
        epoll.add(signals.raw_fd(), READABLE, token(signals.raw_fd()))?;
        Ok(Server {
            epoll,
            listener,
            signals,
            connections: Vec::new(),
            read_buffer: vec![0; READ_CHUNK].into_boxed_slice(),
            spare_descriptor: Some(sys::open_spare_descriptor()?),
            accept_paused_until: None,
            out_of_descriptors_reported: false,
            config,
            totals: Totals {
                connections_served: 0,
                connections_shed: 0,
            },
        })
    }

    // ANCHOR: event_loop
    /// Serves clients until SIGINT or SIGTERM arrives. Returning drops the
    /// server, which closes the listener and every connection.
    pub fn run(mut self) -> io::Result<Totals> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        loop {
            let timeout = self
                .accept_paused_until
                .map(|until| until.saturating_duration_since(Instant::now()));
            match self.epoll.wait(&mut events, timeout) {
                Ok(()) => {}
                // A stop/continue (Ctrl-Z, a debugger) interrupts the wait;
                // nothing happened, so wait again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let fd = fd_of(event);
                if fd == self.listener.raw_fd() {
                    self.accept_new_connections();
                } else if fd == self.signals.raw_fd() {
                    if self.signals.take_signal()?.is_some() {
                        return Ok(self.totals);
                    }
                } else {
                    self.on_connection_event(fd, event);
                }
            }
            self.resume_accepting_if_due()?;
        }
    }
    // ANCHOR_END: event_loop

    // ANCHOR: on_connection_event
    fn on_connection_event(&mut self, fd: RawFd, event: Event) {
        let Some(connection) = self.connections.get_mut(slot(fd)).and_then(Option::as_mut) else {
            return; // not ours (any more): nothing to do
        };
        let served = if event.is_error() {
            // A pending socket error (typically a reset by the peer): the
            // client is gone and nothing more can be delivered to it.
            Err(io::Error::from(io::ErrorKind::ConnectionReset))
        } else {
            serve_level_triggered(connection, event, &mut self.read_buffer, self.config)
        };
        let next = served.map(|()| connection.wanted_interest(self.config.max_pending));
        match next {
            Ok(Some(interest)) if interest == connection.registered => {}
            Ok(Some(interest)) => {
                // The EPOLLOUT toggle (and the back-pressure EPOLLIN toggle):
                // this is the `epoll_ctl` level-triggered mode costs us.
                match self.epoll.modify(fd, interest, token(fd)) {
                    Ok(()) => connection.registered = interest,
                    Err(_) => self.close(fd),
                }
            }
            // Finished (EOF and all echoed), or the connection failed.
            Ok(None) | Err(_) => self.close(fd),
        }
    }
    // ANCHOR_END: on_connection_event

    fn close(&mut self, fd: RawFd) {
        // Dropping the connection closes its socket, which also removes it
        // from epoll's interest list: no EPOLL_CTL_DEL needed.
        if let Some(entry) = self.connections.get_mut(slot(fd)) {
            *entry = None;
        }
    }

    // ANCHOR: accept
    /// Accepts the connections waiting in the listen queue, until EAGAIN or
    /// [`ACCEPTS_PER_TURN`] of them.
    fn accept_new_connections(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok(socket) => self.register(socket),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => {
                    // The connection stays in the queue, so the listener
                    // stays readable: without doing something here,
                    // level-triggered epoll would wake us for it forever,
                    // a busy loop. Free the spare descriptor, take the
                    // connection with it and close it at once (the client
                    // sees its connection closed, not a hang), then re-open
                    // the spare.
                    let Some(spare) = self.spare_descriptor.take() else {
                        self.pause_accepting();
                        return;
                    };
                    self.report_out_of_descriptors(&e);
                    drop(spare);
                    let shed = self.listener.accept().map(drop);
                    self.spare_descriptor = sys::open_spare_descriptor().ok();
                    match shed {
                        Ok(()) => self.totals.connections_shed += 1,
                        // Linux reports EMFILE before it looks at the queue,
                        // so the queue may have been empty all along.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(_) => {
                            self.pause_accepting();
                            return;
                        }
                    }
                }
                // The client gave up while waiting in the queue, or the
                // network under it failed: that connection is gone, the next
                // one may be fine (accept(2) lists these as "retry").
                Err(e) if is_connection_gone(&e) => continue,
                Err(e) => {
                    eprintln!("accept: {e}; not accepting for {ACCEPT_PAUSE:?}");
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    fn register(&mut self, socket: Socket) {
        // Best effort: a socket without TCP_NODELAY still echoes correctly.
        let _ = socket.set_nodelay();
        let fd = socket.raw_fd();
        if let Err(e) = self.epoll.add(fd, READABLE, token(fd)) {
            eprintln!("epoll_ctl(ADD): {e}; closing the new connection");
            return;
        }
        let index = slot(fd);
        if self.connections.len() <= index {
            self.connections.resize_with(index + 1, || None);
        }
        self.connections[index] = Some(Connection::new(socket, READABLE));
        self.totals.connections_served += 1;
        self.out_of_descriptors_reported = false;
    }
    // ANCHOR_END: accept

    fn report_out_of_descriptors(&mut self, error: &io::Error) {
        if !self.out_of_descriptors_reported {
            self.out_of_descriptors_reported = true;
            let limit =
                sys::descriptor_limit().map_or_else(|| "unknown".to_string(), |l| l.to_string());
            eprintln!(
                "accept: {error} (RLIMIT_NOFILE={limit}); closing new connections until \
                 descriptors free up; raise the limit with `ulimit -n`"
            );
        }
    }

    /// Stops watching the listener for `ACCEPT_PAUSE`: the fallback when
    /// there is no spare descriptor to shed with. The wait gets a timeout
    /// instead of a listener that is always ready.
    fn pause_accepting(&mut self) {
        if self.epoll.delete(self.listener.raw_fd()).is_ok() {
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        }
    }

    fn resume_accepting_if_due(&mut self) -> io::Result<()> {
        if self
            .accept_paused_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.accept_paused_until = None;
            if self.spare_descriptor.is_none() {
                self.spare_descriptor = sys::open_spare_descriptor().ok();
            }
            let listener = self.listener.raw_fd();
            self.epoll.add(listener, READABLE, token(listener))?;
            self.accept_new_connections();
        }
        Ok(())
    }
}

// ANCHOR: serve
/// Handles one readiness report for one connection, level-triggered style:
/// at most one `read`, and at most two `write`s (the rest of an earlier
/// partial write, then the new echo). Anything left over (more input, or
/// output the send buffer could not take) is still there on the next
/// `epoll_wait`, and level-triggered epoll reports it again.
fn serve_level_triggered(
    connection: &mut Connection,
    event: Event,
    read_buffer: &mut [u8],
    config: Config,
) -> io::Result<()> {
    // Output first: if there is room now, send what we owe. (A hangup makes
    // the write fail, which closes the connection.)
    if (event.is_writable() || event.is_hangup()) && !connection.pending_output.is_empty() {
        connection.flush()?;
    }
    // Then one read, unless back-pressure says this client must wait.
    if (event.is_readable() || event.is_hangup()) && connection.wants_input(config.max_pending) {
        match connection.socket.read(read_buffer) {
            Ok(0) => connection.peer_closed = true,
            Ok(n) => {
                let data = &read_buffer[..n];
                spend_work(data, config.work_per_newline);
                connection.echo(data)?;
            }
            // A spurious wake-up (the data went away, or never was) or a
            // signal: nothing to do; if data arrives, epoll reports it again.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
// ANCHOR_END: serve

// ANCHOR: work
/// `--work-us`: burn `work_per_newline` of CPU for each newline in `data`, on
/// the event-loop thread, before the data is echoed. While it runs no other
/// client is served at all; chapter 04 moves this work to a worker pool.
fn spend_work(data: &[u8], work_per_newline: Duration) {
    if work_per_newline.is_zero() {
        return;
    }
    for _ in data.iter().filter(|&&byte| byte == b'\n') {
        let until = Instant::now() + work_per_newline;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}
// ANCHOR_END: work

fn token(fd: RawFd) -> u64 {
    u64::try_from(fd).unwrap_or(u64::MAX)
}

fn fd_of(event: Event) -> RawFd {
    RawFd::try_from(event.token()).unwrap_or(-1)
}

fn slot(fd: RawFd) -> usize {
    usize::try_from(fd).unwrap_or(usize::MAX)
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn is_connection_gone(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}
