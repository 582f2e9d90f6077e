//! One reactor on io_uring: a thread with its own ring, provided buffer
//! ring, `SO_REUSEPORT` listener, slab, worker pool and timer wheel; it
//! shares nothing with the other reactors.
//!
//! Chapter 08's reactor asked "what is ready?" and then paid a syscall per
//! read and per write. This one says what it wants done (accept on this
//! listener, receive on this socket, send these bytes) and later reaps what
//! was done. One `io_uring_enter` per turn submits everything the last turn
//! queued and waits for the next completions. The accept and every
//! receive are multishot: armed once, they keep posting completions. A
//! receive names no buffer: the kernel picks one from the buffer ring when
//! data arrives, and we give it back as soon as the bytes are copied out.
//!
//! The new rule in the completion model: a buffer, a descriptor or a slot
//! the kernel may still use is not ours to free or reuse. So closing a
//! connection cancels its operations and waits for their last completions
//! before its descriptor is closed and its slot reused.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::connection::{Connection, Output, Recv};
use crate::idle::IdleTimeouts;
use crate::op::{self, Op};
use crate::ring::{BufRing, Completion, Ring};
use crate::slab::{Slab, Token};
use crate::stats::{ReactorStats, bump};
use crate::sys::{self, EventFd, Fd, Listener, Socket};
use crate::workers::{Completed, Job, Offload, PoolKind, Workers, spend_work, work_for};

/// How long to stop accepting when accept fails and we cannot shed the
/// connection (see `on_accept_error`).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Slab slots allocated up front; it grows (by doubling) past this.
const INITIAL_CONNECTIONS: usize = 1024;
/// The buffer group id of the receive buffer ring (one ring per reactor).
const RECV_GROUP: u16 = 0;
/// Spare `Vec`s kept for echo bytes and jobs, so steady state allocates
/// nothing; more than this are freed.
const MAX_SPARE_VECS: usize = 256;
/// Spare `Vec`s and output boxes kept after a crowd has left (see
/// `give_memory_back_if_mostly_empty`); more come back on demand.
const SPARES_AFTER_A_CROWD: usize = 16;
/// The most completions one turn handles (chapter 08's `EVENTS_PER_WAIT`):
/// a ramp of thousands of connects then costs a few turns, not one list
/// grown to the completion queue's size and kept for ever.
const COMPLETIONS_PER_TURN: usize = 1024;
/// Spare `Vec`s bigger than this are freed, not kept: a burst's big buffers
/// must not stay pinned in the spare list.
const MAX_SPARE_CAPACITY: usize = 16 * 1024;

// ANCHOR: tokens
/// The token of the non-connection operations (a slab never issues it).
const RESERVED: Token = Token::reserved(0);
// ANCHOR_END: tokens

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `--work-us`: CPU time to burn per newline before echoing it.
    pub work_per_newline: Duration,
    /// `--max-pending`: stop receiving from a client that owes this many.
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
    /// `--offload`: which reads' work goes to the pool.
    pub offload: Offload,
    /// `--offload-above-us`: with `--offload auto`, work that costs more
    /// than this goes to the pool; anything cheaper runs on the loop.
    pub offload_above: Duration,
    /// `--ring-entries`: submission queue slots.
    pub ring_entries: u32,
    /// `--recv-buffers` and `--recv-buffer-size`: the provided buffer ring.
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    /// `--sqpoll`: a kernel thread polls the submission queue; it sleeps
    /// after this long without work.
    pub sqpoll: Option<Duration>,
}

// ANCHOR: server
pub struct Server {
    ring: Ring,
    /// Receive buffers, lent to the kernel; a connection holds one only
    /// between the completion that names it and the end of that handler.
    buffers: BufRing,
    listener: Arc<Listener>,
    /// Main notifies it on SIGINT/SIGTERM; a poll on it is in the ring.
    stop: Arc<EventFd>,
    /// Every open connection. Its token (slot and generation) is in the
    /// user data of each of its operations.
    connections: Slab<Connection>,
    /// This turn's completions (kept to reuse its capacity).
    completions: Vec<Completion>,
    /// Connections whose receive must be armed again at the end of the turn
    /// (after the buffers freed this turn are published).
    to_rearm: Vec<Token>,
    /// Connections with echo bytes to send at the end of the turn: every
    /// receive of the turn joins one send per connection.
    to_flush: Vec<Token>,
    /// Empty `Vec`s with capacity, for echo bytes and jobs.
    spare_vecs: Vec<Vec<u8>>,
    /// Empty output boxes, for connections that start owing bytes. (Boxes,
    /// not `Output`s: reusing the heap blocks themselves is the point.)
    #[allow(clippy::vec_box)]
    spare_outputs: Vec<Box<Output>>,
    accept_armed: bool,
    /// Held in reserve for EMFILE (see `on_accept_error`).
    spare_descriptor: Option<Fd>,
    accept_paused_until: Option<Instant>,
    out_of_descriptors_reported: bool,
    workers: Workers,
    completed: Vec<Completed>,
    idle: Option<IdleTimeouts>,
    expired: Vec<usize>,
    /// The clock, read once per turn after the wait.
    now: Instant,
    config: Config,
    /// This reactor's slot in the shared memory the supervisor reads; this
    /// thread is its only writer.
    stats: &'static ReactorStats,
}
// ANCHOR_END: server

