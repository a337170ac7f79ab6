/**
 * The default stack: RDS PostgreSQL, Amazon MQ for RabbitMQ, OTLP endpoint and
 * headers configured, a broker namespace, a pinned image tag; a development
 * edge (plain HTTP, allowed by allowPlainHttp) with the WAF rate limit.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import { readFileSync } from "node:fs";
import { join } from "node:path";

import * as pulumi from "@pulumi/pulumi";

import { LISTEN_BACKLOG, RDS_CA_BUNDLE } from "../src/app";
import { allSecrets } from "../src/data";
import { DEPLOYED_TAG_PREFIX } from "../src/services";
import { createStack, Stack } from "../src/stack";
import { AUTH_CONFIG, containersOf, envOf, exposedRoutes, ofType, one, options, REGION, resources, run, secretsOf, secretValue, setup, T, value } from "./harness";

setup(
    {
        "aws:region": REGION,
        imageTag: "v1.2.3",
        apiDesiredCount: "2",
        apiMaxCount: "8",
        workerDesiredCount: "1",
        workerMaxCount: "5",
        // 8 orders tasks and 5 workers need more sessions than a db.t4g.micro has (src/budget.ts).
        dbInstanceClass: "db.t4g.small",
        otlpEndpoint: "https://otlp.example.com",
        otlpHeaders: "x-api-key=s3cr3t",
        brokerNamespace: "prod",
        logRetentionDays: "14",
        allowPlainHttp: "true",
        wafRateLimit: "1000",
        ...AUTH_CONFIG,
    },
    ["otlpHeaders"],
);

const ORDERS = "orders-pipeline-test-orders";
const WORKER = "orders-pipeline-test-invoices-worker";
const MIGRATE_ORDERS = "orders-pipeline-test-migrate-orders";
const MIGRATE_INVOICES = "orders-pipeline-test-migrate-invoices";
const PROVISION = "orders-pipeline-test-provision-broker";
const SERVICES = [ORDERS, WORKER];
const ONE_OFF = [MIGRATE_ORDERS, MIGRATE_INVOICES, PROVISION];
const SECRET_ARN = /^arn:aws:secretsmanager:[a-z0-9-]+:\d{12}:secret:/;

let stack: Stack;
/** Secret ARNs by the secret's resource name. */
let arns: Record<string, string>;
const sgId = (name: string) => one(T.sg, name).id;

before(async () => {
    stack = await run(createStack);
    arns = Object.fromEntries(ofType(T.secret).map((r) => [r.name, r.state.arn]));
});

describe("network", () => {
    it("has one NAT gateway and a single-AZ database outside the production stack", () => {
        assert.equal(ofType(T.natGateway).length, 1);
        const [nat] = ofType(T.natGateway);
        const routes = ofType(T.routeTable).filter((t) => t.inputs.routes?.[0]?.natGatewayId === nat.id);
        assert.equal(routes.length, 1, "both private subnets share the one NAT gateway's route table");
        assert.equal(one(T.rds, "db").inputs.multiAz, false);
    });

    it("spans two AZs with a public and a private subnet in each", () => {
        const subnets = ofType(T.subnet);
        const pub = subnets.filter((s) => s.inputs.tags.tier === "public");
        const priv = subnets.filter((s) => s.inputs.tags.tier === "private");
        assert.equal(subnets.length, 4);
        assert.equal(pub.length, 2);
        assert.equal(priv.length, 2);
        const azs = (xs: typeof subnets) => new Set(xs.map((s) => s.inputs.availabilityZone));
        assert.deepEqual(azs(pub), new Set([`${REGION}a`, `${REGION}b`]));
        assert.deepEqual(azs(priv), new Set([`${REGION}a`, `${REGION}b`]));
        assert.ok(pub.every((s) => s.inputs.mapPublicIpOnLaunch === true));
        assert.ok(priv.every((s) => s.inputs.mapPublicIpOnLaunch === false));
    });

    it("routes public subnets through the internet gateway and private ones through NAT", () => {
        const publicRt = one(T.routeTable, "public");
        const privateRt = one(T.routeTable, "private");
        assert.equal(publicRt.inputs.routes[0].gatewayId, "igw_id");
        assert.equal(privateRt.inputs.routes[0].natGatewayId, "nat_id");
        assert.equal(one(T.natGateway, "nat").inputs.subnetId, "public-0_id");
        const assoc = ofType(T.routeTableAssociation);
        for (const i of [0, 1]) {
            assert.ok(assoc.some((a) => a.inputs.subnetId === `public-${i}_id` && a.inputs.routeTableId === "public_id"));
            assert.ok(assoc.some((a) => a.inputs.subnetId === `private-${i}_id` && a.inputs.routeTableId === "private_id"));
        }
    });
});

describe("serving containers", () => {
    it("raises net.core.somaxconn to the binaries' listen backlog in every serving container", () => {
        for (const family of [ORDERS, WORKER]) {
            for (const c of containersOf(family)) {
                assert.deepEqual(
                    c.systemControls,
                    [{ namespace: "net.core.somaxconn", value: String(LISTEN_BACKLOG) }],
                    `${family}/${c.name}`,
                );
            }
        }
    });
});

