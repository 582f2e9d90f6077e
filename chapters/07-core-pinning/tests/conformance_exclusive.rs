//! The echo contract again, with two pinned reactors sharing one listener
//! through `EPOLLEXCLUSIVE` instead of a listener each.

loadgen::conformance_tests!(
    env!("CARGO_BIN_EXE_ch07-core-pinning"),
    ["--threads", "2", "--pin", "--balance", "exclusive"],
    idle_timeout = "0.5"
);