impl Server {
    /// Sets up a reactor; call it on the reactor's own thread: the ring is
    /// created `SINGLE_ISSUER`, for this thread only, and the worker
    /// threads inherit its CPU affinity.
    pub fn new(
        listener: Arc<Listener>,
        stop: Arc<EventFd>,
        config: Config,
        stats: &'static ReactorStats,
    ) -> io::Result<Server> {
        let ring = Ring::new(config.ring_entries, config.sqpoll)?;
        let buffers =
            ring.register_buf_ring(RECV_GROUP, config.recv_buffers, config.recv_buffer_size)?;
        let workers = Workers::start(
            config.pool,
            config.workers,
            config.queue_depth,
            config.work_per_newline,
        )?;
        Ok(Server {
            ring,
            buffers,
            listener,
            stop,
            connections: Slab::with_capacity(INITIAL_CONNECTIONS),
            completions: Vec::with_capacity(COMPLETIONS_PER_TURN),
            to_rearm: Vec::new(),
            to_flush: Vec::new(),
            spare_vecs: Vec::new(),
            spare_outputs: Vec::new(),
            accept_armed: false,
            spare_descriptor: Some(sys::open_spare_descriptor()?),
            accept_paused_until: None,
            out_of_descriptors_reported: false,
            workers,
            completed: Vec::new(),
            idle: config
                .idle_timeout
                .map(|timeout| IdleTimeouts::new(timeout, Instant::now())),
            expired: Vec::new(),
            now: Instant::now(),
            config,
            stats,
        })
    }