describe("orders task (orders-api + outbox-relay sidecar)", () => {
    it("has exactly the two containers orders-api and outbox-relay, both essential", () => {
        const containers = containersOf(ORDERS);
        assert.deepEqual(containers.map((c) => c.name).sort(), ["orders-api", "outbox-relay"]);
        for (const c of containers) {
            assert.equal(c.essential, true, `${c.name} must be essential`);
        }
    });

    it("is a Fargate awsvpc task run by the orders service", () => {
        const td = ofType(T.taskDefinition).find((r) => r.inputs.family === ORDERS)!;
        assert.deepEqual(td.inputs.requiresCompatibilities, ["FARGATE"]);
        assert.equal(td.inputs.networkMode, "awsvpc");
        assert.equal(one(T.service, "orders").inputs.taskDefinition, td.state.arn);
    });

    it("gives the relay a stopTimeout long enough to drain its batch", () => {
        const relay = containersOf(ORDERS).find((c) => c.name === "outbox-relay");
        assert.ok(relay, "outbox-relay sidecar missing from the orders task");
        const confirm = Number.parseInt(envOf(relay).RELAY_CONFIRM_TIMEOUT, 10);
        assert.equal(confirm, 10);
        assert.ok(relay.stopTimeout >= 30, `relay stopTimeout ${relay.stopTimeout} < 30`);
        assert.ok(relay.stopTimeout >= 3 * confirm, "stopTimeout must cover three confirm timeouts");
        assert.ok(relay.stopTimeout <= 120, "Fargate caps stopTimeout at 120 s");
    });

    it("health-checks both containers with `<binary> healthcheck`", () => {
        for (const c of containersOf(ORDERS)) {
            assert.deepEqual(c.healthCheck?.command, ["CMD", `/usr/local/bin/${c.name}`, "healthcheck"], c.name);
            assert.ok(c.healthCheck.startPeriod > 0);
        }
    });

    it("starts the API after the relay, so that the API stops first and the relay drains last", () => {
        const [api, relay] = ["orders-api", "outbox-relay"].map((n) => containersOf(ORDERS).find((c) => c.name === n));
        assert.deepEqual(api.dependsOn, [{ containerName: "outbox-relay", condition: "START" }]);
        assert.equal(relay.dependsOn, undefined, "the relay needs nothing from the API");
    });

    it("listens on the binaries' ports and sets PORT accordingly", () => {
        const containers = containersOf(ORDERS);
        const ports = Object.fromEntries(containers.map((c) => [c.name, c.portMappings.map((p: any) => p.containerPort)]));
        assert.deepEqual(ports, { "orders-api": [3333], "outbox-relay": [3335] });
        for (const c of containers) {
            assert.equal(envOf(c).PORT, String(c.portMappings[0].containerPort));
        }
    });

    it("uses the images pushed to ECR with the configured tag", () => {
        for (const c of containersOf(ORDERS)) {
            assert.equal(c.image, `123456789012.dkr.ecr.${REGION}.amazonaws.com/orders-pipeline-test/${c.name}:v1.2.3`);
        }
    });
});

