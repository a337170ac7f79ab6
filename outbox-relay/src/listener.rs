//! Wake-ups from PostgreSQL `LISTEN/NOTIFY`.
//!
//! A notification is a hint, not a queue: notifications sent while the session is
//! down are lost, so the relay also polls on an interval and scans the outbox
//! after every (re)connection.
//!
//! Notifications cost the database: every order's commit signals the listening
//! backend, which reads the notification queue and sends a message to the relay,
//! about 35 µs of PostgreSQL CPU per order measured in steady traffic. A relay
//! that is busy does not need them (it claims again as soon as its batch window
//! has passed), so it pauses listening while busy ([`Listener::pause`]) and
//! listens again before it waits ([`Listener::resume`]), then scans once more:
//! what committed while it was not listening is found by that scan, what commits
//! after it notifies.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use plumbing::db::{DbConfig, OUTBOX_CHANNEL, SessionEvent};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// Start of every relay session's `application_name`: `outbox-relay/<instance>`
/// for its pool, with [`SESSION_SUFFIX`] for its notification session.
pub const SESSION_PREFIX: &str = "outbox-relay/";

/// Suffix of the notification session's `application_name`; `outbox-relay
/// status` looks for it.
pub const SESSION_SUFFIX: &str = "/notifications";

/// The `application_name` of the sessions of relay `instance`.
#[must_use]
pub fn session_name(instance: &str) -> String {
    format!("{SESSION_PREFIX}{instance}")
}

/// The relay's notification session: opened, reopened and paused by the relay
/// loop, reported in the log (once when it fails, once when it is back) and in
/// the `outbox_notification_session` gauge.
pub struct Listener {
    config: DbConfig,
    wake: Arc<Notify>,
    session: Option<Session>,
    /// `LISTEN` is in force (not paused).
    listening: bool,
    /// The last attempt to open the session failed (logged once).
    failing: bool,
    up: Gauge,
}

struct Session {
    client: tokio_postgres::Client,
    alive: Arc<AtomicBool>,
}

impl Listener {
    /// A listener for the orders database `config` (its sessions named after
    /// the relay's, with [`SESSION_SUFFIX`]); every notification wakes `wake`
    /// (permits do not pile up: many notifications, one wake-up). `up` is set
    /// to 1 while the session is open.
    #[must_use]
    pub fn new(config: &DbConfig, wake: Arc<Notify>, up: Gauge) -> Self {
        let name = format!(
            "{}{SESSION_SUFFIX}",
            config.application_name().unwrap_or("outbox-relay")
        );
        Self {
            config: config.clone().named(&name),
            wake,
            session: None,
            listening: false,
            failing: false,
            up,
        }
    }

    /// Whether the session is open.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.alive.load(Ordering::Acquire))
    }

    /// Opens the session if it is not open. Returns `true` when it was opened
    /// now: notifications may have been missed, so the caller scans the outbox.
    pub async fn ensure(&mut self) -> bool {
        if self.is_alive() {
            return false;
        }
        self.session = None;
        self.listening = false;
        let alive = Arc::new(AtomicBool::new(true));
        let (flag, wake, up) = (alive.clone(), self.wake.clone(), self.up.clone());
        let opened = plumbing::db::listen(&self.config, OUTBOX_CHANNEL, move |event| match event {
            SessionEvent::Notification(_) => wake.notify_one(),
            SessionEvent::Closed(error) => {
                flag.store(false, Ordering::Release);
                up.set(0);
                if let Some(e) = error {
                    tracing::warn!(error = %e, "notification session failed; reopening it");
                }
                // Wake the relay so that it notices, reconnects and rescans.
                wake.notify_one();
            }
        })
        .await;
        match opened {
            Ok(client) => {
                if self.failing {
                    tracing::info!("notification session is back; no longer polling");
                }
                self.failing = false;
                self.session = Some(Session { client, alive });
                self.listening = true;
                self.up.set(1);
                true
            }
            Err(e) => {
                self.up.set(0);
                if self.failing {
                    tracing::debug!(error = %e, cause = %plumbing::telemetry::error_chain(&e), "notification session still down");
                } else {
                    self.failing = true;
                    tracing::warn!(error = %e, cause = %plumbing::telemetry::error_chain(&e),
                        "cannot listen for notifications; polling on RELAY_POLL_INTERVAL until the session is back");
                }
                false
            }
        }
    }

    /// Stops notifications while the relay is busy (it claims on its own then).
    /// A failure closes the session; [`Listener::ensure`] reopens it.
    pub async fn pause(&mut self) {
        if self.listening {
            self.listening = false;
            self.run(&format!(
                "UNLISTEN {}",
                plumbing::db::quote_ident(OUTBOX_CHANNEL)
            ))
            .await;
        }
    }

    /// Listens again after [`Listener::pause`]. Returns `true` when it was
    /// paused: what committed meanwhile did not notify, so the caller scans the
    /// outbox once more before it waits.
    pub async fn resume(&mut self) -> bool {
        if self.listening || !self.is_alive() {
            return false;
        }
        self.listening = true;
        self.run(&format!(
            "LISTEN {}",
            plumbing::db::quote_ident(OUTBOX_CHANNEL)
        ))
        .await;
        true
    }

    async fn run(&mut self, statement: &str) {
        let Some(session) = &self.session else {
            return;
        };
        if let Err(e) = session.client.batch_execute(statement).await {
            tracing::warn!(error = %e, statement, "notification session failed; reopening it");
            self.session = None;
            self.up.set(0);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.up.set(0);
    }
}
