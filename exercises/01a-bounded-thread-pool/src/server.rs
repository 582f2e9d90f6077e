//! The chapter 01 echo server with its one change: client handlers run on
//! a [`ThreadPool`] instead of a thread each.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::ThreadPool;

/// Accept clients forever and echo each one on a pool thread.
///
/// In chapter 01 this was `thread::spawn(move || handle_client(stream))`.
/// With a pool, at most `n` clients are served at once; the others wait in
/// the pool's queue, connected but unanswered, until a worker is free.
///
/// A failed `accept` is not fatal (chapter 01's trap: `listener.accept()?`
/// would end the server the first time descriptors run out). Out of
/// descriptors, or any other error, pause briefly and try again: the
/// backlog keeps the waiting clients, and a closing client frees a
/// descriptor. The loop never returns.
pub fn serve(listener: TcpListener, pool: ThreadPool) -> io::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            // The client gave up before we accepted it, or a signal
            // interrupted the call: nothing to wait for.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            // EMFILE/ENFILE and the rest: retrying at once would spin a core.
            Err(e) => {
                eprintln!("accept: {e}; pausing accepts for 50 ms");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        pool.execute(move || {
            let _ = handle_client(stream);
        });
    }
}

/// Echo one client until it closes its side, then close ours.
pub fn handle_client(mut stream: TcpStream) -> io::Result<()> {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => stream.write_all(&buffer[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.shutdown(Shutdown::Write)
}
