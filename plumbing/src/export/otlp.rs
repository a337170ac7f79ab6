//! The OTLP/HTTP metrics push: the families of an exposition as an
//! `ExportMetricsServiceRequest`, cumulative, sent every interval.
//!
//! Names: a counter goes out under its family name (`http_server_requests`) as a
//! monotonic sum, a gauge as a gauge, a histogram as an explicit-bucket
//! histogram with the same bounds. The units of our names are in the names, so
//! no unit is set: the OTLP-to-Prometheus translation (Grafana Cloud's, the
//! OpenTelemetry Collector's) then adds exactly `_total` to a counter and
//! `_bucket`/`_sum`/`_count` to a histogram, which gives back the series of
//! `/metrics`, label for label. A resource gives the service: `service.name`
//! (the `job`), and `service.instance.id` (the `instance`, one per process,
//! so that the tasks of a service are separate series).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message as _;
// The OTLP client crate of the trace exporter, whose async client serves here.
use reqwest_otlp as reqwest;

use super::{
    millis_or,
    openmetrics::{Family, Kind, Sample},
};
use crate::config::{ConfigError, Secret, var};

/// How the request is encoded (`OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`, the default.
    Protobuf,
    /// `http/json`.
    Json,
}

/// The OTLP push's settings.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The full URL requests go to (it may hold credentials: shown redacted).
    pub endpoint: Secret,
    /// Headers of every request (values secret: an API key).
    pub headers: Vec<(String, Secret)>,
    /// Encoding.
    pub protocol: Protocol,
    /// The longest one request may take.
    pub timeout: Duration,
    /// Time between two pushes.
    pub interval: Duration,
}

/// The specification's default endpoint (a local Collector).
const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/metrics";

impl OtlpConfig {
    /// Reads the standard variables: `None` unless `OTEL_METRICS_EXPORTER` names
    /// `otlp` (and `OTEL_SDK_DISABLED` is not `true`).
    ///
    /// # Errors
    /// An unknown exporter, a gRPC protocol, a malformed endpoint, header or
    /// duration.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let invalid = |name: &str, value: &str, reason: &str| ConfigError {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let exporters = var("OTEL_METRICS_EXPORTER").unwrap_or_else(|| "none".to_owned());
        let mut otlp = false;
        for exporter in exporters.split(',').map(str::trim) {
            match exporter {
                "otlp" => otlp = true,
                // /metrics is the Prometheus exporter, always on.
                "none" | "prometheus" => {}
                other => {
                    return Err(invalid(
                        "OTEL_METRICS_EXPORTER",
                        &exporters,
                        &format!("{other:?} is not otlp, prometheus or none"),
                    ));
                }
            }
        }
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !otlp || disabled {
            return Ok(None);
        }
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                Secret::url(url.trim()),
            ),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                Secret::url(format!("{}/v1/metrics", base.trim().trim_end_matches('/'))),
            ),
            (None, None) => ("OTEL_EXPORTER_OTLP_ENDPOINT", Secret::url(DEFAULT_ENDPOINT)),
        };
        let (endpoint_var, endpoint) = endpoint;
        match reqwest::Url::parse(endpoint.expose()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => return Err(endpoint.invalid(endpoint_var, "not an http:// or https:// URL")),
        }
        let (headers_var, headers) = first_of(
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        );
        let headers = match headers {
            Some(text) => parse_headers(&text)
                .map_err(|reason| Secret::new(text).invalid(headers_var, &reason))?,
            None => Vec::new(),
        };
        let (protocol_var, protocol) = first_of(
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        );
        let protocol = match protocol.as_deref().map(str::trim) {
            None | Some("http/protobuf") => Protocol::Protobuf,
            Some("http/json") => Protocol::Json,
            Some(other) => {
                return Err(invalid(
                    protocol_var,
                    other,
                    "metrics go over OTLP/HTTP: http/protobuf (the default) or http/json; \
                     gRPC is not built in (use the collector's HTTP port, 4318)",
                ));
            }
        };
        let temporality = var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE");
        if let Some(t) = temporality.filter(|t| !t.trim().eq_ignore_ascii_case("cumulative")) {
            return Err(invalid(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                &t,
                "the series are Prometheus counters and histograms: cumulative only",
            ));
        }
        let (timeout_var, _) = first_of(
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        );
        let timeout = millis_or(timeout_var, Duration::from_secs(10))?.min(millis_or(
            "OTEL_METRIC_EXPORT_TIMEOUT",
            Duration::from_secs(30),
        )?);
        Ok(Some(Self {
            endpoint,
            headers,
            protocol,
            timeout,
            interval: millis_or("OTEL_METRIC_EXPORT_INTERVAL", Duration::from_secs(60))?,
        }))
    }
}

