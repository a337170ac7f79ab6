//! The relay as a service: what it adds to the shape every service has (see
//! [`plumbing::service`]).

use std::sync::Arc;

use deadpool_postgres::Pool;
use plumbing::{
    db::{Database, DbConfig, Purge},
    endpoints::Vitals,
    service::{About, Service},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, RelaySettings},
    relay::Relay,
    store,
};

/// The relay, assembled over the orders database.
pub struct Application {
    relay: Relay,
    settings: RelaySettings,
}

impl Service for Application {
    type Config = Config;
    const ABOUT: About = plumbing::about!(Database::Orders);

    /// A claim's transaction stays open while its batch is published and
    /// confirmed: its idle limit must outlast that (see
    /// [`RelaySettings::validate`]), or a slow broker would have the server abort
    /// claims and the relay publish their rows again.
    fn check(config: &Config) -> anyhow::Result<()> {
        config.relay.validate()?;
        Ok(())
    }

    /// Each relay names its sessions after itself, so that `outbox-relay status`
    /// can tell the running relays apart and see which can only poll.
    fn session_name() -> String {
        let name = crate::listener::session_name(&uuid::Uuid::new_v4().simple().to_string()[..8]);
        tracing::info!(sessions = %name, "relay starting");
        name
    }

    /// The broker is connected lazily, with backoff, by the loop.
    fn assemble(config: &Config, db: DbConfig, pool: Pool) -> anyhow::Result<Self> {
        let topology = config.broker.topology();
        let relay = Relay::new(
            pool,
            db,
            config.broker.url.expose().to_owned(),
            topology,
            config.relay,
        );
        Ok(Self {
            relay,
            settings: config.relay,
        })
    }

    fn vitals(&self) -> Arc<dyn Vitals> {
        self.relay.metrics()
    }

    /// Published rows past the retention window, `RELAY_PURGE_BATCH` at a time.
    fn purge(&self) -> Option<Purge> {
        // The advisory lock that lets one relay at a time run the scheduled purge.
        const PURGE_LOCK_KEY: i64 = 0x6f75_7470; // "outp"
        let RelaySettings {
            retention,
            purge_batch,
            purge_interval,
            ..
        } = self.settings;
        let purge = Purge::new(
            "purge of published outbox rows",
            PURGE_LOCK_KEY,
            purge_interval,
            move |pool: Pool| async move {
                store::purge_published(&*pool.get().await?, retention, purge_batch).await
            },
        );
        Some(purge.counted(self.relay.metrics().purged.clone()))
    }

    /// The relay finishes its batch (confirms and marks) before this returns.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        self.relay.run(shutdown)
    }
}