    // ANCHOR: event_loop
    /// Serves clients until main says stop. Returning drops the server,
    /// which closes its connections and its ring.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accept()?;
        self.ring
            .poll_readable(self.stop.raw_fd(), op::user_data(Op::Stop, RESERVED))?;
        self.ring
            .poll_readable(self.workers.waker_fd(), op::user_data(Op::Waker, RESERVED))?;
        loop {
            // The wheel is driven by the wait's timeout: one deadline for
            // the whole wheel, no ring timeout per connection.
            let timeout = sleep_limit(self.idle.as_ref(), self.accept_paused_until, Instant::now);
            // The one system call of the turn.
            self.ring.submit_and_wait(timeout)?;
            // From here to the next wait is one turn: how long this wake-up
            // kept the reactor (and every client on it) busy.
            self.now = Instant::now();
            bump(&self.stats.wakeups, 1);
            let mut completions = std::mem::take(&mut self.completions);
            self.ring
                .completions(&mut completions, COMPLETIONS_PER_TURN);
            let mut stop = false;
            for completion in completions.drain(..) {
                stop |= self.on_completion(completion)?;
            }
            self.completions = completions;
            if stop {
                self.stop.reset()?;
                self.count_dropped_at_stop();
                self.publish_counts();
                return Ok(());
            }
            self.end_turn()?;
            self.publish_counts();
            self.stats.record_iteration(self.now.elapsed());
        }
    }
    // ANCHOR_END: event_loop

    /// Stopping: the connections still open close when the server is
    /// dropped (no drain here, unlike chapter 08). Count them as closed, and
    /// those still owed echo as dropped with the bytes they were owed, for
    /// the summary.
    fn count_dropped_at_stop(&mut self) {
        let open = self.connections.len() as u64;
        let (mut dropped, mut owed) = (0, 0);
        for index in 0..self.connections.slots() {
            let token = self.connections.token_at(index);
            if let Some(connection) = token.and_then(|t| self.connections.get_mut(t))
                && connection.owed() > 0
            {
                dropped += 1;
                owed += connection.owed() as u64;
            }
        }
        bump(&self.stats.closed, open);
        bump(&self.stats.shutdown_dropped, dropped);
        bump(&self.stats.shutdown_dropped_bytes, owed);
    }

    // ANCHOR: publish_counts
    /// Copies the counts kept elsewhere (the ring's, the timing wheel's,
    /// this thread's `accept4` calls) into the shared slot: a few relaxed
    /// stores per turn, read by the supervisor whenever it likes. Everything
    /// else the reactor counts straight into the slot (`bump`).
    fn publish_counts(&mut self) {
        let ring = self.ring.stats();
        let timers = self.idle.as_ref().map(IdleTimeouts::stats);
        let stats = self.stats;
        for (counter, value) in [
            (&stats.io_uring_enter, ring.enters),
            (&stats.sqes, ring.submitted),
            (&stats.completions, ring.completions),
            (&stats.cq_overflow, ring.cq_overflow),
            (&stats.sq_full, ring.sq_full),
            (&stats.accept_calls, sys::accept_calls()),
            (&stats.timer_ops, timers.map_or(0, |t| t.timer_ops())),
            (&stats.timers_moved, timers.map_or(0, |t| t.moved)),
        ] {
            counter.store(value, Ordering::Relaxed);
        }
    }
    // ANCHOR_END: publish_counts

    // ANCHOR: on_completion
    /// Dispatches one completion by the operation in its user data. `true`
    /// for the stop signal.
    fn on_completion(&mut self, completion: Completion) -> io::Result<bool> {
        let Some((op, token)) = op::decode(completion.user_data) else {
            bump(&self.stats.stale_completions, 1);
            return Ok(false);
        };
        match op {
            Op::Accept => self.on_accept(completion)?,
            Op::Recv => self.on_recv(token, completion)?,
            Op::Send => self.on_send(token, completion)?,
            // A cancel request's own completion: `-ENOENT` when what it
            // aimed at had already finished. Either way the target reports
            // for itself.
            Op::Cancel => {}
            Op::Stop => return Ok(true),
            Op::Waker => {
                self.apply_completed()?;
                self.ring
                    .poll_readable(self.workers.waker_fd(), op::user_data(Op::Waker, RESERVED))?;
            }
        }
        Ok(false)
    }
    // ANCHOR_END: on_completion

    // ANCHOR: on_recv
    // ANCHOR: on_recv_1
    // ANCHOR_END: on_recv_1
    // ANCHOR: on_recv_signature
    fn on_recv(&mut self, token: Token, completion: Completion) -> io::Result<()> {
        // ANCHOR_END: on_recv_signature
        let buffer_id = completion.buffer_id();
        let Some(connection) = self.connections.get_mut(token) else {
            // Its connection is gone. The buffer the kernel filled is still
            // one of ours: give it back, or the ring shrinks by one buffer
            // for every such completion until receives fail with ENOBUFS.
            bump(&self.stats.stale_completions, 1);
            if let Some(id) = buffer_id {
                self.buffers.recycle(id);
            }
            return Ok(());
        };
        if !completion.more() {
            // The multishot receive has ended (EOF, error, cancel, ENOBUFS,
            // or the kernel decided to stop): nothing is armed any more.
            connection.recv = Recv::Off;
        }
        match (completion.result, buffer_id) {
            (n @ 1.., Some(id)) => {
                if connection.output.is_none() {
                    connection.output = self.spare_outputs.pop();
                }
                let data = self.buffers.buffer(id, n.unsigned_abs() as usize);
                bump(&self.stats.bytes_received, data.len() as u64);
                take_input(
                    token,
                    connection,
                    data,
                    &mut self.workers,
                    &mut self.spare_vecs,
                    self.stats,
                    self.config,
                );
                // Copied out (or worked on) already: back to the kernel.
                self.buffers.recycle(id);
                if let Some(idle) = &mut self.idle {
                    idle.on_activity(token.index() as usize, self.now);
                }
                if connection.recv == Recv::Armed
                    && !connection.wants_input(self.config.max_pending)
                {
                    // Back-pressure: this client owes too much unread echo.
                    // Stop receiving until it reads; bytes it sends wait in
                    // its socket buffer, then TCP stops it.
                    self.ring.cancel(
                        op::user_data(Op::Recv, token),
                        op::user_data(Op::Cancel, token),
                    )?;
                    connection.recv = Recv::Cancelling;
                    bump(&self.stats.backpressure_stops, 1);
                }
                queue_flush(token, connection, &mut self.to_flush);
            }
            (0, _) => connection.peer_closed = true,
            (_, id) => {
                if let Some(id) = id {
                    self.buffers.recycle(id); // (never seen: errors carry no buffer)
                }
                match -completion.result {
                    // The buffer ring was empty. Re-armed at the end of the
                    // turn, once this turn's buffers are back in the ring.
                    libc::ENOBUFS => bump(&self.stats.enobufs, 1),
                    // We cancelled it (back-pressure or close).
                    libc::ECANCELED => {}
                    // A reset, or any other error: the client is gone.
                    _ => return self.close(token),
                }
            }
        }
        self.after_completion(token)
    }
    // ANCHOR: on_recv_2
    // ANCHOR_END: on_recv_2
    // ANCHOR_END: on_recv

    // ANCHOR: on_send
    fn on_send(&mut self, token: Token, completion: Completion) -> io::Result<()> {
        let slot = token.index() as usize;
        // The kernel is done with the buffer: it is ours again.
        let finished = self.ring.finish_send(completion.user_data);
        let Some(connection) = self.connections.get_mut(token) else {
            bump(&self.stats.stale_completions, 1);
            return Ok(());
        };
        connection.send_in_flight = false;
        let Some((mut buffer, offset)) = finished else {
            return Ok(()); // cannot happen: every send's buffer is in the ring
        };
        if completion.result < 0 {
            // EPIPE, ECONNRESET (the client is gone) or ECANCELED (we are
            // closing): nothing more can be delivered.
            return self.close(token);
        }
        let sent = completion.result.unsigned_abs() as usize;
        bump(&self.stats.bytes_sent, sent as u64);
        let output = connection.output();
        output.sending = output.sending.saturating_sub(sent);
        if sent > 0
            && let Some(idle) = &mut self.idle
        {
            idle.on_activity(slot, self.now);
        }
        if offset + sent < buffer.len() && !connection.closing {
            // A short send: the socket's send buffer filled. Send the rest
            // of the same buffer; the bytes queued behind it wait.
            bump(&self.stats.short_sends, 1);
            let fd = connection.socket.raw_fd();
            self.ring
                .send(fd, buffer, offset + sent, op::user_data(Op::Send, token))?;
            connection.send_in_flight = true;
        } else {
            buffer.clear();
            give_back_vec(&mut self.spare_vecs, buffer);
            queue_flush(token, connection, &mut self.to_flush);
        }
        self.after_completion(token)
    }
    // ANCHOR_END: on_send

    /// After any completion for a live connection: close it if it is done,
    /// release it if it is closing and the kernel has let go of it, or arm
    /// its receive again if it wants input and none is armed.
    fn after_completion(&mut self, token: Token) -> io::Result<()> {
        let Some(connection) = self.connections.get_mut(token) else {
            return Ok(());
        };
        if connection.closing {
            self.release_if_done(token);
        } else if connection.is_finished() {
            return self.close(token);
        } else if connection.recv == Recv::Off && connection.wants_input(self.config.max_pending) {
            self.to_rearm.push(token);
        }
        if let Some(connection) = self.connections.get_mut(token)
            && !connection.send_in_flight
            && !connection.job_in_flight
            && let Some(output) = connection.take_output_if_idle()
            && self.spare_outputs.len() < MAX_SPARE_VECS
        {
            self.spare_outputs.push(output);
        }
        Ok(())
    }

    // ANCHOR: apply_completed
    /// Results are back from the workers: echo each (its bytes join the
    /// queue, in order), then start on what arrived while it was out.
    fn apply_completed(&mut self) -> io::Result<()> {
        let mut completed = std::mem::take(&mut self.completed);
        self.workers.take_completed(&mut completed)?;
        for done in completed.drain(..) {
            let Some(connection) = self.connections.get_mut(done.connection) else {
                // Closed while its job ran; the slot may hold someone else.
                give_back_vec(&mut self.spare_vecs, done.data);
                continue;
            };
            connection.job_in_flight = false;
            let output = connection.output();
            output.working -= done.data.len();
            append_vec(&mut output.queued, done.data, &mut self.spare_vecs);
            let held = std::mem::take(&mut output.held);
            if !held.is_empty() {
                take_held_input(
                    done.connection,
                    connection,
                    held,
                    &mut self.workers,
                    &mut self.spare_vecs,
                    self.stats,
                    self.config,
                );
            }
            queue_flush(done.connection, connection, &mut self.to_flush);
            self.after_completion(done.connection)?;
        }
        self.completed = completed;
        Ok(())
    }
    // ANCHOR_END: apply_completed

    // ANCHOR: end_turn
    /// After the turn's completions: give the kernel back its buffers, arm
    /// what must be armed, queue the sends, reap idle connections. All of
    /// it goes to the kernel in the next turn's one `io_uring_enter`.
    fn end_turn(&mut self) -> io::Result<()> {
        self.buffers.publish();
        let mut to_rearm = std::mem::take(&mut self.to_rearm);
        for token in to_rearm.drain(..) {
            let Some(connection) = self.connections.get_mut(token) else {
                continue;
            };
            if connection.recv == Recv::Off && connection.wants_input(self.config.max_pending) {
                self.ring.recv_multishot(
                    connection.socket.raw_fd(),
                    RECV_GROUP,
                    op::user_data(Op::Recv, token),
                )?;
                connection.recv = Recv::Armed;
                bump(&self.stats.recv_armed, 1);
            }
        }
        self.to_rearm = to_rearm;
        let mut to_flush = std::mem::take(&mut self.to_flush);
        for token in to_flush.drain(..) {
            self.flush(token)?;
        }
        self.to_flush = to_flush;
        self.reap_idle_connections()?;
        if self
            .accept_paused_until
            .is_some_and(|until| self.now >= until)
        {
            self.accept_paused_until = None;
            if self.spare_descriptor.is_none() {
                self.spare_descriptor = sys::open_spare_descriptor().ok();
            }
        }
        if !self.accept_armed && self.accept_paused_until.is_none() {
            self.arm_accept()?;
        }
        Ok(())
    }

    /// Sends everything queued for `token` in one send, unless a send is
    /// already in flight (its completion sends the rest: one at a time
    /// keeps the bytes in order).
    fn flush(&mut self, token: Token) -> io::Result<()> {
        let Some(connection) = self.connections.get_mut(token) else {
            return Ok(());
        };
        connection.flush_queued = false;
        if connection.closing || connection.send_in_flight {
            return Ok(());
        }
        let fd = connection.socket.raw_fd();
        let Some(output) = connection.output.as_mut() else {
            return Ok(());
        };
        if output.queued.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut output.queued);
        output.sending = buffer.len();
        // The buffer moves into the ring: until its completion, nothing
        // here can touch it.
        self.ring
            .send(fd, buffer, 0, op::user_data(Op::Send, token))?;
        connection.send_in_flight = true;
        Ok(())
    }
    // ANCHOR_END: end_turn

    // ANCHOR: close
    /// Starts closing a connection: cancel what the kernel holds for it,
    /// then release it once the last of those operations has completed.
    /// Closing the descriptor now would not be enough: an armed receive
    /// holds its own reference to the socket, so the client would see no
    /// FIN, and the slot (and descriptor number) must not be reused while
    /// completions for the old connection can still arrive.
    fn close(&mut self, token: Token) -> io::Result<()> {
        let Some(connection) = self.connections.get_mut(token) else {
            return Ok(());
        };
        if !connection.closing {
            connection.closing = true;
            if let Some(idle) = &mut self.idle {
                idle.on_close(token.index() as usize);
            }
            if connection.recv == Recv::Armed {
                self.ring.cancel(
                    op::user_data(Op::Recv, token),
                    op::user_data(Op::Cancel, token),
                )?;
                connection.recv = Recv::Cancelling;
            }
            if connection.send_in_flight {
                self.ring.cancel(
                    op::user_data(Op::Send, token),
                    op::user_data(Op::Cancel, token),
                )?;
            }
        }
        self.release_if_done(token);
        Ok(())
    }

    /// Frees a closing connection once the kernel holds nothing of it:
    /// removing it bumps the slot's generation and dropping it closes the
    /// socket. A worker's job may still be out: its result will find the
    /// generation changed.
    fn release_if_done(&mut self, token: Token) {
        let done = self
            .connections
            .get_mut(token)
            .is_some_and(|c| c.closing && c.kernel_is_done());
        if !done {
            return;
        }
        bump(&self.stats.closed, 1);
        if let Some(connection) = self.connections.remove(token)
            && let Some(output) = connection.output
        {
            let Output { held, queued, .. } = *output;
            give_back_vec(&mut self.spare_vecs, held);
            give_back_vec(&mut self.spare_vecs, queued);
        }
        self.give_memory_back_if_mostly_empty();
    }
    // ANCHOR_END: close

    // ANCHOR: give_memory_back
    /// After a crowd leaves, hand its memory back, as chapter 08 does: the
    /// slab drops its vacant tail (live entries never move: their tokens
    /// are their indexes), the timing wheel its links past the slab's end,
    /// the spare `Vec`s and output boxes all but a few, the per-turn lists
    /// and the map of sends in flight their peak capacity, and then
    /// `malloc_trim` asks glibc to return the freed heap to the kernel.
    fn give_memory_back_if_mostly_empty(&mut self) {
        if self.connections.shrink_if_mostly_empty() {
            if let Some(idle) = &mut self.idle {
                idle.shrink_keys(self.connections.slots());
            }
            self.spare_vecs.truncate(SPARES_AFTER_A_CROWD);
            self.spare_vecs.shrink_to_fit();
            self.spare_outputs.truncate(SPARES_AFTER_A_CROWD);
            self.spare_outputs.shrink_to_fit();
            self.to_rearm.shrink_to_fit();
            self.to_flush.shrink_to_fit();
            self.completed.shrink_to_fit();
            self.ring.shrink_sends_in_flight();
            sys::trim_heap();
        }
    }
    // ANCHOR_END: give_memory_back

    // ANCHOR: reap
    /// Closes every connection whose idle deadline has passed, except one
    /// waiting on *us* (a worker has its bytes): that one gets a new
    /// deadline.
    fn reap_idle_connections(&mut self) -> io::Result<()> {
        let Some(idle) = &mut self.idle else {
            return Ok(());
        };
        let now = Instant::now();
        let mut expired = std::mem::take(&mut self.expired);
        idle.expire(now, &mut expired);
        for key in expired.drain(..) {
            let Some(token) = self.connections.token_at(key) else {
                continue;
            };
            let Some(connection) = self.connections.get_mut(token) else {
                continue;
            };
            if connection.closing {
                continue;
            }
            if connection.job_in_flight {
                if let Some(idle) = &mut self.idle {
                    idle.on_activity(key, now);
                }
                continue;
            }
            self.close(token)?;
            bump(&self.stats.reaped, 1);
        }
        self.expired = expired;
        Ok(())
    }
    // ANCHOR_END: reap

    // ANCHOR: accept
    fn arm_accept(&mut self) -> io::Result<()> {
        self.ring
            .accept_multishot(self.listener.raw_fd(), op::user_data(Op::Accept, RESERVED))?;
        self.accept_armed = true;
        Ok(())
    }

    fn on_accept(&mut self, completion: Completion) -> io::Result<()> {
        if !completion.more() {
            // Ended (an error, or the kernel stopped it): re-armed at the
            // end of the turn unless accepting is paused.
            self.accept_armed = false;
        }
        if completion.result >= 0 {
            return self.register(Socket::from_accepted(completion.result));
        }
        match -completion.result {
            libc::EMFILE | libc::ENFILE => self.on_out_of_descriptors(),
            // The client gave up while waiting in the queue, or the network
            // under it failed: that connection is gone, the next may be fine.
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
            | libc::EINTR => {}
            errno => {
                let error = io::Error::from_raw_os_error(errno);
                eprintln!("accept: {error}; not accepting for {ACCEPT_PAUSE:?}");
                self.pause_accepting();
            }
        }
        Ok(())
    }

    /// Out of descriptors. The connection stays in the listen queue and a
    /// re-armed accept would fail again at once, a busy loop. Free the
    /// spare descriptor, take the connection with it and close it at once
    /// (the client sees its connection closed, not a hang), then re-open
    /// the spare. With no spare, or an empty queue (Linux reports EMFILE
    /// before it looks at the queue), stop accepting for a moment.
    fn on_out_of_descriptors(&mut self) {
        if !self.out_of_descriptors_reported {
            self.out_of_descriptors_reported = true;
            let limit =
                sys::descriptor_limit().map_or_else(|| "unknown".to_string(), |l| l.to_string());
            eprintln!(
                "accept: out of descriptors (RLIMIT_NOFILE={limit}); closing new connections \
                 until descriptors free up; raise the limit with `ulimit -n`"
            );
        }
        let Some(spare) = self.spare_descriptor.take() else {
            self.pause_accepting();
            return;
        };
        drop(spare);
        let shed = self.listener.accept().map(drop);
        self.spare_descriptor = sys::open_spare_descriptor().ok();
        match shed {
            Ok(()) => bump(&self.stats.shed, 1),
            Err(_) => self.pause_accepting(),
        }
    }

    fn pause_accepting(&mut self) {
        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
    }

    fn register(&mut self, socket: Socket) -> io::Result<()> {
        // Best effort: a socket without TCP_NODELAY still echoes correctly.
        let _ = socket.set_nodelay();
        let fd = socket.raw_fd();
        let token = self.connections.insert(Connection::new(socket));
        // Armed once; it posts a completion whenever data arrives, with a
        // buffer the kernel picks then. Until then: no buffer, no syscall.
        self.ring
            .recv_multishot(fd, RECV_GROUP, op::user_data(Op::Recv, token))?;
        if let Some(connection) = self.connections.get_mut(token) {
            connection.recv = Recv::Armed;
        }
        bump(&self.stats.recv_armed, 1);
        if let Some(idle) = &mut self.idle {
            idle.on_accept(token.index() as usize, self.now);
        }
        bump(&self.stats.accepted, 1);
        self.out_of_descriptors_reported = false;
        Ok(())
    }
    // ANCHOR_END: accept
}

