//! Checks of what a server holds on to: descriptors after clients leave, and
//! its behaviour when it runs out of them (EMFILE).

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{
    IO_TIMEOUT, Pattern, close_with_reset, connect, echo_exactly, expect_eof, pattern,
    read_expected,
};
use super::{CheckFailure, CheckResult, Context, ServerSpec, Target, fail};

/// Descriptors a server may gain for good during a check: things created
/// lazily on first use (a timer fd, an eventfd for a pool, ...).
const FD_SLACK: usize = 2;

/// How long descriptors may take to go back down once clients have left.
const FD_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Warms the server up with one echo, then returns its descriptor count
/// (`None` when we cannot count them: no process, or not Linux).
pub(crate) fn settled_fd_baseline(target: &Target<'_>) -> Result<Option<usize>, CheckFailure> {
    if target.server.is_none() || !cfg!(target_os = "linux") {
        return Ok(None);
    }
    let stream = connect(target.addr)?;
    echo_exactly(&stream, b"warm-up\n", "warm-up echo")?;
    stream
        .shutdown(Shutdown::Write)
        .context(|| "half-closing the warm-up client".to_owned())?;
    expect_eof(&stream, IO_TIMEOUT, "warm-up client")?;
    drop(stream);
    // Wait until two readings agree, so a close still in progress on the
    // server does not count as part of the baseline.
    let mut last = open_fds(target)?;
    let deadline = Instant::now() + FD_SETTLE_TIMEOUT;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = open_fds(target)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(Some(last))
}

fn open_fds(target: &Target<'_>) -> Result<usize, CheckFailure> {
    match target.server {
        Some(server) => server
            .open_fds()
            .context(|| "counting the server's descriptors".to_owned()),
        None => fail!("counting descriptors needs the server process"),
    }
}

