//! TLS to PostgreSQL with rustls, configured by libpq's URL parameters.
//!
//! The driver understands only `sslmode=disable|prefer|require` and rejects the
//! other libpq TLS parameters, so [`split_url`] takes `sslmode` and `sslrootcert`
//! out of the URL and [`Mode`] decides the connector:
//!
//! | `sslmode` | connection |
//! |---|---|
//! | absent, `disable`, `allow`, `prefer` | plain TCP |
//! | `require` | TLS; the certificate is checked against `sslrootcert` when given (as libpq does), otherwise not checked |
//! | `verify-ca` | TLS; the chain must lead to `sslrootcert` (or the system's roots) |
//! | `verify-full` | as `verify-ca`, and the certificate must name the host |
//!
//! `sslrootcert=system` means the system's roots (and, as in libpq 16, implies
//! `verify-full`). The system store honours `SSL_CERT_FILE` and `SSL_CERT_DIR`.

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::WebPkiServerVerifier,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection is secured, from `sslmode` and `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Plain TCP.
    Disable,
    /// TLS without checking the server's certificate (encryption only).
    Encrypt,
    /// TLS; the chain must lead to a trusted root, whatever name it carries.
    VerifyCa(Roots),
    /// TLS; trusted chain and the certificate names the host.
    VerifyFull(Roots),
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured).
    System,
    /// A PEM file of CA certificates.
    File(String),
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Unknown `sslmode`.
    #[error(
        "sslmode={0:?} is not supported; use disable, prefer, require, verify-ca or verify-full"
    )]
    Mode(String),
    /// The root certificate file cannot be read or holds no certificate.
    #[error("sslrootcert {path:?}: {reason}")]
    RootCert {
        /// The file.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The system store has no certificate.
    #[error("no trusted root certificates in the system store ({0})")]
    System(String),
}

/// Splits the TLS parameters out of a `postgres://` URL or `key=value` string.
/// Returns the rest (for the driver) and the chosen mode.
///
/// # Errors
/// [`TlsError::Mode`] for an unknown `sslmode`.
pub fn split_url(url: &str) -> Result<(String, Mode), TlsError> {
    let mut sslmode = None;
    let mut rootcert = None;
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            sslmode = Some(value);
            true
        }
        "sslrootcert" => {
            rootcert = Some(value);
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(k, percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                !take(k.trim(), v.trim().trim_matches('\'').to_owned())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let roots = rootcert.map(|r| {
        if r == "system" {
            Roots::System
        } else {
            Roots::File(r)
        }
    });
    let mode = match (sslmode.as_deref(), roots) {
        (Some("verify-full"), roots) | (None, roots @ Some(Roots::System)) => {
            Mode::VerifyFull(roots.unwrap_or(Roots::System))
        }
        (Some("verify-ca"), roots) => Mode::VerifyCa(roots.unwrap_or(Roots::System)),
        // libpq: with a root certificate, `require` checks the chain.
        (Some("require"), Some(roots)) => Mode::VerifyCa(roots),
        (Some("require"), None) => Mode::Encrypt,
        (None | Some("disable" | "allow" | "prefer"), _) => Mode::Disable,
        (Some(other), _) => return Err(TlsError::Mode(other.to_owned())),
    };
    Ok((rest, mode))
}

/// `%XX` sequences decoded (invalid UTF-8 replaced).
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls connector for a TLS mode (`None` for [`Mode::Disable`]). Loads the
/// root certificates now, so that a bad file fails at start-up.
///
/// # Errors
/// [`TlsError`] when the roots cannot be loaded.
pub fn connector(mode: &Mode) -> Result<Option<MakeRustlsConnect>, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::System(e.to_string()))?;
    let config = match mode {
        Mode::Disable => return Ok(None),
        Mode::Encrypt => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Mode::VerifyFull(roots) => builder
            .with_root_certificates(load_roots(roots)?)
            .with_no_client_auth(),
        Mode::VerifyCa(roots) => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(load_roots(roots)?), provider)
                    .build()
                    .map_err(|e| TlsError::System(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
                .with_no_client_auth()
        }
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// The TLS configuration of an HTTPS client (rustls on ring, as every other TLS
/// connection of the process) that trusts the system's roots (`SSL_CERT_FILE`
/// and `SSL_CERT_DIR` honoured) and checks the server's name. Loads the roots
/// now, so that a store without any fails at start-up.
///
/// # Errors
/// [`TlsError::System`] when the system's store has no usable certificate.
pub fn https_client_config() -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::System(e.to_string()))?
        .with_root_certificates(load_roots(&Roots::System)?)
        .with_no_client_auth())
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let reasons: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
                return Err(TlsError::System(if reasons.is_empty() {
                    "none found".into()
                } else {
                    reasons.join("; ")
                }));
            }
        }
        Roots::File(path) => {
            let error = |reason: String| TlsError::RootCert {
                path: path.clone(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error(e.to_string()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(error("no usable certificate in the file".into()));
            }
        }
    }
    Ok(store)
}

/// `sslmode=require` without roots: any certificate, but the handshake's
/// signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full chain check, except that the name may differ.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_map_to_connectors() {
        let cases = [
            ("postgres://u@h/db", "postgres://u@h/db", Mode::Disable),
            (
                "postgres://u@h/db?sslmode=prefer&application_name=x",
                "postgres://u@h/db?application_name=x",
                Mode::Disable,
            ),
            (
                "postgres://u@h/db?sslmode=require",
                "postgres://u@h/db",
                Mode::Encrypt,
            ),
            (
                "postgres://u@h/db?sslmode=require&sslrootcert=%2Fca.pem",
                "postgres://u@h/db",
                Mode::VerifyCa(Roots::File("/ca.pem".into())),
            ),
            (
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem",
                "postgres://u@h/db",
                Mode::VerifyFull(Roots::File("/ca.pem".into())),
            ),
            (
                "postgres://u@h/db?sslmode=verify-ca",
                "postgres://u@h/db",
                Mode::VerifyCa(Roots::System),
            ),
            (
                "postgres://u@h/db?sslrootcert=system",
                "postgres://u@h/db",
                Mode::VerifyFull(Roots::System),
            ),
            (
                "host=h dbname=db sslmode=verify-full sslrootcert=/ca.pem",
                "host=h dbname=db",
                Mode::VerifyFull(Roots::File("/ca.pem".into())),
            ),
        ];
        for (url, rest, mode) in cases {
            assert_eq!(split_url(url).unwrap(), (rest.to_owned(), mode), "{url}");
        }
        assert!(matches!(
            split_url("postgres://h/db?sslmode=always"),
            Err(TlsError::Mode(_))
        ));
    }

    #[test]
    fn a_missing_root_file_is_reported() {
        let err = connector(&Mode::VerifyFull(Roots::File("/nonexistent/ca.pem".into())))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
