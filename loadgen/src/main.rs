//! `loadgen`: drive load against an echo server and report what it measured.
//!
//! ```text
//! loadgen echo --addr 127.0.0.1:7878 -c 100 --size 64 --duration 10
//! loadgen hold --addr 127.0.0.1:7878 -n 10000 --rate 5000 --hold 30
//! ```

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use loadgen::echo::{self, EchoConfig, Engine, RunLength};
use loadgen::error::LoadError;
use loadgen::hold::{self, HoldConfig};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for c1m-rs echo servers"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Closed-loop echo: every connection sends a message, waits for its
    /// echo, checks every byte, repeats.
    Echo(EchoArgs),
    /// Open many connections at a set rate, hold them, ping a sample.
    Hold(HoldArgs),
}

/// Flags both modes share.
#[derive(Args)]
struct Common {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Local source addresses to spread connections over, e.g.
    /// `127.0.0.1-127.0.0.20` (each gives ~64K ports towards one server).
    #[arg(long, value_parser = parse_sources, value_name = "ADDRS")]
    sources: Option<Sources>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Pin loadgen to this CPU core (Linux).
    #[arg(long, value_name = "CORE")]
    cpu: Option<usize>,
    /// Also report this process's CPU use over the measured window (Linux).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Seconds without an expected echoed byte before a connection counts
    /// as a timeout error.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    timeout: f64,
}

#[derive(Args)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Connections.
    #[arg(short = 'c', long = "conns", default_value_t = 1)]
    conns: usize,
    /// Bytes per message, including the trailing newline.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Measure for this many seconds (default 5 unless --messages is given).
    #[arg(long, value_name = "SECS", conflicts_with = "messages")]
    duration: Option<f64>,
    /// Send exactly this many messages in total, then stop.
    #[arg(long, value_name = "N")]
    messages: Option<u64>,
    /// Seconds of load before the measured window starts.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "SECS",
        conflicts_with = "messages"
    )]
    warmup: f64,
    /// Client implementation: event loops, or a blocking thread per connection.
    #[arg(long, value_enum, default_value_t = EngineArg::Events)]
    engine: EngineArg,
    /// Event-loop threads (events engine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    Events,
    Threads,
}

#[derive(Args)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open and hold.
    #[arg(short = 'n', long = "conns", default_value_t = 100)]
    conns: usize,
    /// Connects started per second (default: as fast as possible).
    #[arg(long, value_name = "CONNS_PER_SEC")]
    rate: Option<f64>,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 1000)]
    max_connecting: usize,
    /// Seconds to hold the connections open after the ramp.
    #[arg(long = "hold", default_value_t = 5.0, value_name = "SECS")]
    hold_secs: f64,
    /// Seconds between ping rounds.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    ping_every: f64,
    /// Connections pinged per round.
    #[arg(long, default_value_t = 10, value_name = "K")]
    ping_sample: usize,
}

/// The parsed `--sources` list (a newtype so clap takes it as one value).
#[derive(Clone)]
struct Sources(Vec<IpAddr>);

fn parse_sources(spec: &str) -> Result<Sources, String> {
    loadgen::connect::parse_sources(spec).map(Sources)
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, LoadError> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| LoadError::Config(format!("--{flag} {secs}: not a duration in seconds")))
}

fn run_echo(args: EchoArgs) -> Result<bool, LoadError> {
    let mut config = EchoConfig::new(args.common.addr);
    config.sources = args.common.sources.map(|s| s.0).unwrap_or_default();
    config.connections = args.conns;
    config.message_size = args.size;
    config.pipeline = args.pipeline;
    config.length = match args.messages {
        Some(n) => RunLength::Messages(n),
        None => RunLength::Duration {
            warmup: seconds("warmup", args.warmup)?,
            measure: seconds("duration", args.duration.unwrap_or(5.0))?,
        },
    };
    config.engine = match args.engine {
        EngineArg::Events => Engine::Events,
        EngineArg::Threads => Engine::Threads,
    };
    config.threads = args.threads;
    config.timeout = seconds("timeout", args.common.timeout)?;
    config.cpu = args.common.cpu;
    config.server_pid = args.common.server_pid;
    config.progress = !args.common.json;
    let report = echo::run(&config)?;
    let mut out = std::io::stdout().lock();
    let written = if args.common.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        report.print_table(&mut out)
    };
    written.map_err(|e| LoadError::io("writing the report", e))?;
    Ok(report.ok)
}

fn run_hold(args: HoldArgs) -> Result<bool, LoadError> {
    let mut config = HoldConfig::new(args.common.addr);
    config.sources = args.common.sources.map(|s| s.0).unwrap_or_default();
    config.connections = args.conns;
    config.rate = args.rate;
    config.max_connecting = args.max_connecting;
    config.hold = seconds("hold", args.hold_secs)?;
    config.ping_every = seconds("ping-every", args.ping_every)?;
    config.ping_sample = args.ping_sample;
    config.timeout = seconds("timeout", args.common.timeout)?;
    config.cpu = args.common.cpu;
    config.server_pid = args.common.server_pid;
    config.progress = !args.common.json;
    let report = hold::run(&config)?;
    let mut out = std::io::stdout().lock();
    let written = if args.common.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        report.print_table(&mut out)
    };
    written.map_err(|e| LoadError::io("writing the report", e))?;
    Ok(report.ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.mode {
        Mode::Echo(args) => run_echo(args),
        Mode::Hold(args) => run_hold(args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        // The run happened and its report shows errors.
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sources_flag_parses_a_range() {
        let cli = Cli::try_parse_from(["loadgen", "hold", "--sources", "127.0.0.1-127.0.0.3"]);
        let Ok(Cli {
            mode: Mode::Hold(args),
        }) = cli
        else {
            panic!("hold with --sources did not parse");
        };
        assert_eq!(args.common.sources.map(|s| s.0.len()), Some(3));
    }
}
