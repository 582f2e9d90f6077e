//! The echo contract every server in this repository keeps (see loadgen).

loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch02-epoll-level-triggered"));
