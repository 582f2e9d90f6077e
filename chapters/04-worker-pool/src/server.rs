//! The event loop: one thread, one epoll instance, every client, with
//! edge-triggered connections and a ready list for fairness. It only does
//! I/O: what each read asks for (`--work-us`) runs on the worker pool, and
//! the results come back through an eventfd in the same epoll set.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::connection::{Connection, ConnectionId};
use crate::sys::{
    self, EDGE_TRIGGERED, Epoll, Event, Events, Fd, Listener, READ_CLOSED, READABLE, SignalFd,
    Socket, WRITABLE,
};
use crate::workers::{
    Completed, Job, Offload, PoolKind, WorkerStats, Workers, spend_work, work_for,
};

/// How many readiness reports one `epoll_wait` may return. More are not
/// lost: they wait in the kernel's ready list for the next call.
const EVENTS_PER_WAIT: usize = 1024;
/// One `read` takes at most this much.
const READ_CHUNK: usize = 64 * 1024;
// ANCHOR: budget_and_interest
/// The read budget: at most this many reads per connection per turn, so one
/// client streaming data as fast as loopback allows cannot keep the loop to
/// itself. A connection that spends it goes to the back of the ready list.
/// (With the worker pool a turn ends sooner: at its first read that becomes
/// a job. The budget still bounds a turn of reads that find nothing.)
const READS_PER_TURN: usize = 4;
/// Every connection is registered once, for everything, and never modified.
const CONNECTION_INTEREST: u32 = READABLE | WRITABLE | READ_CLOSED | EDGE_TRIGGERED;
// ANCHOR_END: budget_and_interest
/// How long to stop accepting when accept fails and we cannot shed the
/// connection (see `accept_new_connections`).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most connections accepted in one turn. Like the read budget, it keeps a
/// flood of connects from holding the loop away from the connections it
/// already has; the listener is level-triggered, so epoll reports the rest
/// of the queue on the next turn.
const ACCEPTS_PER_TURN: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `--work-us`: CPU time to burn per newline before echoing it.
    pub work_per_newline: Duration,
    /// `--max-pending`: stop reading a client that owes this many bytes.
    pub max_pending: usize,
    /// `--workers`: threads in the pool.
    pub workers: usize,
    /// `--pool`: which pool.
    pub pool: PoolKind,
    /// `--queue-depth`: the most jobs handed over and not yet answered.
    pub queue_depth: usize,
    /// `--offload`: which reads' work goes to the pool.
    pub offload: Offload,
    /// `--offload-above-us`: with `--offload auto`, work that costs more
    /// than this goes to the pool; anything cheaper runs on the loop.
    pub offload_above: Duration,
}

// ANCHOR: offload_decision
impl Config {
    /// Whether the work this read asks for goes to the pool, or runs here
    /// on the loop (see [`Offload`]).
    fn goes_to_pool(&self, data: &[u8]) -> bool {
        match self.offload {
            Offload::Always => true,
            Offload::Never => false,
            Offload::Auto => work_for(data, self.work_per_newline) > self.offload_above,
        }
    }

    /// Whether any read could go to the pool. Only then does a full job
    /// queue stop the loop reading: with `--work-us 0` and `auto` it never
    /// does, and the pool is never touched.
    fn may_use_pool(&self) -> bool {
        match self.offload {
            Offload::Always => true,
            Offload::Never => false,
            Offload::Auto => !self.work_per_newline.is_zero(),
        }
    }
}
// ANCHOR_END: offload_decision

/// What the summary line reports besides the syscall counts.
#[derive(Clone, Copy, Debug)]
pub struct Totals {
    pub connections_served: u64,
    pub connections_shed: u64,
    /// How many times a connection spent its read budget, or found the job
    /// queue full, and was put on the ready list for another turn.
    pub requeued: u64,
    /// Results that came back for a connection closed in the meantime.
    pub results_dropped: u64,
    pub workers: WorkerStats,
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
    /// Connections with input still unread after their budget ran out, or
    /// while the job queue was full, oldest first. Edge-triggered epoll will
    /// not report them again, so this list is what remembers them.
    ready_list: VecDeque<ConnectionId>,
    /// One read buffer shared by all connections: data only stays in it
    /// between a `read` and the `write` that echoes it.
    read_buffer: Box<[u8]>,
    /// The serial number the next accepted connection gets.
    next_serial: u32,
    /// Held in reserve for EMFILE (see `accept_new_connections`).
    spare_descriptor: Option<Fd>,
    /// Set while accepting is paused after an accept error we could not shed.
    accept_paused_until: Option<Instant>,
    /// Whether we already said we are out of descriptors (say it once).
    out_of_descriptors_reported: bool,
    /// The pool that runs `--work-us`, and the way its results come back.
    workers: Workers,
    /// Where finished jobs are swapped in; kept to reuse its capacity.
    completed: Vec<Completed>,
    config: Config,
    totals: Totals,
}
// ANCHOR_END: server

