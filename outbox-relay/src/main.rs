//! `outbox-relay` — run the relay; `outbox-relay migrate` — apply the orders
//! database's migrations and exit.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    plumbing::cli::main::<outbox_relay::startup::Application>().await
}
