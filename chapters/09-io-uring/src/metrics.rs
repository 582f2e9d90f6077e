//! Monitoring, as production servers do it: a Prometheus text endpoint
//! (`--metrics ADDR`, `GET /metrics`) and a one-line status on stderr every
//! few seconds. Both are rendered from a [`Sample`]: the supervisor's reading
//! of every worker's shared counters plus their resident memory.
//!
//! The HTTP side is deliberately tiny: HTTP/1.0, one request per connection,
//! served from the supervisor's own epoll loop (edge-triggered, like chapter
//! 08's reactors: the supervisor is not where io_uring pays), no framework.
//!
//! It has no authentication: anyone who can connect can read the counters.
//! Bind it to loopback (or a private interface) and let the scraper come to
//! it there.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::stats::{COUNTERS, Counters, ITERATION_BUCKET_BOUNDS_NS};
use crate::sys::{
    self, EDGE_TRIGGERED, Epoll, Event, Fd, Listener, READ_CLOSED, READABLE, Socket, WRITABLE,
};

// ANCHOR: sample
/// One worker as the supervisor sees it right now.
#[derive(Clone, Debug)]
pub struct WorkerSample {
    pub index: usize,
    /// `None` while the worker is dead and waiting to be restarted.
    pub pid: Option<libc::pid_t>,
    /// This incarnation's counters (a restarted worker starts from zero).
    pub counters: Counters,
    pub resident_bytes: u64,
}

/// Everything one status line or one scrape reports.
#[derive(Clone, Debug)]
pub struct Sample {
    pub workers: Vec<WorkerSample>,
    /// Over all workers, dead incarnations included, so that every
    /// `_total` stays monotonic across restarts (Prometheus requires it).
    pub total: Counters,
    pub restarts: u64,
}

impl Sample {
    pub fn alive(&self) -> usize {
        self.workers.iter().filter(|w| w.pid.is_some()).count()
    }

    pub fn resident_bytes(&self) -> u64 {
        self.workers.iter().map(|w| w.resident_bytes).sum()
    }
}
// ANCHOR_END: sample

// ANCHOR: status_line
/// `status: workers=3/3 open=49999 accepted=50000 closed=1 shed=0 rss=41.2 MiB
/// open_per_worker=16511..16780 wakeups=10234`
pub fn status_line(sample: &Sample) -> String {
    let open_per_worker = sample
        .workers
        .iter()
        .filter(|w| w.pid.is_some())
        .map(|w| w.counters.open());
    let (min, max) = open_per_worker.fold((u64::MAX, 0), |(min, max), open| {
        (min.min(open), max.max(open))
    });
    let min = if min == u64::MAX { 0 } else { min };
    format!(
        "status: workers={}/{} open={} accepted={} closed={} shed={} rss={:.1} MiB \
         open_per_worker={min}..{max} wakeups={} restarts={}",
        sample.alive(),
        sample.workers.len(),
        sample.total.open(),
        sample.total.accepted,
        sample.total.closed,
        sample.total.shed,
        sample.resident_bytes() as f64 / (1024.0 * 1024.0),
        sample.total.wakeups,
        sample.restarts,
    )
}
// ANCHOR_END: status_line

// ANCHOR: render
// ANCHOR: render_1
/// The Prometheus text exposition format (version 0.0.4): for each metric a
/// `# HELP` and `# TYPE` line, then `name{labels} value` lines.
pub fn render(sample: &Sample) -> String {
    let mut out = String::with_capacity(4096 + 128 * sample.workers.len());
    let total = &sample.total;
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "c1m_connections_open",
        "gauge",
        "Connections accepted and not yet closed, over all workers.",
        total.open(),
    );
    for counter in COUNTERS {
        if let Some(name) = counter.metric {
            metric(name, "counter", counter.help, (counter.value)(total));
        }
    }
    metric(
        "c1m_resident_memory_bytes",
        "gauge",
        "Resident set size summed over the worker processes.",
        sample.resident_bytes(),
    );
    metric(
        "c1m_workers",
        "gauge",
        "Worker processes running.",
        sample.alive() as u64,
    );
    metric(
        "c1m_worker_restarts_total",
        "counter",
        "Workers restarted after dying.",
        sample.restarts,
    );

    // ANCHOR_END: render_1
    let name = "c1m_loop_iteration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from io_uring_enter returning to the next call: how long each \
         wake-up kept a reactor busy.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (bound_ns, count) in ITERATION_BUCKET_BOUNDS_NS
        .iter()
        .zip(&total.iteration_buckets)
    {
        cumulative += count;
        let le = *bound_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += total.iteration_buckets.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {cumulative}",
        total.iteration_ns_sum as f64 / 1e9
    );
    // ANCHOR: render_2

    // Per worker: the two numbers that show balance and leaks.
    for (name, help) in [
        (
            "c1m_worker_connections_open",
            "Connections open in one worker process.",
        ),
        (
            "c1m_worker_resident_memory_bytes",
            "Resident set size of one worker process.",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for worker in sample.workers.iter().filter(|w| w.pid.is_some()) {
            let value = if name == "c1m_worker_connections_open" {
                worker.counters.open()
            } else {
                worker.resident_bytes
            };
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {value}", worker.index);
        }
    }
    out
}
// ANCHOR_END: render_2
// ANCHOR_END: render

