//! The echo contract again, with rayon's pool and a single worker thread:
//! every job of every client queues behind every other.

loadgen::conformance_tests!(
    env!("CARGO_BIN_EXE_ch04-worker-pool"),
    ["--workers", "1", "--pool", "rayon"]
);
