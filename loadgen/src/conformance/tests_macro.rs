//! `conformance_tests!`: the whole suite as `#[test]`s, in one line.

/// Expands to one `#[test]` per conformance check against a server binary.
/// Each test starts its own server, so they run in parallel.
///
/// ```ignore
/// // tests/conformance.rs of a server crate
/// loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch01-thread-per-connection"));
///
/// // or with arguments appended to every spawn (after `--addr 127.0.0.1:0`):
/// loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch07-core-pinning"), ["--threads", "1"]);
///
/// // chapter 06 on: also the idle-timeout check, with the server started
/// // with `--idle-timeout 0.5` (after the other arguments):
/// loadgen::conformance_tests!(env!("CARGO_BIN_EXE_ch06-idle-timeouts"), [], idle_timeout = "0.5");
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($bin:expr $(,)?) => {
        $crate::conformance_tests!($bin, []);
    };
    ($bin:expr, [$($arg:expr),* $(,)?], idle_timeout = $secs:literal $(,)?) => {
        $crate::conformance_tests!($bin, [$($arg),*]);

        #[test]
        fn idle_client_is_reaped_and_active_client_kept() {
            let timeout = ::std::time::Duration::from_secs_f64(
                $secs.parse::<f64>().expect("idle_timeout = \"SECS\", e.g. \"0.5\""),
            );
            let server = match __conformance_server().spawn(&["--idle-timeout", $secs]) {
                Ok(server) => server,
                Err(failure) => panic!("idle_timeout: {failure}"),
            };
            let target = $crate::conformance::Target::process(&server);
            if let Err(failure) = $crate::conformance::idle_timeout(&target, timeout) {
                panic!(
                    "idle_timeout failed: {failure}\nserver stderr:\n{}",
                    server.stderr().trim_end()
                );
            }
        }
    };
    ($bin:expr, [$($arg:expr),* $(,)?] $(,)?) => {
        fn __conformance_server() -> $crate::conformance::ServerSpec {
            let extra_args: ::std::vec::Vec<::std::string::String> =
                ::std::vec![$(::std::string::ToString::to_string(&$arg)),*];
            $crate::conformance::ServerSpec::new($bin).args(extra_args)
        }

        #[test]
        fn echoes_every_size_exactly() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "exact_echo",
                $crate::conformance::exact_echo,
            );
        }

        #[test]
        fn echoes_pipelined_lines_in_order() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "pipelined_lines",
                $crate::conformance::pipelined_lines,
            );
        }

        #[test]
        fn serves_2000_concurrent_clients() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "many_concurrent_clients",
                $crate::conformance::many_concurrent_clients,
            );
        }

        #[test]
        fn half_close_gets_everything_back() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "half_close",
                $crate::conformance::half_close,
            );
        }

        #[test]
        fn survives_resets_mid_stream() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "reset_mid_stream",
                $crate::conformance::reset_mid_stream,
            );
        }

        #[test]
        fn does_not_leak_descriptors() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "no_descriptor_leak",
                $crate::conformance::no_descriptor_leak,
            );
        }

        #[test]
        fn never_reading_client_is_bounded_and_others_served() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "never_reading_client",
                $crate::conformance::never_reading_client,
            );
        }

        #[test]
        fn small_writes_then_half_close_get_everything_back() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "small_writes_then_half_close",
                $crate::conformance::small_writes_then_half_close,
            );
        }

        #[test]
        fn single_byte_segments_do_not_pin_memory() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "single_byte_segments_memory_bounded",
                $crate::conformance::single_byte_segments_memory_bounded,
            );
        }

        #[test]
        fn fuzzed_clients_get_exactly_their_echo() {
            $crate::conformance::assert_target_check(
                &__conformance_server(),
                "fuzz_echo",
                $crate::conformance::fuzz_echo,
            );
        }

        #[test]
        fn survives_emfile_without_spinning() {
            $crate::conformance::assert_spec_check(
                &__conformance_server(),
                "emfile",
                $crate::conformance::emfile,
            );
        }

        #[test]
        fn work_us_keeps_echo_exact() {
            $crate::conformance::assert_spec_check(
                &__conformance_server(),
                "work_us",
                $crate::conformance::work_us,
            );
        }

        #[test]
        fn sigint_prints_summary_and_exits_0() {
            $crate::conformance::assert_spec_check(
                &__conformance_server(),
                "sigint_summary",
                $crate::conformance::sigint_summary,
            );
        }

        #[test]
        fn bad_flag_value_exits_2() {
            $crate::conformance::assert_spec_check(
                &__conformance_server(),
                "bad_flag_exits_2",
                $crate::conformance::bad_flag_exits_2,
            );
        }

        #[test]
        fn help_lists_the_contract_flags() {
            $crate::conformance::assert_spec_check(
                &__conformance_server(),
                "help_lists_flags",
                $crate::conformance::help_lists_flags,
            );
        }
    };
}
