//! Writing a batch's outcomes down: the confirmed rows marked published and the
//! refused ones recorded (blocked at the attempt limit), in the claim's own
//! transaction, whose commit unlocks the rows whose fate is unknown for the next
//! cycle. Nothing is marked published that the broker did not confirm.

use plumbing::publish::{Lost, Rejection};
use time::OffsetDateTime;

use super::{BatchReport, Relay, RelayError};
use crate::{
    config::RelaySettings,
    metrics::{FailureReason, RelayMetrics},
    publisher::Outcome,
    store::Claim,
};

/// A batch's outcomes being written down on a task of its own.
pub(super) type Marking = tokio::task::JoinHandle<Result<(BatchReport, Option<Lost>), RelayError>>;

/// A batch whose confirms are in: what remains is to write the outcomes down.
pub(super) struct Settled {
    pub(super) claim: Claim,
    pub(super) outcomes: Vec<Outcome>,
}

impl Relay {
    /// Writes a settled batch down on a task of its own, so that the relay
    /// publishes the next batch meanwhile.
    pub(super) fn mark_in_background(&self, settled: Settled) -> Marking {
        let (metrics, settings) = (self.metrics.clone(), self.settings);
        tokio::spawn(async move { Self::write_outcomes(&metrics, &settings, settled).await })
    }

    /// Waits for a batch's marks; returns how many events were published. On a
    /// lost channel, drops the publisher and fails, so that the caller backs off
    /// and reconnects.
    pub(super) async fn marked(&mut self, marking: Marking) -> Result<usize, RelayError> {
        let (report, lost) = marking.await.map_err(RelayError::Recording)??;
        if let Some(lost) = lost {
            self.disconnect().await;
            return Err(lost.into());
        }
        Ok(report.published)
    }

    /// Unlocks a batch claimed but not published (a drain that failed). Errors
    /// are logged: an unfinished claim's connection is closed, which rolls back
    /// and frees its rows anyway.
    pub(super) async fn release(&self, unpublished: Option<Claim>) {
        if let Some(claim) = unpublished {
            self.metrics.in_flight.dec_by(claim.rows.len() as i64);
            if let Err(e) = claim.finish(&[], &[], self.settings.max_attempts).await {
                tracing::warn!(error = %e, "could not unlock claimed rows; closed their connection");
            }
        }
    }

    /// Writes a settled batch down; on a lost channel, drops the publisher and
    /// fails, so that the caller backs off and reconnects.
    pub(super) async fn record(&mut self, settled: Settled) -> Result<BatchReport, RelayError> {
        let (report, lost) = Self::write_outcomes(&self.metrics, &self.settings, settled).await?;
        if let Some(lost) = lost {
            self.disconnect().await;
            return Err(lost.into());
        }
        Ok(report)
    }

    /// Marks the confirmed rows and records the refused ones (blocking those at
    /// the attempt limit) in the claim's transaction and commits it, which unlocks
    /// the lost ones for the next cycle. Returns the report and, if the channel was
    /// lost, why.
    pub(super) async fn write_outcomes(
        metrics: &RelayMetrics,
        settings: &RelaySettings,
        settled: Settled,
    ) -> Result<(BatchReport, Option<Lost>), RelayError> {
        let Settled { claim, outcomes } = settled;
        let mut confirmed = Vec::new();
        let mut rejected = Vec::new();
        let mut lost = 0;
        let mut lost_reason = None;
        let now = OffsetDateTime::now_utc();
        for (row, outcome) in claim.rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Confirmed => {
                    confirmed.push(row.id);
                    metrics
                        .commit_to_confirm
                        .observe((now - row.created_at).as_seconds_f64().max(0.0));
                }
                Outcome::Rejected(rejection) => {
                    metrics.failed(match rejection {
                        Rejection::Returned { .. } => FailureReason::Returned,
                        Rejection::Nacked { .. } => FailureReason::Nacked,
                        Rejection::Invalid(_) => FailureReason::Invalid,
                    });
                    let reason = rejection.to_string();
                    tracing::warn!(outbox_id = row.id, message_id = %row.message_id, attempts = row.attempts + 1, reason, "broker refused event");
                    rejected.push((row.id, reason));
                }
                Outcome::Lost(reason) => {
                    metrics.failed(FailureReason::Lost);
                    lost += 1;
                    lost_reason.get_or_insert(reason);
                }
            }
        }
        let report = BatchReport {
            claimed: claim.rows.len(),
            published: confirmed.len(),
            rejected: rejected.len(),
            lost,
        };
        metrics.in_flight.dec_by(claim.rows.len() as i64);
        let blocked = claim
            .finish(&confirmed, &rejected, settings.max_attempts)
            .await?;
        metrics.published.inc_by(confirmed.len() as u64);
        for b in blocked {
            metrics.blocked.inc();
            tracing::error!(outbox_id = b.id, message_id = %b.message_id, aggregate_id = %b.aggregate_id, max_attempts = settings.max_attempts, "event blocked after too many attempts; its aggregate waits for an operator (outbox-relay retry / skip)");
        }
        tracing::debug!(?report, "batch recorded");
        Ok((report, lost_reason))
    }
}
