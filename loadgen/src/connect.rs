//! The connection engine: open many TCP connections fast, without a thread
//! per connection, and name the limit when the host runs out of something.
//!
//! Connects are non-blocking: `connect()` returns EINPROGRESS at once and the
//! socket turns writable when the handshake is done. A bounded number is in
//! flight at a time, optionally paced to a rate. Each connection can be bound
//! to one of several local source addresses (127.0.0.x): one source address
//! has at most ~64K ephemeral ports towards one server address, so a million
//! connections need many sources. On Linux, `IP_BIND_ADDRESS_NO_PORT` lets
//! `bind()` pick only the address and leaves the port to `connect()`, which
//! can reuse a port towards different destinations. So a server that
//! listens on several addresses (0.0.0.0, reached as 127.0.0.1, 127.0.0.2,
//! ...) gives every source address one port range per destination.

// ANCHOR: start_connect
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::LoadError;
use crate::report::ConnectStats;

/// Where to connect, and from which local addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Destination addresses, all on `addr`'s port. Empty: `addr` alone.
    pub dests: Vec<IpAddr>,
    /// Local addresses to bind. Empty: let the kernel choose.
    pub sources: Vec<IpAddr>,
}

impl Target {
    /// Where connection `index` goes and where it comes from. The
    /// connections cycle through every (source, destination) pair in turn,
    /// so each pair gets an equal share (picking the source and the
    /// destination round-robin separately would use only some pairs when
    /// the two counts share a factor).
    pub fn endpoints(&self, index: usize) -> (SocketAddr, Option<IpAddr>) {
        let sources = self.sources.len().max(1);
        let pair = index % (sources * self.dests.len().max(1));
        let source = self.sources.get(pair % sources).copied();
        let dest = match self.dests.get(pair / sources) {
            Some(&ip) => SocketAddr::new(ip, self.addr.port()),
            None => self.addr,
        };
        (dest, source)
    }
}

/// Starts a non-blocking connect from `source` (if any) to `addr`.
pub fn start_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    // Small echo messages must leave at once, not wait for Nagle.
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        #[cfg(target_os = "linux")]
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Asks `bind()` to choose only the address and leave the port to
/// `connect()`, so ports are shared across destinations (Linux 4.2+).
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is owned by `socket` and open; `on` is a c_int
    // that lives for the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
// ANCHOR_END: start_connect

/// Turns an error that means "the host ran out of something" into the
/// error that names it; `None` for errors that only fail this connection.
pub fn limit_error(err: &io::Error, connections: usize, addr: SocketAddr) -> Option<LoadError> {
    match err.raw_os_error()? {
        libc::EMFILE => Some(LoadError::OutOfFds {
            connections,
            limit: crate::cpu::fd_soft_limit(),
        }),
        libc::ENFILE => Some(LoadError::SystemOutOfFds { connections }),
        libc::EADDRNOTAVAIL | libc::EADDRINUSE => {
            Some(LoadError::PortsExhausted { connections, addr })
        }
        libc::ECONNREFUSED => Some(LoadError::Refused { addr }),
        _ => None,
    }
}

/// Parses `--sources`: comma-separated addresses or inclusive IPv4 ranges,
/// e.g. `127.0.0.1-127.0.0.20,127.0.1.1`.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    parse_addresses(spec, "--sources")
}

/// Parses `--dests` the way `--sources` is parsed: `127.0.0.1-127.0.0.8`.
pub fn parse_dests(spec: &str) -> Result<Vec<IpAddr>, String> {
    parse_addresses(spec, "--dests")
}

fn parse_addresses(spec: &str, flag: &str) -> Result<Vec<IpAddr>, String> {
    let mut sources = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((first, last)) = part.split_once('-') {
            let parse = |s: &str| {
                s.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|e| format!("bad address {s:?} in range {part:?}: {e}"))
            };
            let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
            if last < first || last - first >= 1 << 24 {
                return Err(format!("{flag}: bad address range {part:?}"));
            }
            sources.extend((first..=last).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
        } else {
            let addr = part
                .parse::<IpAddr>()
                .map_err(|e| format!("{flag}: bad address {part:?}: {e}"))?;
            sources.push(addr);
        }
    }
    if sources.is_empty() {
        return Err(format!("{flag} names no address"));
    }
    Ok(sources)
}

