//! The echo contract every c1m-rs server keeps, checked against this binary
//! with its defaults (one reactor per core, each with its own ring), plus
//! the idle-timeout check with the server started with `--idle-timeout 0.5`.

loadgen::conformance_tests!(
    env!("CARGO_BIN_EXE_ch09-io-uring"),
    [],
    idle_timeout = "0.5"
);
