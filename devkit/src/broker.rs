//! An isolated broker namespace per test: every exchange and queue name gets a
//! unique prefix, and all of them are deleted when the test ends.

use contracts::Topology;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection,
    message::{BasicGetMessage, Delivery},
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, ConfirmSelectOptions,
        ExchangeDeleteOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use plumbing::{
    broker::short_string,
    publish::{self, Message},
};

/// Longest wait for a test publish's writes and for its confirms.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Broker URL; `TEST_BROKER_URL` overrides it.
#[must_use]
pub fn broker_url() -> String {
    std::env::var("TEST_BROKER_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `host:port` of the broker (for a fault proxy in front of it).
#[must_use]
pub fn server_addr() -> String {
    crate::server_addr(&broker_url(), 5672)
}

/// A namespace of broker objects for one test.
pub struct TestBroker {
    /// Broker URL.
    pub url: String,
    /// The prefix (`BROKER_NAMESPACE` for the services).
    pub namespace: String,
    /// The names in this namespace.
    pub topology: Topology,
    connection: tokio::sync::OnceCell<Connection>,
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBroker {
    /// A fresh namespace (nothing is declared until a service or [`Self::declare`] does).
    #[must_use]
    pub fn new() -> Self {
        let namespace = format!("t{}", crate::unique_suffix());
        Self {
            url: broker_url(),
            topology: Topology::namespaced(&namespace),
            namespace,
            connection: tokio::sync::OnceCell::new(),
        }
    }

    /// A new connection.
    pub async fn connect(&self) -> Connection {
        plumbing::broker::connect(&self.url, "devkit")
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {}: {e}", self.url))
    }

    /// A new channel on the test's shared connection.
    pub async fn channel(&self) -> Channel {
        self.connection
            .get_or_init(|| self.connect())
            .await
            .create_channel()
            .await
            .unwrap()
    }

    /// Declares the topology, as the services do at start-up.
    pub async fn declare(&self) {
        let channel = self.channel().await;
        plumbing::broker::declare_topology(&channel, &self.topology)
            .await
            .unwrap();
    }

    /// Unbinds the invoices queue from the exchange: `OrderCreated` becomes unroutable.
    pub async fn unbind_order_created(&self) {
        self.channel()
            .await
            .queue_unbind(
                short_string(&self.topology.order_created_queue),
                short_string(&self.topology.exchange),
                contracts::EventType::OrderCreated.routing_key().into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Publishes raw bytes to the exchange with routing key `order.created`, with
    /// confirms, as a stranger (or a buggy producer) might.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        self.publish_to(
            &self.topology.exchange,
            contracts::EventType::OrderCreated.routing_key(),
            body,
            properties,
        )
        .await;
    }

    /// Publishes `n` persistent messages made by `message` (body, properties) to
    /// the exchange with routing key `order.created` and `mandatory`, at most
    /// `window` unconfirmed, the publishes of a window driven together (as the relay
    /// does). Panics unless every message is acked and routed.
    pub async fn publish_many(
        &self,
        n: usize,
        window: usize,
        mut message: impl FnMut() -> (Vec<u8>, lapin::BasicProperties),
    ) {
        let channel = self.channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut sent = 0;
        while sent < n {
            let chunk = window.min(n - sent);
            let messages: Vec<_> = (0..chunk).map(|_| message()).collect();
            let window = messages.iter().map(|(body, properties)| {
                Ok(Message {
                    exchange: &self.topology.exchange,
                    routing_key: "order.created",
                    body,
                    properties: properties.clone(),
                })
            });
            let outcomes = publish::start(&channel, window, PUBLISH_TIMEOUT)
                .await
                .settle(PUBLISH_TIMEOUT)
                .await;
            for outcome in outcomes {
                outcome.into_result().unwrap();
            }
            sent += chunk;
        }
    }

    /// Publishes an empty marker with a fresh message id (returned) to the
    /// exchange under the routing key `test.marker`, which only taps
    /// ([`Self::tap`]) receive. A queue delivers in order: once a tap receives the
    /// marker it has received everything confirmed to the exchange before it, so
    /// the marker proves that nothing else is coming.
    pub async fn publish_marker(&self) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.publish_to(
            &self.topology.exchange,
            "test.marker",
            b"",
            BasicProperties::default().with_message_id(id.as_str().into()),
        )
        .await;
        id
    }

    /// Publishes an empty marker with a fresh message id (returned) straight to
    /// `queue`: once its consumer receives it, it has received everything
    /// confirmed to the queue before it (see [`Self::publish_marker`]).
    pub async fn publish_marker_to_queue(&self, queue: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.publish_to(
            "",
            queue,
            b"",
            BasicProperties::default().with_message_id(id.as_str().into()),
        )
        .await;
        id
    }

    /// Publishes raw bytes straight to `queue` through the default exchange, as a
    /// stranger who knows the queue's name might, bypassing the topology.
    pub async fn publish_to_queue(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.publish_to("", queue, body, properties).await;
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let channel = self.channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let message = Message {
            exchange,
            routing_key,
            body,
            properties,
        };
        let outcome = publish::publish_confirmed(&channel, message, PUBLISH_TIMEOUT).await;
        if let Err(e) = outcome.into_result() {
            panic!("test publish not confirmed: {e}");
        }
    }

    /// Takes (and acks) one message from `queue`, if any.
    pub async fn get(&self, queue: &str) -> Option<Delivery> {
        let channel = self.channel().await;
        let message: Option<BasicGetMessage> = channel
            .basic_get(short_string(queue), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        message.map(|m| m.delivery)
    }

    /// Drops every ready message of `queue`.
    pub async fn purge(&self, queue: &str) {
        self.channel()
            .await
            .queue_purge(
                short_string(queue),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await
            .unwrap();
    }

    /// Number of ready messages in `queue` (passive declare).
    pub async fn ready_count(&self, queue: &str) -> u32 {
        let channel = self.channel().await;
        channel
            .queue_declare(
                short_string(queue),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// A private copy of everything published to the exchange: an exclusive,
    /// auto-deleted queue bound with `#`, consumed like [`Self::watch`].
    pub async fn tap(&self) -> tokio::sync::mpsc::UnboundedReceiver<Delivery> {
        let channel = self.channel().await;
        let queue = channel
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                short_string(&self.topology.exchange),
                "#".into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.consume(None, channel, queue.name().as_str()).await
    }

    /// Consumes `queue` in the background; received deliveries (acked at once) are
    /// sent to the returned channel. Used to watch what the relay publishes.
    pub async fn watch(&self, queue: &str) -> tokio::sync::mpsc::UnboundedReceiver<Delivery> {
        let connection = self.connect().await;
        let channel = connection.create_channel().await.unwrap();
        self.consume(Some(connection), channel, queue).await
    }

    /// Consumes `queue` on `channel` in a task that also keeps `connection` open.
    async fn consume(
        &self,
        connection: Option<Connection>,
        channel: Channel,
        queue: &str,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Delivery> {
        let mut consumer = channel
            .basic_consume(
                short_string(queue),
                "devkit-watch".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _keep = (connection, channel);
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                if tx.send(delivery).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let url = self.url.clone();
        let t = self.topology.clone();
        crate::block_on_cleanup(async move {
            let Ok(connection) = plumbing::broker::connect(&url, "devkit-cleanup").await else {
                return;
            };
            let Ok(channel) = connection.create_channel().await else {
                return;
            };
            for queue in [&t.order_created_queue, &t.dead_letter_queue] {
                let _ = channel
                    .queue_delete(short_string(queue), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in [&t.exchange, &t.dead_letter_exchange] {
                let _ = channel
                    .exchange_delete(short_string(exchange), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "cleanup".into()).await;
        });
    }
}

/// The broker's management API with the admin's credentials;
/// `TEST_BROKER_ADMIN_URL` overrides it.
#[must_use]
pub fn admin_url() -> String {
    std::env::var("TEST_BROKER_ADMIN_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into())
}

/// Whether the broker refused an operation for want of permission
/// (`ACCESS_REFUSED`, 403).
#[must_use]
pub fn refused(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 403)
}

/// The relay's and the worker's broker users of one test, made by the real
/// `outbox-relay provision-broker` with unique names and passwords; deleted
/// (with the vhost, when the test made its own) when the test ends.
pub struct BrokerUsers {
    /// The broker URL provisioned for (its vhost), with the admin's credentials.
    pub url: String,
    /// The namespace provisioned for.
    pub namespace: String,
    /// The relay's user name.
    pub relay: String,
    /// The worker's user name.
    pub worker: String,
    /// The relay's password.
    pub relay_password: String,
    /// The worker's password.
    pub worker_password: String,
    own_vhost: Option<String>,
}

impl BrokerUsers {
    /// Users for `namespace` in the vhost of `url` (not yet provisioned).
    /// `own_vhost`: the test's own vhost, deleted at the end.
    #[must_use]
    pub fn new(url: &str, namespace: &str, own_vhost: Option<String>) -> Self {
        let suffix = crate::unique_suffix();
        Self {
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            relay: format!("t_relay_{suffix}"),
            worker: format!("t_worker_{suffix}"),
            relay_password: uuid::Uuid::new_v4().simple().to_string(),
            worker_password: uuid::Uuid::new_v4().simple().to_string(),
            own_vhost,
        }
    }

    /// The environment of `outbox-relay provision-broker` for these users.
    #[must_use]
    pub fn provision_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BROKER_ADMIN_URL", admin_url()),
            ("BROKER_URL", self.url.clone()),
            ("BROKER_NAMESPACE", self.namespace.clone()),
            ("RELAY_BROKER_USER", self.relay.clone()),
            ("RELAY_BROKER_PASSWORD", self.relay_password.clone()),
            ("WORKER_BROKER_USER", self.worker.clone()),
            ("WORKER_BROKER_PASSWORD", self.worker_password.clone()),
        ]
    }

    /// Runs `outbox-relay provision-broker` with [`Self::provision_env`] and
    /// `extra` on top; returns its output whatever its exit status.
    pub async fn run_provision(&self, extra: &[(&str, String)]) -> std::process::Output {
        tokio::process::Command::new(crate::process::binary_path("outbox-relay"))
            .arg("provision-broker")
            .env_remove("RUST_LOG")
            .envs(self.provision_env())
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run outbox-relay provision-broker: {e}"))
    }

    /// Provisions the users; panics with the command's output when it fails.
    pub async fn provision(&self) {
        let output = self.run_provision(&[]).await;
        assert!(
            output.status.success(),
            "provision-broker failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The broker URL of the relay's user.
    #[must_use]
    pub fn relay_url(&self) -> String {
        plumbing::broker::with_credentials(&self.url, &self.relay, &self.relay_password).unwrap()
    }

    /// The broker URL of the worker's user.
    #[must_use]
    pub fn worker_url(&self) -> String {
        plumbing::broker::with_credentials(&self.url, &self.worker, &self.worker_password).unwrap()
    }
}

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        let users = [self.relay.clone(), self.worker.clone()];
        let vhost = self.own_vhost.take();
        crate::block_on_cleanup(async move {
            let Ok(admin) = plumbing::management::Management::new(&admin_url()) else {
                return;
            };
            for user in &users {
                let _ = admin.delete_user(user).await;
            }
            if let Some(vhost) = vhost {
                let _ = admin.delete_vhost(&vhost).await;
            }
        });
    }
}
