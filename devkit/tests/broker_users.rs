//! Broker users of their own for the relay and the worker, made by the real
//! `outbox-relay provision-broker` through the management API: each service
//! runs with its own (the pipeline works end to end), and each is refused
//! (`ACCESS_REFUSED`) what the other does, other names and other namespaces.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use devkit::{
    auth::Issuer,
    broker::{BrokerUsers, TestBroker, refused},
    db::TestDatabase,
    eventually,
    process::Service,
};
use lapin::{
    BasicProperties, Confirmation, Connection, ExchangeKind,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use plumbing::broker::short_string;

/// Longest wait for one broker operation of these tests.
const STEP: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Connection {
    plumbing::broker::connect(url, "broker-users-test")
        .await
        .unwrap()
}

/// Publishes one message to `exchange` on a fresh confirm channel.
async fn publish(connection: &Connection, exchange: &str, routing_key: &str) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm = channel
        .basic_publish(
            short_string(exchange),
            short_string(routing_key),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await?;
    let confirmation = tokio::time::timeout(STEP, confirm)
        .await
        .unwrap_or_else(|_| panic!("publish to {exchange:?}: no confirm and no error"))?;
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "publish to {exchange:?}: {confirmation:?}"
    );
    Ok(())
}

/// Takes one message from `queue` (none is fine) on a fresh channel.
async fn get(connection: &Connection, queue: &str) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .basic_get(short_string(queue), BasicGetOptions { no_ack: true })
        .await
        .map(drop)
}

/// Declares a durable exchange `name` on a fresh channel.
async fn declare_exchange(connection: &Connection, name: &str) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            short_string(name),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
}

/// Declares a classic queue `name` on a fresh channel.
async fn declare_queue(connection: &Connection, name: &str) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            short_string(name),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(drop)
}

/// Asserts that `result` is the broker's `ACCESS_REFUSED`.
#[track_caller]
fn assert_refused(result: lapin::Result<()>, what: &str) {
    match result {
        Err(e) if refused(&e) => {}
        other => panic!("{what}: expected ACCESS_REFUSED, got {other:?}"),
    }
}

/// Two namespaces in the default vhost, each with its users provisioned.
async fn two_namespaces() -> (TestBroker, BrokerUsers, TestBroker, BrokerUsers) {
    let a = TestBroker::new();
    let b = TestBroker::new();
    let users_a = BrokerUsers::new(&a.url, &a.namespace, None);
    let users_b = BrokerUsers::new(&b.url, &b.namespace, None);
    users_a.provision().await;
    users_b.provision().await;
    (a, users_a, b, users_b)
}

