import * as aws from "@pulumi/aws";

import { invoicesDeadLetterQueue, invoicesQueue, RELAY, WORKER } from "./app";
import { CONNECTIONS_ALARM_RATIO } from "./budget";
import { Settings } from "./config";
import { Data, DB_ALLOCATED_STORAGE_GIB } from "./data";
import { Edge } from "./edge";
import { amazonMqQueueDepth, emfGauge, MetricSpec } from "./metrics";

/** Where each alarm's runbook entry is: infra/README.md, "Alarms and what to do". */
const RUNBOOK = "runbook: infra/README.md, Alarms and what to do";

/** Thresholds of the alarms (the runbook names them too). */
export const THRESHOLDS = {
    /** Per cent of requests answered 5XX (by a target or by the ALB) over 5 minutes. */
    errorRatePercent: 5,
    /** Seconds: p95 of the targets' response time over 5 minutes. */
    latencyP95Seconds: 1,
    /** Ready messages in the invoices queue, 5 minutes in a row. */
    queueBacklog: 100,
    /** Unpublished, unblocked outbox rows, 5 minutes in a row. */
    outboxBacklog: 1000,
    /** Seconds: age of the oldest unpublished outbox row, 5 minutes in a row. */
    outboxOldestAgeSeconds: 60,
    /**
     * Free storage below this share of the allocated storage. Below RDS storage
     * autoscaling's own trigger (10 %), so that the alarm means autoscaling did
     * not help (at maxAllocatedStorage, or within its 6-hour pause).
     */
    freeStorageRatio: 0.05,
} as const;

export interface Alarms {
    topic: aws.sns.Topic;
    emailSubscription?: aws.sns.TopicSubscription;
    /** By short name (the alarm's name is `<prefix>-<short name>`). */
    alarms: Record<string, aws.cloudwatch.MetricAlarm>;
}

/**
 * The operator's alarms, all notifying one SNS topic (optionally mailed to
 * `alarmEmail`) when they fire and when they clear. Each description names its
 * runbook entry.
 */
