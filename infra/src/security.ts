import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

import { AMQPS_PORT, API, BROKER_MANAGEMENT_PORT, PORTS, POSTGRES_PORT, RELAY, WORKER } from "./app";

export interface SecurityGroups {
    /** Internet-facing ALB. */
    alb: aws.ec2.SecurityGroup;
    /** Orders task: orders-api + outbox-relay (one ENI, one SG). */
    api: aws.ec2.SecurityGroup;
    /** invoices-worker tasks: no inbound at all. */
    worker: aws.ec2.SecurityGroup;
    /** One-off migration tasks: no inbound, outbound to the databases. */
    migrate: aws.ec2.SecurityGroup;
    /** One-off `outbox-relay provision-broker` task: no inbound, outbound HTTPS (the management API). */
    provision: aws.ec2.SecurityGroup;
    /**
     * For a Prometheus (or other) scraper inside the VPC: the only source allowed
     * to reach the services' ports besides the ALB, i.e. the only way to `/metrics`.
     */
    scraper: aws.ec2.SecurityGroup;
    /** RDS (absent with external databases). */
    db?: aws.ec2.SecurityGroup;
    /** Amazon MQ (absent with an external broker). */
    mq?: aws.ec2.SecurityGroup;
}

export interface SecurityOptions {
    vpcId: pulumi.Input<string>;
    prefix: string;
    tags: Record<string, string>;
    https: boolean;
    /** false: external databases (e.g. Neon), reached on 5432 over the internet. */
    rds: boolean;
    /** false: external broker, reached on 5671 over the internet. */
    amazonMq: boolean;
    /** Port of the OTLP endpoint when it is not 443 (e.g. 4318). */
    otlpPort?: number;
}

const ANYWHERE = "0.0.0.0/0";

/**
 * Security groups with no inline rules (the provider removes AWS's default
 * allow-all egress), and one rule resource per permitted flow, so that each
 * flow is explicit (and testable): the ALB takes 80/443 from the internet and
 * talks to the API on 3333 only; the API takes 3333 from the ALB only; the
 * services' HTTP ports (/health, /ready, /metrics) take the scraper SG; the
 * worker, migration and provision tasks take nothing else; the database takes
 * 5432 from the API, worker and migration SGs only; the broker takes 5671 from
 * the API (relay) and worker SGs, and 443 (management API) from the provision
 * task only.
 */