describe("secrets", () => {
    const rds = () => one(T.rds, "db").state.address;
    const MQ_HOST = `b-1234-abcd.mq.${REGION}.amazonaws.com`;
    const TLS = "sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem";

    it("are Secrets Manager secrets holding each role's URL and password", () => {
        const stored = (name: string) => one(T.secretVersion, name).inputs.secretString as string;
        assert.equal(stored("orders-migrate-database-url"), `postgres://pipeline:Mockdbpassword0123456789abcdef@${rds()}:5432/orders?${TLS}`);
        assert.equal(stored("invoices-migrate-database-url"), `postgres://pipeline:Mockdbpassword0123456789abcdef@${rds()}:5432/invoices?${TLS}`);
        for (const [name, role, db] of [
            ["orders-api", "orders_api", "orders"],
            ["outbox-relay", "outbox_relay", "orders"],
            ["invoices-worker", "invoices_worker", "invoices"],
        ]) {
            const pw = `Mockdbpassword${name.replace(/-/g, "")}0123456789abcdef`;
            assert.equal(stored(`${name}-database-url`), `postgres://${role}:${pw}@${rds()}:5432/${db}?${TLS}`);
            assert.equal(stored(`${name}-db-password`), pw);
        }
        for (const [name, user] of [
            ["outbox-relay", "outbox_relay"],
            ["invoices-worker", "invoices_worker"],
        ]) {
            const pw = `Mockmqpassword${name.replace(/-/g, "")}0123456789abcdef`;
            assert.equal(stored(`${name}-broker-url`), `amqps://${user}:${pw}@${MQ_HOST}:5671/%2f`);
            assert.equal(stored(`${name}-broker-password`), pw);
        }
        // The management API of Amazon MQ: https on 443 of the console URL, as the admin user.
        assert.equal(stored("broker-admin-url"), `https://pipeline:Mockmqpassword0123456789abcdef@${MQ_HOST}`);
        assert.equal(stored("otlp-headers"), "x-api-key=s3cr3t");
        for (const secret of ofType(T.secret)) {
            assert.equal(one(T.secretVersion, secret.name).inputs.secretId, `${secret.name}_id`);
        }
    });

    it("keep the owner's URL secrets under their former names (no replacement on update)", () => {
        for (const [name, former] of [
            ["orders-migrate-database-url", "orders-database-url"],
            ["invoices-migrate-database-url", "invoices-database-url"],
        ]) {
            for (const type of [T.secret, T.secretVersion]) {
                const aliases = (options.get(`${type}::${name}`)?.aliases ?? []) as { name?: string }[];
                assert.ok(aliases.some((a) => a.name === former), `${type} ${name} has no alias ${former}`);
            }
        }
    });

    it("give each service exactly its own URLs, DATABASE_URL and BROKER_URL, and the OTLP headers", () => {
        const expected: Record<string, Record<string, string>> = {
            "orders-api": { DATABASE_URL: arns["orders-api-database-url"], OTEL_EXPORTER_OTLP_HEADERS: arns["otlp-headers"] },
            "outbox-relay": {
                DATABASE_URL: arns["outbox-relay-database-url"],
                BROKER_URL: arns["outbox-relay-broker-url"],
                OTEL_EXPORTER_OTLP_HEADERS: arns["otlp-headers"],
            },
            "invoices-worker": {
                DATABASE_URL: arns["invoices-worker-database-url"],
                BROKER_URL: arns["invoices-worker-broker-url"],
                OTEL_EXPORTER_OTLP_HEADERS: arns["otlp-headers"],
            },
        };
        const containers = SERVICES.flatMap(containersOf);
        assert.equal(containers.length, 3);
        for (const c of containers) {
            assert.deepEqual(secretsOf(c), expected[c.name], `secrets of ${c.name}`);
            for (const s of c.secrets) {
                assert.match(s.valueFrom, SECRET_ARN);
            }
        }
    });

    it("let each service connect as its own database role and broker user, never as the owner or the admin", () => {
        const users: Record<string, { db: string; broker?: string }> = {
            "orders-api": { db: "orders_api" },
            "outbox-relay": { db: "outbox_relay", broker: "outbox_relay" },
            "invoices-worker": { db: "invoices_worker", broker: "invoices_worker" },
        };
        const privileged = new Set([
            secretValue(arns["orders-migrate-database-url"]),
            secretValue(arns["invoices-migrate-database-url"]),
            secretValue(arns["broker-admin-url"]),
        ]);
        for (const c of SERVICES.flatMap(containersOf)) {
            const injected = Object.values(secretsOf(c)).map(secretValue);
            for (const v of injected) {
                assert.ok(!privileged.has(v), `${c.name} receives an owner's or the admin's URL`);
                assert.ok(!v.includes("pipeline:"), `${c.name} receives the RDS master or broker admin user`);
            }
            const env = secretsOf(c);
            assert.equal(new URL(secretValue(env.DATABASE_URL)).username, users[c.name].db, `${c.name} DATABASE_URL`);
            if (users[c.name].broker) {
                assert.equal(new URL(secretValue(env.BROKER_URL)).username, users[c.name].broker, `${c.name} BROKER_URL`);
            }
            assert.equal(env.BROKER_ADMIN_URL, undefined, c.name);
        }
    });

    it("give the migrate tasks the owner's URL and the passwords of their database's service roles", () => {
        const cases: [string, string, Record<string, string>][] = [
            [MIGRATE_ORDERS, "orders-migrate-database-url", { ORDERS_API_DB_PASSWORD: "orders-api", OUTBOX_RELAY_DB_PASSWORD: "outbox-relay" }],
            [MIGRATE_INVOICES, "invoices-migrate-database-url", { INVOICES_WORKER_DB_PASSWORD: "invoices-worker" }],
        ];
        for (const [family, owner, passwords] of cases) {
            const [c] = containersOf(family);
            const env = secretsOf(c);
            assert.deepEqual(
                Object.keys(env).sort(),
                ["DATABASE_URL", "OTEL_EXPORTER_OTLP_HEADERS", ...Object.keys(passwords)].sort(),
                `secrets of ${family}`,
            );
            assert.equal(env.DATABASE_URL, arns[owner]);
            for (const [variable, service] of Object.entries(passwords)) {
                // The password the migration sets is the one the service connects with.
                assert.equal(secretValue(env[variable]), new URL(secretValue(arns[`${service}-database-url`])).password, variable);
            }
        }
    });

    it("give the provision-broker task the admin's management URL and the users' passwords", () => {
        const [c] = containersOf(PROVISION);
        const env = secretsOf(c);
        assert.deepEqual(Object.keys(env).sort(), [
            "BROKER_ADMIN_URL",
            "BROKER_URL",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "RELAY_BROKER_PASSWORD",
            "WORKER_BROKER_PASSWORD",
        ]);
        assert.match(secretValue(env.BROKER_ADMIN_URL), /^https:\/\/pipeline:[^@]+@b-1234-abcd\.mq\.[a-z0-9-]+\.amazonaws\.com$/);
        // BROKER_URL names the vhost (and the host); the relay's user, not the admin.
        assert.equal(new URL(secretValue(env.BROKER_URL)).username, "outbox_relay");
        assert.equal(secretValue(env.RELAY_BROKER_PASSWORD), new URL(secretValue(arns["outbox-relay-broker-url"])).password);
        assert.equal(secretValue(env.WORKER_BROKER_PASSWORD), new URL(secretValue(arns["invoices-worker-broker-url"])).password);
    });

    it("never appear as plain environment variables", () => {
        for (const family of [...SERVICES, ...ONE_OFF]) {
            for (const c of containersOf(family)) {
                const env = envOf(c);
                for (const name of [
                    "DATABASE_URL",
                    "BROKER_URL",
                    "BROKER_ADMIN_URL",
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "ORDERS_API_DB_PASSWORD",
                    "OUTBOX_RELAY_DB_PASSWORD",
                    "INVOICES_WORKER_DB_PASSWORD",
                    "RELAY_BROKER_PASSWORD",
                    "WORKER_BROKER_PASSWORD",
                ]) {
                    assert.ok(!(name in env), `${c.name}: ${name} in plain environment`);
                }
                assert.ok(!JSON.stringify(c).includes("Mock"), `${c.name}: a password leaked into the task definition`);
            }
        }
    });

    it("are readable by each task's own execution role, exactly those its containers inject", () => {
        const roles: [string, string][] = [
            [ORDERS, "orders"],
            [WORKER, "worker"],
            [MIGRATE_ORDERS, "migrate-orders"],
            [MIGRATE_INVOICES, "migrate-invoices"],
            [PROVISION, "provision-broker"],
        ];
        assert.equal(ofType(T.role).length, roles.length, "one execution role per task definition");
        for (const [family, role] of roles) {
            const td = ofType(T.taskDefinition).find((r) => r.inputs.family === family)!;
            assert.equal(td.inputs.executionRoleArn, one(T.role, `${role}-execution`).state.arn);
            const policy = JSON.parse(one(T.rolePolicy, `${role}-execution-secrets`).inputs.policy);
            assert.equal(policy.Statement.length, 1);
            const [statement] = policy.Statement;
            assert.equal(statement.Effect, "Allow");
            assert.deepEqual(statement.Action, ["secretsmanager:GetSecretValue"]);
            const granted = new Set<string>(statement.Resource);
            const used = new Set(containersOf(family).flatMap((c) => c.secrets.map((s: any) => s.valueFrom)));
            assert.deepEqual(granted, used, `${role} execution role must read exactly what its task injects`);
            assert.ok([...granted].every((arn) => SECRET_ARN.test(arn)));
            const attachment = one(T.rolePolicyAttachment, `${role}-execution`);
            assert.equal(attachment.inputs.policyArn, "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy");
        }
        const readable = (role: string) => JSON.parse(one(T.rolePolicy, `${role}-execution-secrets`).inputs.policy).Statement[0].Resource;
        for (const role of ["orders", "worker"]) {
            for (const privileged of ["orders-migrate-database-url", "invoices-migrate-database-url", "broker-admin-url"]) {
                assert.ok(!readable(role).includes(arns[privileged]), `${role} may read ${privileged}`);
            }
        }
        assert.ok(!readable("migrate-orders").includes(arns["invoices-migrate-database-url"]), "one database per migrate task");
        assert.ok(!readable("migrate-invoices").includes(arns["orders-migrate-database-url"]), "one database per migrate task");
    });
});