/// Polls the server's descriptor count until it is back to `baseline` (plus
/// [`FD_SLACK`]), or fails after [`FD_SETTLE_TIMEOUT`].
pub(crate) fn fds_settle_to(target: &Target<'_>, baseline: usize, after: &str) -> CheckResult {
    let deadline = Instant::now() + FD_SETTLE_TIMEOUT;
    loop {
        let now = open_fds(target)?;
        if now <= baseline + FD_SLACK {
            return Ok(());
        }
        if Instant::now() >= deadline {
            fail!(
                "the server had {baseline} open descriptors before and still has {now} \
                 {FD_SETTLE_TIMEOUT:?} {after}: it leaks {} descriptors",
                now - baseline
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Connect/echo/close cycles in [`no_descriptor_leak`], per client thread.
const LEAK_CYCLES_PER_THREAD: usize = 750;
const LEAK_CLIENT_THREADS: usize = 4;

/// Thousands of short connections, ending every way a connection can end
/// (normal close, close before the echo is read, half-close, reset, no data
/// at all), leave the server with the descriptors it had before. Linux only.
pub fn no_descriptor_leak(target: &Target<'_>) -> CheckResult {
    if !cfg!(target_os = "linux") {
        eprintln!("no_descriptor_leak: skipped, counting descriptors needs /proc (Linux only)");
        return Ok(());
    }
    if target.server.is_none() {
        fail!("no_descriptor_leak needs the server process, not just its address");
    }
    let Some(baseline) = settled_fd_baseline(target)? else {
        fail!("could not count the server's descriptors");
    };
    let addr = target.addr;
    thread::scope(|scope| {
        let workers: Vec<_> = (0..LEAK_CLIENT_THREADS)
            .map(|worker| {
                scope.spawn(move || -> CheckResult {
                    for cycle in 0..LEAK_CYCLES_PER_THREAD {
                        let kind = (cycle + worker) % 5;
                        short_connection(addr, kind).map_err(|f| {
                            CheckFailure::new(format!("connection of kind {kind}: {f}"))
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .unwrap_or_else(|_| Err(CheckFailure::new("a client thread panicked")))?;
        }
        Ok::<(), CheckFailure>(())
    })?;
    target.still_running("during the descriptor-leak check")?;
    fds_settle_to(
        target,
        baseline,
        &format!(
            "after {} short connections closed",
            LEAK_CLIENT_THREADS * LEAK_CYCLES_PER_THREAD
        ),
    )
}

/// One short connection, ended in one of five ways.
fn short_connection(addr: std::net::SocketAddr, kind: usize) -> CheckResult {
    let mut stream = connect(addr)?;
    let message = b"a short-lived connection says hello\n";
    match kind {
        // Echo, then the client closes first.
        0 => {
            stream.write_all(message).context(|| "sending".to_owned())?;
            read_expected(&stream, message, "short connection")?;
        }
        // Connect and close without a word.
        1 => {}
        // Send, then close before the echo is read (often an RST).
        2 => {
            stream
                .write_all(&pattern(Pattern::Counter, 4096))
                .context(|| "sending".to_owned())?;
        }
        // Send, half-close, read everything and the server's EOF.
        3 => {
            stream.write_all(message).context(|| "sending".to_owned())?;
            stream
                .shutdown(Shutdown::Write)
                .context(|| "half-closing".to_owned())?;
            read_expected(&stream, message, "half-closed short connection")?;
            expect_eof(&stream, IO_TIMEOUT, "half-closed short connection")?;
        }
        // Send a lot, then reset while the server is still echoing.
        _ => {
            stream
                .write_all(&pattern(Pattern::Noise, 64 * 1024))
                .context(|| "sending".to_owned())?;
            return close_with_reset(stream);
        }
    }
    Ok(())
}

/// The descriptor limit [`emfile`] starts the server with.
const EMFILE_NOFILE_LIMIT: u64 = 64;

/// Clients [`emfile`] opens: more than the server has descriptors for.
const EMFILE_CLIENTS: usize = 100;

/// How long [`emfile`] watches the saturated server's CPU time.
const EMFILE_WATCH: Duration = Duration::from_millis(1500);

/// Started with a limit of 64 descriptors and sent 100 connections, the
/// server does not crash and does not spin (pending connections make
/// `accept` fail with EMFILE again at once, so retrying without a pause
/// burns a core); once the clients leave, it serves a new one. Linux only.
pub fn emfile(spec: &ServerSpec) -> CheckResult {
    if !cfg!(target_os = "linux") {
        eprintln!("emfile: skipped, measuring the server's CPU time needs /proc (Linux only)");
        return Ok(());
    }
    let server = spec
        .builder()
        .nofile_limit(EMFILE_NOFILE_LIMIT)
        .spawn()
        .map_err(|err| CheckFailure::new(err.to_string()))?;
    let target = Target::process(&server);

    let mut clients: Vec<TcpStream> = Vec::with_capacity(EMFILE_CLIENTS);
    for client in 0..EMFILE_CLIENTS {
        // The kernel completes connections into the listen backlog whether or
        // not the server can accept them, so connecting itself should work.
        // Nothing is sent: a server may legitimately accept-and-close what it
        // has no descriptor for (the spare-descriptor trick).
        match connect(target.addr) {
            Ok(stream) => clients.push(stream),
            Err(failure) => {
                target.still_running(&format!(
                    "after accepting {client} connections under a limit of \
                     {EMFILE_NOFILE_LIMIT} descriptors"
                ))?;
                return Err(failure);
            }
        }
    }
    // Give the server time to accept what it can and hit EMFILE.
    thread::sleep(Duration::from_millis(300));
    target.still_running(&format!(
        "when {EMFILE_CLIENTS} clients connected to it under a limit of {EMFILE_NOFILE_LIMIT} descriptors"
    ))?;

    let busy_before = runnable_time(&target)?;
    let wall = Instant::now();
    thread::sleep(EMFILE_WATCH);
    let busy = runnable_time(&target)?.saturating_sub(busy_before);
    let wall = wall.elapsed();
    target.still_running("while out of descriptors")?;
    // A server that retries accept in a tight loop always wants a core; a
    // correct one sleeps. We measure the time it was *runnable* (on a CPU or
    // waiting in the run queue), not just its CPU time: on a busy machine a
    // spinning server may get little CPU, but it is runnable all the time.
    // Half the wall time is far from both, however busy the machine is.
    if busy > wall / 2 {
        fail!(
            "while out of descriptors the server was running or waiting to run for {busy:?} \
             of {wall:?}: it spins on accept failing with EMFILE instead of waiting for a \
             descriptor to free up"
        );
    }

    drop(clients);
    // The server learns that those clients left only when it reads their
    // EOFs and closes their sockets; a client that arrives before that may
    // still be shed (accepted and closed for lack of a descriptor), which is
    // correct. So retry for a while: what must not happen is never serving
    // anyone again.
    let deadline = Instant::now() + EMFILE_RECOVERY;
    loop {
        let served = connect(target.addr).and_then(|stream| {
            echo_exactly(
                &stream,
                b"served again after EMFILE\n",
                "a client after the server ran out of descriptors",
            )
        });
        match served {
            Ok(()) => break,
            Err(failure) if Instant::now() >= deadline => {
                target.still_running("after running out of descriptors")?;
                return Err(CheckFailure::new(format!(
                    "no client was served within {EMFILE_RECOVERY:?} after the others left; \
                     the last attempt: {failure}"
                )));
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
    target.still_running("after running out of descriptors")
}

/// How long [`emfile`] gives the server to serve a client again once the
/// clients that exhausted its descriptors have left.
const EMFILE_RECOVERY: Duration = Duration::from_secs(10);

/// Time the server's threads spent on a CPU or waiting in a run queue, from
/// `/proc/PID/task/TID/schedstat` (run ns, wait ns, timeslices) over the
/// whole process tree; where schedstat is missing, its CPU time.
fn runnable_time(target: &Target<'_>) -> Result<Duration, CheckFailure> {
    let Some(server) = target.server else {
        fail!("measuring run time needs the server process");
    };
    let mut total_ns: u64 = 0;
    let mut found = false;
    for pid in server.process_tree() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut fields = stat
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
            total_ns += run + wait;
            found = true;
        }
    }
    if found {
        Ok(Duration::from_nanos(total_ns))
    } else {
        cpu_time(target)
    }
}

fn cpu_time(target: &Target<'_>) -> Result<Duration, CheckFailure> {
    match target.server {
        Some(server) => server
            .cpu_time()
            .context(|| "reading the server's CPU time".to_owned()),
        None => fail!("measuring CPU time needs the server process"),
    }
}
