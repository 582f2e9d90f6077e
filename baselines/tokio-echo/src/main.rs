//! Baseline: the echo service written the way most Rust programmers would
//! write it with tokio: an accept loop that spawns a task per connection.
//!
//! It is here so that every measurement of our hand-built servers has a real,
//! widely used peer beside it. It keeps the same contract as the chapters
//! (flags, `listening on`, half-close, back-pressure, EMFILE, summary line),
//! and otherwise stays as plain as the tokio tutorial.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Echo server, one tokio task per client (c1m-rs baseline).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Microseconds of CPU busy-work per newline received, before echoing it.
    #[arg(long, default_value_t = 0)]
    work_us: u64,

    /// Runtime worker threads (default: one per core). 1 runs tokio's
    /// single-threaded `current_thread` runtime.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
}

// ANCHOR: runtime
fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n as usize)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(args));
    // Client tasks may still be mid-connection; dropping them closes them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
// ANCHOR_END: runtime

// ANCHOR: accept_loop
async fn serve(args: Args) -> ExitCode {
    let listener = match TcpListener::bind(&args.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e} (pick another --addr)", args.addr);
            return ExitCode::from(2);
        }
    };
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot install the SIGINT/SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    }
    let _ = io::stdout().flush();

    let mut connections_served: u64 = 0;
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                connections_served += 1;
                let work_us = args.work_us;
                tokio::spawn(async move {
                    // A client that resets only ends its own task.
                    let _ = handle_client(stream, work_us).await;
                });
            }
            // The naive `listener.accept().await?` returns here and the
            // whole server dies on EMFILE. The connection stays queued in
            // the kernel, so an immediate retry would spin; wait a little.
            Err(e) => {
                if last_accept_error.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    eprintln!("accept: {e}; pausing accepts for 50 ms");
                    last_accept_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    println!("summary: connections_served={connections_served}");
    let _ = io::stdout().flush();
    ExitCode::SUCCESS
}
// ANCHOR_END: accept_loop

// ANCHOR: handle_client
/// Echo one client. Reading into one fixed buffer and writing all of it
/// before reading again is the back-pressure: a client that does not read
/// stalls `write_all`, and we stop reading it.
async fn handle_client(mut stream: TcpStream, work_us: u64) -> io::Result<()> {
    // Not in tokio's example, but every server here sets it: small echoes
    // must not wait for the client's delayed ACK.
    stream.set_nodelay(true)?;
    // 1 KiB, as in tokio's own `examples/echo.rs`: it lives as long as the
    // connection, so it is most of what an idle connection costs here.
    let mut buffer = vec![0u8; 1024];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            // Client half-closed; everything it sent has been written back.
            return stream.shutdown().await;
        }
        let received = &buffer[..n];
        if work_us == 0 {
            stream.write_all(received).await?;
            continue;
        }
        for piece in received.split_inclusive(|&byte| byte == b'\n') {
            if piece.ends_with(b"\n") {
                // Blocks this worker thread, as CPU work in a task does.
                busy_work(Duration::from_micros(work_us));
            }
            stream.write_all(piece).await?;
        }
    }
}
// ANCHOR_END: handle_client

/// Stand-in for handling a request: burn CPU (not a sleep) for `duration`.
fn busy_work(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}
