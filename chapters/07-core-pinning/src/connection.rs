//! One client: its socket, the echo bytes we still owe it, whether it has
//! finished sending, and whether a worker is busy with its last read. Kept
//! as small as it can be while idle, because idle is what most of a
//! million connections are.
//!
//! ## Bytes per idle connection, by design
//!
//! | what                                            | bytes |
//! |-------------------------------------------------|------:|
//! | slab entry: `Slab::<Connection>::entry_size()`  |    32 |
//! | read buffer (one per event loop, shared)        |     0 |
//! | output chunks (pooled, only while bytes are owed) |   0 |
//! | ready-list slot (only while input is unread)    |     0 |
//! | timer link in the wheel (`--idle-timeout` only)  |    24 |
//! | **userland total**                              | **32** (56 with a timeout) |
//!
//! The 32 bytes: `PendingOutput` 8 (a `None` pointer) + socket 4 + six
//! `bool` flags 6 = 18, padded to 24 for the pointer's alignment; the slab
//! adds its 4-byte generation, 28, padded to 32. The slot's occupied/vacant
//! tag costs nothing: it hides in a `bool`'s unused values (a niche). The
//! kernel's side (the socket, ≈4.9 KB per end measured on this host, and
//! epoll's per-descriptor `epitem`) is real memory but not RSS, so "RSS
//! growth / connections" does not count it.

use std::io;

use crate::buffer_pool::{self, BufferPool, PendingOutput};
use crate::sys::Socket;

// ANCHOR: connection
#[derive(Debug)]
pub struct Connection {
    pub socket: Socket,
    /// Echo bytes the kernel has not accepted yet: `None` (no memory) while
    /// idle, pooled chunks while a client is slow to read.
    pub pending_output: PendingOutput,
    /// We read EOF: the client will send nothing more (it may still read).
    pub peer_closed: bool,
    /// The socket may hold input we have not read yet. Set by an EPOLLIN
    /// edge; cleared only when a read proves the receive buffer empty. With
    /// edge-triggered epoll this flag is the only memory of that data: the
    /// kernel will not mention it again.
    pub unread_input: bool,
    /// EPOLLRDHUP said the client closed its side: keep reading until EOF
    /// even after a short read, because no further edge will announce it.
    pub peer_sent_fin: bool,
    /// Already waiting in the server's ready list for another turn.
    pub on_ready_list: bool,
    /// A worker has this connection's last read. At most one job per
    /// connection is ever in flight: that is what keeps its echo in order.
    pub job_in_flight: bool,
    /// A read or a write moved bytes since the server last looked: the
    /// connection is not idle. Taken (and cleared) once per turn.
    pub moved_data: bool,
}

impl Connection {
    pub fn new(socket: Socket) -> Connection {
        Connection {
            socket,
            pending_output: PendingOutput::new(),
            peer_closed: false,
            unread_input: false,
            peer_sent_fin: false,
            on_ready_list: false,
            job_in_flight: false,
            moved_data: false,
        }
    }

    /// Whether we should read from this client now. Not after EOF; not
    /// while a worker has its previous read (the next read would become a
    /// second job, which a second worker could finish first); and not while
    /// it owes us `max_pending` bytes of unread echo, or holds
    /// `memory_limit(max_pending)` bytes of chunks for it: that is the
    /// back-pressure which keeps a client that never reads from making us
    /// buffer without bound. Its bytes wait in its socket buffer, then TCP
    /// flow control stops it sending.
    pub fn wants_input(&self, max_pending: usize) -> bool {
        !self.peer_closed
            && !self.job_in_flight
            && self.pending_output.len() < max_pending
            && self.pending_output.held_bytes() < buffer_pool::memory_limit(max_pending)
    }

    // ANCHOR: echo
    /// Sends a finished job's bytes back. Its chunks join the end of
    /// `pending_output` (moved, or copied into the last chunk's room when
    /// they fit there); if nothing was queued ahead of them, `flush` sends
    /// what the kernel takes at once, and every chunk fully sent goes back
    /// to the pool. Only what a partial write
    /// leaves stays lent to this connection, until the EPOLLOUT edge that
    /// lets `flush` send it.
    pub fn echo(&mut self, data: PendingOutput, pool: &mut BufferPool) -> io::Result<()> {
        let nothing_queued_ahead = self.pending_output.is_empty();
        self.pending_output.append(data, pool);
        if nothing_queued_ahead {
            self.flush(pool)?;
        }
        Ok(())
    }
    // ANCHOR_END: echo

