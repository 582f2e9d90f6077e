//! Why a run could not happen at all (as opposed to a run that measured errors).
//!
//! A limit loadgen hits is named together with its fix, on one line, and maps
//! to exit code 2 like a bad flag: the numbers of a run that ran out of
//! descriptors or ports would describe the host, not the server.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// A run that could not be carried out.
#[derive(Debug)]
pub enum LoadError {
    /// `socket()` failed with EMFILE, or the connections asked for cannot fit
    /// under the hard `RLIMIT_NOFILE`.
    OutOfFds { connections: usize, limit: u64 },
    /// `socket()` failed with ENFILE: the whole system is out of descriptors.
    SystemOutOfFds { connections: usize },
    /// EADDRNOTAVAIL / EADDRINUSE at connect: no local port left for this
    /// source address and destination.
    PortsExhausted {
        connections: usize,
        addr: SocketAddr,
    },
    /// ECONNREFUSED: nothing is listening on the address.
    Refused { addr: SocketAddr },
    /// A configuration that cannot run (e.g. zero connections).
    Config(String),
    /// Any other I/O failure, with what loadgen was doing.
    Io { doing: String, source: io::Error },
}

impl LoadError {
    /// Process exit code for this error: 2 for limits and bad configuration
    /// (the same as a bad flag), 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            LoadError::Io { .. } => 1,
            _ => 2,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(doing: impl Into<String>, source: io::Error) -> LoadError {
        LoadError::Io {
            doing: doing.into(),
            source,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::OutOfFds { connections, limit } => write!(
                f,
                "out of file descriptors at {connections} connections \
                 (RLIMIT_NOFILE={limit}); raise `ulimit -n` or use --procs"
            ),
            LoadError::SystemOutOfFds { connections } => write!(
                f,
                "the system is out of file descriptors at {connections} connections \
                 (ENFILE); raise fs.file-max / fs.nr_open"
            ),
            LoadError::PortsExhausted { connections, addr } => write!(
                f,
                "out of local ports at {connections} connections to {addr} (EADDRNOTAVAIL); \
                 widen net.ipv4.ip_local_port_range or spread over more source addresses \
                 with --sources 127.0.0.1-127.0.0.20"
            ),
            LoadError::Refused { addr } => {
                write!(f, "nothing is listening on {addr} (connection refused)")
            }
            LoadError::Config(msg) => write!(f, "{msg}"),
            LoadError::Io { doing, source } => write!(f, "{doing}: {source}"),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
