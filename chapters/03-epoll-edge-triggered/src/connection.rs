//! One client: its socket, the echo bytes we still owe it, and whether it
//! has finished sending.

use std::io;

use crate::sys::Socket;

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
#[derive(Debug)]
pub struct Connection {
    pub socket: Socket,
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
}

impl Connection {
    pub fn new(socket: Socket) -> Connection {
        Connection {
            socket,
            pending_output: PendingOutput::default(),
            peer_closed: false,
            unread_input: false,
            peer_sent_fin: false,
            on_ready_list: false,
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
    /// drains it as far as it goes: if it is partial, the buffer is full (a
    /// short count proves it, epoll(7) says, just like EAGAIN would) and an
    /// EPOLLOUT edge will come when there is room again.
    pub fn flush(&mut self) -> io::Result<()> {
        let written = write_some(&self.socket, self.pending_output.unsent())?;
        self.pending_output.consume(written);
        Ok(())
    }

    /// Input is waiting and back-pressure allows reading it: the connection
    /// needs another turn, and no edge will come to ask for one.
    pub fn has_unread_input(&self, max_pending: usize) -> bool {
        self.unread_input && self.wants_input(max_pending)
    }

    /// The client sent EOF and has all its echo: close the connection.
    pub fn is_finished(&self) -> bool {
        self.peer_closed && self.pending_output.is_empty()
    }
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
// ANCHOR_END: connection
