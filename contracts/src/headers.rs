//! Names of the AMQP headers the pipeline sets and reads.
//!
//! The standard AMQP properties carry the rest of the envelope: `message_id` is the
//! outbox message id (the consumer's deduplication key), `type` is the event type,
//! `content_type` is JSON, `timestamp` is when the event was written.

/// Version of the event's schema (integer); with `type` it selects the decoder.
pub const SCHEMA_VERSION: &str = "x-schema-version";
/// Id of the request that caused the event (the HTTP `x-request-id`).
pub const CORRELATION_ID: &str = "x-correlation-id";
/// W3C trace context of the request that created the event.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state that goes with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// Why a message was dead-lettered by the worker (set on messages in the DLQ).
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
/// Set on messages re-published by an operator's replay; the value is the replay id.
pub const REPLAY: &str = "x-replay";
