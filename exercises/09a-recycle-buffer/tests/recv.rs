//! A multishot receive completion, handled: the bytes reach their
//! connection, every buffer goes back to the ring exactly once (even when
//! the connection is gone), and a receive that has ended is re-armed unless
//! the client is done.

use ex09_recycle_buffer::{BufferRing, Completion, ECONNRESET, ENOBUFS, Reactor, Token};

/// What the kernel does when `data` arrives for `token`: take a buffer and
/// post a completion naming it, or post `-ENOBUFS` (which ends the
/// multishot receive) if the ring is empty.
fn arrive(reactor: &mut Reactor, token: Token, data: &[u8]) -> Completion {
    match reactor.buffers.kernel_fill(data) {
        Some((id, len)) => Completion {
            token,
            result: i32::try_from(len).unwrap(),
            buffer_id: Some(id),
            more: true,
        },
        None => Completion {
            token,
            result: -ENOBUFS,
            buffer_id: None,
            more: false,
        },
    }
}

#[test]
fn data_reaches_its_connection_and_the_buffer_goes_back() {
    let mut reactor = Reactor::new(BufferRing::new(4, 64));
    let a = reactor.accept();
    let b = reactor.accept();
    let c = arrive(&mut reactor, a, b"ping\n");
    reactor.on_recv(c);
    let c = arrive(&mut reactor, b, b"pong\n");
    reactor.on_recv(c);
    assert_eq!(reactor.connection(a).unwrap().received, b"ping\n");
    assert_eq!(reactor.connection(b).unwrap().received, b"pong\n");
    assert_eq!(
        reactor.buffers.available(),
        4,
        "both buffers back in the ring"
    );
    assert!(
        reactor.connection(a).unwrap().recv_armed,
        "MORE: still armed"
    );
    assert!(reactor.to_rearm.is_empty());
}

#[test]
fn a_completion_for_a_closed_connection_returns_its_buffer_and_reaches_no_one() {
    let mut reactor = Reactor::new(BufferRing::new(4, 64));
    let a = reactor.accept();
    // Data for A is already in a completion when A is closed (a reset seen
    // earlier in the same batch, an idle timeout) and B takes A's slot.
    let late = arrive(&mut reactor, a, b"for A only\n");
    reactor.close(a);
    let b = reactor.accept();
    assert_eq!(a.index, b.index, "B reuses A's slot");
    reactor.on_recv(late);
    assert_eq!(reactor.stale_completions, 1);
    assert!(
        reactor.connection(b).unwrap().received.is_empty(),
        "A's bytes must not reach B"
    );
    assert_eq!(
        reactor.buffers.available(),
        4,
        "the buffer came back anyway"
    );
}

#[test]
fn stale_completions_never_drain_the_ring() {
    let mut reactor = Reactor::new(BufferRing::new(4, 64));
    for round in 0..10_000 {
        let token = reactor.accept();
        let late = arrive(&mut reactor, token, b"x\n");
        assert!(
            late.buffer_id.is_some(),
            "round {round}: the ring ran dry: a buffer was not given back"
        );
        reactor.close(token);
        reactor.on_recv(late);
    }
    assert_eq!(reactor.stale_completions, 10_000);
    assert_eq!(reactor.buffers.available(), 4);
}

#[test]
fn eof_ends_the_receive_without_a_rearm() {
    let mut reactor = Reactor::new(BufferRing::new(4, 64));
    let a = reactor.accept();
    reactor.on_recv(Completion {
        token: a,
        result: 0,
        buffer_id: None,
        more: false,
    });
    let connection = reactor.connection(a).unwrap();
    assert!(connection.peer_closed);
    assert!(!connection.recv_armed);
    assert!(
        reactor.to_rearm.is_empty(),
        "nothing more will come: no re-arm"
    );
}

#[test]
fn enobufs_ends_the_receive_and_asks_for_a_rearm() {
    let mut reactor = Reactor::new(BufferRing::new(1, 64));
    let a = reactor.accept();
    let b = reactor.accept();
    let first = arrive(&mut reactor, a, b"takes the only buffer\n");
    let starved = arrive(&mut reactor, b, b"finds none\n");
    assert_eq!(starved.result, -ENOBUFS);
    reactor.on_recv(first);
    reactor.on_recv(starved);
    let connection = reactor.connection(b).unwrap();
    assert!(!connection.recv_armed, "ENOBUFS ends a multishot receive");
    assert!(!connection.peer_closed);
    assert_eq!(reactor.to_rearm, vec![b], "re-armed once buffers are back");
    assert_eq!(reactor.buffers.available(), 1);
}

#[test]
fn a_receive_that_ends_with_data_delivers_it_and_is_rearmed() {
    let mut reactor = Reactor::new(BufferRing::new(2, 64));
    let a = reactor.accept();
    let mut last = arrive(&mut reactor, a, b"last of this shot\n");
    last.more = false;
    reactor.on_recv(last);
    let connection = reactor.connection(a).unwrap();
    assert_eq!(connection.received, b"last of this shot\n");
    assert!(!connection.recv_armed);
    assert_eq!(reactor.to_rearm, vec![a]);
    assert_eq!(reactor.buffers.available(), 2);
}

#[test]
fn a_reset_closes_the_connection() {
    let mut reactor = Reactor::new(BufferRing::new(2, 64));
    let a = reactor.accept();
    reactor.on_recv(Completion {
        token: a,
        result: -ECONNRESET,
        buffer_id: None,
        more: false,
    });
    assert!(reactor.connection(a).is_none());
    assert!(reactor.to_rearm.is_empty());
}
