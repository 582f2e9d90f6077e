//! Exercise 05: a slab of connection state whose tokens go stale.
//!
//! An event loop hands epoll a 64-bit token per descriptor and gets it back
//! with every event. If the token is just an index, it can outlive what it
//! names: connection A in slot 7 is closed by one event, connection B is
//! accepted into slot 7, and a later event (or a ready-list entry, or a
//! worker's result) still carrying "7" reaches B. A slab token carries the
//! slot's *generation* too, bumped every time the slot is emptied, so a
//! token for A no longer matches anything once A is gone.

/// What goes into `epoll_event.data.u64`: generation in the high 32 bits,
/// slot index in the low 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(u64);

impl Token {
    pub fn new(index: u32, generation: u32) -> Token {
        Token((u64::from(generation) << 32) | u64::from(index))
    }

    pub fn index(self) -> u32 {
        (self.0 & 0xFFFF_FFFF) as u32
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The value to register with `epoll_ctl`.
    pub fn epoll_data(self) -> u64 {
        self.0
    }

    /// The token an event carries back.
    pub fn from_epoll_data(data: u64) -> Token {
        Token(data)
    }
}

/// Values in one `Vec`; freed slots are reused, most recently freed first.
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    /// Indices of vacant entries; the last one is reused first.
    free: Vec<u32>,
}

#[derive(Debug)]
struct Entry<T> {
    /// Bumped every time the slot is emptied.
    generation: u32,
    value: Option<T>,
}

impl<T> Slab<T> {
    pub fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Values stored.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots that exist (occupied or free).
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// Stores `value` in the most recently freed slot (or a new one at the
    /// end) and returns the token that names it: the slot's index and its
    /// current generation.
    pub fn insert(&mut self, value: T) -> Token {
        let _ = value;
        todo!("reuse a free slot (generation unchanged) or push a new one (generation 0)")
    }

    /// The value `token` names, or `None` if that value has been removed,
    /// even if its slot holds a new value since.
    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let _ = token;
        todo!("match the index *and* the generation")
    }

    /// Takes the value out and frees its slot, making every token for it
    /// stale; `None` if `token` is stale already.
    pub fn remove(&mut self, token: Token) -> Option<T> {
        let _ = token;
        todo!("take the value, bump the generation, remember the slot as free")
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Slab<T> {
        Slab::new()
    }
}
