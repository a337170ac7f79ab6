//! Who is calling: every order request carries a bearer token (RFC 6750), a JWT
//! that the identity provider signed with RS256 or ES256, checked against the
//! keys the provider publishes (its JWKS). The token's `sub` is the customer.
//!
//! **What a token must be.** At most [`MAX_TOKEN_BYTES`], its JOSE header at
//! most [`MAX_HEADER_BYTES`] (both refused before anything is decoded); `alg`
//! RS256 or ES256 and the same as its key's (never `none`, never an HMAC, so a
//! public key can never serve as a shared secret); a `kid` naming a key of the
//! JWKS; a valid signature; `exp` (required) and `nbf` (when present) within the
//! clock-skew allowance; `iss` exactly `AUTH_ISSUER`; `aud` including
//! `AUTH_AUDIENCE`; a `sub` that is a valid [`CustomerId`]. Anything else is a
//! 401 with `WWW-Authenticate`, before the body is read or the database touched.
//! The token is never logged or echoed, and nothing copied from it is either.
//!
//! **Keys.** The keys are cached by `kid` ([`Authenticator`]). A JWKS file
//! (`file://`) is read before the API listens; an `https://` JWKS is fetched in
//! the background as the API starts: the API does not wait for the identity
//! provider, and `/ready` says that no keys are loaded until they are (a fetch
//! that fails is retried with a jittered backoff, up to
//! `AUTH_JWKS_MIN_REFRESH_INTERVAL` apart, and logged each time). Once loaded,
//! the keys are fetched again every `AUTH_JWKS_REFRESH`; a token naming a key
//! not in the cache (a rotation) causes at most one fetch per
//! `AUTH_JWKS_MIN_REFRESH_INTERVAL`, shared by every request waiting for it, so
//! that a flood of made-up `kid`s costs the identity provider one request per
//! interval. While the JWKS cannot be fetched, the cached keys keep working,
//! and a token naming an unknown key gets 503 with `Retry-After` (after a
//! successful fetch it is a 401).
//!
//! **Verified tokens.** A client sends the same token with every request for
//! its lifetime, and checking a signature costs more than the rest of an order
//! (RS256 about 300 µs, ES256 about 550 µs of CPU with RustCrypto on the 2-core
//! development machine, where the API spends about 200 µs on an order). So a
//! token that passed every check is remembered by its SHA-256 (at most
//! [`MAX_VERIFIED_TOKENS`]) with its customer, its key and its `exp`: the same
//! token again is accepted without checking its signature while its `exp`
//! (plus the clock skew) has not passed and the JWKS still has the very key
//! that verified it (a key removed from the JWKS refuses its tokens at the next
//! fetch). Refused tokens are never remembered.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, header::AUTHORIZATION, request::Parts},
};
use base64::Engine as _;
use contracts::CustomerId;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{AuthConfig, JwksUrl},
    error::ApiError,
};

/// Longest token accepted, in bytes; a longer one is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest JOSE header (its base64url text) accepted; identity providers send
/// about 100 bytes, a certificate chain a few KiB.
pub const MAX_HEADER_BYTES: usize = 2 * 1024;
/// Largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Longest a JWKS fetch may take (connect, TLS, answer): a request waiting for
/// a fetch is still answered well within `REQUEST_TIMEOUT`.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "orders";
/// Smallest RSA modulus accepted from the JWKS, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Most verified tokens remembered (about 200 bytes each); when full, the
/// expired ones are dropped, or all of them if none has expired.
pub const MAX_VERIFIED_TOKENS: usize = 10_000;

/// The caller of a request: the customer its token's `sub` names (or
/// [`CustomerId::anonymous`] when authentication is turned off). A handler that
/// takes it runs only for an authenticated request; the rejection is the
/// [`ApiError`] of [`AuthError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub CustomerId);

impl<S> FromRequestParts<S> for Caller
where
    Arc<Authenticator>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let authenticator = Arc::<Authenticator>::from_ref(state);
        let customer = authenticator.authenticate(&parts.headers).await?;
        tracing::Span::current().record("enduser.id", customer.as_str());
        tracing::debug!(customer = %customer, "request authenticated");
        Ok(Self(customer))
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token (no `Authorization` header, or another scheme).
    #[error("this request needs a bearer token: Authorization: Bearer <token>")]
    Missing,
    /// A token was sent and is refused.
    #[error("{}", .0.description())]
    Refused(Refusal),
    /// The token names a key that is not cached, and the JWKS cannot be
    /// fetched now: retry after `retry_after`.
    #[error("the token's signing key cannot be fetched from the identity provider now")]
    KeysUnavailable {
        /// When a fetch may be tried again.
        retry_after: Duration,
    },
}

