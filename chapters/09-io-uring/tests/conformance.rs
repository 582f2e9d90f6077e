//! The echo contract every c1m-rs server keeps, checked through the
//! supervisor and three worker processes, each with its own rings (every
//! check's connections are spread over the workers by `SO_REUSEPORT`; the
//! CPU, memory and descriptor checks measure the whole process tree), plus
//! the idle-timeout check with the workers started with `--idle-timeout 0.5`.

loadgen::conformance_tests!(
    env!("CARGO_BIN_EXE_ch09-io-uring"),
    ["--procs", "3"],
    idle_timeout = "0.5"
);
