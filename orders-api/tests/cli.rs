//! The binary's command line: `--version` and `--help` name the service, and
//! `--help` says what it does and lists the environment variables it reads; the
//! fault suite's switch exists only in a build with fault injection; a bad
//! configuration is refused at once, without showing its password.

#[test]
fn version_and_help_describe_the_service_and_what_it_reads() {
    devkit::process::assert_describes::<orders_api::startup::Application>(
        env!("CARGO_BIN_EXE_orders-api"),
        "orders-api",
        "IDEMPOTENCY_KEY_TTL",
    );
}

/// Run as shipped (`cargo test -p orders-api -p outbox-relay -p invoices-worker
/// --test cli`, devkit's features off) the switch must do nothing; under
/// `cargo test --workspace` (the fault suite's build) it must work.
#[tokio::test]
async fn the_fault_switch_exists_only_with_fault_injection() {
    devkit::process::assert_fault_switch(
        env!("CARGO_BIN_EXE_orders-api"),
        "orders-api",
        "ORDERS_UNSAFE_REPLY_BEFORE_COMMIT",
        cfg!(feature = "fault-injection"),
    )
    .await;
}

#[tokio::test]
async fn a_malformed_url_stops_the_start_without_showing_its_password() {
    devkit::process::assert_refuses_malformed_urls(env!("CARGO_BIN_EXE_orders-api"), false).await;
}
