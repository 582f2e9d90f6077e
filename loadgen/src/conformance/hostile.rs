//! Checks with clients that misbehave: they reset connections mid-stream or
//! send without ever reading. The server must survive them, keep serving
//! everyone else, and not pay for them in descriptors or memory.

use std::io::Read;
use std::time::Duration;

use super::client::{
    Pattern, close_with_reset, connect, echo_exactly, pattern, write_without_reading,
};
use super::resources::{fds_settle_to, settled_fd_baseline};
use super::{CheckFailure, CheckResult, Context, Target, fail};

/// Clients in [`reset_mid_stream`].
const RESETTING_CLIENTS: usize = 50;

/// Clients that send a lot, read a little and then reset the connection
/// (SO_LINGER 0) while the server is still writing to them: the server keeps
/// running, serves the next client correctly and closes every one of their
/// descriptors. Writing to a reset socket fails with EPIPE/ECONNRESET (and
/// raises SIGPIPE, unless ignored): a server that treats that as fatal dies here.
pub fn reset_mid_stream(target: &Target<'_>) -> CheckResult {
    let fds_before = settled_fd_baseline(target)?;
    let chunk = pattern(Pattern::Counter, 64 * 1024);
    for client in 0..RESETTING_CLIENTS {
        let stream = connect(target.addr)?;
        write_without_reading(&stream, &chunk, 1024 * 1024, Duration::from_millis(50))
            .context(|| format!("resetting client {client}: sending"))?;
        // One byte back proves the server is busy echoing to us.
        let mut first = [0u8; 1];
        (&stream)
            .read_exact(&mut first)
            .context(|| format!("resetting client {client}: waiting for the echo to start"))?;
        close_with_reset(stream)?;
    }
    target.still_running(&format!(
        "after {RESETTING_CLIENTS} clients reset their connections mid-stream"
    ))?;
    let stream = connect(target.addr)?;
    echo_exactly(
        &stream,
        &pattern(Pattern::Noise, 64 * 1024),
        "a client after the resets",
    )?;
    drop(stream);
    if let Some(before) = fds_before {
        fds_settle_to(
            target,
            before,
            "after clients reset their connections mid-stream",
        )?;
    }
    Ok(())
}

/// How much the client in [`never_reading_client`] tries to send, at least.
const FLOOD_BYTES: usize = 64 * 1024 * 1024;

/// How much the server's memory may grow while the flooder is stalled.
const RSS_GROWTH_LIMIT: u64 = 32 * 1024 * 1024;

/// A client writes 64 MiB (more, if the kernel's socket buffers could hold
/// that much) and never reads. The server must stop reading it once its echo
/// backs up, so the client's writes stall before all of it is taken; it must
/// not grow its memory by more than 32 MiB meanwhile; and it must go on
/// serving another client.
pub fn never_reading_client(target: &Target<'_>) -> CheckResult {
    // What a correct server lets through is at most what the kernel's socket
    // buffers hold on both ends; anything beyond that it holds in its own memory.
    let kernel_can_hold = kernel_buffer_bound();
    let flood_bytes = match kernel_can_hold {
        Some(bound) => FLOOD_BYTES.max(bound + RSS_GROWTH_LIMIT as usize),
        None => FLOOD_BYTES,
    };
    let rss_before = rss(target)?;
    let flooder = connect(target.addr)?;
    let chunk = pattern(Pattern::Noise, 256 * 1024);
    let accepted = write_without_reading(&flooder, &chunk, flood_bytes, Duration::from_secs(1))
        .context(|| "the never-reading client: sending".to_owned())?;

    // While the flooder is stuck, another client must still be served.
    let bystander = connect(target.addr)?;
    echo_exactly(
        &bystander,
        &pattern(Pattern::Text, 64 * 1024),
        "a client served while another never reads",
    )?;

    if let (Some(before), Some(after)) = (rss_before, rss(target)?) {
        let growth = after.saturating_sub(before);
        if growth > RSS_GROWTH_LIMIT {
            fail!(
                "server RSS grew by {} MiB (from {} to {} MiB) while a client that never \
                 reads sent {} MiB; expected under {} MiB: it must stop reading that client \
                 instead of buffering its echo",
                growth >> 20,
                before >> 20,
                after >> 20,
                accepted >> 20,
                RSS_GROWTH_LIMIT >> 20
            );
        }
    }
    // Also (and, without the process, only) how much the server took.
    if let Some(bound) = kernel_can_hold
        && accepted >= flood_bytes
    {
        fail!(
            "the server took all {} MiB from a client that never reads, though socket \
             buffers hold at most ~{} MiB: it keeps reading instead of applying \
             back-pressure, and buffers without bound",
            flood_bytes >> 20,
            bound >> 20
        );
    }
    drop(flooder);
    target.still_running("after a client that never reads")
}

/// The server's RSS, when we have the process and `/proc`.
pub(super) fn rss(target: &Target<'_>) -> Result<Option<u64>, CheckFailure> {
    match target.server {
        Some(server) if cfg!(target_os = "linux") => server
            .rss_bytes()
            .map(Some)
            .context(|| "reading the server's RSS".to_owned()),
        _ => Ok(None),
    }
}

/// The most a loopback connection's socket buffers can hold in one direction
/// and back: both ends' send and receive buffers at their maximum size.
/// `None` where we cannot read the limits.
fn kernel_buffer_bound() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let max_of = |path: &str| -> Option<usize> {
            std::fs::read_to_string(path)
                .ok()?
                .split_whitespace()
                .nth(2)?
                .parse()
                .ok()
        };
        let rmem = max_of("/proc/sys/net/ipv4/tcp_rmem")?;
        let wmem = max_of("/proc/sys/net/ipv4/tcp_wmem")?;
        // Client send + server receive on the way in; server send + client
        // receive on the way back.
        Some(2 * (rmem + wmem))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}
