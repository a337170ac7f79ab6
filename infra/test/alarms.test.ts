/**
 * The operator's alarms with RDS and Amazon MQ: one SNS topic (mailed to
 * alarmEmail) notified by every alarm, when it fires and when it clears; each
 * alarm's metric, statistic, dimensions, threshold and periods. Configured with
 * a broker namespace and a dbMaxConnections override (the DbConnections
 * alarm's 80 % uses it, as the connection budget does).
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import { createStack } from "../src/stack";
import { AUTH_CONFIG, ofType, one, IMAGE_TAG, REGION, run, setup, T, value } from "./harness";

setup({
    "aws:region": REGION,
    imageTag: IMAGE_TAG,
    allowPlainHttp: "true",
    ...AUTH_CONFIG,
    brokerNamespace: "prod",
    alarmEmail: "oncall@example.com",
    dbMaxConnections: "200",
});

const PREFIX = "orders-pipeline-test";
const ALB = "app/alb/50dc6c495c0c9188";
const TARGET_GROUP = "targetgroup/api/943f017f100becff";
const BROKER = "orders-pipeline-test-broker";
const DB = "db-0a1b2c3d";

/** Every alarm of this stack and what it must be; a missing or extra one fails. */
const EXPECTED: Record<string, Record<string, unknown>> = {
    HighLatencyP95: {
        namespace: "AWS/ApplicationELB",
        metricName: "TargetResponseTime",
        extendedStatistic: "p95",
        dimensions: { LoadBalancer: ALB },
        comparisonOperator: "GreaterThanThreshold",
        threshold: 1,
        period: 300,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
    },
    ApiDown: {
        namespace: "AWS/ApplicationELB",
        metricName: "HealthyHostCount",
        statistic: "Minimum",
        dimensions: { TargetGroup: TARGET_GROUP, LoadBalancer: ALB },
        comparisonOperator: "LessThanThreshold",
        threshold: 1,
        period: 60,
        evaluationPeriods: 2,
        treatMissingData: "breaching",
    },
    WorkerDown: {
        namespace: PREFIX,
        metricName: "invoices_broker_connected",
        statistic: "Maximum",
        dimensions: { Service: "invoices-worker" },
        comparisonOperator: "LessThanThreshold",
        threshold: 1,
        period: 60,
        evaluationPeriods: 3,
        treatMissingData: "breaching",
    },
    QueueBacklog: {
        namespace: "AWS/AmazonMQ",
        metricName: "MessageCount",
        statistic: "Maximum",
        dimensions: { Broker: BROKER, VirtualHost: "/", Queue: "prod.invoices.order-created" },
        comparisonOperator: "GreaterThanThreshold",
        threshold: 100,
        period: 60,
        evaluationPeriods: 5,
        treatMissingData: "notBreaching",
    },
    DeadLetters: {
        namespace: "AWS/AmazonMQ",
        metricName: "MessageCount",
        statistic: "Maximum",
        dimensions: { Broker: BROKER, VirtualHost: "/", Queue: "prod.invoices.order-created.dlq" },
        comparisonOperator: "GreaterThanThreshold",
        threshold: 0,
        period: 60,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
    },
    OutboxBacklog: {
        namespace: PREFIX,
        metricName: "outbox_backlog",
        statistic: "Maximum",
        dimensions: { Service: "outbox-relay" },
        comparisonOperator: "GreaterThanThreshold",
        threshold: 1000,
        period: 60,
        evaluationPeriods: 5,
        treatMissingData: "notBreaching",
    },
    OutboxOldestAge: {
        namespace: PREFIX,
        metricName: "outbox_oldest_unpublished_age_seconds",
        statistic: "Maximum",
        dimensions: { Service: "outbox-relay" },
        comparisonOperator: "GreaterThanThreshold",
        threshold: 60,
        period: 60,
        evaluationPeriods: 5,
        treatMissingData: "notBreaching",
    },
    OutboxBlocked: {
        namespace: PREFIX,
        metricName: "outbox_blocked_rows",
        statistic: "Maximum",
        dimensions: { Service: "outbox-relay" },
        comparisonOperator: "GreaterThanThreshold",
        threshold: 0,
        period: 60,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
    },
    RelayNotListening: {
        namespace: PREFIX,
        metricName: "outbox_notification_session",
        statistic: "Minimum",
        dimensions: { Service: "outbox-relay" },
        comparisonOperator: "LessThanThreshold",
        threshold: 1,
        period: 60,
        evaluationPeriods: 5,
        treatMissingData: "breaching",
    },
    RelayBrokerDisconnected: {
        namespace: PREFIX,
        metricName: "outbox_broker_connected",
        statistic: "Minimum",
        dimensions: { Service: "outbox-relay" },
        comparisonOperator: "LessThanThreshold",
        threshold: 1,
        period: 60,
        evaluationPeriods: 3,
        treatMissingData: "breaching",
    },
    DbConnections: {
        namespace: "AWS/RDS",
        metricName: "DatabaseConnections",
        statistic: "Maximum",
        dimensions: { DBInstanceIdentifier: DB },
        comparisonOperator: "GreaterThanThreshold",
        // 80 % of dbMaxConnections 200, the max the connection budget checked.
        threshold: 160,
        period: 60,
        evaluationPeriods: 5,
        treatMissingData: "notBreaching",
    },
    DbFreeStorage: {
        namespace: "AWS/RDS",
        metricName: "FreeStorageSpace",
        statistic: "Minimum",
        dimensions: { DBInstanceIdentifier: DB },
        comparisonOperator: "LessThanThreshold",
        // 5 % of the allocated 20 GiB, in bytes.
        threshold: 1073741824,
        period: 300,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
    },
};

