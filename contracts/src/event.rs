//! Events, their schema versions, and how a consumer decodes a received message.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Currency, CustomerId};

/// Largest order amount the pipeline accepts, in minor units (1,000,000.00).
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000;

/// The kinds of event the pipeline publishes (the AMQP `type` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// An order was accepted by the orders API.
    OrderCreated,
}

impl EventType {
    /// Every event type, for lookups and documentation.
    pub const ALL: [EventType; 1] = [EventType::OrderCreated];

    /// The name on the wire and in the outbox's `event_type` column.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "OrderCreated",
        }
    }

    /// Routing key events of this type are published with.
    #[must_use]
    pub const fn routing_key(self) -> &'static str {
        match self {
            EventType::OrderCreated => "order.created",
        }
    }

    /// The event type with this wire name, if it is one of ours.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// Version 1 of the `OrderCreated` event: the body of the message, as JSON.
///
/// Money is in integer minor units; there is no floating-point amount on the wire.
/// Deserializing checks every value (see [`OrderCreatedV1::validate`]).
///
/// # How the contract evolves
///
/// The schema version (the [`crate::headers::SCHEMA_VERSION`] header) is a
/// *major* version: it changes only when a consumer that does not know the change
/// would misread the event. Within a version:
/// - a field may be **added**, optional (absent in events written before it):
///   consumers ignore fields they do not know, so an older consumer reads a newer
///   event, and a newer consumer reads an older one as "not given";
/// - nothing is ever removed, renamed, retyped or given a new meaning.
///
/// Revisions of version 1: `1.0` (`order_id`, `amount_cents`, `currency`,
/// `created_at`); `1.1` adds `customer_id`. Any other change is a new version
/// (`OrderCreatedV2`, schema version 2): a consumer that does not know it
/// refuses it loudly (dead-lettered as `unsupported-version`, counted, alerted
/// on) instead of guessing; it is published only once every consumer reads it.
/// `devkit/tests/event_compatibility.rs` pins every revision's wire format and
/// keeps the decoder of 1.0 to check both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OrderCreatedV1Body")]
pub struct OrderCreatedV1 {
    /// Id of the order (the aggregate id).
    pub order_id: Uuid,
    /// Amount in minor units (cents), > 0.
    pub amount_cents: i64,
    /// ISO 4217 currency code (the string `"BRL"` on the wire).
    pub currency: Currency,
    /// When the order was stored, RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The customer the order belongs to (since 1.1; absent in events written
    /// before orders had customers, and then not sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
}

/// The body of an `OrderCreated` v1 message as it arrives, before its values are
/// checked: a body of the right shape with a bad value is an invalid event, not
/// a malformed body.
#[derive(Deserialize)]
struct OrderCreatedV1Body {
    order_id: Uuid,
    amount_cents: i64,
    currency: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(default)]
    customer_id: Option<String>,
}

impl TryFrom<OrderCreatedV1Body> for OrderCreatedV1 {
    type Error = DecodeError;

    fn try_from(body: OrderCreatedV1Body) -> Result<Self, DecodeError> {
        let currency = Currency::try_from(body.currency.as_str())
            .map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let customer_id = body
            .customer_id
            .map(CustomerId::try_from)
            .transpose()
            .map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let event = Self {
            order_id: body.order_id,
            amount_cents: body.amount_cents,
            currency,
            created_at: body.created_at,
            customer_id,
        };
        event.validate()?;
        Ok(event)
    }
}

impl OrderCreatedV1 {
    /// Schema version of this type, sent in the [`crate::headers::SCHEMA_VERSION`] header.
    pub const SCHEMA_VERSION: i64 = 1;

    /// Checks the invariant the types cannot express: the amount's range.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] naming the offending field.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.amount_cents <= 0 || self.amount_cents > MAX_AMOUNT_CENTS {
            return Err(DecodeError::Invalid(format!(
                "amount_cents {} is outside 1..={MAX_AMOUNT_CENTS}",
                self.amount_cents
            )));
        }
        Ok(())
    }
}

