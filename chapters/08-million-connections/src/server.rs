//! One reactor: an event loop on its own thread, with its own epoll
//! instance, listener, slab, buffer pool, worker pool and timer wheel; it
//! shares nothing with the other reactors (chapter 07 runs one per core).
//! Each serves its clients with edge-triggered connections and a ready list
//! for fairness. It only does I/O: what each read asks for (`--work-us`)
//! runs on the worker pool, and the results come back through an eventfd in
//! the same epoll set.
//! Connections live in a slab and borrow output buffers from a pool only
//! while they owe bytes, so an idle one costs one 32-byte slab entry. With
//! `--idle-timeout`, a timing wheel beside the slab closes the ones that
//! move no data for that long; its next deadline is the `epoll_wait`
//! timeout.
//!
//! Chapter 08: a reactor counts what it does into its slot of the
//! shared memory the supervisor reads (`ReactorStats`), instead of handing
//! totals back when it stops, so the counters are live for `/metrics` and
//! outlive a worker process that crashes.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::buffer_pool::{BufferPool, PendingOutput};
use crate::connection::Connection;
use crate::idle::IdleTimeouts;
use crate::slab::{Slab, Token};
use crate::stats::{ReactorStats, bump};
use crate::sys::{
    self, EDGE_TRIGGERED, EXCLUSIVE, Epoll, Event, EventFd, Events, Fd, Interest, Listener,
    READ_CLOSED, READABLE, Socket, WRITABLE,
};
use crate::workers::{Completed, Job, Offload, PoolKind, Workers, spend_work, work_for};

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
/// On shutdown, how long connections still owed echo get to take it (see
/// `begin_drain`). Below the supervisor's 15 s grace before SIGKILL.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Slab slots allocated up front; it grows (by doubling) past this.
const INITIAL_CONNECTIONS: usize = 1024;
/// Idle output chunks a reactor keeps once most of its connections have
/// left (see `give_memory_back_if_mostly_empty`); the pool refills on demand.
const IDLE_CHUNKS_AFTER_A_CROWD: usize = 16;

// ANCHOR: tokens
/// The epoll tokens of the descriptors that are not connections. A slab
/// never issues these (their index is `u32::MAX`).
const LISTENER: Token = Token::reserved(0);
const STOP: Token = Token::reserved(1);
const WAKER: Token = Token::reserved(2);
// ANCHOR_END: tokens

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
    /// `--idle-timeout`: close connections that move no data for this
    /// long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// `--balance exclusive`: every reactor watches the same listener, with
    /// `EPOLLEXCLUSIVE`; otherwise each has its own `SO_REUSEPORT` listener.
    pub shared_listener: bool,
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

// ANCHOR: server
pub struct Server {
    epoll: Epoll,
    /// This reactor's own `SO_REUSEPORT` listener, or (`--balance
    /// exclusive`) the one listener every reactor shares.
    listener: Arc<Listener>,
    /// How the listener is watched: `EPOLLEXCLUSIVE` when it is shared.
    listener_interest: Interest,
    /// Main notifies it on SIGINT/SIGTERM: the signal arrives in main, and
    /// this is how each reactor hears of it.
    stop: Arc<EventFd>,
    /// Every open connection, in one slab. The token epoll hands back is
    /// the slot's index and its generation, so an event, a ready-list entry
    /// or a job's result for a connection closed since finds no one.
    connections: Slab<Connection>,
    /// Connections with input still unread after their budget ran out, or
    /// while the job queue was full, oldest first. Edge-triggered epoll will
    /// not report them again, so this list is what remembers them.
    ready_list: VecDeque<Token>,
    /// What every connection's turn borrows besides the connection: the
    /// read buffer, the output pool, the workers, the config and (new in
    /// this chapter) the shared-memory counters.
    context: Context,
    /// Held in reserve for EMFILE (see `accept_new_connections`).
    spare_descriptor: Option<Fd>,
    /// Set while accepting is paused after an accept error we could not shed.
    accept_paused_until: Option<Instant>,
    /// Whether we already said we are out of descriptors (say it once).
    out_of_descriptors_reported: bool,
    /// Where finished jobs are swapped in; kept to reuse its capacity.
    completed: Vec<Completed>,
    /// Every connection's idle deadline, by slab slot (`--idle-timeout`).
    idle: Option<IdleTimeouts>,
    /// Where expired slots are collected; kept to reuse its capacity.
    expired: Vec<usize>,
    /// Set on stop: until then connections still owed echo may take it.
    draining_until: Option<Instant>,
}
// ANCHOR_END: server

