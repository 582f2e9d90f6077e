//! The echo contract, fuzzed: random clients (message sizes from one byte to
//! a few MiB, random write and read chunking, random pauses, a half-close or
//! a reset at a random point, several clients at once), generated with
//! proptest from a seed printed in the output, so that a failure can be
//! replayed (`C1M_FUZZ_SEED=<seed>`). Every byte must come back once, in
//! order; after a half-close exactly what was sent, then EOF.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use super::client::{Pattern, close_with_reset, connect, echo_exactly, pattern};
use super::{CheckFailure, CheckResult, Target};

/// Generated cases per run: each is a group of clients at once.
const CASES: u32 = 32;
/// Longest any one client may take: a stalled echo fails instead of hanging.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
/// Every client spends at most this many write (and read) calls: small
/// chunks are only drawn for small messages.
const MAX_CALLS: usize = 2000;

/// How a fuzzed client ends its side.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Sends everything, reads everything back, closes.
    Whole,
    /// Sends this share (per mille) of the message, half-closes, and must
    /// get exactly that back, then EOF.
    HalfCloseAt(u32),
    /// Sends this share of the message, then resets the connection: the
    /// echo read until then must be a prefix of what was sent.
    ResetAt(u32),
}

#[derive(Debug, Clone)]
struct ClientPlan {
    size: usize,
    write_chunk: usize,
    read_chunk: usize,
    /// Sleep this long after every `pause_every` writes (0: never).
    pause_every: usize,
    pause: Duration,
    ending: Ending,
    seed: u64,
}

fn client_plan() -> impl Strategy<Value = ClientPlan> {
    let size = prop_oneof![
        6 => 1usize..=256,
        3 => 257usize..=64 * 1024,
        2 => 64 * 1024 + 1..=1024 * 1024usize,
        1 => 1024 * 1024 + 1..=3 * 1024 * 1024usize,
    ];
    let ending = prop_oneof![
        3 => Just(Ending::Whole),
        2 => (0u32..=1000).prop_map(Ending::HalfCloseAt),
        1 => (0u32..=1000).prop_map(Ending::ResetAt),
    ];
    (
        size,
        1usize..=64 * 1024,
        1usize..=64 * 1024,
        prop_oneof![Just(0usize), 1usize..=64],
        0u64..=500,
        ending,
        any::<u64>(),
    )
        .prop_map(
            |(size, write_chunk, read_chunk, pause_every, pause_us, ending, seed)| ClientPlan {
                size,
                write_chunk: write_chunk.max(size.div_ceil(MAX_CALLS)),
                read_chunk: read_chunk.max(size.div_ceil(MAX_CALLS)),
                pause_every,
                pause: Duration::from_micros(pause_us),
                ending,
                seed,
            },
        )
}

/// The seed of this run: `C1M_FUZZ_SEED` if set (to replay a failure),
/// else the clock.
fn run_seed() -> u64 {
    std::env::var("C1M_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// Random groups of 1 to 4 concurrent clients against the server, [`CASES`]
/// of them, from a seed printed on stderr. A failure names the seed, the
/// client plan proptest shrank it to, and what went wrong.
pub fn fuzz_echo(target: &Target<'_>) -> CheckResult {
    let seed = run_seed();
    eprintln!("fuzz_echo: seed {seed} (replay with C1M_FUZZ_SEED={seed})");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: CASES,
        max_shrink_iters: 32,
        // Shrinking re-runs clients against the server: bound it in time too.
        max_shrink_time: 20_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let addr = target.addr;
    let [clients, bytes, half_closes, resets] = [(); 4].map(|()| AtomicU64::new(0));
    let result = runner.run(&prop::collection::vec(client_plan(), 1..=4), |plans| {
        for plan in &plans {
            clients.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(plan.size as u64, Ordering::Relaxed);
            match plan.ending {
                Ending::Whole => {}
                Ending::HalfCloseAt(_) => _ = half_closes.fetch_add(1, Ordering::Relaxed),
                Ending::ResetAt(_) => _ = resets.fetch_add(1, Ordering::Relaxed),
            }
        }
        run_clients(addr, &plans).map_err(|failure| TestCaseError::fail(failure.to_string()))
    });
    eprintln!(
        "fuzz_echo: {} clients in {CASES} groups, {} KiB of messages, {} half-closed early, \
         {} reset mid-stream",
        clients.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed) >> 10,
        half_closes.load(Ordering::Relaxed),
        resets.load(Ordering::Relaxed),
    );
    if let Err(error) = result {
        return Err(CheckFailure::new(format!(
            "fuzz_echo (seed {seed}, replay with C1M_FUZZ_SEED={seed}): {error}"
        )));
    }
    target.still_running("after the fuzzed clients")?;
    // Whatever the resets did, a fresh client is served.
    let stream = connect(addr)?;
    echo_exactly(
        &stream,
        &pattern(Pattern::Text, 4096),
        "a client after the fuzzed ones",
    )
}

fn run_clients(addr: SocketAddr, plans: &[ClientPlan]) -> CheckResult {
    thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| scope.spawn(move || run_client(addr, plan)))
            .collect();
        let mut first_failure = Ok(());
        for handle in handles {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(CheckFailure::new("a fuzz client panicked")));
            if first_failure.is_ok() {
                first_failure = result;
            }
        }
        first_failure
    })
}

