//! The echo contract every c1m-rs server keeps, checked against the Go
//! server that build.rs compiled from main.go. Without a Go toolchain there
//! is no binary: one test says so instead.

#[cfg(go_toolchain)]
loadgen::conformance_tests!(env!("GO_ECHO_BIN"));

#[cfg(not(go_toolchain))]
#[test]
fn skipped_without_a_go_toolchain() {
    use std::io::Write;
    // Written to the real stderr, past the test harness's capture, so a
    // passing run still shows why nothing was checked.
    let _ = writeln!(std::io::stderr().lock(), "{}", go_echo::NO_GO);
}
