//! `invoices-worker` — consume and invoice; `invoices-worker migrate` — apply the
//! invoices database's migrations and exit.

use invoices_worker::{config::Config, startup::Application};
use plumbing::{cli::Binary, db::Database};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let binary = Binary {
        name: "invoices-worker",
        database: Database::Invoices,
    };
    plumbing::cli::main(
        binary,
        Config::from_env,
        |c| &c.database_url,
        |config, shutdown| async move {
            let app = Application::build(&config, &shutdown).await?;
            app.run_until_stopped(shutdown).await
        },
    )
    .await
}
