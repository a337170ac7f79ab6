//! A JSON body extractor whose rejections are problem bodies with the right status:
//! 415 for a non-JSON content type, 413 for an oversized body, 400 for broken JSON,
//! 422 for JSON of the wrong shape.

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Whether a request's body is still on its way: the timeout middleware puts one
/// in every request and the body extractor updates it, so that a request that
/// times out while its body trickles in is the client's fault (408), not the
/// server's (503).
#[derive(Debug, Clone, Default)]
pub struct BodyProgress(Arc<AtomicU8>);

impl BodyProgress {
    const RECEIVING: u8 = 1;
    const RECEIVED: u8 = 2;

    /// Whether the handler is still waiting for the body.
    #[must_use]
    pub fn receiving(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::RECEIVING
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::SeqCst);
    }
}

/// A request body deserialized from JSON.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(req.headers().get(header::CONTENT_TYPE))?;
        let progress = req.extensions().get::<BodyProgress>().cloned();
        if let Some(progress) = &progress {
            progress.set(BodyProgress::RECEIVING);
        }
        let bytes = Bytes::from_request(req, state).await;
        if let Some(progress) = &progress {
            progress.set(BodyProgress::RECEIVED);
        }
        let bytes = bytes.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedJson(format!("cannot read the request body: {rejection}"))
            }
        })?;
        // Every body of this API is an object. Serde would also read a struct from
        // an array (`[29.99]`), a shape no client means to send.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                    Err(e) if e.classify() != serde_json::error::Category::Data => {
                        ApiError::MalformedJson(format!("request body is not valid JSON: {e}"))
                    }
                    _ => ApiError::Unprocessable {
                        code: "invalid_body",
                        detail: "request body must be a JSON object".into(),
                    },
                },
            );
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::Unprocessable {
                    code: "invalid_body",
                    detail: format!("request body has the wrong shape: {e}"),
                },
                _ => ApiError::MalformedJson(format!("request body is not valid JSON: {e}")),
            })
    }
}

/// Accepts `application/json` and `application/<something>+json`, with parameters.
fn check_json_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json, not {essence:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn content_types() {
        let ok = |v: &'static str| check_json_content_type(Some(&HeaderValue::from_static(v)));
        assert!(ok("application/json").is_ok());
        assert!(ok("Application/JSON; charset=utf-8").is_ok());
        assert!(ok("application/merge-patch+json").is_ok());
        assert!(ok("text/plain").is_err());
        assert!(ok("application/jsonx").is_err());
        assert!(check_json_content_type(None).is_err());
    }
}
