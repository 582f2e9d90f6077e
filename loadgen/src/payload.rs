//! The bytes loadgen sends, and the check that the echo matches them.
//!
//! Every message is `size - 1` payload bytes followed by `\n`. The payload is a
//! window into a fixed table of printable bytes, and where the window starts
//! depends on the connection and the message number. So two consecutive
//! messages, or the same message on two connections, differ: an echo that
//! swaps, repeats, drops or corrupts a byte is caught, not just one that
//! truncates. Generating and checking are `memcpy` and `memcmp` against the
//! table; nothing is allocated per message.

/// How many distinct windows exist. A prime, so that message `seq` and
/// `seq + k` only look alike when `k` is a multiple of it.
const PERIOD: usize = 89;

/// The message bytes for every connection and message number of one run.
#[derive(Debug, Clone)]
pub struct Payload {
    /// `table[k] = b'!' + k % PERIOD`: printable, never `\n`.
    table: Box<[u8]>,
    /// Whole message length including the trailing `\n` (at least 1).
    size: usize,
}

/// Where a byte sits in a connection's stream of messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Message number on this connection, from 0.
    pub seq: u64,
    /// Byte offset inside that message, `0..size`.
    pub offset: usize,
}

impl Payload {
    /// Messages of `size` bytes (`size >= 1`; a size-1 message is just `\n`).
    pub fn new(size: usize) -> Payload {
        let size = size.max(1);
        let table = (0..PERIOD + size - 1)
            .map(|k| b'!' + (k % PERIOD) as u8)
            .collect();
        Payload { table, size }
    }

    /// Whole message length in bytes, including the `\n`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The `size - 1` payload bytes of message `seq` on connection `conn`.
    fn payload(&self, conn: usize, seq: u64) -> &[u8] {
        let start = (conn.wrapping_mul(31) as u64).wrapping_add(seq) % PERIOD as u64;
        let start = start as usize;
        &self.table[start..start + self.size - 1]
    }

    /// Copies the bytes of message `at.seq` from `at.offset` into `out`, up to
    /// the end of the message or of `out`; returns how many were copied.
    pub fn fill(&self, conn: usize, at: Cursor, out: &mut [u8]) -> usize {
        let payload = self.payload(conn, at.seq);
        let want = (self.size - at.offset).min(out.len());
        let from_payload = want.min(payload.len().saturating_sub(at.offset));
        out[..from_payload].copy_from_slice(&payload[at.offset..at.offset + from_payload]);
        if want > from_payload {
            out[from_payload] = b'\n';
        }
        want
    }

    /// Checks that `got` equals the bytes of message `at.seq` from
    /// `at.offset` on. `got` must not run past the end of that message.
    pub fn matches(&self, conn: usize, at: Cursor, got: &[u8]) -> bool {
        debug_assert!(at.offset + got.len() <= self.size);
        let payload = self.payload(conn, at.seq);
        let from_payload = got.len().min(payload.len().saturating_sub(at.offset));
        got[..from_payload] == payload[at.offset..at.offset + from_payload]
            && got[from_payload..].iter().all(|&b| b == b'\n')
    }

    /// Checks a received chunk that may span several messages, advancing
    /// `at` past it. Returns how many messages it completed, or `None` at the
    /// first byte that differs from what was sent.
    pub fn verify(&self, conn: usize, at: &mut Cursor, mut got: &[u8]) -> Option<u64> {
        let mut completed = 0;
        while !got.is_empty() {
            let take = (self.size - at.offset).min(got.len());
            if !self.matches(conn, *at, &got[..take]) {
                return None;
            }
            got = &got[take..];
            at.offset += take;
            if at.offset == self.size {
                at.offset = 0;
                at.seq += 1;
                completed += 1;
            }
        }
        Some(completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(p: &Payload, conn: usize, seq: u64) -> Vec<u8> {
        let mut buf = vec![0; p.size()];
        let n = p.fill(conn, Cursor { seq, offset: 0 }, &mut buf);
        assert_eq!(n, p.size());
        buf
    }

    #[test]
    fn messages_end_in_one_newline_and_differ() {
        let p = Payload::new(64);
        let a = message(&p, 0, 0);
        let b = message(&p, 0, 1);
        let c = message(&p, 1, 0);
        assert_eq!(a.iter().filter(|&&x| x == b'\n').count(), 1);
        assert_eq!(a.last(), Some(&b'\n'));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn verify_accepts_split_echo_and_rejects_a_flipped_byte() {
        let p = Payload::new(10);
        let mut stream = message(&p, 3, 0);
        stream.extend(message(&p, 3, 1));
        let mut at = Cursor::default();
        assert_eq!(p.verify(3, &mut at, &stream[..7]), Some(0));
        assert_eq!(p.verify(3, &mut at, &stream[7..]), Some(2));
        assert_eq!(at, Cursor { seq: 2, offset: 0 });

        stream[12] ^= 1;
        let mut at = Cursor::default();
        assert_eq!(p.verify(3, &mut at, &stream), None);
    }

    #[test]
    fn one_byte_messages_are_just_newlines() {
        let p = Payload::new(1);
        assert_eq!(message(&p, 5, 9), b"\n");
        let mut at = Cursor::default();
        assert_eq!(p.verify(5, &mut at, b"\n\n\n"), Some(3));
        assert_eq!(p.verify(5, &mut at, b"x"), None);
    }
}
