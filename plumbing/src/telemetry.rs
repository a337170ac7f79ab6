//! Logs and traces.
//!
//! Logs: on stdout, filtered by `RUST_LOG`; lines inside a traced operation carry
//! its `trace_id` and `span_id`. `LOG_FORMAT` chooses how they are written: `json`
//! (one JSON object per line), `text` (human-readable), or `auto`, the default: text
//! when stdout is a terminal, JSON otherwise, so that a person running a binary by
//! hand can read it while containers, log shippers and the tests get JSON.
//!
//! Traces: `tracing` spans become OpenTelemetry spans. The W3C trace context
//! (`traceparent`, `tracestate`) always propagates, from the HTTP request through the
//! outbox row and the AMQP headers to the worker, exporter or not. Spans are
//! exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the exporter reads the standard
//! variables itself (`OTEL_EXPORTER_OTLP_HEADERS`, `…_PROTOCOL` (default
//! `http/protobuf`), `…_TIMEOUT`), the SDK reads `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` and
//! `OTEL_BSP_*`. `OTEL_SDK_DISABLED=true` turns tracing off.

use std::io::IsTerminal as _;

use opentelemetry::{
    Context, Key,
    propagation::{Extractor, TextMapPropagator as _},
    trace::{SpanContext, TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: what log shippers and the tests parse.
    Json,
    /// Human-readable lines, for a person at a terminal.
    Text,
}

/// A `LOG_FORMAT` value that is none of `json`, `text` or `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("LOG_FORMAT={0:?} is not json, text or auto")]
pub struct UnknownLogFormat(pub String);

impl LogFormat {
    /// `auto`: text for a person at a terminal, JSON for everything else.
    #[must_use]
    pub fn auto(stdout_is_terminal: bool) -> Self {
        if stdout_is_terminal {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }

    /// The `LOG_FORMAT` value that selects this format (`json`, `text`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }

    /// The format `LOG_FORMAT` asks for: `json`, `text`, or `auto` (also when
    /// unset): text when stdout is a terminal, JSON otherwise. JSON stays the
    /// default for anything that is not a person's terminal, because machines read
    /// those lines.
    ///
    /// # Errors
    /// [`UnknownLogFormat`] for any other value (the caller falls back to `auto`
    /// and says so, rather than refusing to start over a log setting).
    pub fn choose(
        setting: Option<&str>,
        stdout_is_terminal: bool,
    ) -> Result<Self, UnknownLogFormat> {
        let auto = Self::auto(stdout_is_terminal);
        let Some(setting) = setting.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(auto);
        };
        match setting.to_ascii_lowercase().as_str() {
            "auto" => Ok(auto),
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err(UnknownLogFormat(setting.to_owned())),
        }
    }
}

/// Most links one span keeps (a relay batch links every event it publishes).
const MAX_LINKS_PER_SPAN: u32 = 4096;

/// Keeps the tracer provider; [`Telemetry::shutdown`] flushes the spans not yet
/// exported.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (bounded: a few seconds at
    /// most when the collector does not answer).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the trace exporter"),
            Err(e) => tracing::warn!(error = %e, "trace exporter shutdown panicked"),
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// The resource of the process's spans and metrics: `OTEL_SERVICE_NAME` /
/// `OTEL_RESOURCE_ATTRIBUTES` when given, otherwise the binary's name; with a
/// `service.instance.id` (random, one per process) unless given, so that the
/// tasks of one service stay separate series.
pub(crate) fn resource(service: &'static str) -> Resource {
    static INSTANCE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| uuid::Uuid::new_v4().to_string());
    let resource = named(service);
    if resource
        .get(&Key::from_static_str("service.instance.id"))
        .is_some()
    {
        return resource;
    }
    Resource::builder_empty()
        .with_attributes(
            resource
                .iter()
                .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            INSTANCE.as_str(),
        ))
        .build()
}

/// The detected resource, named after the binary unless a name is given.
fn named(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&Key::from_static_str("service.name"))
        .is_none_or(|v| v.as_str().starts_with("unknown_service"));
    if unnamed {
        Resource::builder()
            .with_service_name(service)
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build()
    } else {
        detected
    }
}

/// What happens to finished spans.
enum Export {
    /// `OTEL_SDK_DISABLED=true`: no spans at all.
    Disabled,
    /// No endpoint configured: spans propagate their context, nothing is sent.
    None,
    /// Sent over OTLP/HTTP.
    Otlp,
    /// An endpoint is configured but the exporter could not be built (why).
    Failed(String),
}

impl Export {
    fn describe(&self) -> &'static str {
        match self {
            Export::Disabled => "off",
            Export::Otlp => "exported over OTLP",
            Export::None | Export::Failed(_) => "propagated, not exported",
        }
    }
}

/// A provider that always gives spans real ids (so that the context propagates),
/// with an OTLP/HTTP batch exporter when an endpoint is configured.
fn provider(service: &'static str) -> (SdkTracerProvider, Export) {
    let builder = SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_max_links_per_span(MAX_LINKS_PER_SPAN);
    if !env_set("OTEL_EXPORTER_OTLP_ENDPOINT") && !env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return (builder.build(), Export::None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    // The crate defaults to JSON when both encodings are built in; the
    // specification's default is protobuf. An explicit variable wins.
    if !env_set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && !env_set("OTEL_EXPORTER_OTLP_PROTOCOL") {
        exporter = exporter.with_protocol(Protocol::HttpBinary);
    }
    match exporter.build() {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), Export::Otlp),
        // The message may quote the endpoint, whose URL may hold credentials.
        Err(e) => (
            builder.build(),
            Export::Failed(crate::config::redact_url(&e.to_string())),
        ),
    }
}

