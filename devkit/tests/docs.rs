//! The configuration page against the code: every environment variable the
//! binaries read is documented in `docs/configuration.md`, under its service or
//! under *Every service*, and every variable documented there is really read, so
//! that neither the page nor the code can drift without this test failing.

#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use devkit::{read_workspace_file, workspace_root};

/// The page that documents every variable.
const PAGE: &str = "docs/configuration.md";

/// The section of the page for what every service reads through `plumbing`.
const SHARED: &str = "Every service";

/// Each section of the page and the sources whose variables it documents.
const PARTS: [(&str, &str); 5] = [
    (SHARED, "plumbing/src"),
    ("orders-api", "orders-api/src"),
    ("outbox-relay", "outbox-relay/src"),
    ("invoices-worker", "invoices-worker/src"),
    ("cargo pipeline", "devkit/src/bin/pipeline.rs"),
];

/// Variables read inside libraries the services use, not by our code: the page
/// documents them under *Every service*. Adding one here means checking that the
/// library really reads it.
const LIBRARY: [(&str, &str); 15] = [
    ("OTEL_EXPORTER_OTLP_HEADERS", "opentelemetry-otlp"),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "opentelemetry-otlp"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "opentelemetry-otlp"),
    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "opentelemetry-otlp"),
    ("OTEL_SERVICE_NAME", "opentelemetry_sdk"),
    ("OTEL_RESOURCE_ATTRIBUTES", "opentelemetry_sdk"),
    ("OTEL_TRACES_SAMPLER", "opentelemetry_sdk"),
    ("OTEL_TRACES_SAMPLER_ARG", "opentelemetry_sdk"),
    ("OTEL_BSP_SCHEDULE_DELAY", "opentelemetry_sdk"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "opentelemetry_sdk"),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "opentelemetry_sdk"),
    ("OTEL_BSP_EXPORT_TIMEOUT", "opentelemetry_sdk"),
    ("SSL_CERT_FILE", "rustls-native-certs"),
    ("SSL_CERT_DIR", "rustls-native-certs"),
    // Read by our code only through `EnvFilter::try_from_default_env`, which
    // `read_in` recognises; listed so that the page may document it in any case.
    ("RUST_LOG", "tracing-subscriber"),
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file at `path` (a file, or a directory searched recursively).
fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The variables a piece of source reads: the name given to one of the readers
/// (`plumbing::config`'s `var`, `var_or`, `parse_or`, `duration_or`,
/// `fault_switch`, `database_url`, `broker_url`, the metrics exporter's `millis_or`
/// and `first_of` pairs, the standard library's
/// `env::var` and `env::var_os`, telemetry's `env_set`), and
/// `RUST_LOG` where a log filter is read from the environment.
fn read_in(source: &str) -> BTreeSet<String> {
    let reader = regex::Regex::new(
        r#"\b(?:var|var_or|var_os|parse_or|duration_or|positive_duration_or|millis_or|env_set|fault_switch|database_url|broker_url)\(\s*"([A-Z][A-Z0-9_]*)""#,
    )
    .unwrap();
    // The metrics exporter's pairs: the signal's variable, then the general one.
    let pair =
        regex::Regex::new(r#"\bfirst_of\(\s*"([A-Z][A-Z0-9_]*)",\s*"([A-Z][A-Z0-9_]*)""#).unwrap();
    let mut names: BTreeSet<String> = reader
        .captures_iter(source)
        .map(|c| c[1].to_owned())
        .chain(
            pair.captures_iter(source)
                .flat_map(|c| [c[1].to_owned(), c[2].to_owned()]),
        )
        .collect();
    if source.contains("from_default_env()") {
        names.insert("RUST_LOG".to_owned());
    }
    names
}

/// The variables read by the sources at `path` (relative to the workspace).
fn read_by(path: &str) -> BTreeSet<String> {
    rust_files(&workspace_root().join(path))
        .iter()
        .flat_map(|file| read_in(&read(file)))
        .collect()
}

/// The variables named in the first column of the tables of a Markdown page,
/// by `## ` section (a `### ` subsection belongs to its section).
fn documented(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let name = regex::Regex::new(r"`([A-Z][A-Z0-9_]*)`").unwrap();
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in page.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading.trim().to_owned();
            sections.entry(section.clone()).or_default();
        } else if let Some(row) = line.strip_prefix('|') {
            let first_cell = row.split('|').next().unwrap_or_default();
            sections
                .entry(section.clone())
                .or_default()
                .extend(name.captures_iter(first_cell).map(|c| c[1].to_owned()));
        }
    }
    sections
}

