//! Chapter 03: the chapter 02 server with edge-triggered epoll: register
//! once, drain until empty, and share the loop fairly with a read budget and
//! a ready list. See book/src/ch03-epoll-edge-triggered.md.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "chapter 03 uses epoll, which exists only on Linux; run it on Linux (a VM or container is fine)"
);

mod connection;
mod server;
mod sys;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::server::{Config, Server};
use crate::sys::{Listener, SignalFd};

/// An echo server: one thread, one edge-triggered epoll instance, every client.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Microseconds of CPU work (a busy loop) per newline received, done
    /// before echoing, on the event-loop thread.
    #[arg(long, default_value_t = 0)]
    work_us: u64,

    /// Stop reading a client while this many bytes of its echo are unsent
    /// (back-pressure).
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_pending: u64,

    /// Demonstrates the edge-triggered stall; never use. Reads only once per
    /// edge, so bytes beyond one read wait until the client sends more.
    #[arg(long)]
    et_read_once: bool,
}

/// Listen queue length; the kernel silently caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

// ANCHOR: main
fn main() -> ExitCode {
    // First, before any other thread could exist: block SIGINT/SIGTERM and
    // receive them through a descriptor in the same epoll as the sockets.
    let signals = match SignalFd::for_shutdown_signals() {
        Ok(signals) => signals,
        Err(e) => return fail(1, format_args!("cannot set up signalfd: {e}")),
    };
    let args = Args::parse();
    let addr = match resolve(&args.addr) {
        Ok(addr) => addr,
        Err(e) => return fail(2, format_args!("cannot use --addr {}: {e}", args.addr)),
    };
    let listener = match Listener::bind(addr, LISTEN_BACKLOG) {
        Ok(listener) => listener,
        Err(e) => {
            return fail(
                2,
                format_args!(
                    "cannot listen on {addr}: {e}; pick another --addr (port 0 picks a free one)"
                ),
            );
        }
    };
    let local_addr = match listener.local_addr() {
        Ok(local_addr) => local_addr,
        Err(e) => return fail(1, format_args!("getsockname: {e}")),
    };
    let config = Config {
        work_per_newline: Duration::from_micros(args.work_us),
        max_pending: usize::try_from(args.max_pending).unwrap_or(usize::MAX),
        et_read_once: args.et_read_once,
    };
    let server = match Server::new(listener, signals, config) {
        Ok(server) => server,
        Err(e) => return fail(1, format_args!("cannot start the event loop: {e}")),
    };

    // stdout is a pipe when a test or script runs us: flush so the line
    // arrives now, not when the buffer fills. (`writeln!`, not `println!`:
    // if whoever reads our stdout has gone away, that is no reason to panic.)
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {local_addr}").and_then(|()| stdout.flush());

    let totals = match server.run() {
        Ok(totals) => totals,
        Err(e) => return fail(1, format_args!("event loop failed: {e}")),
    };
    let calls = sys::counts();
    let _ = writeln!(
        stdout,
        "summary: connections_served={} shed={} epoll_wait={} epoll_ctl={} read={} write={} accept={} requeued={}",
        totals.connections_served,
        totals.connections_shed,
        calls.epoll_wait,
        calls.epoll_ctl,
        calls.read,
        calls.write,
        calls.accept,
        totals.requeued,
    );
    let _ = stdout.flush();
    ExitCode::SUCCESS
}
// ANCHOR_END: main

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the name resolved to no address"))
}

fn fail(code: u8, message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
