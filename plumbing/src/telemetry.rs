//! Structured logs: one JSON object per line on stdout, filtered by `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `RUST_LOG` selects levels (default `info`).
///
/// Calling it twice is harmless: the second call leaves the first subscriber.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,refinery_core=warn,tokio_postgres=warn"));
    let json = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true);
    if tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .try_init()
        .is_ok()
    {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
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
