//! An identity provider for tests, benchmarks and `cargo pipeline`: signing
//! keys, the JWKS that publishes them (a file, or a small HTTPS server), and
//! bearer tokens for the orders API. The one place that mints tokens.
//!
//! The RS256 key is a committed **test-only** key pair
//! (`devkit/fixtures/test-only-rsa-2048*.pem`, made once with `openssl genrsa`):
//! it signs nothing but test tokens. ES256 keys are made fresh for each issuer.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    task::JoinHandle,
};

use crate::unique_suffix;

/// The issuer (`iss`) of test tokens.
pub const TEST_ISSUER: &str = "https://issuer.test/";
/// The audience (`aud`) of test tokens: the orders API.
pub const TEST_AUDIENCE: &str = "orders-api";
/// The customer (`sub`) test tokens are for, unless a test names another.
pub const TEST_CUSTOMER: &str = "test-customer";

/// How long [`Issuer::long_lived_token`]s are valid: longer than any fault
/// suite or benchmark run, and a working day of development.
pub const LONG_RUN: Duration = Duration::from_secs(12 * 3_600);

/// The committed test-only RSA key (PKCS#1 PEM, 2048 bits).
pub const TEST_RSA_PRIVATE_KEY: &str = include_str!("../fixtures/test-only-rsa-2048.pem");
/// Its public key (SPKI PEM): what an attacker knows, and tries as an HMAC secret.
pub const TEST_RSA_PUBLIC_KEY: &str = include_str!("../fixtures/test-only-rsa-2048.pub.pem");

/// Seconds since the Unix epoch, now.
#[must_use]
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// base64url without padding, as JWTs use it.
#[must_use]
pub fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token put together by hand: `header` and `claims` as given, and
/// `signature` (raw bytes) as its third part, for the tokens no library signs
/// (`alg: none`, forged signatures).
#[must_use]
pub fn assemble_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes()),
        base64url(signature)
    )
}

/// A key that signs tokens, with its public half as a JWK.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// A new ES256 (P-256) key named `kid`.
    ///
    /// # Panics
    /// When the key cannot be made (never in practice).
    #[must_use]
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::ES256, key)
    }

    /// The committed test-only RSA key as an RS256 key named `kid`.
    ///
    /// # Panics
    /// When the fixture is not an RSA key.
    #[must_use]
    pub fn rs256(kid: &str) -> Self {
        let key = EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE_KEY.as_bytes()).unwrap();
        Self::new(kid, Algorithm::RS256, key)
    }

    fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> Self {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            kid: kid.to_owned(),
            alg,
            key,
            jwk,
        }
    }

    /// Its key id.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Its algorithm.
    #[must_use]
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Its public key as a JWK (`kid`, `use: sig`, `alg`).
    #[must_use]
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token with `claims`, signed by this key and naming it.
    #[must_use]
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token with `claims` signed by this key, naming the key `kid`
    /// (another key's, or one nobody published).
    ///
    /// # Panics
    /// When signing fails (never with these keys).
    #[must_use]
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    /// A token with a header of its own (e.g. with extra fields) and `claims`,
    /// signed by this key.
    ///
    /// # Panics
    /// When signing fails.
    #[must_use]
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).unwrap()
    }
}

/// A JWKS document of `keys`.
#[must_use]
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// An identity provider: an ES256 and an RS256 signing key, their JWKS in a
/// file, an issuer and an audience, and tokens for the orders API. The file
/// (in a directory of its own) is deleted on drop, unless the issuer was made
/// in a directory the caller chose ([`Issuer::in_dir`]).
pub struct Issuer {
    /// `iss` of its tokens.
    pub issuer: String,
    /// `aud` of its tokens.
    pub audience: String,
    es256: SigningKey,
    rs256: SigningKey,
    dir: PathBuf,
    delete_on_drop: bool,
}

impl Default for Issuer {
    fn default() -> Self {
        Self::new()
    }
}

