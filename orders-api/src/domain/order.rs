//! Orders: the request body, the validated new order and the stored order.

use contracts::{Currency, CustomerId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Amount, AmountError};

/// Body of `POST /orders`, as in the seed: `{"amount": 29.99}`, optionally with a
/// `currency`. Unknown fields are refused so that a typo is not silently ignored.
///
/// Its OpenAPI schema (`CreateOrder`) describes it to clients.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = CreateOrder,
    description = "Body of `POST /orders`. Unknown fields are refused."
)]
pub struct CreateOrderRequest {
    /// The raw JSON of the amount, parsed exactly by [`Amount::from_json`].
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub amount: Box<RawValue>,
    /// ISO 4217 code (three upper-case letters); default BRL.
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
}

/// Why a well-formed request does not describe a valid order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The amount is not acceptable.
    #[error(transparent)]
    Amount(#[from] AmountError),
    /// The currency is not an ISO 4217 code.
    #[error("currency must be a three-letter ISO 4217 code such as BRL")]
    Currency,
}

/// A validated order that has not been stored yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The new order's id (UUIDv7: time-ordered, friendly to the primary key index).
    pub id: Uuid,
    /// The amount.
    pub amount: Amount,
    /// ISO 4217 code.
    pub currency: Currency,
}

impl NewOrder {
    /// Validates a request into a new order with a fresh id.
    ///
    /// # Errors
    /// [`OrderError`] naming the invalid field.
    pub fn parse(request: &CreateOrderRequest, default_currency: &str) -> Result<Self, OrderError> {
        let amount = Amount::from_json(&request.amount)?;
        let currency = Currency::try_from(request.currency.as_deref().unwrap_or(default_currency))
            .map_err(|_| OrderError::Currency)?;
        Ok(Self {
            id: Uuid::now_v7(),
            amount,
            currency,
        })
    }
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Id.
    pub id: Uuid,
    /// The customer it belongs to.
    pub customer_id: CustomerId,
    /// Amount.
    pub amount: Amount,
    /// ISO 4217 code.
    pub currency: Currency,
    /// When it was stored.
    pub created_at: OffsetDateTime,
}

/// The JSON representation of an order in responses (OpenAPI schema `Order`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Order, description = "An order.")]
pub struct OrderBody {
    /// Order id (UUIDv7).
    pub id: Uuid,
    /// The customer the order belongs to: the `sub` of the token that created it.
    #[schema(value_type = String, min_length = 1, max_length = 255)]
    pub customer_id: CustomerId,
    /// The amount as a number with two decimal places.
    #[schema(value_type = f64)]
    pub amount: Box<RawValue>,
    /// The amount in cents, exact.
    pub amount_cents: i64,
    /// ISO 4217 code.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// When the order was stored (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl Order {
    /// The response body for this order.
    ///
    /// # Errors
    /// Only if the amount could not be written as JSON (never in practice).
    pub fn to_body(&self) -> Result<OrderBody, serde_json::Error> {
        Ok(OrderBody {
            id: self.id,
            customer_id: self.customer_id.clone(),
            amount: self.amount.to_json_number()?,
            amount_cents: self.amount.cents(),
            currency: self.currency,
            created_at: self.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the body, parsing and validation never panic, and an accepted
        /// order always has an exact, positive, bounded amount.
        #[test]
        fn any_body_is_refused_or_a_valid_order(body in r#"[{}\[\]":,0-9a-zA-Z.eE+\- ]{0,80}"#) {
            if let Ok(request) = serde_json::from_str::<CreateOrderRequest>(&body) {
                if let Ok(order) = NewOrder::parse(&request, "BRL") {
                    prop_assert!(order.amount.cents() > 0);
                    prop_assert!(order.amount.cents() <= contracts::event::MAX_AMOUNT_CENTS);
                }
            }
        }

        /// Well-formed bodies with arbitrary amounts: accepted exactly or refused.
        #[test]
        fn amounts_in_bodies_are_exact(units in 0_u32..2_000_000, cents in 0_u32..100, quoted in any::<bool>()) {
            let text = format!("{units}.{cents:02}");
            let amount = if quoted { format!("{text:?}") } else { text.clone() };
            let body = format!(r#"{{"amount": {amount}}}"#);
            let request: CreateOrderRequest = serde_json::from_str(&body).unwrap();
            let expected = i64::from(units) * 100 + i64::from(cents);
            match NewOrder::parse(&request, "BRL") {
                Ok(order) => prop_assert_eq!(order.amount.cents(), expected),
                Err(_) => prop_assert!(expected == 0 || expected > contracts::event::MAX_AMOUNT_CENTS),
            }
        }
    }

    fn request(json: &str) -> CreateOrderRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_currency_applies() {
        let o = NewOrder::parse(&request(r#"{"amount": 29.99}"#), "BRL").unwrap();
        assert_eq!(o.amount.cents(), 2999);
        assert_eq!(o.currency, "BRL");
        let o = NewOrder::parse(&request(r#"{"amount": "5", "currency": "EUR"}"#), "BRL").unwrap();
        assert_eq!(o.currency, "EUR");
    }

    #[test]
    fn invalid_currency_is_refused() {
        for c in [r#""eur""#, r#""EURO""#, r#""""#, r#""€€€""#] {
            let json = format!(r#"{{"amount": 1, "currency": {c}}}"#);
            assert_eq!(
                NewOrder::parse(&request(&json), "BRL"),
                Err(OrderError::Currency)
            );
        }
    }

    #[test]
    fn unknown_fields_and_missing_amount_do_not_deserialize() {
        assert!(serde_json::from_str::<CreateOrderRequest>(r#"{"amount":1,"x":2}"#).is_err());
        assert!(serde_json::from_str::<CreateOrderRequest>(r#"{}"#).is_err());
        assert!(serde_json::from_str::<CreateOrderRequest>(r#"{"amount":1,"amount":2}"#).is_err());
    }
}
