//! What every measurement in c1m-rs covers, and how a server is started for one.
//!
//! [`SERVERS`] is the one list of servers. The criterion benches
//! (`cargo bench -p c1m-benches`) and the results matrix (`cargo xtask
//! results`) both walk it, so adding a chapter to every measurement is one
//! line there.
//!
//! Both measure the same way: the server runs as a release binary pinned to
//! core 0, the load generator runs on core 1 (see [`CorePlan`]), and servers
//! are measured one after another, never at the same time. On a two-core
//! machine the load generator would otherwise fight the server for CPU, and
//! the number would be whoever won.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use loadgen::server::ServerProcess;

/// A chapter of the book, or a baseline written the way most people would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chapter,
    Baseline,
    /// The smallest epoll loop that echoes: not a conformant server, a
    /// ruler for how far the others are from the kernel's own cost. It does
    /// no `--work-us`.
    Floor,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chapter => "chapter",
            Kind::Baseline => "baseline",
            Kind::Floor => "floor",
        }
    }
}

/// Which toolchain builds a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// `cargo build --release -p NAME`: always there.
    Cargo,
    /// Go (`go-echo`): built by its crate's build.rs when Go is on PATH and
    /// copied next to the others; skipped, with one line, when it is not.
    Go,
}

/// One server binary that follows the echo contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// Package and binary name (the same, by the project's convention).
    pub name: &'static str,
    pub kind: Kind,
    /// Flags passed after `--addr 127.0.0.1:0` in every measurement.
    pub args: &'static [&'static str],
    pub toolchain: Toolchain,
}

impl Server {
    pub const fn chapter(name: &'static str) -> Server {
        Server {
            name,
            kind: Kind::Chapter,
            args: &[],
            toolchain: Toolchain::Cargo,
        }
    }

    pub const fn baseline(name: &'static str) -> Server {
        Server {
            name,
            kind: Kind::Baseline,
            args: &[],
            toolchain: Toolchain::Cargo,
        }
    }

    /// A baseline written in Go (see `baselines/go-echo`).
    pub const fn go_baseline(name: &'static str) -> Server {
        Server {
            name,
            kind: Kind::Baseline,
            args: &[],
            toolchain: Toolchain::Go,
        }
    }

    pub const fn floor(name: &'static str) -> Server {
        Server {
            name,
            kind: Kind::Floor,
            args: &[],
            toolchain: Toolchain::Cargo,
        }
    }

    /// Whether it takes `--work-us` (the floor does not).
    pub fn does_work(&self) -> bool {
        self.kind != Kind::Floor
    }

    /// The same server, always started with these extra flags.
    pub const fn with_args(self, args: &'static [&'static str]) -> Server {
        Server { args, ..self }
    }

    /// Where `cargo build --release` puts this server's binary.
    pub fn binary(&self, release_dir: &Path) -> PathBuf {
        release_dir.join(self.name)
    }

    /// Starts the server from `release_dir`, pinned as `cores` says, with
    /// its own flags followed by `extra`, and waits until it listens.
    pub fn start(
        &self,
        release_dir: &Path,
        cores: CorePlan,
        extra: &[&str],
    ) -> io::Result<ServerProcess> {
        let mut builder = ServerProcess::builder(self.binary(release_dir))
            .args(self.args)
            .args(extra);
        if let Some(core) = cores.server {
            builder = builder.cpu(core);
        }
        builder.spawn()
    }
}

// ANCHOR: servers
/// Every server the benches and `cargo xtask results` measure, in the order
/// tables show them. A new chapter is one more line here.
pub const SERVERS: &[Server] = &[
    Server::chapter("ch01-thread-per-connection"),
    Server::chapter("ch02-epoll-level-triggered"),
    Server::chapter("ch03-epoll-edge-triggered"),
    Server::chapter("ch04-worker-pool"),
    Server::chapter("ch05-buffer-pool"),
    Server::chapter("ch06-idle-timeouts"),
    Server::chapter("ch07-core-pinning"),
    // One worker process: the prefork machinery is there, but measured on
    // one core like every other server.
    Server::chapter("ch08-million-connections").with_args(&["--procs", "1"]),
    Server::chapter("ch09-io-uring").with_args(&["--procs", "1"]),
    Server::baseline("tokio-echo"),
    Server::baseline("mio-echo"),
    // Built only where a Go toolchain is installed; skipped with one line elsewhere.
    Server::go_baseline("go-echo"),
    Server::floor("epoll-floor"),
];
// ANCHOR_END: servers

/// The server every other one is compared with, as a ratio measured in the
/// same run: the echo server most Rust programmers would write.
pub const REFERENCE: &str = "tokio-echo";

/// The servers in [`SERVERS`] that can be measured here, in order: all of
/// them, except a Go server where no Go toolchain was found at build time
/// ([`build_release`] has said so, in one line). A missing Cargo binary is
/// left in, so that running it fails loudly.
pub fn available() -> Vec<&'static Server> {
    SERVERS
        .iter()
        .filter(|server| server.toolchain == Toolchain::Cargo || go_echo::BINARY.is_some())
        .collect()
}

