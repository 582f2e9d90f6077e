//! The echo contract every server in this repository keeps (see loadgen).

loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch03-epoll-edge-triggered"));
