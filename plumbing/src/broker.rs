//! RabbitMQ: connecting, declaring the topology, and translating between the
//! contracts' envelope and AMQP properties.

use std::time::Duration;

use futures::StreamExt;

use contracts::{InboundMessage, Topology, headers, topology::DELIVERY_LIMIT};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// How long connecting (TCP, TLS, AMQP handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The client library reported an error.
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting to the broker timed out after {0:?}")]
    ConnectTimeout(Duration),
}

/// Opens a connection named `name` (shown in the management UI).
///
/// # Errors
/// [`BrokerError`] when the broker is unreachable, refuses the login, or is slow.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| BrokerError::ConnectTimeout(CONNECT_TIMEOUT))?
        .map_err(BrokerError::from)
}

/// Resolves with the error once `connection` fails: the socket broke, the broker
/// closed it, or heartbeats stopped. It sees the failures after the call, so
/// call it right after connecting (one watcher per connection: lapin hands each
/// event to one listener).
///
/// A session selects on it beside its work. lapin does not settle every pending
/// operation when the connection dies (an ack's future can stay pending for
/// ever), so a session that only awaited its own operations could hang with
/// the connection gone instead of reconnecting.
pub fn lost(connection: &Connection) -> impl Future<Output = lapin::Error> + Send + 'static {
    let mut events = connection.events_listener();
    async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(error) = event {
                return error;
            }
        }
        // The event stream ends only with the connection itself, which the
        // session owns: it is ending anyway.
        std::future::pending().await
    }
}

