//! Exercise 05: a pool of fixed-size output buffers with a cap and counters.
//!
//! Chapter 05's event loop lends a connection 16 KiB chunks only while it
//! owes a client bytes, and takes them back as soon as they are sent, so an
//! idle connection holds none. The chunks come from a `BufferPool`: a stack
//! of idle chunks owned by the loop (one thread, no lock).

/// One fixed-size chunk of bytes, lent out by [`BufferPool::take`].
#[derive(Debug)]
pub struct Buffer {
    bytes: Box<[u8]>,
    len: usize,
}

impl Buffer {
    /// The bytes written into this buffer since it was taken.
    pub fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub fn append(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Where the memory is: lets tests see that a buffer was reused.
    pub fn address(&self) -> *const u8 {
        self.bytes.as_ptr()
    }

    /// How many bytes it can hold.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }
}

/// What the pool did, for the server's summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// `take` served from an idle buffer: no allocation.
    pub hits: u64,
    /// `take` found no idle buffer and allocated a fresh one.
    pub misses: u64,
    /// Buffers given back, kept or not.
    pub returned: u64,
    /// Of those, buffers freed because the pool already held `max_idle`.
    pub dropped_over_cap: u64,
    /// Buffers lent out right now.
    pub in_use: u64,
    /// The most buffers ever lent out at once.
    pub high_water: u64,
}

/// A stack of idle buffers of `buffer_size` bytes, keeping at most
/// `max_idle` of them.
#[derive(Debug)]
pub struct BufferPool {
    buffer_size: usize,
    max_idle: usize,
    idle: Vec<Box<[u8]>>,
    stats: PoolStats,
}

impl BufferPool {
    pub fn new(buffer_size: usize, max_idle: usize) -> BufferPool {
        BufferPool {
            buffer_size,
            max_idle,
            idle: Vec::with_capacity(max_idle),
            stats: PoolStats::default(),
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Idle buffers held right now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    /// Lends out an empty buffer of `buffer_size` bytes: the idle buffer
    /// given back most recently if there is one (a hit), a freshly
    /// allocated one otherwise (a miss). Keeps `in_use` and `high_water`
    /// up to date.
    pub fn take(&mut self) -> Buffer {
        todo!("pop an idle buffer or allocate one; count a hit or a miss")
    }

    /// Takes a buffer back: kept for the next `take` while fewer than
    /// `max_idle` are idle, freed (and counted in `dropped_over_cap`)
    /// otherwise.
    pub fn give_back(&mut self, buffer: Buffer) {
        let _ = buffer;
        todo!("keep it under the cap, or let it go; count it either way")
    }
}
