import * as pulumi from "@pulumi/pulumi";

/**
 * The database connection budget: every PostgreSQL session the stack may open
 * at its scaling maximum, against the server's `max_connections`.
 *
 * Per container (see the services' configuration and the relay's sources):
 * * orders-api: its pool (`DB_POOL_SIZE`, config `apiDbPoolSize`).
 * * outbox-relay: its pool (`relayDbPoolSize`; pipelined claims, the hourly
 *   purge, which holds its advisory lock on one pooled session while it
 *   deletes on another, and the backlog gauges) **plus one dedicated LISTEN
 *   session** outside the pool.
 * * invoices-worker: its pool (`workerDbPoolSize`; batches, `GET /invoices`,
 *   its purge).
 * Both databases live on the one RDS instance, so their sessions add up.
 *
 * RDS Proxy is not used: the relay's LISTEN session and its session-level
 * advisory locks pin a proxy connection to their client for the session's
 * life, so the proxy would multiplex nothing for the relay, and the pools are
 * already bounded here.
 */

/** The relay's dedicated `LISTEN` session, outside its pool. */
export const LISTEN_SESSIONS_PER_RELAY = 1;
/** The two migrate tasks (one dedicated session each; they may run in parallel). */
export const MIGRATE_SESSIONS = 2;
/** An operator command (`outbox-relay status|replay|retry|…`, `invoices-worker dlq …`) or two at once. */
export const OPERATOR_SESSIONS = 3;
/**
 * Slots ordinary roles cannot use: PostgreSQL's `superuser_reserved_connections`
 * (3) and RDS's `rds.rds_superuser_reserved_connections` (2); RDS's own
 * monitoring sessions (rdsadmin) come out of these.
 */
export const RESERVED_SLOTS = 5;
/**
 * The budget may use this share of max_connections: below the
 * `DbConnections` alarm's 80 %, so that a stack at its scaling maximum does not
 * set the alarm off by itself.
 */
export const BUDGET_HEADROOM = 0.75;
/** The `DbConnections` alarm fires above this share of max_connections. */
export const CONNECTIONS_ALARM_RATIO = 0.8;

/**
 * RDS PostgreSQL's default max_connections is `LEAST(DBInstanceClassMemory /
 * 9531392, 5000)`. DBInstanceClassMemory is the class's memory less what the
 * OS and RDS keep (db.t4g.micro: ~81 of the nominal 112), so these values are
 * rounded down from what the classes report.
 */
const MAX_CONNECTIONS_BY_GIB: Record<number, number> = { 1: 80, 2: 170, 4: 360, 8: 750, 16: 1500, 32: 3000, 64: 5000 };

/** Memory (GiB) of the known instance classes, by family and size. */
const CLASS_MEMORY_GIB: Record<string, Record<string, number>> = {
    "db.t3": { micro: 1, small: 2, medium: 4, large: 8, xlarge: 16, "2xlarge": 32 },
    "db.t4g": { micro: 1, small: 2, medium: 4, large: 8, xlarge: 16, "2xlarge": 32 },
    "db.m5": { large: 8, xlarge: 16, "2xlarge": 32, "4xlarge": 64 },
    "db.m6g": { large: 8, xlarge: 16, "2xlarge": 32, "4xlarge": 64 },
    "db.m6i": { large: 8, xlarge: 16, "2xlarge": 32, "4xlarge": 64 },
    "db.m7g": { large: 8, xlarge: 16, "2xlarge": 32, "4xlarge": 64 },
    "db.r5": { large: 16, xlarge: 32, "2xlarge": 64 },
    "db.r6g": { large: 16, xlarge: 32, "2xlarge": 64 },
    "db.r6i": { large: 16, xlarge: 32, "2xlarge": 64 },
    "db.r7g": { large: 16, xlarge: 32, "2xlarge": 64 },
};

/** Conservative default max_connections of the known RDS PostgreSQL classes. */
export const RDS_MAX_CONNECTIONS: Record<string, number> = Object.fromEntries(
    Object.entries(CLASS_MEMORY_GIB).flatMap(([family, sizes]) =>
        Object.entries(sizes).map(([size, gib]) => [`${family}.${size}`, MAX_CONNECTIONS_BY_GIB[gib]]),
    ),
);

/** What the budget check needs of the settings. */
export interface BudgetInputs {
    apiMaxCount: number;
    workerMaxCount: number;
    apiDbPoolSize: number;
    relayDbPoolSize: number;
    workerDbPoolSize: number;
}

/** The sessions each part may open at the scaling maximum. */
export interface Budget {
    /** One orders task: API pool + relay pool + the relay's LISTEN session. */
    perOrdersTask: number;
    /** apiMaxCount × perOrdersTask (the orders database). */
    orders: number;
    /** workerMaxCount × worker pool (the invoices database). */
    invoices: number;
    /** Migrate tasks, operator commands and the reserved slots. */
    reserve: number;
}