/// Why a token is refused; each is a 401 `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Over [`MAX_TOKEN_BYTES`].
    Oversized,
    /// A JOSE header over [`MAX_HEADER_BYTES`].
    OversizedHeader,
    /// Not three base64url parts, or a header that is not JSON.
    Malformed,
    /// `alg` is not RS256 or ES256 (`none`, HS256, …).
    UnsupportedAlgorithm,
    /// A `crit` header: extensions this API does not know.
    CriticalExtension,
    /// No `kid` in the header.
    NoKeyId,
    /// A `kid` the JWKS does not have.
    UnknownKey,
    /// `alg` differs from the algorithm of the key `kid` names.
    KeyMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed (beyond the clock skew).
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    NotYetValid,
    /// `iss` is not `AUTH_ISSUER`.
    WrongIssuer,
    /// `aud` does not include `AUTH_AUDIENCE`.
    WrongAudience,
    /// `exp`, `iss`, `aud` or `sub` is missing.
    MissingClaim,
    /// A claim of the wrong type (say, `exp` as text).
    MalformedClaim,
    /// `sub` is not a customer id (empty, too long, control characters), or
    /// is `anonymous`, which only an API without authentication uses.
    BadSubject,
}

impl Refusal {
    /// The reason as a metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::OversizedHeader => "oversized_header",
            Self::Malformed => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::CriticalExtension => "critical_extension",
            Self::NoKeyId => "no_key_id",
            Self::UnknownKey => "unknown_key",
            Self::KeyMismatch => "key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::MalformedClaim => "malformed_claim",
            Self::BadSubject => "bad_subject",
        }
    }

    /// What is wrong, for the client (`error_description` and the problem's
    /// `detail`): fixed text, nothing taken from the token.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            Self::Oversized => "the token is larger than 8 KiB",
            Self::OversizedHeader => "the token's header is larger than 2 KiB",
            Self::Malformed => "the token is not a JWT (three base64url parts, a JSON header)",
            Self::UnsupportedAlgorithm => "the token's algorithm is not accepted (RS256 or ES256)",
            Self::CriticalExtension => "the token has critical header extensions",
            Self::NoKeyId => "the token's header names no key (kid)",
            Self::UnknownKey => "the token's key (kid) is not one of the issuer's keys",
            Self::KeyMismatch => "the token's algorithm is not its key's",
            Self::BadSignature => "the token's signature is invalid",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::WrongIssuer => "the token is from another issuer",
            Self::WrongAudience => "the token is for another audience",
            Self::MissingClaim => "the token lacks a required claim (exp, iss, aud, sub)",
            Self::MalformedClaim => "a claim of the token has the wrong type",
            Self::BadSubject => "the token's subject is not a valid customer id",
        }
    }

    /// The refusal for a failed `jsonwebtoken` check.
    fn from_jwt(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => Self::MissingClaim,
            ErrorKind::InvalidClaimFormat(_) => Self::MalformedClaim,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Self::UnsupportedAlgorithm,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Provider(_) => Self::BadSignature,
            _ => Self::Malformed,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        let challenge = format!("Bearer realm=\"{REALM}\"");
        match err {
            AuthError::Missing => ApiError::Unauthorized {
                code: "missing_token",
                detail: err.to_string(),
                challenge,
            },
            AuthError::Refused(refusal) => ApiError::Unauthorized {
                code: "invalid_token",
                detail: refusal.description().to_owned(),
                // The description is fixed text without quotes or backslashes:
                // a valid quoted-string as it is.
                challenge: format!(
                    "{challenge}, error=\"invalid_token\", error_description=\"{}\"",
                    refusal.description()
                ),
            },
            AuthError::KeysUnavailable { retry_after } => ApiError::AuthUnavailable {
                detail: err.to_string(),
                retry_after,
            },
        }
    }
}

/// The authentication metrics (`orders_auth_…`).
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    refused: Family<RefusedLabels, Counter>,
    refreshes: Family<RefreshLabels, Counter>,
    keys: Gauge,
}

