//! `loadgen`: the instrument every c1m-rs server is measured with, and the
//! conformance suite every server's tests run.
//!
//! - [`echo`] and [`hold`]: the two load modes (closed-loop echo, ramp-and-hold).
//! - [`spread`]: one hold run over many processes and source addresses.
//! - [`report`]: what a run measured, as a table for people or JSON for scripts.
//! - [`server`]: start a server binary, read its `listening on` line, watch it.
//! - [`conformance`]: the echo contract as checks that can fail.

pub mod conformance;
pub mod connect;
pub mod cpu;
pub mod echo;
pub mod error;
pub mod hold;
pub mod payload;
pub mod procstat;
mod progress;
pub mod report;
pub mod server;
pub mod spread;
