//! Configuration of the orders API, from the environment.

use std::time::Duration;

use plumbing::config::{ConfigError, ServiceConfig, ServiceDefaults, Settings};
use plumbing::config::{duration_or, parse_or, positive_duration_or, var, var_or};
use plumbing::db::{PoolOptions, SessionLimits};

/// Everything the API reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (the orders database), `HOST`, `PORT` (default 3333), pool,
    /// `MIGRATE_ON_START`.
    pub service: ServiceConfig,
    /// `REQUEST_TIMEOUT`: longest a request may take (default 10s).
    pub request_timeout: Duration,
    /// `MAX_BODY_BYTES`: largest request body (default 64 KiB).
    pub max_body_bytes: usize,
    /// `DEFAULT_CURRENCY`: currency of orders that name none (default BRL).
    pub default_currency: String,
    /// `IDEMPOTENCY_KEY_TTL`: how long an `Idempotency-Key` is remembered
    /// (default 24h); expired keys are purged hourly by one API replica.
    pub idempotency_key_ttl: Duration,
    /// `HTTP_TRUST_TRACEPARENT`: continue the trace of a client's W3C
    /// `traceparent`/`tracestate` (default false: they are dropped and each
    /// request starts a trace of its own, which the relay and the worker continue).
    /// Only for an API whose callers are trusted, e.g. behind a gateway that sets
    /// these headers itself: a public client could otherwise choose trace ids
    /// (joining or polluting other traces) and force sampling.
    pub trust_traceparent: bool,
    /// `AUTH_*`: how callers are authenticated.
    pub auth: AuthConfig,
    /// `ORDERS_UNSAFE_REPLY_BEFORE_COMMIT`: BREAKS THE GUARANTEE, for the fault
    /// suite only (default false; exists only with the `fault-injection` feature). Answers 201 at once and writes the order 200 ms
    /// later, ignoring a failed write (idempotency keys are ignored too): the fault suite
    /// runs with it to show that its checker reports the 201s that were lost.
    #[cfg(feature = "fault-injection")]
    pub unsafe_reply_before_commit: bool,
}

impl Settings for Config {
    const DEFAULTS: ServiceDefaults = ServiceDefaults {
        database_url: "postgres://postgres@127.0.0.1:5432/orders",
        port: 3333,
        // The database gives up on a statement well before REQUEST_TIMEOUT's
        // default (10s) runs out, so that no query outlives its request; the
        // API's transactions are single statements, never idle for long.
        pool: PoolOptions {
            limits: SessionLimits {
                statement_timeout: Duration::from_secs(5),
                idle_in_transaction_timeout: Duration::from_secs(10),
            },
            ..PoolOptions::DEFAULT
        },
    };
    const VARIABLES: &'static [&'static str] = &["\
REQUEST_TIMEOUT longest a request may take; a slower one is answered 408 while its body is still arriving, 503 after (default 10s)
MAX_BODY_BYTES largest request body in bytes (default 65536)
DEFAULT_CURRENCY ISO 4217 currency of orders that name none (default BRL)
IDEMPOTENCY_KEY_TTL how long an Idempotency-Key is remembered; expired keys are purged hourly (default 24h)
HTTP_TRUST_TRACEPARENT true continues a client's W3C traceparent/tracestate; false drops them and starts a trace per request (default false: for a public API)
AUTH_JWKS_URL where the identity provider publishes its signing keys (JWKS): https://… or file:///path (required unless AUTH_DISABLED=true)
AUTH_ISSUER the tokens' issuer, their `iss` claim exactly (required unless AUTH_DISABLED=true)
AUTH_AUDIENCE this API's name in the tokens' `aud` claim (required unless AUTH_DISABLED=true)
AUTH_CLOCK_SKEW allowance for clocks that differ when checking `exp` and `nbf`, at most 5m (default 30s)
AUTH_JWKS_REFRESH how often the signing keys are fetched again in the background, and how old they may get while the JWKS answers (default 10m)
AUTH_JWKS_MIN_REFRESH_INTERVAL least time between two fetches caused by tokens naming a key (`kid`) not in the cache (default 30s)
AUTH_DISABLED true turns authentication OFF: every caller is the one customer `anonymous`, and a warning says so at every start (default false; never in production)",
        #[cfg(feature = "fault-injection")]
        "ORDERS_UNSAFE_REPLY_BEFORE_COMMIT BREAKS THE GUARANTEE, for the fault suite only: answer 201 before the order is stored (default false)",
    ];

    fn from_env() -> Result<Self, ConfigError> {
        #[cfg(not(feature = "fault-injection"))]
        plumbing::config::ignored_fault_switch("ORDERS_UNSAFE_REPLY_BEFORE_COMMIT");
        Ok(Self {
            service: ServiceConfig::from_env(Self::DEFAULTS)?,
            request_timeout: duration_or("REQUEST_TIMEOUT", Duration::from_secs(10))?,
            max_body_bytes: parse_or("MAX_BODY_BYTES", 64 * 1024)?,
            default_currency: var_or("DEFAULT_CURRENCY", "BRL"),
            idempotency_key_ttl: duration_or("IDEMPOTENCY_KEY_TTL", Duration::from_secs(86_400))?,
            trust_traceparent: parse_or("HTTP_TRUST_TRACEPARENT", false)?,
            auth: AuthConfig::from_env()?,
            #[cfg(feature = "fault-injection")]
            unsafe_reply_before_commit: plumbing::config::fault_switch(
                "ORDERS_UNSAFE_REPLY_BEFORE_COMMIT",
                "orders are answered 201 before they are committed",
            )?,
        })
    }

    fn service(&self) -> &ServiceConfig {
        &self.service
    }
}

