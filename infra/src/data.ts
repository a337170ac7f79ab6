import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";

import { AMQPS_PORT, BROKER_USERS, BrokerUser, DB_ROLES, DbRole, POSTGRES_PORT, RDS_CA_BUNDLE } from "./app";
import { Settings } from "./config";
import { Network } from "./network";
import { SecurityGroups } from "./security";

/** The RDS instance's initial storage (GiB; autoscaling may grow it to 100). */
export const DB_ALLOCATED_STORAGE_GIB = 20;

/** A Secrets Manager secret and the version holding its value. */
export interface StoredSecret {
    secret: aws.secretsmanager.Secret;
    version: aws.secretsmanager.SecretVersion;
}

/** Every secret a task injects; each task definition takes only its own. */
export interface Secrets {
    /** DATABASE_URL of the orders migrate task: the schema owner (RDS master user or the configured URL). */
    ordersOwnerDatabaseUrl: StoredSecret;
    /** DATABASE_URL of the invoices migrate task: the schema owner. */
    invoicesOwnerDatabaseUrl: StoredSecret;
    /** DATABASE_URL of each service, as its own role (orders_api, outbox_relay, invoices_worker). */
    databaseUrls: Record<DbRole, StoredSecret>;
    /** The roles' passwords, for the migrate tasks (ORDERS_API_DB_PASSWORD, …). */
    dbPasswords: Record<DbRole, StoredSecret>;
    /** BROKER_URL of the relay and the worker, as their own users. */
    brokerUrls: Record<BrokerUser, StoredSecret>;
    /** The users' passwords, for the provision-broker task (RELAY_BROKER_PASSWORD, …). */
    brokerPasswords: Record<BrokerUser, StoredSecret>;
    /** BROKER_ADMIN_URL: the management API with the broker's admin user, for provision-broker only. */
    brokerAdminUrl: StoredSecret;
    /** OTEL_EXPORTER_OTLP_HEADERS, when configured. */
    otlpHeaders?: StoredSecret;
}

export interface Data {
    secrets: Secrets;
    db?: aws.rds.Instance;
    broker?: aws.mq.Broker;
}

/** Every stored secret (e.g. for the services to wait for their values). */
export const allSecrets = (s: Secrets): StoredSecret[] => [
    s.ordersOwnerDatabaseUrl,
    s.invoicesOwnerDatabaseUrl,
    ...Object.values(s.databaseUrls),
    ...Object.values(s.dbPasswords),
    ...Object.values(s.brokerUrls),
    ...Object.values(s.brokerPasswords),
    s.brokerAdminUrl,
    ...(s.otlpHeaders ? [s.otlpHeaders] : []),
];

function storeSecret(
    name: string,
    description: string,
    value: pulumi.Input<string>,
    tags: Record<string, string>,
    aliases: string[] = [],
): StoredSecret {
    const opts = { aliases: aliases.map((alias) => ({ name: alias })) };
    const secret = new aws.secretsmanager.Secret(name, { description, recoveryWindowInDays: 7, tags }, opts);
    const version = new aws.secretsmanager.SecretVersion(
        name,
        { secretId: secret.id, secretString: pulumi.secret(value) },
        opts,
    );
    return { secret, version };
}

/**
 * `url` with its user and password replaced: a service's URL from the owner's
 * (same host, database or vhost, TLS parameters). A bare origin keeps no
 * trailing slash (the management API base URL of BROKER_ADMIN_URL).
 */
export function withCredentials(url: string, user: string, password: string): string {
    const u = new URL(url);
    u.username = user;
    u.password = password;
    // A bare origin ("https://host") serializes as "https://host/": keep it bare.
    return u.pathname === "/" && !u.search && !u.hash && !url.endsWith("/") ? u.href.slice(0, -1) : u.href;
}

/**
 * An external broker's BROKER_ADMIN_URL must be https:// on 443: the provision
 * task's security group opens HTTPS only, and the admin's credentials never
 * travel in plain text.
 */
export function checkManagementUrl(url: string): void {
    let u: URL;
    try {
        u = new URL(url);
    } catch {
        throw new pulumi.RunError("config brokerAdminUrl is not a URL");
    }
    if (u.protocol !== "https:" || (u.port !== "" && u.port !== "443")) {
        throw new pulumi.RunError(`config brokerAdminUrl must be an https:// URL on port 443 (the management API), got ${u.protocol}//…:${u.port || "default port"}`);
    }
    if (!u.username || !u.password) {
        throw new pulumi.RunError("config brokerAdminUrl must carry the admin user's credentials (https://user:password@host)");
    }
}

