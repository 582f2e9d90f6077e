//! `loadgen echo`: closed-loop echo load with byte-exact verification.
//!
//! Every connection keeps `pipeline` messages in flight: it sends, waits for
//! the echo, checks every byte, sends the next. The default engine runs one
//! mio event loop per thread (epoll on Linux, kqueue on macOS); in steady
//! state it costs one `read` and one `write` per message and allocates
//! nothing per message. `Engine::Threads` is the baseline most people would
//! write (a blocking thread per connection), kept for comparison.
//!
//! ```no_run
//! use std::time::Duration;
//! use loadgen::echo::{EchoConfig, RunLength};
//!
//! let mut config = EchoConfig::new("127.0.0.1:7878".parse().unwrap());
//! config.connections = 100;
//! config.length = RunLength::Duration { warmup: Duration::from_secs(1), measure: Duration::from_secs(5) };
//! let report = loadgen::echo::run(&config)?;
//! println!("{:.0} msg/s, ok={}", report.messages_per_sec, report.ok);
//! # Ok::<(), loadgen::error::LoadError>(())
//! ```

//!
//! The engines share one set of parts, so the modules form a chain, not a
//! cycle: [`config`] (what a run is) ← `shared` (what worker threads share)
//! ← `events` and `threads` (the two engines) ← `run` (starts the workers,
//! watches the window, builds the report).

mod config;
mod events;
mod run;
mod shared;
mod threads;

pub use crate::error::LoadError;
pub use config::{EchoConfig, Engine, RunLength};
pub(crate) use run::cpu_report;
pub use run::run;
