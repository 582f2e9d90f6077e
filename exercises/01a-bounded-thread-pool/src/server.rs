//! The chapter 01 echo server with its one change: client handlers run on
//! a [`ThreadPool`] instead of a thread each.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use crate::ThreadPool;

/// Accept clients forever and echo each one on a pool thread.
///
/// In chapter 01 this was `thread::spawn(move || handle_client(stream))`.
/// With a pool, at most `n` clients are served at once; the others wait in
/// the pool's queue, connected but unanswered, until a worker is free.
pub fn serve(listener: TcpListener, pool: ThreadPool) -> io::Result<()> {
    loop {
        let (stream, _peer) = listener.accept()?;
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