/// Checks that every source address can be bound, so that a later
/// EADDRNOTAVAIL means "out of ports", not "not an address of this host".
pub fn check_sources(sources: &[IpAddr]) -> Result<(), LoadError> {
    for &source in sources {
        let bound = Socket::new(
            Domain::for_address(SocketAddr::new(source, 0)),
            Type::STREAM,
            None,
        )
        .and_then(|socket| socket.bind(&SocketAddr::new(source, 0).into()));
        if let Err(e) = bound {
            return Err(LoadError::Config(format!(
                "--sources: cannot bind {source} ({e}); use addresses of this host, \
                 e.g. 127.0.0.1-127.0.0.20 on Linux loopback"
            )));
        }
    }
    Ok(())
}

/// How to open a batch of connections.
#[derive(Debug, Clone)]
pub struct RampPlan {
    pub count: usize,
    /// Connects started per second; `None` starts them as fast as the
    /// in-flight bound allows.
    pub rate: Option<f64>,
    /// At most this many handshakes in progress at once.
    pub max_in_flight: usize,
    /// A connect not done after this long counts as failed.
    pub timeout: Duration,
    /// Index of the first connection, used to pick its source and
    /// destination addresses, so that several loops sharing one list
    /// spread evenly.
    pub first_index: usize,
}

/// Connections a ramp opened. Each stream is still registered with the poll
/// it was opened on (with some token); re-register it with your own token.
#[derive(Debug)]
pub struct Ramped {
    pub streams: Vec<TcpStream>,
    pub stats: ConnectStats,
}

/// A handshake in progress.
struct Connecting {
    stream: TcpStream,
    started: Instant,
}

// ANCHOR: ramp
/// Opens `plan.count` connections to `target` through `poll`. Fails only on a
/// host limit (descriptors, ports) or a refused connect; other failed
/// connects are counted in the stats. `progress` is told the established
/// count as it grows.
pub fn ramp(
    poll: &mut Poll,
    target: &Target,
    plan: &RampPlan,
    progress: &mut dyn FnMut(usize),
) -> Result<Ramped, LoadError> {
    check_sources(&target.sources)?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Connecting>> = Vec::new();
    let mut free_slots: Vec<usize> = Vec::new();
    let mut streams = Vec::with_capacity(plan.count);
    let (mut started, mut in_flight, mut failed) = (0usize, 0usize, 0usize);
    let begin = Instant::now();
    let mut last_timeout_scan = begin;

    while streams.len() + failed < plan.count {
        // Start as many connects as the rate and the in-flight bound allow.
        let allowed_by_rate = match plan.rate {
            Some(rate) => ((begin.elapsed().as_secs_f64() * rate) as usize + 1).min(plan.count),
            None => plan.count,
        };
        while started < allowed_by_rate && in_flight < plan.max_in_flight {
            let (dest, source) = target.endpoints(plan.first_index + started);
            let mut stream = match start_connect(dest, source) {
                Ok(stream) => stream,
                Err(e) => match limit_error(&e, streams.len() + in_flight, dest) {
                    Some(limit) => return Err(limit),
                    None => {
                        started += 1;
                        failed += 1;
                        continue;
                    }
                },
            };
            let slot = free_slots.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            poll.registry()
                .register(
                    &mut stream,
                    Token(slot),
                    Interest::WRITABLE | Interest::READABLE,
                )
                .map_err(|e| LoadError::io("registering a connecting socket", e))?;
            slots[slot] = Some(Connecting {
                stream,
                started: Instant::now(),
            });
            started += 1;
            in_flight += 1;
        }

        // Sleep until a handshake finishes or the rate lets the next one start.
        let timeout = match plan.rate {
            Some(rate) if started < plan.count && in_flight < plan.max_in_flight => {
                let next_start = Duration::from_secs_f64(started as f64 / rate);
                next_start
                    .saturating_sub(begin.elapsed())
                    .min(Duration::from_millis(100))
            }
            _ => Duration::from_millis(100),
        };
        if in_flight == 0 && timeout.is_zero() {
            continue;
        }
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::io("waiting for connects", e)),
        }
        for event in events.iter() {
            let slot = event.token().0;
            let Some(connecting) = slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let outcome = handshake_result(&connecting.stream);
            if matches!(outcome, Handshake::Pending) {
                continue;
            }
            // Established or failed: either way the slot is free again.
            let Some(done) = slots[slot].take() else {
                continue;
            };
            in_flight -= 1;
            free_slots.push(slot);
            match outcome {
                Handshake::Done => streams.push(done.stream),
                Handshake::Failed(e) => {
                    if let Some(limit) = limit_error(&e, streams.len() + in_flight, target.addr) {
                        return Err(limit);
                    }
                    failed += 1;
                }
                Handshake::Pending => {}
            }
        }

        // Give up on handshakes that take too long (a SYN dropped by a full
        // accept queue is retried after 1 s, 3 s, ...).
        if last_timeout_scan.elapsed() >= Duration::from_millis(100) {
            last_timeout_scan = Instant::now();
            for (slot, entry) in slots.iter_mut().enumerate() {
                if entry
                    .as_ref()
                    .is_some_and(|c| c.started.elapsed() >= plan.timeout)
                {
                    *entry = None;
                    free_slots.push(slot);
                    in_flight -= 1;
                    failed += 1;
                }
            }
        }
        progress(streams.len());
    }

    let seconds = begin.elapsed().as_secs_f64();
    Ok(Ramped {
        stats: ConnectStats {
            requested: plan.count,
            established: streams.len(),
            failed,
            seconds,
            per_sec: if seconds > 0.0 {
                streams.len() as f64 / seconds
            } else {
                0.0
            },
        },
        streams,
    })
}
// ANCHOR_END: ramp