// ANCHOR: context
/// What a connection's turn borrows from the loop besides the connection
/// itself. It is a struct of its own so that a turn can hold one connection
/// (borrowed from the slab) and all of these at once: two fields of the
/// server, borrowed side by side.
struct Context {
    /// One read buffer shared by all connections: data only stays in it
    /// between a `read` and the copy into pooled chunks for the job.
    read_buffer: Box<[u8]>,
    /// Output chunks, lent to a connection from the read whose echo it owes
    /// until the write that sends it. Only this thread touches it.
    output_pool: BufferPool,
    /// The pool that runs `--work-us`, and the way its results come back.
    workers: Workers,
    /// The flags that shape every turn.
    config: Config,
    /// This reactor's slot in the shared memory the supervisor reads; this
    /// thread is its only writer.
    stats: &'static ReactorStats,
}
// ANCHOR_END: context

impl Server {
    /// Sets up a reactor; call it on the reactor's own thread (after pinning
    /// it), so that the worker threads it starts inherit its CPU affinity.
    pub fn new(
        listener: Arc<Listener>,
        stop: Arc<EventFd>,
        config: Config,
        stats: &'static ReactorStats,
    ) -> io::Result<Server> {
        let epoll = Epoll::new()?;
        let listener_interest = if config.shared_listener {
            READABLE | EXCLUSIVE
        } else {
            READABLE
        };
        epoll.add(listener.raw_fd(), listener_interest, LISTENER.epoll_data())?;
        epoll.add(stop.raw_fd(), READABLE, STOP.epoll_data())?;
        let workers = Workers::start(
            config.pool,
            config.workers,
            config.queue_depth,
            config.work_per_newline,
        )?;
        // Level-triggered: readable until the loop resets it, so a wake-up
        // cannot be missed even if one batch of results is left for later.
        epoll.add(workers.waker_fd(), READABLE, WAKER.epoll_data())?;
        Ok(Server {
            epoll,
            listener,
            listener_interest,
            stop,
            connections: Slab::with_capacity(INITIAL_CONNECTIONS),
            ready_list: VecDeque::new(),
            context: Context {
                read_buffer: vec![0; READ_CHUNK].into_boxed_slice(),
                output_pool: BufferPool::new(),
                workers,
                config,
                stats,
            },
            spare_descriptor: Some(sys::open_spare_descriptor()?),
            accept_paused_until: None,
            out_of_descriptors_reported: false,
            completed: Vec::new(),
            idle: config
                .idle_timeout
                .map(|timeout| IdleTimeouts::new(timeout, Instant::now())),
            expired: Vec::new(),
            draining_until: None,
        })
    }

    // ANCHOR: event_loop
    /// Serves clients until main says stop. Returning drops the server,
    /// which closes its connections (and its listener, unless shared).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_WAIT);
        loop {
            let timeout = if self.ready_list.is_empty() || !self.context.workers.has_room() {
                // (With the job queue full, the ready list must wait for a
                // result to free a place, and a result wakes us anyway.)
                sleep_limit(
                    self.idle.as_ref(),
                    self.accept_paused_until,
                    self.draining_until,
                    Instant::now,
                )
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
            // From here to the next epoll_wait is one iteration: how long
            // this wake-up kept the loop (and every client on it) busy.
            let woke = Instant::now();
            bump(&self.context.stats.wakeups, 1);
            for event in events.iter() {
                let token = Token::from_epoll_data(event.token());
                if token == LISTENER {
                    self.accept_new_connections();
                } else if token == STOP {
                    self.stop.reset()?;
                    self.begin_drain();
                } else if token == WAKER {
                    self.apply_completed()?;
                } else {
                    self.on_connection_event(token, event);
                }
            }
            self.serve_ready_list();
            self.reap_idle_connections();
            if self
                .draining_until
                .is_some_and(|until| self.connections.is_empty() || Instant::now() >= until)
            {
                self.finish_drain();
                return Ok(());
            }
            self.resume_accepting_if_due()?;
            self.publish_counts();
            self.context.stats.record_iteration(woke.elapsed());
        }
    }