/// Declares the exchange events are published to: all the relay declares. The
/// queues belong to their consumer: declaring the invoices queue, with its
/// dead-letter exchange, would need read access to it and write access to that
/// exchange (RabbitMQ checks both), rights the relay's broker user does not have.
/// `provision-broker` declares the whole topology before either service starts.
///
/// # Errors
/// The broker's error, e.g. `ACCESS_REFUSED` or an exchange of another type.
pub async fn declare_exchange(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    channel
        .exchange_declare(
            short_string(&topology.exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Declares every exchange, queue and binding of the pipeline. Idempotent: the
/// worker calls it at start-up and `provision-broker` before the services start.
///
/// The invoices queue is a durable quorum queue with a delivery limit whose
/// dead-letter exchange routes to the dead-letter queue: a message that keeps
/// failing ends there instead of looping forever.
///
/// # Errors
/// The broker's error, e.g. when an existing queue was declared with other arguments.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    declare_exchange(channel, topology).await?;
    channel
        .exchange_declare(
            short_string(&topology.dead_letter_exchange),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), string("quorum"));
    channel
        .queue_declare(
            short_string(&topology.dead_letter_queue),
            durable_queue,
            dlq_args,
        )
        .await?;
    channel
        .queue_bind(
            short_string(&topology.dead_letter_queue),
            short_string(&topology.dead_letter_exchange),
            short_string(topology.dead_letter_routing_key()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        string(&topology.dead_letter_exchange),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        string(topology.dead_letter_routing_key()),
    );
    channel
        .queue_declare(
            short_string(&topology.order_created_queue),
            durable_queue,
            args,
        )
        .await?;
    // Requeued dead letters come back through the dead-letter exchange.
    channel
        .queue_bind(
            short_string(&topology.order_created_queue),
            short_string(&topology.dead_letter_exchange),
            short_string(&topology.requeue_routing_key()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    bind_event_queue(channel, topology).await
}

/// Binds the invoices queue to the exchange for every event type it consumes.
async fn bind_event_queue(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    for event_type in [contracts::EventType::OrderCreated] {
        channel
            .queue_bind(
                short_string(&topology.order_created_queue),
                short_string(&topology.exchange),
                event_type.routing_key().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Binds the invoices queue to the exchange again, if the queue exists: what the
/// relay does after declaring its exchange. An exchange that was deleted (by an
/// operator, or lost by the broker) takes its bindings with it, and the relay
/// re-declares it on reconnecting; without the binding, every event it publishes
/// would come back unroutable until the worker next reconnects, which a worker
/// that is consuming has no reason to do. Binding needs write access to the queue
/// and read access to the exchange, nothing that lets the relay consume, purge or
/// declare a queue.
///
/// On a channel of its own: binding a queue that does not exist yet (no worker
/// has declared it) closes the channel it is asked on, and that is no error here.
///
/// # Errors
/// The broker's error other than a missing queue, e.g. `ACCESS_REFUSED`.
pub async fn restore_binding(connection: &Connection, topology: &Topology) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    match bind_event_queue(&channel, topology).await {
        Ok(()) => {
            let _ = channel.close(200, "bound".into()).await;
            Ok(())
        }
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404) => {
            tracing::debug!(queue = %topology.order_created_queue, "no queue to bind yet");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What a broker user may do in its vhost: RabbitMQ's three regular expressions,
/// matched against the names of exchanges and queues (see the access-control
/// guide). Each is anchored and lists exact names, so a user of one namespace
/// can touch nothing of another, nor anything outside the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Declaring (and deleting) exchanges and queues.
    pub configure: String,
    /// Publishing to an exchange; binding a queue (write on the queue); declaring
    /// a queue with a dead-letter exchange (write on that exchange).
    pub write: String,
    /// Consuming from and getting from a queue; binding to an exchange (read on
    /// the exchange); declaring a queue with a dead-letter exchange (read on the
    /// queue).
    pub read: String,
}

impl Permissions {
    /// The relay's: it declares the exchange ([`declare_exchange`]), binds the
    /// invoices queue to it again ([`restore_binding`]) and publishes to it,
    /// nothing else. It cannot consume, purge or declare a queue, nor publish to
    /// the dead-letter exchange or through the default exchange.
    #[must_use]
    pub fn relay(topology: &Topology) -> Self {
        Self {
            configure: only(&[&topology.exchange]),
            write: only(&[&topology.exchange, &topology.order_created_queue]),
            read: only(&[&topology.exchange]),
        }
    }

    /// The worker's: it declares the whole topology ([`declare_topology`]: the
    /// exchange too, so that it may start first, and binds its queue to it),
    /// consumes its queue, publishes dead letters to the dead-letter exchange,
    /// and its `dlq` commands get from the dead-letter queue and requeue through
    /// the dead-letter exchange. It cannot publish to the exchange.
    #[must_use]
    pub fn worker(topology: &Topology) -> Self {
        let queues = [&topology.order_created_queue, &topology.dead_letter_queue];
        let mut everything = vec![&topology.exchange, &topology.dead_letter_exchange];
        everything.extend(queues);
        let mut written = vec![&topology.dead_letter_exchange];
        written.extend(queues);
        Self {
            configure: only(&everything),
            write: only(&written),
            read: only(&everything),
        }
    }
}

/// A regular expression matching exactly `names` (none: `^$`, which matches no
/// exchange or queue; the default exchange is checked as `amq.default`).
fn only(names: &[&String]) -> String {
    if names.is_empty() {
        return "^$".to_owned();
    }
    let escaped: Vec<String> = names
        .iter()
        .map(|name| {
            name.chars()
                .flat_map(|c| {
                    let meta = r"\.^$|?*+()[]{}".contains(c);
                    meta.then_some('\\').into_iter().chain([c])
                })
                .collect()
        })
        .collect();
    format!("^({})$", escaped.join("|"))
}

/// Why a broker URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{url} is not a broker URL such as amqps://user:password@host:5671/%2f: {reason}")]
pub struct UrlError {
    /// The URL, password hidden.
    pub url: String,
    /// What is wrong.
    pub reason: String,
}

fn parse(url: &str) -> Result<lapin::uri::AMQPUri, UrlError> {
    url.parse().map_err(|reason| UrlError {
        url: crate::config::redact_url(url),
        reason,
    })
}

/// The virtual host `url` connects to, as the client library reads it (no path
/// is the default vhost `/`, `%2f` too).
///
/// # Errors
/// [`UrlError`] when `url` is not an AMQP URL.
pub fn vhost(url: &str) -> Result<String, UrlError> {
    Ok(parse(url)?.vhost)
}

/// `url` with another user and password: the same broker, vhost and options.
///
/// # Errors
/// [`UrlError`] when `url` is not an AMQP URL.
pub fn with_credentials(url: &str, user: &str, password: &str) -> Result<String, UrlError> {
    let mut uri = parse(url)?;
    uri.authority.userinfo.username = user.to_owned();
    uri.authority.userinfo.password = password.to_owned();
    Ok(uri.to_string())
}

/// An AMQP short string (names, routing keys, property values). Ours are short
/// constants plus a namespace whose length the configuration bounds; anything over
/// AMQP's 255-byte limit is cut rather than panicking.
#[must_use]
pub fn short_string(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_else(|_| {
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        ShortString::from(&s[..end])
    })
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// What the relay knows of an event when it publishes it.
#[derive(Debug, Clone)]
pub struct Outbound<'a> {
    /// Outbox message id.
    pub message_id: uuid::Uuid,
    /// Event type name.
    pub event_type: &'a str,
    /// Schema version.
    pub schema_version: i64,
    /// When the event was written (seconds since the epoch).
    pub timestamp: u64,
    /// Extra string headers: trace context, correlation id, replay marker.
    pub headers: Vec<(&'a str, String)>,
}

impl Outbound<'_> {
    /// The AMQP properties of the event: persistent, JSON, with message id, type,
    /// timestamp and the schema version and extra headers.
    #[must_use]
    pub fn properties(&self) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(
            headers::SCHEMA_VERSION.into(),
            AMQPValue::LongLongInt(self.schema_version),
        );
        for (key, value) in &self.headers {
            if let Ok(key) = ShortString::try_new(*key) {
                table.insert(key, AMQPValue::LongString(value.as_str().into()));
            }
        }
        BasicProperties::default()
            .with_message_id(self.message_id.to_string().into())
            .with_type(short_string(self.event_type))
            .with_content_type(contracts::CONTENT_TYPE_JSON.into())
            .with_delivery_mode(2)
            .with_timestamp(self.timestamp)
            .with_headers(table)
    }
}

/// The parts of a delivery the contracts' decoder reads.
#[must_use]
pub fn inbound(delivery: &Delivery) -> InboundMessage<'_> {
    let p = &delivery.properties;
    InboundMessage {
        message_id: p.message_id().as_ref().map(ShortString::as_str),
        event_type: p.kind().as_ref().map(ShortString::as_str),
        schema_version: p
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(headers::SCHEMA_VERSION))
            .map(as_integer),
        content_type: p.content_type().as_ref().map(ShortString::as_str),
        body: &delivery.data,
    }
}

/// A string header's value, if present and textual.
#[must_use]
pub fn header_str<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

fn as_integer(value: &AMQPValue) -> Result<i64, &'static str> {
    match value {
        AMQPValue::ShortShortInt(v) => Ok(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Ok(i64::from(*v)),
        AMQPValue::ShortInt(v) => Ok(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Ok(i64::from(*v)),
        AMQPValue::LongInt(v) => Ok(i64::from(*v)),
        AMQPValue::LongUInt(v) => Ok(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Ok(*v),
        _ => Err("a non-integer value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_properties_carry_the_envelope() {
        let id = uuid::Uuid::nil();
        let props = Outbound {
            message_id: id,
            event_type: "OrderCreated",
            schema_version: 1,
            timestamp: 1_700_000_000,
            headers: vec![(headers::TRACEPARENT, "00-abc-def-01".into())],
        }
        .properties();
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(
            header_str(&props, headers::TRACEPARENT),
            Some("00-abc-def-01")
        );
        let mut delivery = Delivery::mock(
            1,
            "orders".into(),
            "order.created".into(),
            false,
            b"{}".to_vec(),
        );
        delivery.properties = props;
        let m = inbound(&delivery);
        assert_eq!(m.message_id, Some(id.to_string().as_str()));
        assert_eq!(m.event_type, Some("OrderCreated"));
        assert_eq!(m.schema_version, Some(Ok(1)));
    }
}
