//! Metrics that leave the process: the series `/metrics` serves, pushed where
//! no Prometheus scrapes them (a deployment in AWS).
//!
//! - **OTLP** ([`otlp`]): with `OTEL_METRICS_EXPORTER=otlp`, every
//!   `OTEL_METRIC_EXPORT_INTERVAL` the process sends its series over OTLP/HTTP to
//!   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT` +
//!   `/v1/metrics`), with `OTEL_EXPORTER_OTLP_(METRICS_)HEADERS` (Grafana Cloud's
//!   `Authorization=Basic …`), cumulative, named so that an OTLP-to-Prometheus
//!   translation (Grafana Cloud's, the Collector's) gives back the names and
//!   labels of `/metrics`.
//! - **CloudWatch** ([`emf`]): with `METRICS_EMF_NAMESPACE`, every
//!   `METRICS_EMF_INTERVAL` the process writes its gauges to stdout in
//!   CloudWatch's embedded metric format; the awslogs driver ships the lines and
//!   CloudWatch makes them metrics, which the stack's alarms read.
//!
//! Both read the same text a scrape gets ([`Exposition::text`]), parsed back
//! ([`openmetrics`]): one definition of every series, three ways out.

pub mod emf;
pub mod openmetrics;
pub mod otlp;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ConfigError, var},
    endpoints::Vitals,
    metrics::CommonMetrics,
};

/// Where the metrics go besides `/metrics` (`OTEL_METRICS_EXPORTER`, …,
/// `METRICS_EMF_NAMESPACE`).
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    /// The OTLP push, when `OTEL_METRICS_EXPORTER` names `otlp`.
    pub otlp: Option<otlp::OtlpConfig>,
    /// The CloudWatch EMF lines, when `METRICS_EMF_NAMESPACE` is set.
    pub emf: Option<emf::EmfConfig>,
}

/// The variables [`ExportConfig::from_env`] reads, for `--help`.
pub const VARIABLES: &str = "\
OTEL_METRICS_EXPORTER otlp pushes the /metrics series over OTLP/HTTP (default none: /metrics only); OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (default OTEL_EXPORTER_OTLP_ENDPOINT/v1/metrics), OTEL_EXPORTER_OTLP_(METRICS_)HEADERS, _PROTOCOL (http/protobuf or http/json), _TIMEOUT apply
OTEL_METRIC_EXPORT_INTERVAL milliseconds between two OTLP pushes (default 60000)
METRICS_EMF_NAMESPACE CloudWatch namespace: writes the gauges to stdout in CloudWatch's embedded metric format (default unset: no such lines)
METRICS_EMF_INTERVAL time between two rounds of EMF lines (default 60s)";

impl ExportConfig {
    /// Reads the variables.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that cannot be used.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            otlp: otlp::OtlpConfig::from_env()?,
            emf: emf::EmfConfig::from_env()?,
        })
    }
}

/// What a scrape of the process shows: its service's metrics and the common ones,
/// refreshed (the vitals measured at scrape time, the pool's usage) on each read.
#[derive(Clone)]
pub struct Exposition {
    pool: Pool,
    vitals: Arc<dyn Vitals>,
    common: Arc<CommonMetrics>,
}

impl Exposition {
    /// The exposition of `vitals` and `common`, refreshed over `pool`.
    #[must_use]
    pub fn new(pool: Pool, vitals: Arc<dyn Vitals>, common: Arc<CommonMetrics>) -> Self {
        Self {
            pool,
            vitals,
            common,
        }
    }

    /// The service's vitals (for `/ready`).
    #[must_use]
    pub fn vitals(&self) -> &dyn Vitals {
        self.vitals.as_ref()
    }

    /// The pool (for `/ready`).
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Refreshes what is measured at read time and encodes every family, in the
    /// OpenMetrics text format.
    ///
    /// # Errors
    /// If a registry cannot be encoded.
    pub async fn text(&self) -> Result<String, std::fmt::Error> {
        self.vitals.refresh(&self.pool).await;
        self.common.observe_pool(&self.pool);
        crate::metrics::encode_text(&[self.vitals.registry(), self.common.registry()])
    }

    /// The exposition parsed into families.
    async fn families(&self) -> anyhow::Result<Vec<openmetrics::Family>> {
        let text = self.text().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(openmetrics::parse(&text)?)
    }
}

/// The exporters [`ExportConfig`] asks for, running until their stop token is
/// cancelled (each sends once more then, so that the last counts are not lost).
#[derive(Debug, Default)]
pub struct Exporters {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The longest a final send may take.
    grace: Duration,
}

impl Exporters {
    /// Starts the exporters of `config` over `exposition`, for `service` (its
    /// name in the resource and the EMF dimension), until `stop`.
    ///
    /// # Errors
    /// If the OTLP client cannot be built.
    pub fn start(
        config: &ExportConfig,
        service: &'static str,
        exposition: &Exposition,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut exporters = Self::default();
        if let Some(otlp) = &config.otlp {
            let sink = otlp::Sink::new(otlp, service)?;
            exporters.grace = otlp.timeout;
            tracing::info!(
                endpoint = %otlp.endpoint,
                interval = ?otlp.interval,
                "pushing metrics over OTLP"
            );
            exporters.tasks.push((
                "OTLP",
                tokio::spawn(every(
                    otlp.interval,
                    exposition.clone(),
                    stop.clone(),
                    move |families| {
                        let sink = sink.clone();
                        async move { sink.send(&families).await }
                    },
                )),
            ));
        }
        if let Some(emf) = &config.emf {
            let namespace = emf.namespace.clone();
            tracing::info!(namespace, interval = ?emf.interval, "writing gauges in CloudWatch's embedded metric format");
            exporters.tasks.push((
                "EMF",
                tokio::spawn(every(
                    emf.interval,
                    exposition.clone(),
                    stop.clone(),
                    move |families| {
                        let result = emf::write(&families, &namespace, service);
                        std::future::ready(result)
                    },
                )),
            ));
        }
        Ok(exporters)
    }

    /// Waits for the final sends (after the stop), at most their timeout.
    pub async fn finish(self) {
        for (name, task) in self.tasks {
            match tokio::time::timeout(self.grace + Duration::from_secs(1), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the {name} metrics exporter failed"),
                Err(_) => tracing::warn!("the {name} metrics exporter's last send timed out"),
            }
        }
    }
}

/// Sends the families every `interval` (the first after one interval) and once
/// more when `stop` is cancelled. A failed send is logged (once per run of failures) and the
/// next one carries the values on: the series are cumulative.
async fn every<F, Fut>(interval: Duration, exposition: Exposition, stop: CancellationToken, send: F)
where
    F: Fn(Vec<openmetrics::Family>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            () = stop.cancelled() => true,
        };
        let result = match exposition.families().await {
            Ok(families) => send(families).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) if failing => {
                tracing::info!("metrics are sent again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing || last => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot send the metrics; retrying at the next interval"
                );
                failing = true;
            }
            Err(e) => tracing::debug!(error = format!("{e:#}"), "cannot send the metrics"),
        }
        if last {
            return;
        }
    }
}

/// A duration variable in milliseconds (the OpenTelemetry convention), positive.
fn millis_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let Some(text) = var(name) else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(ConfigError {
            name: name.to_owned(),
            value: text,
            reason: "not a positive number of milliseconds".to_owned(),
        }),
    }
}