/// Installs the global subscriber (logs in the format `LOG_FORMAT` chooses, see
/// [`LogFormat::choose`], and traces unless `OTEL_SDK_DISABLED=true`) and the W3C
/// propagator. `RUST_LOG` selects levels (default `info`).
///
/// Calling it twice is harmless: the second call leaves the first subscriber.
#[must_use]
pub fn init(service: &'static str) -> Telemetry {
    // One TLS provider for the process (rustls on ring: the OTLP client's https).
    let _ = rustls::crypto::ring::default_provider().install_default();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,refinery_core=warn,tokio_postgres=warn"));
    let terminal = std::io::stdout().is_terminal();
    let (format, unknown_format) =
        match LogFormat::choose(crate::config::var("LOG_FORMAT").as_deref(), terminal) {
            Ok(format) => (format, None),
            Err(unknown) => (LogFormat::auto(terminal), Some(unknown)),
        };
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
    });
    // Colours only for a terminal: `LOG_FORMAT=text` into a file stays plain.
    let text = (format == LogFormat::Text).then(|| fmt::layer().with_ansi(terminal));
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let (provider, export) = if disabled {
        (None, Export::Disabled)
    } else {
        let (provider, export) = provider(service);
        (Some(provider), export)
    };
    let traces = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    if tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(traces)
        .try_init()
        .is_ok()
    {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            traces = export.describe(),
            "starting"
        );
        if let Some(unknown) = unknown_format {
            tracing::warn!(error = %unknown, "logging in the automatic format");
        }
        if let Export::Failed(problem) = export {
            tracing::error!(
                error = problem,
                "cannot build the OTLP trace exporter; traces are not exported"
            );
        }
    }
    Telemetry { provider }
}

/// Installs the subscriber of an operator command: plain text on stderr, `warn`
/// unless `RUST_LOG` says otherwise, so that stdout holds only the output.
pub fn init_operator() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
        .try_init();
}

/// A W3C trace context read from a carrier (HTTP or AMQP headers, an outbox row).
/// Both values are optional; an invalid `traceparent` gives an empty context.
#[must_use]
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    struct Carrier<'a>(Option<&'a str>, Option<&'a str>);
    impl Extractor for Carrier<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    TraceContextPropagator::new().extract(&Carrier(traceparent, tracestate))
}

/// The span context of a carrier's `traceparent` (for links), if valid.
#[must_use]
pub fn remote_span(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<SpanContext> {
    let context = extract(traceparent, tracestate);
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Links `span` to the carrier's context, if valid (a batch span to each of its
/// messages' traces).
pub fn link(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if let Some(context) = remote_span(traceparent, tracestate) {
        span.add_link(context);
    }
}

/// Makes `span` a child of the carrier's context (when it has a valid one) and
/// records the resulting `trace_id` and `span_id` on it for the logs. Call before
/// the span is entered.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let parent = extract(traceparent, tracestate);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_ids(span);
}

/// Records the span's OpenTelemetry ids in its `trace_id` and `span_id` fields
/// (declared `tracing::field::Empty`), so that every log line inside carries them.
pub fn record_ids(span: &tracing::Span) {
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
}

/// The W3C `traceparent` and `tracestate` of `span`, to hand on (an outbox row,
/// AMQP headers). `None` when tracing is off.
#[must_use]
pub fn inject(span: &tracing::Span) -> (Option<String>, Option<String>) {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    (
        carrier.remove("traceparent"),
        carrier.remove("tracestate").filter(|s| !s.is_empty()),
    )
}

/// Logs an error with its whole chain of causes, as one line.
pub fn log_error(context: &str, error: &anyhow::Error) {
    tracing::error!(error = format!("{error:#}"), "{context}");
}

/// The causes of an error (not the error itself), joined by `: `; empty when it has
/// none. For logging errors whose `Display` is only the outermost context.
#[must_use]
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut source = err.source();
    while let Some(s) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_is_text_on_a_terminal_and_json_otherwise_unless_chosen() {
        // Arrange: every setting, on a terminal and not.
        let cases = [
            (None, true, LogFormat::Text),
            (None, false, LogFormat::Json),
            (Some(""), true, LogFormat::Text),
            (Some("  "), false, LogFormat::Json),
            (Some("auto"), true, LogFormat::Text),
            (Some("auto"), false, LogFormat::Json),
            (Some("json"), true, LogFormat::Json),
            (Some("JSON"), false, LogFormat::Json),
            (Some("text"), false, LogFormat::Text),
            (Some(" Text "), true, LogFormat::Text),
        ];
        for (setting, terminal, expected) in cases {
            // Act
            let chosen = LogFormat::choose(setting, terminal);
            // Assert
            assert_eq!(
                chosen,
                Ok(expected),
                "LOG_FORMAT={setting:?}, terminal {terminal}"
            );
        }
    }

    #[test]
    fn an_unknown_log_format_is_refused_with_its_value() {
        let chosen = LogFormat::choose(Some("xml"), false);
        assert_eq!(chosen, Err(UnknownLogFormat("xml".into())));
        assert_eq!(
            chosen.unwrap_err().to_string(),
            r#"LOG_FORMAT="xml" is not json, text or auto"#
        );
    }

    #[test]
    fn a_traceparent_round_trips_and_garbage_is_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = remote_span(Some(tp), Some("k=v")).unwrap();
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_remote());
        for bad in [
            "",
            "00-zz-00f067aa0ba902b7-01",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(remote_span(Some(bad), None).is_none(), "{bad}");
        }
        assert!(remote_span(None, None).is_none());
    }
}
