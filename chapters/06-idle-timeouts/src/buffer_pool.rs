//! Output buffers lent to a connection only while it has echo bytes not yet
//! accepted by the kernel, and [`PendingOutput`], which holds them.
//!
//! Chapters 02 to 04 give each connection a `Vec<u8>` of pending output that
//! keeps its capacity (up to 64 KiB) after it has been sent, so a client
//! that was slow once pins that memory for as long as it stays connected,
//! even when it then sits idle for hours; chapter 04 also allocates a fresh
//! `Vec` for every job. Here an idle connection holds nothing: its
//! [`PendingOutput`] is a `None` (8 bytes), the chunks live in a
//! [`BufferPool`] owned by the event loop, and a connection borrows them
//! only from the read whose bytes it owes (they travel to a worker and back
//! in the job) until the write that sends the last of them.
//!
//! Why fixed-size chunks of [`BUFFER_SIZE`] = 16 KiB:
//! - Fixed size is what makes a chunk reusable by anyone: any returned
//!   chunk fits any request, so the pool is a plain stack (LIFO: the chunk
//!   given back last is the one still in cache).
//! - 16 KiB bounds the waste: a slow client owing 100 bytes pins one
//!   chunk, 16 KiB, not 64 KiB. One 64 KiB read fills at most 4 chunks,
//!   and a small read is copied into the room left in the last chunk
//!   rather than pinning a chunk of its own, so chunks stay full. The
//!   back-pressure check counts chunks too (see [`PendingOutput`]): at the
//!   default limit (256 KiB) a connection holds at most 35 chunks.
//! - Smaller (4 KiB) means 4 times the chunks to track and more iovecs per
//!   `writev` for the same bytes; bigger (64 KiB) wastes more per slow
//!   client and buys nothing, because the kernel copies into its own send
//!   buffer in any case. All three sizes sit below glibc's mmap threshold
//!   (128 KiB), so a miss is a heap allocation, not an `mmap`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use crate::sys::{MAX_IOVECS, Socket};

/// Size of every pooled output chunk (see the module docs for the choice).
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Default cap on idle chunks the pool keeps: 256 × 16 KiB = 4 MiB at most,
/// enough to absorb the bursts of a few hundred slow clients without
/// allocating, small next to the kernel's own socket buffers.
pub const MAX_IDLE_BUFFERS: usize = 256;

// ANCHOR: buffer
/// One fixed-size chunk of output: `bytes[start..end]` is still to be sent.
/// It comes from [`BufferPool::take`] and goes back with
/// [`BufferPool::give_back`]; dropping it instead is safe (the memory is
/// freed) but leaves the pool's `in_use` count one too high.
#[derive(Debug)]
pub struct Buffer {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// Bytes waiting to be sent.
    pub fn unsent(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes that can still be appended after the unsent ones.
    pub fn room(&self) -> usize {
        self.bytes.len() - self.end
    }

    /// Copies as much of `data` as fits; returns how much that was.
    pub fn append(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        self.bytes[self.end..self.end + n].copy_from_slice(&data[..n]);
        self.end += n;
        n
    }

    /// Records that the first `n` unsent bytes were written.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
    }
}
// ANCHOR_END: buffer

// ANCHOR: pool_stats
/// What the pool did, for the summary line
/// (`pool_hits= pool_misses= pool_high_water=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// `take` served from an idle chunk: no allocation.
    pub hits: u64,
    /// `take` found the pool empty and allocated a fresh chunk.
    pub misses: u64,
    /// Chunks given back, whether kept or freed.
    pub returned: u64,
    /// Of those, chunks freed because the pool already held its cap.
    pub dropped_over_cap: u64,
    /// Chunks lent out right now: `hits + misses - returned`.
    pub in_use: u64,
    /// The most chunks ever lent out at once: the memory a burst really
    /// needed, `high_water × BUFFER_SIZE` bytes.
    pub high_water: u64,
}
// ANCHOR_END: pool_stats