    // ANCHOR: echo_from_read_buffer
    /// Sends back bytes the loop worked on itself (`--offload`), while they
    /// are still in its read buffer: straight to the socket if nothing is
    /// queued ahead of them, so a client that keeps up never costs a chunk
    /// or a copy. Only what a partial write leaves is copied into pooled
    /// chunks. Returns the bytes written now.
    pub fn echo_from_read_buffer(
        &mut self,
        data: &[u8],
        pool: &mut BufferPool,
    ) -> io::Result<usize> {
        let mut written = 0;
        if self.pending_output.is_empty() {
            written = loop {
                match self.socket.write(data) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
        }
        self.pending_output.push(&data[written..], pool);
        Ok(written)
    }
    // ANCHOR_END: echo_from_read_buffer

    /// Writes as much pending output as the send buffer takes, a `writev`
    /// at a time until one is partial: then the buffer is full (a short
    /// count proves it, epoll(7) says, just like EAGAIN would) and an
    /// EPOLLOUT edge will come when there is room again.
    pub fn flush(&mut self, pool: &mut BufferPool) -> io::Result<()> {
        if self.pending_output.write_to(&self.socket, pool)? > 0 {
            self.moved_data = true;
        }
        Ok(())
    }

    /// Before the connection is dropped: give its chunks back, so the
    /// pool's `in_use` and high-water mark stay true.
    pub fn release(&mut self, pool: &mut BufferPool) {
        self.pending_output.release(pool);
    }

    /// Input is waiting and back-pressure allows reading it: the connection
    /// needs another turn, and no edge will come to ask for one.
    pub fn has_unread_input(&self, max_pending: usize) -> bool {
        self.unread_input && self.wants_input(max_pending)
    }

    /// The client sent EOF and has all its echo: close the connection.
    pub fn is_finished(&self) -> bool {
        self.peer_closed && !self.job_in_flight && self.pending_output.is_empty()
    }
}
// ANCHOR_END: connection

#[cfg(test)]
mod tests {
    // Paths, not `use`s: the bench compiles this file with cfg(test) but
    // without the test harness, which would leave a `use` unused.

    /// The chapter's promise is "under 128 bytes of userland memory per
    /// idle connection"; by design it is one slab entry. If a field added
    /// later breaks this, the table in the module docs needs redoing.
    #[test]
    fn an_idle_connection_is_one_32_byte_slab_entry() {
        assert_eq!(size_of::<super::PendingOutput>(), 8);
        assert!(
            size_of::<super::Connection>() <= 24,
            "{}",
            size_of::<super::Connection>()
        );
        let entry = crate::slab::Slab::<super::Connection>::entry_size();
        assert!(entry <= 32, "{entry}");
    }

    #[test]
    fn echo_that_the_kernel_takes_whole_gives_every_chunk_back() {
        use std::io::Read;
        let (server, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let socket = crate::sys::Socket::from(std::os::fd::OwnedFd::from(server));
        let mut pool = super::BufferPool::new();
        let mut connection = super::Connection::new(socket);
        let mut job = super::PendingOutput::new();
        job.push(b"ping\n", &mut pool);
        connection.echo(job, &mut pool).unwrap();
        assert!(connection.pending_output.is_empty(), "idle again");
        assert_eq!(pool.stats().in_use, 0);
        let mut echoed = [0; 5];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"ping\n");
    }

    #[test]
    fn partial_write_keeps_chunks_until_the_client_reads_then_returns_them() {
        use std::io::Read;
        let (server, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let socket = crate::sys::Socket::from(std::os::fd::OwnedFd::from(server));
        let mut pool = super::BufferPool::new();
        let mut connection = super::Connection::new(socket);
        let read: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
        // The client does not read: the send buffer fills and the rest of
        // each echo stays in pooled chunks.
        let mut sent = Vec::new();
        while connection.wants_input(256 * 1024) {
            let mut job = super::PendingOutput::new();
            job.push(&read, &mut pool);
            connection.echo(job, &mut pool).unwrap();
            sent.extend_from_slice(&read);
        }
        assert!(connection.pending_output.chunks() > 0);
        assert!(pool.stats().in_use > 0);
        // Now it reads; every EPOLLOUT turn flushes.
        let mut received = vec![0; sent.len()];
        let mut got = 0;
        while got < sent.len() {
            got += client.read(&mut received[got..]).unwrap();
            connection.flush(&mut pool).unwrap();
        }
        assert_eq!(received, sent);
        assert!(
            connection.pending_output.is_empty(),
            "idle again: no chunks"
        );
        assert_eq!(pool.stats().in_use, 0);
    }
}