/// Whether `code` is an ISO 4217 code as [`Currency`] accepts it (exactly three
/// ASCII upper-case letters). Prefer parsing it into a [`Currency`].
#[must_use]
pub fn is_currency_code(code: &str) -> bool {
    Currency::try_from(code).is_ok()
}

/// Any event the pipeline knows, with its schema version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `OrderCreated`, schema version 1.
    OrderCreatedV1(OrderCreatedV1),
}

impl Event {
    /// The event's type.
    #[must_use]
    pub fn event_type(&self) -> EventType {
        match self {
            Event::OrderCreatedV1(_) => EventType::OrderCreated,
        }
    }

    /// The event's schema version.
    #[must_use]
    pub fn schema_version(&self) -> i64 {
        match self {
            Event::OrderCreatedV1(_) => OrderCreatedV1::SCHEMA_VERSION,
        }
    }

    /// The JSON body of the event as it goes on the wire.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            // Serializing a struct of plain fields cannot fail.
            Event::OrderCreatedV1(e) => serde_json::to_value(e).unwrap_or_default(),
        }
    }
}

/// The parts of a received message a consumer needs, independent of the AMQP client.
#[derive(Debug, Clone, Copy, Default)]
pub struct InboundMessage<'a> {
    /// The AMQP `message_id` property.
    pub message_id: Option<&'a str>,
    /// The AMQP `type` property.
    pub event_type: Option<&'a str>,
    /// The [`crate::headers::SCHEMA_VERSION`] header: `None` when absent,
    /// `Some(Err(description))` when present but not an integer.
    pub schema_version: Option<Result<i64, &'a str>>,
    /// The AMQP `content_type` property.
    pub content_type: Option<&'a str>,
    /// The message body.
    pub body: &'a [u8],
}

/// A message that decoded to a known event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The message id: the deduplication key.
    pub message_id: Uuid,
    /// The event.
    pub event: Event,
}

/// Why a received message is not a valid event. Every variant is permanent: the
/// same message will never decode, so it belongs in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No `message_id` property.
    #[error("message has no message_id")]
    MissingMessageId,
    /// A `message_id` that is not a UUID.
    #[error("message_id {0:?} is not a UUID")]
    InvalidMessageId(String),
    /// No `type` property.
    #[error("message has no type")]
    MissingType,
    /// A `type` this consumer does not know.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// No schema version header.
    #[error("message has no x-schema-version header")]
    MissingSchemaVersion,
    /// A schema version header that is not an integer.
    #[error("x-schema-version header is not an integer: {0}")]
    InvalidSchemaVersion(String),
    /// A schema version of a known type that this consumer cannot read.
    #[error("unsupported schema version {version} of {event_type}")]
    UnsupportedVersion {
        /// The event type.
        event_type: &'static str,
        /// The version received.
        version: i64,
    },
    /// A content type other than JSON.
    #[error("content type {0:?} is not application/json")]
    ContentType(String),
    /// A body larger than any event: not parsed at all.
    #[error("body of {size} bytes exceeds the {limit}-byte limit for events")]
    TooLarge {
        /// Its size.
        size: usize,
        /// [`MAX_BODY_BYTES`].
        limit: usize,
    },
    /// A body that is not the JSON of the announced event.
    #[error("body is not a valid {event_type} v{version}: {reason}")]
    Body {
        /// The event type.
        event_type: &'static str,
        /// The schema version.
        version: i64,
        /// What the JSON parser said.
        reason: String,
    },
    /// A well-formed event whose values break an invariant.
    #[error("invalid event: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// Every value [`DecodeError::code`] can return (for metrics that start at 0).
    pub const CODES: [&'static str; 10] = [
        "missing-message-id",
        "invalid-message-id",
        "missing-type",
        "unknown-type",
        "invalid-schema-version",
        "unsupported-version",
        "wrong-content-type",
        "oversized",
        "malformed-body",
        "invalid-event",
    ];

    /// A short, stable code for the reason: a metrics label and the prefix of the
    /// dead-letter reason header.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::MissingMessageId => "missing-message-id",
            DecodeError::InvalidMessageId(_) => "invalid-message-id",
            DecodeError::MissingType => "missing-type",
            DecodeError::UnknownType(_) => "unknown-type",
            DecodeError::MissingSchemaVersion | DecodeError::InvalidSchemaVersion(_) => {
                "invalid-schema-version"
            }
            DecodeError::UnsupportedVersion { .. } => "unsupported-version",
            DecodeError::ContentType(_) => "wrong-content-type",
            DecodeError::TooLarge { .. } => "oversized",
            DecodeError::Body { .. } => "malformed-body",
            DecodeError::Invalid(_) => "invalid-event",
        }
    }

    /// The value of the dead-letter reason header: `code: explanation`.
    #[must_use]
    pub fn reason(&self) -> String {
        format!("{}: {self}", self.code())
    }
}