// ANCHOR: pool
// ANCHOR: pool_1
/// A stack of idle output chunks, owned by one event loop (no locks: only
/// the loop's thread touches it).
///
/// Above the cap, a chunk given back is freed rather than kept, so a burst
/// of slow clients does not pin `high_water × BUFFER_SIZE` bytes for the
/// rest of the process's life: once the burst drains, the pool holds at most
/// `max_idle` chunks. (Freed chunks go back to malloc, which may or may not
/// hand the pages back to the kernel; glibc returns memory from the top of
/// the heap only.)
#[derive(Debug)]
pub struct BufferPool {
    buffer_size: usize,
    max_idle: usize,
    idle: Vec<Box<[u8]>>,
    /// Emptied queue spines (see [`PendingOutput`]), recycled the same way
    /// and under the same cap, so that having output pending allocates
    /// nothing in steady state. Not counted in [`PoolStats`]: they are a
    /// few hundred bytes each.
    #[allow(
        clippy::vec_box,
        reason = "the box itself is what is recycled: it moves into a PendingOutput as is"
    )]
    idle_queues: Vec<Box<OutputQueue>>,
    stats: PoolStats,
}

impl BufferPool {
    /// A pool of [`BUFFER_SIZE`] chunks keeping at most [`MAX_IDLE_BUFFERS`].
    pub fn new() -> BufferPool {
        BufferPool::with_sizes(BUFFER_SIZE, MAX_IDLE_BUFFERS)
    }

    /// A pool of `buffer_size`-byte chunks keeping at most `max_idle` idle.
    /// The idle stacks are allocated once here, so giving back never
    /// allocates.
    pub fn with_sizes(buffer_size: usize, max_idle: usize) -> BufferPool {
        BufferPool {
            buffer_size: buffer_size.max(1),
            max_idle,
            idle: Vec::with_capacity(max_idle),
            idle_queues: Vec::with_capacity(max_idle),
            stats: PoolStats::default(),
        }
    }

    /// Idle chunks held right now (at most the cap).
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    // ANCHOR_END: pool_1
    // ANCHOR: take_signature
    /// Lends out an empty chunk: an idle one if there is one (a hit), a
    /// freshly allocated one otherwise (a miss). Its old contents are not
    /// cleared; only bytes appended after this are ever read.
    pub fn take(&mut self) -> Buffer {
        // ANCHOR_END: take_signature
        let bytes = match self.idle.pop() {
            Some(bytes) => {
                self.stats.hits += 1;
                bytes
            }
            None => {
                self.stats.misses += 1;
                vec![0; self.buffer_size].into_boxed_slice()
            }
        };
        self.stats.in_use += 1;
        self.stats.high_water = self.stats.high_water.max(self.stats.in_use);
        Buffer {
            bytes,
            start: 0,
            end: 0,
        }
    }
    // ANCHOR: pool_2

    // ANCHOR_END: pool_2
    // ANCHOR: give_back_signature
    /// Takes a chunk back: kept for the next `take` while the pool holds
    /// fewer than its cap, freed otherwise.
    pub fn give_back(&mut self, buffer: Buffer) {
        // ANCHOR_END: give_back_signature
        debug_assert_eq!(buffer.bytes.len(), self.buffer_size, "not from this pool");
        self.stats.returned += 1;
        self.stats.in_use = self.stats.in_use.saturating_sub(1);
        if self.idle.len() < self.max_idle {
            self.idle.push(buffer.bytes);
        } else {
            self.stats.dropped_over_cap += 1;
        }
    }
    // ANCHOR: pool_3

    fn take_queue(&mut self) -> Box<OutputQueue> {
        self.idle_queues.pop().unwrap_or_default()
    }

    fn give_back_queue(&mut self, queue: Box<OutputQueue>) {
        debug_assert!(queue.chunks.is_empty() && queue.queued == 0);
        if self.idle_queues.len() < self.max_idle {
            self.idle_queues.push(queue);
        }
    }
}

impl Default for BufferPool {
    fn default() -> BufferPool {
        BufferPool::new()
    }
}
// ANCHOR_END: pool_3
// ANCHOR_END: pool