    /// Stop, gracefully: accept nothing more, and treat every connection as
    /// if its client had half-closed: read nothing more from it, send what
    /// it is owed (its queued output, the result of a job in flight), then
    /// close it. One that is owed nothing closes now; the rest get
    /// `DRAIN_GRACE`.
    fn begin_drain(&mut self) {
        // (Fails harmlessly if an accept pause already took it out.)
        let _ = self.epoll.delete(self.listener.raw_fd());
        self.accept_paused_until = None;
        self.draining_until = Some(Instant::now() + DRAIN_GRACE);
        let tokens: Vec<Token> = (0..self.connections.slots())
            .filter_map(|index| self.connections.token_at(index))
            .collect();
        for token in tokens {
            if let Some(connection) = self.connections.get_mut(token) {
                connection.peer_closed = true;
                if connection.is_finished() {
                    self.close(token);
                }
            }
        }
    }

    /// The grace is over (or nobody is owed anything): count what is
    /// dropped with the connections still open, for the summary. Returning
    /// then drops every connection, which closes it. A job still running
    /// on a worker thread is not waited for here; its bytes are not counted.
    fn finish_drain(&mut self) {
        if !self.connections.is_empty() {
            let mut owed = 0;
            for index in 0..self.connections.slots() {
                let token = self.connections.token_at(index);
                if let Some(connection) = token.and_then(|t| self.connections.get_mut(t)) {
                    owed += connection.pending_output.len();
                }
            }
            bump(&self.context.stats.closed, self.connections.len() as u64);
            bump(
                &self.context.stats.shutdown_dropped,
                self.connections.len() as u64,
            );
            bump(&self.context.stats.shutdown_dropped_bytes, owed as u64);
        }
        self.publish_counts();
    }
    // ANCHOR_END: event_loop

    // ANCHOR: publish_counts
    /// Copies the counts kept below the reactor, by parts that do not know
    /// the shared slot (`sys.rs`'s per-thread syscall counters, the buffer
    /// pool's, the timing wheel's), into it: a few relaxed stores per loop
    /// turn, read by the supervisor whenever it likes. Everything else the
    /// reactor counts straight into the slot (`bump`).
    fn publish_counts(&self) {
        let calls = sys::counts();
        let stats = self.context.stats;
        let pool = self.context.output_pool.stats();
        let timers = self
            .idle
            .as_ref()
            .map(IdleTimeouts::stats)
            .unwrap_or_default();
        for (counter, value) in [
            (&stats.epoll_wait_calls, calls.epoll_wait),
            (&stats.epoll_ctl_calls, calls.epoll_ctl),
            (&stats.read_calls, calls.read),
            (&stats.write_calls, calls.write),
            (&stats.accept_calls, calls.accept),
            (&stats.pool_hits, pool.hits),
            (&stats.pool_misses, pool.misses),
            (&stats.pool_dropped, pool.dropped_over_cap),
            (&stats.timer_ops, timers.timer_ops()),
            (&stats.timers_moved, timers.moved),
        ] {
            counter.store(value, Ordering::Relaxed);
        }
    }
    // ANCHOR_END: publish_counts