/// The bytes a client sends: noise seeded per client, so no two clients
/// (and no two offsets) look alike.
fn message(plan: &ClientPlan) -> Vec<u8> {
    let mut state = plan.seed | 1;
    (0..plan.size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn run_client(addr: SocketAddr, plan: &ClientPlan) -> CheckResult {
    let data = message(plan);
    let to_send = match plan.ending {
        Ending::Whole => data.len(),
        Ending::HalfCloseAt(per_mille) | Ending::ResetAt(per_mille) => {
            data.len() * per_mille as usize / 1000
        }
    };
    if let Ending::ResetAt(_) = plan.ending {
        return run_resetting_client(addr, plan, &data[..to_send]);
    }
    let stream = connect(addr)?;
    let writer = stream
        .try_clone()
        .map_err(|e| CheckFailure::new(format!("cloning the client socket: {e}")))?;
    let sent = &data[..to_send];
    let read_result = thread::scope(|scope| {
        let sender = scope.spawn(|| send(&writer, sent, plan));
        let received = receive(&stream, sent, plan);
        let sent_result = sender
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writer panicked")));
        (received, sent_result)
    });
    let (received, sent_result) = read_result;
    sent_result.map_err(|e| CheckFailure::new(format!("{plan:?}: sending: {e}")))?;
    received
}

fn send(mut stream: &TcpStream, data: &[u8], plan: &ClientPlan) -> io::Result<()> {
    for (index, chunk) in data.chunks(plan.write_chunk).enumerate() {
        stream.write_all(chunk)?;
        if plan.pause_every > 0 && index % plan.pause_every == plan.pause_every - 1 {
            thread::sleep(plan.pause);
        }
    }
    stream.shutdown(Shutdown::Write)
}

/// Sends `sent` chunk by chunk, after each taking whatever echo has come
/// back (without waiting: it must be a prefix of what was sent), then
/// resets the connection mid-stream. The server must survive it.
fn run_resetting_client(addr: SocketAddr, plan: &ClientPlan, sent: &[u8]) -> CheckResult {
    let mut stream = connect(addr)?;
    let fail = |what: String| CheckFailure::new(format!("{plan:?}: {what}"));
    let mut buf = vec![0u8; plan.read_chunk];
    let mut received = 0;
    for (index, chunk) in sent.chunks(plan.write_chunk).enumerate() {
        stream
            .write_all(chunk)
            .map_err(|e| fail(format!("sending: {e}")))?;
        stream
            .set_nonblocking(true)
            .map_err(|e| fail(format!("O_NONBLOCK: {e}")))?;
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return Err(fail(format!("EOF after {received} bytes"))),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fail(format!("reading: {e}"))),
            };
            check_echo(plan, sent, received, &buf[..n])?;
            received += n;
        }
        stream
            .set_nonblocking(false)
            .map_err(|e| fail(format!("O_NONBLOCK: {e}")))?;
        if plan.pause_every > 0 && index % plan.pause_every == plan.pause_every - 1 {
            thread::sleep(plan.pause);
        }
    }
    close_with_reset(stream)
}

/// Reads the echo of `sent` in `read_chunk` pieces, checking every byte;
/// after all of it, expects EOF (the client half-closed).
fn receive(mut stream: &TcpStream, sent: &[u8], plan: &ClientPlan) -> CheckResult {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut buf = vec![0u8; plan.read_chunk];
    let mut received = 0;
    loop {
        if Instant::now() >= deadline {
            return Err(CheckFailure::new(format!(
                "{plan:?}: only {received} of {} bytes came back within {CLIENT_DEADLINE:?}",
                sent.len()
            )));
        }
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CheckFailure::new(format!(
                    "{plan:?}: reading after {received} of {} bytes: {e}",
                    sent.len()
                )));
            }
        };
        if n == 0 {
            if received == sent.len() {
                return Ok(());
            }
            return Err(CheckFailure::new(format!(
                "{plan:?}: EOF after {received} of {} bytes",
                sent.len()
            )));
        }
        check_echo(plan, sent, received, &buf[..n])?;
        received += n;
    }
}

/// Checks that `echoed`, arriving after `received` bytes of echo, is the
/// next part of `sent`; a failure names the first offset that differs.
fn check_echo(plan: &ClientPlan, sent: &[u8], received: usize, echoed: &[u8]) -> CheckResult {
    let n = echoed.len();
    if received + n > sent.len() {
        return Err(CheckFailure::new(format!(
            "{plan:?}: {} bytes came back, {} were sent",
            received + n,
            sent.len()
        )));
    }
    if let Some(i) = (0..n).find(|&i| echoed[i] != sent[received + i]) {
        return Err(CheckFailure::new(format!(
            "{plan:?}: echo differed at offset {}: sent {:#04x}, got {:#04x}",
            received + i,
            sent[received + i],
            echoed[i]
        )));
    }
    Ok(())
}
