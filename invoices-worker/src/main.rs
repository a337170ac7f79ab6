//! `invoices-worker` — consume and invoice; `invoices-worker migrate` — apply the
//! invoices database's migrations and exit.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    plumbing::cli::main::<invoices_worker::startup::Application>().await
}
