//! `RELAY_UNSAFE_MARK_BEFORE_PUBLISH`: the deliberately broken drain the fault
//! suite uses to prove that its checker sees losses.

use tokio_util::sync::CancellationToken;

use super::{Relay, RelayError};
use crate::publisher::Outcome;

impl Relay {
    /// The deliberately broken drain of `RELAY_UNSAFE_MARK_BEFORE_PUBLISH`: each
    /// batch is marked published (committed) first, then published, and whatever
    /// the broker answers is ignored. A crash or a broker failure between the two
    /// loses the batch: the fault suite uses it to prove its checker sees losses.
    pub(super) async fn drain_marking_first(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<usize, RelayError> {
        let mut published = 0;
        while !shutdown.is_cancelled() {
            let claim = self.claim().await?;
            if claim.rows.is_empty() {
                break;
            }
            let rows = claim.rows.clone();
            let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
            self.metrics.in_flight.dec_by(rows.len() as i64);
            claim.finish(&ids, &[], self.settings.max_attempts).await?;
            self.metrics.published.inc_by(rows.len() as u64);
            published += rows.len();
            let timeout = self.settings.confirm_timeout;
            let outcomes = self
                .ensure_publisher()
                .await?
                .publish_batch(&rows, timeout, &[])
                .await;
            if outcomes.iter().any(|o| matches!(o, Outcome::Lost(_))) {
                self.disconnect().await;
            }
        }
        Ok(published)
    }
}