enum Handshake {
    Pending,
    Done,
    Failed(io::Error),
}

/// Where a non-blocking connect stands after its socket reported an event:
/// a pending socket error means it failed; a peer address means it is
/// connected; "not connected" means the event was spurious.
fn handshake_result(stream: &TcpStream) -> Handshake {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Handshake::Failed(e),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Handshake::Done,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Handshake::Pending,
        Err(e) => Handshake::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_ranges_and_lists() {
        let s = parse_sources("127.0.0.1-127.0.0.3, 127.0.1.9").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(s[3], "127.0.1.9".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_sources("").is_err());
        assert!(parse_sources("localhost").is_err());
        let err = parse_dests("127.0.0.9-127.0.0.2").unwrap_err();
        assert!(err.starts_with("--dests"), "{err}");
        assert_eq!(parse_dests("127.0.0.1-127.0.0.8").unwrap().len(), 8);
    }

    fn target(dests: &str, sources: &str) -> Target {
        let list = |spec: &str| {
            if spec.is_empty() {
                Vec::new()
            } else {
                parse_sources(spec).unwrap()
            }
        };
        Target {
            addr: "127.0.0.1:7000".parse().unwrap(),
            dests: list(dests),
            sources: list(sources),
        }
    }

    #[test]
    fn without_lists_every_connection_goes_to_addr_from_the_kernels_source() {
        let t = target("", "");
        assert_eq!(t.endpoints(0), ("127.0.0.1:7000".parse().unwrap(), None));
        assert_eq!(t.endpoints(12345), t.endpoints(0));
    }

    #[test]
    fn connections_cycle_through_every_source_and_destination_pair_equally() {
        use std::collections::HashMap;
        // Two sources and four destinations share a factor: picking each
        // round-robin on its own would use only four of the eight pairs.
        let t = target("127.0.0.1-127.0.0.4", "127.0.1.1-127.0.1.2");
        let mut pairs: HashMap<(SocketAddr, Option<IpAddr>), usize> = HashMap::new();
        for i in 0..800 {
            *pairs.entry(t.endpoints(i)).or_default() += 1;
        }
        assert_eq!(pairs.len(), 8);
        assert!(pairs.values().all(|&n| n == 100), "{pairs:?}");
        assert!(pairs.keys().all(|(dest, _)| dest.port() == 7000));
        // Destinations alone: round-robin over them, kernel's source.
        let t = target("127.0.0.1-127.0.0.3", "");
        let dests: Vec<SocketAddr> = (0..3).map(|i| t.endpoints(i).0).collect();
        assert_eq!(dests[2], "127.0.0.3:7000".parse().unwrap());
        assert_eq!(t.endpoints(4), t.endpoints(1));
    }
}
