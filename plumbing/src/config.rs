//! Reading configuration from environment variables (12-factor).

use std::{fmt::Display, str::FromStr, time::Duration};

use lapin::uri::AMQPUri;

/// A configuration value that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub name: String,
    /// The value found.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Every variable name [`var`] was asked for in this process (so that tests can
/// check deployment files against what the services really read).
static VARIABLES_READ: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The variable names read so far, and forgets them (for reading one service's
/// configuration at a time).
#[must_use]
pub fn take_variables_read() -> std::collections::BTreeSet<String> {
    VARIABLES_READ
        .lock()
        .map(|mut read| std::mem::take(&mut *read))
        .unwrap_or_default()
}

/// The variable's value, or `None` when it is unset or empty.
#[must_use]
pub fn var(name: &str) -> Option<String> {
    if let Ok(mut read) = VARIABLES_READ.lock() {
        read.insert(name.to_owned());
    }
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value, or `default` when it is unset or empty.
#[must_use]
pub fn var_or(name: &str, default: &str) -> String {
    var(name).unwrap_or_else(|| default.to_owned())
}

/// The variable parsed as `T`, or `default` when it is unset or empty.
///
/// # Errors
/// [`ConfigError`] when the value is set but does not parse.
pub fn parse_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match var(name) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| ConfigError {
            name: name.to_owned(),
            reason: e.to_string(),
            value,
        }),
    }
}

/// The variable parsed as a duration (see [`parse_duration`]), or `default`.
///
/// # Errors
/// [`ConfigError`] when the value is set but is not a duration.
pub fn duration_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(value) => parse_duration(&value).map_err(|reason| ConfigError {
            name: name.to_owned(),
            value,
            reason,
        }),
    }
}

/// Like [`duration_or`], and the duration must be longer than zero.
///
/// # Errors
/// [`ConfigError`] when the value is set but is not a duration, or is zero.
pub fn positive_duration_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let duration = duration_or(name, default)?;
    if duration.is_zero() {
        return Err(ConfigError {
            name: name.to_owned(),
            value: var(name).unwrap_or_default(),
            reason: "must be longer than zero".into(),
        });
    }
    Ok(duration)
}

/// Parses a duration written as a whole number and a unit: `250ms`, `30s`, `5m`,
/// `2h`, `7d`.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h, d)"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let secs = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3_600),
        "d" => secs(86_400),
        other => Err(format!("unknown unit {other:?} (use ms, s, m, h or d)")),
    }
}

/// A switch that BREAKS A GUARANTEE on purpose, for the fault suite: `name` as a
/// boolean (default false). Only a service built with its `fault-injection`
/// feature calls it (see [`ignored_fault_switch`] for the others). When the switch
/// is on, an error says so at start-up: `breaks` names what can be lost.
///
/// # Errors
/// [`ConfigError`] when the value is not `true` or `false`.
pub fn fault_switch(name: &str, breaks: &str) -> Result<bool, ConfigError> {
    let on = parse_or(name, false)?;
    if on {
        tracing::error!(
            "{name} is set: {breaks} and CAN BE LOST; this mode exists for the fault suite only"
        );
    }
    Ok(on)
}

/// The other side of [`fault_switch`], in a build without fault injection (the
/// shipped one): the switch does not exist, so the variable is not read as one
/// (nor listed in `--help`); if it is set all the same, one warning says that it
/// is ignored, so that nobody believes a guarantee was switched off.
pub fn ignored_fault_switch(name: &str) {
    if std::env::var_os(name).is_some() {
        tracing::warn!("{name} is ignored: this build has no fault injection");
    }
}

/// A service's configuration, as read from the environment.
pub trait Settings: Sized + Send + Sync + 'static {
    /// Its defaults for `DATABASE_URL`, `PORT` and the pool.
    const DEFAULTS: ServiceDefaults;
    /// What it reads besides the variables of [`ServiceConfig`], for `--help`:
    /// one variable a line, its name first, then what it means (with its default).
    const VARIABLES: &'static [&'static str];

    /// Reads the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that does not parse.
    fn from_env() -> Result<Self, ConfigError>;

    /// The part every service has.
    fn service(&self) -> &ServiceConfig;
}

