//! `reference-echo`: the smallest server that keeps the whole echo contract,
//! one OS thread per connection, std only. The conformance suite's self-test
//! runs against it to prove the suite passes a correct server, and against
//! its hidden `--break MODE` variants to prove each check can fail.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

/// A correct thread-per-connection echo server (the conformance suite's reference).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,

    /// Microseconds of busy CPU work per newline received, before echoing it.
    #[arg(long, default_value_t = 0)]
    work_us: u64,

    /// Close connections idle this long, in milliseconds (0: never). Hidden
    /// until the chapters settle the flag's name and format.
    #[arg(long, default_value_t = 0, hide = true)]
    idle_timeout_ms: u64,

    /// Break one rule of the contract on purpose (for the suite's self-test).
    #[arg(long = "break", value_enum, hide = true)]
    break_mode: Option<BreakMode>,
}

/// Deliberate bugs, each caught by one conformance check.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BreakMode {
    /// Silently drop the byte at offset 1000 of every connection.
    DropByte,
    /// Keep the connection open after the client's EOF.
    NoCloseOnEof,
    /// Leak one descriptor per connection.
    LeakFd,
    /// Read everything a client sends, however much echo is still unsent.
    UnboundedBuffer,
    /// Exit when accept fails with EMFILE.
    ExitOnEmfile,
    /// Retry a failing accept at once, forever (spins a core).
    SpinOnEmfile,
    /// Accept `--work-us` but do no work.
    IgnoreWorkUs,
    /// Keep each read's echo in a 16 KiB chunk of its own, under a limit
    /// that counts only bytes (a chunk per one-byte segment).
    ChunkPerRead,
    /// Write queued pieces 64 at a time, and after a batch written whole
    /// wait for the next read instead of writing on (the stalled `writev`).
    WriteInBatches,
}

/// Stream offset [`BreakMode::DropByte`] drops.
const DROPPED_OFFSET: u64 = 1000;

/// Each connection thread needs little stack: its buffer is on the heap.
const CONNECTION_STACK: usize = 128 * 1024;

static CONNECTIONS_SERVED: AtomicU64 = AtomicU64::new(0);
static BYTES_ECHOED: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args = Args::parse();
    // Block SIGINT/SIGTERM before any thread exists (threads inherit the
    // mask), so that only the thread in `sigwait` ever sees them.
    let signals = match block_shutdown_signals() {
        Ok(signals) => signals,
        Err(err) => fail(&format!("cannot block SIGINT/SIGTERM: {err}")),
    };
    let listener = match TcpListener::bind(args.addr) {
        Ok(listener) => listener,
        Err(err) => fail(&format!(
            "cannot listen on {}: {err} (pick another --addr, or port 0)",
            args.addr
        )),
    };
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(err) => fail(&format!("cannot read the bound address: {err}")),
    };
    println!("listening on {local}");
    let _ = io::stdout().flush();
    thread::spawn(move || wait_for_shutdown(signals));
    accept_loop(&listener, args);
}

fn fail(message: &str) -> ! {
    eprintln!("reference-echo: {message}");
    process::exit(2)
}

/// What every connection thread needs to know.
#[derive(Clone, Copy)]
struct Settings {
    work_us: u64,
    idle_timeout: Option<Duration>,
    break_mode: Option<BreakMode>,
}

