//! The echo contract every c1m-rs server keeps, checked against this binary
//! with its defaults (the hand-rolled pool, one worker per core).

loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch04-worker-pool"));