/// The signal's own variable if set, else the general one: the name read and
/// its value (`general` when neither is set).
fn first_of(specific: &'static str, general: &'static str) -> (&'static str, Option<String>) {
    match var(specific) {
        Some(value) => (specific, Some(value)),
        None => (general, var(general)),
    }
}

/// `key=value,key2=value2`, values percent-decoded (the specification's format).
fn parse_headers(text: &str) -> Result<Vec<(String, Secret)>, String> {
    let mut headers = Vec::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| "a header is not key=value".to_owned())?;
        let key = key.trim();
        let value = crate::config::percent_decoded(value.trim());
        reqwest::header::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("{key:?} is not a header name"))?;
        reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| format!("the value of {key} is not a header value"))?;
        headers.push((key.to_owned(), Secret::new(value)));
    }
    Ok(headers)
}

/// Sends requests to the configured endpoint.
#[derive(Clone)]
pub struct Sink {
    client: reqwest::Client,
    config: OtlpConfig,
    resource: Resource,
    scope: InstrumentationScope,
    /// The start of the cumulative series: when the process started counting.
    start: u64,
}

impl Sink {
    /// A sink for `service`'s metrics.
    ///
    /// # Errors
    /// If the HTTP client cannot be built.
    pub fn new(config: &OtlpConfig, service: &'static str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .context("cannot build the OTLP metrics client")?;
        Ok(Self {
            client,
            config: config.clone(),
            resource: resource(service),
            scope: InstrumentationScope {
                name: service.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            },
            start: unix_nanos(SystemTime::now()),
        })
    }

    /// Sends the families once.
    ///
    /// # Errors
    /// The endpoint cannot be reached, answers an error status, or rejects points.
    pub async fn send(&self, families: &[Family]) -> anyhow::Result<()> {
        let request = request(
            families,
            self.resource.clone(),
            self.scope.clone(),
            self.start,
            unix_nanos(SystemTime::now()),
        );
        let (content_type, body) = match self.config.protocol {
            Protocol::Protobuf => ("application/x-protobuf", request.encode_to_vec()),
            Protocol::Json => ("application/json", serde_json::to_vec(&request)?),
        };
        let endpoint = &self.config.endpoint;
        let mut post = self
            .client
            .post(endpoint.expose())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        for (name, value) in &self.config.headers {
            post = post.header(name.as_str(), value.expose());
        }
        let response = post
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", endpoint.redact(&format!("{e:#}"))))
            .with_context(|| format!("cannot reach {endpoint}"))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            anyhow::bail!("{endpoint} answered {status}: {text}");
        }
        let answer = match self.config.protocol {
            Protocol::Protobuf => ExportMetricsServiceResponse::decode(body.as_ref()).ok(),
            Protocol::Json => serde_json::from_slice::<ExportMetricsServiceResponse>(&body).ok(),
        };
        if let Some(partial) = answer.and_then(|a| a.partial_success)
            && partial.rejected_data_points > 0
        {
            anyhow::bail!(
                "{endpoint} rejected {} data points: {}",
                partial.rejected_data_points,
                partial.error_message
            );
        }
        Ok(())
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The process's resource (the one its spans carry) as OTLP attributes.
fn resource(service: &'static str) -> Resource {
    let attributes = crate::telemetry::resource(service)
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(match value {
                    opentelemetry::Value::Bool(b) => any_value::Value::BoolValue(*b),
                    opentelemetry::Value::I64(i) => any_value::Value::IntValue(*i),
                    opentelemetry::Value::F64(f) => any_value::Value::DoubleValue(*f),
                    other => any_value::Value::StringValue(other.to_string()),
                }),
            }),
            ..Default::default()
        })
        .collect();
    Resource {
        attributes,
        ..Default::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| string(k, v)).collect()
}

