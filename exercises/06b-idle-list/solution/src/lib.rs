//! Exercise 06 — one timeout for everybody: the idle list.
//!
//! When every connection has the same idle timeout, deadlines are reached in
//! the order of last activity. Keep the connections in a doubly linked list
//! in that order: a touch moves a connection to the back, and expiry pops
//! from the front until it meets one that is not due. Every operation is
//! O(1) (expiry: O(1) per connection reaped), and nothing is rounded to a
//! tick: a connection is closed exactly when its timeout has passed.
//!
//! The links live in a `Vec` indexed by connection key, beside the slab, as
//! chapter 06's timing wheel keeps them: no allocation per timer.

use std::time::{Duration, Instant};

/// "No key": the end of the list, or an empty list's head and tail.
const NIL: u32 = u32::MAX;

/// One connection's place in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The connection that was active just before this one, or `NIL`.
    prev: u32,
    /// The connection that was active just after this one, or `NIL`.
    next: u32,
    /// When it last moved data; `None` if it is not in the list.
    last_active: Option<Instant>,
}

impl Link {
    const UNLINKED: Link = Link {
        prev: NIL,
        next: NIL,
        last_active: None,
    };
}

/// Connections in order of last activity, idle the longest at the front.
#[derive(Debug)]
pub struct IdleList {
    timeout: Duration,
    /// One link per connection key, indexed like the slab.
    links: Vec<Link>,
    /// Idle the longest: the next to expire.
    head: u32,
    /// Active most recently.
    tail: u32,
    len: usize,
}

impl IdleList {
    /// An empty list that closes connections idle for `timeout`.
    pub fn new(timeout: Duration) -> IdleList {
        IdleList {
            timeout,
            links: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// How many connections are in the list.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `key` is in the list.
    pub fn is_armed(&self, key: usize) -> bool {
        self.links
            .get(key)
            .is_some_and(|link| link.last_active.is_some())
    }

    /// `key` moved data at `now` (or was just accepted): it goes to the back.
    pub fn touch(&mut self, key: usize, now: Instant) {
        if self.is_armed(key) {
            self.unlink(key);
        }
        self.push_back(key, now);
    }

    /// Takes `key` out (its connection closed). Returns whether it was in.
    pub fn cancel(&mut self, key: usize) -> bool {
        if !self.is_armed(key) {
            return false;
        }
        self.unlink(key);
        true
    }

    /// Pops every connection idle for at least the timeout, front first,
    /// calling `on_expired(key)` for each. Returns how many.
    pub fn expire(&mut self, now: Instant, mut on_expired: impl FnMut(usize)) -> usize {
        let mut expired = 0;
        while self.head != NIL {
            let key = self.head as usize;
            let Some(last_active) = self.links[key].last_active else {
                break; // cannot happen: every key in the list has a time
            };
            if last_active + self.timeout > now {
                break; // everyone behind was active later still
            }
            self.unlink(key);
            expired += 1;
            on_expired(key);
        }
        expired
    }

    /// How long until the front connection's timeout, `None` if the list is
    /// empty: the `epoll_wait` timeout.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let front = self.links.get(self.head as usize)?;
        let deadline = front.last_active? + self.timeout;
        Some(deadline.saturating_duration_since(now))
    }

    /// Appends `key` at the back, active at `now`.
    fn push_back(&mut self, key: usize, now: Instant) {
        assert!(key < NIL as usize, "keys must fit in u32");
        if key >= self.links.len() {
            self.links.resize(key + 1, Link::UNLINKED);
        }
        self.links[key] = Link {
            prev: self.tail,
            next: NIL,
            last_active: Some(now),
        };
        if self.tail == NIL {
            self.head = key as u32;
        } else {
            self.links[self.tail as usize].next = key as u32;
        }
        self.tail = key as u32;
        self.len += 1;
    }

    /// Takes `key` out of the list; its neighbours close the gap.
    fn unlink(&mut self, key: usize) {
        let Link { prev, next, .. } = self.links[key];
        if prev == NIL {
            self.head = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
        self.links[key] = Link::UNLINKED;
        self.len -= 1;
    }
}