/// What every service reads: its database, its HTTP address, its pool.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `DATABASE_URL`: the service's own database (checked when read).
    pub database_url: Secret,
    /// `HOST`: address of the HTTP endpoint (default `0.0.0.0`).
    pub host: String,
    /// `PORT`: port of the HTTP endpoint (0 picks a free one).
    pub port: u16,
    /// `DB_POOL_SIZE`, `DB_POOL_TIMEOUT`, and the limits of each session:
    /// `DB_STATEMENT_TIMEOUT`, `DB_IDLE_IN_TRANSACTION_TIMEOUT`.
    pub pool: crate::db::PoolOptions,
    /// `MIGRATE_ON_START`: apply the database's migrations at start-up (default true).
    pub migrate_on_start: bool,
    /// `HTTP_HEADER_READ_TIMEOUT`, `HTTP_IDLE_TIMEOUT`, `HTTP_MAX_CONNECTIONS`.
    pub http: crate::http::Limits,
    /// Where the metrics go besides `/metrics` (`OTEL_METRICS_EXPORTER`,
    /// `METRICS_EMF_NAMESPACE`, …).
    pub export: crate::export::ExportConfig,
}

/// A service's defaults for [`ServiceConfig`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceDefaults {
    /// Default `DATABASE_URL`.
    pub database_url: &'static str,
    /// Default `PORT`.
    pub port: u16,
    /// Default pool size and wait.
    pub pool: crate::db::PoolOptions,
}

impl ServiceConfig {
    /// The variables [`ServiceConfig::from_env`] reads, with what they mean and
    /// the service's `defaults`, for `--help` (see [`Settings::VARIABLES`]).
    #[must_use]
    pub fn variables(defaults: &ServiceDefaults, db: crate::db::Database) -> Vec<String> {
        let database = db.name();
        let http = crate::http::Limits::DEFAULT;
        let mut lines = vec![
            format!(
                "DATABASE_URL PostgreSQL URL of the {database} database (default {}); \
                 sslmode=require, verify-ca or verify-full connects over TLS",
                defaults.database_url
            ),
            "HOST address the HTTP endpoint listens on (default 0.0.0.0)".to_owned(),
            format!(
                "PORT port of the HTTP endpoint (default {}; 0 picks a free one)",
                defaults.port
            ),
            format!(
                "DB_POOL_SIZE most database connections at once (default {})",
                defaults.pool.max_size
            ),
            format!(
                "DB_POOL_TIMEOUT longest wait for a free database connection (default {:?})",
                defaults.pool.wait_timeout
            ),
            format!(
                "DB_STATEMENT_TIMEOUT the database cancels a statement running or waiting \
                 longer (default {:?}; 0s: no limit)",
                defaults.pool.limits.statement_timeout
            ),
            format!(
                "DB_IDLE_IN_TRANSACTION_TIMEOUT the database ends a session idle this long inside \
                 a transaction (default {:?}; 0s: no limit)",
                defaults.pool.limits.idle_in_transaction_timeout
            ),
            "MIGRATE_ON_START apply the database's migrations at start-up (default true)"
                .to_owned(),
            format!(
                "HTTP_HEADER_READ_TIMEOUT longest a client may take to send a request's head, \
                 from connecting or from the head's first byte; then the connection is closed \
                 (default {:?})",
                http.header_read_timeout
            ),
            format!(
                "HTTP_IDLE_TIMEOUT longest a keep-alive connection may stay idle; keep it above \
                 the load balancer's idle timeout (an AWS ALB's is 60s) (default {:?})",
                http.idle_timeout
            ),
            format!(
                "HTTP_MAX_CONNECTIONS most HTTP connections open at once; more wait to be \
                 accepted (default {})",
                http.max_connections
            ),
        ];
        lines.extend(crate::export::VARIABLES.lines().map(str::to_owned));
        // Read by `migrate` and migrate-on-start (see `db::logins_from_env`).
        for role in db.service_roles() {
            let (variable, _) = crate::db::role_password(*role);
            lines.push(format!(
                "{variable} migrating gives role {} LOGIN with this password (default unset: \
                 the role is left as it is)",
                role.name()
            ));
        }
        lines
    }

