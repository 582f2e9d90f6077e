//! `loadgen`: drive load against an echo server and report what it measured.
//!
//! ```text
//! loadgen echo --addr 127.0.0.1:7878 -c 100 --size 64 --duration 10
//! loadgen hold --addr 127.0.0.1:7878 -n 10000 --rate 5000 --hold 30
//! loadgen hold --addr 127.0.0.1:7878 -n 1000000 --procs auto --sources auto --verify-all
//! loadgen hold --addr 127.0.0.1:7878 -n 1000000 --dests 127.0.0.1-127.0.0.8  # a server on 0.0.0.0
//! ```

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use loadgen::echo::{self, EchoConfig, Engine, RunLength};
use loadgen::error::LoadError;
use loadgen::hold::HoldConfig;
use loadgen::spread::{self, Procs, Sources, SpreadConfig};

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
    /// `127.0.0.1-127.0.0.20` (each gives one port range of connections
    /// towards one server). `hold` also takes `auto` (its default): as many
    /// 127.0.0.x addresses as the port range requires.
    #[arg(long, value_parser = parse_sources, value_name = "ADDRS|auto")]
    sources: Option<SourcesArg>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Pin loadgen to this CPU core (Linux).
    #[arg(long, value_name = "CORE")]
    cpu: Option<usize>,
    /// Also report this process's CPU use over the measured window, with
    /// every process it started (a prefork server's workers) (Linux).
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
    /// Destination addresses to spread the connections over, all on
    /// --addr's port, e.g. `127.0.0.1-127.0.0.8` for a server listening on
    /// 0.0.0.0. Each (source, destination) pair has a port range of its
    /// own, so `--sources auto` needs fewer source addresses.
    #[arg(long, value_parser = parse_dests, value_name = "ADDRS")]
    dests: Option<DestsArg>,
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
    /// Connections pinged per round (in all processes together).
    #[arg(long, default_value_t = 10, value_name = "K")]
    ping_sample: usize,
    /// Bytes per ping, including its newline.
    #[arg(long, default_value_t = 16, value_name = "BYTES")]
    ping_size: usize,
    /// Also ping every held connection once during the hold (spread over
    /// its first three quarters) and report how many answered.
    #[arg(long)]
    verify_all: bool,
    /// Processes to spread the connections over: a number, or `auto` (as
    /// few as RLIMIT_NOFILE allows).
    #[arg(long, default_value = "auto", value_parser = parse_procs, value_name = "P|auto")]
    procs: Procs,
    /// Internal: run as one process of a spread run (report as one JSON
    /// line with its histogram, progress on stderr, hold on a line on stdin).
    #[arg(long, hide = true)]
    child: bool,
    /// Internal: global index of this process's first connection.
    #[arg(long, hide = true, default_value_t = 0)]
    first_index: usize,
}

/// The parsed `--sources` value (one type so clap takes it as one value).
#[derive(Clone)]
enum SourcesArg {
    Auto,
    List(Vec<IpAddr>),
}

fn parse_sources(spec: &str) -> Result<SourcesArg, String> {
    if spec.trim() == "auto" {
        return Ok(SourcesArg::Auto);
    }
    loadgen::connect::parse_sources(spec).map(SourcesArg::List)
}

/// The parsed `--dests` value (a newtype, so clap takes the list as one value).
#[derive(Clone)]
struct DestsArg(Vec<IpAddr>);

fn parse_dests(spec: &str) -> Result<DestsArg, String> {
    loadgen::connect::parse_dests(spec).map(DestsArg)
}

fn parse_procs(spec: &str) -> Result<Procs, String> {
    if spec.trim() == "auto" {
        return Ok(Procs::Auto);
    }
    match spec.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(format!(
            "{spec:?}: expected a number of processes (1 or more) or `auto`"
        )),
        Ok(p) => Ok(Procs::Exactly(p)),
    }
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, LoadError> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| LoadError::Config(format!("--{flag} {secs}: not a duration in seconds")))
}