    // ANCHOR: reap
    /// Closes every connection whose idle deadline has passed. One that is
    /// waiting on *us* (a worker has its request, or its unread input waits
    /// for a turn) is not idle from the client's side: it gets a new
    /// deadline instead.
    fn reap_idle_connections(&mut self) {
        let Some(idle) = &mut self.idle else {
            return;
        };
        // After the turn's work, not before it: a deadline is reached only
        // when it has passed by the clock, however long the turn took.
        let now = Instant::now();
        let mut expired = std::mem::take(&mut self.expired);
        idle.expire(now, &mut expired);
        for key in expired.drain(..) {
            // A timer only fires for an open connection: `close` cancels it.
            let Some(token) = self.connections.token_at(key) else {
                continue;
            };
            let Some(connection) = self.connections.get_mut(token) else {
                continue;
            };
            if connection.job_in_flight || connection.on_ready_list {
                if let Some(idle) = &mut self.idle {
                    idle.on_activity(key, now);
                }
                continue;
            }
            self.close(token);
            bump(&self.context.stats.reaped, 1);
        }
        self.expired = expired;
    }
    // ANCHOR_END: reap

    // ANCHOR: on_connection_event
    fn on_connection_event(&mut self, token: Token, event: Event) {
        let Some(connection) = self.connections.get_mut(token) else {
            // A stale token: this event was collected before a result
            // earlier in the batch closed its connection, and the slot may
            // already hold a newer one (with a newer generation).
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
            serve_edge_triggered(token, connection, writable, &mut self.context)
        };
        self.after_turn(token, served);
    }
    // ANCHOR_END: on_connection_event

