//! Wake-ups from PostgreSQL `LISTEN/NOTIFY`.
//!
//! A notification is a hint, not a queue: notifications sent while the listener is
//! disconnected are lost, so the relay also polls on an interval and scans the
//! outbox after every (re)connection.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// A live `LISTEN` session. Dropping it closes the session.
pub struct Listener {
    _client: tokio_postgres::Client,
    alive: Arc<AtomicBool>,
}

impl Listener {
    /// Opens a dedicated session and listens on `channel`; every notification
    /// wakes `wake` (permits do not pile up: many notifications, one wake-up).
    ///
    /// # Errors
    /// The driver's error when connecting or `LISTEN` fails.
    pub async fn start(
        config: &Config,
        channel: &str,
        wake: Arc<Notify>,
    ) -> Result<Self, tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "notification session failed; polling until it is back");
                        break;
                    }
                    None => break,
                }
            }
            flag.store(false, Ordering::Release);
            // Wake the relay so it notices and rescans.
            wake.notify_one();
        });
        client
            .batch_execute(&format!("LISTEN {}", plumbing::db::quote_ident(channel)))
            .await?;
        Ok(Self {
            _client: client,
            alive,
        })
    }

    /// Whether the session is still up.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}