impl Issuer {
    /// A test issuer ([`TEST_ISSUER`], [`TEST_AUDIENCE`]) whose JWKS is a file
    /// in a new temporary directory.
    ///
    /// # Panics
    /// When the file cannot be written.
    #[must_use]
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("orders-auth-{}", unique_suffix()));
        let mut issuer = Self::in_dir(&dir, TEST_ISSUER, TEST_AUDIENCE).unwrap();
        issuer.delete_on_drop = true;
        issuer
    }

    /// An issuer of `issuer` for `audience` whose JWKS is written to
    /// `dir/jwks.json` (created if missing), and left there.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn in_dir(dir: &Path, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let suffix = unique_suffix();
        let issuer = Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            es256: SigningKey::es256(&format!("es256-{suffix}")),
            rs256: SigningKey::rs256(&format!("rs256-{suffix}")),
            dir: dir.to_owned(),
            delete_on_drop: false,
        };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        issuer.try_write_jwks(&issuer.jwks())?;
        Ok(issuer)
    }

    /// Its ES256 key.
    #[must_use]
    pub fn es256(&self) -> &SigningKey {
        &self.es256
    }

    /// Its RS256 key (the test-only RSA key).
    #[must_use]
    pub fn rs256(&self) -> &SigningKey {
        &self.rs256
    }

    /// The JWKS of its two keys.
    #[must_use]
    pub fn jwks(&self) -> Value {
        jwks(&[&self.es256, &self.rs256])
    }

    /// Replaces its JWKS file with `jwks` (a key rotation, a broken file).
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_jwks(&self, jwks: &Value) {
        self.try_write_jwks(jwks).unwrap();
    }

    fn try_write_jwks(&self, jwks: &Value) -> anyhow::Result<()> {
        // Written aside and renamed: a reader never sees half a file.
        let path = self.jwks_path();
        let partial = self.dir.join(format!("jwks.json.{}", unique_suffix()));
        std::fs::write(&partial, jwks.to_string())
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Where its JWKS file is.
    #[must_use]
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }

    /// `file://` URL of its JWKS.
    #[must_use]
    pub fn jwks_url(&self) -> String {
        format!("file://{}", self.jwks_path().display())
    }

    /// The orders API's variables for this issuer: `AUTH_JWKS_URL`,
    /// `AUTH_ISSUER`, `AUTH_AUDIENCE`.
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AUTH_JWKS_URL", self.jwks_url()),
            ("AUTH_ISSUER", self.issuer.clone()),
            ("AUTH_AUDIENCE", self.audience.clone()),
        ]
    }

    /// The orders API's configuration for this issuer, default timings.
    ///
    /// # Panics
    /// Never: the URL is a `file://` URL of an absolute path.
    #[must_use]
    pub fn config(&self) -> orders_api::config::AuthConfig {
        orders_api::config::AuthConfig::jwt(
            self.jwks_url().parse().unwrap(),
            &self.issuer,
            &self.audience,
        )
    }

    /// Claims of a token for `sub`, valid from a minute ago for `valid_for`.
    #[must_use]
    pub fn claims(&self, sub: &str, valid_for: Duration) -> Value {
        let now = now();
        let valid_for = i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 2);
        json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now - 60,
            "exp": now + valid_for,
        })
    }

    /// A token for `sub`, ES256, valid for an hour.
    #[must_use]
    pub fn token(&self, sub: &str) -> String {
        self.token_valid_for(sub, Duration::from_secs(3_600))
    }

    /// A token for `sub`, ES256, valid for `valid_for`.
    #[must_use]
    pub fn token_valid_for(&self, sub: &str, valid_for: Duration) -> String {
        self.es256.sign(&self.claims(sub, valid_for))
    }

    /// A token for `sub` valid for [`LONG_RUN`]: for the fault suite, the
    /// benchmarks and a development session.
    #[must_use]
    pub fn long_lived_token(&self, sub: &str) -> String {
        self.token_valid_for(sub, LONG_RUN)
    }

    /// `Bearer <token>` for [`TEST_CUSTOMER`]: the `Authorization` value.
    #[must_use]
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token(TEST_CUSTOMER))
    }

    /// An HTTP client (as [`crate::http_client`]) that sends a token for `sub`
    /// with every request.
    ///
    /// # Panics
    /// When the client cannot be built.
    #[must_use]
    pub fn client_for(&self, sub: &str) -> reqwest::Client {
        bearer_client(&self.token(sub), reqwest::Client::builder())
    }

    /// [`Issuer::client_for`] [`TEST_CUSTOMER`].
    #[must_use]
    pub fn client(&self) -> reqwest::Client {
        self.client_for(TEST_CUSTOMER)
    }
}

