//! Following the ramp from outside: how many connections the server holds,
//! and a progress line while it fills up.

use std::io::{self, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use loadgen::server::ServerProcess;

use crate::run::TaskError;

/// A one-line progress bar on a terminal; a line every 5 s elsewhere.
pub(super) struct RampProgress {
    total: u64,
    terminal: bool,
    last_line: Instant,
}

impl RampProgress {
    pub(super) fn new(total: u64) -> RampProgress {
        RampProgress {
            total,
            terminal: io::stderr().is_terminal(),
            last_line: Instant::now(),
        }
    }

    pub(super) fn show(&mut self, open: u64, elapsed: f64, rate: f64) {
        let done = (open.min(self.total) as f64 / self.total.max(1) as f64).clamp(0.0, 1.0);
        if self.terminal {
            let filled = (done * 30.0) as usize;
            eprint!(
                "\r      ramp [{}{}] {open}/{} open  {rate:>7.0}/s  {elapsed:5.1} s\x1b[K",
                "=".repeat(filled),
                " ".repeat(30 - filled),
                self.total
            );
            let _ = io::stderr().flush();
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!(
                "      ramp: {open}/{} open ({:.0}%), {rate:.0}/s, {elapsed:.1} s",
                self.total,
                done * 100.0
            );
        }
    }

    pub(super) fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

/// Reads the server's open-connection count: its Prometheus metric when it
/// serves one, else its process tree's descriptors above `fds_idle`.
pub(super) struct OpenCounter {
    pub(super) metrics: Option<SocketAddr>,
    pub(super) fds_idle: usize,
}

impl OpenCounter {
    pub(super) fn open(&self, server: &ServerProcess) -> Result<u64, TaskError> {
        if let Some(open) = self
            .metrics
            .and_then(|addr| scrape(addr, "c1m_connections_open"))
        {
            return Ok(open as u64);
        }
        let fds = server
            .open_fds()
            .map_err(|e| TaskError::Failed(format!("reading the server's descriptors: {e}")))?;
        Ok(fds.saturating_sub(self.fds_idle) as u64)
    }
}

/// One sample from a Prometheus text endpoint (`GET /metrics`, HTTP/1.0).
fn scrape(addr: SocketAddr, metric: &str) -> Option<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == metric).then(|| value.parse().ok())?
    })
}

/// Waits (briefly) for a stderr line of the server starting with `prefix`.
pub(super) fn server_said(server: &ServerProcess, prefix: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let found = server
            .stderr()
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string);
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
