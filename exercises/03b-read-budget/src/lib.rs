//! Exercise 03 — a read budget and a ready list.
//!
//! An edge-triggered server must drain each socket, but "read until empty"
//! lets one client that sends without pause keep the loop to itself. The
//! fix: at most `READS_PER_TURN` reads per connection per turn; a connection
//! that spends its budget with input left goes to the back of a ready list
//! and gets another turn after the others. Write `take_turn` and
//! `ReadyList::run_round`.

use std::collections::VecDeque;

/// The read budget: reads per connection per turn.
pub const READS_PER_TURN: usize = 4;

/// What one read from a connection returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadResult {
    /// Some bytes (the caller has already echoed them).
    Data,
    /// Nothing waiting: the socket is drained (`EAGAIN`).
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

/// Anything we can read from, one chunk per call (a socket, or a test fake).
pub trait Input {
    fn read_chunk(&mut self) -> ReadResult;
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEnd {
    /// The input is empty: wait for the next edge.
    Drained,
    /// The input is finished.
    Eof,
    /// `READS_PER_TURN` reads returned data and there may be more: this
    /// connection needs another turn, and no edge will ask for it.
    BudgetSpent,
}

/// Reads from `input` until it would block, reaches EOF, or
/// `READS_PER_TURN` reads have returned data, whichever comes first.
pub fn take_turn(input: &mut impl Input) -> TurnEnd {
    let _ = input;
    todo!("read at most READS_PER_TURN times; stop early on WouldBlock or Eof")
}

/// Connections (by index) that spent their budget and wait for another
/// turn, oldest first, each at most once.
#[derive(Debug, Default)]
pub struct ReadyList {
    queue: VecDeque<usize>,
}

impl ReadyList {
    pub fn new() -> ReadyList {
        ReadyList::default()
    }

    /// Puts connection `id` at the back, unless it is already waiting.
    pub fn push(&mut self, id: usize) {
        if !self.queue.contains(&id) {
            self.queue.push_back(id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// One round: every connection that was on the list when the round
    /// began gets one turn (`take_turn`), oldest first; those that spend
    /// their budget again go back on the list, behind everyone else, for
    /// the *next* round (not this one). Returns the ids served, in order.
    pub fn run_round<I: Input>(&mut self, inputs: &mut [I]) -> Vec<usize> {
        let _ = inputs;
        todo!("serve each queued id once, requeue the ones with BudgetSpent")
    }
}