/// The issuer `cargo pipeline` runs the API with: a local identity provider.
pub const DEV_ISSUER: &str = "https://dev-issuer.localhost/";
/// The audience `cargo pipeline` runs the API with: the API's name.
pub const DEV_AUDIENCE: &str = "orders-api";
/// The customer of the development token `cargo pipeline` prints.
pub const DEV_CUSTOMER: &str = "dev-customer";

/// A `curl` command line that creates an order at the API at `base_url` with
/// the bearer `token` (the seed's `{"amount": 29.99}`), for a shell.
#[must_use]
pub fn curl_create_order(base_url: &str, token: &str) -> String {
    format!(
        "curl -i -X POST {base_url}/orders -H 'authorization: Bearer {token}' \
         -H 'content-type: application/json' -d '{{\"amount\": 29.99}}'"
    )
}

/// `builder` built into a client that sends `Authorization: Bearer <token>`
/// with every request.
///
/// # Panics
/// When the token is not a valid header value or the client cannot be built.
#[must_use]
pub fn bearer_client(token: &str, builder: reqwest::ClientBuilder) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    builder.default_headers(headers).build().unwrap()
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if self.delete_on_drop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A JWKS served over HTTPS on 127.0.0.1 with a certificate of a throwaway CA
/// (which a client trusts through `SSL_CERT_FILE`, see
/// [`JwksServer::ca_file`]); it counts the requests it answers, and can be
/// stopped (connections refused) and resumed on the same port.
pub struct JwksServer {
    port: u16,
    dir: PathBuf,
    jwks: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    acceptor: tokio_rustls::TlsAcceptor,
    task: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Starts serving `jwks` at `https://localhost:<port>/jwks.json`.
    ///
    /// # Panics
    /// When the certificates cannot be made or the port bound.
    pub async fn start(jwks: &Value) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let dir = std::env::temp_dir().join(format!("orders-jwks-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) =
            crate::tls_postgres::certificates_for(&["localhost", "127.0.0.1"]).unwrap();
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
        let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let mut server = Self {
            port: 0,
            dir,
            jwks: Arc::new(Mutex::new(jwks.to_string())),
            requests: Arc::new(AtomicUsize::new(0)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            task: None,
        };
        server.resume().await;
        server
    }

    /// `https://localhost:<port>/jwks.json`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("https://localhost:{}/jwks.json", self.port)
    }

    /// The PEM file of the CA that signed its certificate: a client's
    /// `SSL_CERT_FILE`.
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The requests it answered so far.
    #[must_use]
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Serves `jwks` from now on.
    pub fn set_jwks(&self, jwks: &Value) {
        *self.jwks.lock().unwrap() = jwks.to_string();
    }

    /// Stops listening: connections are refused until [`JwksServer::resume`].
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again (on the same port after a stop).
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn resume(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (acceptor, jwks, requests) = (
            self.acceptor.clone(),
            self.jwks.clone(),
            self.requests.clone(),
        );
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, jwks, requests) = (acceptor.clone(), jwks.clone(), requests.clone());
                connections.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    // One request per connection: read its head, answer, close.
                    let mut head = Vec::new();
                    let mut buf = [0_u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let body = jwks.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        }));
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