fn accept_loop(listener: &TcpListener, args: Args) {
    let settings = Settings {
        work_us: args.work_us,
        idle_timeout: (args.idle_timeout_ms > 0)
            .then(|| Duration::from_millis(args.idle_timeout_ms)),
        break_mode: args.break_mode,
    };
    let mut reported_emfile = false;
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                CONNECTIONS_SERVED.fetch_add(1, Ordering::Relaxed);
                let spawned = thread::Builder::new()
                    .stack_size(CONNECTION_STACK)
                    .spawn(move || serve(stream, &settings));
                if let Err(err) = spawned {
                    // Out of threads: the connection is dropped (closed), the
                    // server carries on.
                    eprintln!("reference-echo: cannot start a thread: {err}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
            Err(err) if is_out_of_descriptors(&err) => match args.break_mode {
                Some(BreakMode::ExitOnEmfile) => fail(&format!("accept: {err}")),
                Some(BreakMode::SpinOnEmfile) => {}
                _ => {
                    if !reported_emfile {
                        eprintln!(
                            "reference-echo: accept: {err}; pausing until descriptors free up"
                        );
                        reported_emfile = true;
                    }
                    // The pending connection stays in the backlog, so accept
                    // would fail again at once: wait for a connection to end.
                    thread::sleep(Duration::from_millis(20));
                }
            },
            // ECONNABORTED, EINTR and friends concern one connection, not us.
            Err(_) => {}
        }
    }
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Echoes one client until it closes its side, then closes ours.
fn serve(mut stream: TcpStream, settings: &Settings) {
    let break_mode = settings.break_mode;
    // With an idle timeout, a read or write that makes no progress for that
    // long fails, and the connection is closed.
    if stream.set_read_timeout(settings.idle_timeout).is_err()
        || stream.set_write_timeout(settings.idle_timeout).is_err()
    {
        return;
    }
    if break_mode == Some(BreakMode::LeakFd)
        && let Ok(file) = File::open("/dev/null")
    {
        std::mem::forget(file);
    }
    if break_mode == Some(BreakMode::UnboundedBuffer) {
        serve_unbounded(stream);
        return;
    }
    if break_mode == Some(BreakMode::ChunkPerRead) {
        serve_chunk_per_read(stream);
        return;
    }
    if break_mode == Some(BreakMode::WriteInBatches) {
        serve_in_batches(stream);
        return;
    }
    let work_us = if break_mode == Some(BreakMode::IgnoreWorkUs) {
        0
    } else {
        settings.work_us
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut data = Cow::Borrowed(&buf[..n]);
        if break_mode == Some(BreakMode::DropByte)
            && (offset..offset + n as u64).contains(&DROPPED_OFFSET)
        {
            data.to_mut().remove((DROPPED_OFFSET - offset) as usize);
        }
        offset += n as u64;
        // Blocking in write_all is the back-pressure: while the client does
        // not read, this thread does not read from it either.
        if echo_lines(&mut stream, &data, work_us).is_err() {
            return;
        }
    }
    if break_mode == Some(BreakMode::NoCloseOnEof) {
        loop {
            thread::park();
        }
    }
    // Everything read has been written: dropping the stream closes it.
}

/// Writes `data`, spinning `work_us` before each piece that ends in a newline.
fn echo_lines(stream: &mut TcpStream, data: &[u8], work_us: u64) -> io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let piece_len = match rest.iter().position(|&b| b == b'\n') {
            Some(newline) if work_us > 0 => {
                busy_work(Duration::from_micros(work_us));
                newline + 1
            }
            _ => rest.len(),
        };
        stream.write_all(&rest[..piece_len])?;
        BYTES_ECHOED.fetch_add(piece_len as u64, Ordering::Relaxed);
        rest = &rest[piece_len..];
    }
    Ok(())
}

