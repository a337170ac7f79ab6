//! A consuming session's lifecycle: connect, declare, consume, reconnect with
//! backoff when the broker fails; on shutdown cancel the consumer, finish the
//! deliveries already received within the drain timeout, and never let a silent
//! broker keep the process alive.

use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use plumbing::broker::{self, BrokerError, short_string};
use tokio_util::sync::CancellationToken;

use crate::{queue_depth::QueueDepth, worker::Worker};

/// Beyond the drain timeout, how long stopping may wait for the broker.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Why a consuming session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting or declaring failed.
    #[error(transparent)]
    Connect(#[from] BrokerError),
    /// The channel or connection failed.
    #[error("broker channel failed: {0}")]
    Channel(#[from] lapin::Error),
    /// The broker cancelled the consumer (e.g. the queue was deleted).
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

impl Worker {
    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker
    /// connection fails.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut delays = plumbing::backoff::reconnect_delays();
        while !shutdown.is_cancelled() {
            let mut connected = false;
            // Once shutdown starts, a session gets the drain timeout plus a margin
            // to finish: a broker that stops answering (a half-open connection)
            // must not keep the process alive. Whatever it still held unacked is
            // redelivered by the broker.
            let give_up = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.settings.drain_timeout + STOP_MARGIN).await;
            };
            let result = tokio::select! {
                result = self.session(&shutdown, &mut connected) => result,
                () = give_up => {
                    tracing::warn!("the broker did not let the session end in time; stopping without it");
                    Ok(())
                }
            };
            self.metrics.broker_connected.set(0);
            match result {
                Ok(()) => break,
                Err(e) => {
                    if connected {
                        delays = plumbing::backoff::reconnect_delays();
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in = ?delay, "consuming failed; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!("worker stopped");
    }

    /// One connection's life: declare, consume, handle batches; on shutdown cancel
    /// the consumer and finish the deliveries already received.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> Result<(), SessionError> {
        let connection = broker::connect(&self.broker_url, "invoices-worker").await?;
        let lost = broker::lost(&connection);
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel, &self.topology).await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tag = format!("invoices-worker-{}", uuid::Uuid::new_v4().simple());
        let mut consumer: Consumer = channel
            .basic_consume(
                short_string(&self.topology.order_created_queue),
                short_string(&tag),
                BasicConsumeOptions {
                    // The broken mode consumes in auto-ack mode: the broker
                    // forgets each message as soon as it has sent it.
                    #[cfg(feature = "fault-injection")]
                    no_ack: self.settings.unsafe_ack_before_commit,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        *connected = true;
        self.metrics.broker_connected.set(1);
        let _depth = QueueDepth::watch(
            connection.create_channel().await?,
            self.topology.clone(),
            self.metrics.clone(),
        );
        tracing::info!(queue = %self.topology.order_created_queue, prefetch = self.settings.prefetch, batch = self.settings.batch_size, "consuming");

        // The consuming ends when the connection does, whatever it was waiting
        // for: what it held unacknowledged is redelivered, and the store is
        // idempotent.
        tokio::select! {
            result = self.consume(&channel, &mut consumer, &tag, &dead_letters, shutdown) => result?,
            error = lost => return Err(error.into()),
        }
        let _ = channel.close(200, "worker stopping".into()).await;
        let _ = dead_letters.close(200, "worker stopping".into()).await;
        let _ = connection.close(200, "worker stopping".into()).await;
        Ok(())
    }

    /// Handles batches until `shutdown`, then cancels the consumer and finishes
    /// the deliveries already received (within the drain timeout).
    async fn consume(
        &self,
        channel: &Channel,
        consumer: &mut Consumer,
        tag: &str,
        dead_letters: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        // Whether every delivery so far was acked or rejected. Once a batch is left
        // unsettled (shutdown during a database outage), no later batch may be
        // acked: its `multiple` ack would cover the unsettled deliveries too.
        let mut all_settled = true;
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(SessionError::Cancelled),
                },
            };
            let batch = self.take_ready(consumer, first)?;
            if !self.handle_batch(batch, dead_letters, shutdown).await? {
                all_settled = false;
                break;
            }
        }

        // Stop the flow, then finish what the broker already handed us, so that a
        // rolling restart does not bounce prefetched messages back to the queue.
        channel
            .basic_cancel(short_string(tag), BasicCancelOptions::default())
            .await?;
        let drain = async {
            if !all_settled {
                return;
            }
            loop {
                let Some(Ok(first)) = consumer.next().await else {
                    break;
                };
                let Ok(batch) = self.take_ready(consumer, first) else {
                    break;
                };
                match self.handle_batch(batch, dead_letters, shutdown).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not finish deliveries during shutdown");
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(self.settings.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!("drain timed out; unacknowledged deliveries return to the queue");
        }
        Ok(())
    }

    /// `first` plus the deliveries already waiting, up to the batch size: under
    /// load batches fill from the prefetch buffer; when idle a batch is one message
    /// and waits for nothing.
    fn take_ready(
        &self,
        consumer: &mut Consumer,
        first: Delivery,
    ) -> Result<Vec<Delivery>, SessionError> {
        let mut batch = vec![first];
        while batch.len() < self.settings.batch_size {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(e))) => return Err(e.into()),
                Some(None) | None => break,
            }
        }
        Ok(batch)
    }
}
