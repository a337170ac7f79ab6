/**
 * The alarms with an external database and broker: no RDS alarms, the queue
 * and dead-letter alarms on the worker's EMF gauge; no email subscription
 * without alarmEmail; and the alarmEmail check.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import * as pulumi from "@pulumi/pulumi";

import { loadSettings } from "../src/config";
import { createStack } from "../src/stack";
import { AUTH_CONFIG, ofType, PROJECT, IMAGE_TAG, REGION, run, setup, T } from "./harness";

const CONFIG: Record<string, string> = {
    "aws:region": REGION,
    imageTag: IMAGE_TAG,
    ordersDatabaseUrl: "postgres://app:pw@db.example.com:5432/orders?sslmode=verify-full&sslrootcert=system",
    invoicesDatabaseUrl: "postgres://app:pw@db.example.com:5432/invoices?sslmode=verify-full&sslrootcert=system",
    brokerUrl: "amqps://user:pw@rabbit.example.com:5671/%2f",
    brokerAdminUrl: "https://user:pw@rabbit.example.com",
    allowPlainHttp: "true",
    ...AUTH_CONFIG,
};
const SECRET_KEYS = ["ordersDatabaseUrl", "invoicesDatabaseUrl", "brokerUrl", "brokerAdminUrl"];
setup(CONFIG, SECRET_KEYS);

const operatorAlarms = () =>
    new Map(ofType(T.alarm).filter((a) => a.name.startsWith("alarm-")).map((a) => [a.name.slice("alarm-".length), a]));

before(async () => {
    await run(createStack);
});

describe("alarms (external database and broker)", () => {
    it("are the expected set: no RDS alarms", () => {
        assert.deepEqual([...operatorAlarms().keys()].sort(), [
            "ApiDown",
            "DeadLetters",
            "HighErrorRate",
            "HighLatencyP95",
            "OutboxBacklog",
            "OutboxBlocked",
            "OutboxOldestAge",
            "QueueBacklog",
            "RelayBrokerDisconnected",
            "RelayNotListening",
            "WorkerDown",
        ]);
    });

    it("watch the queue and the dead-letter queue through the worker's EMF gauge", () => {
        for (const [name, queue, threshold, periods] of [
            ["QueueBacklog", "invoices.order-created", 100, 5],
            ["DeadLetters", "invoices.order-created.dlq", 0, 1],
        ] as const) {
            const a = operatorAlarms().get(name)!.inputs;
            assert.equal(a.namespace, "orders-pipeline-test", name);
            assert.equal(a.metricName, "invoices_queue_messages", name);
            assert.equal(a.statistic, "Maximum", name);
            assert.deepEqual(a.dimensions, { Service: "invoices-worker", queue }, name);
            assert.equal(a.comparisonOperator, "GreaterThanThreshold", name);
            assert.equal(a.threshold, threshold, name);
            assert.equal(a.period, 60, name);
            assert.equal(a.evaluationPeriods, periods, name);
            assert.equal(a.treatMissingData, "notBreaching", name);
        }
    });

    it("have a topic but no email subscription without alarmEmail", () => {
        assert.equal(ofType(T.topic).length, 1);
        assert.equal(ofType(T.subscription).length, 0);
        const arn = ofType(T.topic)[0].state.arn;
        for (const [name, a] of operatorAlarms()) {
            assert.deepEqual(a.inputs.alarmActions, [arn], name);
            assert.deepEqual(a.inputs.okActions, [arn], name);
        }
    });

    it("refuse an alarmEmail that is not an address", () => {
        const withEmail = (alarmEmail: string) => () => {
            pulumi.runtime.setAllConfig(
                Object.fromEntries(
                    Object.entries({ ...CONFIG, alarmEmail }).map(([k, v]) => [k.includes(":") ? k : `${PROJECT}:${k}`, v]),
                ),
                SECRET_KEYS.map((k) => `${PROJECT}:${k}`),
            );
            return loadSettings();
        };
        for (const bad of ["oncall", "oncall@", "@example.com", "on call@example.com", "oncall@example"]) {
            assert.throws(withEmail(bad), /config alarmEmail must be an email address/, bad);
        }
        assert.equal(withEmail("oncall+pager@example.com")().alarmEmail, "oncall+pager@example.com");
    });
});
