//! What a completion is about. The kernel hands back, untouched, the 64-bit
//! user data we put in each submission: we pack into it which operation it
//! was and which connection it was for, as a slab token (slot index and
//! generation). A completion for a connection closed since carries the old
//! generation, and the slab answers `None` for it: the generation check of
//! chapter 05 again, now for completions instead of readiness events.

use crate::slab::{GENERATION_MASK, Token};

// ANCHOR: op
/// The operation a completion belongs to: the top 8 bits of its user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The multishot accept on the listener.
    Accept = 1,
    /// A connection's multishot receive.
    Recv = 2,
    /// A connection's send.
    Send = 3,
    /// An `AsyncCancel` we submitted (its own completion; ignored).
    Cancel = 4,
    /// The poll on the stop eventfd: main says stop.
    Stop = 5,
    /// The poll on the workers' eventfd: results are back.
    Waker = 6,
}

/// `op` in the top 8 bits, then 24 bits of generation, then 32 of index.
pub fn user_data(op: Op, token: Token) -> u64 {
    let generation = u64::from(token.generation() & GENERATION_MASK);
    (op as u64) << 56 | generation << 32 | u64::from(token.index())
}

/// The operation and token packed by [`user_data`]; `None` for a value we
/// never submit.
pub fn decode(user_data: u64) -> Option<(Op, Token)> {
    let op = match user_data >> 56 {
        1 => Op::Accept,
        2 => Op::Recv,
        3 => Op::Send,
        4 => Op::Cancel,
        5 => Op::Stop,
        6 => Op::Waker,
        _ => return None,
    };
    Some((op, Token::from_bits(user_data & 0x00FF_FFFF_FFFF_FFFF)))
}
// ANCHOR_END: op

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::Slab;

    #[test]
    fn user_data_round_trips_op_and_token() {
        let mut slab = Slab::new();
        let token = slab.insert(7);
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Cancel,
            Op::Stop,
            Op::Waker,
        ] {
            assert_eq!(decode(user_data(op, token)), Some((op, token)));
        }
        assert_eq!(decode(0), None);
    }

    #[test]
    fn a_completion_for_a_closed_connection_finds_no_one() {
        let mut slab = Slab::new();
        let old = slab.insert("first client");
        let in_flight = user_data(Op::Recv, old);
        slab.remove(old);
        // The slot is reused at once by the next client.
        let new = slab.insert("second client");
        assert_eq!(new.index(), old.index());
        let (_, token) = decode(in_flight).expect("one of ours");
        assert!(
            slab.get_mut(token).is_none(),
            "stale completion must not reach the new client"
        );
        assert_eq!(slab.get_mut(new), Some(&mut "second client"));
    }

    #[test]
    fn generations_wrap_within_the_bits_user_data_keeps() {
        let mut slab = Slab::new();
        let mut token = slab.insert(0);
        for _ in 0..(1 << 24) + 3 {
            slab.remove(token);
            token = slab.insert(0);
            let (_, back) = decode(user_data(Op::Send, token)).expect("ours");
            assert_eq!(back, token);
        }
    }
}