impl InboundMessage<'_> {
    /// Decodes the message into a known event, checking every part of the envelope.
    ///
    /// # Errors
    /// A [`DecodeError`] saying what is wrong; all of them are permanent.
    pub fn decode(&self) -> Result<Decoded, DecodeError> {
        let raw_id = self.message_id.ok_or(DecodeError::MissingMessageId)?;
        let message_id = Uuid::try_parse(raw_id)
            .map_err(|_| DecodeError::InvalidMessageId(truncate(raw_id, 100)))?;
        let type_name = self.event_type.ok_or(DecodeError::MissingType)?;
        let event_type = EventType::from_name(type_name)
            .ok_or_else(|| DecodeError::UnknownType(truncate(type_name, 100)))?;
        let version = match self.schema_version {
            None => return Err(DecodeError::MissingSchemaVersion),
            Some(Err(found)) => {
                return Err(DecodeError::InvalidSchemaVersion(truncate(found, 100)));
            }
            Some(Ok(v)) => v,
        };
        if let Some(ct) = self.content_type {
            // Parameters such as `; charset=utf-8` are allowed.
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !essence.eq_ignore_ascii_case(crate::CONTENT_TYPE_JSON) {
                return Err(DecodeError::ContentType(truncate(ct, 100)));
            }
        }
        if self.body.len() > MAX_BODY_BYTES {
            return Err(DecodeError::TooLarge {
                size: self.body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let event = match (event_type, version) {
            (EventType::OrderCreated, OrderCreatedV1::SCHEMA_VERSION) => {
                let body: OrderCreatedV1Body =
                    serde_json::from_slice(self.body).map_err(|e| DecodeError::Body {
                        event_type: event_type.as_str(),
                        version,
                        reason: e.to_string(),
                    })?;
                Event::OrderCreatedV1(OrderCreatedV1::try_from(body)?)
            }
            (event_type, version) => {
                return Err(DecodeError::UnsupportedVersion {
                    event_type: event_type.as_str(),
                    version,
                });
            }
        };
        Ok(Decoded { message_id, event })
    }
}

/// The largest body a consumer parses: events are a few hundred bytes, so
/// anything near this is garbage or an attack, dead-lettered unread.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Bounds strings copied from untrusted input into error text: at most `max`
/// characters, then an ellipsis.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_decode_error_code_is_listed() {
        use super::DecodeError as E;
        let all = [
            E::MissingMessageId,
            E::InvalidMessageId(String::new()),
            E::MissingType,
            E::UnknownType(String::new()),
            E::MissingSchemaVersion,
            E::InvalidSchemaVersion(String::new()),
            E::UnsupportedVersion {
                event_type: "OrderCreated",
                version: 9,
            },
            E::ContentType(String::new()),
            E::TooLarge { size: 0, limit: 0 },
            E::Body {
                event_type: "OrderCreated",
                version: 1,
                reason: String::new(),
            },
            E::Invalid(String::new()),
        ];
        let codes: std::collections::BTreeSet<&str> = all.iter().map(E::code).collect();
        let listed: std::collections::BTreeSet<&str> = E::CODES.into_iter().collect();
        assert_eq!(codes, listed);
    }

    use super::*;
    use time::macros::datetime;

    fn sample() -> OrderCreatedV1 {
        OrderCreatedV1 {
            order_id: Uuid::parse_str("0190f3a6-7c3e-7b4a-9d2e-3f1a2b3c4d5e").unwrap(),
            amount_cents: 2999,
            currency: Currency::BRL,
            created_at: datetime!(2026-11-27 12:34:56.789 UTC),
            customer_id: None,
        }
    }

    const SAMPLE_JSON: &str = r#"{"order_id":"0190f3a6-7c3e-7b4a-9d2e-3f1a2b3c4d5e","amount_cents":2999,"currency":"BRL","created_at":"2026-11-27T12:34:56.789Z"}"#;
    const MESSAGE_ID: &str = "0190f3a6-0000-7000-8000-000000000001";

    /// A valid envelope around `body`.
    pub(super) fn message(body: &[u8]) -> InboundMessage<'_> {
        InboundMessage {
            message_id: Some(MESSAGE_ID),
            event_type: Some("OrderCreated"),
            schema_version: Some(Ok(1)),
            content_type: Some("application/json"),
            body,
        }
    }

    #[test]
    fn order_created_v1_wire_format_is_pinned() {
        assert_eq!(serde_json::to_string(&sample()).unwrap(), SAMPLE_JSON);
        assert_eq!(
            serde_json::to_string(&Event::OrderCreatedV1(sample()).to_json()).unwrap(),
            // `to_json` goes through a map, which orders keys alphabetically.
            r#"{"amount_cents":2999,"created_at":"2026-11-27T12:34:56.789Z","currency":"BRL","order_id":"0190f3a6-7c3e-7b4a-9d2e-3f1a2b3c4d5e"}"#
        );
    }

    #[test]
    fn event_names_and_routing_keys_are_pinned() {
        assert_eq!(EventType::OrderCreated.as_str(), "OrderCreated");
        assert_eq!(EventType::OrderCreated.routing_key(), "order.created");
        assert_eq!(
            EventType::from_name("OrderCreated"),
            Some(EventType::OrderCreated)
        );
        assert_eq!(EventType::from_name("orderCreated"), None);
    }

    #[test]
    fn decodes_a_valid_message() {
        let d = message(SAMPLE_JSON.as_bytes()).decode().unwrap();
        assert_eq!(d.message_id.to_string(), MESSAGE_ID);
        assert_eq!(d.event, Event::OrderCreatedV1(sample()));
    }

    #[test]
    fn tolerates_unknown_fields_and_charset() {
        let body = SAMPLE_JSON.replace("{", r#"{"note":"x","#);
        let mut m = message(body.as_bytes());
        m.content_type = Some("application/json; charset=utf-8");
        assert!(m.decode().is_ok());
        m.content_type = None;
        assert!(m.decode().is_ok());
    }

    #[test]
    fn every_broken_envelope_has_its_reason() {
        let body = SAMPLE_JSON.as_bytes();
        let oversized = SAMPLE_JSON.replace(
            '{',
            &format!("{{\"pad\":\"{}\",", "x".repeat(MAX_BODY_BYTES)),
        );
        let oversized = oversized.as_bytes();
        let cases: Vec<(InboundMessage<'_>, &str)> = vec![
            (
                InboundMessage {
                    message_id: None,
                    ..message(body)
                },
                "missing-message-id",
            ),
            (
                InboundMessage {
                    message_id: Some("42"),
                    ..message(body)
                },
                "invalid-message-id",
            ),
            (
                InboundMessage {
                    event_type: None,
                    ..message(body)
                },
                "missing-type",
            ),
            (
                InboundMessage {
                    event_type: Some("OrderShipped"),
                    ..message(body)
                },
                "unknown-type",
            ),
            (
                InboundMessage {
                    schema_version: None,
                    ..message(body)
                },
                "invalid-schema-version",
            ),
            (
                InboundMessage {
                    schema_version: Some(Err("\"one\"")),
                    ..message(body)
                },
                "invalid-schema-version",
            ),
            (
                InboundMessage {
                    schema_version: Some(Ok(2)),
                    ..message(body)
                },
                "unsupported-version",
            ),
            (
                InboundMessage {
                    content_type: Some("text/plain"),
                    ..message(body)
                },
                "wrong-content-type",
            ),
            (message(b"\xff\x00garbage"), "malformed-body"),
            (message(oversized), "oversized"),
            (message(br#"{"order_id":"x"}"#), "malformed-body"),
            (message(b"[]"), "malformed-body"),
        ];
        for (m, code) in cases {
            let err = m.decode().unwrap_err();
            assert_eq!(err.code(), code, "{err}");
            assert!(err.reason().starts_with(code));
        }
    }

    #[test]
    fn invalid_values_are_rejected() {
        for (field, value) in [
            ("\"amount_cents\":2999", "\"amount_cents\":0"),
            ("\"amount_cents\":2999", "\"amount_cents\":-5"),
            ("\"amount_cents\":2999", "\"amount_cents\":100000001"),
            ("\"currency\":\"BRL\"", "\"currency\":\"brl\""),
            ("\"currency\":\"BRL\"", "\"currency\":\"REAL\""),
        ] {
            let body = SAMPLE_JSON.replace(field, value);
            let err = message(body.as_bytes()).decode().unwrap_err();
            assert_eq!(err.code(), "invalid-event", "{value}: {err}");
        }
        let body = SAMPLE_JSON.replace("2999", "29.99");
        assert_eq!(
            message(body.as_bytes()).decode().unwrap_err().code(),
            "malformed-body"
        );
    }

    #[test]
    fn untrusted_text_in_errors_is_bounded() {
        let long = "x".repeat(10_000);
        let m = InboundMessage {
            event_type: Some(&long),
            ..message(b"{}")
        };
        assert!(m.decode().unwrap_err().to_string().len() < 200);
    }
}

/// Fuzzing the decoder: whatever a stranger puts on the queue, it answers with
/// an event or a reason, never a panic, and never turns garbage into an event.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::{tests::message as envelope, *};

    fn valid_event() -> impl Strategy<Value = OrderCreatedV1> {
        (
            any::<u128>(),
            // The bounds often: a corrupted digit of them is out of range.
            prop_oneof![1..=MAX_AMOUNT_CENTS, Just(MAX_AMOUNT_CENTS), 1..=9_i64],
            "[A-Z]{3}",
            // 2000-01-01 .. 2100-01-01, microsecond precision.
            946_684_800_000_000_i64..4_102_444_800_000_000,
            prop::option::of("[a-zA-Z0-9|@._-]{1,64}"),
        )
            .prop_map(
                |(id, amount_cents, currency, micros, customer)| OrderCreatedV1 {
                    order_id: Uuid::from_u128(id),
                    amount_cents,
                    currency: Currency::try_from(currency.as_str()).unwrap(),
                    created_at: OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(micros) * 1_000,
                    )
                    .unwrap(),
                    customer_id: customer.map(|c| CustomerId::try_from(c).unwrap()),
                },
            )
    }

    /// Bodies near the real thing: valid JSON with values of every type in the
    /// event's fields, plus arbitrary extra fields.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("order_id".to_owned()),
                        Just("amount_cents".to_owned()),
                        Just("currency".to_owned()),
                        Just("created_at".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn every_valid_event_decodes_to_itself(event in valid_event()) {
            let body = serde_json::to_vec(&event).unwrap();
            let decoded = envelope(&body).decode().unwrap();
            prop_assert_eq!(decoded.event, Event::OrderCreatedV1(event));
        }

        #[test]
        fn random_bytes_are_refused_with_a_reason(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let err = envelope(&body).decode().unwrap_err();
            prop_assert!(["malformed-body", "invalid-event"].contains(&err.code()), "{err}");
            prop_assert!(err.reason().len() < 400, "unbounded reason: {}", err.reason());
        }

        #[test]
        fn json_of_the_wrong_shape_never_becomes_an_event(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            match envelope(&body).decode() {
                // Only a body carrying all four fields with valid values decodes,
                // and then to exactly those values.
                Ok(decoded) => {
                    let Event::OrderCreatedV1(e) = decoded.event;
                    prop_assert_eq!(value["amount_cents"].as_i64(), Some(e.amount_cents));
                    prop_assert_eq!(value["currency"].as_str(), Some(e.currency.as_str()));
                }
                Err(err) => prop_assert!(
                    ["malformed-body", "invalid-event"].contains(&err.code()),
                    "{err}"
                ),
            }
        }

        #[test]
        fn a_truncated_or_corrupted_event_is_refused(
            event in valid_event(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let body = serde_json::to_vec(&event).unwrap();
            let truncated = &body[..cut.index(body.len())];
            prop_assert!(envelope(truncated).decode().is_err());
            let mut corrupted = body.clone();
            let at = flip.index(corrupted.len());
            corrupted[at] = byte;
            // A changed byte either breaks the event or still decodes, never
            // panics; what decodes holds values in range (checked here without
            // the decoder's own `validate`), and one byte changed at most one field.
            if let Ok(decoded) = envelope(&corrupted).decode() {
                let Event::OrderCreatedV1(e) = decoded.event;
                prop_assert!(
                    (1..=MAX_AMOUNT_CENTS).contains(&e.amount_cents),
                    "{} decoded from {:?}", e.amount_cents, String::from_utf8_lossy(&corrupted)
                );
                prop_assert!(e.currency.as_str().bytes().all(|b| b.is_ascii_uppercase()));
                prop_assert_eq!(e.currency.as_str().len(), 3);
                let changed = [
                    e.order_id != event.order_id,
                    e.amount_cents != event.amount_cents,
                    e.currency != event.currency,
                    e.created_at != event.created_at,
                    e.customer_id != event.customer_id,
                ];
                prop_assert!(
                    changed.iter().filter(|c| **c).count() <= 1,
                    "one byte changed several fields: {:?} became {:?}", event, e
                );
            }
        }

        /// The envelope's checks run in a fixed order and the first that fails
        /// names the reason: predicted here from the inputs alone.
        #[test]
        fn any_envelope_is_decoded_or_refused_with_the_first_failing_check(
            message_id in prop::option::of(prop_oneof![
                any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
                ".{0,40}",
            ]),
            event_type in prop::option::of(prop_oneof![Just("OrderCreated".to_owned()), ".{0,20}"]),
            version in prop::option::of(prop_oneof![
                Just(Ok(1)),
                any::<i64>().prop_map(Ok),
                ".{0,10}".prop_map(Err),
            ]),
            content_type in prop::option::of(prop_oneof![
                Just("application/json".to_owned()),
                Just("Application/JSON; charset=utf-8".to_owned()),
                ".{0,30}",
            ]),
        ) {
            let body = serde_json::to_vec(&OrderCreatedV1 {
                order_id: Uuid::nil(),
                amount_cents: 1,
                currency: Currency::BRL,
                created_at: OffsetDateTime::UNIX_EPOCH,
                customer_id: None,
            })
            .unwrap();
            let message = InboundMessage {
                message_id: message_id.as_deref(),
                event_type: event_type.as_deref(),
                schema_version: version.as_ref().map(|v| v.as_ref().map(|n| *n).map_err(String::as_str)),
                content_type: content_type.as_deref(),
                body: &body,
            };
            let expected = match (&message_id, &event_type, &version, &content_type) {
                (None, ..) => Some("missing-message-id"),
                (Some(id), ..) if Uuid::try_parse(id).is_err() => Some("invalid-message-id"),
                (_, None, ..) => Some("missing-type"),
                (_, Some(t), ..) if t != "OrderCreated" => Some("unknown-type"),
                (_, _, None | Some(Err(_)), _) => Some("invalid-schema-version"),
                (.., Some(ct))
                    if !ct.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json") =>
                {
                    Some("wrong-content-type")
                }
                (_, _, Some(Ok(v)), _) if *v != 1 => Some("unsupported-version"),
                _ => None,
            };
            match message.decode() {
                Ok(decoded) => {
                    prop_assert_eq!(expected, None);
                    prop_assert_eq!(
                        Some(decoded.message_id),
                        message_id.as_deref().and_then(|id| Uuid::try_parse(id).ok())
                    );
                }
                Err(err) => {
                    prop_assert_eq!(Some(err.code()), expected, "{}", err);
                    prop_assert!(err.reason().len() < 600, "unbounded reason: {}", err.reason());
                }
            }
        }
    }
}
