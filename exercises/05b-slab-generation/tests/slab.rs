//! Tokens name a value, not a slot: once the value is removed, its token
//! finds nothing, even after the slot is reused.

use std::collections::HashMap;

use ex05_slab_generation::{Slab, Token};

#[test]
fn a_token_names_what_was_inserted() {
    let mut slab = Slab::new();
    let a = slab.insert("a");
    let b = slab.insert("b");
    assert_eq!(slab.get_mut(a), Some(&mut "a"));
    assert_eq!(slab.get_mut(b), Some(&mut "b"));
    assert_eq!(slab.len(), 2);
}

#[test]
fn a_stale_token_is_ignored_after_its_slot_is_reused() {
    // The same-batch scenario: an event for connection A is still in the
    // batch when A is closed and B is accepted into A's slot.
    let mut slab = Slab::new();
    let a = slab.insert("A");
    assert_eq!(slab.remove(a), Some("A"));
    let b = slab.insert("B");
    assert_eq!(a.index(), b.index(), "B reuses A's slot");
    assert_ne!(a, b, "but not A's token");
    assert_eq!(slab.get_mut(a), None, "A's late event must not reach B");
    assert_eq!(slab.remove(a), None, "nor close B");
    assert_eq!(slab.get_mut(b), Some(&mut "B"));
}

#[test]
fn freed_slots_are_reused_most_recent_first_without_growing() {
    let mut slab = Slab::new();
    let tokens: Vec<Token> = (0..4).map(|n| slab.insert(n)).collect();
    slab.remove(tokens[1]);
    slab.remove(tokens[3]);
    assert_eq!(slab.insert(10).index(), 3);
    assert_eq!(slab.insert(11).index(), 1);
    assert_eq!(slab.slots(), 4, "no new slot while free ones exist");
    assert_eq!(slab.insert(12).index(), 4, "full: now it grows");
}

#[test]
fn removing_twice_returns_nothing_the_second_time() {
    let mut slab = Slab::new();
    let token = slab.insert(5);
    assert_eq!(slab.remove(token), Some(5));
    assert_eq!(slab.remove(token), None);
    assert!(slab.is_empty());
}

#[test]
fn a_token_survives_the_trip_through_epoll_data() {
    let mut slab = Slab::new();
    let token = slab.insert(());
    let back = Token::from_epoll_data(token.epoll_data());
    assert_eq!(back, token);
    assert!(slab.get_mut(back).is_some());
}

/// xorshift64: deterministic randomness without a dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_operations_agree_with_a_hashmap() {
    let mut rng = 0x9E37_79B9_7F4A_7C15;
    let mut slab = Slab::new();
    let mut model: HashMap<Token, u64> = HashMap::new();
    let mut live: Vec<Token> = Vec::new();
    let mut dead: Vec<Token> = Vec::new();
    for step in 0..20_000 {
        let pick = |rng: &mut u64, n: usize| (xorshift(rng) % n as u64) as usize;
        match xorshift(&mut rng) % 8 {
            0..=2 => {
                let value = xorshift(&mut rng);
                let token = slab.insert(value);
                assert!(model.insert(token, value).is_none(), "token reissued");
                live.push(token);
            }
            3..=4 if !live.is_empty() => {
                let token = live.swap_remove(pick(&mut rng, live.len()));
                assert_eq!(slab.remove(token), model.remove(&token));
                dead.push(token);
            }
            5 if !dead.is_empty() => {
                let token = dead[pick(&mut rng, dead.len())];
                assert_eq!(slab.get_mut(token), None, "stale token at step {step}");
            }
            _ if !live.is_empty() => {
                let token = live[pick(&mut rng, live.len())];
                assert_eq!(slab.get_mut(token).copied(), model.get(&token).copied());
            }
            _ => {}
        }
        assert_eq!(slab.len(), model.len());
    }
}
