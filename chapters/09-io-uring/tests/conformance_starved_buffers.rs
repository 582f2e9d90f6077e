//! The echo contract again with a buffer ring far too small for the load:
//! two 64-byte receive buffers for thousands of clients. Nearly every
//! receive ends with ENOBUFS and is re-armed; every byte must still come
//! back, in order, and a stale or unrecycled buffer would soon starve the
//! ring for good (a hang, which these checks turn into a failure).

loadgen::conformance_tests!(
    env!("CARGO_BIN_EXE_ch09-io-uring"),
    [
        "--procs",
        "1",
        "--threads",
        "1",
        "--recv-buffers",
        "2",
        "--recv-buffer-size",
        "64"
    ],
    idle_timeout = "0.5"
);
