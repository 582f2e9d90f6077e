//! Exercise 02 — switching EPOLLOUT on and off (reference solution).
//!
//! With level-triggered epoll, what a connection is registered for decides
//! how often `epoll_wait` wakes up for it. Write `wanted_interest`: the
//! interest set a connection needs after each event.

/// Wake me when there is data to read (or EOF to see).
pub const READABLE: u32 = libc::EPOLLIN as u32;
/// Wake me when the send buffer has room.
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;

/// One connection's state, as far as the interest decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionState {
    /// Bytes read from the client but not yet written back.
    pub pending_output: usize,
    /// The client sent EOF: it will send nothing more.
    pub peer_closed: bool,
}

/// The interest set epoll should have for this connection now, or `None`
/// when the connection is finished and should be closed.
///
/// - `READABLE` while we may read: not after EOF, and not while
///   `pending_output >= max_pending` (back-pressure).
/// - `WRITABLE` exactly while output is pending.
/// - `None` when the client sent EOF and nothing is pending.
pub fn wanted_interest(state: ConnectionState, max_pending: usize) -> Option<u32> {
    let mut interest = 0;
    if !state.peer_closed && state.pending_output < max_pending {
        interest |= READABLE;
    }
    // Never WRITABLE with nothing to write: a socket with room in its send
    // buffer is always writable, so level-triggered epoll would report it on
    // every wait, and the loop would spin.
    if state.pending_output > 0 {
        interest |= WRITABLE;
    }
    (interest != 0).then_some(interest)
}

/// Whether `epoll_ctl(MOD)` is needed: the new interest if it differs from
/// what is registered, `None` if the registration can stay as it is.
pub fn change_needed(registered: u32, wanted: u32) -> Option<u32> {
    (registered != wanted).then_some(wanted)
}