// ANCHOR: pending_output
/// Echo bytes the kernel has not accepted yet: `None` while the connection
/// is idle (8 bytes, no heap), a queue of pooled chunks while a client is
/// slow to read.
///
/// The queue can hold many chunks, but not without bound: the connection
/// stops reading a client whose queue reached the back-pressure limit in
/// bytes (`len()`) *or* in memory (`held_bytes()`, every chunk counted
/// whole, at most [`memory_limit`]). Bytes alone would not do: a client
/// sending one byte per segment would pin a chunk per byte. Each read may
/// add one read's worth (4 chunks of a 64 KiB read) past the limit, so a
/// queue holds at most `memory_limit(max_pending) / BUFFER_SIZE + 3`
/// chunks: 35 at the default 256 KiB.
///
/// Write-out is one `writev` over the queued chunks (up to [`MAX_IOVECS`]),
/// not a `write` per chunk, repeated while a call is taken whole and chunks
/// remain. A short count proves the send buffer full (the same
/// edge-triggered reasoning as chapter 03's `flush`): an EPOLLOUT edge will
/// follow, so there is never a call just to hear EAGAIN. A call taken whole
/// proves nothing of the kind, and no edge would follow it: stopping there
/// would leave the rest of a long queue waiting for ever.
#[derive(Debug, Default)]
pub struct PendingOutput {
    queue: Option<Box<OutputQueue>>,
}

/// The chunks of one slow connection, oldest first, and their byte total
/// (kept so the back-pressure check is O(1)).
#[derive(Debug, Default)]
struct OutputQueue {
    chunks: VecDeque<Buffer>,
    queued: usize,
}

impl PendingOutput {
    pub const fn new() -> PendingOutput {
        PendingOutput { queue: None }
    }

    /// Nothing is owed: the connection holds no output memory.
    pub fn is_empty(&self) -> bool {
        self.queue.is_none()
    }

    /// Bytes owed to the client (the back-pressure measure).
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| queue.queued)
    }

    /// Pooled chunks held right now.
    #[cfg(test)]
    pub fn chunks(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| queue.chunks.len())
    }

    /// Memory held for this client: every chunk counts whole, however
    /// little of it is still unsent (the second back-pressure measure).
    pub fn held_bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| {
            queue.chunks.len() * queue.chunks.front().map_or(0, |c| c.bytes.len())
        })
    }

    /// The bytes owed, chunk by chunk, oldest first (a worker reads them
    /// to find the newlines; it never takes or gives back chunks).
    pub fn unsent_slices(&self) -> impl Iterator<Item = &[u8]> {
        self.queue
            .iter()
            .flat_map(|queue| queue.chunks.iter().map(Buffer::unsent))
    }

    /// Queues everything `other` owes behind what `self` owes. A chunk that
    /// fits in the room left in our last chunk is copied there and given
    /// back (so a client sending one byte at a time fills chunks instead of
    /// pinning one per byte); the others move over as they are (no copy).
    /// `other`'s queue goes back to the pool.
    pub fn append(&mut self, mut other: PendingOutput, pool: &mut BufferPool) {
        let Some(mut theirs) = other.queue.take() else {
            return;
        };
        match self.queue.as_mut() {
            None => self.queue = Some(theirs),
            Some(ours) => {
                ours.queued += theirs.queued;
                while let Some(chunk) = theirs.chunks.pop_front() {
                    match ours.chunks.back_mut() {
                        Some(last) if last.room() >= chunk.len() => {
                            last.append(chunk.unsent());
                            pool.give_back(chunk);
                        }
                        _ => ours.chunks.push_back(chunk),
                    }
                }
                theirs.queued = 0;
                pool.give_back_queue(theirs);
            }
        }
    }

    /// Queues `data` behind what is already owed: first into the room left
    /// in the last chunk, then into fresh chunks from the pool.
    pub fn push(&mut self, mut data: &[u8], pool: &mut BufferPool) {
        if data.is_empty() {
            return;
        }
        let queue = self.queue.get_or_insert_with(|| pool.take_queue());
        if let Some(last) = queue.chunks.back_mut() {
            let n = last.append(data);
            queue.queued += n;
            data = &data[n..];
        }
        while !data.is_empty() {
            let mut chunk = pool.take();
            let n = chunk.append(data);
            queue.queued += n;
            data = &data[n..];
            queue.chunks.push_back(chunk);
        }
    }

    /// Writes the queued chunks to `socket`, one `writev` of up to
    /// [`MAX_IOVECS`] at a time, until the queue is empty or a call is short
    /// (the send buffer is full: an EPOLLOUT edge will come). Chunks fully
    /// sent go back to the pool at once, and when the last one does, so does
    /// the queue: the connection is back to holding nothing. Returns the
    /// bytes written; a full send buffer (EAGAIN) at once is `Ok(0)`; EINTR
    /// is retried; other errors (EPIPE, ECONNRESET) mean the client is gone.
    pub fn write_to(&mut self, socket: &Socket, pool: &mut BufferPool) -> io::Result<usize> {
        let mut total = 0;
        while let Some(queue) = self.queue.as_mut() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut asked = 0;
            for (slice, chunk) in slices.iter_mut().zip(&queue.chunks) {
                *slice = IoSlice::new(chunk.unsent());
                asked += chunk.len();
                count += 1;
            }
            let written = loop {
                match socket.writev(&slices[..count]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            total += written;
            queue.queued -= written;
            let mut left = written;
            while left > 0 {
                let Some(chunk) = queue.chunks.front_mut() else {
                    break;
                };
                let n = left.min(chunk.len());
                chunk.consume(n);
                left -= n;
                if chunk.is_empty()
                    && let Some(sent) = queue.chunks.pop_front()
                {
                    pool.give_back(sent);
                }
            }
            if queue.chunks.is_empty() {
                self.release(pool);
                break;
            }
            if written == 0 || written < asked {
                break; // short: the send buffer is full
            }
        }
        Ok(total)
    }

    /// Gives every chunk (sent or not) and the queue back to the pool. Call
    /// it when the connection closes, so the pool's `in_use` stays exact.
    pub fn release(&mut self, pool: &mut BufferPool) {
        if let Some(mut queue) = self.queue.take() {
            while let Some(chunk) = queue.chunks.pop_front() {
                pool.give_back(chunk);
            }
            queue.queued = 0;
            pool.give_back_queue(queue);
        }
    }
}
// ANCHOR_END: pending_output

