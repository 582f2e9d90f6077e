//! A slab of connection state: one `Vec` of entries, a free list threaded
//! through the vacant ones, and tokens that name an entry *and* the
//! occupant it had when the token was made.
//!
//! Chapters 02 to 04 index connections by descriptor number, in a `Vec`
//! as long as the highest descriptor. A descriptor number is reused the
//! moment it is closed: an event, a ready-list entry or a worker's result
//! carrying fd 17 may be about the connection that *was* 17 before a new
//! one got that number. Chapter 04 patched that with a serial number next to
//! the descriptor; a slab makes it the rule. A token carries a generation
//! that changes every time its slot is emptied, so the stale report simply
//! finds no one ([`Slab::get`] returns `None`).

use std::fmt;

// ANCHOR: token
/// A slot index in the low 32 bits, the slot's generation above it.
///
/// - 32 bits of index: one process holds at most `RLIMIT_NOFILE`
///   connections (20,000 here, a few million on a tuned host), far below
///   4 billion.
/// - 24 bits of generation (chapter 09; 32 before): a token only has to be
///   told apart from the slot's later occupants while it can still be
///   delivered, which is within one batch of completions or one worker
///   round trip. Confusing two would take 2²⁴ reuses of one slot in that
///   window. The ring's user data needs the other 8 bits (op.rs).
///
/// Index `u32::MAX` is never issued by a slab; [`Token::reserved`] uses it
/// for the descriptors that are not connections (listener, signalfd, the
/// workers' eventfd).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u64);

impl Token {
    const fn new(index: u32, generation: u32) -> Token {
        Token(((generation as u64) << 32) | index as u64)
    }

    /// A token no slab will ever issue, for a non-connection descriptor;
    /// `n` tells them apart (e.g. 0 = listener, 1 = signals, 2 = waker).
    pub const fn reserved(n: u32) -> Token {
        Token::new(u32::MAX, n)
    }

    /// The index and generation as one number (op.rs packs it into user data).
    #[cfg(test)]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The token `bits` made.
    pub const fn from_bits(data: u64) -> Token {
        Token(data)
    }

    pub const fn index(self) -> u32 {
        self.0 as u32
    }

    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}@{})", self.index(), self.generation())
    }
}
// ANCHOR_END: token

// ANCHOR: slab
// ANCHOR: slab_1
/// Connection state for every open connection, in one contiguous `Vec`.
/// Inserting reuses the most recently freed slot (its memory is likely
/// still in cache); the `Vec` only grows when every slot is full, so in
/// steady state (connections coming and going, never more than the peak)
/// `insert` and `remove` allocate nothing.
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    /// Head of the free list: the index of a vacant entry, or `NO_SLOT`.
    next_free: u32,
    len: usize,
    /// The generation a newly pushed slot starts at: above every generation
    /// a slot dropped by [`Slab::shrink_if_mostly_empty`] had, so a stale
    /// token for a dropped slot never matches whoever gets its index later.
    fresh_generation: u32,
}

struct Entry<T> {
    /// Bumped when the slot is emptied, so tokens for the old occupant stop
    /// matching before the slot can be reused.
    generation: u32,
    slot: Slot<T>,
}

enum Slot<T> {
    Occupied(T),
    /// A free slot, linking to the next free one (a free list kept inside
    /// the vacant entries themselves: it needs no memory of its own).
    Vacant {
        next_free: u32,
    },
}

const NO_SLOT: u32 = u32::MAX;
/// A slab this small is never shrunk: 1024 slots of a few dozen bytes are
/// not worth the bookkeeping (and the server starts with this many).
const SMALL_SLAB: usize = 1024;

/// Chapter 09 keeps 24 bits of generation: the top 8 bits of a completion's
/// user data say which operation it is (see op.rs).
pub const GENERATION_MASK: u32 = 0x00FF_FFFF;

