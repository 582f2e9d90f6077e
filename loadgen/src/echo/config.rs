//! What an echo run is: the engine, its length, and every setting.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::LoadError;

/// Which client implementation drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// mio event loops, `threads` of them, each owning a share of the connections.
    Events,
    /// One blocking OS thread per connection: `write_all`, `read_exact`, repeat.
    Threads,
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunLength {
    /// Run `warmup` without counting, then measure for `measure`.
    Duration { warmup: Duration, measure: Duration },
    /// Send exactly this many messages in total, spread over the connections.
    Messages(u64),
}

/// Everything an echo run needs. Start from [`EchoConfig::new`] and set fields.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub addr: SocketAddr,
    /// Local addresses to connect from, round-robin (empty: kernel's choice).
    pub sources: Vec<IpAddr>,
    pub connections: usize,
    /// Bytes per message including the trailing `\n` (at least 1).
    pub message_size: usize,
    /// Messages in flight per connection (at least 1).
    pub pipeline: usize,
    pub length: RunLength,
    pub engine: Engine,
    /// Event-loop threads for [`Engine::Events`].
    pub threads: usize,
    /// A connection waiting this long for any echoed byte counts as a
    /// timeout error; also how long the end of a run waits for stragglers.
    pub timeout: Duration,
    /// Pin loadgen (the whole process) to this core (Linux).
    pub cpu: Option<usize>,
    /// Report this process's CPU use next to loadgen's (Linux).
    pub server_pid: Option<u32>,
    /// Draw a progress bar on stderr if it is a terminal.
    pub progress: bool,
}

impl EchoConfig {
    /// One connection, 64-byte messages, no pipelining, 5 s, events engine.
    pub fn new(addr: SocketAddr) -> EchoConfig {
        EchoConfig {
            addr,
            sources: Vec::new(),
            connections: 1,
            message_size: 64,
            pipeline: 1,
            length: RunLength::Duration {
                warmup: Duration::ZERO,
                measure: Duration::from_secs(5),
            },
            engine: Engine::Events,
            threads: 1,
            timeout: Duration::from_secs(5),
            cpu: None,
            server_pid: None,
            progress: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: &str| Err(LoadError::Config(msg.to_string()));
        if self.connections == 0 {
            return bad("--conns must be at least 1");
        }
        if self.message_size == 0 {
            return bad("--size must be at least 1 (the message ends in \\n)");
        }
        if self.pipeline == 0 {
            return bad("--pipeline must be at least 1");
        }
        if self.threads == 0 || self.threads > self.connections {
            return bad("--threads must be between 1 and --conns");
        }
        if self.engine == Engine::Threads && self.pipeline != 1 {
            return bad("--engine threads supports only --pipeline 1");
        }
        if self.engine == Engine::Threads && !self.sources.is_empty() {
            return bad("--engine threads does not support --sources");
        }
        if let RunLength::Messages(0) = self.length {
            return bad("--messages must be at least 1");
        }
        Ok(())
    }
}

/// Messages connection `index` (of `connections`) sends in a messages run.
pub(crate) fn quota(config: &EchoConfig, index: usize) -> Option<u64> {
    match config.length {
        RunLength::Messages(total) => {
            let c = config.connections as u64;
            Some(total / c + u64::from((index as u64) < total % c))
        }
        RunLength::Duration { .. } => None,
    }
}