/// Labels of a refused request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    /// [`Refusal::label`], `missing` (no token) or `keys_unavailable`.
    reason: &'static str,
}

/// Labels of a JWKS fetch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefreshLabels {
    /// `scheduled` (start-up, periodic, retry) or `unknown_kid`.
    trigger: &'static str,
    /// `ok` or `failed`.
    outcome: &'static str,
}

impl AuthMetrics {
    /// Registers the metrics in `registry` (prefixed there).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "auth_refused",
            "Requests refused for their bearer token, by reason (missing, expired, bad_signature, \
             unknown_key, keys_unavailable, ...)",
            self.refused.clone(),
        );
        registry.register(
            "auth_jwks_refreshes",
            "Fetches of the identity provider's signing keys (JWKS), by trigger (scheduled, \
             unknown_kid) and outcome (ok, failed)",
            self.refreshes.clone(),
        );
        registry.register(
            "auth_signing_keys",
            "Signing keys in the cache (RS256 and ES256 keys of the JWKS)",
            self.keys.clone(),
        );
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}

/// Checks the bearer token of each request ([`Authenticator::authenticate`])
/// and keeps the signing keys fresh ([`Authenticator::keep_keys_fresh`]).
pub struct Authenticator {
    mode: Mode,
    metrics: AuthMetrics,
}

enum Mode {
    /// `AUTH_DISABLED=true`: every caller is the anonymous customer.
    Disabled,
    /// Bearer JWTs.
    Jwt(Box<JwtVerifier>),
}

/// What checks a JWT: the key cache, the claims each token must carry, and the
/// tokens that passed.
struct JwtVerifier {
    keys: KeyCache,
    rs256: Validation,
    es256: Validation,
    /// `AUTH_CLOCK_SKEW` in seconds: how long past its `exp` a token is valid.
    leeway: i64,
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// A token that passed every check.
struct Verified {
    customer: CustomerId,
    kid: String,
    /// The key that verified it: the token is valid only while the JWKS has it.
    key: Arc<Key>,
    /// Its `exp` plus the clock skew, in seconds since the Unix epoch.
    valid_until: i64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Mode::Disabled => f.write_str("Authenticator(disabled)"),
            Mode::Jwt(jwt) => write!(f, "Authenticator(jwks: {})", jwt.keys.source),
        }
    }
}

/// Why an [`Authenticator`] cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is incomplete.
    #[error(transparent)]
    Config(#[from] plumbing::config::ConfigError),
    /// No HTTPS client for the JWKS (no trusted roots).
    #[error("no HTTPS client for AUTH_JWKS_URL: {0}")]
    Client(String),
}

impl Authenticator {
    /// The authenticator `config` describes. With authentication turned off,
    /// logs a warning saying so (each start-up makes one); with a JWKS file,
    /// reads it now (a failure is logged, and retried in the background).
    ///
    /// # Errors
    /// [`SetupError`] when a required setting is missing or no HTTPS client can
    /// be made.
    pub fn new(config: &AuthConfig, metrics: AuthMetrics) -> Result<Self, SetupError> {
        config.check()?;
        // After `check`, the three are set unless authentication is off.
        let (Some(url), Some(issuer), Some(audience), false) = (
            &config.jwks_url,
            &config.issuer,
            &config.audience,
            config.disabled,
        ) else {
            tracing::warn!(
                "authentication is OFF (AUTH_DISABLED=true): every caller is the one customer \
                 `{}`; anyone who reaches the API can create and read its orders",
                CustomerId::ANONYMOUS
            );
            return Ok(Self {
                mode: Mode::Disabled,
                metrics,
            });
        };
        let source = JwksSource::new(url)?;
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = config.clock_skew.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_issuer(&[issuer]);
            v.set_audience(&[audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v
        };
        let keys = KeyCache {
            source,
            refresh: config.jwks_refresh,
            min_interval: config.jwks_min_refresh_interval,
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetches: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(FetchState::default()),
            metrics: metrics.clone(),
        };
        tracing::info!(
            jwks = %url,
            issuer,
            audience,
            clock_skew = ?config.clock_skew,
            "authentication: bearer tokens (RS256, ES256)"
        );
        if let JwksSource::File(_) = keys.source {
            // Read before the API listens: a local file is there or not.
            keys.load_now();
        }
        Ok(Self {
            mode: Mode::Jwt(Box::new(JwtVerifier {
                keys,
                rs256: validation(Algorithm::RS256),
                es256: validation(Algorithm::ES256),
                leeway: i64::try_from(config.clock_skew.as_secs()).unwrap_or(i64::MAX),
                verified: std::sync::Mutex::new(HashMap::new()),
            })),
            metrics,
        })
    }

    /// Whether authentication is turned off.
    #[must_use]
    pub fn is_disabled(&self) -> bool {
        matches!(self.mode, Mode::Disabled)
    }

    /// The customer of a request with these `headers`.
    ///
    /// # Errors
    /// [`AuthError`]: no token, a refused token, or keys that cannot be fetched.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<CustomerId, AuthError> {
        let Mode::Jwt(jwt) = &self.mode else {
            return Ok(CustomerId::anonymous());
        };
        let result = jwt.verify(headers).await;
        if let Err(err) = &result {
            let reason = match err {
                AuthError::Missing => "missing",
                AuthError::Refused(refusal) => refusal.label(),
                AuthError::KeysUnavailable { .. } => "keys_unavailable",
            };
            self.metrics.refused(reason);
            tracing::debug!(reason, "request not authenticated");
        }
        result
    }