impl Server {
    pub fn new(listener: Listener, signals: SignalFd, config: Config) -> io::Result<Server> {
        let epoll = Epoll::new()?;
        epoll.add(listener.raw_fd(), READABLE, token(listener.raw_fd()))?;
        epoll.add(signals.raw_fd(), READABLE, token(signals.raw_fd()))?;
        let workers = Workers::start(
            config.pool,
            config.workers,
            config.queue_depth,
            config.work_per_newline,
        )?;
        // Level-triggered: readable until the loop resets it, so a wake-up
        // cannot be missed even if one batch of results is left for later.
        epoll.add(workers.waker_fd(), READABLE, token(workers.waker_fd()))?;
        Ok(Server {
            epoll,
            listener,
            signals,
            connections: Vec::new(),
            ready_list: VecDeque::new(),
            read_buffer: vec![0; READ_CHUNK].into_boxed_slice(),
            next_serial: 1,
            spare_descriptor: Some(sys::open_spare_descriptor()?),
            accept_paused_until: None,
            out_of_descriptors_reported: false,
            workers,
            completed: Vec::new(),
            config,
            totals: Totals {
                connections_served: 0,
                connections_shed: 0,
                requeued: 0,
                results_dropped: 0,
                workers: WorkerStats::default(),
            },
        })
    }

