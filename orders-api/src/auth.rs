//! Who is calling. (Placeholder until bearer-token authentication lands: every
//! caller is the anonymous customer.)

use axum::{extract::FromRequestParts, http::request::Parts};
use contracts::CustomerId;

use crate::error::ApiError;

/// The authenticated caller: the customer the request acts for.
#[derive(Debug, Clone)]
pub struct Caller(pub CustomerId);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Self(CustomerId::anonymous()))
    }
}