    /// Keeps the signing keys fresh until `shutdown`: fetches them at once if
    /// none are loaded, again every `AUTH_JWKS_REFRESH`, and after a failed
    /// fetch again with a jittered backoff (at most
    /// `AUTH_JWKS_MIN_REFRESH_INTERVAL` apart). Returns at once when
    /// authentication is off.
    pub async fn keep_keys_fresh(&self, shutdown: CancellationToken) {
        if let Mode::Jwt(jwt) = &self.mode {
            jwt.keys.keep_fresh(shutdown).await;
        }
    }

    /// Why requests cannot be authenticated yet: no key was ever loaded.
    #[must_use]
    pub fn unready(&self) -> Option<String> {
        let Mode::Jwt(jwt) = &self.mode else {
            return None;
        };
        let loaded = jwt.keys.keys.read().is_ok_and(|keys| !keys.is_empty());
        (!loaded).then(|| format!("auth: no signing keys loaded yet from {}", jwt.keys.source))
    }
}

/// The header of a JWT, as far as it is read before the signature is checked.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The claims read from a valid token (`jsonwebtoken` checks the others).
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<serde_json::Value>,
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl JwtVerifier {
    async fn verify(&self, headers: &HeaderMap) -> Result<CustomerId, AuthError> {
        use sha2::Digest as _;
        let token = bearer_token(headers)?;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(customer) = self.remembered(&digest) {
            return Ok(customer);
        }
        let (customer, verified) = self.check(token).await?;
        self.remember(digest, verified);
        Ok(customer)
    }

    /// The customer of a token that passed before, if it still holds: not
    /// expired, and its key still the JWKS's.
    fn remembered(&self, digest: &[u8; 32]) -> Option<CustomerId> {
        let mut verified = self.verified.lock().ok()?;
        let entry = verified.get(digest)?;
        let key_kept = self
            .keys
            .cached(&entry.kid)
            .is_some_and(|key| Arc::ptr_eq(&key, &entry.key));
        if key_kept && unix_now() <= entry.valid_until {
            return Some(entry.customer.clone());
        }
        verified.remove(digest);
        None
    }

    fn remember(&self, digest: [u8; 32], entry: Verified) {
        let Ok(mut verified) = self.verified.lock() else {
            return;
        };
        if verified.len() >= MAX_VERIFIED_TOKENS {
            let now = unix_now();
            verified.retain(|_, v| now <= v.valid_until);
            if verified.len() >= MAX_VERIFIED_TOKENS {
                verified.clear();
            }
        }
        verified.insert(digest, entry);
    }

    /// Every check of a token not seen before: its header, its key, its
    /// signature, its claims.
    async fn check(&self, token: &str) -> Result<(CustomerId, Verified), AuthError> {
        let (alg, kid) = read_header(token).map_err(AuthError::Refused)?;
        let key = self.keys.get(&kid).await?;
        if key.alg != alg {
            return Err(AuthError::Refused(Refusal::KeyMismatch));
        }
        let validation = match alg {
            Algorithm::RS256 => &self.rs256,
            _ => &self.es256,
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map_err(|e| AuthError::Refused(Refusal::from_jwt(e.kind())))?;
        let Claims { sub, exp } = data.claims;
        let exp = exp.as_ref().and_then(serde_json::Value::as_f64);
        let (Some(sub), Some(exp)) = (sub, exp) else {
            return Err(AuthError::Refused(Refusal::MissingClaim));
        };
        // `anonymous` is the one customer of an API without authentication:
        // no token may claim its orders.
        if sub == CustomerId::ANONYMOUS {
            return Err(AuthError::Refused(Refusal::BadSubject));
        }
        let customer =
            CustomerId::try_from(sub).map_err(|_| AuthError::Refused(Refusal::BadSubject))?;
        // `exp` is a number of seconds (checked above): whole seconds suffice.
        #[allow(clippy::cast_possible_truncation)]
        let valid_until = (exp.floor() as i64).saturating_add(self.leeway);
        let verified = Verified {
            customer: customer.clone(),
            kid,
            key,
            valid_until,
        };
        Ok((customer, verified))
    }
}

/// The token of the request's `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Refused(Refusal::Malformed));
    }
    let value = value.as_bytes();
    let scheme = value.split(|b| *b == b' ').next().unwrap_or_default();
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        // Another scheme (Basic, …): as if no token were sent (RFC 6750 3.1).
        return Err(AuthError::Missing);
    }
    let token = value[scheme.len()..].trim_ascii();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Refused(Refusal::Oversized));
    }
    let token = std::str::from_utf8(token).map_err(|_| AuthError::Refused(Refusal::Malformed))?;
    Ok(token)
}

