//! What the services' stores share: one error type, the readiness ping and the
//! batched retention purge.

use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};
use tokio_postgres::Client;

/// A database failure of a service's store. Its HTTP meaning (503 or 500) is the
/// caller's business: see [`StoreError::is_transient`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had.
    #[error("no database connection")]
    Pool(#[from] PoolError),
    /// A statement failed.
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    /// The database answered, but not as the code relies on (a bug, or rows
    /// written by something else): retrying will not help.
    #[error("{what}")]
    Invariant {
        /// What does not hold.
        what: String,
        /// The error that revealed it, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// A broken invariant, described by `what`.
    #[must_use]
    pub fn invariant(what: impl Into<String>) -> Self {
        Self::Invariant {
            what: what.into(),
            source: None,
        }
    }

    /// A broken invariant revealed by `source`.
    #[must_use]
    pub fn invariant_from(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Invariant {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether retrying may succeed: the database is down or overloaded, or the
    /// transaction lost a race (see [`super::is_transient`]).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(e) => super::is_transient_pool(e),
            StoreError::Query(e) => super::is_transient(e),
            StoreError::Invariant { .. } => false,
        }
    }
}

/// Checks that the database answers (readiness, operator commands).
///
/// # Errors
/// [`StoreError`] when it does not.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// Runs `delete` over and over until a run deletes fewer than `batch` rows;
/// returns how many were deleted in all. `delete` takes the age in seconds as
/// `$1` (a `float8`) and the batch size as `$2` (a `LIMIT`), so that no statement
/// holds many locks or runs long.
///
/// # Errors
/// [`StoreError`] when a statement fails; what earlier runs deleted stays deleted.
pub async fn purge_in_batches(
    client: &Client,
    delete: &str,
    older_than: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let older_than_secs = older_than.as_secs_f64();
    let statement = client.prepare(delete).await?;
    let full = u64::try_from(batch).unwrap_or(u64::MAX);
    let mut total = 0;
    loop {
        let deleted = client
            .execute(&statement, &[&older_than_secs, &batch])
            .await?;
        total += deleted;
        if deleted < full {
            return Ok(total);
        }
    }
}