impl<T> Slab<T> {
    pub const fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            next_free: NO_SLOT,
            len: 0,
            fresh_generation: 0,
        }
    }

    /// A slab that holds `capacity` values before it allocates again.
    pub fn with_capacity(capacity: usize) -> Slab<T> {
        Slab {
            entries: Vec::with_capacity(capacity),
            next_free: NO_SLOT,
            len: 0,
            fresh_generation: 0,
        }
    }

    /// Bytes one slot takes, occupied or not: the slab's share of the
    /// memory of one connection.
    #[cfg(test)]
    pub const fn entry_size() -> usize {
        size_of::<Entry<T>>()
    }

    /// Values stored (counted closed at shutdown).
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots in use or on the free list: every token's index is below it.
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// Slots allocated (occupied or free) before the `Vec` must grow.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    // ANCHOR_END: slab_1
    // ANCHOR: insert_signature
    /// Stores `value` and returns the token that names it.
    ///
    /// # Panics
    ///
    /// If the slab already has `u32::MAX` slots (4 billion connections:
    /// descriptors run out long before).
    pub fn insert(&mut self, value: T) -> Token {
        // ANCHOR_END: insert_signature
        self.len += 1;
        if self.next_free != NO_SLOT {
            let index = self.next_free;
            let entry = &mut self.entries[index as usize];
            if let Slot::Vacant { next_free } = entry.slot {
                self.next_free = next_free;
            }
            entry.slot = Slot::Occupied(value);
            return Token::new(index, entry.generation);
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&index| index != NO_SLOT)
            .expect("a slab holds fewer than u32::MAX values");
        self.entries.push(Entry {
            generation: self.fresh_generation,
            slot: Slot::Occupied(value),
        });
        Token::new(index, self.fresh_generation)
    }
    // ANCHOR: slab_2

    /// The value `token` names, or `None` if that value was removed (even if
    /// its slot has a new occupant since: the generation tells them apart).
    #[cfg(test)]
    pub fn get(&self, token: Token) -> Option<&T> {
        match self.entries.get(token.index() as usize) {
            Some(Entry {
                generation,
                slot: Slot::Occupied(value),
            }) if *generation == token.generation() => Some(value),
            _ => None,
        }
    }

    // ANCHOR_END: slab_2
    // ANCHOR: get_mut_signature
    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        // ANCHOR_END: get_mut_signature
        match self.entries.get_mut(token.index() as usize) {
            Some(Entry {
                generation,
                slot: Slot::Occupied(value),
            }) if *generation == token.generation() => Some(value),
            _ => None,
        }
    }
    // ANCHOR: slab_3

    /// The token of whatever occupies slot `index` now, `None` if it is
    /// vacant. For the timer wheel, which knows connections by slot index
    /// only: the wheel's timer for a slot is cancelled when its connection
    /// is removed, so a timer that fires names the current occupant.
    pub fn token_at(&self, index: usize) -> Option<Token> {
        match self.entries.get(index)? {
            Entry {
                generation,
                slot: Slot::Occupied(_),
            } => Some(Token::new(u32::try_from(index).ok()?, *generation)),
            Entry {
                slot: Slot::Vacant { .. },
                ..
            } => None,
        }
    }

    // ANCHOR_END: slab_3
    // ANCHOR: remove_signature
    /// Takes the value out and frees its slot; `None` if `token` is stale.
    pub fn remove(&mut self, token: Token) -> Option<T> {
        // ANCHOR_END: remove_signature
        let index = token.index();
        let entry = self.entries.get_mut(index as usize)?;
        if entry.generation != token.generation() || matches!(entry.slot, Slot::Vacant { .. }) {
            return None;
        }
        let vacant = Slot::Vacant {
            next_free: self.next_free,
        };
        let Slot::Occupied(value) = std::mem::replace(&mut entry.slot, vacant) else {
            return None; // checked above
        };
        // From here on every token for the old occupant is stale.
        entry.generation = entry.generation.wrapping_add(1) & GENERATION_MASK;
        self.next_free = index;
        self.len -= 1;
        Some(value)
    }
    // ANCHOR: slab_4

    // ANCHOR: shrink
    /// Gives memory back after a crowd has left: if fewer than a quarter of
    /// the slots are occupied and at least the top half of them is vacant,
    /// drops that vacant tail and returns its memory to the allocator.
    /// Returns whether it did.
    ///
    /// Why bother: a slab grown for 19,000 connections keeps them all
    /// allocated, and a server that keeps its peak memory forever cannot
    /// share the host. Only a vacant *tail* may go: a token is an index,
    /// so a live entry can never move. After a shrink the free list is
    /// rebuilt lowest index first, so new connections fill the bottom and
    /// the next shrink finds a long vacant tail.
    ///
    /// Cheap to call after every remove: when it does nothing it looks at
    /// the vacant tail only (O(1) while the last slot is occupied); when it
    /// shrinks, the O(slots) rebuild at least halves the slab.
    pub fn shrink_if_mostly_empty(&mut self) -> bool {
        let slots = self.entries.len();
        if slots <= SMALL_SLAB || self.len * 4 >= slots {
            return false;
        }
        let vacant = |entry: &Entry<T>| matches!(entry.slot, Slot::Vacant { .. });
        let mut keep = slots;
        while keep > 0 && vacant(&self.entries[keep - 1]) {
            keep -= 1;
        }
        if keep * 2 > slots {
            return false; // a live entry sits in the top half: nothing to gain
        }
        for entry in &self.entries[keep..] {
            // Stale tokens for these slots carry generations below theirs.
            self.fresh_generation = self.fresh_generation.max(entry.generation);
        }
        self.entries.truncate(keep);
        self.entries.shrink_to(keep.max(SMALL_SLAB));
        self.next_free = NO_SLOT;
        for (index, entry) in self.entries.iter_mut().enumerate().rev() {
            if let Slot::Vacant { next_free } = &mut entry.slot {
                *next_free = self.next_free;
                self.next_free = index as u32; // < slots, which fit in u32
            }
        }
        true
    }
    // ANCHOR_END: shrink

    /// Every stored value with its token, in slot order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (Token, &T)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| match &entry.slot {
                Slot::Occupied(value) => Some((Token::new(index as u32, entry.generation), value)),
                Slot::Vacant { .. } => None,
            })
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Slab<T> {
        Slab::new()
    }
}