/// A sample as a number point.
fn point(sample: &Sample, start: u64, now: u64) -> NumberDataPoint {
    #[allow(clippy::cast_possible_truncation)]
    let value = if sample.integer && sample.value.abs() < 9.0e15 {
        number_data_point::Value::AsInt(sample.value as i64)
    } else {
        number_data_point::Value::AsDouble(sample.value)
    };
    NumberDataPoint {
        attributes: attributes(&sample.labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(value),
        ..Default::default()
    }
}

/// The request carrying `families` as they are at `now` (cumulative since `start`).
#[must_use]
pub fn request(
    families: &[Family],
    resource: Resource,
    scope: InstrumentationScope,
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        .filter_map(|family| metric(family, start, now))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One family as an OTLP metric (`None` when it has no samples to send).
fn metric(family: &Family, start: u64, now: u64) -> Option<Metric> {
    let points = |suffix: &str| -> Vec<NumberDataPoint> {
        family
            .samples
            .iter()
            .filter(|s| s.suffix == suffix)
            .map(|s| point(s, start, now))
            .collect()
    };
    let (name, data) = match &family.kind {
        Kind::Counter => (
            family.name.clone(),
            Data::Sum(Sum {
                data_points: points("_total"),
                aggregation_temporality: AggregationTemporality::Cumulative.into(),
                is_monotonic: true,
            }),
        ),
        Kind::Gauge => (
            family.name.clone(),
            Data::Gauge(Gauge {
                data_points: points(""),
            }),
        ),
        Kind::Info => (
            format!("{}_info", family.name),
            Data::Gauge(Gauge {
                data_points: points("_info"),
            }),
        ),
        Kind::Histogram => (
            family.name.clone(),
            Data::Histogram(Histogram {
                data_points: histogram_points(&family.samples, start, now),
                aggregation_temporality: AggregationTemporality::Cumulative.into(),
            }),
        ),
        // Each sample as a gauge of its own series' name.
        Kind::Other(_) => (
            family.name.clone(),
            Data::Gauge(Gauge {
                data_points: points(""),
            }),
        ),
    };
    let empty = match &data {
        Data::Sum(s) => s.data_points.is_empty(),
        Data::Gauge(g) => g.data_points.is_empty(),
        Data::Histogram(h) => h.data_points.is_empty(),
        _ => false,
    };
    (!empty).then(|| Metric {
        name,
        description: family.help.clone(),
        unit: match family.unit.as_deref() {
            Some("seconds") => "s".to_owned(),
            Some("bytes") => "By".to_owned(),
            other => other.unwrap_or_default().to_owned(),
        },
        data: Some(data),
        ..Default::default()
    })
}

/// The histogram's series (one per label set, `le` aside): the cumulative
/// bucket counts of the text made per-bucket, as OTLP counts them.
fn histogram_points(samples: &[Sample], start: u64, now: u64) -> Vec<HistogramDataPoint> {
    struct Series {
        labels: Vec<(String, String)>,
        buckets: Vec<(f64, f64)>,
        sum: f64,
        count: f64,
    }
    let mut series: Vec<Series> = Vec::new();
    for sample in samples {
        let labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        let index = series
            .iter()
            .position(|s| s.labels == labels)
            .unwrap_or_else(|| {
                series.push(Series {
                    labels,
                    buckets: Vec::new(),
                    sum: 0.0,
                    count: 0.0,
                });
                series.len() - 1
            });
        let entry = &mut series[index];
        match sample.suffix.as_str() {
            "_sum" => entry.sum = sample.value,
            "_count" => entry.count = sample.value,
            "_bucket" => {
                let bound = match sample.label("le") {
                    Some("+Inf") | None => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                };
                entry.buckets.push((bound, sample.value));
            }
            _ => {}
        }
    }
    series
        .into_iter()
        .map(|mut s| {
            s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut previous = 0.0;
            let mut bucket_counts = Vec::with_capacity(s.buckets.len() + 1);
            let mut explicit_bounds = Vec::with_capacity(s.buckets.len());
            for (bound, cumulative) in &s.buckets {
                if bound.is_finite() {
                    explicit_bounds.push(*bound);
                }
                bucket_counts.push(as_count(cumulative - previous));
                previous = *cumulative;
            }
            if s.buckets.last().is_none_or(|(b, _)| b.is_finite()) {
                // No +Inf bucket written: what the count has beyond the last bound.
                bucket_counts.push(as_count(s.count - previous));
            }
            HistogramDataPoint {
                attributes: attributes(&s.labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: as_count(s.count),
                sum: Some(s.sum),
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            }
        })
        .collect()
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn as_count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::export::openmetrics::parse;

    const TEXT: &str = r#"# HELP requests Requests.
# TYPE requests counter
requests_total{route="/a",status="200"} 4
# HELP duration_seconds Time.
# TYPE duration_seconds histogram
duration_seconds_sum{route="/a"} 0.75
duration_seconds_count{route="/a"} 5
duration_seconds_bucket{le="0.1",route="/a"} 2
duration_seconds_bucket{le="1.0",route="/a"} 4
duration_seconds_bucket{le="+Inf",route="/a"} 5
# HELP depth Depth.
# TYPE depth gauge
depth{queue="q"} 3
depth{queue="dlq"} 0.5
# EOF
"#;

    fn metrics() -> Vec<Metric> {
        let families = parse(TEXT).unwrap();
        let request = request(
            &families,
            Resource::default(),
            InstrumentationScope::default(),
            1,
            2,
        );
        request.resource_metrics[0].scope_metrics[0].metrics.clone()
    }

    #[test]
    fn counters_are_cumulative_monotonic_sums_under_their_family_name() {
        let metrics = metrics();
        assert_eq!(metrics[0].name, "requests");
        let Some(Data::Sum(sum)) = &metrics[0].data else {
            panic!("{:?}", metrics[0])
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            i32::from(AggregationTemporality::Cumulative)
        );
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsInt(4)));
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (1, 2));
        assert_eq!(
            point.attributes,
            vec![string("route", "/a"), string("status", "200")]
        );
    }

    #[test]
    fn histograms_keep_their_bounds_with_per_bucket_counts() {
        let metrics = metrics();
        assert_eq!(metrics[1].name, "duration_seconds");
        assert_eq!(metrics[1].unit, "");
        let Some(Data::Histogram(histogram)) = &metrics[1].data else {
            panic!("{:?}", metrics[1])
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(point.bucket_counts, vec![2, 2, 1]);
        assert_eq!((point.count, point.sum), (5, Some(0.75)));
        assert_eq!(point.attributes, vec![string("route", "/a")]);
    }

    #[test]
    fn gauges_keep_integers_and_fractions() {
        let metrics = metrics();
        let Some(Data::Gauge(gauge)) = &metrics[2].data else {
            panic!("{:?}", metrics[2])
        };
        let values: Vec<_> = gauge.data_points.iter().map(|p| p.value).collect();
        assert_eq!(
            values,
            vec![
                Some(number_data_point::Value::AsInt(3)),
                Some(number_data_point::Value::AsDouble(0.5))
            ]
        );
    }

    #[test]
    fn headers_are_key_value_pairs_with_percent_encoded_values() {
        let headers = parse_headers("Authorization=Basic%20abc%3D, x-scope=t1").unwrap();
        assert_eq!(headers[0].0, "Authorization");
        assert_eq!(headers[0].1.expose(), "Basic abc=");
        assert_eq!(headers[1].1.expose(), "t1");
        assert!(parse_headers("no-equals").is_err());
        assert!(parse_headers("bad name=x").is_err());
    }
}