    /// Reads the variables, falling back to `defaults`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that does not parse.
    pub fn from_env(defaults: ServiceDefaults) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: database_url("DATABASE_URL", defaults.database_url)?,
            host: var_or("HOST", "0.0.0.0"),
            port: parse_or("PORT", defaults.port)?,
            pool: crate::db::PoolOptions {
                max_size: parse_or("DB_POOL_SIZE", defaults.pool.max_size)?,
                wait_timeout: duration_or("DB_POOL_TIMEOUT", defaults.pool.wait_timeout)?,
                limits: crate::db::SessionLimits {
                    statement_timeout: duration_or(
                        "DB_STATEMENT_TIMEOUT",
                        defaults.pool.limits.statement_timeout,
                    )?,
                    idle_in_transaction_timeout: duration_or(
                        "DB_IDLE_IN_TRANSACTION_TIMEOUT",
                        defaults.pool.limits.idle_in_transaction_timeout,
                    )?,
                },
            },
            migrate_on_start: parse_or("MIGRATE_ON_START", true)?,
            http: crate::http::Limits {
                header_read_timeout: positive_duration_or(
                    "HTTP_HEADER_READ_TIMEOUT",
                    crate::http::Limits::DEFAULT.header_read_timeout,
                )?,
                idle_timeout: positive_duration_or(
                    "HTTP_IDLE_TIMEOUT",
                    crate::http::Limits::DEFAULT.idle_timeout,
                )?,
                max_connections: parse_or(
                    "HTTP_MAX_CONNECTIONS",
                    crate::http::Limits::DEFAULT.max_connections,
                )?,
            },
            export: crate::export::ExportConfig::from_env()?,
        })
    }
}

/// Default `BROKER_URL`: the local RabbitMQ.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the broker is and which names to use there.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `BROKER_URL`: RabbitMQ (`amqp://` or `amqps://`, checked when read).
    pub url: Secret,
    /// `BROKER_NAMESPACE`: prefix of every exchange and queue name (default none).
    pub namespace: String,
}

impl BrokerConfig {
    /// The variables [`BrokerConfig::from_env`] reads (see [`Settings::VARIABLES`]).
    pub const VARIABLES: &'static str = "\
BROKER_URL RabbitMQ URL, amqp:// or amqps:// (default the local broker, guest/guest)
BROKER_NAMESPACE prefix of every exchange and queue name (default none)";

    /// Reads `BROKER_URL` and `BROKER_NAMESPACE`.
    ///
    /// # Errors
    /// [`ConfigError`] when the namespace is invalid.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            url: broker_url("BROKER_URL", DEFAULT_BROKER_URL)?,
            namespace: broker_namespace()?,
        })
    }

    /// The exchange and queue names in this namespace.
    #[must_use]
    pub fn topology(&self) -> contracts::Topology {
        contracts::Topology::namespaced(&self.namespace)
    }
}

/// The variable `name` as a PostgreSQL URL (or `key=value` string), or `default`.
///
/// # Errors
/// [`ConfigError`] (password redacted) when the driver cannot read it.
pub fn database_url(name: &str, default: &str) -> Result<Secret, ConfigError> {
    let url = Secret::url(var_or(name, default));
    crate::db::check_url(url.expose()).map_err(|e| url.invalid(name, &e.to_string()))?;
    Ok(url)
}

/// The variable `name` as an AMQP URL, or `default`.
///
/// # Errors
/// [`ConfigError`] (password redacted) when it is not an `amqp://` or
/// `amqps://` URL the client can use.
pub fn broker_url(name: &str, default: &str) -> Result<Secret, ConfigError> {
    let url = Secret::url(var_or(name, default));
    if !(url.expose().starts_with("amqp://") || url.expose().starts_with("amqps://")) {
        return Err(url.invalid(name, "not an amqp:// or amqps:// URL"));
    }
    AMQPUri::from_str(url.expose()).map_err(|e| url.invalid(name, &e))?;
    Ok(url)
}

