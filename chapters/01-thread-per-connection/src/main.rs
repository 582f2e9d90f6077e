//! Chapter 01: an echo server with one OS thread per client.
//!
//! This is the server everybody writes first, and it is a good one: blocking
//! `read` and `write` on a `std::net::TcpStream`, one thread per connection,
//! and the kernel does the scheduling. Every piece of the echo contract falls
//! out of blocking I/O almost for free. What it costs is one thread (a stack, a
//! kernel task, a scheduler entry) per connection, and this file makes that
//! cost visible: a live count of handler threads and resident memory on
//! stderr, a `--stack-kib` knob, and a clear message at the point where the
//! operating system refuses to create another thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

// ANCHOR: args
/// Echo server, one OS thread per client (chapter 01 of c1m-rs).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Microseconds of CPU busy-work per newline received, before echoing it.
    #[arg(long, default_value_t = 0)]
    work_us: u64,

    /// Stack reserved for each client thread, in KiB. Rust's default is 2048;
    /// a handler that only holds a 16 KiB buffer needs far less.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    stack_kib: u64,

    /// Refuse (close) new connections while this many client threads are alive.
    #[arg(long)]
    max_threads: Option<usize>,

    /// Seconds between live `threads alive=...` lines on stderr (0 = never).
    #[arg(long, default_value_t = 1)]
    stats_interval: u64,
}
// ANCHOR_END: args

// ANCHOR: counters
/// What the server has done so far. Statics, because three kinds of thread
/// touch them: the accept loop, every client thread, and the signal thread.
struct Counters {
    connections_served: AtomicU64,
    threads_alive: AtomicUsize,
    threads_peak: AtomicUsize,
    spawn_failures: AtomicU64,
    refused_over_max: AtomicU64,
}

static COUNTERS: Counters = Counters {
    connections_served: AtomicU64::new(0),
    threads_alive: AtomicUsize::new(0),
    threads_peak: AtomicUsize::new(0),
    spawn_failures: AtomicU64::new(0),
    refused_over_max: AtomicU64::new(0),
};

/// One alive client thread. Created by the accept loop and moved into the
/// thread's closure, so the count goes down however that closure ends:
/// the client leaves, the handler fails, or the closure is dropped unrun
/// because the thread could not be spawned at all.
struct AliveThread;

impl AliveThread {
    fn new() -> AliveThread {
        COUNTERS.threads_alive.fetch_add(1, Ordering::Relaxed);
        AliveThread
    }
}

impl Drop for AliveThread {
    fn drop(&mut self) {
        COUNTERS.threads_alive.fetch_sub(1, Ordering::Relaxed);
    }
}
// ANCHOR_END: counters

// ANCHOR: main
fn main() -> ExitCode {
    let args = Args::parse();

    let listener = match TcpListener::bind(&args.addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e} (pick another --addr)", args.addr);
            return ExitCode::from(2);
        }
    };
    let local_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before announcing ourselves: a SIGINT that arrives right after the
    // `listening on` line must already find our handler, not the default one.
    if let Err(e) = spawn_shutdown_thread() {
        eprintln!("cannot install the SIGINT/SIGTERM handler: {e}");
        return ExitCode::FAILURE;
    }
    println!("listening on {local_addr}");
    // Whoever started us waits for this line; don't leave it in a buffer.
    let _ = io::stdout().flush();
    if args.stats_interval > 0 {
        spawn_stats_thread(Duration::from_secs(args.stats_interval));
    }

    accept_loop(&listener, &args)
}
// ANCHOR_END: main

// ANCHOR: accept_loop
/// Accept clients forever, handing each one to a thread of its own.
fn accept_loop(listener: &TcpListener, args: &Args) -> ! {
    let stack_bytes = usize::try_from(args.stack_kib * 1024).unwrap_or(usize::MAX);
    let mut accept_errors = Throttle::new();
    let mut spawn_errors = Throttle::new();
    let mut refusals = Throttle::new();

    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                back_off_after_accept_error(&e, &mut accept_errors);
                continue;
            }
        };

        if let Some(max) = args.max_threads
            && COUNTERS.threads_alive.load(Ordering::Relaxed) >= max
        {
            let refused = COUNTERS.refused_over_max.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(also) = refusals.ready() {
                eprintln!(
                    "refusing {peer}: {max} client threads alive (--max-threads); \
                     {refused} refused so far{also}"
                );
            }
            drop(stream); // closing it is the refusal
            continue;
        }

        // Ping-pong traffic makes small writes; don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);

        let alive = AliveThread::new();
        let work_us = args.work_us;
        let spawned = thread::Builder::new()
            .name("echo-client".into())
            .stack_size(stack_bytes)
            .spawn(move || {
                let _alive = alive;
                // A client that resets or vanishes ends its own thread; there
                // is nobody to report that to, and nothing else is affected.
                let _ = handle_client(stream, work_us);
            });

        match spawned {
            Ok(_detached) => {
                COUNTERS.connections_served.fetch_add(1, Ordering::Relaxed);
                let alive = COUNTERS.threads_alive.load(Ordering::Relaxed);
                COUNTERS.threads_peak.fetch_max(alive, Ordering::Relaxed);
            }
            // The closure was dropped unrun: the stream is closed and the
            // alive count is back down. Say which limit we hit, then go on.
            Err(e) => {
                let failures = COUNTERS.spawn_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(also) = spawn_errors.ready() {
                    eprintln!("{}", spawn_failure_message(&e, failures, &also));
                }
            }
        }
    }
}
// ANCHOR_END: accept_loop