// ANCHOR: take_input
/// Bytes received for `token`: work on them (inline or on the pool) and
/// queue their echo. While a job is out for this connection they wait
/// behind it, so the echo stays in order.
fn take_input(
    token: Token,
    connection: &mut Connection,
    data: &[u8],
    workers: &mut Workers,
    spare_vecs: &mut Vec<Vec<u8>>,
    stats: &ReactorStats,
    config: Config,
) {
    if connection.job_in_flight {
        connection.output().held.extend_from_slice(data);
        return;
    }
    if work_here_or_pool(data, workers, stats, config) {
        let mut job = spare_vecs.pop().unwrap_or_default();
        job.extend_from_slice(data);
        connection.output().working += job.len();
        connection.job_in_flight = true;
        workers.submit(Job {
            connection: token,
            data: job,
        });
        return;
    }
    let output = connection.output();
    if output.queued.capacity() == 0 {
        output.queued = spare_vecs.pop().unwrap_or_default();
    }
    output.queued.extend_from_slice(data);
}
// ANCHOR_END: take_input

/// Where the `--work-us` work for `data` runs (`--offload`): `true` if it
/// is to go to the pool now (the caller submits it: one job); otherwise it has run here already (nothing, if
/// it asks for none). With the pool's queue full, dear work runs here too:
/// the reactor slows down, which is the back-pressure the queue would have
/// applied.
fn work_here_or_pool(data: &[u8], workers: &Workers, stats: &ReactorStats, config: Config) -> bool {
    let work = work_for(data, config.work_per_newline);
    let to_pool = match config.offload {
        Offload::Always => true,
        Offload::Never => false,
        Offload::Auto => work > config.offload_above,
    };
    if to_pool && workers.has_room() {
        bump(&stats.jobs, 1);
        return true;
    }
    if to_pool {
        bump(&stats.queue_full, 1);
    }
    if !work.is_zero() {
        spend_work(data, config.work_per_newline);
        bump(&stats.inline, 1);
    }
    false
}

