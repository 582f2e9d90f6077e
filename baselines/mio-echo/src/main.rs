//! Baseline: the echo service as one mio event loop.
//!
//! mio is the portable readiness layer under tokio (epoll on Linux, kqueue on
//! the BSDs and macOS). This is the server most people would write directly
//! on top of it, following mio's own `tcp_server` example: one thread, one
//! `Poll`, a map from `Token` to connection, and a pending-output buffer per
//! connection. It keeps the same contract as the chapters, so it can stand
//! beside them in every measurement.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};

/// Echo server on one mio event loop (c1m-rs baseline).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Microseconds of CPU busy-work per newline received, before echoing it.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
}

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CLIENT: usize = 2;

/// Stop reading a client while this much of its echo is still unsent.
const PENDING_OUTPUT_LIMIT: usize = 256 * 1024;
/// Reads per connection per turn of the loop, so one fast client cannot
/// keep the loop to itself.
const READS_PER_TURN: usize = 16;
/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

// ANCHOR: connection
struct Connection {
    stream: TcpStream,
    /// Bytes received and not yet written back, oldest first.
    pending_output: Vec<u8>,
    /// The client sent FIN: finish writing, then close.
    read_closed: bool,
    /// What this connection is registered for right now.
    interest: Interest,
    /// Already queued to be driven again next turn (its read budget ran out).
    in_carry_over: bool,
}

/// What became of a connection after `drive`.
enum Driven {
    /// Waiting for the next readiness event.
    Waiting,
    /// Read budget spent with data possibly left: drive again next turn,
    /// because an edge-triggered poll will not report it again.
    MoreToRead,
    /// Finished or failed: deregister and drop it.
    Done,
}
// ANCHOR_END: connection

// ANCHOR: event_loop
fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mio-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<ExitCode> {
    let mut poll = Poll::new()?;
    let std_listener = match std::net::TcpListener::bind(&args.addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e} (pick another --addr)", args.addr);
            return Ok(ExitCode::from(2));
        }
    };
    std_listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(std_listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut signals = signal_pipe()?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;

    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let mut events = Events::with_capacity(1024);
    let mut connections: HashMap<Token, Connection> = HashMap::new();
    let mut next_token = FIRST_CLIENT;
    let mut carry_over: Vec<Token> = Vec::new();
    let mut accept_paused_until: Option<Instant> = None;
    let mut accept_log = Throttle::default();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut connections_peak: usize = 0;

    'serve: loop {
        let timeout = if !carry_over.is_empty() {
            Some(Duration::ZERO)
        } else {
            accept_paused_until.map(|until| until.saturating_duration_since(Instant::now()))
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let carried = std::mem::take(&mut carry_over);

        for event in events.iter() {
            match event.token() {
                LISTENER => {
                    // While paused, ignore it: we retry when the pause ends.
                    if accept_paused_until.is_none() {
                        accept_paused_until = accept_clients(
                            &listener,
                            &poll,
                            &mut connections,
                            &mut next_token,
                            &mut accept_log,
                        );
                    }
                }
                SIGNALS => {
                    // Empty the pipe first, then act (signal-hook's advice).
                    let mut sink = [0u8; 64];
                    while matches!(signals.read(&mut sink), Ok(n) if n > 0) {}
                    break 'serve;
                }
                token => drive_and_update(
                    token,
                    &poll,
                    &mut connections,
                    &mut carry_over,
                    &mut buffer,
                    args.work_us,
                ),
            }
        }

        for token in carried {
            if let Some(connection) = connections.get_mut(&token) {
                connection.in_carry_over = false;
            }
            drive_and_update(
                token,
                &poll,
                &mut connections,
                &mut carry_over,
                &mut buffer,
                args.work_us,
            );
        }

        // Edge-triggered: connections that queued up during the pause will
        // not announce themselves again, so go and get them.
        if accept_paused_until.is_some_and(|until| Instant::now() >= until) {
            accept_paused_until = accept_clients(
                &listener,
                &poll,
                &mut connections,
                &mut next_token,
                &mut accept_log,
            );
        }

        connections_peak = connections_peak.max(connections.len());
    }

    // Tokens are handed out in order and never reused, so they count clients.
    let connections_served = next_token - FIRST_CLIENT;
    println!(
        "summary: connections_served={connections_served} connections_peak={connections_peak}"
    );
    io::stdout().flush()?;
    Ok(ExitCode::SUCCESS)
}
// ANCHOR_END: event_loop