describe("environment", () => {
    it("sends traces to the configured OTLP endpoint under each binary's name", () => {
        for (const c of [...containersOf(ORDERS), ...containersOf(WORKER)]) {
            const env = envOf(c);
            assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, "https://otlp.example.com", c.name);
            assert.equal(env.OTEL_SERVICE_NAME, c.name);
            assert.equal(env.MIGRATE_ON_START, "false", c.name);
            assert.equal(env.RUST_LOG, "info");
        }
    });

    it("authenticates the API's callers with the configured identity provider, and never turns it off", () => {
        const api = containersOf(ORDERS).find((c) => c.name === "orders-api");
        assert.deepEqual(
            Object.fromEntries(Object.entries(envOf(api)).filter(([k]) => k.startsWith("AUTH_"))),
            {
                AUTH_JWKS_URL: "https://idp.example.com/.well-known/jwks.json",
                AUTH_ISSUER: "https://idp.example.com/",
                AUTH_AUDIENCE: "orders-api",
            },
        );
        for (const family of [...SERVICES, ...ONE_OFF]) {
            for (const c of containersOf(family)) {
                const names = [...Object.keys(envOf(c)), ...Object.keys(secretsOf(c))];
                assert.ok(!names.includes("AUTH_DISABLED"), `${family}/${c.name} sets AUTH_DISABLED`);
            }
        }
    });

    it("has every service emit its gauges as EMF under the stack prefix, the one-off tasks none", () => {
        for (const c of SERVICES.flatMap(containersOf)) {
            assert.equal(envOf(c).METRICS_EMF_NAMESPACE, "orders-pipeline-test", c.name);
        }
        for (const c of ONE_OFF.flatMap(containersOf)) {
            assert.equal(envOf(c).METRICS_EMF_NAMESPACE, undefined, c.name);
        }
    });

    it("pushes the services' metrics over OTLP too (otlpEndpoint set, otlpMetrics by default), not the one-off tasks'", () => {
        for (const c of SERVICES.flatMap(containersOf)) {
            assert.equal(envOf(c).OTEL_METRICS_EXPORTER, "otlp", c.name);
        }
        for (const c of ONE_OFF.flatMap(containersOf)) {
            assert.equal(envOf(c).OTEL_METRICS_EXPORTER, undefined, c.name);
        }
    });

    it("sizes each service's pool explicitly (DB_POOL_SIZE), with the budget's defaults", () => {
        const pools = Object.fromEntries(SERVICES.flatMap(containersOf).map((c) => [c.name, envOf(c).DB_POOL_SIZE]));
        assert.deepEqual(pools, { "orders-api": "3", "outbox-relay": "3", "invoices-worker": "2" });
        for (const c of ONE_OFF.flatMap(containersOf)) {
            assert.equal(envOf(c).DB_POOL_SIZE, undefined, c.name);
        }
    });

    it("alarms above 80 % of the configured class's max_connections (db.t4g.small: 170)", () => {
        assert.equal(one(T.alarm, "alarm-DbConnections").inputs.threshold, 136);
    });

    it("passes BROKER_NAMESPACE to the relay and the worker", () => {
        for (const c of [...containersOf(ORDERS), ...containersOf(WORKER)]) {
            assert.equal(envOf(c).BROKER_NAMESPACE, c.name === "orders-api" ? undefined : "prod", c.name);
        }
    });
});

describe("services", () => {
    it("start only once the secret values and the execution roles' permissions exist", () => {
        for (const [svc, role] of [
            ["orders", "orders"],
            ["invoices-worker", "worker"],
        ]) {
            const deps = (options.get(`${T.service}::${svc}`)?.dependsOn ?? []) as pulumi.Resource[];
            const versions = allSecrets(stack.data.secrets).map((d) => d.version);
            assert.equal(versions.length, ofType(T.secretVersion).length);
            for (const needed of [...versions, stack.services.executionRoles[role as "orders" | "worker"].secrets]) {
                assert.ok(deps.includes(needed), `${svc} does not wait for ${needed.constructor.name}`);
            }
        }
    });

    it("make pulumi up wait for a finished deployment, which the circuit breaker rolls back when it fails", () => {
        for (const svc of ofType(T.service)) {
            assert.equal(svc.inputs.waitForSteadyState, true, svc.name);
            assert.deepEqual(svc.inputs.deploymentCircuitBreaker, { enable: true, rollback: true }, svc.name);
            // Longer than the provider's 20 minutes: a rollback and the target group's deregistration delay.
            assert.deepEqual(options.get(`${T.service}::${svc.name}`)?.customTimeouts, { create: "40m", update: "40m" });
        }
    });
});

