//! `invoices-worker`: turns each `OrderCreated` event into exactly one invoice, and
//! the operator's tool for its dead-letter queue and dedupe records.

use std::{process::ExitCode, time::Duration};

use clap::Subcommand;
use invoices_worker::{config::Config, dlq, startup::Application, store};
use uuid::Uuid;

/// The operator's commands, beside `run`, `migrate` and `healthcheck`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and requeue dead-lettered messages.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Delete dedupe records older than the retention window.
    Purge {
        /// Age of the oldest records kept (at least the outbox's replay window).
        #[arg(long, value_parser = plumbing::config::parse_duration, default_value = "8d")]
        older_than: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead-lettered messages with their reasons (they stay in the queue).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send dead-lettered messages back to the invoices queue after a fix; they keep
    /// their message ids, so what was already invoiced is skipped.
    Requeue {
        /// The messages with these ids (repeatable).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        message_id: Vec<Uuid>,
        /// Every dead-lettered message.
        #[arg(long)]
        all: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    plumbing::cli::main_with::<Application, Command, _, _>(operate).await
}

/// Runs an operator command.
async fn operate(command: Command, config: Config) -> anyhow::Result<()> {
    let (url, topology) = (config.broker.url.expose(), config.broker.topology());
    match command {
        Command::Dlq(DlqCommand::List { limit, json }) => {
            let messages = dlq::list(url, &topology, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&messages)?);
            } else {
                println!("{} dead-lettered messages shown", messages.len());
                for m in messages {
                    println!(
                        "{}\t{}\t{}\n    {}",
                        m.message_id.as_deref().unwrap_or("-"),
                        m.event_type.as_deref().unwrap_or("-"),
                        m.reason,
                        m.body
                    );
                }
            }
        }
        Command::Dlq(DlqCommand::Requeue { message_id, all }) => {
            let selection = if all {
                dlq::Selection::All
            } else {
                dlq::Selection::Messages(message_id)
            };
            let n = dlq::requeue(url, &topology, &selection).await?;
            println!("{n} messages sent back to the invoices queue");
        }
        Command::Purge { older_than } => {
            let db = plumbing::db::parse_url(config.service.database_url.expose())?;
            let pool = plumbing::db::pool(db, config.service.pool.for_operator())?;
            let n = store::purge_processed(&pool, older_than, 1_000).await?;
            println!("purged {n} dedupe records older than {older_than:?}");
        }
    }
    Ok(())
}