impl<T> fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slab")
            .field("len", &self.len)
            .field("slots", &self.entries.len())
            .finish()
    }
}
// ANCHOR_END: slab_4
// ANCHOR_END: slab

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_token_survives_the_trip_through_bits() {
        let token = Token::new(12_345, 678);
        let back = Token::from_bits(token.bits());
        assert_eq!(back, token);
        assert_eq!((back.index(), back.generation()), (12_345, 678));
    }

    #[test]
    fn stale_token_is_ignored_after_its_slot_is_reused() {
        // The same-batch scenario: an event for connection A is still in the
        // batch when A is closed and B is accepted into A's slot.
        let mut slab = Slab::new();
        let a = slab.insert("A");
        assert_eq!(slab.remove(a), Some("A"));
        let b = slab.insert("B");
        assert_eq!(a.index(), b.index(), "B reuses A's slot");
        assert_ne!(a, b);
        assert_eq!(slab.get(a), None, "A's late event must not reach B");
        assert_eq!(slab.get_mut(a), None);
        assert_eq!(slab.remove(a), None, "nor close B");
        assert_eq!(slab.get(b), Some(&"B"));
    }

    #[test]
    fn token_at_names_the_current_occupant_only() {
        let mut slab = Slab::new();
        let a = slab.insert("A");
        assert_eq!(slab.token_at(a.index() as usize), Some(a));
        slab.remove(a);
        assert_eq!(slab.token_at(a.index() as usize), None, "vacant");
        let b = slab.insert("B");
        assert_eq!(slab.token_at(b.index() as usize), Some(b));
        assert_ne!(slab.token_at(a.index() as usize), Some(a));
        assert_eq!(slab.token_at(99), None, "never allocated");
    }

    #[test]
    fn freed_slots_are_reused_most_recent_first_without_growing() {
        let mut slab = Slab::with_capacity(4);
        let tokens: Vec<Token> = (0..4).map(|i| slab.insert(i)).collect();
        slab.remove(tokens[1]);
        slab.remove(tokens[3]);
        assert_eq!(slab.len(), 2);
        assert_eq!(slab.insert(10).index(), 3);
        assert_eq!(slab.insert(11).index(), 1);
        assert_eq!(slab.entries.len(), 4, "no new slot while free ones exist");
        assert_eq!(slab.capacity(), 4);
        assert_eq!(slab.insert(12).index(), 4, "full: now it grows");
    }

    #[test]
    fn shrinks_after_a_crowd_leaves_and_remaining_tokens_stay_valid() {
        let mut slab = Slab::new();
        let tokens: Vec<Token> = (0..10_000).map(|i| slab.insert(i)).collect();
        let grown = slab.capacity();
        // Everyone leaves except a few in the bottom part of the slab.
        let stay = [3, 100, 2_000];
        for (i, &token) in tokens.iter().enumerate() {
            if !stay.contains(&i) {
                slab.remove(token);
            }
        }
        assert!(slab.shrink_if_mostly_empty(), "mostly empty, vacant tail");
        assert!(
            slab.capacity() < grown / 4,
            "{} of {grown}",
            slab.capacity()
        );
        assert_eq!(slab.entries.len(), 2_001, "only the vacant tail dropped");
        for i in stay {
            assert_eq!(slab.get(tokens[i]), Some(&i), "live token {i}");
        }
        // A token for a dropped slot stays stale when the index comes back.
        let gone = tokens[9_999];
        let again: Vec<Token> = (0..10_000).map(|i| slab.insert(i)).collect();
        assert!(again.iter().any(|t| t.index() == gone.index()));
        assert_eq!(slab.get(gone), None);
        assert_eq!(slab.remove(gone), None);
        // The rebuilt free list hands out the lowest vacant slots first.
        assert_eq!(again[0].index(), 0);
        assert_eq!(again[1].index(), 1);
        assert_eq!(slab.len(), 10_003);
    }

    #[test]
    fn does_not_shrink_with_a_live_entry_near_the_top() {
        let mut slab = Slab::new();
        let tokens: Vec<Token> = (0..4_000).map(|i| slab.insert(i)).collect();
        for &token in &tokens[..3_999] {
            slab.remove(token);
        }
        assert!(!slab.shrink_if_mostly_empty(), "a live entry pins the top");
        assert_eq!(slab.get(tokens[3_999]), Some(&3_999));
        slab.remove(tokens[3_999]);
        assert!(slab.shrink_if_mostly_empty());
        assert_eq!(slab.entries.len(), 0);
        assert!(slab.is_empty());
        let token = slab.insert(7);
        assert_eq!(slab.get(token), Some(&7));
    }

    #[test]
    fn reserved_tokens_never_match_a_slab_entry() {
        let mut slab = Slab::new();
        let token = slab.insert(1);
        assert_ne!(token, Token::reserved(0));
        assert_eq!(slab.get(Token::reserved(0)), None);
        assert_eq!(slab.remove(Token::reserved(0)), None);
    }

    #[test]
    fn removing_twice_or_a_vacant_slot_returns_none() {
        let mut slab = Slab::new();
        let token = slab.insert(5);
        assert_eq!(slab.remove(token), Some(5));
        assert_eq!(slab.remove(token), None);
        // A forged token with the bumped generation but a vacant slot.
        assert_eq!(slab.remove(Token::new(token.index(), 1)), None);
        assert!(slab.is_empty());
    }

    /// xorshift64: a few lines of deterministic randomness, no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_operations_agree_with_a_hashmap_model() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut slab = Slab::new();
        let mut model: HashMap<Token, u64> = HashMap::new();
        let mut live: Vec<Token> = Vec::new();
        let mut dead: Vec<Token> = Vec::new();
        let mut peak = 0;
        for step in 0..50_000 {
            match rng.below(10) {
                // Insert a bit more often than remove, so the slab swings
                // between growing and reusing.
                0..=3 => {
                    let value = rng.next();
                    let token = slab.insert(value);
                    assert!(model.insert(token, value).is_none(), "token reissued");
                    live.push(token);
                }
                4..=6 if !live.is_empty() => {
                    let token = live.swap_remove(rng.below(live.len()));
                    assert_eq!(slab.remove(token), model.remove(&token));
                    dead.push(token);
                }
                7 if !dead.is_empty() => {
                    let token = dead[rng.below(dead.len())];
                    assert_eq!(slab.get(token), None, "stale token at step {step}");
                    assert_eq!(slab.remove(token), None);
                }
                8 if !live.is_empty() => {
                    let token = live[rng.below(live.len())];
                    let value = slab.get_mut(token).unwrap();
                    *value = value.wrapping_add(1);
                    *model.get_mut(&token).unwrap() += 1;
                }
                _ if !live.is_empty() => {
                    let token = live[rng.below(live.len())];
                    assert_eq!(slab.get(token), model.get(&token));
                }
                _ => {}
            }
            assert_eq!(slab.len(), model.len());
            peak = peak.max(slab.len());
            assert_eq!(slab.entries.len(), peak, "slots never exceed the peak");
        }
        let mut stored: Vec<(Token, u64)> = slab.iter().map(|(t, v)| (t, *v)).collect();
        let mut expected: Vec<(Token, u64)> = model.into_iter().collect();
        stored.sort_by_key(|(t, _)| t.bits());
        expected.sort_by_key(|(t, _)| t.bits());
        assert_eq!(stored, expected);
    }
}