    // ANCHOR: event_loop
    /// Serves clients until SIGINT or SIGTERM arrives. Returning drops the
    /// server, which closes the listener and every connection.
    pub fn run(mut self) -> io::Result<Totals> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        loop {
            let timeout = if self.ready_list.is_empty() || !self.workers.has_room() {
                // (With the job queue full, the ready list must wait for a
                // result to free a place, and a result wakes us anyway.)
                self.accept_paused_until
                    .map(|until| until.saturating_duration_since(Instant::now()))
            } else {
                // Connections are waiting for their next turn: collect new
                // events without sleeping, then serve both.
                Some(Duration::ZERO)
            };
            match self.epoll.wait(&mut events, timeout) {
                Ok(()) => {}
                // A stop/continue (Ctrl-Z, a debugger) interrupts the wait;
                // nothing happened, so wait again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let id = ConnectionId::from_token(event.token());
                let fd = id.fd;
                if fd == self.listener.raw_fd() {
                    self.accept_new_connections();
                } else if fd == self.signals.raw_fd() {
                    if self.signals.take_signal()?.is_some() {
                        self.totals.workers = self.workers.stats();
                        return Ok(self.totals);
                    }
                } else if fd == self.workers.waker_fd() {
                    self.apply_completed()?;
                } else {
                    self.on_connection_event(id, event);
                }
            }
            self.serve_ready_list();
            self.resume_accepting_if_due()?;
        }
    }
    // ANCHOR_END: event_loop

    // ANCHOR: on_connection_event
    fn on_connection_event(&mut self, id: ConnectionId, event: Event) {
        let Some(connection) = connection_with_id(&mut self.connections, id) else {
            // Not ours any more: this event was collected before a result
            // earlier in the batch closed its connection, and the
            // descriptor may already belong to a newer one. Nothing to do.
            return;
        };
        let served = if event.is_error() {
            // A pending socket error (typically a reset by the peer): the
            // client is gone and nothing more can be delivered to it.
            Err(io::Error::from(io::ErrorKind::ConnectionReset))
        } else {
            // An edge is news we get once: write it down before acting on it.
            if event.is_readable() || event.is_read_closed() {
                connection.unread_input = true;
            }
            if event.is_read_closed() {
                connection.peer_sent_fin = true;
            }
            let writable = event.is_writable() || event.is_hangup();
            serve_edge_triggered(
                connection,
                writable,
                &mut self.read_buffer,
                &mut self.workers,
                self.config,
            )
        };
        self.after_turn(id, served);
    }
    // ANCHOR_END: on_connection_event

    // ANCHOR: apply_completed
    /// The eventfd said results are back: echo each, in the order its
    /// connection sent it, and give the connection its next turn (it may
    /// have more input waiting, which it could not hand over while this
    /// job was out).
    fn apply_completed(&mut self) -> io::Result<()> {
        let mut completed = std::mem::take(&mut self.completed);
        self.workers.take_completed(&mut completed)?;
        for done in completed.drain(..) {
            let Some(connection) = connection_with_id(&mut self.connections, done.connection)
            else {
                // Closed while its job ran (a reset, say); the descriptor
                // may already belong to someone else. Drop the result.
                self.totals.results_dropped += 1;
                continue;
            };
            connection.job_in_flight = false;
            let served = connection.echo(&done.data).and_then(|()| {
                serve_edge_triggered(
                    connection,
                    false,
                    &mut self.read_buffer,
                    &mut self.workers,
                    self.config,
                )
            });
            self.after_turn(done.connection, served);
        }
        self.completed = completed;
        Ok(())
    }
    // ANCHOR_END: apply_completed

    // ANCHOR: ready_list
    /// Gives every connection on the ready list one more turn (one budget of
    /// reads), oldest first. One that spends its budget again goes to the
    /// back, behind the connections epoll just reported. While the job
    /// queue is full the rest wait: every turn would only find it full.
    fn serve_ready_list(&mut self) {
        for _ in 0..self.ready_list.len() {
            if !self.workers.has_room() {
                break;
            }
            let Some(id) = self.ready_list.pop_front() else {
                break;
            };
            let Some(connection) = connection_with_id(&mut self.connections, id) else {
                continue; // closed while it waited
            };
            connection.on_ready_list = false;
            let served = serve_edge_triggered(
                connection,
                false,
                &mut self.read_buffer,
                &mut self.workers,
                self.config,
            );
            self.after_turn(id, served);
        }
    }

    fn after_turn(&mut self, id: ConnectionId, served: io::Result<()>) {
        let Some(connection) = connection_with_id(&mut self.connections, id) else {
            return;
        };
        match served {
            Ok(()) if connection.is_finished() => self.close(id.fd),
            Ok(()) => {
                if connection.has_unread_input(self.config.max_pending) && !connection.on_ready_list
                {
                    connection.on_ready_list = true;
                    self.ready_list.push_back(id);
                    self.totals.requeued += 1;
                }
            }
            Err(_) => self.close(id.fd),
        }
    }
    // ANCHOR_END: ready_list

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
        let id = ConnectionId {
            fd: socket.raw_fd(),
            serial: self.next_serial,
        };
        // Registered once, for everything, edge-triggered: no epoll_ctl for
        // this connection ever again (closing it unregisters it). Its events
        // carry its serial number as well as its descriptor.
        if let Err(e) = self.epoll.add(id.fd, CONNECTION_INTEREST, id.token()) {
            eprintln!("epoll_ctl(ADD): {e}; closing the new connection");
            return;
        }
        let index = slot(id.fd);
        if self.connections.len() <= index {
            self.connections.resize_with(index + 1, || None);
        }
        self.connections[index] = Some(Connection::new(socket, id.serial));
        self.next_serial = self.next_serial.wrapping_add(1);
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
/// Gives one connection one turn, edge-triggered style: send what we owe if
/// the socket is writable, then read, until the receive buffer is empty,
/// the client is at EOF, back-pressure says stop, or the read budget is
/// spent. A read whose work is cheap is worked on and echoed right here, as
/// in chapter 03; one whose work is dear becomes a job for the workers, and
/// then the connection reads no more until that job's result is back (so a
/// later, cheap read can never overtake it). Whatever is left unread is
/// recorded in `unread_input`, because epoll will not report it again.
fn serve_edge_triggered(
    connection: &mut Connection,
    writable: bool,
    read_buffer: &mut [u8],
    workers: &mut Workers,
    config: Config,
) -> io::Result<()> {
    if writable && !connection.pending_output.is_empty() {
        connection.flush()?;
    }
    let mut reads = 0;
    while connection.has_unread_input(config.max_pending) && reads < READS_PER_TURN {
        if config.may_use_pool() && !workers.has_room() {
            // Back-pressure across the hand-off: the job queue is full, so
            // do not read. The bytes stay in the kernel's socket buffer (and
            // TCP flow control slows the client down); `unread_input` stays
            // set, so the connection waits on the ready list for a place.
            workers.note_queue_full();
            break;
        }
        reads += 1;
        match connection.socket.read(read_buffer) {
            Ok(0) => {
                connection.peer_closed = true;
                connection.unread_input = false;
            }
            Ok(n) => {
                // epoll(7): on a stream socket, a read that returns less
                // than asked for proves the receive buffer is now empty, as
                // surely as EAGAIN would, one syscall sooner. Not after
                // EPOLLRDHUP, though: then we must read on to EOF.
                if n < read_buffer.len() && !connection.peer_sent_fin {
                    connection.unread_input = false;
                }
                let data = &read_buffer[..n];
                if config.goes_to_pool(data) {
                    workers.submit(Job {
                        connection: connection.id(),
                        data: data.to_vec(),
                    });
                    // Ends the loop: `wants_input` is false until the
                    // result is back (see `Connection::wants_input`).
                    connection.job_in_flight = true;
                } else {
                    // Cheaper than the trip to a worker: chapter 03's path.
                    spend_work(data, config.work_per_newline);
                    workers.note_inline();
                    connection.echo(data)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => connection.unread_input = false,
            // No edge would announce these bytes again: retry right away.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
// ANCHOR_END: serve

// ANCHOR: connection_with_id
/// The connection `id` names, if it is still open: same descriptor *and*
/// same serial number.
fn connection_with_id(
    connections: &mut [Option<Connection>],
    id: ConnectionId,
) -> Option<&mut Connection> {
    connections
        .get_mut(slot(id.fd))
        .and_then(Option::as_mut)
        .filter(|connection| connection.serial == id.serial)
}
// ANCHOR_END: connection_with_id

/// The token of a descriptor that is not a connection (serial 0).
fn token(fd: RawFd) -> u64 {
    ConnectionId { fd, serial: 0 }.token()
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