describe("invoices-worker service", () => {
    it("runs one essential, health-checked container on port 3334 without a load balancer", () => {
        const [c, ...rest] = containersOf(WORKER);
        assert.equal(rest.length, 0);
        assert.equal(c.name, "invoices-worker");
        assert.equal(c.essential, true);
        assert.deepEqual(c.healthCheck.command, ["CMD", "/usr/local/bin/invoices-worker", "healthcheck"]);
        assert.equal(envOf(c).PORT, "3334");
        const svc = one(T.service, "invoices-worker");
        assert.equal(svc.inputs.loadBalancers, undefined);
        assert.equal(svc.inputs.taskDefinition, `arn:aws:ecs:${REGION}:123456789012:task-definition/${WORKER}:1`);
    });
});

describe("load balancer", () => {
    it("is internet-facing in the public subnets", () => {
        const alb = one(T.loadBalancer, "alb");
        assert.equal(alb.inputs.internal, false);
        assert.equal(alb.inputs.loadBalancerType, "application");
        assert.deepEqual(alb.inputs.subnets, ["public-0_id", "public-1_id"]);
        assert.deepEqual(alb.inputs.securityGroups, [sgId("alb")]);
    });

    it("health-checks GET /health on the API's port over HTTP", () => {
        const tg = one(T.targetGroup, "api");
        assert.equal(tg.inputs.healthCheck.path, "/health");
        assert.equal(tg.inputs.healthCheck.protocol, "HTTP");
        assert.equal(tg.inputs.healthCheck.port, "traffic-port");
        assert.equal(tg.inputs.healthCheck.matcher, "200");
        assert.equal(tg.inputs.port, 3333);
        assert.equal(tg.inputs.protocol, "HTTP");
        assert.equal(tg.inputs.targetType, "ip");
    });

    it("with allowPlainHttp: listens on 80 only, and answers 404 to what no rule forwards", () => {
        const listeners = ofType(T.listener);
        assert.equal(listeners.length, 1);
        const [l] = listeners;
        assert.equal(l.inputs.port, 80);
        assert.equal(l.inputs.protocol, "HTTP");
        assert.equal(l.inputs.loadBalancerArn, one(T.loadBalancer, "alb").state.arn);
        assert.equal(l.inputs.defaultActions.length, 1);
        const [action] = l.inputs.defaultActions;
        assert.equal(action.type, "fixed-response");
        assert.equal(action.fixedResponse.statusCode, "404");
        assert.equal(action.fixedResponse.contentType, "application/json");
        assert.deepEqual(JSON.parse(action.fixedResponse.messageBody), {
            type: "about:blank",
            title: "Not Found",
            status: 404,
            detail: "no such route",
            code: "not_found",
        });
    });

    it("forwards the public routes only: POST /orders, GET /orders, GET /orders/{id}, GET /health (not /metrics, /ready, /openapi.json)", () => {
        assert.deepEqual(exposedRoutes(), ["80 GET /health", "80 GET /orders", "80 GET /orders/*", "80 POST /orders"]);
        const tg = one(T.targetGroup, "api").state.arn;
        for (const rule of ofType(T.listenerRule)) {
            assert.deepEqual(rule.inputs.actions, [{ type: "forward", targetGroupArn: tg }], rule.name);
        }
        const priorities = ofType(T.listenerRule).map((r) => r.inputs.priority);
        assert.equal(new Set(priorities).size, priorities.length, "listener rule priorities must be unique");
    });

    it("registers the orders-api container of the orders service, once the rules exist", () => {
        const svc = one(T.service, "orders");
        assert.deepEqual(svc.inputs.loadBalancers, [
            { targetGroupArn: one(T.targetGroup, "api").state.arn, containerName: "orders-api", containerPort: 3333 },
        ]);
        const deps = (options.get(`${T.service}::orders`)?.dependsOn ?? []) as pulumi.Resource[];
        for (const rule of stack.edge.rules) {
            assert.ok(deps.includes(rule), "the orders service must wait for the listener rules");
        }
    });
});

describe("WAF (wafRateLimit)", () => {
    it("blocks a client IP above the configured requests per 5 minutes, with a 429", () => {
        const [acl, ...others] = ofType(T.webAcl);
        assert.equal(others.length, 0);
        assert.equal(acl.inputs.scope, "REGIONAL");
        assert.deepEqual(acl.inputs.defaultAction, { allow: {} });
        assert.equal(acl.inputs.rules.length, 1);
        const [rule] = acl.inputs.rules;
        assert.deepEqual(rule.statement.rateBasedStatement, { limit: 1000, aggregateKeyType: "IP", evaluationWindowSec: 300 });
        assert.equal(rule.action.block.customResponse.responseCode, 429);
        const body = acl.inputs.customResponseBodies.find((b: any) => b.key === rule.action.block.customResponse.customResponseBodyKey);
        assert.equal(JSON.parse(body.content).status, 429);
    });

    it("is associated with the load balancer", () => {
        const [association, ...others] = ofType(T.webAclAssociation);
        assert.equal(others.length, 0);
        assert.equal(association.inputs.resourceArn, one(T.loadBalancer, "alb").state.arn);
        assert.equal(association.inputs.webAclArn, one(T.webAcl, "waf").state.arn);
    });
});