/// How callers are authenticated (`AUTH_*`): bearer JWTs checked against the
/// identity provider's JWKS, unless authentication is turned off by name.
///
/// Reading it fails only on a value that does not parse; the settings that are
/// required while authentication is on are checked by [`AuthConfig::check`]
/// (at start-up, before anything is connected), so that `healthcheck` and
/// `--help` need none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `AUTH_DISABLED` (default false): every caller is the customer
    /// [`contracts::CustomerId::ANONYMOUS`]; for local experiments only.
    pub disabled: bool,
    /// `AUTH_JWKS_URL`: where the signing keys are published.
    pub jwks_url: Option<JwksUrl>,
    /// `AUTH_ISSUER`: the `iss` every token must carry.
    pub issuer: Option<String>,
    /// `AUTH_AUDIENCE`: the `aud` every token must include.
    pub audience: Option<String>,
    /// `AUTH_CLOCK_SKEW` (default 30s, at most [`AuthConfig::MAX_CLOCK_SKEW`]).
    pub clock_skew: Duration,
    /// `AUTH_JWKS_REFRESH` (default 10m): the background refresh period.
    pub jwks_refresh: Duration,
    /// `AUTH_JWKS_MIN_REFRESH_INTERVAL` (default 30s): at most one fetch per
    /// interval is caused by tokens naming an unknown key.
    pub jwks_min_refresh_interval: Duration,
}

impl AuthConfig {
    /// Default `AUTH_CLOCK_SKEW`.
    pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);
    /// Largest `AUTH_CLOCK_SKEW`: more would accept expired tokens for longer
    /// than any clock drift explains.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
    /// Default `AUTH_JWKS_REFRESH`.
    pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);
    /// Default `AUTH_JWKS_MIN_REFRESH_INTERVAL`.
    pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

    /// Tokens of `issuer` for `audience`, signed with keys from `jwks_url`,
    /// with the default timings.
    #[must_use]
    pub fn jwt(jwks_url: JwksUrl, issuer: &str, audience: &str) -> Self {
        Self {
            disabled: false,
            jwks_url: Some(jwks_url),
            issuer: Some(issuer.to_owned()),
            audience: Some(audience.to_owned()),
            clock_skew: Self::DEFAULT_CLOCK_SKEW,
            jwks_refresh: Self::DEFAULT_JWKS_REFRESH,
            jwks_min_refresh_interval: Self::DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
        }
    }

    /// Reads the `AUTH_*` variables.
    ///
    /// # Errors
    /// [`ConfigError`] naming a variable whose value does not parse: a JWKS URL
    /// that is neither `https://` nor `file:///`, a bad duration or boolean.
    pub fn from_env() -> Result<Self, ConfigError> {
        let jwks_url = match var("AUTH_JWKS_URL") {
            None => None,
            Some(value) => Some(value.parse().map_err(|reason| ConfigError {
                name: "AUTH_JWKS_URL".into(),
                value: plumbing::config::redact_url(&value),
                reason,
            })?),
        };
        let clock_skew = duration_or("AUTH_CLOCK_SKEW", Self::DEFAULT_CLOCK_SKEW)?;
        if clock_skew > Self::MAX_CLOCK_SKEW {
            return Err(ConfigError {
                name: "AUTH_CLOCK_SKEW".into(),
                value: var("AUTH_CLOCK_SKEW").unwrap_or_default(),
                reason: format!(
                    "at most {:?}: a larger allowance accepts expired tokens for that long",
                    Self::MAX_CLOCK_SKEW
                ),
            });
        }
        Ok(Self {
            disabled: parse_or("AUTH_DISABLED", false)?,
            jwks_url,
            issuer: var("AUTH_ISSUER").map(|v| v.trim().to_owned()),
            audience: var("AUTH_AUDIENCE").map(|v| v.trim().to_owned()),
            clock_skew,
            jwks_refresh: positive_duration_or("AUTH_JWKS_REFRESH", Self::DEFAULT_JWKS_REFRESH)?,
            jwks_min_refresh_interval: positive_duration_or(
                "AUTH_JWKS_MIN_REFRESH_INTERVAL",
                Self::DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
            )?,
        })
    }

    /// Checks that authentication is either turned off by name or has all it
    /// needs: a JWKS URL, an issuer and an audience.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first missing variable (and the others).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.disabled {
            return Ok(());
        }
        let missing: Vec<&str> = [
            ("AUTH_JWKS_URL", self.jwks_url.is_none()),
            ("AUTH_ISSUER", self.issuer.is_none()),
            ("AUTH_AUDIENCE", self.audience.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        let Some(first) = missing.first() else {
            return Ok(());
        };
        Err(ConfigError {
            name: (*first).to_owned(),
            value: String::new(),
            reason: format!(
                "authentication needs AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE \
                 (missing: {}); only AUTH_DISABLED=true runs the API without it",
                missing.join(", ")
            ),
        })
    }
}