/// The algorithm and key id of a token's header, after checking the token's
/// shape: three base64url parts, a header of bounded size that is JSON.
fn read_header(token: &str) -> Result<(Algorithm, String), Refusal> {
    let parts: Vec<&str> = token.split('.').collect();
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let [header, payload, signature] = parts[..] else {
        return Err(Refusal::Malformed);
    };
    if header.len() > MAX_HEADER_BYTES {
        return Err(Refusal::OversizedHeader);
    }
    if header.is_empty() || payload.is_empty() || !parts.iter().all(|p| base64url(p)) {
        return Err(Refusal::Malformed);
    }
    let _ = signature;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Refusal::Malformed)?;
    let header: JoseHeader = serde_json::from_slice(&json).map_err(|_| Refusal::Malformed)?;
    let alg = match header.alg.as_str() {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        _ => return Err(Refusal::UnsupportedAlgorithm),
    };
    if header.crit.is_some() {
        return Err(Refusal::CriticalExtension);
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(Refusal::NoKeyId)?;
    Ok((alg, kid))
}

/// A signing key of the JWKS.
#[derive(Debug)]
struct Key {
    alg: Algorithm,
    decoding: DecodingKey,
}

/// The keys of the JWKS by `kid`.
type KeySet = HashMap<String, Arc<Key>>;

/// The signing keys, fetched from the JWKS and cached by `kid`.
struct KeyCache {
    source: JwksSource,
    refresh: Duration,
    min_interval: Duration,
    /// The current keys: read by every request, replaced whole by a fetch.
    keys: RwLock<Arc<KeySet>>,
    /// Fetches finished so far. Increased after `keys` is replaced, so that a
    /// request that saw the count before a fetch sees the keys after it.
    fetches: AtomicU64,
    /// One fetch at a time: a request that finds its `kid` missing waits here,
    /// and then uses the fetch that finished meanwhile, if any, instead of
    /// starting another.
    state: tokio::sync::Mutex<FetchState>,
    metrics: AuthMetrics,
}

/// What the fetches did so far.
#[derive(Debug, Default)]
struct FetchState {
    /// When an unknown `kid` last caused a fetch (the rate limit).
    last_unknown_kid_fetch: Option<Instant>,
    /// When a fetch last succeeded.
    last_success: Option<Instant>,
    /// Whether the last fetch failed.
    failing: bool,
}

/// What caused a fetch (a metric label).
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Scheduled,
    UnknownKid,
}

impl KeyCache {
    fn cached(&self, kid: &str) -> Option<Arc<Key>> {
        let keys = self.keys.read().ok()?;
        keys.get(kid).cloned()
    }

