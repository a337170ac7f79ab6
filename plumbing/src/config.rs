//! Reading configuration from environment variables (12-factor).

use std::{fmt::Display, str::FromStr, time::Duration};

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
    /// `DATABASE_URL`: the service's own database.
    pub database_url: String,
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
            database_url: var_or("DATABASE_URL", defaults.database_url),
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
        })
    }
}

/// Default `BROKER_URL`: the local RabbitMQ.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the broker is and which names to use there.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `BROKER_URL`: RabbitMQ (`amqp://` or `amqps://`).
    pub url: String,
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
            url: var_or("BROKER_URL", DEFAULT_BROKER_URL),
            namespace: broker_namespace()?,
        })
    }

    /// The exchange and queue names in this namespace.
    #[must_use]
    pub fn topology(&self) -> contracts::Topology {
        contracts::Topology::namespaced(&self.namespace)
    }
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

/// A URL with its password replaced by `***`, safe to log.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
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
}
