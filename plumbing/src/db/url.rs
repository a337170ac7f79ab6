//! A database URL, parsed once: the driver's settings and the TLS connector its
//! `sslmode` asks for.

use std::{str::FromStr, time::Duration};

use tokio_postgres::{Config, config::SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{CONNECT_TIMEOUT, DbError, SessionLimits};
use crate::tls;

/// A parsed database URL: the driver's settings and, when the URL asks for TLS
/// (`sslmode=require|verify-ca|verify-full`, see [`crate::tls`]), the rustls
/// connector. The one way to reach PostgreSQL: pools ([`super::pool`]) and
/// dedicated sessions ([`super::connect`], [`super::listen`]) are opened from it
/// and nothing else, so every connection honours the URL's TLS settings. It
/// deliberately does not hand out the driver's configuration, whose own `connect`
/// would ignore them.
#[derive(Clone)]
pub struct DbConfig {
    /// The driver's settings (only the session module connects with them).
    pub(super) config: Config,
    /// The TLS connector, when the URL asks for TLS.
    pub(super) tls: Option<MakeRustlsConnect>,
    /// The URL's own `options`, kept so that [`DbConfig::limited`] adds to them
    /// instead of replacing them.
    url_options: Option<String>,
    /// The server-side limits of the sessions, if set.
    limits: Option<SessionLimits>,
}

impl DbConfig {
    /// Whether connections are encrypted.
    #[must_use]
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The database name (`postgres` when none is given, as libpq does).
    #[must_use]
    pub fn database(&self) -> String {
        database_name(&self.config)
    }

    /// `host:port`, for messages (never the password).
    #[must_use]
    pub fn host(&self) -> String {
        describe_host(&self.config)
    }

    /// How long establishing one connection may take.
    #[must_use]
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.config.get_connect_timeout().copied()
    }

    /// The same server, user and TLS settings for another database.
    #[must_use]
    pub fn for_database(&self, name: &str) -> Self {
        let mut other = self.clone();
        other.config.dbname(name);
        other
    }

    /// Names the sessions opened from now on (`application_name`, shown in
    /// `pg_stat_activity`).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.config.application_name(name);
        self
    }

    /// The same, with sessions that the server holds to `limits` from their
    /// first statement: they are sent as startup parameters, after the URL's own
    /// `options` (so they win over a `-c` of the same name there). Replaces
    /// earlier limits.
    #[must_use]
    pub fn limited(mut self, limits: SessionLimits) -> Self {
        let ours = limits.startup_options();
        let options = match &self.url_options {
            Some(theirs) => format!("{theirs} {ours}"),
            None => ours,
        };
        self.config.options(&options);
        self.limits = Some(limits);
        self
    }

    /// The limits set by [`DbConfig::limited`], if any.
    #[must_use]
    pub fn limits(&self) -> Option<SessionLimits> {
        self.limits
    }

    /// The sessions' `application_name`, if any.
    #[must_use]
    pub fn application_name(&self) -> Option<&str> {
        self.config.get_application_name()
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("target", &describe_host(&self.config))
            .field("database", &database_name(&self.config))
            .field("tls", &self.uses_tls())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Parses a `postgres://` URL (or key=value string) into a driver configuration
/// with the pipeline's connect timeout and the TLS connector its `sslmode` and
/// `sslrootcert` ask for (root certificates are loaded now).
///
/// # Errors
/// [`DbError::Url`] when the URL does not parse, [`DbError::Tls`] when its TLS
/// settings cannot be used.
pub fn parse_url(url: &str) -> Result<DbConfig, DbError> {
    let (mut config, mode) = driver_config(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let tls = tls::connector(&mode)?;
    config.ssl_mode(if tls.is_some() {
        SslMode::Require
    } else {
        SslMode::Disable
    });
    let url_options = config.get_options().map(str::to_owned);
    Ok(DbConfig {
        config,
        tls,
        url_options,
        limits: None,
    })
}

/// Checks that the driver can read `url` and that its `sslmode` is known, without
/// loading certificates: for reading the configuration.
///
/// # Errors
/// As [`parse_url`], except that certificate files are not read yet.
pub fn check_url(url: &str) -> Result<(), DbError> {
    driver_config(url).map(drop)
}

/// The driver's settings of `url` and its TLS mode.
fn driver_config(url: &str) -> Result<(Config, tls::Mode), DbError> {
    let (rest, mode) = tls::split_url(url)?;
    let config = Config::from_str(&rest).map_err(|e| DbError::Url(e.to_string()))?;
    Ok((config, mode))
}

/// Database name of a configuration (`postgres` when none is given, as libpq does).
#[must_use]
fn database_name(config: &Config) -> String {
    config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_owned()
}

/// `host:port` of a configuration, for messages (never the password).
#[must_use]
fn describe_host(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_description_has_no_password() {
        let c = parse_url("postgres://app:s3cret@db.internal:6543/orders").unwrap();
        assert_eq!(c.host(), "db.internal:6543");
        assert_eq!(c.database(), "orders");
        assert_eq!(c.connect_timeout(), Some(CONNECT_TIMEOUT));
        let err = parse_url("postgres://x:y@h:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("y@"), "{err}");
    }

    #[test]
    fn limits_go_after_the_urls_own_options_and_replace_earlier_ones() {
        let c = parse_url("postgres://h/db?options=-c%20search_path%3Dx").unwrap();
        let limits = SessionLimits {
            statement_timeout: Duration::from_millis(300),
            idle_in_transaction_timeout: Duration::from_secs(2),
        };
        let c = c.limited(SessionLimits::NONE).limited(limits);
        assert_eq!(
            c.config.get_options(),
            Some(
                "-c search_path=x -c statement_timeout=300 \
                 -c idle_in_transaction_session_timeout=2000"
            )
        );
        assert_eq!(c.limits(), Some(limits));
    }
}
