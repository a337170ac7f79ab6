//! The API's errors and their `application/problem+json` bodies (RFC 9457).
//!
//! Client errors say what is wrong. Server errors are opaque: the cause is logged
//! inside the request's span, never sent to the client.

use std::time::Duration;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "1";

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (syntax error, truncated, too deeply nested).
    #[error("{0}")]
    MalformedJson(String),
    /// The request is not acceptable as a whole (e.g. a path parameter).
    #[error("{detail}")]
    BadRequest {
        /// Stable machine-readable code.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// JSON of the wrong shape or with invalid values.
    #[error("{detail}")]
    Unprocessable {
        /// Stable machine-readable code.
        code: &'static str,
        /// Human explanation.
        detail: String,
    },
    /// The body is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The client did not send its body within the request timeout.
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is larger than allowed.
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// No such route or method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No bearer token, or a refused one (RFC 6750): 401 with a
    /// `WWW-Authenticate` challenge.
    #[error("{detail}")]
    Unauthorized {
        /// `missing_token` or `invalid_token`.
        code: &'static str,
        /// What is wrong (fixed text: nothing copied from the token).
        detail: String,
        /// The `WWW-Authenticate` value.
        challenge: String,
    },
    /// The token's signing key cannot be fetched now: 503, retry after
    /// `retry_after`.
    #[error("{detail}")]
    AuthUnavailable {
        /// What is wrong.
        detail: String,
        /// When to retry (`Retry-After`, whole seconds rounded up).
        retry_after: Duration,
    },
    /// The database is unreachable or overloaded: retry later.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::AuthUnavailable { .. } | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of the problem body (`invalid_amount`, `unavailable`, …).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Unauthorized { code, .. } => code,
            ApiError::AuthUnavailable { .. } => "auth_unavailable",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Unavailable(cause) => {
                tracing::warn!(
                    error = format!("{cause:#}"),
                    "request failed: database unavailable"
                );
            }
            ApiError::Internal(cause) => {
                tracing::error!(
                    error = format!("{cause:#}"),
                    "request failed: internal error"
                );
            }
            _ => {}
        }
        let mut response = plumbing::http::problem(status, self.code(), &self.to_string());
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized { challenge, .. } => {
                let challenge = HeaderValue::from_str(challenge)
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
                headers.insert(header::WWW_AUTHENTICATE, challenge);
            }
            ApiError::AuthUnavailable { retry_after, .. } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        response
    }
}

/// A store failure: 503 when retrying may help (the database is down or
/// overloaded), 500 otherwise.
impl From<plumbing::db::StoreError> for ApiError {
    fn from(err: plumbing::db::StoreError) -> Self {
        if err.is_transient() {
            ApiError::Unavailable(anyhow::Error::new(err))
        } else {
            ApiError::Internal(anyhow::Error::new(err))
        }
    }
}