    /// The key `kid` names: from the cache, or from a fetch if the rate limit
    /// allows one.
    async fn get(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        let seen = self.fetches.load(Ordering::Acquire);
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let allowed = state
            .last_unknown_kid_fetch
            .is_none_or(|at| now.duration_since(at) >= self.min_interval);
        // A fetch that finished while this request waited answers it too.
        if self.fetches.load(Ordering::Acquire) == seen && allowed {
            state.last_unknown_kid_fetch = Some(now);
            self.fetch(&mut state, Trigger::UnknownKid).await;
        }
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        if state.failing {
            let next = state.last_unknown_kid_fetch.map_or(Duration::ZERO, |at| {
                self.min_interval.saturating_sub(at.elapsed())
            });
            return Err(AuthError::KeysUnavailable {
                retry_after: next.max(Duration::from_secs(1)),
            });
        }
        Err(AuthError::Refused(Refusal::UnknownKey))
    }

    /// Fetches the JWKS and replaces the cached keys with its keys; on failure
    /// keeps them and says why.
    async fn fetch(&self, state: &mut FetchState, trigger: Trigger) {
        let result = match self.source.read().await {
            Ok(bytes) => parse_jwks(&bytes),
            Err(e) => Err(e),
        };
        self.apply(state, trigger, result);
    }

    /// Reads a JWKS file now, without waiting (before the API listens).
    fn load_now(&self) {
        let result = match &self.source {
            JwksSource::File(path) => read_file_now(path).and_then(|b| parse_jwks(&b)),
            JwksSource::Https { .. } => return,
        };
        if let Ok(mut state) = self.state.try_lock() {
            self.apply(&mut state, Trigger::Scheduled, result);
        }
    }

    fn apply(&self, state: &mut FetchState, trigger: Trigger, result: Result<KeySet, JwksError>) {
        let trigger_label = match trigger {
            Trigger::Scheduled => "scheduled",
            Trigger::UnknownKid => "unknown_kid",
        };
        let outcome = match result {
            Ok(keys) => {
                let mut kids: Vec<&String> = keys.keys().collect();
                kids.sort();
                let changed = self.keys.read().map_or(true, |old| {
                    let mut old_kids: Vec<&String> = old.keys().collect();
                    old_kids.sort();
                    old_kids != kids
                });
                if changed {
                    tracing::info!(jwks = %self.source, ?kids, "signing keys loaded");
                }
                self.metrics
                    .keys
                    .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
                if let Ok(mut cached) = self.keys.write() {
                    *cached = Arc::new(keys);
                }
                state.last_success = Some(Instant::now());
                state.failing = false;
                "ok"
            }
            Err(e) => {
                tracing::warn!(
                    jwks = %self.source,
                    trigger = trigger_label,
                    error = format!("{:#}", anyhow::Error::new(e)),
                    "cannot fetch the signing keys; the cached ones stay in use"
                );
                state.failing = true;
                "failed"
            }
        };
        self.fetches.fetch_add(1, Ordering::Release);
        self.metrics
            .refreshes
            .get_or_create(&RefreshLabels {
                trigger: trigger_label,
                outcome,
            })
            .inc();
    }

