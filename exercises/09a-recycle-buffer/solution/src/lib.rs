//! Exercise 09: handle a multishot receive completion against a provided
//! buffer ring.
//!
//! In chapter 09 a connection's receive is armed once and names no buffer:
//! when data arrives the kernel takes a buffer from the *provided buffer
//! ring*, fills it, and posts a completion naming it. From then until we
//! give it back, the buffer is ours; the kernel cannot use it for anyone
//! else. This crate models that ring (no io_uring needed, so it runs
//! anywhere) and a reactor's slab of connections with generations.

use std::collections::VecDeque;

/// `-ENOBUFS` on Linux: the ring had no buffer for a receive.
pub const ENOBUFS: i32 = 105;
/// `-ECONNRESET` on Linux: the client reset the connection.
pub const ECONNRESET: i32 = 104;

/// A connection's slot and the generation the slot had when the token was
/// made (what chapter 09 packs into a completion's user data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub index: u32,
    pub generation: u32,
}

/// One completion of a multishot receive, as the reactor sees it.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub token: Token,
    /// Bytes received (> 0), 0 for EOF, or `-errno`.
    pub result: i32,
    /// The provided buffer the kernel filled, if it picked one.
    pub buffer_id: Option<u16>,
    /// `IORING_CQE_F_MORE`: the receive stays armed and more completions
    /// will come. Without it the receive has ended.
    pub more: bool,
}

/// A model of a provided buffer ring. The kernel side takes buffers
/// ([`BufferRing::kernel_fill`]); our side reads one a completion named and
/// gives it back ([`BufferRing::recycle`]).
#[derive(Debug)]
pub struct BufferRing {
    buffers: Vec<Vec<u8>>,
    /// Filled length of each buffer while it is lent to us.
    filled: Vec<Option<usize>>,
    /// Buffers the kernel may take, oldest first.
    ring: VecDeque<u16>,
}

impl BufferRing {
    pub fn new(count: u16, size: usize) -> BufferRing {
        BufferRing {
            buffers: vec![vec![0; size]; usize::from(count)],
            filled: vec![None; usize::from(count)],
            ring: (0..count).collect(),
        }
    }

    /// The kernel's side: take a buffer from the ring and copy `data` into
    /// it (up to its size). `None`: the ring is empty (`ENOBUFS`).
    pub fn kernel_fill(&mut self, data: &[u8]) -> Option<(u16, usize)> {
        let id = self.ring.pop_front()?;
        let buffer = &mut self.buffers[usize::from(id)];
        let len = data.len().min(buffer.len());
        buffer[..len].copy_from_slice(&data[..len]);
        self.filled[usize::from(id)] = Some(len);
        Some((id, len))
    }

    /// The bytes of buffer `id`, which a completion handed us.
    ///
    /// # Panics
    ///
    /// If the buffer is not ours (never handed to us, or already given back):
    /// reading it then would race with the kernel writing it.
    pub fn buffer(&self, id: u16, len: usize) -> &[u8] {
        let filled = self.filled[usize::from(id)]
            .unwrap_or_else(|| panic!("buffer {id} belongs to the kernel: it was recycled"));
        assert!(len <= filled, "buffer {id} holds {filled} bytes, not {len}");
        &self.buffers[usize::from(id)][..len]
    }

    /// Gives buffer `id` back to the kernel.
    ///
    /// # Panics
    ///
    /// If it is already the kernel's: recycling twice would let the kernel
    /// hand one buffer to two receives.
    pub fn recycle(&mut self, id: u16) {
        assert!(
            self.filled[usize::from(id)].take().is_some(),
            "buffer {id} recycled twice"
        );
        self.ring.push_back(id);
    }

    /// Buffers the kernel can take now.
    pub fn available(&self) -> usize {
        self.ring.len()
    }

    pub fn count(&self) -> usize {
        self.buffers.len()
    }
}

