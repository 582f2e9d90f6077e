//! The lesson: a bounded pool bounds the threads, and so it bounds the
//! clients served at once. Clients beyond the bound are connected (the
//! kernel accepted them into the listen backlog) but nobody answers them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ex01_bounded_thread_pool::ThreadPool;
use ex01_bounded_thread_pool::server::serve;

/// Generous: only reached when something is broken, never a measurement.
const FAILSAFE: Duration = Duration::from_secs(30);

fn start_server(pool_threads: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The server runs until the test process exits.
    thread::spawn(move || serve(listener, ThreadPool::new(pool_threads)));
    addr
}

/// Connect, send `line`, and wait for its echo.
fn connect_and_echo(addr: SocketAddr, line: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(FAILSAFE)).unwrap();
    stream.write_all(line).unwrap();
    let mut echo = vec![0u8; line.len()];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(echo, line);
    stream
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    FirstClientLeft,
    ThirdClientServed,
}

#[test]
fn third_client_is_not_served_until_one_of_two_pool_threads_is_free() {
    let addr = start_server(2);
    let events = Arc::new(Mutex::new(Vec::new()));

    // Two clients take both pool threads and keep their connections open.
    let first = connect_and_echo(addr, b"first\n");
    let mut second = connect_and_echo(addr, b"second\n");

    // The third connects and sends at once, but its echo can only come
    // from a free pool thread.
    let third = {
        let events = Arc::clone(&events);
        thread::spawn(move || {
            let _third = connect_and_echo(addr, b"third\n");
            events.lock().unwrap().push(Event::ThirdClientServed);
        })
    };

    // Give a server without the bound every chance to answer it early.
    thread::sleep(Duration::from_millis(200));
    events.lock().unwrap().push(Event::FirstClientLeft);
    drop(first);
    third.join().unwrap();

    assert_eq!(
        *events.lock().unwrap(),
        [Event::FirstClientLeft, Event::ThirdClientServed]
    );
    // The second client was never disturbed.
    second.write_all(b"still here\n").unwrap();
    let mut echo = [0u8; 11];
    second.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here\n");
}

#[test]
fn clients_within_the_bound_are_all_served_at_once() {
    let addr = start_server(3);
    // All three stay connected while the others are served.
    let clients: Vec<TcpStream> = [&b"one\n"[..], b"two\n", b"three\n"]
        .into_iter()
        .map(|line| connect_and_echo(addr, line))
        .collect();
    assert_eq!(clients.len(), 3);
}
