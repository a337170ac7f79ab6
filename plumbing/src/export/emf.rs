//! CloudWatch's embedded metric format (EMF): the process's gauges as JSON log
//! lines on stdout, which CloudWatch Logs turns into metrics (the awslogs driver
//! of an ECS task ships them). The stack's alarms on the outbox (backlog,
//! oldest event's age, the relay's LISTEN session) read these.
//!
//! Each metric is named as its series on `/metrics`; its dimensions are
//! `Service` (the binary) and the series' own labels. Only gauges are written:
//! they are what alarms compare with a threshold, and a cumulative counter is
//! no CloudWatch metric. No task id is a dimension: the tasks of a service share
//! their metrics (alarms read their Maximum or Minimum), so the number of
//! CloudWatch metrics does not grow with the number of tasks.

use std::{
    io::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};

use super::openmetrics::{Family, Kind};
use crate::config::{ConfigError, duration_or, var};

/// The EMF lines' settings.
#[derive(Debug, Clone)]
pub struct EmfConfig {
    /// `METRICS_EMF_NAMESPACE`: the CloudWatch namespace.
    pub namespace: String,
    /// `METRICS_EMF_INTERVAL`: time between two rounds of lines.
    pub interval: Duration,
}

/// CloudWatch takes at most this many metrics in one EMF object.
const MAX_METRICS_PER_LINE: usize = 100;

impl EmfConfig {
    /// Reads the variables: `None` without `METRICS_EMF_NAMESPACE`.
    ///
    /// # Errors
    /// A namespace CloudWatch would refuse, or a bad interval.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(namespace) = var("METRICS_EMF_NAMESPACE") else {
            return Ok(None);
        };
        let valid = namespace.len() <= 255
            && !namespace.starts_with(':')
            && !namespace.starts_with("AWS/")
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_/#:".contains(c));
        if !valid {
            return Err(ConfigError {
                name: "METRICS_EMF_NAMESPACE".to_owned(),
                value: namespace,
                reason: "a CloudWatch namespace is 1 to 255 of A-Z a-z 0-9 . - _ / # : \
                         and does not start with AWS/"
                    .to_owned(),
            });
        }
        let interval = duration_or("METRICS_EMF_INTERVAL", Duration::from_secs(60))?;
        if interval < Duration::from_secs(1) {
            return Err(ConfigError {
                name: "METRICS_EMF_INTERVAL".to_owned(),
                value: format!("{interval:?}"),
                reason: "at least 1s".to_owned(),
            });
        }
        Ok(Some(Self {
            namespace,
            interval,
        }))
    }
}

/// The unit CloudWatch shows for a series, from its name.
fn unit(name: &str) -> &'static str {
    if name.ends_with("_seconds") {
        "Seconds"
    } else if name.ends_with("_bytes") {
        "Bytes"
    } else {
        "Count"
    }
}

/// Metrics of one EMF object: name and value.
type Metrics<'a> = Vec<(&'a str, f64)>;

/// The EMF objects for `families`' gauges at `timestamp_ms`: one per label set
/// (at most 100 metrics each), dimensions `Service` and the labels.
#[must_use]
pub fn lines(families: &[Family], namespace: &str, service: &str, timestamp_ms: u64) -> Vec<Value> {
    // Label sets in the order first seen, each with its metrics.
    let mut groups: Vec<(&[(String, String)], Metrics<'_>)> = Vec::new();
    for family in families.iter().filter(|f| f.kind == Kind::Gauge) {
        for sample in family.samples.iter().filter(|s| s.value.is_finite()) {
            let labels = sample.labels.as_slice();
            let index = groups
                .iter()
                .position(|(l, _)| *l == labels)
                .unwrap_or_else(|| {
                    groups.push((labels, Vec::new()));
                    groups.len() - 1
                });
            groups[index].1.push((family.name.as_str(), sample.value));
        }
    }
    let mut out = Vec::new();
    for (labels, metrics) in groups {
        let mut dimensions = vec!["Service".to_owned()];
        dimensions.extend(labels.iter().map(|(k, _)| k.clone()));
        for chunk in metrics.chunks(MAX_METRICS_PER_LINE) {
            let mut object = Map::new();
            object.insert(
                "_aws".to_owned(),
                json!({
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": namespace,
                        "Dimensions": [dimensions],
                        "Metrics": chunk
                            .iter()
                            .map(|(name, _)| json!({"Name": name, "Unit": unit(name)}))
                            .collect::<Vec<_>>(),
                    }],
                }),
            );
            object.insert("Service".to_owned(), json!(service));
            for (key, value) in labels {
                object.insert(key.clone(), json!(value));
            }
            for (name, value) in chunk {
                object.insert((*name).to_owned(), json!(value));
            }
            out.push(Value::Object(object));
        }
    }
    out
}

/// Writes the gauges of `families` to stdout as EMF lines, now.
///
/// # Errors
/// If stdout cannot be written.
pub fn write(families: &[Family], namespace: &str, service: &str) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut text = String::new();
    for line in lines(families, namespace, service, now) {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    // One write: the lines do not interleave with the log lines.
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::export::openmetrics::parse;

    #[test]
    fn gauges_become_one_object_per_label_set_and_counters_none() {
        let text = "# TYPE outbox_backlog gauge\noutbox_backlog 12\n\
                    # TYPE outbox_oldest_unpublished_age_seconds gauge\noutbox_oldest_unpublished_age_seconds 3.5\n\
                    # TYPE outbox_published counter\noutbox_published_total 9\n\
                    # TYPE q gauge\nq{queue=\"dlq\"} 2\nq{queue=\"main\"} NaN\n# EOF\n";
        let lines = lines(&parse(text).unwrap(), "ns", "outbox-relay", 1000);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = &lines[0];
        assert_eq!(first["_aws"]["Timestamp"], 1000);
        let directive = &first["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "ns");
        assert_eq!(directive["Dimensions"], json!([["Service"]]));
        assert_eq!(
            directive["Metrics"],
            json!([
                {"Name": "outbox_backlog", "Unit": "Count"},
                {"Name": "outbox_oldest_unpublished_age_seconds", "Unit": "Seconds"}
            ])
        );
        assert_eq!(first["Service"], "outbox-relay");
        assert_eq!(first["outbox_backlog"], 12.0);
        assert_eq!(first["outbox_oldest_unpublished_age_seconds"], 3.5);
        assert!(first.get("outbox_published").is_none());
        let second = &lines[1];
        assert_eq!(
            second["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Service", "queue"]])
        );
        assert_eq!(second["queue"], "dlq");
        assert_eq!(second["q"], 2.0);
    }
}
