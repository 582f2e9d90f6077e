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
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            entry.value = Some(value);
            return Token::new(index, entry.generation);
        }
        let index = u32::try_from(self.entries.len()).expect("fewer than 2^32 slots");
        self.entries.push(Entry {
            generation: 0,
            value: Some(value),
        });
        Token::new(index, 0)
    }

    /// The value `token` names, or `None` if that value has been removed,
    /// even if its slot holds a new value since.
    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let entry = self.entries.get_mut(token.index() as usize)?;
        if entry.generation != token.generation() {
            return None; // the slot has moved on: a stale token
        }
        entry.value.as_mut()
    }

    /// Takes the value out and frees its slot, making every token for it
    /// stale; `None` if `token` is stale already.
    pub fn remove(&mut self, token: Token) -> Option<T> {
        let entry = self.entries.get_mut(token.index() as usize)?;
        if entry.generation != token.generation() {
            return None;
        }
        let value = entry.value.take()?;
        // From here on, no token made before this line matches the slot.
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(token.index());
        Some(value)
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Slab<T> {
        Slab::new()
    }
}