    async fn keep_fresh(&self, shutdown: CancellationToken) {
        let mut retries: Option<Box<dyn Iterator<Item = Duration> + Send>> = None;
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let stale = state
                    .last_success
                    .is_none_or(|at| at.elapsed() >= self.refresh);
                if stale || state.failing {
                    self.fetch(&mut state, Trigger::Scheduled).await;
                }
                if state.failing {
                    let retries = retries.get_or_insert_with(|| Box::new(self.retry_delays()));
                    retries.next().unwrap_or(self.min_interval)
                } else {
                    retries = None;
                    let age = state.last_success.map_or(Duration::ZERO, |at| at.elapsed());
                    self.refresh.saturating_sub(age)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Delays between fetches while they fail: from 1 s, doubling, jittered,
    /// at most the min refresh interval (plus jitter).
    fn retry_delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        use backon::BackoffBuilder as _;
        let cap = self.min_interval.min(self.refresh);
        backon::ExponentialBuilder::default()
            .with_min_delay(cap.min(Duration::from_secs(1)))
            .with_max_delay(cap)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Why the JWKS could not be fetched or used.
#[derive(Debug, thiserror::Error)]
enum JwksError {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("the request failed: {0}")]
    Http(#[source] reqwest::Error),
    #[error("it answered HTTP {0}")]
    Status(u16),
    #[error("it is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("it is not a JWKS (a JSON object with \"keys\"): {0}")]
    Json(#[source] serde_json::Error),
    #[error("it has no usable RS256 or ES256 signing key (skipped: {0})")]
    NoUsableKey(String),
}

/// Where the JWKS is read from.
enum JwksSource {
    File(PathBuf),
    Https {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => JwksUrl::File(path.clone()).fmt(f),
            Self::Https { url, .. } => JwksUrl::Https(url.clone()).fmt(f),
        }
    }
}

impl JwksSource {
    fn new(url: &JwksUrl) -> Result<Self, SetupError> {
        Ok(match url {
            JwksUrl::File(path) => Self::File(path.clone()),
            JwksUrl::Https(url) => {
                let tls = plumbing::tls::https_client_config()
                    .map_err(|e| SetupError::Client(e.to_string()))?;
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .https_only(true)
                    .timeout(JWKS_TIMEOUT)
                    .build()
                    .map_err(|e| SetupError::Client(e.to_string()))?;
                Self::Https {
                    url: url.clone(),
                    client,
                }
            }
        })
    }

    /// The JWKS document, at most [`MAX_JWKS_BYTES`].
    async fn read(&self) -> Result<Vec<u8>, JwksError> {
        match self {
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file_now(&path))
                    .await
                    .map_err(|e| JwksError::Read(std::io::Error::other(e)))?
            }
            Self::Https { url, client } => {
                // The URL is in our own messages, redacted: not in reqwest's.
                let http = |e: reqwest::Error| JwksError::Http(e.without_url());
                let mut response = client.get(url.clone()).send().await.map_err(http)?;
                if !response.status().is_success() {
                    return Err(JwksError::Status(response.status().as_u16()));
                }
                if response
                    .content_length()
                    .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
                {
                    return Err(JwksError::TooLarge);
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(http)? {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(JwksError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
        }
    }
}

fn read_file_now(path: &std::path::Path) -> Result<Vec<u8>, JwksError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(JwksError::Read)?;
    let mut body = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(JwksError::Read)?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    Ok(body)
}

/// The RS256 and ES256 signing keys of a JWKS document. Other keys (encryption
/// keys, other algorithms, keys without `kid`, weak RSA keys) are skipped; a
/// document without any usable key is an error, so that a broken publication
/// does not replace the cached keys with none.
fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(bytes).map_err(JwksError::Json)?;
    let mut keys = KeySet::new();
    let mut skipped = Vec::new();
    for value in document.keys {
        match serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("not a JWK: {e}"))
            .and_then(|jwk| usable_key(&jwk))
        {
            Ok((kid, key)) => {
                let name = bounded(&kid);
                match keys.entry(kid) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        skipped.push(format!("{name}: a second key with this kid"));
                    }
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        entry.insert(Arc::new(key));
                    }
                }
            }
            Err(reason) => skipped.push(reason),
        }
    }
    if !skipped.is_empty() {
        tracing::debug!(?skipped, "keys of the JWKS skipped");
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey(skipped.join("; ")));
    }
    Ok(keys)
}