export function createSecurityGroups(o: SecurityOptions): SecurityGroups {
    const sg = (name: string, description: string) =>
        new aws.ec2.SecurityGroup(name, {
            vpcId: o.vpcId,
            description,
            tags: { ...o.tags, Name: `${o.prefix}-${name}` },
        });

    const groups: SecurityGroups = {
        alb: sg("alb", "Internet-facing ALB"),
        api: sg("api", "orders task: orders-api + outbox-relay"),
        worker: sg("worker", "invoices-worker tasks"),
        migrate: sg("migrate", "one-off migration tasks"),
        provision: sg("provision", "one-off outbox-relay provision-broker task"),
        scraper: sg("scraper", "metrics scraper inside the VPC (attach to Prometheus)"),
        db: o.rds ? sg("db", "RDS PostgreSQL") : undefined,
        mq: o.amazonMq ? sg("mq", "Amazon MQ for RabbitMQ") : undefined,
    };

    const ingress = (
        name: string,
        group: aws.ec2.SecurityGroup,
        port: number,
        from: { cidr: string } | { sg: aws.ec2.SecurityGroup },
        description: string,
    ) =>
        new aws.vpc.SecurityGroupIngressRule(name, {
            securityGroupId: group.id,
            ipProtocol: "tcp",
            fromPort: port,
            toPort: port,
            ...("cidr" in from ? { cidrIpv4: from.cidr } : { referencedSecurityGroupId: from.sg.id }),
            description,
        });
    const egress = (
        name: string,
        group: aws.ec2.SecurityGroup,
        port: number,
        to: { cidr: string } | { sg: aws.ec2.SecurityGroup },
        description: string,
    ) =>
        new aws.vpc.SecurityGroupEgressRule(name, {
            securityGroupId: group.id,
            ipProtocol: "tcp",
            fromPort: port,
            toPort: port,
            ...("cidr" in to ? { cidrIpv4: to.cidr } : { referencedSecurityGroupId: to.sg.id }),
            description,
        });

    // ALB: HTTP (and HTTPS) from the internet, to the API only.
    ingress("alb-in-http", groups.alb, 80, { cidr: ANYWHERE }, "HTTP from the internet");
    if (o.https) {
        ingress("alb-in-https", groups.alb, 443, { cidr: ANYWHERE }, "HTTPS from the internet");
    }
    egress("alb-out-api", groups.alb, PORTS[API], { sg: groups.api }, "to orders-api");

    // API: 3333 from the ALB only (the relay's and the API's health ports stay closed:
    // ECS health checks run inside the task).
    ingress("api-in-alb", groups.api, PORTS[API], { sg: groups.alb }, "orders-api from the ALB");

    // Metrics: each service's own port from the scraper SG, inside the VPC. The
    // ALB reaches 3333 too, but its listener forwards the public routes only.
    const scraped: [string, aws.ec2.SecurityGroup, typeof API | typeof RELAY | typeof WORKER][] = [
        ["api", groups.api, API],
        ["relay", groups.api, RELAY],
        ["worker", groups.worker, WORKER],
    ];
    for (const [name, group, binary] of scraped) {
        ingress(`${name}-in-scraper`, group, PORTS[binary], { sg: groups.scraper }, `${binary} /metrics from the scraper`);
        egress(`scraper-out-${name}`, groups.scraper, PORTS[binary], { sg: group }, `${binary} /metrics`);
    }

    // Outbound of the tasks: HTTPS (ECR, Secrets Manager, CloudWatch Logs, OTLP)
    // through the NAT gateway, the database, the broker.
    const tasks: [string, aws.ec2.SecurityGroup, { db: boolean; mq: boolean }][] = [
        ["api", groups.api, { db: true, mq: true }],
        ["worker", groups.worker, { db: true, mq: true }],
        ["migrate", groups.migrate, { db: true, mq: false }],
        // The management API is HTTPS: on 443 of Amazon MQ's SG, or on the internet.
        ["provision", groups.provision, { db: false, mq: false }],
    ];
    for (const [name, group, needs] of tasks) {
        egress(`${name}-out-https`, group, 443, { cidr: ANYWHERE }, "HTTPS: ECR, Secrets Manager, logs, OTLP");
        if (o.otlpPort !== undefined && o.otlpPort !== 443) {
            egress(`${name}-out-otlp`, group, o.otlpPort, { cidr: ANYWHERE }, "OTLP endpoint");
        }
        if (needs.db) {
            egress(`${name}-out-db`, group, POSTGRES_PORT, groups.db ? { sg: groups.db } : { cidr: ANYWHERE }, "PostgreSQL");
        }
        if (needs.mq) {
            egress(`${name}-out-mq`, group, AMQPS_PORT, groups.mq ? { sg: groups.mq } : { cidr: ANYWHERE }, "AMQPS");
        }
    }

    if (groups.db) {
        ingress("db-in-api", groups.db, POSTGRES_PORT, { sg: groups.api }, "orders-api + outbox-relay");
        ingress("db-in-worker", groups.db, POSTGRES_PORT, { sg: groups.worker }, "invoices-worker");
        ingress("db-in-migrate", groups.db, POSTGRES_PORT, { sg: groups.migrate }, "migration tasks");
    }
    if (groups.mq) {
        ingress("mq-in-api", groups.mq, AMQPS_PORT, { sg: groups.api }, "outbox-relay");
        ingress("mq-in-worker", groups.mq, AMQPS_PORT, { sg: groups.worker }, "invoices-worker");
        ingress("mq-in-provision", groups.mq, BROKER_MANAGEMENT_PORT, { sg: groups.provision }, "management API: provision-broker");
    }

    return groups;
}

/** The port of an OTLP endpoint URL (443 for https, 80 for http without a port). */
export function urlPort(url: string): number {
    const u = new URL(url);
    if (u.port) {
        return Number(u.port);
    }
    return u.protocol === "http:" ? 80 : 443;
}