#[tokio::test]
async fn the_relay_and_the_worker_run_under_their_own_users_and_an_order_gets_its_invoice() {
    // Arrange: a vhost of the test's own (a '/' in its name, percent-encoded in
    // URLs), created by the provisioning, where the admin alone had rights.
    let vhost = format!("t{}/users", devkit::unique_suffix());
    let mut uri: lapin::uri::AMQPUri = devkit::broker::broker_url().parse().unwrap();
    uri.vhost = vhost.clone();
    let namespace = format!("t{}", devkit::unique_suffix());
    let users = BrokerUsers::new(&uri.to_string(), &namespace, Some(vhost));
    users.provision().await;
    let orders = TestDatabase::reserve("users_orders");
    let invoices = TestDatabase::reserve("users_invoices");
    let env = |db: &TestDatabase, broker_url: String| {
        vec![
            ("DATABASE_URL", db.url.clone()),
            ("PORT", "0".to_owned()),
            ("BROKER_URL", broker_url),
            ("BROKER_NAMESPACE", namespace.clone()),
        ]
    };
    let issuer = Issuer::new();
    let mut api_env = env(&orders, String::new())[..2].to_vec();
    api_env.extend(issuer.env());
    let api = Service::spawn("orders-api", &api_env, false).await;
    let relay = Service::spawn("outbox-relay", &env(&orders, users.relay_url()), false).await;

    // Act: an order while only the relay runs (the provisioning declared the
    // queue, so its event is routed), then the worker starts.
    let res = issuer
        .client()
        .post(format!("{}/orders", api.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"amount": "12.34"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    eventually(Duration::from_secs(5), "the event published", || async {
        (orders.unpublished().await == 0).then_some(())
    })
    .await;
    let worker = Service::spawn(
        "invoices-worker",
        &env(&invoices, users.worker_url()),
        false,
    )
    .await;

    // Assert
    eventually(Duration::from_secs(10), "the invoice", || async {
        (invoices.count("invoices").await == 1).then_some(())
    })
    .await;
    for service in [&api, &relay, &worker] {
        let errors: Vec<String> = service
            .logs()
            .into_iter()
            .filter(|l| l.contains("ACCESS_REFUSED") || l.contains("\"ERROR\""))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", service.name);
    }
}

#[tokio::test]
async fn the_relay_user_may_declare_and_publish_to_its_exchange_and_nothing_else() {
    let (a, users, b, _b_users) = two_namespaces().await;
    let relay = connect(&users.relay_url()).await;
    let t = &a.topology;
    let routing_key = contracts::EventType::OrderCreated.routing_key();

    // What the relay does.
    let channel = relay.create_channel().await.unwrap();
    plumbing::broker::declare_exchange(&channel, t)
        .await
        .unwrap();
    publish(&relay, &t.exchange, routing_key).await.unwrap();
    // A deleted exchange takes its bindings: the relay binds the queue again.
    plumbing::broker::restore_binding(&relay, t).await.unwrap();

    // What it must not.
    let channel = relay.create_channel().await.unwrap();
    assert_refused(
        channel
            .queue_bind(
                short_string(&t.order_created_queue),
                short_string(&t.dead_letter_exchange),
                short_string(t.dead_letter_routing_key()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await,
        "bind the invoices queue to another exchange",
    );
    assert_refused(
        get(&relay, &t.order_created_queue).await,
        "consume the invoices queue",
    );
    assert_refused(get(&relay, &t.dead_letter_queue).await, "get from the DLQ");
    assert_refused(
        publish(&relay, &t.dead_letter_exchange, t.dead_letter_routing_key()).await,
        "publish to the dead-letter exchange",
    );
    assert_refused(
        publish(&relay, "", &t.order_created_queue).await,
        "publish to the default exchange",
    );
    let channel = relay.create_channel().await.unwrap();
    assert_refused(
        plumbing::broker::declare_topology(&channel, t).await,
        "declare the worker's topology",
    );
    assert_refused(
        declare_exchange(&relay, &format!("{}.other", a.namespace)).await,
        "declare another exchange",
    );
    assert_refused(
        declare_queue(&relay, &format!("{}.other", a.namespace)).await,
        "declare a queue",
    );
    // Namespace B.
    assert_refused(
        publish(&relay, &b.topology.exchange, routing_key).await,
        "publish to another namespace's exchange",
    );
    assert_refused(
        declare_exchange(&relay, &b.topology.exchange).await,
        "declare another namespace's exchange",
    );
}

#[tokio::test]
async fn the_worker_user_may_run_its_queues_and_not_publish_events() {
    let (a, users, b, _b_users) = two_namespaces().await;
    let worker = connect(&users.worker_url()).await;
    let t = &a.topology;
    let routing_key = contracts::EventType::OrderCreated.routing_key();

    // What the worker does: its topology, its queue, the DLQ, dead letters and
    // requeues through the dead-letter exchange.
    let channel = worker.create_channel().await.unwrap();
    plumbing::broker::declare_topology(&channel, t)
        .await
        .unwrap();
    get(&worker, &t.order_created_queue).await.unwrap();
    get(&worker, &t.dead_letter_queue).await.unwrap();
    publish(
        &worker,
        &t.dead_letter_exchange,
        t.dead_letter_routing_key(),
    )
    .await
    .unwrap();
    publish(&worker, &t.dead_letter_exchange, &t.requeue_routing_key())
        .await
        .unwrap();
    // `dlq requeue` under the worker's user: the dead letter goes home.
    a.purge(&t.order_created_queue).await;
    assert_eq!(a.ready_count(&t.dead_letter_queue).await, 1, "the premise");
    let requeued = invoices_worker::dlq::requeue(
        &users.worker_url(),
        t,
        &invoices_worker::dlq::Selection::All,
    )
    .await
    .unwrap();
    assert_eq!(requeued, 1);
    assert_eq!(a.ready_count(&t.dead_letter_queue).await, 0);
    assert_eq!(a.ready_count(&t.order_created_queue).await, 1);

    // What it must not.
    assert_refused(
        publish(&worker, &t.exchange, routing_key).await,
        "publish to the events' exchange",
    );
    assert_refused(
        publish(&worker, "", &t.order_created_queue).await,
        "publish to the default exchange",
    );
    assert_refused(
        declare_queue(&worker, &format!("{}.other", a.namespace)).await,
        "declare another queue",
    );
    // Namespace B.
    assert_refused(
        get(&worker, &b.topology.order_created_queue).await,
        "consume another namespace's queue",
    );
    assert_refused(
        publish(
            &worker,
            &b.topology.dead_letter_exchange,
            b.topology.dead_letter_routing_key(),
        )
        .await,
        "publish to another namespace's dead-letter exchange",
    );
    assert_refused(
        declare_queue(&worker, &b.topology.order_created_queue).await,
        "declare another namespace's queue",
    );
}

#[tokio::test]
async fn provisioning_again_is_idempotent_and_a_new_password_applies() {
    let broker = TestBroker::new();
    let users = BrokerUsers::new(&broker.url, &broker.namespace, None);
    let first = users.run_provision(&[]).await;
    assert!(first.status.success(), "{first:?}");
    let old_url = users.relay_url();
    connect(&old_url).await;

    let new_password = uuid::Uuid::new_v4().simple().to_string();
    let again = users
        .run_provision(&[("RELAY_BROKER_PASSWORD", new_password.clone())])
        .await;

    assert!(again.status.success(), "{again:?}");
    assert_eq!(again.stdout, first.stdout, "the same users and permissions");
    let login = plumbing::broker::connect(&old_url, "broker-users-test").await;
    assert!(login.is_err(), "the old password is refused");
    let new_url =
        plumbing::broker::with_credentials(&users.url, &users.relay, &new_password).unwrap();
    let relay = connect(&new_url).await;
    publish(
        &relay,
        &broker.topology.exchange,
        contracts::EventType::OrderCreated.routing_key(),
    )
    .await
    .unwrap();
    for output in [&first, &again] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for secret in [&users.relay_password, &users.worker_password, &new_password] {
            assert!(
                !text.contains(secret.as_str()),
                "a password printed: {text}"
            );
        }
    }
}

#[tokio::test]
async fn provisioning_errors_say_what_is_wrong_and_hide_passwords() {
    let broker = TestBroker::new();
    let users = BrokerUsers::new(&broker.url, &broker.namespace, None);
    let secret = format!("s{}", devkit::unique_suffix());
    let fails = |output: std::process::Output, expected: &[&str]| {
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        for part in expected {
            assert!(stderr.contains(part), "{part:?} not in: {stderr}");
        }
        assert!(!stderr.contains(&secret), "the password printed: {stderr}");
    };

    // Nothing listens (the management plugin off).
    let nowhere = format!("http://guest:{secret}@127.0.0.1:{}", devkit::free_port());
    fails(
        users.run_provision(&[("BROKER_ADMIN_URL", nowhere)]).await,
        &[
            "does not answer",
            "rabbitmq-plugins enable rabbitmq_management",
        ],
    );
    // A wrong admin password.
    let wrong = format!("http://guest:{secret}@127.0.0.1:15672");
    fails(
        users.run_provision(&[("BROKER_ADMIN_URL", wrong)]).await,
        &["refused the credentials of \"guest\"", "401"],
    );
    // A missing password.
    fails(
        users
            .run_provision(&[("WORKER_BROKER_PASSWORD", String::new())])
            .await,
        &["WORKER_BROKER_PASSWORD is not set"],
    );
    // The admin must not be provisioned as a service's user.
    fails(
        users
            .run_provision(&[("RELAY_BROKER_USER", "guest".to_owned())])
            .await,
        &["is the admin of BROKER_ADMIN_URL"],
    );
}
