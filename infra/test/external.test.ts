/**
 * External databases (e.g. Neon) and broker through config secrets, an ACM
 * certificate (HTTPS), no WAF, an OTLP collector on a non-HTTPS port, no OTLP
 * headers; the configuration checks.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import * as pulumi from "@pulumi/pulumi";

import { loadSettings } from "../src/config";
import { checkManagementUrl, withCredentials } from "../src/data";
import { createStack } from "../src/stack";
import { containersOf, envOf, exposedRoutes, ofType, one, PROJECT, IMAGE_TAG, REGION, run, secretsOf, secretValue, setup, T } from "./harness";

const ORDERS_URL = "postgres://app:pw@ep-cool-1.eu-west-1.aws.neon.tech:5432/orders?sslmode=verify-full&sslrootcert=system";
const INVOICES_URL = "postgres://app:pw@ep-cool-1.eu-west-1.aws.neon.tech:5432/invoices?sslmode=verify-full&sslrootcert=system";
const BROKER_URL = "amqps://user:pw@rabbit.example.com:5671/%2f";
const BROKER_ADMIN_URL = "https://user:pw@rabbit.example.com";
const CERT = `arn:aws:acm:${REGION}:123456789012:certificate/abc`;
const CONFIG = {
    "aws:region": REGION,
    imageTag: IMAGE_TAG,
    ordersDatabaseUrl: ORDERS_URL,
    invoicesDatabaseUrl: INVOICES_URL,
    brokerUrl: BROKER_URL,
    brokerAdminUrl: BROKER_ADMIN_URL,
    certificateArn: CERT,
    otlpEndpoint: "http://collector.example.com:4318",
    otlpMetrics: "false",
    authJwksUrl: "https://tenant.eu.auth0.com/.well-known/jwks.json",
    authIssuer: "https://tenant.eu.auth0.com/",
    authAudience: "https://orders.example.com",
};
const SECRET_KEYS = ["ordersDatabaseUrl", "invoicesDatabaseUrl", "brokerUrl", "brokerAdminUrl"];
setup(CONFIG, SECRET_KEYS);

const ORDERS = "orders-pipeline-test-orders";
const WORKER = "orders-pipeline-test-invoices-worker";
const PROVISION = "orders-pipeline-test-provision-broker";
const sgId = (name: string) => one(T.sg, name).id;

before(async () => {
    await run(createStack);
});

describe("external databases and broker", () => {
    it("create neither RDS nor Amazon MQ nor their security groups", () => {
        assert.equal(ofType(T.rds).length, 0);
        assert.equal(ofType(T.broker).length, 0);
        assert.deepEqual(ofType(T.sg).map((g) => g.name).sort(), ["alb", "api", "migrate", "provision", "scraper", "worker"]);
    });

    it("give the configured (owner's) URLs to the one-off tasks only, and the services their own roles on the same hosts", () => {
        const stored = (name: string) => one(T.secretVersion, name).inputs.secretString as string;
        assert.equal(stored("orders-migrate-database-url"), ORDERS_URL);
        assert.equal(stored("invoices-migrate-database-url"), INVOICES_URL);
        assert.equal(stored("broker-admin-url"), BROKER_ADMIN_URL);
        const pw = (name: string) => stored(name);
        assert.equal(stored("outbox-relay-database-url"), withCredentials(ORDERS_URL, "outbox_relay", pw("outbox-relay-db-password")));
        assert.equal(
            stored("outbox-relay-database-url"),
            `postgres://outbox_relay:${pw("outbox-relay-db-password")}@ep-cool-1.eu-west-1.aws.neon.tech:5432/orders?sslmode=verify-full&sslrootcert=system`,
        );
        assert.equal(stored("invoices-worker-broker-url"), `amqps://invoices_worker:${pw("invoices-worker-broker-password")}@rabbit.example.com:5671/%2f`);
        const arn = (name: string) => one(T.secret, name).state.arn;
        const relay = containersOf(ORDERS).find((c) => c.name === "outbox-relay");
        assert.deepEqual(secretsOf(relay), { DATABASE_URL: arn("outbox-relay-database-url"), BROKER_URL: arn("outbox-relay-broker-url") });
        const [worker] = containersOf(WORKER);
        assert.deepEqual(secretsOf(worker), {
            DATABASE_URL: arn("invoices-worker-database-url"),
            BROKER_URL: arn("invoices-worker-broker-url"),
        });
        for (const c of [...containersOf(ORDERS), ...containersOf(WORKER)]) {
            for (const v of Object.values(secretsOf(c)).map(secretValue)) {
                assert.ok(![ORDERS_URL, INVOICES_URL, BROKER_URL, BROKER_ADMIN_URL].includes(v), `${c.name} receives a configured owner's URL`);
                assert.notEqual(new URL(v).username, "user", c.name);
            }
        }
        assert.equal(secretsOf(containersOf(PROVISION)[0]).BROKER_ADMIN_URL, arn("broker-admin-url"));
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
        assert.deepEqual(outs("provision"), new Set([https, otlp]));
    });

    it("scale the worker on CPU (no Amazon MQ queue metric)", () => {
        assert.equal(ofType(T.alarm).filter((a) => a.name.startsWith("invoices-worker-queue-")).length, 0);
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

    it("serves 443 with the certificate and a TLS 1.3/1.2 policy, answering 404 to what no rule forwards", () => {
        const tg = one(T.targetGroup, "api");
        assert.equal(tg.inputs.healthCheck.path, "/health");
        assert.equal(ofType(T.listener).length, 2);
        const https = one(T.listener, "https");
        assert.equal(https.inputs.port, 443);
        assert.equal(https.inputs.protocol, "HTTPS");
        assert.equal(https.inputs.certificateArn, CERT);
        assert.equal(https.inputs.sslPolicy, "ELBSecurityPolicy-TLS13-1-2-2021-06");
        assert.equal(https.inputs.defaultActions.length, 1);
        assert.equal(https.inputs.defaultActions[0].type, "fixed-response");
        assert.equal(https.inputs.defaultActions[0].fixedResponse.statusCode, "404");
    });

    it("forwards the public routes on 443 only; port 80 only redirects to 443 (301)", () => {
        assert.deepEqual(exposedRoutes(), ["443 GET /health", "443 GET /orders", "443 GET /orders/*", "443 POST /orders"]);
        const http = one(T.listener, "http");
        assert.equal(http.inputs.port, 80);
        assert.equal(http.inputs.protocol, "HTTP");
        assert.deepEqual(http.inputs.defaultActions, [
            { type: "redirect", redirect: { protocol: "HTTPS", port: "443", statusCode: "HTTP_301" } },
        ]);
        assert.ok(!ofType(T.listenerRule).some((r) => r.inputs.listenerArn === http.state.arn), "no rule on port 80");
    });
});

describe("without wafRateLimit", () => {
    it("creates no web ACL", () => {
        assert.equal(ofType(T.webAcl).length, 0);
        assert.equal(ofType(T.webAclAssociation).length, 0);
    });
});

describe("OTLP without headers, otlpMetrics false", () => {
    it("sets the endpoint and no headers secret, and pushes no metrics over OTLP", () => {
        assert.equal(ofType(T.secret).filter((s) => s.name === "otlp-headers").length, 0);
        for (const c of [...containersOf(ORDERS), ...containersOf(WORKER)]) {
            assert.equal(envOf(c).OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector.example.com:4318");
            assert.ok(!("OTEL_EXPORTER_OTLP_HEADERS" in secretsOf(c)));
            // otlpMetrics false: traces only; the EMF gauges still go to CloudWatch.
            assert.equal(envOf(c).OTEL_METRICS_EXPORTER, undefined, c.name);
            assert.equal(envOf(c).METRICS_EMF_NAMESPACE, "orders-pipeline-test", c.name);
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

    it("has no default image tag: a missing or malformed imageTag stops the preview, naming infra/deploy.sh", () => {
        assert.throws(withConfig({ imageTag: undefined }), /config imageTag is not set.*no default.*infra\/deploy\.sh/s);
        assert.throws(withConfig({ imageTag: "" }), /config imageTag is not set/);
        for (const tag of ["latest tag", "-v1", "v1:2", "a".repeat(129)]) {
            assert.throws(withConfig({ imageTag: tag }), /config imageTag must be a Docker tag/, tag);
        }
        assert.equal(withConfig({ imageTag: "v1.4.0_rc-1" })().imageTag, "v1.4.0_rc-1");
    });

    it("requires aws:region in the stack (not the region of whoever runs it), and keeps it", () => {
        assert.throws(withConfig({ "aws:region": undefined }), /config aws:region is not set.*Pulumi\.test\.yaml.*infra\/deploy\.sh and CI/s);
        assert.equal(withConfig({ "aws:region": "ap-southeast-2" })().region, "ap-southeast-2");
    });

    it("rejects a single external database URL", () => {
        assert.throws(withConfig({ invoicesDatabaseUrl: undefined }), /both ordersDatabaseUrl and invoicesDatabaseUrl/);
    });

    it("requires the identity provider's JWKS (https), issuer and audience: authentication cannot be left out", () => {
        for (const key of ["authJwksUrl", "authIssuer", "authAudience"]) {
            assert.throws(withConfig({ [key]: undefined }), new RegExp(`config ${key} required.*cannot be turned off`, "s"));
        }
        for (const url of ["http://idp.example.com/jwks.json", "file:///etc/jwks.json", "idp.example.com"]) {
            assert.throws(withConfig({ authJwksUrl: url }), /authJwksUrl/);
        }
        // A stray AUTH_DISABLED in the stack configuration has no effect.
        assert.deepEqual(withConfig({ authDisabled: "true", AUTH_DISABLED: "true" })().auth, {
            jwksUrl: CONFIG.authJwksUrl,
            issuer: CONFIG.authIssuer,
            audience: CONFIG.authAudience,
        });
    });

    it("refuses plain HTTP unless allowPlainHttp says so", () => {
        for (const allowPlainHttp of [undefined, "false"]) {
            assert.throws(withConfig({ certificateArn: undefined, allowPlainHttp }), /certificateArn is required.*allowPlainHttp true/s);
        }
        assert.equal(withConfig({ certificateArn: undefined, allowPlainHttp: "true" })().allowPlainHttp, true);
        assert.equal(withConfig({ allowPlainHttp: "true" })().certificateArn, CERT, "a certificate wins: HTTPS");
    });

    it("rejects a single external broker URL and a WAF limit out of AWS's range", () => {
        assert.throws(withConfig({ brokerAdminUrl: undefined }), /both brokerUrl and brokerAdminUrl/);
        assert.throws(withConfig({ brokerUrl: undefined }), /both brokerUrl and brokerAdminUrl/);
        assert.throws(withConfig({ wafRateLimit: "5" }), /wafRateLimit/);
        assert.throws(withConfig({ wafRateLimit: "1.5" }), /wafRateLimit/);
        assert.equal(withConfig({ wafRateLimit: "100" })().wafRateLimit, 100);
    });

    it("wants the broker's management API over HTTPS on 443 with the admin's credentials", () => {
        assert.doesNotThrow(() => checkManagementUrl(BROKER_ADMIN_URL));
        assert.doesNotThrow(() => checkManagementUrl("https://user:pw@rabbit.example.com:443/"));
        assert.throws(() => checkManagementUrl("http://user:pw@rabbit.example.com"), /https:\/\/ URL on port 443/);
        assert.throws(() => checkManagementUrl("https://user:pw@rabbit.example.com:15671"), /port 443/);
        assert.throws(() => checkManagementUrl("https://rabbit.example.com"), /credentials/);
        assert.throws(() => checkManagementUrl("not a url"), /not a URL/);
    });

    it("rejects an invalid broker namespace and a max count below the desired count", () => {
        assert.throws(withConfig({ brokerNamespace: "a b" }), /brokerNamespace/);
        assert.throws(withConfig({ apiDesiredCount: "4", apiMaxCount: "2" }), /apiMaxCount/);
    });
});
