//! One client, in the completion model: its socket, which operations the
//! kernel holds for it, and the bytes it is owed. Small while idle: no
//! receive buffer (the kernel picks one from the buffer ring only when data
//! arrives), no output (boxed, and only while bytes are owed).
//!
//! ## Bytes per idle connection, by design
//!
//! | what                                              | bytes |
//! |---------------------------------------------------|------:|
//! | slab entry: `Slab::<Connection>::entry_size()`    |    32 |
//! | receive buffer (provided buffer ring, shared)     |     0 |
//! | output (`Option<Box<Output>>`, only while owed)   |     0 |
//! | timer link in the wheel (`--idle-timeout` only)   |    24 |
//! | **userland total**                                | **32** (56 with a timeout) |
//!
//! The same as chapter 08: output pointer 8 + socket 4 + receive state 1 +
//! five flags 5 = 18, padded to 24; the slab's generation makes 28, padded
//! to 32.
//!
//! The kernel's side is bigger than in chapter 08: besides the socket, an
//! armed multishot receive is an io_uring request (a few hundred bytes of
//! kernel memory, not RSS) for every connection, idle or not.

use crate::sys::Socket;

// ANCHOR: connection
#[derive(Debug)]
pub struct Connection {
    pub socket: Socket,
    /// What this client is owed, and what waits behind a job: `None` (no
    /// memory) while idle.
    pub output: Option<Box<Output>>,
    /// Where its multishot receive is.
    pub recv: Recv,
    /// A send is in the kernel's hands (its buffer is in the ring).
    pub send_in_flight: bool,
    /// A worker has this connection's last bytes: what arrives meanwhile
    /// waits in `Output::held`, so the echo stays in order.
    pub job_in_flight: bool,
    /// We received EOF: the client sends nothing more (it may still read).
    pub peer_closed: bool,
    /// We are closing it: its operations are being cancelled, and its slot
    /// (and descriptor) stay reserved until the last completion is in.
    pub closing: bool,
    /// Already on the server's list of connections to send for this turn.
    pub flush_queued: bool,
}

/// The state of a connection's multishot receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// Not armed: after EOF, after back-pressure stopped it, after the
    /// buffer ring ran dry (`ENOBUFS`), or before the first arm.
    Off,
    /// Armed: the kernel posts a completion each time data arrives.
    Armed,
    /// We asked the kernel to cancel it; completions may still arrive
    /// until one without `IORING_CQE_F_MORE` ends it.
    Cancelling,
}

/// The bytes a busy connection is owed. Boxed so an idle connection pays a
/// pointer for it, not three `Vec`s.
#[derive(Debug, Default)]
pub struct Output {
    /// Received bytes waiting behind a job in flight (in arrival order).
    pub held: Vec<u8>,
    /// Echo bytes ready to send, behind the send in flight.
    pub queued: Vec<u8>,
    /// Bytes of the send in flight not yet confirmed sent.
    pub sending: usize,
    /// Bytes a worker has.
    pub working: usize,
}

impl Output {
    /// Everything this client has sent us that it has not got back yet.
    pub fn owed(&self) -> usize {
        self.held.len() + self.queued.len() + self.sending + self.working
    }

    pub fn is_empty(&self) -> bool {
        self.owed() == 0
    }
}

impl Connection {
    pub fn new(socket: Socket) -> Connection {
        Connection {
            socket,
            output: None,
            recv: Recv::Off,
            send_in_flight: false,
            job_in_flight: false,
            peer_closed: false,
            closing: false,
            flush_queued: false,
        }
    }

    /// Bytes sent to us and not yet echoed (0 while idle).
    pub fn owed(&self) -> usize {
        self.output.as_ref().map_or(0, |output| output.owed())
    }

    /// The output, created on first use.
    pub fn output(&mut self) -> &mut Output {
        self.output.get_or_insert_with(Box::default)
    }

    /// Takes the output box away once it is empty again, so an idle
    /// connection goes back to owning nothing but its slab entry. The
    /// server keeps the box for the next connection that needs one.
    pub fn take_output_if_idle(&mut self) -> Option<Box<Output>> {
        if self.output.as_ref().is_some_and(|output| {
            output.is_empty() && output.held.capacity() == 0 && output.queued.capacity() == 0
        }) {
            self.output.take()
        } else {
            None
        }
    }

    /// Whether a receive should be armed: not after EOF or while closing,
    /// and not while the client owes us `max_pending` bytes of unread echo
    /// (back-pressure: its bytes wait in its socket buffer, then TCP flow
    /// control stops it sending).
    pub fn wants_input(&self, max_pending: usize) -> bool {
        !self.peer_closed && !self.closing && self.owed() < max_pending
    }

    /// The client sent EOF and has all its echo: close.
    pub fn is_finished(&self) -> bool {
        self.peer_closed && !self.job_in_flight && !self.send_in_flight && self.owed() == 0
    }

    /// The kernel holds nothing of this connection's any more: its
    /// descriptor can be closed and its slot reused.
    pub fn kernel_is_done(&self) -> bool {
        self.recv == Recv::Off && !self.send_in_flight
    }
}
// ANCHOR_END: connection

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_is_one_small_slab_entry() {
        assert!(
            size_of::<super::Connection>() <= 24,
            "{}",
            size_of::<super::Connection>()
        );
        let entry = crate::slab::Slab::<super::Connection>::entry_size();
        assert!(entry <= 32, "{entry}");
    }
}
