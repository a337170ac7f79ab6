//! TLS to the managed services' protocols, against private servers that accept
//! only TLS, with certificates made by a throwaway CA: PostgreSQL with the
//! libpq `sslmode`s, then the whole pipeline (the three binaries) on it; and
//! RabbitMQ over AMQPS (a node of its own) carrying the pipeline's events.

#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Command, time::Duration};

use devkit::{
    auth::Issuer,
    broker::TestBroker,
    db::TestDatabase,
    eventually, free_port,
    process::Service,
    tls_postgres::{TlsPostgres, write_certificates},
    unique_suffix,
};

/// Connects with `url`; `Ok(true)` when the session is encrypted.
async fn session_is_encrypted(url: &str) -> Result<bool, String> {
    let config = plumbing::db::parse_url(url).map_err(|e| e.to_string())?;
    let client = plumbing::db::connect(&config)
        .await
        .map_err(|e| plumbing::telemetry::error_chain(&e))?;
    Ok(client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0))
}

#[tokio::test]
async fn postgres_over_tls_with_libpq_sslmodes_and_the_whole_pipeline() {
    let pg = TlsPostgres::start().unwrap();
    let ca = pg.file("ca.pem");
    let other_ca = pg.file("other-ca.pem");
    let localhost = |params: &str| pg.localhost_url("postgres", params);

    // Verified: the certificate chains to the CA and names the host.
    assert_eq!(
        session_is_encrypted(&localhost(&format!(
            "?sslmode=verify-full&sslrootcert={ca}"
        )))
        .await,
        Ok(true)
    );
    // Encrypted without checking the certificate (libpq's `require`).
    assert_eq!(
        session_is_encrypted(&pg.url("postgres", "?sslmode=require")).await,
        Ok(true)
    );
    // The chain is right but the certificate does not name 127.0.0.1: verify-ca
    // accepts it, verify-full does not.
    assert_eq!(
        session_is_encrypted(&pg.url("postgres", &format!("?sslmode=verify-ca&sslrootcert={ca}")))
            .await,
        Ok(true)
    );
    let err = session_is_encrypted(&pg.url(
        "postgres",
        &format!("?sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    // A certificate from an unknown CA is refused, whatever the name.
    let err = session_is_encrypted(&localhost(&format!(
        "?sslmode=verify-full&sslrootcert={other_ca}"
    )))
    .await
    .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // libpq: `require` with a root certificate checks the chain too.
    assert!(
        session_is_encrypted(&pg.url(
            "postgres",
            &format!("?sslmode=require&sslrootcert={other_ca}")
        ))
        .await
        .is_err()
    );
    // Without sslmode the session is plain, which this server refuses.
    let err = session_is_encrypted(&pg.url("postgres", ""))
        .await
        .unwrap_err();
    assert!(err.contains("no encryption"), "{err}");
    // A bad root file is an error at start-up, with the file's name.
    let err = plumbing::db::parse_url(&pg.url(
        "postgres",
        "?sslmode=verify-full&sslrootcert=/nonexistent.pem",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent.pem"), "{err}");

    // The three binaries on verified TLS: each creates and migrates its database,
    // and an order goes all the way to its invoice.
    let tls = format!("?sslmode=verify-full&sslrootcert={ca}");
    let orders_url = pg.localhost_url("orders", &tls);
    let invoices_url = pg.localhost_url("invoices", &tls);
    let broker = TestBroker::new();
    // The worker's queue exists before the relay publishes, as after
    // provision-broker (the relay declares only its exchange).
    broker.declare().await;
    let broker_env = || {
        [
            ("BROKER_URL", broker.url.clone()),
            ("BROKER_NAMESPACE", broker.namespace.clone()),
            ("PORT", "0".to_owned()),
        ]
    };
    let issuer = Issuer::new();
    let mut api_env = vec![
        ("DATABASE_URL", orders_url.clone()),
        ("PORT", "0".to_owned()),
    ];
    api_env.extend(issuer.env());
    let api = Service::spawn("orders-api", &api_env, false).await;
    let mut relay_env = vec![("DATABASE_URL", orders_url.clone())];
    relay_env.extend(broker_env());
    let relay = Service::spawn("outbox-relay", &relay_env, false).await;
    let mut worker_env = vec![("DATABASE_URL", invoices_url.clone())];
    worker_env.extend(broker_env());
    let worker = Service::spawn("invoices-worker", &worker_env, false).await;

    let http = issuer.client();
    let res = http
        .post(format!("{}/orders", api.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"amount": 12.34}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let invoices = plumbing::db::connect(&plumbing::db::parse_url(&invoices_url).unwrap())
        .await
        .unwrap();
    let cents: i64 = eventually(Duration::from_secs(20), "the invoice", || async {
        invoices
            .query_opt(
                "SELECT amount_cents FROM invoices WHERE order_id::text = $1",
                &[&id],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
    })
    .await;
    assert_eq!(cents, 1234);
    // Every session of the pipeline on this server is encrypted.
    let plain: i64 = invoices
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.backend_type = 'client backend' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);

    for service in [&api, &relay, &worker] {
        service.terminate();
    }
    for mut service in [api, relay, worker] {
        assert!(service.wait(Duration::from_secs(15)).await.success());
    }
}

/// A RabbitMQ node of its own that listens only for AMQPS, on the `localhost`
/// certificate; killed and deleted on drop.
struct TlsRabbit {
    dir: PathBuf,
    port: u16,
    node: tokio::process::Child,
}

impl TlsRabbit {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("pipeline-tls-amqp-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        write_certificates(&dir).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {d}/ca.pem\n\
                 ssl_options.certfile = {d}/server.crt\n\
                 ssl_options.keyfile = {d}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 loopback_users = none\n",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("env.conf"), "").unwrap();
        std::fs::write(dir.join("plugins"), "[].\n").unwrap();
        let server = std::env::var("RABBITMQ_SERVER")
            .unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmq-server".into());
        let file = |name: &str| dir.join(name);
        let node = tokio::process::Command::new(server)
            .env("RABBITMQ_CONF_ENV_FILE", file("env.conf"))
            .env(
                "RABBITMQ_NODENAME",
                format!("tls{}@localhost", unique_suffix()),
            )
            .env("RABBITMQ_CONFIG_FILE", file("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", file("mnesia"))
            .env("RABBITMQ_LOG_BASE", file("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", file("plugins"))
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_PID_FILE", file("node.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start a RabbitMQ node (set RABBITMQ_SERVER)");
        let node = Self { dir, port, node };
        eventually(Duration::from_secs(60), "the AMQPS listener", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        })
        .await;
        node
    }

    fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        // The start script runs the Erlang VM as a child of its own: stop the VM.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("node.pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let _ = self.node.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn events_travel_over_amqps() {
    let rabbit = TlsRabbit::start().await;
    let orders = TestDatabase::reserve("amqps_orders");
    let invoices = TestDatabase::reserve("amqps_invoices");
    let ca = rabbit.dir.join("ca.pem").display().to_string();
    let broker_env = |database: &TestDatabase| {
        vec![
            ("DATABASE_URL", database.url.clone()),
            ("BROKER_URL", rabbit.url()),
            // rustls' system store honours SSL_CERT_FILE: the test CA is trusted.
            ("SSL_CERT_FILE", ca.clone()),
            ("PORT", "0".to_owned()),
        ]
    };
    // Without the CA the certificate is refused: the worker says so and retries.
    let mut untrusting = broker_env(&invoices);
    untrusting.retain(|(k, _)| *k != "SSL_CERT_FILE");
    untrusting.push((
        "SSL_CERT_FILE",
        rabbit.dir.join("other-ca.pem").display().to_string(),
    ));
    let mut refused = Service::spawn("invoices-worker", &untrusting, false).await;
    eventually(Duration::from_secs(20), "a certificate error", || async {
        refused
            .logs()
            .iter()
            .any(|line| line.contains("UnknownIssuer"))
            .then_some(())
    })
    .await;
    refused.kill();

    let issuer = Issuer::new();
    let mut api_env = vec![
        ("DATABASE_URL", orders.url.clone()),
        ("PORT", "0".to_owned()),
    ];
    api_env.extend(issuer.env());
    let api = Service::spawn("orders-api", &api_env, false).await;
    let relay = Service::spawn("outbox-relay", &broker_env(&orders), false).await;
    let worker = Service::spawn("invoices-worker", &broker_env(&invoices), false).await;
    let http = issuer.client();
    let res = http
        .post(format!("{}/orders", api.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"amount": "7.50"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    eventually(Duration::from_secs(20), "the invoice", || async {
        (invoices.count("invoices").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        invoices.scalar("SELECT amount_cents FROM invoices").await,
        750
    );
    for service in [&api, &relay, &worker] {
        service.terminate();
    }
    for mut service in [api, relay, worker] {
        assert!(service.wait(Duration::from_secs(15)).await.success());
    }
}