/// A key id as it may be shown: at most 64 characters, printable ASCII.
fn bounded(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The `kid` and key of a JWK that can verify RS256 or ES256 signatures, or
/// why it cannot.
fn usable_key(jwk: &Jwk) -> Result<(String, Key), String> {
    let common = &jwk.common;
    let kid = common
        .key_id
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or("a key without kid")?;
    let name = bounded(&kid);
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err(format!("{name}: not a signing key (use)"));
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err(format!("{name}: not for verifying (key_ops)"));
    }
    let decode = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("{name}: bad base64url"))
    };
    let (alg, decoding) = match (&jwk.algorithm, common.key_algorithm) {
        (AlgorithmParameters::RSA(rsa), None | Some(KeyAlgorithm::RS256)) => {
            let n = decode(&rsa.n)?;
            let bits = 8 * n.iter().skip_while(|b| **b == 0).count();
            if bits < MIN_RSA_BITS {
                return Err(format!("{name}: an RSA key under {MIN_RSA_BITS} bits"));
            }
            decode(&rsa.e)?;
            let key = DecodingKey::from_rsa_components(&rsa.n, &rsa.e)
                .map_err(|e| format!("{name}: {e}"))?;
            (Algorithm::RS256, key)
        }
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            if decode(&ec.x)?.len() != 32 || decode(&ec.y)?.len() != 32 {
                return Err(format!("{name}: not a P-256 point"));
            }
            let key = DecodingKey::from_ec_components(&ec.x, &ec.y)
                .map_err(|e| format!("{name}: {e}"))?;
            (Algorithm::ES256, key)
        }
        _ => return Err(format!("{name}: not an RS256 or ES256 key")),
    };
    Ok((kid, Key { alg, decoding }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in authorization {
            headers.append(AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn the_bearer_token_is_found_or_its_absence_named() {
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwdw=="])),
            Err(AuthError::Missing)
        );
        assert_eq!(bearer_token(&headers(&["bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers(&["Bearer  a.b.c "])), Ok("a.b.c"));
        assert_eq!(
            bearer_token(&headers(&["Bearer a.b.c", "Bearer d.e.f"])),
            Err(AuthError::Refused(Refusal::Malformed))
        );
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(
            bearer_token(&headers(&[&huge])),
            Err(AuthError::Refused(Refusal::Oversized))
        );
    }

    #[test]
    fn the_header_is_checked_before_any_key_is_looked_up() {
        let token = |header: &str| format!("{}.{}.sig", b64(header), b64("{}"));
        assert_eq!(
            read_header(&token(r#"{"alg":"ES256","kid":"k1"}"#)),
            Ok((Algorithm::ES256, "k1".to_owned()))
        );
        let cases = [
            (
                r#"{"alg":"none","kid":"k1"}"#,
                Refusal::UnsupportedAlgorithm,
            ),
            (
                r#"{"alg":"HS256","kid":"k1"}"#,
                Refusal::UnsupportedAlgorithm,
            ),
            (r#"{"alg":"RS256"}"#, Refusal::NoKeyId),
            (
                r#"{"alg":"RS256","kid":"k","crit":["exp"]}"#,
                Refusal::CriticalExtension,
            ),
            ("not json", Refusal::Malformed),
        ];
        for (header, refusal) in cases {
            assert_eq!(read_header(&token(header)), Err(refusal), "{header}");
        }
        let long = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, "k".repeat(2000));
        assert_eq!(read_header(&token(&long)), Err(Refusal::OversizedHeader));
        for bad in ["", "a.b", "a.b.c.d", "a+b.c.d", ".b.c", "a..c"] {
            assert_eq!(read_header(bad), Err(Refusal::Malformed), "{bad}");
        }
    }

    #[test]
    fn only_signing_keys_of_the_two_algorithms_are_kept() {
        let p256 = r#"{"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let hmac = r#"{"kty":"oct","kid":"hs","k":"c2VjcmV0"}"#;
        let enc = r#"{"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let weak_rsa = format!(
            r#"{{"kty":"RSA","kid":"rsa","n":"{}","e":"AQAB"}}"#,
            b64(&"x".repeat(128))
        );
        let jwks = format!(r#"{{"keys":[{p256},{hmac},{enc},{weak_rsa},{{"kty":"unknown"}}]}}"#);
        let keys = parse_jwks(jwks.as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["ec"]);
        assert_eq!(keys["ec"].alg, Algorithm::ES256);
        let none = parse_jwks(format!(r#"{{"keys":[{hmac}]}}"#).as_bytes());
        assert!(matches!(none, Err(JwksError::NoUsableKey(_))), "{none:?}");
        assert!(matches!(parse_jwks(b"[]"), Err(JwksError::Json(_))));
    }

    #[test]
    fn a_refusal_challenges_with_its_description_only() {
        let ApiError::Unauthorized {
            challenge, code, ..
        } = ApiError::from(AuthError::Refused(Refusal::Expired))
        else {
            panic!("not a 401");
        };
        assert_eq!(code, "invalid_token");
        assert_eq!(
            challenge,
            r#"Bearer realm="orders", error="invalid_token", error_description="the token has expired""#
        );
        let all = [
            Refusal::Oversized,
            Refusal::OversizedHeader,
            Refusal::Malformed,
            Refusal::UnsupportedAlgorithm,
            Refusal::CriticalExtension,
            Refusal::NoKeyId,
            Refusal::UnknownKey,
            Refusal::KeyMismatch,
            Refusal::BadSignature,
            Refusal::Expired,
            Refusal::NotYetValid,
            Refusal::WrongIssuer,
            Refusal::WrongAudience,
            Refusal::MissingClaim,
            Refusal::MalformedClaim,
            Refusal::BadSubject,
        ];
        for refusal in all {
            let text = refusal.description();
            assert!(text.is_ascii() && !text.contains(['"', '\\']), "{text}");
        }
    }
}
