import * as pulumi from "@pulumi/pulumi";

import { Binary } from "./app";

/**
 * CloudWatch metrics the alarms and the worker's scaling read, defined once.
 *
 * The services write their gauges in the CloudWatch embedded metric format
 * (EMF) to stdout when METRICS_EMF_NAMESPACE is set (every
 * METRICS_EMF_INTERVAL, 60 s by default); the awslogs driver sends them to
 * CloudWatch Logs, which extracts the metrics: namespace = that variable (the
 * stack prefix), metric name = the Prometheus series name, dimensions =
 * `Service` (the binary) plus the series' labels. Every relay reports the same
 * database-wide outbox values, so alarms read Maximum or Minimum, never Sum.
 */

/** The fields of a MetricAlarm that name a single metric. */
export interface MetricSpec {
    namespace: pulumi.Input<string>;
    metricName: string;
    dimensions: Record<string, pulumi.Input<string>>;
    statistic: "Maximum" | "Minimum" | "Sum" | "Average";
    period: number;
}

/** An EMF gauge of one of the binaries (namespace: the stack prefix). */
export function emfGauge(
    namespace: string,
    service: Binary,
    metricName: string,
    statistic: "Maximum" | "Minimum",
    labels: Record<string, string> = {},
): MetricSpec {
    return { namespace, metricName, dimensions: { Service: service, ...labels }, statistic, period: 60 };
}

/** Amazon MQ for RabbitMQ's per-minute depth of one queue (default vhost). */
export function amazonMqQueueDepth(brokerName: pulumi.Input<string>, queue: string): MetricSpec {
    return {
        namespace: "AWS/AmazonMQ",
        metricName: "MessageCount",
        dimensions: { Broker: brokerName, VirtualHost: "/", Queue: queue },
        statistic: "Maximum",
        period: 60,
    };
}