fn run_echo(args: EchoArgs) -> Result<bool, LoadError> {
    let mut config = EchoConfig::new(args.common.addr);
    config.sources = match args.common.sources {
        None => Vec::new(),
        Some(SourcesArg::List(list)) => list,
        Some(SourcesArg::Auto) => {
            return Err(LoadError::Config(
                "--sources auto: only `loadgen hold` chooses source addresses itself; \
                 give a list, e.g. --sources 127.0.0.1-127.0.0.4"
                    .to_string(),
            ));
        }
    };
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
    write_report(args.common.json, &report, |out| report.print_table(out))?;
    Ok(report.ok)
}

fn run_hold(args: HoldArgs) -> Result<bool, LoadError> {
    let mut config = HoldConfig::new(args.common.addr);
    config.dests = args.dests.map(|d| d.0).unwrap_or_default();
    config.connections = args.conns;
    config.rate = args.rate;
    config.max_connecting = args.max_connecting;
    config.hold = seconds("hold", args.hold_secs)?;
    config.ping_every = seconds("ping-every", args.ping_every)?;
    config.ping_sample = args.ping_sample;
    config.ping_size = args.ping_size;
    config.verify_all = args.verify_all;
    config.timeout = seconds("timeout", args.common.timeout)?;
    config.cpu = args.common.cpu;
    config.server_pid = args.common.server_pid;
    config.progress = !args.common.json;
    if args.child {
        // One process of a spread run: its parent chose everything.
        config.sources = match args.common.sources {
            Some(SourcesArg::List(list)) => list,
            _ => Vec::new(),
        };
        config.first_index = args.first_index;
        config.progress = false;
        return spread::run_child(&config);
    }
    let program = std::env::current_exe()
        .map_err(|e| LoadError::io("finding loadgen's own binary to run as children", e))?;
    let mut spread_config = SpreadConfig::new(config, program);
    spread_config.procs = args.procs;
    spread_config.sources = match args.common.sources {
        None | Some(SourcesArg::Auto) => Sources::Auto,
        Some(SourcesArg::List(list)) => Sources::List(list),
    };
    let report = spread::run_hold(&spread_config)?;
    write_report(args.common.json, &report, |out| report.print_table(out))?;
    Ok(report.ok)
}

/// Prints a report on stdout: JSON for scripts, or the table for people.
fn write_report(
    json: bool,
    report: &impl serde::Serialize,
    table: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> Result<(), LoadError> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        table(&mut out)
    };
    written.map_err(|e| LoadError::io("writing the report", e))
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
        let Some(SourcesArg::List(list)) = args.common.sources else {
            panic!("--sources 127.0.0.1-127.0.0.3 is not a list");
        };
        assert_eq!(list.len(), 3);
        assert!(matches!(args.procs, Procs::Auto));
    }

    #[test]
    fn dests_flag_parses_a_range_like_sources() {
        let cli = Cli::try_parse_from(["loadgen", "hold", "--dests", "127.0.0.1-127.0.0.4"]);
        let Ok(Cli {
            mode: Mode::Hold(args),
        }) = cli
        else {
            panic!("hold with --dests did not parse");
        };
        assert_eq!(args.dests.map(|d| d.0.len()), Some(4));
        assert!(Cli::try_parse_from(["loadgen", "hold", "--dests", "auto"]).is_err());
    }

    #[test]
    fn procs_flag_takes_a_number_or_auto() {
        let parse = |procs: &str| match Cli::try_parse_from(["loadgen", "hold", "--procs", procs]) {
            Ok(Cli {
                mode: Mode::Hold(args),
            }) => Some(args.procs),
            _ => None,
        };
        assert_eq!(parse("3"), Some(Procs::Exactly(3)));
        assert_eq!(parse("auto"), Some(Procs::Auto));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("many"), None);
    }
}
