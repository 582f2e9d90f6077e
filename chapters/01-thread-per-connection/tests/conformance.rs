//! The echo contract every c1m-rs server keeps, checked against this binary.

loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch01-thread-per-connection"));