/// The floor every server's CPU per message is also compared with: the
/// kernel's own cost of an echo, with nothing of ours on top.
pub const FLOOR: &str = "epoll-floor";

/// Looks a server up by name in [`SERVERS`].
pub fn server(name: &str) -> Option<&'static Server> {
    SERVERS.iter().find(|s| s.name == name)
}

// ANCHOR: matrix
/// Concurrent connections for the messages/s measurements.
pub const CONNECTION_COUNTS: [usize; 4] = [1, 100, 1_000, 10_000];
/// Bytes per echoed message, including its trailing newline.
pub const MESSAGE_SIZE: usize = 64;
/// Messages in flight per connection for the pipelined measurement, and
/// how many connections it uses.
pub const PIPELINE_DEPTH: usize = 16;
pub const PIPELINE_CONNECTIONS: usize = 100;
/// `--work-us` for the CPU-work measurement: microseconds of busy work per message.
pub const WORK_US: u32 = 50;
/// Connections for the CPU-work measurement.
pub const WORK_CONNECTIONS: usize = 100;
/// Idle connections held for the memory probe.
pub const IDLE_CONNECTIONS: usize = 10_000;
// ANCHOR_END: matrix

/// Which core the server and the load generator each run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorePlan {
    pub server: Option<usize>,
    pub load: Option<usize>,
}

impl CorePlan {
    /// Server on core 0 and load on core 1 when this process may use two or
    /// more cores; otherwise nobody is pinned (pinning both to one core
    /// would measure the scheduler). Call it before anything pins this
    /// process, since pinning shrinks what it may use.
    pub fn detect() -> CorePlan {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores >= 2 {
            CorePlan {
                server: Some(0),
                load: Some(1),
            }
        } else {
            CorePlan {
                server: None,
                load: None,
            }
        }
    }

    /// One line for a report: where things ran.
    pub fn describe(&self) -> String {
        match (self.server, self.load) {
            (Some(server), Some(load)) => {
                format!("server pinned to core {server}, load generator to core {load}")
            }
            _ => "not pinned (fewer than 2 cores available): server and load share the CPUs"
                .to_string(),
        }
    }
}

/// The workspace root (this crate lives in `<root>/benches`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Where release binaries land: `$CARGO_TARGET_DIR/release` or `target/release`.
pub fn release_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    };
    let target = if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    };
    target.join("release")
}

/// Builds every server in [`SERVERS`], and the `extra` packages (e.g.
/// `loadgen`), with `cargo build --release` and returns the directory holding
/// the binaries. Measuring a debug build would measure the compiler's
/// missing optimisations.
pub fn build_release(extra: &[&str]) -> io::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--release", "--quiet"]);
    let cargo_built = SERVERS
        .iter()
        .filter(|s| s.toolchain == Toolchain::Cargo)
        .map(|s| s.name);
    for package in cargo_built.chain(extra.iter().copied()) {
        command.args(["-p", package]);
    }
    let status = command.status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "`cargo build --release` of the servers failed ({status})"
        )));
    }
    let release_dir = release_dir();
    install_go_servers(&release_dir)?;
    Ok(release_dir)
}

/// Puts the Go servers' binaries (built by `go-echo`'s build.rs with the Go
/// toolchain, which has no debug/release split) into `release_dir`, or
/// says in one line that there is no Go toolchain. Whether they are there.
pub fn install_go_servers(release_dir: &Path) -> io::Result<bool> {
    match go_echo::install(release_dir)? {
        Some(path) => {
            eprintln!("go-echo: built with the Go toolchain, {}", path.display());
            Ok(true)
        }
        None => {
            eprintln!("{}", go_echo::NO_GO);
            Ok(false)
        }
    }
}

/// Raises this process's descriptor limit to its hard limit so that it, and
/// the servers it starts (which inherit it), can hold `connections` sockets.
pub fn raise_fd_limit(connections: usize) -> Result<(), String> {
    loadgen::cpu::ensure_fd_limit(connections).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_unique_and_include_the_reference() {
        for (i, a) in SERVERS.iter().enumerate() {
            assert!(
                SERVERS[i + 1..].iter().all(|b| b.name != a.name),
                "{} is listed twice",
                a.name
            );
        }
        assert_eq!(server(REFERENCE).map(|s| s.kind), Some(Kind::Baseline));
        assert_eq!(server(FLOOR).map(|s| s.kind), Some(Kind::Floor));
    }

    #[test]
    fn every_listed_server_is_a_workspace_package() {
        let root = workspace_root();
        for server in SERVERS {
            let dir = match server.kind {
                Kind::Chapter => {
                    // chapters/NN-name holds package chNN-name.
                    let name = server.name.strip_prefix("ch").unwrap_or(server.name);
                    root.join("chapters").join(name)
                }
                Kind::Baseline | Kind::Floor => root.join("baselines").join(server.name),
            };
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert!(
                manifest.contains(&format!("name = \"{}\"", server.name)),
                "{} does not define package {}",
                dir.display(),
                server.name
            );
        }
    }
}