// ANCHOR: accept
/// Accept until the queue is empty. Returns when accepting should resume if
/// we ran out of descriptors: the pending connection stays queued in the
/// kernel, so retrying at once would only spin.
fn accept_clients(
    listener: &TcpListener,
    poll: &Poll,
    connections: &mut HashMap<Token, Connection>,
    next_token: &mut usize,
    log: &mut Throttle,
) -> Option<Instant> {
    loop {
        match listener.accept() {
            Ok((mut stream, _peer)) => {
                let token = Token(*next_token);
                let _ = stream.set_nodelay(true);
                if let Err(e) = poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE)
                {
                    eprintln!("cannot register a client: {e}");
                    continue; // dropping the stream closes it
                }
                *next_token += 1;
                connections.insert(
                    token,
                    Connection {
                        stream,
                        pending_output: Vec::new(),
                        read_closed: false,
                        interest: Interest::READABLE,
                        in_carry_over: false,
                    },
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                if log.ready() {
                    let hint = match e.raw_os_error() {
                        Some(libc::EMFILE) | Some(libc::ENFILE) => {
                            " (out of file descriptors: raise `ulimit -n`)"
                        }
                        _ => "",
                    };
                    eprintln!("accept: {e}{hint}; pausing accepts for 50 ms");
                }
                return Some(Instant::now() + ACCEPT_PAUSE);
            }
        }
    }
}
// ANCHOR_END: accept

// ANCHOR: drive
/// Drive one connection after an event, then register for what it now
/// waits for: writable only while output is pending.
fn drive_and_update(
    token: Token,
    poll: &Poll,
    connections: &mut HashMap<Token, Connection>,
    carry_over: &mut Vec<Token>,
    buffer: &mut [u8],
    work_us: u64,
) {
    // Spurious or late events for a connection already gone are normal.
    let Some(connection) = connections.get_mut(&token) else {
        return;
    };
    let outcome = drive(connection, buffer, work_us).unwrap_or(Driven::Done);
    if let Driven::Done = outcome {
        if let Some(mut connection) = connections.remove(&token) {
            let _ = poll.registry().deregister(&mut connection.stream);
        }
        return;
    }
    if let Driven::MoreToRead = outcome
        && !connection.in_carry_over
    {
        connection.in_carry_over = true;
        carry_over.push(token);
    }
    let wanted = if connection.pending_output.is_empty() {
        Interest::READABLE
    } else {
        Interest::READABLE | Interest::WRITABLE
    };
    if wanted != connection.interest {
        if poll
            .registry()
            .reregister(&mut connection.stream, token, wanted)
            .is_err()
        {
            connections.remove(&token);
            return;
        }
        connection.interest = wanted;
    }
}

/// Write what is pending, read what has arrived, repeat, until the socket
/// would block, the client's unsent output is over the limit, or the read
/// budget is spent.
fn drive(connection: &mut Connection, buffer: &mut [u8], work_us: u64) -> io::Result<Driven> {
    let mut reads = 0;
    loop {
        flush(connection)?;
        if connection.pending_output.len() >= PENDING_OUTPUT_LIMIT {
            break; // back-pressure: wait until the client reads
        }
        if connection.read_closed {
            break;
        }
        if reads == READS_PER_TURN {
            return Ok(Driven::MoreToRead);
        }
        match connection.stream.read(buffer) {
            Ok(0) => connection.read_closed = true,
            Ok(n) => {
                reads += 1;
                queue_echo(&mut connection.pending_output, &buffer[..n], work_us);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if connection.read_closed && connection.pending_output.is_empty() {
        // Half-close: all echoed, now send our FIN.
        let _ = connection.stream.shutdown(Shutdown::Write);
        return Ok(Driven::Done);
    }
    Ok(Driven::Waiting)
}

/// Write pending output until it is gone or the socket is full.
fn flush(connection: &mut Connection) -> io::Result<()> {
    while !connection.pending_output.is_empty() {
        match connection.stream.write(&connection.pending_output) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                connection.pending_output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Append `data` to the pending output, doing `work_us` of CPU work for
/// every newline before it is queued.
fn queue_echo(pending_output: &mut Vec<u8>, data: &[u8], work_us: u64) {
    if work_us > 0 {
        for _newline in data.iter().filter(|&&byte| byte == b'\n') {
            busy_work(Duration::from_micros(work_us));
        }
    }
    pending_output.extend_from_slice(data);
}
// ANCHOR_END: drive

// ANCHOR: signals
/// SIGINT and SIGTERM as a readable socket: signal-hook's handler writes a
/// byte to one end of a socket pair (about all a signal handler may safely
/// do) and the event loop polls the other end like any client.
fn signal_pipe() -> io::Result<UnixStream> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
    signal_hook::low_level::pipe::register(SIGINT, writer.try_clone()?)?;
    signal_hook::low_level::pipe::register(SIGTERM, writer)?;
    reader.set_nonblocking(true)?;
    Ok(UnixStream::from_std(reader))
}
// ANCHOR_END: signals

/// Stand-in for handling a request: burn CPU (not a sleep) for `duration`.
fn busy_work(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

/// Lets an error message through at most once a second.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}
