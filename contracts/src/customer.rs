//! Who an order belongs to: the customer id, as the orders API, the event and the
//! invoices share it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The id of a customer: the `sub` claim of the caller's access token (an
/// identity provider's opaque subject identifier), 1 to [`CustomerId::MAX_LEN`]
/// characters with no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

/// Why a text is not a [`CustomerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("customer id {0:?} is not 1 to 255 characters without control characters")]
pub struct CustomerIdError(String);

impl CustomerId {
    /// Longest customer id, in characters (the `orders.customer_id` check agrees).
    pub const MAX_LEN: usize = 255;

    /// The one customer of an API whose authentication is turned off
    /// (`AUTH_DISABLED=true`): every caller is this customer.
    pub const ANONYMOUS: &'static str = "anonymous";

    /// The customer every caller is when authentication is turned off.
    #[must_use]
    pub fn anonymous() -> Self {
        Self(Self::ANONYMOUS.to_owned())
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = CustomerIdError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        let length = id.chars().count();
        if (1..=Self::MAX_LEN).contains(&length) && !id.chars().any(char::is_control) {
            Ok(Self(id))
        } else {
            Err(CustomerIdError(crate::event::truncate(&id, 40)))
        }
    }
}

impl TryFrom<&str> for CustomerId {
    type Error = CustomerIdError;

    fn try_from(id: &str) -> Result<Self, Self::Error> {
        Self::try_from(id.to_owned())
    }
}

impl From<CustomerId> for String {
    fn from(id: CustomerId) -> Self {
        id.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subjects_and_refuses_the_rest() {
        for ok in [
            "a",
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "248289761001",
            &"é".repeat(255),
        ] {
            assert_eq!(CustomerId::try_from(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a\nb", "\u{7f}", &"x".repeat(256)] {
            assert!(CustomerId::try_from(bad).is_err(), "{bad:?}");
        }
        let json: Result<CustomerId, _> = serde_json::from_str("\"\"");
        assert!(json.is_err());
        assert_eq!(
            serde_json::to_string(&CustomerId::anonymous()).unwrap(),
            "\"anonymous\""
        );
    }
}