export function connectionBudget(s: BudgetInputs): Budget {
    const perOrdersTask = s.apiDbPoolSize + s.relayDbPoolSize + LISTEN_SESSIONS_PER_RELAY;
    return {
        perOrdersTask,
        orders: s.apiMaxCount * perOrdersTask,
        invoices: s.workerMaxCount * s.workerDbPoolSize,
        reserve: MIGRATE_SESSIONS + OPERATOR_SESSIONS + RESERVED_SLOTS,
    };
}

/** The most sessions the budget may use of `maxConnections`. */
export const budgetLimit = (maxConnections: number): number => Math.floor(BUDGET_HEADROOM * maxConnections);

const WAYS_OUT =
    "Ways out: smaller pools (apiDbPoolSize, relayDbPoolSize, workerDbPoolSize), fewer tasks at the " +
    "scaling maximum (apiMaxCount, workerMaxCount), a bigger dbInstanceClass, or dbMaxConnections if the " +
    "server allows more (e.g. a parameter group with a higher max_connections).";

/**
 * The max_connections the budget and the DbConnections alarm use: the
 * `dbMaxConnections` override, or for RDS the class's value from the table.
 * With external databases and no override, undefined (the budget cannot be checked).
 */
export function resolveMaxConnections(
    rds: boolean,
    instanceClass: string,
    override: number | undefined,
): number | undefined {
    if (override !== undefined) {
        return override;
    }
    if (!rds) {
        return undefined;
    }
    const known = RDS_MAX_CONNECTIONS[instanceClass];
    if (known === undefined) {
        throw new pulumi.RunError(
            `config dbMaxConnections is required: the connection budget does not know the max_connections of ` +
                `dbInstanceClass ${instanceClass} (known: ${Object.keys(RDS_MAX_CONNECTIONS).join(", ")}). ` +
                "Set it to the instance's max_connections (SHOW max_connections), e.g. " +
                "`pulumi config set dbMaxConnections 400`.",
        );
    }
    return known;
}

/**
 * Refuses a configuration whose sessions at the scaling maximum do not fit in
 * BUDGET_HEADROOM of max_connections, with the arithmetic and the ways out.
 * RDS: both databases on the one instance. External databases: each on its own
 * against `dbMaxConnections`, or a warning when it is not set.
 */
export function checkConnectionBudget(s: BudgetInputs, rds: boolean, maxConnections: number | undefined): Budget {
    const b = connectionBudget(s);
    const orders =
        `orders: apiMaxCount ${s.apiMaxCount} × (apiDbPoolSize ${s.apiDbPoolSize} + relayDbPoolSize ${s.relayDbPoolSize} ` +
        `+ ${LISTEN_SESSIONS_PER_RELAY} LISTEN session) = ${b.orders}`;
    const invoices = `invoices: workerMaxCount ${s.workerMaxCount} × workerDbPoolSize ${s.workerDbPoolSize} = ${b.invoices}`;
    const reserve =
        `reserve: ${MIGRATE_SESSIONS} migrate + ${OPERATOR_SESSIONS} operator + ${RESERVED_SLOTS} reserved slots = ${b.reserve}`;
    if (maxConnections === undefined) {
        pulumi.log.warn(
            `the database connection budget cannot be checked: external databases and no dbMaxConnections. ` +
                `At the scaling maximum the services open ${orders}; ${invoices} sessions. ` +
                "Set dbMaxConnections to the servers' max_connections to check it.",
        );
        return b;
    }
    if (!Number.isInteger(maxConnections) || maxConnections < 1) {
        throw new pulumi.RunError(`config dbMaxConnections must be a positive integer, got ${maxConnections}`);
    }
    const limit = budgetLimit(maxConnections);
    const demands: [string, number, string][] = rds
        ? [["RDS instance (both databases)", b.orders + b.invoices + b.reserve, `${orders}; ${invoices}; ${reserve}`]]
        : [
              ["orders database", b.orders + b.reserve, `${orders}; ${reserve}`],
              ["invoices database", b.invoices + b.reserve, `${invoices}; ${reserve}`],
          ];
    for (const [what, total, arithmetic] of demands) {
        if (total > limit) {
            throw new pulumi.RunError(
                `database connection budget exceeded on the ${what}: ${total} sessions at the scaling maximum ` +
                    `(${arithmetic}) > ${limit} = ${BUDGET_HEADROOM * 100} % of max_connections ${maxConnections} ` +
                    `(the DbConnections alarm fires above ${CONNECTIONS_ALARM_RATIO * 100} %). ${WAYS_OUT}`,
            );
        }
    }
    return b;
}