/// `BROKER_NAMESPACE`: the prefix of every exchange and queue name (default none),
/// at most 64 letters, digits, `.`, `-` or `_`.
///
/// # Errors
/// [`ConfigError`] when the value is too long or has other characters.
fn broker_namespace() -> Result<String, ConfigError> {
    let value = var_or("BROKER_NAMESPACE", "");
    let valid = value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(value)
    } else {
        Err(ConfigError {
            name: "BROKER_NAMESPACE".into(),
            value,
            reason: "use at most 64 letters, digits, '.', '-' or '_'".into(),
        })
    }
}

/// A setting that must never be shown: a password, a header value, a URL with
/// credentials. `Debug` and `Display` show it redacted (a URL keeps its scheme,
/// user, host and database, see [`redact_url`]), so a configuration holding it
/// can be logged or printed whole; [`Secret::expose`] hands the value to the one
/// place that needs it (the driver), and [`Secret::redact`] cleans a driver's
/// message that echoes it.
///
/// Every setting with a secret in it is read into one: `Secret::url(var_or(…))`
/// for a URL, `var(…).map(Secret::new)` for a password or token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// What `Debug` and `Display` show.
    shown: String,
    /// The parts of `value` that must not appear in any text shown (as written,
    /// and percent-decoded as a driver may echo them).
    hidden: Vec<String>,
}

impl Secret {
    /// A secret shown as `***` whole (a password, a token, a header value).
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        Self {
            shown: "***".to_owned(),
            hidden: vec![value.clone()],
            value,
        }
    }

    /// A URL (or PostgreSQL `key=value` string) shown with its password hidden.
    #[must_use]
    pub fn url(value: impl Into<String>) -> Self {
        let value = value.into();
        let mut hidden = Vec::new();
        for range in secret_ranges(&value) {
            // A range without `//` holds `user:password`: the password alone
            // (after any `:`) is hidden too, as a driver may quote it alone.
            let part = &value[range];
            let tails = part.match_indices(':').map(|(i, _)| &part[i + 1..]);
            for piece in std::iter::once(part).chain(tails) {
                hidden.push(piece.to_owned());
                hidden.push(percent_decoded(piece));
            }
        }
        // Longest first, so that no shorter one leaves a piece of a longer one.
        hidden.sort_by_key(|part| std::cmp::Reverse(part.len()));
        hidden.retain(|part| !part.is_empty());
        hidden.dedup();
        Self {
            shown: redact_url(&value),
            hidden,
            value,
        }
    }

    /// The value itself, for the driver that needs it. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// `text` (say, a driver's error message about this value) with every
    /// occurrence of the secret replaced by `***`.
    #[must_use]
    pub fn redact(&self, text: &str) -> String {
        self.hidden.iter().fold(text.to_owned(), |text, part| {
            text.replace(part.as_str(), "***")
        })
    }

    /// A [`ConfigError`] for the variable `name` holding this value: the value
    /// shown redacted, and `reason` (which may quote it) cleaned by
    /// [`Secret::redact`].
    #[must_use]
    pub fn invalid(&self, name: &str, reason: &str) -> ConfigError {
        ConfigError {
            name: name.to_owned(),
            value: self.shown.clone(),
            reason: self.redact(reason),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({:?})", self.shown)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A URL with its password replaced by `***`, safe to log. Handles
/// `scheme://user:password@host`, the forms a missing `//` leaves
/// (`amqps:user:password@host`, `postgres:u:p@h`: everything between the first
/// `:` and the last `@` is hidden, user included), and `password=…` parameters
/// (a PostgreSQL `key=value` string, quoted or not, or a URL's query).
#[must_use]
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for range in secret_ranges(url) {
        out.push_str(&url[at..range.start]);
        out.push_str("***");
        at = range.end;
    }
    out.push_str(&url[at..]);
    out
}

/// Where the secrets of a URL or `key=value` string are: sorted, disjoint.
fn secret_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<_> = userinfo_password(text)
        .into_iter()
        .chain(password_parameters(text))
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// The password of a URL's user information.
fn userinfo_password(url: &str) -> Option<std::ops::Range<usize>> {
    if let Some(scheme_end) = url.find("://").map(|i| i + 3) {
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        // A password with an unencoded `/` ends the authority early: then the
        // last `@` anywhere, which hides too much rather than too little.
        let at = rest[..authority_end]
            .rfind('@')
            .or_else(|| rest.rfind('@'))?;
        let colon = rest[..at].find(':')?;
        return Some(scheme_end + colon + 1..scheme_end + at);
    }
    // No `//`: `scheme:user:password@host` cannot be told from
    // `user:password@host`, so everything after the first `:` goes.
    let at = url.rfind('@')?;
    let colon = url[..at].find(':')?;
    Some(colon + 1..at)
}

/// The values of `password=` parameters (`sslpassword` too): quoted or up to the
/// next space (or `&` and `#` in a URL's query).
fn password_parameters(text: &str) -> Vec<std::ops::Range<usize>> {
    let in_url = text.contains("://");
    let lower = text.to_ascii_lowercase();
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key_end = from + found + "password".len();
        from = key_end;
        let after = &text[key_end..];
        let Some(eq) = after.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = eq.trim_start();
        let start = text.len() - value.len();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // libpq: a quoted value ends at the next unescaped quote.
            let mut escaped = false;
            let close = quoted.char_indices().find(|&(_, c)| {
                let closes = c == '\'' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            });
            start + 1 + close.map_or(quoted.len(), |(i, _)| i)
        } else {
            let stop = |c: char| c.is_whitespace() || (in_url && (c == '&' || c == '#'));
            start + value.find(stop).unwrap_or(value.len())
        };
        let start = if value.starts_with('\'') {
            start + 1
        } else {
            start
        };
        if end > start {
            ranges.push(start..end);
        }
        from = end.max(from);
    }
    ranges
}