/// One client.
#[derive(Debug, Default)]
pub struct Connection {
    /// Every byte received, in order.
    pub received: Vec<u8>,
    /// Its multishot receive is armed.
    pub recv_armed: bool,
    /// We saw EOF.
    pub peer_closed: bool,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    connection: Option<Connection>,
}

#[derive(Debug)]
pub struct Reactor {
    pub buffers: BufferRing,
    slots: Vec<Slot>,
    /// Completions whose connection was gone.
    pub stale_completions: u64,
    /// Connections whose receive must be armed again (at the end of the
    /// turn, after recycled buffers are published).
    pub to_rearm: Vec<Token>,
}

impl Reactor {
    pub fn new(buffers: BufferRing) -> Reactor {
        Reactor {
            buffers,
            slots: Vec::new(),
            stale_completions: 0,
            to_rearm: Vec::new(),
        }
    }

    /// A new connection, its receive armed; reuses a free slot if any.
    pub fn accept(&mut self) -> Token {
        let connection = Connection {
            recv_armed: true,
            ..Connection::default()
        };
        if let Some(index) = self.slots.iter().position(|s| s.connection.is_none()) {
            let slot = &mut self.slots[index];
            slot.connection = Some(connection);
            return Token {
                index: u32::try_from(index).expect("fewer than 2^32 slots"),
                generation: slot.generation,
            };
        }
        self.slots.push(Slot {
            generation: 0,
            connection: Some(connection),
        });
        Token {
            index: u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 slots"),
            generation: 0,
        }
    }

    /// The connection `token` names, if it is still open.
    pub fn connection(&self, token: Token) -> Option<&Connection> {
        let slot = self.slots.get(token.index as usize)?;
        if slot.generation != token.generation {
            return None;
        }
        slot.connection.as_ref()
    }

    pub fn connection_mut(&mut self, token: Token) -> Option<&mut Connection> {
        lookup(&mut self.slots, token)
    }

    /// Removes the connection; its slot's generation changes, so every
    /// token for it is stale from now on.
    pub fn close(&mut self, token: Token) {
        if self.connection(token).is_some() {
            let slot = &mut self.slots[token.index as usize];
            slot.connection = None;
            slot.generation = slot.generation.wrapping_add(1);
        }
    }

    // ANCHOR: on_recv
    /// Handles one receive completion.
    pub fn on_recv(&mut self, completion: Completion) {
        // (`lookup` borrows only the slots, so `self.buffers` stays usable.)
        let Some(connection) = lookup(&mut self.slots, completion.token) else {
            // Gone: the bytes have nowhere to go, but the buffer is still
            // ours, and only we can give it back.
            self.stale_completions += 1;
            if let Some(id) = completion.buffer_id {
                self.buffers.recycle(id);
            }
            return;
        };
        if !completion.more {
            connection.recv_armed = false;
        }
        match completion.result {
            n if n > 0 => {
                if let Some(id) = completion.buffer_id {
                    let len = n.unsigned_abs() as usize;
                    connection
                        .received
                        .extend_from_slice(self.buffers.buffer(id, len));
                    self.buffers.recycle(id);
                }
            }
            0 => connection.peer_closed = true,
            n if n == -ENOBUFS => {}
            _ => {
                if let Some(id) = completion.buffer_id {
                    self.buffers.recycle(id);
                }
                self.close(completion.token);
                return;
            }
        }
        let Some(connection) = self.connection(completion.token) else {
            return;
        };
        if !connection.recv_armed && !connection.peer_closed {
            self.to_rearm.push(completion.token);
        }
    }
    // ANCHOR_END: on_recv
}

/// The connection in `slots` that `token` names, if it is still open.
fn lookup(slots: &mut [Slot], token: Token) -> Option<&mut Connection> {
    let slot = slots.get_mut(token.index as usize)?;
    if slot.generation != token.generation {
        return None;
    }
    slot.connection.as_mut()
}
