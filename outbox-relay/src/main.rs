//! `outbox-relay`: publishes the orders outbox to RabbitMQ, and the operator's
//! tool to inspect it, replay it, purge it and unblock it.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Subcommand};
use outbox_relay::{
    config::Config, ops, provision::Provisioning, startup::Application, store::ReplayFilter,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

/// The operator's commands, beside `run`, `migrate` and `healthcheck`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show the backlog, the oldest event's age, blocked events and recent replays.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish already-published events (recovery after the broker lost them).
    /// They keep their message ids, so consumers skip what they already handled.
    Replay(ReplayArgs),
    /// Delete published events older than the retention window.
    Purge {
        /// Age of the oldest events kept, e.g. 7d, 12h.
        #[arg(long, value_parser = plumbing::config::parse_duration, default_value = "7d")]
        older_than: Duration,
    },
    /// Unblock blocked events (after fixing the cause) for another round of attempts.
    Retry(Select),
    /// Give up on blocked events: they are marked done without being published and
    /// the later events of their aggregates go out.
    Skip {
        #[command(flatten)]
        select: Select,
        /// Why (recorded on the event).
        #[arg(long)]
        reason: String,
    },
    /// Create or update the broker users of the relay and the worker, each
    /// allowed only its own part of the topology (needs BROKER_ADMIN_URL and both
    /// passwords); declares the topology as the admin. Idempotent.
    ProvisionBroker,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Events created at or after this time (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    since: Option<OffsetDateTime>,
    /// Events created before this time (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    until: Option<OffsetDateTime>,
    /// Events of this aggregate (order id).
    #[arg(long)]
    aggregate_id: Option<Uuid>,
    /// Events of this type, e.g. OrderCreated.
    #[arg(long)]
    event_type: Option<String>,
    /// Message ids from this one, inclusive.
    #[arg(long)]
    from_message_id: Option<Uuid>,
    /// Message ids up to this one, inclusive.
    #[arg(long)]
    to_message_id: Option<Uuid>,
    /// Only list the events that would be re-published.
    #[arg(long)]
    dry_run: bool,
    /// At most this many events per second.
    #[arg(long)]
    rate: Option<f64>,
}

/// Which blocked events: one message, one aggregate, or all.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Select {
    /// The blocked event with this message id.
    #[arg(long)]
    message_id: Option<Uuid>,
    /// The blocked event of this aggregate.
    #[arg(long)]
    aggregate_id: Option<Uuid>,
    /// Every blocked event.
    #[arg(long)]
    all: bool,
}

fn rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2026-11-27T10:00:00Z: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    plumbing::cli::main_with::<Application, Command, _, _>(operate).await
}

/// Runs an operator command.
async fn operate(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Status { json } => {
            let pool = ops::connect(&config).await?;
            let status = ops::status(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", ops::render_status(&status));
            }
            Ok(())
        }
        Command::Replay(args) => {
            let filter = ReplayFilter {
                since: args.since,
                until: args.until,
                aggregate_id: args.aggregate_id,
                event_type: args.event_type,
                from_message_id: args.from_message_id,
                to_message_id: args.to_message_id,
            };
            ops::run_replay(&config, filter, args.dry_run, args.rate).await
        }
        Command::Purge { older_than } => ops::run_purge(&config, older_than).await,
        Command::Retry(select) => {
            let selection = ops::selection(select.message_id, select.aggregate_id);
            ops::run_retry(&config, selection).await
        }
        Command::Skip { select, reason } => {
            let selection = ops::selection(select.message_id, select.aggregate_id);
            ops::run_skip(&config, selection, &reason).await
        }
        Command::ProvisionBroker => Provisioning::from_env(config.broker)?.run().await,
    }
}