/// Real CPU work, not a sleep: spin on the clock.
fn busy_work(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

/// The `unbounded-buffer` bug: a reader thread that never stops reading, and
/// an unbounded queue between it and the writer.
fn serve_unbounded(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let (queue, pending) = mpsc::channel::<Vec<u8>>();
    let echoer = thread::spawn(move || {
        for chunk in pending {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    read_into(stream, &queue);
    drop(queue);
    let _ = echoer.join();
}

/// The `chunk-per-read` bug: every read's bytes go into a fresh 16 KiB chunk
/// (filled, so its pages are resident), and back-pressure counts bytes
/// owed, not chunks held.
fn serve_chunk_per_read(stream: TcpStream) {
    const CHUNK: usize = 16 * 1024;
    const MAX_OWED: u64 = 256 * 1024;
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let owed = std::sync::Arc::new(AtomicU64::new(0));
    let (queue, pending) = mpsc::channel::<(Vec<u8>, usize)>();
    let echoer = {
        let owed = std::sync::Arc::clone(&owed);
        thread::spawn(move || {
            for (chunk, len) in pending {
                if writer.write_all(&chunk[..len]).is_err() {
                    return;
                }
                owed.fetch_sub(len as u64, Ordering::Relaxed);
            }
        })
    };
    let mut reader = stream;
    let mut chunk = vec![0xAA_u8; CHUNK];
    loop {
        while owed.load(Ordering::Relaxed) >= MAX_OWED {
            thread::sleep(Duration::from_millis(1));
        }
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                owed.fetch_add(n as u64, Ordering::Relaxed);
                let full = std::mem::replace(&mut chunk, vec![0xAA_u8; CHUNK]);
                if queue.send((full, n)).is_err() {
                    break;
                }
            }
        }
    }
    drop(queue);
    let _ = echoer.join();
}

/// The `write-in-batches` bug: each read is a piece in a queue; on each
/// read (or, after a short write, once the socket is writable again) at most
/// 64 pieces are written. After a batch the kernel took whole nothing wakes
/// the writer but the next read, which never comes after the client's EOF.
fn serve_in_batches(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    const BATCH: usize = 64;
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let (queue, arrivals) = mpsc::channel::<Vec<u8>>();
    let echoer = thread::spawn(move || {
        let fd = writer.as_raw_fd();
        let mut pieces: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
        let mut wait_for_room = false;
        let mut eof = false;
        loop {
            if wait_for_room {
                let mut pollfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, its count passed.
                if unsafe { libc::poll(&raw mut pollfd, 1, -1) } < 0 {
                    continue;
                }
            } else if eof {
                if pieces.is_empty() {
                    return; // all written: close
                }
                // The bug: nothing will ever wake us again.
                loop {
                    thread::park();
                }
            } else {
                match arrivals.recv() {
                    Ok(piece) => pieces.push_back(piece),
                    Err(_) => eof = true,
                }
            }
            while let Ok(piece) = arrivals.try_recv() {
                pieces.push_back(piece);
            }
            wait_for_room = false;
            for _ in 0..BATCH {
                let Some(piece) = pieces.front_mut() else {
                    break;
                };
                // SAFETY: the pointer and length describe `piece`, which
                // outlives the call; MSG_DONTWAIT makes this one call
                // non-blocking without touching the shared file flags.
                let n = unsafe {
                    libc::send(
                        fd,
                        piece.as_ptr().cast(),
                        piece.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                let Ok(n) = usize::try_from(n) else {
                    if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                        wait_for_room = true;
                        break;
                    }
                    return;
                };
                if n < piece.len() {
                    piece.drain(..n);
                    wait_for_room = true;
                    break;
                }
                pieces.pop_front();
            }
        }
    });
    read_into(stream, &queue);
    drop(queue);
    let _ = echoer.join();
}

/// The signals that stop the server, blocked in the calling thread.
fn block_shutdown_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Waits for SIGINT/SIGTERM, prints the summary and exits 0 (which closes
/// the listener and every connection).
fn wait_for_shutdown(signals: libc::sigset_t) {
    let mut signal: libc::c_int = 0;
    loop {
        // SAFETY: `signals` is an initialised set, blocked in every thread;
        // `signal` is a valid place for the result.
        if unsafe { libc::sigwait(&signals, &mut signal) } == 0 {
            break;
        }
    }
    println!(
        "summary: connections_served={} bytes_echoed={}",
        CONNECTIONS_SERVED.load(Ordering::Relaxed),
        BYTES_ECHOED.load(Ordering::Relaxed)
    );
    let _ = io::stdout().flush();
    process::exit(0);
}

/// The reader side of the two broken-queue modes: every read goes onto
/// `queue` as it arrives, until EOF, an error, or the writer is gone.
fn read_into(mut reader: TcpStream, queue: &mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if queue.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}