    // ANCHOR: apply_completed
    /// The eventfd said results are back: echo each, in the order its
    /// connection sent it, and give the connection its next turn (it may
    /// have more input waiting, which it could not hand over while this
    /// job was out).
    fn apply_completed(&mut self) -> io::Result<()> {
        let mut completed = std::mem::take(&mut self.completed);
        self.context.workers.take_completed(&mut completed)?;
        for done in completed.drain(..) {
            let Some(connection) = self.connections.get_mut(done.connection) else {
                // Closed while its job ran (a reset, say); its slot may
                // already hold someone else. Its chunks go back to the pool.
                let mut orphaned = done.data;
                orphaned.release(&mut self.context.output_pool);
                continue;
            };
            connection.job_in_flight = false;
            let stats = self.context.stats;
            let served = connection
                .echo(done.data, &mut self.context.output_pool)
                .and_then(|sent| {
                    bump(&stats.bytes_sent, sent as u64);
                    serve_edge_triggered(done.connection, connection, false, &mut self.context)
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
            if !self.context.workers.has_room() {
                break;
            }
            let Some(token) = self.ready_list.pop_front() else {
                break;
            };
            let Some(connection) = self.connections.get_mut(token) else {
                continue; // closed while it waited
            };
            connection.on_ready_list = false;
            let served = serve_edge_triggered(token, connection, false, &mut self.context);
            self.after_turn(token, served);
        }
    }

    fn after_turn(&mut self, token: Token, served: io::Result<()>) {
        let Some(connection) = self.connections.get_mut(token) else {
            return;
        };
        match served {
            Ok(()) if connection.is_finished() => self.close(token),
            Ok(()) => {
                // Bytes moved this turn: the idle deadline moves too. One
                // clock read (vDSO, tens of ns) per busy turn keeps it exact
                // even at the end of a long turn.
                if std::mem::take(&mut connection.moved_data)
                    && let Some(idle) = &mut self.idle
                {
                    idle.on_activity(token.index() as usize, Instant::now());
                }
                if connection.has_unread_input(self.context.config.max_pending)
                    && !connection.on_ready_list
                {
                    connection.on_ready_list = true;
                    self.ready_list.push_back(token);
                    bump(&self.context.stats.requeued, 1);
                }
            }
            Err(_) => self.close(token),
        }
    }
    // ANCHOR_END: ready_list

    fn close(&mut self, token: Token) {
        // Removing bumps the slot's generation: every token for this
        // connection is stale from now on. Dropping the connection closes
        // its socket, which also removes it from epoll's interest list: no
        // EPOLL_CTL_DEL needed. Its chunks go back to the pool first.
        if let Some(mut connection) = self.connections.remove(token) {
            connection.release(&mut self.context.output_pool);
            bump(&self.context.stats.closed, 1);
            // Only for a live token: a stale one must not disarm the timer
            // of whoever holds the slot now.
            if let Some(idle) = &mut self.idle {
                idle.on_close(token.index() as usize);
            }
            self.give_memory_back_if_mostly_empty();
        }
    }

    // ANCHOR: give_memory_back
    /// After a crowd leaves, hand its memory back: a server holding a
    /// million connections that keeps its peak memory forever cannot share
    /// the host with anything else. The slab drops its vacant tail (live
    /// entries never move: their tokens are their indexes), the timing wheel
    /// its links past the slab's end, and then `malloc_trim` asks glibc to
    /// return the freed heap (and other threads' arenas) to the kernel,
    /// which `free` alone does not do for memory below the top of the heap.
    fn give_memory_back_if_mostly_empty(&mut self) {
        if self.connections.shrink_if_mostly_empty() {
            if let Some(idle) = &mut self.idle {
                idle.shrink_keys(self.connections.slots());
            }
            // The pool's idle chunks are the biggest part: up to its cap
            // of 16 KiB chunks per reactor, left by the last burst.
            self.context
                .output_pool
                .release_idle(IDLE_CHUNKS_AFTER_A_CROWD);
            if self.ready_list.is_empty() {
                self.ready_list.shrink_to_fit();
            }
            self.completed.shrink_to_fit();
            sys::trim_heap();
        }
    }
    // ANCHOR_END: give_memory_back

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
                        Ok(()) => bump(&self.context.stats.shed, 1),
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
        let token = self.connections.insert(Connection::new(socket));
        // Registered once, for everything, edge-triggered: no epoll_ctl for
        // this connection ever again (closing it unregisters it). Its events
        // carry its slab token: slot index and generation.
        if let Err(e) = self.epoll.add(fd, CONNECTION_INTEREST, token.epoll_data()) {
            eprintln!("epoll_ctl(ADD): {e}; closing the new connection");
            // Dropping the removed connection closes its socket.
            self.connections.remove(token);
            return;
        }
        if let Some(idle) = &mut self.idle {
            idle.on_accept(token.index() as usize, Instant::now());
        }
        bump(&self.context.stats.accepted, 1);
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
            self.epoll
                .add(listener, self.listener_interest, LISTENER.epoll_data())?;
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
/// in chapter 03, straight from the read buffer; one whose work is dear
/// becomes a job for the workers, and then the connection reads no more
/// until that job's result is back (so a later, cheap read can never
/// overtake it). Whatever is left unread is recorded in `unread_input`,
/// because epoll will not report it again.
fn serve_edge_triggered(
    token: Token,
    connection: &mut Connection,
    writable: bool,
    context: &mut Context,
) -> io::Result<()> {
    let Context {
        read_buffer,
        output_pool,
        workers,
        config,
        stats,
    } = context;
    if writable && !connection.pending_output.is_empty() {
        let sent = connection.flush(output_pool)?;
        bump(&stats.bytes_sent, sent as u64);
    }
    let mut reads = 0;
    while connection.has_unread_input(config.max_pending) && reads < READS_PER_TURN {
        if config.may_use_pool() && !workers.has_room() {
            // Back-pressure across the hand-off: the job queue is full, so
            // do not read. The bytes stay in the kernel's socket buffer (and
            // TCP flow control slows the client down); `unread_input` stays
            // set, so the connection waits on the ready list for a place.
            bump(&stats.queue_full, 1);
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
                connection.moved_data = true;
                bump(&stats.bytes_received, n as u64);
                let input = &read_buffer[..n];
                if config.goes_to_pool(input) {
                    // The bytes go to the worker in pooled chunks, which
                    // come back with the result and are sent from as they
                    // are.
                    let mut data = PendingOutput::new();
                    data.push(input, output_pool);
                    workers.submit(Job {
                        connection: token,
                        data,
                    });
                    bump(&stats.jobs, 1);
                    // Ends the loop: `wants_input` is false until the
                    // result is back (see `Connection::wants_input`).
                    connection.job_in_flight = true;
                } else {
                    // Cheaper than the trip to a worker: chapter 03's path.
                    spend_work(input, config.work_per_newline);
                    bump(&stats.inline, 1);
                    let sent = connection.echo_from_read_buffer(input, output_pool)?;
                    bump(&stats.bytes_sent, sent as u64);
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

// ANCHOR: sleep_limit
/// How long the wait may sleep when no connection is waiting for a turn:
/// until the first idle deadline, the end of an accept pause or the end of
/// the drain, whichever comes first (`Epoll::wait` rounds up to whole milliseconds, so we never
/// wake before a tick), or for ever when there is neither. `now` is called
/// only when there is a deadline: without `--idle-timeout` the loop does
/// not read the clock, so a turn that serves one message pays for nothing
/// it did not ask for.
fn sleep_limit(
    idle: Option<&IdleTimeouts>,
    accept_paused_until: Option<Instant>,
    draining_until: Option<Instant>,
    now: impl FnOnce() -> Instant,
) -> Option<Duration> {
    if idle.is_none() && accept_paused_until.is_none() && draining_until.is_none() {
        return None;
    }
    let now = now();
    let idle_deadline = idle.and_then(|idle| idle.next_timeout(now));
    let accept_pause = accept_paused_until.map(|until| until.saturating_duration_since(now));
    let drain_left = draining_until.map(|until| until.saturating_duration_since(now));
    earliest(earliest(idle_deadline, accept_pause), drain_left)
}
// ANCHOR_END: sleep_limit

/// The sooner of two optional timeouts (`None`: no timeout).
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A clock that counts how often it is read.
    fn counting_clock(reads: &Cell<u32>, at: Instant) -> impl FnOnce() -> Instant + '_ {
        move || {
            reads.set(reads.get() + 1);
            at
        }
    }

    #[test]
    fn loop_without_deadlines_does_not_read_the_clock() {
        let reads = Cell::new(0);
        let limit = sleep_limit(None, None, None, counting_clock(&reads, Instant::now()));
        assert_eq!(limit, None, "nothing to wake for: block");
        assert_eq!(reads.get(), 0);
    }

    #[test]
    fn accept_pause_limits_the_sleep_with_one_clock_read() {
        let reads = Cell::new(0);
        let now = Instant::now();
        let limit = sleep_limit(
            None,
            Some(now + Duration::from_millis(40)),
            None,
            counting_clock(&reads, now),
        );
        assert_eq!(limit, Some(Duration::from_millis(40)));
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn idle_deadline_limits_the_sleep_with_one_clock_read() {
        let now = Instant::now();
        let mut idle = IdleTimeouts::new(Duration::from_secs(1), now);
        let reads = Cell::new(0);
        let empty = sleep_limit(Some(&idle), None, None, counting_clock(&reads, now));
        assert_eq!(empty, None, "an empty wheel has no deadline");
        idle.on_accept(0, now);
        let limit = sleep_limit(
            Some(&idle),
            Some(now + Duration::from_secs(60)),
            Some(now + Duration::from_secs(5)),
            counting_clock(&reads, now),
        )
        .expect("a scheduled timer is a deadline");
        assert!(
            limit >= Duration::from_millis(900) && limit < Duration::from_secs(5),
            "the idle deadline, the soonest: {limit:?}"
        );
        assert_eq!(reads.get(), 2, "one read per call that has a deadline");
    }

    #[test]
    fn drain_limits_the_sleep_with_one_clock_read() {
        let reads = Cell::new(0);
        let now = Instant::now();
        let limit = sleep_limit(
            None,
            None,
            Some(now + Duration::from_millis(70)),
            counting_clock(&reads, now),
        );
        assert_eq!(limit, Some(Duration::from_millis(70)));
        assert_eq!(reads.get(), 1);
    }
}
