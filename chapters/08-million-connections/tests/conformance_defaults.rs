//! The echo contract with the defaults: `--procs auto` (for the default
//! `--conns 1000000` that is several workers under a 20,000-descriptor
//! limit, one on a host whose limit holds them all).

mod defaults {
    loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch08-million-connections"));
}