// ANCHOR: http
/// Most scrapers connected at once. A new one past this (or past the
/// descriptor limit) takes the place of the oldest that has not yet sent
/// its request; if every one has, the newcomer is closed on arrival.
const MAX_CLIENTS: usize = 64;
/// A request head longer than this is refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A scraper has this long to send its request and read the response; then
/// it is closed and its place freed, so idle connections cannot hold every
/// place for ever.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/metrics` endpoint: a listener and the few HTTP clients it has.
pub struct MetricsServer {
    listener: Listener,
    clients: Vec<HttpClient>,
    /// Closed to make room for one `accept` when the supervisor is out of
    /// descriptors (EMFILE), so a waiting scraper is closed instead of left
    /// in the queue, where the level-triggered listener would report it on
    /// every `epoll_wait`: a spinning supervisor.
    spare: Option<Fd>,
}

struct HttpClient {
    socket: Socket,
    request: Vec<u8>,
    /// `Some` once the request is complete: the response and how much of
    /// it has been written.
    response: Option<(Vec<u8>, usize)>,
    /// When this scraper is closed, done or not.
    deadline: Instant,
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr, epoll: &Epoll) -> io::Result<MetricsServer> {
        let listener = Listener::bind(addr, 64, false)?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: metrics on {addr} are readable by anyone who can connect (no \
                 authentication); bind --metrics to 127.0.0.1 unless that is intended"
            );
        }
        epoll.add(listener.raw_fd(), READABLE, token(listener.raw_fd()))?;
        Ok(MetricsServer {
            listener,
            clients: Vec::new(),
            spare: sys::open_spare_descriptor().ok(),
        })
    }

    /// The earliest scraper deadline, for the supervisor's `epoll_wait`.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.deadline).min()
    }

    /// Closes every scraper whose time is up.
    pub fn expire(&mut self, now: Instant) {
        // Dropping a client closes its socket (and unregisters it).
        self.clients.retain(|c| c.deadline > now);
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether this epoll event is ours to handle.
    pub fn owns(&self, event: Event) -> bool {
        let fd = fd_of(event);
        fd == self.listener.raw_fd() || self.clients.iter().any(|c| c.socket.raw_fd() == fd)
    }

    /// Accepts scrapers, or advances one: reads its request and, once it is
    /// complete, writes `render(sample())` (taken only then, so a scrape
    /// costs a sample only when someone asks).
    pub fn on_event(&mut self, epoll: &Epoll, event: Event, sample: impl FnOnce() -> Sample) {
        let fd = fd_of(event);
        if fd == self.listener.raw_fd() {
            self.accept_clients(epoll);
            return;
        }
        let Some(index) = self.clients.iter().position(|c| c.socket.raw_fd() == fd) else {
            return;
        };
        let client = &mut self.clients[index];
        let done = event.is_error() || client.advance(sample).unwrap_or(true);
        if done {
            // Dropping the client closes its socket (and unregisters it).
            self.clients.swap_remove(index);
        }
    }

    fn accept_clients(&mut self, epoll: &Epoll) {
        loop {
            let socket = match self.listener.accept() {
                Ok(socket) => socket,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => {
                    // Free a descriptor by closing the oldest silent scraper
                    // and try again; failing that, shed the newcomer.
                    if self.evict_oldest_waiting() || self.shed_one() {
                        continue;
                    }
                    return; // not even the spare: the next turn tries again
                }
                // WouldBlock: queue empty. Anything else: a scraper will
                // retry; the supervisor must not spin or die.
                Err(_) => return,
            };
            if self.clients.len() >= MAX_CLIENTS && !self.evict_oldest_waiting() {
                continue; // dropped: closed at once
            }
            let fd = socket.raw_fd();
            let interest = READABLE | WRITABLE | READ_CLOSED | EDGE_TRIGGERED;
            if epoll.add(fd, interest, token(fd)).is_ok() {
                self.clients.push(HttpClient {
                    socket,
                    request: Vec::new(),
                    response: None,
                    deadline: Instant::now() + CLIENT_TIMEOUT,
                });
            }
        }
    }

    /// Closes the scraper that has waited longest without sending a whole
    /// request. `false` if every scraper has asked (they are being served).
    fn evict_oldest_waiting(&mut self) -> bool {
        let oldest = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.response.is_none())
            .min_by_key(|(_, c)| c.deadline)
            .map(|(index, _)| index);
        oldest
            .map(|index| self.clients.swap_remove(index))
            .is_some()
    }

    /// Accepts one waiting scraper into the spare descriptor's place and
    /// closes it at once; then takes the spare back.
    fn shed_one(&mut self) -> bool {
        if self.spare.take().is_none() {
            return false;
        }
        let shed = self.listener.accept().is_ok();
        self.spare = sys::open_spare_descriptor().ok();
        shed
    }
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl HttpClient {
    /// Reads what has arrived and writes what we can. `Ok(true)` when the
    /// exchange is over and the connection should be closed.
    fn advance(&mut self, sample: impl FnOnce() -> Sample) -> io::Result<bool> {
        if self.response.is_none() {
            let mut chunk = [0u8; 2048];
            loop {
                match self.socket.read(&mut chunk) {
                    // EOF: a client may send its request and its FIN at
                    // once (`HTTP/1.0`, then shutdown); a complete request
                    // is still answered. Without one it left before asking.
                    Ok(0) if has_complete_head(&self.request) => break,
                    Ok(0) => return Ok(true),
                    Ok(n) => self.request.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                if self.request.len() > MAX_REQUEST {
                    self.response = Some((response(431, "request too large\n"), 0));
                    break;
                }
            }
            if self.response.is_none() {
                if !has_complete_head(&self.request) {
                    return Ok(false);
                }
                let reply = if wants_metrics(&self.request) {
                    response(200, &render(&sample()))
                } else {
                    response(404, "try GET /metrics\n")
                };
                self.response = Some((reply, 0));
            }
        }
        let Some((bytes, sent)) = &mut self.response else {
            return Ok(false);
        };
        while *sent < bytes.len() {
            match self.socket.writev(&[io::IoSlice::new(&bytes[*sent..])]) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

fn has_complete_head(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
}

fn wants_metrics(request: &[u8]) -> bool {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    method == b"GET" && (path == b"/metrics" || path.starts_with(b"/metrics?"))
}

fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Request Header Fields Too Large",
    };
    format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
// ANCHOR_END: http

fn token(fd: RawFd) -> u64 {
    u64::try_from(fd).unwrap_or(u64::MAX)
}

fn fd_of(event: Event) -> RawFd {
    RawFd::try_from(event.token()).unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        let mut counters = Counters {
            accepted: 10,
            closed: 4,
            ..Counters::default()
        };
        counters.iteration_buckets[0] = 3;
        counters.iteration_buckets[ITERATION_BUCKET_BOUNDS_NS.len()] = 1;
        Sample {
            workers: vec![
                WorkerSample {
                    index: 0,
                    pid: Some(100),
                    counters,
                    resident_bytes: 1 << 20,
                },
                WorkerSample {
                    index: 1,
                    pid: None,
                    counters: Counters::default(),
                    resident_bytes: 0,
                },
            ],
            total: counters,
            restarts: 1,
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let text = render(&sample());
        assert!(text.contains("c1m_loop_iteration_seconds_bucket{le=\"0.000001\"} 3\n"));
        assert!(text.contains("c1m_loop_iteration_seconds_bucket{le=\"1\"} 3\n"));
        assert!(text.contains("c1m_loop_iteration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("c1m_loop_iteration_seconds_count 4\n"));
    }

    #[test]
    fn every_sample_line_belongs_to_a_declared_metric() {
        let text = render(&sample());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| declared.iter().any(|d| d == base))
                    .unwrap_or(name);
                assert!(declared.iter().any(|d| d == base), "undeclared: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
            }
        }
    }

    #[test]
    fn dead_workers_are_left_out_of_per_worker_gauges() {
        let text = render(&sample());
        assert!(text.contains("c1m_worker_connections_open{worker=\"0\"} 6\n"));
        assert!(!text.contains("worker=\"1\""));
        assert!(text.contains("c1m_connections_open 6\n"));
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert!(wants_metrics(b"GET /metrics HTTP/1.1\r\n\r\n"));
        assert!(!wants_metrics(b"POST /metrics HTTP/1.1\r\n\r\n"));
        assert!(!wants_metrics(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(has_complete_head(b"GET /metrics HTTP/1.0\n\n"));
        assert!(!has_complete_head(b"GET /metrics HTTP/1.0\r\n"));
    }
}
