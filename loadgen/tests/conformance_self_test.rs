//! The conformance suite, tested: it passes a correct server, and each check
//! fails against a server broken in the way that check exists to catch.
//! A check that cannot fail would prove nothing about the chapters.
#![allow(clippy::unwrap_used)]

use loadgen::conformance::{self, ServerSpec, Target};
use loadgen::server::ServerProcess;

const REFERENCE: &str = env!("CARGO_BIN_EXE_reference-echo");

// The whole suite against the correct reference server.
loadgen::conformance_tests!(REFERENCE);

/// The reference server with one deliberate bug.
fn broken(mode: &str) -> ServerSpec {
    ServerSpec::new(REFERENCE).args(["--break", mode])
}

/// Runs a target check against a freshly started broken server and returns
/// its failure message, panicking if the check passed.
fn failure_of(mode: &str, check: conformance::TargetCheck) -> String {
    let server = broken(mode).spawn(&[]).unwrap();
    match check(&Target::process(&server)) {
        Ok(()) => panic!("the check passed against a server with --break {mode}"),
        // Shown with --nocapture: what a reader would see from a real bug.
        Err(failure) => {
            eprintln!("--break {mode}: {failure}");
            failure.to_string()
        }
    }
}

#[test]
fn exact_echo_catches_a_dropped_byte() {
    let message = failure_of("drop-byte", conformance::exact_echo);
    // Shrunk to the smallest message that reaches the dropped byte, the
    // echo is one byte short; a longer one also differs at offset 1000.
    assert!(
        message.contains("EOF after 1000 of") || message.contains("differed at offset 1000"),
        "{message}"
    );
}

#[test]
fn half_close_catches_a_server_that_never_closes() {
    let message = failure_of("no-close-on-eof", conformance::half_close);
    assert!(message.contains("did not close"), "{message}");
}

#[test]
fn descriptor_check_catches_a_leak() {
    let message = failure_of("leak-fd", conformance::no_descriptor_leak);
    assert!(message.contains("leaks"), "{message}");
}

#[test]
fn never_reading_check_catches_unbounded_buffering() {
    // With the process: its memory grows.
    let message = failure_of("unbounded-buffer", conformance::never_reading_client);
    assert!(message.contains("RSS grew"), "{message}");
    // With only its address: it took more than socket buffers can hold.
    let server = broken("unbounded-buffer").spawn(&[]).unwrap();
    let failure = conformance::never_reading_client(&Target::addr(server.addr())).unwrap_err();
    assert!(failure.message().contains("without bound"), "{failure}");
}

#[test]
fn small_writes_check_catches_a_queue_written_in_stalling_batches() {
    let message = failure_of(
        "write-in-batches",
        conformance::small_writes_then_half_close,
    );
    assert!(message.contains("then nothing for"), "{message}");
}

#[test]
fn single_byte_check_catches_a_chunk_per_read() {
    let message = failure_of(
        "chunk-per-read",
        conformance::single_byte_segments_memory_bounded,
    );
    assert!(message.contains("RSS grew"), "{message}");
}

#[test]
fn fuzz_check_catches_a_dropped_byte_and_names_its_seed() {
    let message = failure_of("drop-byte", conformance::fuzz_echo);
    assert!(message.contains("C1M_FUZZ_SEED="), "{message}");
    // Shrunk to the smallest message that reaches the dropped byte, the
    // echo is one byte short; a longer one also differs at offset 1000.
    assert!(
        message.contains("EOF after 1000 of") || message.contains("differed at offset 1000"),
        "{message}"
    );
}

#[test]
fn emfile_check_catches_a_server_that_exits() {
    let failure = conformance::emfile(&broken("exit-on-emfile")).unwrap_err();
    eprintln!("--break exit-on-emfile: {failure}");
    assert!(failure.message().contains("exited"), "{failure}");
}

#[test]
fn emfile_check_catches_a_server_that_spins() {
    let failure = conformance::emfile(&broken("spin-on-emfile")).unwrap_err();
    eprintln!("--break spin-on-emfile: {failure}");
    assert!(failure.message().contains("spins"), "{failure}");
}

#[test]
fn work_us_check_catches_a_server_that_skips_the_work() {
    let failure = conformance::work_us(&broken("ignore-work-us")).unwrap_err();
    eprintln!("--break ignore-work-us: {failure}");
    assert!(failure.message().contains("owes"), "{failure}");
}

#[test]
fn address_only_checks_pass_against_a_running_server() {
    let server = ServerProcess::spawn(REFERENCE, ["--work-us", "0"]).unwrap();
    let results = conformance::run_against_addr(server.addr());
    assert_eq!(results.len(), conformance::TARGET_CHECKS.len());
    for (name, result) in results {
        assert!(result.is_ok(), "{name}: {}", result.unwrap_err());
    }
}

#[test]
fn server_process_reports_on_the_running_server() {
    let server = ServerProcess::builder(REFERENCE)
        .nofile_limit(256)
        .cpu(0)
        .spawn()
        .unwrap();
    assert!(server.addr().port() != 0);
    assert!(server.is_running());
    assert!(server.rss_bytes().unwrap() > 0);
    // stdin, stdout, stderr and the listener at least.
    assert!(server.open_fds().unwrap() >= 4);
    // The main thread and the one waiting for signals.
    assert!(server.threads().unwrap() >= 2);
    server.cpu_time().unwrap();
    let shutdown = server.shutdown().unwrap();
    assert!(!shutdown.killed);
    assert!(shutdown.status.success());
    assert!(shutdown.stdout[0].starts_with("listening on "));
    assert!(
        shutdown
            .summary_line()
            .unwrap()
            .contains("connections_served=0"),
        "{:?}",
        shutdown.stdout
    );
}

#[test]
fn spawn_explains_a_server_that_fails_to_start() {
    // A bad flag value: the server exits 2 before listening.
    let err = ServerProcess::spawn(REFERENCE, ["--work-us", "lots"]).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("exit code 2"), "{message}");
    assert!(message.contains("--work-us"), "{message}");
}

#[test]
fn idle_timeout_check_passes_a_reaping_server_and_fails_one_that_never_reaps() {
    let timeout = std::time::Duration::from_millis(500);
    let reaping = ServerProcess::spawn(REFERENCE, ["--idle-timeout-ms", "500"]).unwrap();
    conformance::idle_timeout(&Target::process(&reaping), timeout).unwrap();

    let never_reaping = ServerProcess::spawn(REFERENCE, ["--work-us", "0"]).unwrap();
    let failure = conformance::idle_timeout(&Target::process(&never_reaping), timeout).unwrap_err();
    assert!(failure.message().contains("does not reap"), "{failure}");
}
