//! One client: its socket, the echo bytes we still owe it, and whether it
//! has finished sending.

use std::io;

use crate::sys::{Interest, READABLE, Socket, WRITABLE};

// ANCHOR: pending_output
/// Bytes read from the client that the kernel has not yet accepted back for
/// sending: what is left over after a partial write.
#[derive(Debug, Default)]
pub struct PendingOutput {
    bytes: Vec<u8>,
    /// `bytes[..sent]` has been written already.
    sent: usize,
}

impl PendingOutput {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn unsent(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }

    pub fn push(&mut self, data: &[u8]) {
        // Slide the unsent tail to the front once the sent head is the bigger
        // part, so the buffer never grows past twice what is really pending.
        if self.sent > self.bytes.len() / 2 {
            self.bytes.drain(..self.sent);
            self.sent = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    /// Records that the first `n` unsent bytes were written.
    pub fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.bytes.len() {
            // Fully sent. Give a big buffer back instead of keeping it for a
            // client that may now sit idle for hours (chapter 05 goes further:
            // no per-connection buffers at all while idle).
            if self.bytes.capacity() > 64 * 1024 {
                self.bytes = Vec::new();
            } else {
                self.bytes.clear();
            }
            self.sent = 0;
        }
    }
}
// ANCHOR_END: pending_output

// ANCHOR: connection
// ANCHOR: connection_1
#[derive(Debug)]
pub struct Connection {
    pub socket: Socket,
    pub pending_output: PendingOutput,
    /// We read EOF: the client will send nothing more (it may still read).
    pub peer_closed: bool,
    /// What epoll watches this socket for right now, so that we only call
    /// `epoll_ctl` when that has to change.
    pub registered: Interest,
}

impl Connection {
    pub fn new(socket: Socket, registered: Interest) -> Connection {
        Connection {
            socket,
            pending_output: PendingOutput::default(),
            peer_closed: false,
            registered,
        }
    }

    /// Whether we should read from this client now. Not after EOF, and not
    /// while it owes us `max_pending` bytes of unread echo: that is the
    /// back-pressure which keeps a client that never reads from making us
    /// buffer without bound. Its bytes wait in its socket buffer, then TCP
    /// flow control stops it sending.
    pub fn wants_input(&self, max_pending: usize) -> bool {
        !self.peer_closed && self.pending_output.len() < max_pending
    }

    /// Sends `data` back: straight to the socket if nothing is queued ahead
    /// of it, and whatever the kernel does not take (a partial write) into
    /// `pending_output`, to be sent when epoll says there is room.
    pub fn echo(&mut self, data: &[u8]) -> io::Result<()> {
        let mut written = 0;
        if self.pending_output.is_empty() {
            written = write_some(&self.socket, data)?;
        }
        self.pending_output.push(&data[written..]);
        Ok(())
    }

    /// Writes as much pending output as the send buffer takes. One `write`
    /// is enough: if it is partial, the buffer is full and a second call
    /// would only return EAGAIN.
    pub fn flush(&mut self) -> io::Result<()> {
        let written = write_some(&self.socket, self.pending_output.unsent())?;
        self.pending_output.consume(written);
        Ok(())
    }

    // ANCHOR_END: connection_1
    // ANCHOR: wanted_interest_signature
    /// What epoll should watch this socket for now, or `None` when the
    /// connection is finished (the client sent EOF and has all its echo).
    pub fn wanted_interest(&self, max_pending: usize) -> Option<Interest> {
        // ANCHOR_END: wanted_interest_signature
        let mut interest = 0;
        if self.wants_input(max_pending) {
            interest |= READABLE;
        }
        // EPOLLOUT only while we owe output. A socket with room in its send
        // buffer is writable nearly all the time, so leaving EPOLLOUT on
        // would make every epoll_wait return at once, forever: a busy loop.
        if !self.pending_output.is_empty() {
            interest |= WRITABLE;
        }
        (interest != 0).then_some(interest)
    }
    // ANCHOR: connection_2
}

/// One `write`, treating "send buffer full" (EAGAIN) as "0 bytes written
/// this time" rather than as an error, and retrying after EINTR.
fn write_some(socket: &Socket, data: &[u8]) -> io::Result<usize> {
    loop {
        match socket.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
// ANCHOR_END: connection_2
// ANCHOR_END: connection
