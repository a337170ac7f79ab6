/**
 * External databases (e.g. Neon) and broker through config secrets, an ACM
 * certificate, an OTLP collector on a non-HTTPS port, no OTLP headers.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import * as pulumi from "@pulumi/pulumi";

import { loadSettings } from "../src/config";
import { createStack } from "../src/stack";
import { containersOf, envOf, ofType, one, PROJECT, REGION, run, secretsOf, setup, T } from "./harness";

const ORDERS_URL = "postgres://app:pw@ep-cool-1.eu-west-1.aws.neon.tech:5432/orders?sslmode=verify-full&sslrootcert=system";
const INVOICES_URL = "postgres://app:pw@ep-cool-1.eu-west-1.aws.neon.tech:5432/invoices?sslmode=verify-full&sslrootcert=system";
const BROKER_URL = "amqps://user:pw@rabbit.example.com:5671/%2f";
const CERT = `arn:aws:acm:${REGION}:123456789012:certificate/abc`;
const CONFIG = {
    "aws:region": REGION,
    ordersDatabaseUrl: ORDERS_URL,
    invoicesDatabaseUrl: INVOICES_URL,
    brokerUrl: BROKER_URL,
    certificateArn: CERT,
    otlpEndpoint: "http://collector.example.com:4318",
};
const SECRET_KEYS = ["ordersDatabaseUrl", "invoicesDatabaseUrl", "brokerUrl"];
setup(CONFIG, SECRET_KEYS);

const ORDERS = "orders-pipeline-test-orders";
const WORKER = "orders-pipeline-test-invoices-worker";
const sgId = (name: string) => one(T.sg, name).id;

before(async () => {
    await run(createStack);
});

describe("external databases and broker", () => {
    it("create neither RDS nor Amazon MQ nor their security groups", () => {
        assert.equal(ofType(T.rds).length, 0);
        assert.equal(ofType(T.broker).length, 0);
        assert.deepEqual(ofType(T.sg).map((g) => g.name).sort(), ["alb", "api", "migrate", "worker"]);
    });

    it("store the configured URLs in Secrets Manager, injected as before", () => {
        assert.equal(one(T.secretVersion, "orders-database-url").inputs.secretString, ORDERS_URL);
        assert.equal(one(T.secretVersion, "invoices-database-url").inputs.secretString, INVOICES_URL);
        assert.equal(one(T.secretVersion, "broker-url").inputs.secretString, BROKER_URL);
        const arn = (name: string) => one(T.secret, name).state.arn;
        const relay = containersOf(ORDERS).find((c) => c.name === "outbox-relay");
        assert.deepEqual(secretsOf(relay), { DATABASE_URL: arn("orders-database-url"), BROKER_URL: arn("broker-url") });
        const [worker] = containersOf(WORKER);
        assert.deepEqual(secretsOf(worker), { DATABASE_URL: arn("invoices-database-url"), BROKER_URL: arn("broker-url") });
    });

    it("open 5432 and 5671 outbound to the internet instead of to in-VPC groups", () => {
        const outs = (g: string) =>
            new Set(
                ofType(T.egress)
                    .filter((r) => r.inputs.securityGroupId === sgId(g))
                    .map((r) => `${r.inputs.toPort}>${r.inputs.cidrIpv4}`),
            );
        const https = "443>0.0.0.0/0";
        const otlp = "4318>0.0.0.0/0";
        assert.deepEqual(outs("api"), new Set([https, otlp, "5432>0.0.0.0/0", "5671>0.0.0.0/0"]));
        assert.deepEqual(outs("worker"), new Set([https, otlp, "5432>0.0.0.0/0", "5671>0.0.0.0/0"]));
        assert.deepEqual(outs("migrate"), new Set([https, otlp, "5432>0.0.0.0/0"]));
    });

    it("scale the worker on CPU (no Amazon MQ queue metric)", () => {
        assert.equal(ofType(T.alarm).length, 0);
        const target = one(T.scalingTarget, "invoices-worker");
        const policies = ofType(T.scalingPolicy).filter((p) => p.inputs.resourceId === target.inputs.resourceId);
        assert.equal(policies.length, 1);
        assert.equal(
            policies[0].inputs.targetTrackingScalingPolicyConfiguration.predefinedMetricSpecification.predefinedMetricType,
            "ECSServiceAverageCPUUtilization",
        );
    });
});

describe("HTTPS", () => {
    it("adds 443 to the ALB's ingress", () => {
        const ins = ofType(T.ingress).filter((r) => r.inputs.securityGroupId === sgId("alb"));
        assert.deepEqual(ins.map((r) => r.inputs.toPort).sort(), [443, 80]);
        assert.ok(ins.every((r) => r.inputs.cidrIpv4 === "0.0.0.0/0"));
    });

    it("forwards 443 to the /health-checked target group and redirects 80 to 443", () => {
        const tg = one(T.targetGroup, "api");
        assert.equal(tg.inputs.healthCheck.path, "/health");
        const https = one(T.listener, "https");
        assert.equal(https.inputs.port, 443);
        assert.equal(https.inputs.protocol, "HTTPS");
        assert.equal(https.inputs.certificateArn, CERT);
        assert.deepEqual(https.inputs.defaultActions, [{ type: "forward", targetGroupArn: tg.state.arn }]);
        const http = one(T.listener, "http");
        assert.equal(http.inputs.port, 80);
        assert.equal(http.inputs.defaultActions[0].type, "redirect");
        assert.equal(http.inputs.defaultActions[0].redirect.protocol, "HTTPS");
    });
});

describe("OTLP without headers", () => {
    it("sets the endpoint and no headers secret", () => {
        assert.equal(ofType(T.secret).filter((s) => s.name === "otlp-headers").length, 0);
        for (const c of [...containersOf(ORDERS), ...containersOf(WORKER)]) {
            assert.equal(envOf(c).OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector.example.com:4318");
            assert.ok(!("OTEL_EXPORTER_OTLP_HEADERS" in secretsOf(c)));
        }
    });
});

describe("configuration checks", () => {
    const withConfig = (extra: Record<string, string | undefined>) => {
        const config: Record<string, string> = {};
        for (const [k, v] of Object.entries({ ...CONFIG, ...extra })) {
            if (v !== undefined) {
                config[k.includes(":") ? k : `${PROJECT}:${k}`] = v;
            }
        }
        pulumi.runtime.setAllConfig(config, SECRET_KEYS.map((k) => `${PROJECT}:${k}`));
        return () => loadSettings();
    };

    it("accepts the configuration above", () => {
        assert.doesNotThrow(withConfig({}));
    });

    it("rejects a single external database URL", () => {
        assert.throws(withConfig({ invoicesDatabaseUrl: undefined }), /both ordersDatabaseUrl and invoicesDatabaseUrl/);
    });

    it("rejects an invalid broker namespace and a max count below the desired count", () => {
        assert.throws(withConfig({ brokerNamespace: "a b" }), /brokerNamespace/);
        assert.throws(withConfig({ apiDesiredCount: "4", apiMaxCount: "2" }), /apiMaxCount/);
    });
});