/** The operator's alarms (not the worker's scaling alarms), by short name. */
const operatorAlarms = () =>
    new Map(ofType(T.alarm).filter((a) => a.name.startsWith("alarm-")).map((a) => [a.name.slice("alarm-".length), a]));

let outputs: Record<string, unknown>;
before(async () => {
    outputs = (await run(createStack)).outputs;
});

describe("alarms (RDS, Amazon MQ)", () => {
    it("are exactly the expected set", () => {
        assert.deepEqual([...operatorAlarms().keys()].sort(), [...Object.keys(EXPECTED), "HighErrorRate"].sort());
        for (const [name, a] of operatorAlarms()) {
            assert.equal(a.inputs.name, `${PREFIX}-${name}`);
        }
    });

    it("all notify the one SNS topic when they fire and when they clear, and name their runbook entry", () => {
        const topics = ofType(T.topic);
        assert.equal(topics.length, 1);
        const arn = topics[0].state.arn;
        for (const [name, a] of operatorAlarms()) {
            assert.deepEqual(a.inputs.alarmActions, [arn], name);
            assert.deepEqual(a.inputs.okActions, [arn], name);
            assert.match(a.inputs.alarmDescription, new RegExp(`infra/README\\.md, Alarms and what to do, ${name}\\)$`), name);
        }
    });

    for (const [name, expected] of Object.entries(EXPECTED)) {
        it(`${name}: metric, statistic, dimensions, threshold, periods, missing data`, () => {
            const a = operatorAlarms().get(name);
            assert.ok(a, `no alarm ${name}`);
            const actual = Object.fromEntries(Object.keys(expected).map((k) => [k, a.inputs[k]]));
            assert.deepEqual(actual, expected);
            // Exactly one of statistic / extendedStatistic, and no metric math.
            assert.equal(a.inputs.statistic === undefined, a.inputs.extendedStatistic !== undefined, name);
            assert.equal(a.inputs.metricQueries, undefined, name);
        });
    }

    it("HighErrorRate: target and ALB 5XX over requests (plus ALB 5XX), above 5 % over 5 minutes", () => {
        const a = operatorAlarms().get("HighErrorRate")!;
        assert.equal(a.inputs.comparisonOperator, "GreaterThanThreshold");
        assert.equal(a.inputs.threshold, 5);
        assert.equal(a.inputs.evaluationPeriods, 1);
        assert.equal(a.inputs.treatMissingData, "notBreaching");
        assert.equal(a.inputs.metricName, undefined);
        const queries = new Map<string, any>(a.inputs.metricQueries.map((q: any) => [q.id, q]));
        for (const [id, metricName] of [
            ["target5xx", "HTTPCode_Target_5XX_Count"],
            ["elb5xx", "HTTPCode_ELB_5XX_Count"],
            ["requests", "RequestCount"],
        ]) {
            const q = queries.get(id);
            assert.ok(q, `no input ${id}`);
            assert.deepEqual(q.metric, {
                namespace: "AWS/ApplicationELB",
                metricName,
                dimensions: { LoadBalancer: ALB },
                stat: "Sum",
                period: 300,
            });
            assert.equal(q.returnData, false, id);
        }
        const returned = a.inputs.metricQueries.filter((q: any) => q.returnData);
        assert.equal(returned.length, 1);
        assert.equal(
            returned[0].expression,
            "100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / (FILL(requests, 0) + FILL(elb5xx, 0))",
        );
    });

    it("mail the topic to alarmEmail", () => {
        const subscriptions = ofType(T.subscription);
        assert.equal(subscriptions.length, 1);
        assert.equal(subscriptions[0].inputs.protocol, "email");
        assert.equal(subscriptions[0].inputs.endpoint, "oncall@example.com");
        assert.equal(subscriptions[0].inputs.topic, one(T.topic, "alarms").state.arn);
        assert.equal(one(T.topic, "alarms").inputs.name, `${PREFIX}-alarms`);
    });

    it("export the topic's ARN", async () => {
        assert.equal(await value(outputs.alarmTopicArn as string), one(T.topic, "alarms").state.arn);
    });

    it("reuse the worker scaling's queue metric for the queue backlog", () => {
        const scaling = one(T.alarm, "invoices-worker-queue-high").inputs;
        const backlog = operatorAlarms().get("QueueBacklog")!.inputs;
        for (const key of ["namespace", "metricName", "dimensions", "statistic", "period"]) {
            assert.deepEqual(backlog[key], scaling[key], key);
        }
    });
});
