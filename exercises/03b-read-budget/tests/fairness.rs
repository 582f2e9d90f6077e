//! The budget and the ready list against fake connections whose behaviour
//! we control exactly: a flood that never runs dry, and light clients.
#![allow(clippy::unwrap_used)]

use ex03_read_budget::{Input, READS_PER_TURN, ReadResult, ReadyList, TurnEnd, take_turn};

/// A fake connection: `chunks` reads of data waiting (`None`: endless),
/// then EOF if `then_eof`, else nothing. Counts the reads it served.
#[derive(Debug)]
struct Fake {
    chunks: Option<usize>,
    then_eof: bool,
    reads: usize,
    data_reads: usize,
}

impl Fake {
    fn flood() -> Fake {
        Fake {
            chunks: None,
            then_eof: false,
            reads: 0,
            data_reads: 0,
        }
    }

    fn light(chunks: usize) -> Fake {
        Fake {
            chunks: Some(chunks),
            then_eof: false,
            reads: 0,
            data_reads: 0,
        }
    }
}

impl Input for Fake {
    fn read_chunk(&mut self) -> ReadResult {
        self.reads += 1;
        match &mut self.chunks {
            None => {
                self.data_reads += 1;
                ReadResult::Data
            }
            Some(0) if self.then_eof => ReadResult::Eof,
            Some(0) => ReadResult::WouldBlock,
            Some(left) => {
                *left -= 1;
                self.data_reads += 1;
                ReadResult::Data
            }
        }
    }
}

#[test]
fn a_flood_gets_exactly_one_budget_per_turn() {
    let mut flood = Fake::flood();
    assert_eq!(take_turn(&mut flood), TurnEnd::BudgetSpent);
    assert_eq!(flood.reads, READS_PER_TURN);
}

#[test]
fn a_light_client_is_drained_in_one_turn() {
    let mut light = Fake::light(2);
    assert_eq!(take_turn(&mut light), TurnEnd::Drained);
    assert_eq!(light.data_reads, 2);
    assert_eq!(light.reads, 3, "two chunks, then the read that says empty");
}

#[test]
fn eof_ends_the_turn() {
    let mut closing = Fake {
        chunks: Some(1),
        then_eof: true,
        reads: 0,
        data_reads: 0,
    };
    assert_eq!(take_turn(&mut closing), TurnEnd::Eof);
    assert_eq!(closing.reads, 2);
}

#[test]
fn exactly_budget_sized_input_is_not_mistaken_for_drained() {
    // READS_PER_TURN chunks of data: the budget runs out before the read
    // that would say "empty", so the turn must end BudgetSpent.
    let mut exact = Fake::light(READS_PER_TURN);
    assert_eq!(take_turn(&mut exact), TurnEnd::BudgetSpent);
    assert_eq!(take_turn(&mut exact), TurnEnd::Drained);
}

#[test]
fn flooding_client_does_not_starve_light_ones() {
    // 0 floods forever; 1..=3 each have a little to say.
    let mut inputs = vec![
        Fake::flood(),
        Fake::light(2),
        Fake::light(READS_PER_TURN + 1),
        Fake::light(1),
    ];
    let mut ready = ReadyList::new();
    for id in 0..inputs.len() {
        ready.push(id);
    }

    let first = ready.run_round(&mut inputs);
    assert_eq!(
        first,
        vec![0, 1, 2, 3],
        "everyone gets a turn in the first round"
    );
    assert_eq!(
        inputs[0].data_reads, READS_PER_TURN,
        "the flood got one budget, no more"
    );
    assert_eq!(inputs[1].data_reads, 2);
    assert_eq!(inputs[3].data_reads, 1);

    // Client 2 had more than one budget's worth: it is requeued behind the flood.
    let second = ready.run_round(&mut inputs);
    assert_eq!(second, vec![0, 2]);
    assert_eq!(inputs[2].data_reads, READS_PER_TURN + 1);

    // From now on only the flood is left, one budget per round, forever.
    for round in 3..20 {
        assert_eq!(ready.run_round(&mut inputs), vec![0]);
        assert_eq!(inputs[0].data_reads, READS_PER_TURN * round);
    }
    assert_eq!(ready.len(), 1);
}

#[test]
fn a_requeued_connection_waits_for_the_next_round() {
    let mut inputs = vec![Fake::flood()];
    let mut ready = ReadyList::new();
    ready.push(0);
    assert_eq!(
        ready.run_round(&mut inputs),
        vec![0],
        "one turn per round, not a loop"
    );
    assert_eq!(inputs[0].reads, READS_PER_TURN);
    assert!(!ready.is_empty());
}

#[test]
fn a_connection_is_never_queued_twice() {
    let mut ready = ReadyList::new();
    ready.push(5);
    ready.push(5);
    assert_eq!(ready.len(), 1);
}