#[test]
fn the_scanner_finds_each_way_of_reading_a_variable() {
    let source = r#"
        let a = var_or("DATABASE_URL", DEFAULT);
        let b = parse_or(
            "RELAY_BATCH_SIZE",
            d.batch_size,
        )?;
        let c = duration_or("REQUEST_TIMEOUT", Duration::from_secs(10))?;
        let d = std::env::var("USER").ok();
        let e = plumbing::config::var("LOG_FORMAT");
        let f = std::env::var_os("FAULTS_ECHO");
        let g = env_set("OTEL_EXPORTER_OTLP_ENDPOINT");
        let h = EnvFilter::try_from_default_env();
        let i = positive_duration_or(
            "HTTP_IDLE_TIMEOUT",
            Duration::from_secs(75),
        )?;
        let k = plumbing::config::fault_switch("WORKER_UNSAFE_ACK_BEFORE_COMMIT", "…")?;
        let j = broker_url("BROKER_URL", DEFAULT_BROKER_URL)?;
        let l = millis_or("OTEL_METRIC_EXPORT_INTERVAL", Duration::from_secs(60))?;
        let (m, _) = first_of(
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        );
        let not_a_variable = header("traceparent");
    "#;
    let expected = [
        "BROKER_URL",
        "DATABASE_URL",
        "FAULTS_ECHO",
        "HTTP_IDLE_TIMEOUT",
        "LOG_FORMAT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "RELAY_BATCH_SIZE",
        "REQUEST_TIMEOUT",
        "RUST_LOG",
        "USER",
        "WORKER_UNSAFE_ACK_BEFORE_COMMIT",
    ];
    assert_eq!(read_in(source), expected.map(String::from).into());
}

#[test]
fn every_variable_the_binaries_read_is_documented_and_every_documented_one_is_read() {
    // Arrange: what the page documents, and what each part of the code reads.
    let page = documented(&read_workspace_file(PAGE));
    let shared = page
        .get(SHARED)
        .unwrap_or_else(|| panic!("{PAGE} has no section \"## {SHARED}\""));
    let library: BTreeSet<String> = LIBRARY.iter().map(|(n, _)| (*n).to_owned()).collect();
    let mut problems = Vec::new();

    for (section, path) in PARTS {
        let read = read_by(path);
        assert!(
            !read.is_empty(),
            "no variable found in {path}: is the scanner broken?"
        );
        let documented = page
            .get(section)
            .unwrap_or_else(|| panic!("{PAGE} has no section \"## {section}\""));

        // Act / Assert: code → page.
        for name in &read {
            if !documented.contains(name) && !shared.contains(name) {
                problems.push(format!(
                    "{name} is read in {path} but not documented in {PAGE} \
                     (under \"## {section}\" or \"## {SHARED}\")"
                ));
            }
        }
        // Page → code.
        for name in documented {
            let read_by_library = section == SHARED && library.contains(name);
            if !read.contains(name) && !read_by_library {
                problems.push(format!(
                    "{name} is documented under \"## {section}\" in {PAGE} but never read in {path}"
                ));
            }
        }
    }
    for (name, crate_name) in LIBRARY {
        if !shared.contains(name) {
            problems.push(format!(
                "{name} (read by {crate_name}) is not documented under \"## {SHARED}\" in {PAGE}"
            ));
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_readmes_configuration_table_names_only_documented_variables() {
    let page = documented(&read_workspace_file(PAGE));
    let all: BTreeSet<&String> = page.values().flatten().collect();
    let readme = documented(&read_workspace_file("README.md"));
    let table = readme
        .get("Configuration")
        .expect("README.md has a \"## Configuration\" section");
    assert!(
        table.contains("DATABASE_URL"),
        "the README's table: {table:?}"
    );
    let unknown: Vec<&String> = table.iter().filter(|n| !all.contains(n)).collect();
    assert!(
        unknown.is_empty(),
        "README.md's configuration table names variables {PAGE} does not document: {unknown:?}"
    );
}