export function createAlarms(s: Settings, edge: Edge, data: Data, tags: Record<string, string>): Alarms {
    const topic = new aws.sns.Topic("alarms", { name: `${s.prefix}-alarms`, tags });
    const emailSubscription = s.alarmEmail
        ? new aws.sns.TopicSubscription("alarms-email", { topic: topic.arn, protocol: "email", endpoint: s.alarmEmail })
        : undefined;

    const alarms: Record<string, aws.cloudwatch.MetricAlarm> = {};
    const alarm = (
        name: string,
        what: string,
        args: Omit<aws.cloudwatch.MetricAlarmArgs, "name" | "alarmDescription" | "alarmActions" | "okActions" | "tags">,
    ) => {
        alarms[name] = new aws.cloudwatch.MetricAlarm(`alarm-${name}`, {
            name: `${s.prefix}-${name}`,
            alarmDescription: `${what} (${RUNBOOK}, ${name})`,
            alarmActions: [topic.arn],
            okActions: [topic.arn],
            tags,
            ...args,
        });
    };
    /** A single-metric alarm over `evaluationPeriods` periods of `metric`. */
    const on = (
        metric: MetricSpec,
        comparisonOperator: "GreaterThanThreshold" | "LessThanThreshold",
        threshold: number,
        evaluationPeriods: number,
        treatMissingData: "breaching" | "notBreaching",
    ) => ({ ...metric, comparisonOperator, threshold, evaluationPeriods, treatMissingData });

    // ---- The API, at the load balancer --------------------------------------
    const lb = { LoadBalancer: edge.alb.arnSuffix };
    const albSum = (id: string, metricName: string) => ({
        id,
        metric: { namespace: "AWS/ApplicationELB", metricName, dimensions: lb, stat: "Sum", period: 300 },
        returnData: false,
    });
    // 5XX of the targets and of the ALB itself (502/503/504: no healthy target,
    // a target that reset or timed out). RequestCount leaves out the requests
    // the ALB answered before choosing a target, so they are added to the
    // denominator too: with every task gone the rate is 100 %, not undefined.
    alarm("HighErrorRate", `more than ${THRESHOLDS.errorRatePercent} % of the API's requests answered 5XX over 5 minutes`, {
        comparisonOperator: "GreaterThanThreshold",
        threshold: THRESHOLDS.errorRatePercent,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
        metricQueries: [
            albSum("target5xx", "HTTPCode_Target_5XX_Count"),
            albSum("elb5xx", "HTTPCode_ELB_5XX_Count"),
            albSum("requests", "RequestCount"),
            {
                id: "errorRate",
                expression:
                    "100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / (FILL(requests, 0) + FILL(elb5xx, 0))",
                label: "5XX per cent of requests",
                returnData: true,
            },
        ],
    });
    alarm("HighLatencyP95", `p95 of the API's response time above ${THRESHOLDS.latencyP95Seconds} s over 5 minutes`, {
        namespace: "AWS/ApplicationELB",
        metricName: "TargetResponseTime",
        dimensions: lb,
        extendedStatistic: "p95",
        period: 300,
        comparisonOperator: "GreaterThanThreshold",
        threshold: THRESHOLDS.latencyP95Seconds,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
    });
    alarm("ApiDown", "no healthy orders-api task behind the load balancer for 2 minutes", {
        namespace: "AWS/ApplicationELB",
        metricName: "HealthyHostCount",
        dimensions: { TargetGroup: edge.targetGroup.arnSuffix, LoadBalancer: edge.alb.arnSuffix },
        statistic: "Minimum",
        period: 60,
        comparisonOperator: "LessThanThreshold",
        threshold: 1,
        evaluationPeriods: 2,
        treatMissingData: "breaching",
    });

    // ---- The worker -----------------------------------------------------------
    // "Down" means not consuming: no worker reports a broker session (no task
    // running, or every one disconnected). No data is as bad as 0.
    alarm(
        "WorkerDown",
        "no invoices-worker task consuming (invoices_broker_connected below 1, or not reported) for 3 minutes",
        on(emfGauge(s.prefix, WORKER, "invoices_broker_connected", "Maximum"), "LessThanThreshold", 1, 3, "breaching"),
    );
    const queue = invoicesQueue(s.brokerNamespace);
    const dlq = invoicesDeadLetterQueue(s.brokerNamespace);
    // Amazon MQ's own metric when the program creates the broker (the same as
    // the worker's scaling alarms); the worker's EMF gauge with an external one.
    const depth = (name: string) =>
        data.broker
            ? amazonMqQueueDepth(data.broker.brokerName, name)
            : emfGauge(s.prefix, WORKER, "invoices_queue_messages", "Maximum", { queue: name });
    alarm(
        "QueueBacklog",
        `more than ${THRESHOLDS.queueBacklog} messages waiting in ${queue} for 5 minutes`,
        on(depth(queue), "GreaterThanThreshold", THRESHOLDS.queueBacklog, 5, "notBreaching"),
    );
    alarm("DeadLetters", `messages in the dead-letter queue ${dlq}`, on(depth(dlq), "GreaterThanThreshold", 0, 1, "notBreaching"));

    // ---- The outbox and the relays ------------------------------------------
    const relay = (metricName: string, statistic: "Maximum" | "Minimum") => emfGauge(s.prefix, RELAY, metricName, statistic);
    alarm(
        "OutboxBacklog",
        `more than ${THRESHOLDS.outboxBacklog} unpublished outbox events for 5 minutes`,
        on(relay("outbox_backlog", "Maximum"), "GreaterThanThreshold", THRESHOLDS.outboxBacklog, 5, "notBreaching"),
    );
    alarm(
        "OutboxOldestAge",
        `the oldest unpublished outbox event older than ${THRESHOLDS.outboxOldestAgeSeconds} s for 5 minutes`,
        on(
            relay("outbox_oldest_unpublished_age_seconds", "Maximum"),
            "GreaterThanThreshold",
            THRESHOLDS.outboxOldestAgeSeconds,
            5,
            "notBreaching",
        ),
    );
    alarm(
        "OutboxBlocked",
        "outbox events blocked after the relay's attempt limit",
        on(relay("outbox_blocked_rows", "Maximum"), "GreaterThanThreshold", 0, 1, "notBreaching"),
    );
    alarm(
        "RelayNotListening",
        "a relay without its LISTEN session (polling only), or no relay reporting, for 5 minutes",
        on(relay("outbox_notification_session", "Minimum"), "LessThanThreshold", 1, 5, "breaching"),
    );
    alarm(
        "RelayBrokerDisconnected",
        "a relay without a working broker channel, or no relay reporting, for 3 minutes",
        on(relay("outbox_broker_connected", "Minimum"), "LessThanThreshold", 1, 3, "breaching"),
    );

    // ---- RDS (when the program creates it) -----------------------------------
    if (data.db) {
        if (s.dbMaxConnections === undefined) {
            throw new Error("RDS needs its max_connections (loadSettings resolves it)");
        }
        const db = { DBInstanceIdentifier: data.db.identifier };
        const connections = Math.floor(CONNECTIONS_ALARM_RATIO * s.dbMaxConnections);
        alarm(
            "DbConnections",
            `more than ${connections} database sessions (${CONNECTIONS_ALARM_RATIO * 100} % of max_connections ${s.dbMaxConnections}) for 5 minutes`,
            on(
                { namespace: "AWS/RDS", metricName: "DatabaseConnections", dimensions: db, statistic: "Maximum", period: 60 },
                "GreaterThanThreshold",
                connections,
                5,
                "notBreaching",
            ),
        );
        const freeBytes = Math.floor(THRESHOLDS.freeStorageRatio * DB_ALLOCATED_STORAGE_GIB * 1024 ** 3);
        alarm(
            "DbFreeStorage",
            `less than ${freeBytes} bytes (${THRESHOLDS.freeStorageRatio * 100} % of the allocated ${DB_ALLOCATED_STORAGE_GIB} GiB) of free database storage`,
            on(
                { namespace: "AWS/RDS", metricName: "FreeStorageSpace", dimensions: db, statistic: "Minimum", period: 300 },
                "LessThanThreshold",
                freeBytes,
                1,
                "notBreaching",
            ),
        );
    }

    return { topic, emailSubscription, alarms };
}
