import * as pulumi from "@pulumi/pulumi";

import { Binary, healthcheckCommand, LISTEN_BACKLOG, PORTS } from "./app";

/** The subset of an ECS container definition this program writes. */
export interface ContainerDefinition {
    name: string;
    image: pulumi.Input<string>;
    essential: boolean;
    command?: string[];
    portMappings?: { containerPort: number; protocol: "tcp" }[];
    environment: { name: string; value: string }[];
    secrets: { name: string; valueFrom: pulumi.Input<string> }[];
    healthCheck?: { command: string[]; interval: number; timeout: number; retries: number; startPeriod: number };
    dependsOn?: { containerName: string; condition: "START" | "HEALTHY" | "COMPLETE" | "SUCCESS" }[];
    stopTimeout?: number;
    systemControls?: { namespace: string; value: string }[];
    logConfiguration: { logDriver: "awslogs"; options: Record<string, pulumi.Input<string>> };
}

export interface ContainerOptions {
    binary: Binary;
    /** Container name (default: the binary's name). */
    name?: string;
    image: pulumi.Input<string>;
    essential: boolean;
    /** Arguments after the entrypoint (the binary), e.g. ["migrate"]. */
    command?: string[];
    /** Plain environment, on top of the common variables. */
    environment?: Record<string, string>;
    /** Environment variables injected from Secrets Manager: name → secret ARN. */
    secrets: Record<string, pulumi.Input<string>>;
    /** A long-running service: port mapping and `<binary> healthcheck` health check. */
    service: boolean;
    dependsOn?: ContainerDefinition["dependsOn"];
    stopTimeout?: number;
    logGroup: pulumi.Input<string>;
    region: pulumi.Input<string>;
    otlpEndpoint?: string;
}

/** A container running one of the three binaries. */
export function container(o: ContainerOptions): ContainerDefinition {
    const name = o.name ?? o.binary;
    const environment: Record<string, string> = {
        RUST_LOG: "info",
        HOST: "0.0.0.0",
        PORT: String(PORTS[o.binary]),
        // Migrations run as one-off tasks before a deployment, never at start.
        MIGRATE_ON_START: "false",
        OTEL_SERVICE_NAME: o.binary,
        ...(o.otlpEndpoint ? { OTEL_EXPORTER_OTLP_ENDPOINT: o.otlpEndpoint } : {}),
        ...o.environment,
    };
    return {
        name,
        image: o.image,
        essential: o.essential,
        ...(o.command ? { command: o.command } : {}),
        ...(o.service ? { portMappings: [{ containerPort: PORTS[o.binary], protocol: "tcp" as const }] } : {}),
        environment: Object.entries(environment)
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([k, value]) => ({ name: k, value })),
        secrets: Object.entries(o.secrets)
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([k, valueFrom]) => ({ name: k, valueFrom })),
        ...(o.service
            ? {
                  healthCheck: {
                      command: healthcheckCommand(o.binary),
                      interval: 10,
                      timeout: 5,
                      retries: 3,
                      startPeriod: 30,
                  },
              }
            : {}),
        // In an awsvpc task a net.* sysctl applies to the whole task, and the
        // last container started sets it: every serving container sets the same.
        ...(o.service
            ? { systemControls: [{ namespace: "net.core.somaxconn", value: String(LISTEN_BACKLOG) }] }
            : {}),
        ...(o.dependsOn ? { dependsOn: o.dependsOn } : {}),
        ...(o.stopTimeout !== undefined ? { stopTimeout: o.stopTimeout } : {}),
        logConfiguration: {
            logDriver: "awslogs",
            options: {
                "awslogs-group": o.logGroup,
                "awslogs-region": o.region,
                "awslogs-stream-prefix": name,
            },
        },
    };
}
