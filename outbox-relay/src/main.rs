//! `outbox-relay` — run the relay; `outbox-relay migrate` — apply the orders
//! database's migrations and exit.

use outbox_relay::{config::Config, startup::Application};
use plumbing::{cli::Binary, db::Database};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let binary = Binary {
        name: "outbox-relay",
        database: Database::Orders,
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