/// `text` with its `%XX` escapes decoded (invalid ones kept as written).
pub(crate) fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if let (b'%', Some(hi), Some(lo)) = (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration(" 7d "), Ok(Duration::from_secs(604_800)));
    }

    #[test]
    fn bad_durations_are_explained() {
        for bad in ["", "10", "ms", "1.5s", "-1s", "3w", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("18446744073709551615d").is_err());
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("amqps://app:pa:ss@mq.example:5671/%2f"),
            "amqps://app:***@mq.example:5671/%2f"
        );
        assert_eq!(
            redact_url("postgres://u:p@h/db?sslmode=require"),
            "postgres://u:***@h/db?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("host=h user=u"), "host=h user=u");
    }

    #[test]
    fn passwords_are_hidden_in_malformed_urls_and_key_value_strings() {
        let cases = [
            ("amqps:user:secret@host", "amqps:***@host"),
            ("postgres:u:p@h", "postgres:***@h"),
            ("user:secret@host/db", "user:***@host/db"),
            ("postgres://u:se/cret@h/db", "postgres://u:***@h/db"),
            (
                "host=h user=u password=secret dbname=x",
                "host=h user=u password=*** dbname=x",
            ),
            (
                "host=h password = 'se cr\\'et' dbname=x",
                "host=h password = '***' dbname=x",
            ),
            ("host=h sslpassword=secret", "host=h sslpassword=***"),
            (
                "postgres://h/db?user=u&password=secret&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_secret_is_shown_redacted_and_cleans_messages_that_echo_it() {
        let url = Secret::url("amqps:app:s%40cret@mq.example");
        assert_eq!(url.expose(), "amqps:app:s%40cret@mq.example");
        assert_eq!(format!("{url}"), "amqps:***@mq.example");
        assert_eq!(format!("{url:?}"), "Secret(\"amqps:***@mq.example\")");
        let echoed = "invalid URI 'amqps:app:s%40cret@mq.example' (password s@cret)";
        let cleaned = url.redact(echoed);
        assert!(!cleaned.contains("cret"), "{cleaned}");
        let token = Secret::new("tok3n");
        assert_eq!(format!("{token} {token:?}"), "*** Secret(\"***\")");
        assert_eq!(token.redact("Bearer tok3n"), "Bearer ***");
        let err = url.invalid("BROKER_URL", echoed);
        assert!(!err.to_string().contains("cret"), "{err}");
    }
}
