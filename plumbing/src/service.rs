//! The shape every service has, written once: read the configuration, prepare
//! the database (create it, migrate it, pool it), assemble the service, bind the
//! HTTP port, serve `/health`, `/ready` and `/metrics` beside the service's own
//! routes, run its retention purge on one replica at a time and its main loop,
//! and stop on the shutdown signal once in-flight work is done.
//!
//! A service states only what differs: the required items of [`Service`] and
//! the hooks it overrides.

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use axum::Router;
use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    db::{Database, DbConfig, Purge},
    endpoints::Vitals,
    export::{ExportConfig, Exporters, Exposition},
    metrics::CommonMetrics,
};

/// Who a service is: its package (name, version, description) and its
/// database. Made by [`crate::about!`] in the service's crate.
#[derive(Debug, Clone, Copy)]
pub struct About {
    /// The binary's name, in logs, messages and `--help`.
    pub name: &'static str,
    /// Its version, for `--version`.
    pub version: &'static str,
    /// What it does, for `--help`.
    pub description: &'static str,
    /// The database whose migrations it applies.
    pub database: Database,
}

impl About {
    /// The database's name (`orders`, `invoices`), for messages.
    #[must_use]
    pub fn database_name(&self) -> &'static str {
        self.database.name()
    }
}

/// The [`About`] of the calling crate, whose Cargo manifest gives the name,
/// version and description, with `$database`.
#[macro_export]
macro_rules! about {
    ($database:expr) => {
        $crate::service::About {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            description: env!("CARGO_PKG_DESCRIPTION"),
            database: $database,
        }
    };
}

/// A service: what it is, how it is assembled over its database, and the hooks
/// where it differs from the others. [`Service::build`] does the rest.
pub trait Service: Sized + Send + 'static {
    /// Its configuration.
    type Config: Settings;
    /// Who it is ([`crate::about!`]).
    const ABOUT: About;

    /// Checks what the configuration cannot check alone, before anything is
    /// connected. Nothing by default.
    ///
    /// # Errors
    /// Why the configuration cannot be used.
    fn check(config: &Self::Config) -> anyhow::Result<()> {
        let _ = config;
        Ok(())
    }

    /// The `application_name` of its database sessions (unless the URL names
    /// them); its name by default.
    fn session_name() -> String {
        Self::ABOUT.name.to_owned()
    }

    /// Assembles the service over its prepared (migrated) database.
    ///
    /// # Errors
    /// Why it cannot be assembled.
    fn assemble(config: &Self::Config, db: DbConfig, pool: Pool) -> anyhow::Result<Self>;

    /// What it adds to `/ready` and `/metrics`.
    fn vitals(&self) -> Arc<dyn Vitals>;

    /// Its HTTP router, given the `/health`, `/ready` and `/metrics` routes to
    /// merge in (the request metrics are added around the result). Those routes
    /// alone by default.
    fn router(&self, endpoints: Router) -> Router {
        endpoints
    }

    /// Its retention purge, if it has one. None by default.
    fn purge(&self) -> Option<Purge> {
        None
    }

    /// Its main loop, beside the HTTP server, until `shutdown` is cancelled and
    /// its in-flight work is done. None by default: the server is the service.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        let _ = shutdown;
        async {}
    }

    /// Prepares the database (created and migrated if configured, waiting while
    /// it is unreachable until `shutdown`), assembles the service and binds its
    /// port.
    ///
    /// # Errors
    /// Invalid configuration, an unreachable database at migration time (after
    /// `shutdown`), a failing migration, or a port that cannot be bound.
    fn build(
        config: &Self::Config,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Bound<Self>>> + Send {
        async move {
            Self::check(config)?;
            let settings = config.service();
            let about = Self::ABOUT;
            let (db, pool) =
                crate::db::prepare(settings, about.database, &Self::session_name(), shutdown)
                    .await
                    .with_context(|| {
                        format!("cannot prepare the {} database", about.database_name())
                    })?;
            let service = Self::assemble(config, db, pool.clone())?;
            let common = Arc::new(CommonMetrics::new());
            let exposition = Exposition::new(pool.clone(), service.vitals(), common.clone());
            let endpoints = crate::endpoints::routes(exposition.clone());
            // Outermost, so that whatever the service's own layers answer (a
            // timeout, a 404) is counted too.
            let router = crate::metrics::instrument(service.router(endpoints), common.clone());
            let listener = crate::http::bind(&settings.host, settings.port).await?;
            Ok(Bound {
                purge: service.purge(),
                service,
                listener,
                router,
                limits: settings.http,
                metrics: common,
                pool,
                exposition,
                export: settings.export.clone(),
            })
        }
    }
}

/// A service built and bound, ready to run.
pub struct Bound<S> {
    service: S,
    listener: TcpListener,
    router: Router,
    limits: crate::http::Limits,
    metrics: Arc<CommonMetrics>,
    pool: Pool,
    purge: Option<Purge>,
    exposition: Exposition,
    export: ExportConfig,
}

impl<S: Service> Bound<S> {
    /// The port its HTTP endpoint listens on.
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn port(&self) -> std::io::Result<u16> {
        Ok(self.listener.local_addr()?.port())
    }

    /// Runs the purge (on one replica at a time), the main loop and the HTTP
    /// server until `shutdown`; returns once the server has finished its
    /// requests and the main loop its in-flight work.
    ///
    /// # Errors
    /// A metrics exporter that cannot be built, the main loop's panic.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // The exporters stop after the server and the main loop, so that their
        // last send has the last requests' and the last work's counts.
        let exporters_stop = CancellationToken::new();
        let exporters = Exporters::start(
            &self.export,
            S::ABOUT.name,
            &self.exposition,
            &exporters_stop,
        )?;
        // Retention runs beside the service, so that neither waits for the other.
        if let Some(purge) = self.purge {
            tokio::spawn(crate::db::every_as_leader(
                self.pool,
                purge,
                shutdown.clone(),
            ));
        }
        let work = tokio::spawn(self.service.run(shutdown.clone()));
        let served = crate::http::serve_alongside(
            self.listener,
            self.router,
            self.limits,
            self.metrics,
            shutdown,
            work,
        )
        .await;
        exporters_stop.cancel();
        exporters.finish().await;
        served
    }
}