/// The most memory a connection's queued output may hold before it is
/// read no more: twice the byte limit (so that the byte limit is what bites
/// for ordinary reads), and at least two chunks.
pub const fn memory_limit(max_pending: usize) -> usize {
    let floor = 2 * BUFFER_SIZE;
    let limit = max_pending.saturating_mul(2);
    if limit > floor { limit } else { floor }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// One end of a Unix socket pair as the chapter's `Socket` (non-blocking,
    /// as the server's sockets are), the other as a plain stream.
    fn socket_pair() -> (Socket, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        (Socket::from(OwnedFd::from(server)), client)
    }

    #[test]
    fn a_buffer_given_back_is_reused_by_the_next_take() {
        let mut pool = BufferPool::with_sizes(1024, 4);
        let mut first = pool.take();
        first.append(b"hello");
        let address = first.bytes.as_ptr();
        pool.give_back(first);
        let second = pool.take();
        assert_eq!(second.bytes.as_ptr(), address, "the same memory came back");
        assert!(second.is_empty(), "a reused buffer starts empty");
        assert_eq!(second.room(), 1024);
        let stats = pool.stats();
        assert_eq!((stats.hits, stats.misses, stats.returned), (1, 1, 1));
        pool.give_back(second);
    }

    #[test]
    fn pool_keeps_at_most_its_cap_of_idle_buffers() {
        let mut pool = BufferPool::with_sizes(64, 3);
        let lent: Vec<Buffer> = (0..5).map(|_| pool.take()).collect();
        for buffer in lent {
            pool.give_back(buffer);
        }
        assert_eq!(pool.idle(), 3);
        let stats = pool.stats();
        assert_eq!(stats.returned, 5);
        assert_eq!(stats.dropped_over_cap, 2);
        assert_eq!(stats.in_use, 0);
    }

    #[test]
    fn counters_add_up_and_high_water_is_the_peak_in_use() {
        let mut pool = BufferPool::with_sizes(64, 8);
        let a = pool.take();
        let b = pool.take();
        let c = pool.take();
        pool.give_back(b);
        pool.give_back(c);
        let d = pool.take(); // hit
        let stats = pool.stats();
        assert_eq!(stats.misses, 3);
        assert_eq!(stats.hits, 1);
        assert_eq!(stats.returned, 2);
        assert_eq!(stats.in_use, 2);
        assert_eq!(stats.high_water, 3);
        assert_eq!(stats.in_use, stats.hits + stats.misses - stats.returned);
        pool.give_back(a);
        pool.give_back(d);
        assert_eq!(pool.stats().high_water, 3, "high water never goes down");
        assert_eq!(pool.stats().in_use, 0);
    }

    #[test]
    fn buffer_append_stops_at_its_size_and_consume_advances() {
        let mut pool = BufferPool::with_sizes(8, 1);
        let mut buffer = pool.take();
        assert_eq!(buffer.append(b"0123456789"), 8);
        assert_eq!(buffer.unsent(), b"01234567");
        buffer.consume(3);
        assert_eq!(buffer.unsent(), b"34567");
        assert_eq!(buffer.room(), 0);
        pool.give_back(buffer);
    }

    #[test]
    fn idle_pending_output_holds_no_memory_and_is_one_pointer() {
        let pending = PendingOutput::new();
        assert!(pending.is_empty());
        assert_eq!(pending.chunks(), 0);
        assert_eq!(size_of::<PendingOutput>(), size_of::<usize>());
    }

    #[test]
    fn pending_output_fills_the_last_chunk_before_taking_another() {
        let mut pool = BufferPool::with_sizes(10, 8);
        let mut pending = PendingOutput::new();
        pending.push(b"abcd", &mut pool);
        pending.push(b"efgh", &mut pool);
        assert_eq!(pending.chunks(), 1);
        pending.push(b"ijklmnopqrstu", &mut pool); // 2 fill chunk 1, 10 + 1 more
        assert_eq!(pending.len(), 21);
        assert_eq!(pending.chunks(), 3);
        pending.release(&mut pool);
        assert!(pending.is_empty());
        assert_eq!(pool.stats().in_use, 0);
        assert_eq!(pool.idle(), 3);
    }

    #[test]
    fn pending_output_is_written_in_order_and_returned_to_the_pool() {
        let (server, mut client) = socket_pair();
        let mut pool = BufferPool::with_sizes(7, 8);
        let mut pending = PendingOutput::new();
        let message: Vec<u8> = (0..100u8).collect();
        pending.push(&message[..33], &mut pool);
        pending.push(&message[33..], &mut pool);
        let written = pending.write_to(&server, &mut pool).unwrap();
        assert_eq!(
            written, 100,
            "a socket pair's buffer takes 100 bytes at once"
        );
        assert!(pending.is_empty(), "fully sent: back to holding nothing");
        assert_eq!(pool.stats().in_use, 0);
        let mut echoed = vec![0; 100];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }

    #[test]
    fn a_slow_reader_keeps_only_the_unsent_chunks() {
        let (server, mut client) = socket_pair();
        let mut pool = BufferPool::with_sizes(BUFFER_SIZE, 64);
        let mut pending = PendingOutput::new();
        // More than the socket pair's send buffer takes at once (~200 KiB).
        let message: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut offset = 0;
        let mut received = Vec::new();
        let mut read_buffer = vec![0; 64 * 1024];
        while received.len() < message.len() {
            // The event loop's rhythm: queue a bounded amount, write what
            // the kernel takes, let the client read some.
            if offset < message.len() && pending.len() < 256 * 1024 {
                let end = (offset + 64 * 1024).min(message.len());
                pending.push(&message[offset..end], &mut pool);
                offset = end;
            }
            pending.write_to(&server, &mut pool).unwrap();
            assert!(pending.chunks() <= (256 * 1024 + 64 * 1024) / BUFFER_SIZE + 1);
            if pending.len() >= 256 * 1024 || offset == message.len() {
                let n = client.read(&mut read_buffer).unwrap();
                received.extend_from_slice(&read_buffer[..n]);
            }
        }
        assert_eq!(received, message);
        assert!(pending.is_empty());
        let stats = pool.stats();
        assert_eq!(stats.in_use, 0);
        assert!(stats.hits > stats.misses, "chunks were reused: {stats:?}");
    }

    #[test]
    fn appending_moves_chunks_without_copying_and_keeps_the_order() {
        let mut pool = BufferPool::with_sizes(4, 8);
        let mut owed = PendingOutput::new();
        owed.push(b"abcdef", &mut pool);
        let mut job = PendingOutput::new();
        job.push(b"ghij", &mut pool);
        let chunk_address = job.unsent_slices().next().unwrap().as_ptr();
        let lent = pool.stats().in_use;
        owed.append(job, &mut pool);
        assert_eq!(owed.len(), 10);
        let bytes: Vec<u8> = owed.unsent_slices().flatten().copied().collect();
        assert_eq!(bytes, b"abcdefghij");
        assert!(
            owed.unsent_slices()
                .any(|slice| slice.as_ptr() == chunk_address),
            "the job's chunk itself moved over"
        );
        assert_eq!(pool.stats().in_use, lent, "no chunk taken or given back");
        owed.release(&mut pool);
        assert_eq!(pool.stats().in_use, 0);
    }

    #[test]
    fn a_queue_longer_than_one_writev_is_written_whole() {
        let (server, mut client) = socket_pair();
        // One-byte chunks: 3 * MAX_IOVECS of them, all of which the socket
        // pair's buffer takes at once, but no one `writev` can cover.
        let mut pool = BufferPool::with_sizes(1, 8);
        let mut pending = PendingOutput::new();
        let message: Vec<u8> = (0..3 * MAX_IOVECS).map(|i| (i % 251) as u8).collect();
        pending.push(&message, &mut pool);
        assert_eq!(pending.chunks(), message.len());
        let written = pending.write_to(&server, &mut pool).unwrap();
        assert_eq!(written, message.len(), "stopped after one writev");
        assert!(pending.is_empty(), "chunks left with no EPOLLOUT to come");
        let mut echoed = vec![0; message.len()];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }

    #[test]
    fn small_appends_share_the_last_chunk_instead_of_pinning_one_each() {
        let mut pool = BufferPool::with_sizes(BUFFER_SIZE, 8);
        let mut owed = PendingOutput::new();
        for byte in 0..1000u32 {
            let mut job = PendingOutput::new();
            job.push(&[(byte % 251) as u8], &mut pool);
            owed.append(job, &mut pool);
        }
        assert_eq!(owed.len(), 1000);
        assert_eq!(owed.chunks(), 1, "1000 one-byte reads pinned a chunk each");
        assert_eq!(owed.held_bytes(), BUFFER_SIZE);
        let bytes: Vec<u8> = owed.unsent_slices().flatten().copied().collect();
        let expected: Vec<u8> = (0..1000u32).map(|b| (b % 251) as u8).collect();
        assert_eq!(bytes, expected);
        assert_eq!(pool.stats().in_use, 1, "the copied chunks went back");
        owed.release(&mut pool);
    }

    #[test]
    fn memory_limit_is_twice_the_byte_limit_and_at_least_two_chunks() {
        assert_eq!(memory_limit(256 * 1024), 512 * 1024);
        assert_eq!(memory_limit(1), 2 * BUFFER_SIZE);
        assert_eq!(memory_limit(usize::MAX), usize::MAX);
    }

    #[test]
    fn appending_to_nothing_adopts_the_whole_queue() {
        let mut pool = BufferPool::with_sizes(16, 8);
        let mut owed = PendingOutput::new();
        let mut job = PendingOutput::new();
        job.push(b"line\n", &mut pool);
        owed.append(job, &mut pool);
        assert_eq!(owed.len(), 5);
        assert_eq!(owed.chunks(), 1);
        owed.append(PendingOutput::new(), &mut pool);
        assert_eq!(owed.len(), 5, "appending nothing changes nothing");
        owed.release(&mut pool);
    }
}