/// Bytes that waited behind a job, now that it is back: like
/// [`take_input`], but they are already in a `Vec` of their own, so they
/// move into the job or the send queue instead of being copied again.
fn take_held_input(
    token: Token,
    connection: &mut Connection,
    held: Vec<u8>,
    workers: &mut Workers,
    spare_vecs: &mut Vec<Vec<u8>>,
    stats: &ReactorStats,
    config: Config,
) {
    if work_here_or_pool(&held, workers, stats, config) {
        connection.output().working += held.len();
        connection.job_in_flight = true;
        workers.submit(Job {
            connection: token,
            data: held,
        });
        return;
    }
    append_vec(&mut connection.output().queued, held, spare_vecs);
}

fn queue_flush(token: Token, connection: &mut Connection, to_flush: &mut Vec<Token>) {
    if !connection.flush_queued
        && connection
            .output
            .as_ref()
            .is_some_and(|output| !output.queued.is_empty())
    {
        connection.flush_queued = true;
        to_flush.push(token);
    }
}

/// Appends `data` to `queue`, moving it instead of copying when the queue
/// is empty.
fn append_vec(queue: &mut Vec<u8>, mut data: Vec<u8>, spare_vecs: &mut Vec<Vec<u8>>) {
    if queue.is_empty() {
        std::mem::swap(queue, &mut data);
    } else {
        queue.extend_from_slice(&data);
    }
    data.clear();
    give_back_vec(spare_vecs, data);
}