describe("security groups", () => {
    const rules = (type: string, group: string) => ofType(type).filter((r) => r.inputs.securityGroupId === sgId(group));
    const flows = (type: string, group: string) =>
        new Set(rules(type, group).map((r) => `${r.inputs.fromPort}-${r.inputs.toPort}:${r.inputs.referencedSecurityGroupId ?? r.inputs.cidrIpv4}`));

    it("ALB: 80 from the internet only, out to the API only", () => {
        const ins = rules(T.ingress, "alb");
        assert.deepEqual(ins.map((r) => [r.inputs.fromPort, r.inputs.toPort, r.inputs.cidrIpv4]), [[80, 80, "0.0.0.0/0"]]);
        const outs = rules(T.egress, "alb");
        assert.deepEqual(outs.map((r) => [r.inputs.toPort, r.inputs.referencedSecurityGroupId]), [[3333, sgId("api")]]);
    });

    it("/metrics stays inside the VPC: the services' ports take the ALB (3333) and the scraper group only", () => {
        // Only the ALB takes traffic from an address range, on 80 and 443.
        for (const r of ofType(T.ingress)) {
            if (r.inputs.cidrIpv4 !== undefined || r.inputs.cidrIpv6 !== undefined || r.inputs.prefixListId !== undefined) {
                assert.equal(r.inputs.securityGroupId, sgId("alb"), `${r.name} opens a task's port to an address range`);
                assert.ok([80, 443].includes(r.inputs.fromPort) && r.inputs.toPort === r.inputs.fromPort, r.name);
            }
        }
        assert.deepEqual(flows(T.ingress, "api"), new Set([`3333-3333:${sgId("alb")}`, `3333-3333:${sgId("scraper")}`, `3335-3335:${sgId("scraper")}`]));
        assert.deepEqual(flows(T.ingress, "worker"), new Set([`3334-3334:${sgId("scraper")}`]));
        assert.deepEqual(flows(T.ingress, "scraper"), new Set(), "nothing connects to the scraper");
        assert.deepEqual(
            flows(T.egress, "scraper"),
            new Set([`3333-3333:${sgId("api")}`, `3335-3335:${sgId("api")}`, `3334-3334:${sgId("worker")}`]),
        );
        for (const r of ofType(T.ingress)) {
            assert.equal(r.inputs.ipProtocol, "tcp", r.name);
        }
    });

    it("one-off tasks (migrations, provision-broker): no inbound at all", () => {
        assert.deepEqual(rules(T.ingress, "migrate"), []);
        assert.deepEqual(rules(T.ingress, "provision"), []);
    });

    it("database: 5432 from the API, worker and migration groups only", () => {
        const ins = rules(T.ingress, "db");
        assert.ok(ins.length > 0);
        for (const r of ins) {
            assert.equal(r.inputs.fromPort, 5432);
            assert.equal(r.inputs.toPort, 5432);
            assert.equal(r.inputs.cidrIpv4, undefined);
        }
        assert.deepEqual(
            new Set(ins.map((r) => r.inputs.referencedSecurityGroupId)),
            new Set([sgId("api"), sgId("worker"), sgId("migrate")]),
        );
    });

    it("broker: 5671 from the API (relay) and worker groups, the management API (443) from provision-broker only", () => {
        assert.deepEqual(
            flows(T.ingress, "mq"),
            new Set([`5671-5671:${sgId("api")}`, `5671-5671:${sgId("worker")}`, `443-443:${sgId("provision")}`]),
        );
    });

    it("tasks reach the database and broker through their groups, the rest over HTTPS", () => {
        const outs = (g: string) => rules(T.egress, g).map((r) => `${r.inputs.toPort}>${r.inputs.referencedSecurityGroupId ?? r.inputs.cidrIpv4}`);
        assert.deepEqual(new Set(outs("api")), new Set(["443>0.0.0.0/0", `5432>${sgId("db")}`, `5671>${sgId("mq")}`]));
        assert.deepEqual(new Set(outs("worker")), new Set(["443>0.0.0.0/0", `5432>${sgId("db")}`, `5671>${sgId("mq")}`]));
        assert.deepEqual(new Set(outs("migrate")), new Set(["443>0.0.0.0/0", `5432>${sgId("db")}`]));
        // HTTPS to anywhere includes the broker's management API in the VPC.
        assert.deepEqual(new Set(outs("provision")), new Set(["443>0.0.0.0/0"]));
    });

    it("services run in the private subnets without public IPs, each with its group", () => {
        for (const [svc, sg] of [
            ["orders", "api"],
            ["invoices-worker", "worker"],
        ]) {
            const net = one(T.service, svc).inputs.networkConfiguration;
            assert.deepEqual(net.subnets, ["private-0_id", "private-1_id"]);
            assert.equal(net.assignPublicIp, false);
            assert.deepEqual(net.securityGroups, [sgId(sg)]);
        }
    });
});

describe("data stores", () => {
    it("RDS PostgreSQL: encrypted, private, behind its security group", () => {
        const db = one(T.rds, "db");
        assert.equal(db.inputs.engine, "postgres");
        assert.equal(db.inputs.storageEncrypted, true);
        assert.equal(db.inputs.publiclyAccessible, false);
        assert.deepEqual(db.inputs.vpcSecurityGroupIds, [sgId("db")]);
        assert.deepEqual(one(T.dbSubnetGroup, "db").inputs.subnetIds, ["private-0_id", "private-1_id"]);
    });

    it("Amazon MQ for RabbitMQ: private, behind its security group", () => {
        const mq = one(T.broker, "broker");
        assert.equal(mq.inputs.engineType, "RabbitMQ");
        assert.equal(mq.inputs.publiclyAccessible, false);
        assert.deepEqual(mq.inputs.securityGroups, [sgId("mq")]);
        assert.deepEqual(mq.inputs.subnetIds, ["private-0_id"]);
    });
});

