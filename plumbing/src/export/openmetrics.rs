//! Reading back the OpenMetrics text that `/metrics` serves, so that the push
//! exporters send exactly the series a scrape sees (one source of truth: the
//! services' `prometheus-client` registries and their encoding).

/// The type a family declares (`# TYPE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Samples `<name>_total` (and `<name>_created`).
    Counter,
    /// Samples `<name>`.
    Gauge,
    /// Samples `<name>_bucket{le=…}`, `<name>_sum`, `<name>_count` (and `_created`).
    Histogram,
    /// Samples `<name>_info`, always 1.
    Info,
    /// Any other type (`unknown`, `stateset`, `gaugehistogram`, `summary`).
    Other(String),
}

/// A sample's labels, in the order written.
pub type Labels = Vec<(String, String)>;

/// One sample line: its suffix after the family's name, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// What follows the family name (`_total`, `_bucket`, or empty).
    pub suffix: String,
    /// The labels, in the order written.
    pub labels: Labels,
    /// The value.
    pub value: f64,
    /// Whether it was written as an integer (an integer counter or gauge).
    pub integer: bool,
}

impl Sample {
    /// The value of label `name`.
    #[must_use]
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A metric family: its metadata and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The family's name (`http_server_requests`; a counter's samples add `_total`).
    pub name: String,
    /// Its type.
    pub kind: Kind,
    /// Its `# HELP` text.
    pub help: String,
    /// Its `# UNIT`, if declared.
    pub unit: Option<String>,
    /// Its samples, in order.
    pub samples: Vec<Sample>,
}

/// Text that is not the OpenMetrics this module reads (with the line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the metrics text: {reason}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses an exposition: its families in order, each with its samples.
///
/// # Errors
/// A sample before any family's metadata, a sample of another family, a
/// family's metadata after its samples, a malformed label set or value.
pub fn parse(text: &str) -> Result<Vec<Family>, ParseError> {
    let mut families: Vec<Family> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fail = |reason: String| ParseError {
            line: index + 1,
            reason,
        };
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if !matches!(keyword, "TYPE" | "HELP" | "UNIT") {
                continue;
            }
            // A family's metadata lines come together, in any order.
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name: name.to_owned(),
                    kind: Kind::Other("unknown".to_owned()),
                    help: String::new(),
                    unit: None,
                    samples: Vec::new(),
                });
            }
            let Some(family) = families.last_mut() else {
                continue;
            };
            if !family.samples.is_empty() {
                return Err(fail(format!("# {keyword} of {name} after its samples")));
            }
            match keyword {
                "TYPE" => {
                    family.kind = match value {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "info" => Kind::Info,
                        other => Kind::Other(other.to_owned()),
                    };
                }
                "HELP" => family.help = unescape(value),
                _ => family.unit = Some(value.to_owned()),
            }
            continue;
        }
        let sample = sample(line).map_err(fail)?;
        let family = families
            .last_mut()
            .ok_or_else(|| fail("a sample before any # TYPE".to_owned()))?;
        let suffix = sample
            .0
            .strip_prefix(family.name.as_str())
            .ok_or_else(|| fail(format!("sample {} in family {}", sample.0, family.name)))?;
        let (_, labels, value, integer) = sample;
        family.samples.push(Sample {
            suffix: suffix.to_owned(),
            labels,
            value,
            integer,
        });
    }
    Ok(families)
}

/// A sample line's name, labels, value and whether the value is an integer.
/// A timestamp or exemplar after the value is ignored.
type Parsed<'a> = (&'a str, Labels, f64, bool);

fn sample(line: &str) -> Result<Parsed<'_>, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remainder) = label_set(after)?;
        labels = parsed;
        rest = remainder;
    }
    let text = rest
        .trim_start()
        .split(' ')
        .next()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let value = match text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .map_err(|_| format!("value {number:?} is not a number"))?,
    };
    let integer = text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    Ok((name, labels, value, integer))
}

/// The labels up to the closing brace, and what follows it.
fn label_set(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("malformed labels {text:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in {text:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {text:?}")),
            }
        };
        labels.push((name.to_owned(), value));
        rest = &after[end + 1..];
    }
}

/// A `# HELP` text with its escapes (`\\`, `\n`) undone.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXT: &str = r#"# HELP orders_created Orders stored.
# TYPE orders_created counter
orders_created_total 7
# HELP http_server_request_duration_seconds Time to answer, by "route".
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_sum{route="/orders",method="POST"} 0.5
http_server_request_duration_seconds_count{route="/orders",method="POST"} 3
http_server_request_duration_seconds_bucket{le="0.001",route="/orders",method="POST"} 1
http_server_request_duration_seconds_bucket{le="+Inf",route="/orders",method="POST"} 3
# HELP q Depth.
# TYPE q gauge
q{queue="a \"b\"\\c\nd",x=""} -2
q 1.5
# EOF
"#;

    #[test]
    fn families_samples_labels_and_values_are_read_back() {
        let families = parse(TEXT).unwrap();
        assert_eq!(families.len(), 3);
        let counter = &families[0];
        assert_eq!(
            (counter.name.as_str(), &counter.kind),
            ("orders_created", &Kind::Counter)
        );
        assert_eq!(counter.samples[0].suffix, "_total");
        assert!(counter.samples[0].integer && counter.samples[0].value == 7.0);
        let histogram = &families[1];
        assert_eq!(histogram.help, "Time to answer, by \"route\".");
        assert_eq!(histogram.samples.len(), 4);
        assert_eq!(histogram.samples[3].label("le"), Some("+Inf"));
        assert_eq!(histogram.samples[3].label("method"), Some("POST"));
        assert!(!histogram.samples[0].integer);
        let gauge = &families[2];
        assert_eq!(gauge.samples[0].label("queue"), Some("a \"b\"\\c\nd"));
        assert_eq!(gauge.samples[0].label("x"), Some(""));
        assert_eq!(gauge.samples[0].value, -2.0);
        assert_eq!(gauge.samples[1].suffix, "");
        assert_eq!(gauge.samples[1].value, 1.5);
    }

    #[test]
    fn text_that_is_not_openmetrics_is_refused_with_its_line() {
        for (text, line) in [
            ("x 1\n", 1),
            ("# TYPE a gauge\nb 1\n", 2),
            ("# TYPE a gauge\na{x=\"1} 1\n", 2),
            ("# TYPE a gauge\na one\n", 2),
            ("# TYPE a gauge\na{x} 1\n", 2),
        ] {
            assert_eq!(parse(text).unwrap_err().line, line, "{text:?}");
        }
    }
}