const credentialsOf = (url: pulumi.Input<string>, user: string, password: pulumi.Input<string>) =>
    pulumi.secret(pulumi.all([url, password]).apply(([u, pw]) => withCredentials(u, user, pw)));

/** A random password: letters and digits only (valid in URLs and for Amazon MQ as is). */
const password = (name: string) => new random.RandomPassword(name, { length: 32, special: false }).result;

/** libpq-style URL verifying the RDS certificate against the bundle shipped in the images. */
export function rdsUrl(user: string, password: pulumi.Input<string>, host: pulumi.Input<string>, database: string) {
    return pulumi.secret(
        pulumi.interpolate`postgres://${user}:${password}@${host}:${POSTGRES_PORT}/${database}?sslmode=verify-full&sslrootcert=${RDS_CA_BUNDLE}`,
    );
}

/** amqps://user:pass@host:5671/%2f from an Amazon MQ endpoint (amqps://host:5671). */
export function amazonMqUrl(user: string, password: pulumi.Input<string>, endpoint: pulumi.Input<string>) {
    return pulumi.secret(
        pulumi.all([password, endpoint]).apply(([pw, ep]) => {
            const host = ep.replace(/^amqps:\/\//, "").replace(/:\d+\/?$/, "");
            return `amqps://${user}:${encodeURIComponent(pw)}@${host}:${AMQPS_PORT}/%2f`;
        }),
    );
}

/**
 * The databases (one RDS PostgreSQL instance holding the `orders` and
 * `invoices` databases, which the migration tasks create) or external URLs, the
 * broker (Amazon MQ for RabbitMQ, AMQPS only) or an external one, a random
 * password per service role and broker user, and the Secrets Manager secrets
 * the task definitions inject: the owner's URLs for the migrate tasks, each
 * service's own URLs, the passwords for the migrate and provision-broker tasks.
 */
export function createData(s: Settings, net: Network, sgs: SecurityGroups, tags: Record<string, string>): Data {
    let db: aws.rds.Instance | undefined;
    let ordersOwnerUrl: pulumi.Output<string>;
    let invoicesOwnerUrl: pulumi.Output<string>;
    if (s.externalDatabases) {
        ordersOwnerUrl = s.externalDatabases.orders;
        invoicesOwnerUrl = s.externalDatabases.invoices;
    } else {
        if (!sgs.db) {
            throw new Error("RDS needs its security group");
        }
        const user = "pipeline";
        const masterPassword = new random.RandomPassword("db-password", { length: 32, special: false });
        const subnets = new aws.rds.SubnetGroup("db", {
            subnetIds: net.privateSubnets.map((x) => x.id),
            tags,
        });
        db = new aws.rds.Instance("db", {
            engine: "postgres",
            engineVersion: "16",
            autoMinorVersionUpgrade: true,
            instanceClass: s.dbInstanceClass,
            allocatedStorage: DB_ALLOCATED_STORAGE_GIB,
            maxAllocatedStorage: 100,
            storageType: "gp3",
            storageEncrypted: true,
            publiclyAccessible: false,
            dbSubnetGroupName: subnets.name,
            vpcSecurityGroupIds: [sgs.db.id],
            port: POSTGRES_PORT,
            username: user,
            password: masterPassword.result,
            backupRetentionPeriod: 7,
            multiAz: s.dbMultiAz,
            deletionProtection: s.dbDeletionProtection,
            skipFinalSnapshot: !s.dbDeletionProtection,
            finalSnapshotIdentifier: s.dbDeletionProtection ? `${s.prefix}-final` : undefined,
            copyTagsToSnapshot: true,
            tags,
        });
        ordersOwnerUrl = rdsUrl(user, masterPassword.result, db.address, "orders");
        invoicesOwnerUrl = rdsUrl(user, masterPassword.result, db.address, "invoices");
    }

    let broker: aws.mq.Broker | undefined;
    /** The admin user's amqps:// URL: only the source of the users' URLs, injected nowhere. */
    let adminAmqpUrl: pulumi.Output<string>;
    let adminManagementUrl: pulumi.Output<string>;
    if (s.externalBroker) {
        adminAmqpUrl = s.externalBroker.url;
        adminManagementUrl = pulumi.secret(
            s.externalBroker.adminUrl.apply((url) => {
                checkManagementUrl(url);
                return url;
            }),
        );
    } else {
        if (!sgs.mq) {
            throw new Error("Amazon MQ needs its security group");
        }
        const user = "pipeline";
        // Amazon MQ: 12+ characters, no commas, colons or equal signs.
        const adminPassword = new random.RandomPassword("mq-password", { length: 32, special: false });
        const cluster = s.mqDeploymentMode === "CLUSTER_MULTI_AZ";
        broker = new aws.mq.Broker("broker", {
            brokerName: `${s.prefix}-broker`,
            engineType: "RabbitMQ",
            engineVersion: "3.13",
            autoMinorVersionUpgrade: true,
            hostInstanceType: s.mqInstanceType,
            deploymentMode: s.mqDeploymentMode,
            publiclyAccessible: false,
            subnetIds: cluster ? net.privateSubnets.map((x) => x.id) : [net.privateSubnets[0].id],
            securityGroups: [sgs.mq.id],
            users: [{ username: user, password: adminPassword.result }],
            logs: { general: true },
            tags,
        });
        adminAmqpUrl = amazonMqUrl(user, adminPassword.result, broker.instances[0].endpoints[0]);
        // The RabbitMQ management API: https on 443 of the broker's console URL.
        adminManagementUrl = credentialsOf(broker.instances[0].consoleUrl, user, adminPassword.result);
    }

    const databaseUrls = {} as Record<DbRole, StoredSecret>;
    const dbPasswords = {} as Record<DbRole, StoredSecret>;
    for (const [key, { role, database, passwordVar }] of Object.entries(DB_ROLES) as [DbRole, (typeof DB_ROLES)[DbRole]][]) {
        const name = role.replace(/_/g, "-");
        const pw = password(`db-password-${name}`);
        const owner = database === "orders" ? ordersOwnerUrl : invoicesOwnerUrl;
        databaseUrls[key] = storeSecret(`${name}-database-url`, `DATABASE_URL of ${name} (role ${role})`, credentialsOf(owner, role, pw), tags);
        dbPasswords[key] = storeSecret(`${name}-db-password`, `${passwordVar}: password of the role ${role}`, pw, tags);
    }
    const brokerUrls = {} as Record<BrokerUser, StoredSecret>;
    const brokerPasswords = {} as Record<BrokerUser, StoredSecret>;
    for (const [key, { user, passwordVar }] of Object.entries(BROKER_USERS) as [BrokerUser, (typeof BROKER_USERS)[BrokerUser]][]) {
        const name = user.replace(/_/g, "-");
        const pw = password(`mq-password-${name}`);
        brokerUrls[key] = storeSecret(`${name}-broker-url`, `BROKER_URL of ${name} (user ${user})`, credentialsOf(adminAmqpUrl, user, pw), tags);
        brokerPasswords[key] = storeSecret(`${name}-broker-password`, `${passwordVar}: password of the broker user ${user}`, pw, tags);
    }

    return {
        secrets: {
            // Aliases: these held the only DATABASE_URLs before the services got roles of their own.
            ordersOwnerDatabaseUrl: storeSecret(
                "orders-migrate-database-url",
                "DATABASE_URL of the orders migrate task (schema owner)",
                ordersOwnerUrl,
                tags,
                ["orders-database-url"],
            ),
            invoicesOwnerDatabaseUrl: storeSecret(
                "invoices-migrate-database-url",
                "DATABASE_URL of the invoices migrate task (schema owner)",
                invoicesOwnerUrl,
                tags,
                ["invoices-database-url"],
            ),
            databaseUrls,
            dbPasswords,
            brokerUrls,
            brokerPasswords,
            brokerAdminUrl: storeSecret(
                "broker-admin-url",
                "BROKER_ADMIN_URL of outbox-relay provision-broker (management API, admin user)",
                adminManagementUrl,
                tags,
            ),
            otlpHeaders: s.otlpHeaders ? storeSecret("otlp-headers", "OTEL_EXPORTER_OTLP_HEADERS", s.otlpHeaders, tags) : undefined,
        },
        db,
        broker,
    };
}
