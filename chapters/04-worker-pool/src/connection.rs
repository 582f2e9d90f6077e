//! One client: its socket, the echo bytes we still owe it, whether it has
//! finished sending, and whether a worker is busy with its last read.

use std::io;
use std::os::fd::RawFd;

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

// ANCHOR: connection_id
/// Which connection an event, a ready-list entry or a job's result is for.
/// The descriptor alone does not say: the kernel gives a closed descriptor's
/// number to the next connection it accepts. With a worker pool a
/// connection can be closed while something about it is still on its way:
/// its job's result, or an event later in the same `epoll_wait` batch (the
/// batch was collected before a result closed it). The serial number (the
/// connection's place in the order of accepts, wrapping at 2^32) tells the
/// old owner of a descriptor from the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionId {
    pub fd: RawFd,
    pub serial: u32,
}

impl ConnectionId {
    /// Packs both into the 64 bits epoll hands back with every event:
    /// serial in the high half, descriptor in the low half.
    pub fn token(self) -> u64 {
        (u64::from(self.serial) << 32) | u64::from(self.fd.cast_unsigned())
    }

    pub fn from_token(token: u64) -> ConnectionId {
        ConnectionId {
            // `as u32` keeps the low half, on purpose.
            fd: (token as u32).cast_signed(),
            serial: (token >> 32) as u32,
        }
    }
}
// ANCHOR_END: connection_id

// ANCHOR: connection
#[derive(Debug)]
pub struct Connection {
    pub socket: Socket,
    /// Tells this connection from earlier ones with the same descriptor
    /// number (see [`ConnectionId`]).
    pub serial: u32,
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
}

impl Connection {
    pub fn new(socket: Socket, serial: u32) -> Connection {
        Connection {
            socket,
            serial,
            pending_output: PendingOutput::default(),
            peer_closed: false,
            unread_input: false,
            peer_sent_fin: false,
            on_ready_list: false,
            job_in_flight: false,
        }
    }

    pub fn id(&self) -> ConnectionId {
        ConnectionId {
            fd: self.socket.raw_fd(),
            serial: self.serial,
        }
    }

    /// Whether we should read from this client now. Not after EOF; not
    /// while a worker has its previous read (the next read would become a
    /// second job, which a second worker could finish first); and not while
    /// it owes us `max_pending` bytes of unread echo: that is the
    /// back-pressure which keeps a client that never reads from making us
    /// buffer without bound. Its bytes wait in its socket buffer, then TCP
    /// flow control stops it sending.
    pub fn wants_input(&self, max_pending: usize) -> bool {
        !self.peer_closed && !self.job_in_flight && self.pending_output.len() < max_pending
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
        self.peer_closed && !self.job_in_flight && self.pending_output.is_empty()
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

#[cfg(test)]
mod tests {
    // Paths, not a `use`: the bench compiles this file with cfg(test) but
    // without the test harness, which would leave a `use` unused.
    #[test]
    fn connection_id_survives_the_trip_through_epoll_data() {
        for id in [
            super::ConnectionId { fd: 0, serial: 0 },
            super::ConnectionId { fd: 7, serial: 1 },
            super::ConnectionId {
                fd: 19_999,
                serial: u32::MAX,
            },
        ] {
            assert_eq!(super::ConnectionId::from_token(id.token()), id);
        }
    }

    #[test]
    fn same_descriptor_different_serial_is_a_different_connection() {
        let old = super::ConnectionId { fd: 8, serial: 41 };
        let new = super::ConnectionId { fd: 8, serial: 42 };
        assert_ne!(old.token(), new.token());
        assert_ne!(super::ConnectionId::from_token(old.token()), new);
    }
}
