//! A `SO_REUSEPORT` group seen from clients: one port, every member gets
//! connections, and nobody outside the group can take the port.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

use ex07_reuseport_group::bind_reuseport_group;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Accepts everything waiting on `listener` without blocking.
fn accept_waiting(listener: &TcpListener) -> Vec<TcpStream> {
    listener.set_nonblocking(true).unwrap();
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => accepted.push(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return accepted,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn the_group_shares_one_port_picked_by_the_kernel() {
    let group = bind_reuseport_group(loopback(), 4).unwrap();
    assert_eq!(group.len(), 4);
    let first = group[0].local_addr().unwrap();
    assert_ne!(first.port(), 0);
    for listener in &group {
        assert_eq!(listener.local_addr().unwrap(), first);
    }
}

#[test]
fn the_kernel_spreads_connections_over_every_listener() {
    let group = bind_reuseport_group(loopback(), 2).unwrap();
    let addr = group[0].local_addr().unwrap();
    // The handshakes complete in the kernel; the connections wait in the
    // accept queue of whichever listener the hash chose.
    let clients: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let per_listener: Vec<usize> = group.iter().map(|l| accept_waiting(l).len()).collect();
    assert_eq!(
        per_listener.iter().sum::<usize>(),
        clients.len(),
        "{per_listener:?}"
    );
    // 200 connections hashed over 2 listeners: all on one has odds of 2^-199.
    assert!(per_listener.iter().all(|&n| n > 0), "{per_listener:?}");
}

#[test]
fn a_socket_without_the_option_cannot_take_the_port() {
    let group = bind_reuseport_group(loopback(), 2).unwrap();
    let addr = group[0].local_addr().unwrap();
    let intruder = TcpListener::bind(addr);
    assert_eq!(
        intruder.map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::AddrInUse)
    );
}

#[test]
fn a_fixed_port_works_too() {
    // Find a free port, release it, and build the group on it.
    let port = TcpListener::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let group = bind_reuseport_group(addr, 3).unwrap();
    for listener in &group {
        assert_eq!(listener.local_addr().unwrap(), addr);
    }
    let _client = TcpStream::connect(addr).unwrap();
    let accepted: usize = group.iter().map(|l| accept_waiting(l).len()).sum();
    assert_eq!(accepted, 1);
}
