//! The echo contract every c1m-rs server keeps, checked against this binary:
//! on the default multi-threaded runtime and on the single-threaded one.

loadgen::conformance_tests!(env!("CARGO_BIN_EXE_tokio-echo"));

mod current_thread_runtime {
    loadgen::conformance_tests!(env!("CARGO_BIN_EXE_tokio-echo"), ["--threads", "1"]);
}