// ANCHOR: accept_errors
/// `accept` failed. Out of descriptors (EMFILE: this process, ENFILE: the
/// whole system) is the one that matters: the pending connection stays in the
/// kernel's queue, so retrying at once would fail again at once and spin a
/// core. Sleep briefly instead; descriptors come back as clients leave.
fn back_off_after_accept_error(error: &io::Error, log: &mut Throttle) {
    match error.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            if let Some(also) = log.ready() {
                eprintln!(
                    "accept: {error}; out of file descriptors, pausing accepts \
                     (raise `ulimit -n` to hold more clients){also}"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        // The client gave up between SYN and accept: nothing to do.
        Some(libc::ECONNABORTED) | Some(libc::EINTR) => {}
        _ => {
            if let Some(also) = log.ready() {
                eprintln!("accept: {error}{also}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The one line a reader sees when the operating system will not give us
/// another thread.
fn spawn_failure_message(error: &io::Error, failures: u64, also: &str) -> String {
    let alive = COUNTERS.threads_alive.load(Ordering::Relaxed);
    let why = if error.raw_os_error() == Some(libc::EAGAIN) {
        "the thread limit or memory for stacks ran out; raise `ulimit -u`, \
         /proc/sys/kernel/threads-max, /proc/sys/kernel/pid_max or \
         /proc/sys/vm/max_map_count, or pass a smaller --stack-kib"
    } else {
        "pass a smaller --stack-kib or free memory"
    };
    format!(
        "cannot spawn a client thread ({error}) with {alive} alive: {why}; \
         connection dropped ({failures} so far){also}"
    )
}
// ANCHOR_END: accept_errors

// ANCHOR: handle_client
/// Echo one client until it closes its side, then close ours.
///
/// Blocking I/O gives two parts of the contract for free. Back-pressure: we
/// write everything we read before reading again, so when the client stops
/// reading, `write_all` blocks and we stop reading too; at most one buffer of
/// its data is ever held here. Half-close: `read` returning 0 means the client
/// sent FIN, and by then everything it sent has been written back.
fn handle_client(mut stream: TcpStream, work_us: u64) -> io::Result<()> {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let received = match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => &buffer[..n],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        echo(&mut stream, received, work_us)?;
    }
    stream.shutdown(Shutdown::Write)
}

/// Write `data` back, doing `work_us` of work before each newline goes out.
fn echo(stream: &mut TcpStream, data: &[u8], work_us: u64) -> io::Result<()> {
    if work_us == 0 {
        return stream.write_all(data);
    }
    for piece in data.split_inclusive(|&byte| byte == b'\n') {
        if piece.ends_with(b"\n") {
            busy_work(Duration::from_micros(work_us));
        }
        stream.write_all(piece)?;
    }
    Ok(())
}
// ANCHOR_END: handle_client

// ANCHOR: work
/// Stand-in for handling a request: burn CPU for `duration`. A sleep would
/// not do; the point is to occupy a core the way real work does.
fn busy_work(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}
// ANCHOR_END: work

// ANCHOR: shutdown
/// SIGINT/SIGTERM: print the summary and exit.
///
/// The accept loop and every client thread sit in blocking calls, and std
/// offers no way to interrupt a blocked `accept` or `read` from outside. So
/// we do not try: signal-hook turns the signal into a message for a thread of
/// our own (its handler only writes to a pipe, which is all a signal handler
/// may safely do), that thread prints the summary, and `exit` ends the
/// process. The kernel then closes the listener and every client socket.
fn spawn_shutdown_thread() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                println!("{}", summary_line());
                let _ = io::stdout().flush();
                std::process::exit(0);
            }
        })?;
    Ok(())
}

fn summary_line() -> String {
    format!(
        "summary: connections_served={} threads_peak={} threads_alive={} \
         spawn_failures={} refused_over_max={}",
        COUNTERS.connections_served.load(Ordering::Relaxed),
        COUNTERS.threads_peak.load(Ordering::Relaxed),
        COUNTERS.threads_alive.load(Ordering::Relaxed),
        COUNTERS.spawn_failures.load(Ordering::Relaxed),
        COUNTERS.refused_over_max.load(Ordering::Relaxed),
    )
}
// ANCHOR_END: shutdown

// ANCHOR: stats
/// Every `interval`, if anything changed, print the thread counts and the
/// process's resident memory to stderr, so the cost per connection is
/// visible while clients come and go.
fn spawn_stats_thread(interval: Duration) {
    let spawned = thread::Builder::new().name("stats".into()).spawn(move || {
        let mut last_printed = (usize::MAX, 0, 0);
        loop {
            thread::sleep(interval);
            let now = (
                COUNTERS.threads_alive.load(Ordering::Relaxed),
                COUNTERS.threads_peak.load(Ordering::Relaxed),
                COUNTERS.connections_served.load(Ordering::Relaxed),
            );
            if now != last_printed {
                let rss = resident_kib().map_or(String::new(), |kib| format!(" rss_kib={kib}"));
                eprintln!(
                    "threads alive={} peak={} served={}{rss}",
                    now.0, now.1, now.2
                );
                last_printed = now;
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("no live stats ({e}); serving anyway");
    }
}

/// Resident set size of this process, from `/proc/self/status` (Linux only).
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
// ANCHOR_END: stats

/// Lets an error message through at most once a second, and says how many
/// were swallowed in between, so a storm of failures cannot flood the log.
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suffix)` if a message may be printed now; the suffix mentions
    /// the messages suppressed since the last one.
    fn ready(&mut self) -> Option<String> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        let suffix = match std::mem::take(&mut self.suppressed) {
            0 => String::new(),
            n => format!(" ({n} similar messages suppressed)"),
        };
        Some(suffix)
    }
}
