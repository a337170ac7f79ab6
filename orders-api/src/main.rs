//! `orders-api` — serve the API; `orders-api migrate` — apply migrations and exit.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    plumbing::cli::main::<orders_api::startup::Application>().await
}
