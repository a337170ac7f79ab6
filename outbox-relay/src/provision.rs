//! `outbox-relay provision-broker`: gives the relay and the worker broker users of
//! their own, each allowed only what it does with the pipeline's names in the
//! vhost of `BROKER_URL` (see [`Permissions`]), and declares the topology as the
//! admin, so that events the relay publishes are routed before the worker first
//! starts. Run it before the services, and again whenever a password changes:
//! everything it does is idempotent.

use anyhow::{Context as _, bail};
use plumbing::{
    broker::{self, Permissions},
    config::{BrokerConfig, Secret, redact_url, var, var_or},
    management::Management,
};

/// Default user name of the relay.
pub const RELAY_USER: &str = "outbox_relay";
/// Default user name of the worker.
pub const WORKER_USER: &str = "invoices_worker";

/// The variables the command reads beside `BROKER_URL` and `BROKER_NAMESPACE`,
/// for `--help` (see [`plumbing::config::Settings::VARIABLES`]).
pub const VARIABLES: &str = "\
BROKER_ADMIN_URL provision-broker: RabbitMQ management API URL with an administrator's credentials, e.g. http://guest:guest@127.0.0.1:15672 (required)
RELAY_BROKER_USER provision-broker: the relay's broker user (default outbox_relay)
RELAY_BROKER_PASSWORD provision-broker: the relay's broker password (required)
WORKER_BROKER_USER provision-broker: the worker's broker user (default invoices_worker)
WORKER_BROKER_PASSWORD provision-broker: the worker's broker password (required)";

/// One broker user to create or update.
struct User {
    name: String,
    password: Secret,
    permissions: Permissions,
}

/// What `provision-broker` reads from the environment.
pub struct Provisioning {
    admin_url: Secret,
    broker: BrokerConfig,
    users: [User; 2],
}

impl Provisioning {
    /// Reads the variables (see [`VARIABLES`]).
    ///
    /// # Errors
    /// A required variable is missing, or both services would get one user, or a
    /// service would get the admin's user (provisioning would take its rights).
    pub fn from_env(broker: BrokerConfig) -> anyhow::Result<Self> {
        let admin_url = var("BROKER_ADMIN_URL")
            .map(Secret::url)
            .context("BROKER_ADMIN_URL is not set")?;
        let topology = broker.topology();
        let users = [
            User {
                name: var_or("RELAY_BROKER_USER", RELAY_USER),
                password: var("RELAY_BROKER_PASSWORD")
                    .map(Secret::new)
                    .context("RELAY_BROKER_PASSWORD is not set")?,
                permissions: Permissions::relay(&topology),
            },
            User {
                name: var_or("WORKER_BROKER_USER", WORKER_USER),
                password: var("WORKER_BROKER_PASSWORD")
                    .map(Secret::new)
                    .context("WORKER_BROKER_PASSWORD is not set")?,
                permissions: Permissions::worker(&topology),
            },
        ];
        if users[0].name == users[1].name {
            bail!(
                "RELAY_BROKER_USER and WORKER_BROKER_USER are both {:?}: each service needs its own user",
                users[0].name
            );
        }
        Ok(Self {
            admin_url,
            broker,
            users,
        })
    }

    /// Creates or updates both users and their permissions, after declaring the
    /// topology as the admin. Prints what it did (never a password).
    ///
    /// # Errors
    /// The management API or the broker failed, with the reason.
    pub async fn run(&self) -> anyhow::Result<()> {
        let admin = Management::new(self.admin_url.expose())?;
        for user in &self.users {
            if user.name == admin.user() {
                bail!(
                    "the broker user {:?} is the admin of BROKER_ADMIN_URL: give the services users of their own",
                    user.name
                );
            }
        }
        admin.check().await?;
        let vhost = broker::vhost(self.broker.url.expose())?;
        admin
            .ensure_vhost(&vhost)
            .await
            .with_context(|| format!("creating the vhost {vhost:?}"))?;

        // As the admin, over AMQP on the services' broker and vhost.
        let admin_amqp =
            broker::with_credentials(self.broker.url.expose(), admin.user(), admin.password())?;
        let shown = redact_url(&admin_amqp);
        let connection = broker::connect(&admin_amqp, "outbox-relay provision-broker")
            .await
            .with_context(|| format!("connecting to {shown} as the admin"))?;
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel, &self.broker.topology())
            .await
            .with_context(|| format!("declaring the topology at {shown}"))?;
        let _ = connection.close(200, "provisioned".into()).await;

        for user in &self.users {
            admin.put_user(&user.name, user.password.expose()).await?;
            admin
                .put_permissions(&vhost, &user.name, &user.permissions)
                .await?;
            let p = &user.permissions;
            println!(
                "broker user {:?} on vhost {vhost:?}: configure '{}', write '{}', read '{}'",
                user.name, p.configure, p.write, p.read
            );
        }
        Ok(())
    }
}
