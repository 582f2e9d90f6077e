//! The echo contract every c1m-rs server keeps, checked against this binary
//! with its defaults.

loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch05-buffer-pool"));
