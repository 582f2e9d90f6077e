//! Baseline floor: the smallest epoll loop that can echo, so every table and
//! plot shows how far each server is from the kernel's own cost.
//!
//! **Not a conformant server, on purpose.** It does one `read` and one
//! `write` per readiness event, level-triggered, and that is all: a partial
//! write loses the rest of the echo, a client that never reads is never
//! pushed back on, EMFILE makes it spin, and `--work-us` is refused. What is
//! left is the price any echo server on epoll must pay per message: one
//! `epoll_wait` (shared by a batch), one `read`, one `write`, and the
//! kernel's TCP path behind them. A real server that comes close to this on
//! small messages has no overhead left to remove in userland.
//!
//! It stays a few dozen lines of `libc` in one file: a chapter's `sys.rs`
//! layer would make it read like a chapter, and it is a ruler, not a lesson.

#[cfg(not(target_os = "linux"))]
compile_error!("the epoll floor uses epoll, which exists only on Linux");

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

/// The smallest epoll echo loop: one read and one write per event; NOT a
/// conformant server (no partial writes, no back-pressure, no EMFILE
/// handling). A measuring stick for the others.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: String,

    /// Accepted so that the measuring scripts can pass it; only 0 is
    /// allowed (the floor does no work, that is its point).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=0))]
    work_us: u64,
}

const EVENTS_PER_WAIT: usize = 1024;

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(addr) = args.addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        eprintln!("error: cannot resolve --addr {}", args.addr);
        return ExitCode::from(2);
    };
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(addr: SocketAddr) -> io::Result<()> {
    // std binds and listens (the backlog is 128: enough for measuring).
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    // A signal interrupts epoll_wait (EINTR, never restarted), then the
    // loop sees the flag.
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;

    // SAFETY: plain syscall with a flag argument.
    let epoll = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    let listen_fd = listener.as_raw_fd();
    add(epoll, listen_fd)?;
    let mut stdout = io::stdout();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;

    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    let mut buffer = vec![0u8; 64 * 1024];
    let (mut messages, mut served) = (0u64, 0u64);
    // ANCHOR: loop
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `events` is a live buffer of EVENTS_PER_WAIT entries.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), EVENTS_PER_WAIT as i32, -1) };
        let Ok(ready) = usize::try_from(ready) else {
            continue; // EINTR: look at the stop flag
        };
        for event in &events[..ready] {
            // Copy out of the (packed on x86-64) struct before using it.
            let fd = event.u64 as RawFd;
            if fd == listen_fd {
                // SAFETY: null address pointers are allowed.
                while let Ok(client) = check(unsafe {
                    libc::accept4(
                        listen_fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                }) {
                    set_nodelay(client);
                    if add(epoll, client).is_err() {
                        // SAFETY: we own `client` and drop it here.
                        unsafe { libc::close(client) };
                    }
                    served += 1;
                }
                continue;
            }
            // SAFETY: `buffer` is writable for its whole length.
            let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
            if n > 0 {
                // SAFETY: the first `n` bytes of `buffer` were just read.
                unsafe { libc::write(fd, buffer.as_ptr().cast(), n.unsigned_abs()) };
                messages += 1;
            } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                // EOF or an error: done with this client; closing removes it
                // from the epoll set.
                // SAFETY: a client socket we accepted and own.
                unsafe { libc::close(fd) };
            }
        }
    }
    // ANCHOR_END: loop
    writeln!(
        stdout,
        "summary: connections_served={served} echoes={messages} (epoll floor: not a conformant server)"
    )?;
    stdout.flush()
}

fn add(epoll: RawFd, fd: RawFd) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: both descriptors are open; the kernel copies `event`.
    check(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) }).map(drop)
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives across the call and we pass its exact size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
