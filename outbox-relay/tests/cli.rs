//! The binary's command line: `--version` and `--help` name the service, and
//! `--help` says what it does and lists the environment variables it reads.

#[test]
fn version_and_help_describe_the_service_and_what_it_reads() {
    devkit::process::assert_describes::<outbox_relay::startup::Application>(
        env!("CARGO_BIN_EXE_outbox-relay"),
        "outbox-relay",
        "RELAY_BATCH_SIZE",
    );
}