describe("auto scaling", () => {
    const target = (name: string) => one(T.scalingTarget, name);
    const policiesOf = (name: string) =>
        ofType(T.scalingPolicy).filter((p) => p.inputs.resourceId === target(name).inputs.resourceId);

    it("scales the orders service on CPU between the configured bounds", () => {
        const t = target("orders");
        assert.equal(t.inputs.resourceId, "service/orders-pipeline-test/orders");
        assert.equal(t.inputs.scalableDimension, "ecs:service:DesiredCount");
        assert.equal(t.inputs.minCapacity, 2);
        assert.equal(t.inputs.maxCapacity, 8);
        const [p, ...rest] = policiesOf("orders");
        assert.equal(rest.length, 0);
        assert.equal(p.inputs.policyType, "TargetTrackingScaling");
        assert.equal(
            p.inputs.targetTrackingScalingPolicyConfiguration.predefinedMetricSpecification.predefinedMetricType,
            "ECSServiceAverageCPUUtilization",
        );
    });

    it("scales the worker on the depth of its queue", () => {
        const t = target("invoices-worker");
        assert.equal(t.inputs.resourceId, "service/orders-pipeline-test/invoices-worker");
        assert.equal(t.inputs.minCapacity, 1);
        assert.equal(t.inputs.maxCapacity, 5);
        const policies = policiesOf("invoices-worker");
        assert.equal(policies.length, 2);
        // The scaling alarms (the operator's alarms, test/alarms.test.ts, notify the SNS topic).
        const alarms = ofType(T.alarm).filter((a) => a.name.startsWith("invoices-worker-queue-"));
        assert.equal(alarms.length, 2);
        for (const a of alarms) {
            assert.equal(a.inputs.namespace, "AWS/AmazonMQ");
            assert.equal(a.inputs.metricName, "MessageCount");
            assert.deepEqual(a.inputs.dimensions, {
                Broker: "orders-pipeline-test-broker",
                VirtualHost: "/",
                Queue: "prod.invoices.order-created",
            });
            const [action] = a.inputs.alarmActions;
            assert.ok(policies.some((p) => p.state.arn === action), `${a.name} triggers no worker policy`);
        }
        const adjustments = (alarm: string) => {
            const action = one(T.alarm, alarm).inputs.alarmActions[0];
            const policy = policies.find((p) => p.state.arn === action)!;
            return policy.inputs.stepScalingPolicyConfiguration.stepAdjustments.map((s: any) => s.scalingAdjustment);
        };
        assert.ok(adjustments("invoices-worker-queue-high").every((n: number) => n > 0));
        assert.ok(adjustments("invoices-worker-queue-low").every((n: number) => n < 0));
    });

    it("leaves desiredCount to auto scaling once the services exist", async () => {
        assert.equal(await value(stack.services.ordersService.desiredCount), 2);
        for (const svc of ["orders", "invoices-worker"]) {
            assert.deepEqual(options.get(`${T.service}::${svc}`)?.ignoreChanges, ["desiredCount"], svc);
        }
    });
});

describe("images and logs", () => {
    it("has a scanned ECR repository per image", () => {
        const repos = ofType(T.ecr);
        assert.deepEqual(repos.map((r) => r.inputs.name).sort(), [
            "orders-pipeline-test/invoices-worker",
            "orders-pipeline-test/orders-api",
            "orders-pipeline-test/outbox-relay",
        ]);
        assert.ok(repos.every((r) => r.inputs.imageScanningConfiguration.scanOnPush === true));
    });

    it("keeps a pushed tag's image (immutable tags) and lets pulumi destroy delete repositories that hold images", () => {
        for (const repo of ofType(T.ecr)) {
            assert.equal(repo.inputs.imageTagMutability, "IMMUTABLE", repo.name);
            assert.equal(repo.inputs.forceDelete, true, repo.name);
        }
    });

    it("keep the images deploy.sh tagged deployed-… before counting the rest, so the running release is never expired", () => {
        const policies = ofType("aws:ecr/lifecyclePolicy:LifecyclePolicy");
        assert.equal(policies.length, 3);
        for (const p of policies) {
            const rules = JSON.parse(p.inputs.policy).rules as { rulePriority: number; selection: any }[];
            const byPriority = [...rules].sort((a, b) => a.rulePriority - b.rulePriority);
            assert.deepEqual(byPriority[0].selection, {
                tagStatus: "tagged",
                tagPrefixList: [DEPLOYED_TAG_PREFIX],
                countType: "imageCountMoreThan",
                countNumber: 10,
            });
            // ECR wants the rule on any image last.
            assert.equal(byPriority.at(-1)!.selection.tagStatus, "any");
        }
    });

    it("ships the RDS CA bundle at the path the database URLs name", () => {
        const dockerfile = readFileSync(join(__dirname, "../../Dockerfile"), "utf8");
        const add = dockerfile.split("\n").find((line) => /^ADD .*rds.*\.pem/.test(line));
        assert.ok(add, "the Dockerfile adds no RDS CA bundle");
        assert.equal(add.trim().split(/\s+/).at(-1), RDS_CA_BUNDLE);
    });

    it("sends every container's output to its own CloudWatch log group", () => {
        const groups = new Map(ofType(T.logGroup).map((g) => [g.inputs.name, g]));
        for (const family of [...SERVICES, ...ONE_OFF]) {
            for (const c of containersOf(family)) {
                assert.equal(c.logConfiguration.logDriver, "awslogs");
                const name = c.logConfiguration.options["awslogs-group"];
                assert.ok(groups.has(name), `${c.name} logs to ${name}, which is not created`);
                assert.equal(groups.get(name)!.inputs.retentionInDays, 14);
                assert.equal(c.logConfiguration.options["awslogs-region"], REGION);
            }
        }
        for (const c of [...containersOf(ORDERS), ...containersOf(WORKER)]) {
            assert.equal(c.logConfiguration.options["awslogs-group"], `/ecs/orders-pipeline-test/${c.name}`);
        }
    });
});

