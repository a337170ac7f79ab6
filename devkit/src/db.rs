//! Fresh, uniquely named PostgreSQL databases, dropped when the test ends.

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Pool;
use plumbing::db::{Database, PoolOptions, ServiceRole};

/// Server URL without a database name; `TEST_PG_URL` overrides it.
#[must_use]
pub fn server_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// `host:port` of the server (for a fault proxy in front of it).
#[must_use]
pub fn server_addr() -> String {
    crate::server_addr(&server_url(), 5432)
}

/// A database created for one test; dropped (with `FORCE`) on drop.
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database named `t_<label>_<random>`.
    pub async fn create(label: &str) -> Self {
        let db = Self::reserve(label);
        let name = db.name.clone();
        let admin = admin_client().await;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {}",
                plumbing::db::quote_ident(&name)
            ))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e:?}"));
        db
    }

    /// A unique database name that does not exist yet (a service under test is
    /// expected to create it); dropped on drop like the others.
    #[must_use]
    pub fn reserve(label: &str) -> Self {
        let name = format!("t_{label}_{}", crate::unique_suffix());
        Self {
            url: format!("{}/{name}", server_url()),
            name,
        }
    }

    /// Creates a database with `database`'s migrations applied up to and
    /// including `version` only: the schema an upgrade starts from. Then
    /// [`TestDatabase::upgrade`] applies the rest.
    pub async fn at_version(label: &str, database: Database, version: i32) -> Self {
        let db = Self::create(label).await;
        migrations::run_until(&mut db.client().await, database, version)
            .await
            .unwrap_or_else(|e| panic!("migrating {} to V{version}: {e:?}", db.name));
        db
    }

    /// Applies every migration of `database` not applied yet, as a deploy's
    /// `migrate` step does, and lets the service roles log in.
    pub async fn upgrade(&self, database: Database) {
        let config = plumbing::db::parse_url(&self.url).unwrap();
        plumbing::db::migrate(&config, database, &[])
            .await
            .unwrap_or_else(|e| panic!("upgrading {}: {e:?}", self.name));
        allow_logins(database).await;
    }

    /// Creates a database with `database`'s migrations applied (by the server's
    /// administrator, who owns the schema), whose service roles may log in
    /// (see [`TestDatabase::role_url`]).
    pub async fn migrated(label: &str, database: Database) -> Self {
        let db = Self::create(label).await;
        let config = plumbing::db::parse_url(&db.url).unwrap();
        plumbing::db::migrate(&config, database, &[])
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e:?}", db.name));
        allow_logins(database).await;
        db
    }

    /// The URL of this database for a service's own role, as the services run
    /// in production (the test server trusts local logins: no password).
    /// Needs a database made by [`TestDatabase::migrated`].
    #[must_use]
    pub fn role_url(&self, role: ServiceRole) -> String {
        crate::with_login(&self.url, role.name(), None)
    }

    /// [`TestDatabase::role_url`] through another address (e.g. a proxy).
    #[must_use]
    pub fn role_url_via(&self, role: ServiceRole, addr: std::net::SocketAddr) -> String {
        crate::swap_host(&self.role_url(role), addr)
    }

    /// A pool on the database as `role`, with the default pool options.
    #[must_use]
    pub fn pool_as(&self, role: ServiceRole) -> Pool {
        plumbing::db::pool(
            plumbing::db::parse_url(&self.role_url(role)).unwrap(),
            PoolOptions::default(),
        )
        .unwrap()
    }

    /// A dedicated session to the database as `role`.
    pub async fn client_as(&self, role: ServiceRole) -> tokio_postgres::Client {
        let url = self.role_url(role);
        plumbing::db::connect(&plumbing::db::parse_url(&url).unwrap())
            .await
            .unwrap_or_else(|e| panic!("cannot log in as {}: {e:?}", role.name()))
    }

    /// The URL of this database through another address (e.g. a proxy).
    #[must_use]
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        crate::swap_host(&self.url, addr)
    }

    /// A dedicated session to the database.
    pub async fn client(&self) -> tokio_postgres::Client {
        plumbing::db::connect(&plumbing::db::parse_url(&self.url).unwrap())
            .await
            .unwrap()
    }

    /// A pool on the database.
    #[must_use]
    pub fn pool(&self) -> Pool {
        plumbing::db::pool(
            plumbing::db::parse_url(&self.url).unwrap(),
            PoolOptions::default(),
        )
        .unwrap()
    }

    /// The single `bigint` a query returns (a count, typically).
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0)
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(&format!(
            "SELECT count(*) FROM {}",
            plumbing::db::quote_ident(table)
        ))
        .await
    }

    /// Outbox rows not published yet (orders database).
    pub async fn unpublished(&self) -> i64 {
        self.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        crate::block_on_cleanup(async move {
            let admin = admin_client().await;
            if let Err(e) = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    plumbing::db::quote_ident(&name)
                ))
                .await
            {
                eprintln!("could not drop test database {name}: {e}");
            }
        });
    }
}

/// Lets the service roles of `database` log in (once per test process). The
/// migrations create them NOLOGIN and they are shared by every test database of
/// the server: the change is made once, under an advisory lock of the
/// maintenance database, because the server refuses concurrent changes of one
/// role (from other test processes).
async fn allow_logins(database: Database) {
    static DONE: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
    let done = &DONE[database as usize];
    if done.load(Ordering::Acquire) {
        return;
    }
    const LOCK: i64 = 0x6465_766b; // "devk"
    let admin = admin_client().await;
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await
        .unwrap();
    for role in database.service_roles() {
        admin
            .batch_execute(&format!(
                "DO $$ BEGIN IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = '{0}') \
                 THEN ALTER ROLE {0} LOGIN; END IF; END $$",
                role.name()
            ))
            .await
            .unwrap_or_else(|e| panic!("cannot let {} log in: {e:?}", role.name()));
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await
        .unwrap();
    done.store(true, Ordering::Release);
}

async fn admin_client() -> tokio_postgres::Client {
    let url = format!("{}/postgres", server_url());
    plumbing::db::connect(&plumbing::db::parse_url(&url).unwrap())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e:?}"))
}