fn give_back_vec(spare_vecs: &mut Vec<Vec<u8>>, mut vec: Vec<u8>) {
    if vec.capacity() > 0
        && vec.capacity() <= MAX_SPARE_CAPACITY
        && spare_vecs.len() < MAX_SPARE_VECS
    {
        vec.clear();
        spare_vecs.push(vec);
    }
}

/// How long the wait may sleep: until the first idle deadline or the end
/// of an accept pause, whichever comes first, or for ever when there is
/// neither. `now` is called only when there is a deadline, so without
/// `--idle-timeout` a turn reads no clock (as in chapter 08).
fn sleep_limit(
    idle: Option<&IdleTimeouts>,
    accept_paused_until: Option<Instant>,
    now: impl FnOnce() -> Instant,
) -> Option<Duration> {
    if idle.is_none() && accept_paused_until.is_none() {
        return None;
    }
    let now = now();
    let idle_deadline = idle.and_then(|idle| idle.next_timeout(now));
    let accept_pause = accept_paused_until.map(|until| until.saturating_duration_since(now));
    earliest(idle_deadline, accept_pause)
}

/// The sooner of two optional timeouts (`None`: no timeout).
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::fd::{IntoRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

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
        let limit = sleep_limit(None, None, counting_clock(&reads, Instant::now()));
        assert_eq!(limit, None, "nothing to wake for: block");
        assert_eq!(reads.get(), 0);
    }

    #[test]
    fn a_deadline_limits_the_sleep_with_one_clock_read() {
        let now = Instant::now();
        let reads = Cell::new(0);
        let paused = sleep_limit(
            None,
            Some(now + Duration::from_millis(40)),
            counting_clock(&reads, now),
        );
        assert_eq!(paused, Some(Duration::from_millis(40)));
        let mut idle = IdleTimeouts::new(Duration::from_secs(1), now);
        idle.on_accept(0, now);
        let limit = sleep_limit(
            Some(&idle),
            Some(now + Duration::from_secs(60)),
            counting_clock(&reads, now),
        )
        .expect("a scheduled timer is a deadline");
        assert!(
            limit >= Duration::from_millis(900) && limit < Duration::from_secs(60),
            "the idle deadline, the soonest: {limit:?}"
        );
        assert_eq!(reads.get(), 2, "one read per call that has a deadline");
    }

    fn test_server() -> Server {
        let addr = "127.0.0.1:0".parse().expect("an address");
        let listener = Arc::new(Listener::bind(addr, 16, false).expect("bind"));
        let stop = Arc::new(EventFd::new().expect("eventfd"));
        let config = Config {
            work_per_newline: Duration::ZERO,
            offload: Offload::Auto,
            offload_above: Duration::from_micros(10),
            max_pending: 256 * 1024,
            workers: 1,
            pool: PoolKind::Hand,
            queue_depth: 16,
            idle_timeout: None,
            ring_entries: 64,
            recv_buffers: 8,
            recv_buffer_size: 64,
            sqpoll: None,
        };
        // A reactor's stats live as long as its process; a test's, too.
        let stats = Box::leak(Box::default());
        Server::new(listener, stop, config, stats).expect("io_uring is available")
    }

    fn a_connection() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let fd = OwnedFd::from(ours).into_raw_fd();
        (Connection::new(Socket::from_accepted(fd)), theirs)
    }

    // ANCHOR: stale_completion_test
    #[test]
    fn a_receive_for_a_closed_connection_is_ignored_and_its_buffer_recycled() {
        let mut server = test_server();
        let (first, _peer) = a_connection();
        let closed = server.connections.insert(first);
        server.connections.remove(closed);
        // The next client gets the same slot, with a newer generation.
        let (second, _peer2) = a_connection();
        let newcomer = server.connections.insert(second);
        assert_eq!(newcomer.index(), closed.index());

        // Data the kernel received for the closed connection, in buffer 3.
        let offered = server.buffers.offered();
        let late = Completion::for_test(op::user_data(Op::Recv, closed), 5, Some(3), true);
        server.on_recv(closed, late).expect("no ring error");

        assert_eq!(server.stats.stale_completions.load(Ordering::Relaxed), 1);
        assert_eq!(
            server.buffers.offered(),
            offered.wrapping_add(1),
            "the buffer goes back to the ring even though nobody wants its bytes"
        );
        let newcomer = server.connections.get_mut(newcomer).expect("still open");
        assert_eq!(
            newcomer.owed(),
            0,
            "the stale bytes must not reach the new client"
        );
    }
    // ANCHOR_END: stale_completion_test

    #[test]
    fn a_closing_connection_is_released_only_when_the_kernel_lets_go() {
        let mut server = test_server();
        let (connection, _peer) = a_connection();
        let token = server.connections.insert(connection);
        if let Some(connection) = server.connections.get_mut(token) {
            connection.recv = Recv::Armed;
        }
        server.close(token).expect("cancel queued");
        let connection = server.connections.get_mut(token).expect("kept while armed");
        assert!(connection.closing);
        assert_eq!(connection.recv, Recv::Cancelling);

        // The cancelled receive's last completion: now it can go.
        let cancelled = Completion::for_test(
            op::user_data(Op::Recv, token),
            -libc::ECANCELED,
            None,
            false,
        );
        server.on_recv(token, cancelled).expect("no ring error");
        assert!(server.connections.get_mut(token).is_none(), "released");
        assert_eq!(server.stats.stale_completions.load(Ordering::Relaxed), 0);
    }
}
