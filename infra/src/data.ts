import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";

import { AMQPS_PORT, POSTGRES_PORT, RDS_CA_BUNDLE } from "./app";
import { Settings } from "./config";
import { Network } from "./network";
import { SecurityGroups } from "./security";

/** A Secrets Manager secret and the version holding its value. */
export interface StoredSecret {
    secret: aws.secretsmanager.Secret;
    version: aws.secretsmanager.SecretVersion;
}

export interface Data {
    /** DATABASE_URL of orders-api and outbox-relay. */
    ordersDatabaseUrl: StoredSecret;
    /** DATABASE_URL of invoices-worker. */
    invoicesDatabaseUrl: StoredSecret;
    /** BROKER_URL of outbox-relay and invoices-worker. */
    brokerUrl: StoredSecret;
    /** OTEL_EXPORTER_OTLP_HEADERS, when configured. */
    otlpHeaders?: StoredSecret;
    db?: aws.rds.Instance;
    broker?: aws.mq.Broker;
}

function storeSecret(name: string, description: string, value: pulumi.Input<string>, tags: Record<string, string>): StoredSecret {
    const secret = new aws.secretsmanager.Secret(name, { description, recoveryWindowInDays: 7, tags });
    const version = new aws.secretsmanager.SecretVersion(name, {
        secretId: secret.id,
        secretString: pulumi.secret(value),
    });
    return { secret, version };
}

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
 * broker (Amazon MQ for RabbitMQ, AMQPS only) or an external URL, and the
 * Secrets Manager secrets the task definitions inject.
 */
export function createData(s: Settings, net: Network, sgs: SecurityGroups, tags: Record<string, string>): Data {
    let db: aws.rds.Instance | undefined;
    let ordersUrl: pulumi.Output<string>;
    let invoicesUrl: pulumi.Output<string>;
    if (s.externalDatabases) {
        ordersUrl = s.externalDatabases.orders;
        invoicesUrl = s.externalDatabases.invoices;
    } else {
        if (!sgs.db) {
            throw new Error("RDS needs its security group");
        }
        const user = "pipeline";
        const password = new random.RandomPassword("db-password", { length: 32, special: false });
        const subnets = new aws.rds.SubnetGroup("db", {
            subnetIds: net.privateSubnets.map((x) => x.id),
            tags,
        });
        db = new aws.rds.Instance("db", {
            engine: "postgres",
            engineVersion: "16",
            autoMinorVersionUpgrade: true,
            instanceClass: s.dbInstanceClass,
            allocatedStorage: 20,
            maxAllocatedStorage: 100,
            storageType: "gp3",
            storageEncrypted: true,
            publiclyAccessible: false,
            dbSubnetGroupName: subnets.name,
            vpcSecurityGroupIds: [sgs.db.id],
            port: POSTGRES_PORT,
            username: user,
            password: password.result,
            backupRetentionPeriod: 7,
            deletionProtection: s.dbDeletionProtection,
            skipFinalSnapshot: !s.dbDeletionProtection,
            finalSnapshotIdentifier: s.dbDeletionProtection ? `${s.prefix}-final` : undefined,
            copyTagsToSnapshot: true,
            tags,
        });
        ordersUrl = rdsUrl(user, password.result, db.address, "orders");
        invoicesUrl = rdsUrl(user, password.result, db.address, "invoices");
    }

    let broker: aws.mq.Broker | undefined;
    let brokerUrl: pulumi.Output<string>;
    if (s.brokerUrl) {
        brokerUrl = s.brokerUrl;
    } else {
        if (!sgs.mq) {
            throw new Error("Amazon MQ needs its security group");
        }
        const user = "pipeline";
        // Amazon MQ: 12+ characters, no commas, colons or equal signs.
        const password = new random.RandomPassword("mq-password", { length: 32, special: false });
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
            users: [{ username: user, password: password.result }],
            logs: { general: true },
            tags,
        });
        brokerUrl = amazonMqUrl(user, password.result, broker.instances[0].endpoints[0]);
    }

    return {
        ordersDatabaseUrl: storeSecret("orders-database-url", "DATABASE_URL of orders-api and outbox-relay", ordersUrl, tags),
        invoicesDatabaseUrl: storeSecret("invoices-database-url", "DATABASE_URL of invoices-worker", invoicesUrl, tags),
        brokerUrl: storeSecret("broker-url", "BROKER_URL of outbox-relay and invoices-worker", brokerUrl, tags),
        otlpHeaders: s.otlpHeaders
            ? storeSecret("otlp-headers", "OTEL_EXPORTER_OTLP_HEADERS", s.otlpHeaders, tags)
            : undefined,
        db,
        broker,
    };
}
