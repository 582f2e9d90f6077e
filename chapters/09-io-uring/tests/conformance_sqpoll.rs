//! The echo contract with one worker process of two reactors, each ring
//! polled by a kernel thread (`--sqpoll`, sleeping after 10 ms without work
//! so the tests do not keep two threads spinning), and every receive handed
//! to the worker pool (`--offload always`): the paths the defaults do not
//! take.

loadgen::conformance_tests!(
    env!("CARGO_BIN_EXE_ch09-io-uring"),
    [
        "--procs",
        "1",
        "--threads",
        "2",
        "--sqpoll",
        "--sqpoll-idle-ms",
        "10",
        "--offload",
        "always"
    ],
    idle_timeout = "0.5"
);