/// Where the signing keys are published: `https://…` (the identity provider's
/// JWKS endpoint) or `file:///path` (a JWKS file, for local use). Nothing else:
/// keys fetched over plain HTTP could be swapped on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksUrl {
    /// An `https://` URL.
    Https(reqwest::Url),
    /// The absolute path of a file.
    File(std::path::PathBuf),
}

impl std::str::FromStr for JwksUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err("a file URL is file:///absolute/path (no host)".into());
            }
            return Ok(Self::File(path.into()));
        }
        let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        if url.scheme() != "https" {
            return Err("use https://… (or file:///path for a local file)".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        Ok(Self::Https(url))
    }
}

impl std::fmt::Display for JwksUrl {
    /// The URL with any password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Https(url) => f.write_str(&plumbing::config::redact_url(url.as_str())),
            Self::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "Pa55-s3cret";

    #[test]
    fn debug_shows_no_password() {
        let config = Config {
            service: devkit::configs_holding(PASSWORD).0,
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1024,
            default_currency: "BRL".into(),
            idempotency_key_ttl: Duration::from_secs(60),
            trust_traceparent: false,
            auth: AuthConfig::jwt(
                "https://idp.example/jwks.json".parse().unwrap(),
                "https://idp.example/",
                "orders",
            ),
            #[cfg(feature = "fault-injection")]
            unsafe_reply_before_commit: false,
        };
        devkit::assert_hides(PASSWORD, &config);
    }

    #[test]
    fn jwks_urls_are_https_or_absolute_files() {
        assert_eq!(
            "file:///tmp/jwks.json".parse(),
            Ok(JwksUrl::File("/tmp/jwks.json".into()))
        );
        let https: JwksUrl = "https://idp.example/.well-known/jwks.json".parse().unwrap();
        assert!(matches!(https, JwksUrl::Https(_)));
        for bad in [
            "http://idp.example/jwks.json",
            "ftp://idp.example/jwks.json",
            "file://host/jwks.json",
            "file://relative.json",
            "/tmp/jwks.json",
            "https://",
            "idp.example/jwks.json",
        ] {
            assert!(bad.parse::<JwksUrl>().is_err(), "{bad}");
        }
        let with_password: JwksUrl = "https://u:s3cret@idp.example/jwks".parse().unwrap();
        assert!(!with_password.to_string().contains("s3cret"));
    }

    #[test]
    fn authentication_is_on_unless_turned_off_by_name() {
        let url: JwksUrl = "file:///tmp/jwks.json".parse().unwrap();
        assert!(AuthConfig::jwt(url.clone(), "iss", "aud").check().is_ok());
        let missing = AuthConfig {
            issuer: None,
            audience: None,
            ..AuthConfig::jwt(url, "iss", "aud")
        };
        let err = missing.check().unwrap_err();
        assert_eq!(err.name, "AUTH_ISSUER");
        assert!(err.reason.contains("AUTH_ISSUER, AUTH_AUDIENCE"), "{err}");
        let off = AuthConfig {
            disabled: true,
            ..missing
        };
        assert!(off.check().is_ok());
    }
}
