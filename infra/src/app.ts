/**
 * Facts about the three binaries (see the repository's Dockerfile and README):
 * one image per binary, the binary is the entrypoint, `migrate` and
 * `healthcheck` are subcommands.
 */

export const API = "orders-api";
export const RELAY = "outbox-relay";
export const WORKER = "invoices-worker";
export const BINARIES = [API, RELAY, WORKER] as const;
export type Binary = (typeof BINARIES)[number];

/** HTTP port (env PORT) of each binary: /health, /ready, /metrics. */
export const PORTS: Record<Binary, number> = {
    [API]: 3333,
    [WORKER]: 3334,
    [RELAY]: 3335,
};

/**
 * The listen backlog the binaries ask for (`plumbing::http::LISTEN_BACKLOG`).
 * The kernel caps it at `net.core.somaxconn`, set to the same value in every
 * HTTP-serving container.
 */
export const LISTEN_BACKLOG = 4096;

/** What the ALB probes (orders-api answers 200 "OK"). */
export const HEALTH_PATH = "/health";
export const POSTGRES_PORT = 5432;
export const AMQPS_PORT = 5671;

/** The relay's longest wait for broker confirms (RELAY_CONFIRM_TIMEOUT). */
export const RELAY_CONFIRM_TIMEOUT_SECONDS = 10;
/**
 * Seconds between SIGTERM and SIGKILL for the relay. A pipelined claim stays
 * open for up to three confirm timeouts (publish, confirms, next batch's
 * confirms), so drain needs up to ~30 s; 60 s leaves a margin (Fargate max 120).
 */
export const RELAY_STOP_TIMEOUT_SECONDS = 60;
/** The API drains in-flight HTTP requests (the ALB deregisters it first). */
export const API_STOP_TIMEOUT_SECONDS = 30;

/** The queue the worker consumes (contracts::topology), after BROKER_NAMESPACE. */
export function invoicesQueue(namespace: string): string {
    return namespace ? `${namespace}.invoices.order-created` : "invoices.order-created";
}

/** Its dead-letter queue (contracts::topology DEAD_LETTER_QUEUE), after BROKER_NAMESPACE. */
export function invoicesDeadLetterQueue(namespace: string): string {
    return `${invoicesQueue(namespace)}.dlq`;
}

/** Path of the Amazon RDS CA bundle in the images (Dockerfile). */
export const RDS_CA_BUNDLE = "/etc/ssl/certs/rds-global-bundle.pem";

export const healthcheckCommand = (binary: Binary): string[] => ["CMD", `/usr/local/bin/${binary}`, "healthcheck"];

/**
 * The least-privilege PostgreSQL login roles (created by the migrations; `<binary>
 * migrate` gives them LOGIN and the password of the named variable) and
 * RabbitMQ users (created by `outbox-relay provision-broker` from the named
 * variable). The owner of the schema is the RDS master user (or the configured
 * external URL's user), used by the migrate tasks only.
 */
export const DB_ROLES = {
    ordersApi: { role: "orders_api", database: "orders", passwordVar: "ORDERS_API_DB_PASSWORD" },
    outboxRelay: { role: "outbox_relay", database: "orders", passwordVar: "OUTBOX_RELAY_DB_PASSWORD" },
    invoicesWorker: { role: "invoices_worker", database: "invoices", passwordVar: "INVOICES_WORKER_DB_PASSWORD" },
} as const;
export type DbRole = keyof typeof DB_ROLES;

export const BROKER_USERS = {
    outboxRelay: { user: "outbox_relay", passwordVar: "RELAY_BROKER_PASSWORD" },
    invoicesWorker: { user: "invoices_worker", passwordVar: "WORKER_BROKER_PASSWORD" },
} as const;
export type BrokerUser = keyof typeof BROKER_USERS;

/** HTTPS port of the RabbitMQ management API of Amazon MQ (the broker's console URL). */
export const BROKER_MANAGEMENT_PORT = 443;