describe("one-off tasks", () => {
    it("run `<binary> migrate` against each database, and `outbox-relay provision-broker`", () => {
        const cases = [
            [MIGRATE_ORDERS, "orders-api", arns["orders-migrate-database-url"], "migrate"],
            [MIGRATE_INVOICES, "invoices-worker", arns["invoices-migrate-database-url"], "migrate"],
            [PROVISION, "outbox-relay", undefined, "provision-broker"],
        ];
        for (const [family, binary, dbSecret, command] of cases) {
            const [c, ...rest] = containersOf(family!);
            assert.equal(rest.length, 0);
            assert.deepEqual(c.command, [command]);
            assert.equal(c.essential, true);
            assert.match(c.image, new RegExp(`/orders-pipeline-test/${binary}:v1\\.2\\.3$`));
            assert.equal(secretsOf(c).DATABASE_URL, dbSecret);
            assert.equal(c.healthCheck, undefined);
            const arn = `arn:aws:ecs:${REGION}:123456789012:task-definition/${family}:1`;
            assert.ok(!ofType(T.service).some((s) => s.inputs.taskDefinition === arn), "a migration is not a service");
        }
    });

    it("export their ARNs and the run-task command lines", async () => {
        const outputs = stack.outputs;
        const taskArns = (await value(outputs.migrationTaskDefinitionArns)) as Record<string, string>;
        assert.equal(taskArns.orders, `arn:aws:ecs:${REGION}:123456789012:task-definition/${MIGRATE_ORDERS}:1`);
        const commands = (await value(outputs.migrationCommands)) as Record<string, string>;
        const provisionArn = (await value(outputs.provisionBrokerTaskDefinitionArn)) as string;
        assert.equal(provisionArn, `arn:aws:ecs:${REGION}:123456789012:task-definition/${PROVISION}:1`);
        const cases: [string, string, string][] = [
            [commands.orders, taskArns.orders, "migrate"],
            [commands.invoices, taskArns.invoices, "migrate"],
            [(await value(outputs.provisionBrokerCommand)) as string, provisionArn, "provision"],
        ];
        for (const [cmd, arn, sg] of cases) {
            assert.ok(cmd.startsWith("aws ecs run-task "), cmd);
            assert.ok(cmd.includes(`--task-definition ${arn}`), cmd);
            assert.ok(cmd.includes("--cluster orders-pipeline-test"), cmd);
            assert.ok(cmd.includes("subnets=[private-0_id,private-1_id]"), cmd);
            assert.ok(cmd.includes(`securityGroups=[${sgId(sg)}]`), cmd);
            assert.ok(cmd.includes("assignPublicIp=DISABLED"), cmd);
            assert.ok(cmd.includes(`--region ${REGION} `), cmd);
        }
    });

    it("export what infra/deploy.sh runs them with: the cluster, each task definition and network configuration", async () => {
        const oneOff = (await value(stack.outputs.oneOffTasks)) as {
            cluster: string;
            tasks: Record<string, { taskDefinition: string; networkConfiguration: string }>;
        };
        assert.equal(oneOff.cluster, "orders-pipeline-test");
        assert.deepEqual(Object.keys(oneOff.tasks).sort(), ["migrate-invoices", "migrate-orders", "provision-broker"]);
        const commands = (await value(stack.outputs.migrationCommands)) as Record<string, string>;
        const cases: [string, string, string][] = [
            ["migrate-orders", commands.orders, "migrate"],
            ["migrate-invoices", commands.invoices, "migrate"],
            ["provision-broker", (await value(stack.outputs.provisionBrokerCommand)) as string, "provision"],
        ];
        for (const [name, command, sg] of cases) {
            const task = oneOff.tasks[name];
            assert.equal(
                task.networkConfiguration,
                `awsvpcConfiguration={subnets=[private-0_id,private-1_id],securityGroups=[${sgId(sg)}],assignPublicIp=DISABLED}`,
            );
            // The hand-run command line is made of the same values.
            assert.ok(command.includes(`--task-definition ${task.taskDefinition} `), command);
            assert.ok(command.includes(`--network-configuration '${task.networkConfiguration}'`), command);
        }
    });
});

describe("providers", () => {
    it("register every resource with a named provider (stable across versions), the AWS one in the stack's region", () => {
        const aws = one("pulumi:providers:aws", "aws");
        assert.equal(aws.inputs.region, REGION);
        one("pulumi:providers:random", "random");
        const managed = resources.filter((r) => /^(aws|random):/.test(r.type));
        assert.ok(managed.length > 50);
        for (const r of managed) {
            const pkg = r.type.split(":")[0];
            assert.match(r.provider ?? "", new RegExp(`[:$]pulumi:providers:${pkg}::${pkg}::${pkg}_id$`), `${r.type} ${r.name}`);
        }
    });
});

describe("outputs", () => {
    it("expose the URL, cluster and repositories", async () => {
        assert.equal(await value(stack.outputs.url), `http://alb-1234567890.${REGION}.elb.amazonaws.com`);
        assert.equal(await value(stack.outputs.clusterName), "orders-pipeline-test");
        const repos = (await value(stack.outputs.ecrRepositoryUrls)) as Record<string, string>;
        assert.deepEqual(Object.keys(repos).sort(), ["invoices-worker", "orders-api", "outbox-relay"]);
        assert.equal(await value(stack.outputs.metricsScraperSecurityGroupId), sgId("scraper"));
        assert.ok(resources.length > 50);
    });

    it("name the deployed image tag and the task definition each service must end up on (infra/deploy.sh checks it)", async () => {
        assert.equal(await value(stack.outputs.imageTag), "v1.2.3");
        const services = (await value(stack.outputs.ecsServices)) as Record<string, { name: string; taskDefinition: string }>;
        assert.deepEqual(services, {
            orders: { name: "orders", taskDefinition: `arn:aws:ecs:${REGION}:123456789012:task-definition/${ORDERS}:1` },
            "invoices-worker": { name: "invoices-worker", taskDefinition: `arn:aws:ecs:${REGION}:123456789012:task-definition/${WORKER}:1` },
        });
        for (const [name, expected] of Object.entries(services)) {
            const svc = ofType(T.service).find((x) => x.inputs.name === expected.name);
            assert.equal(svc?.inputs.taskDefinition, expected.taskDefinition, name);
        }
    });
});
