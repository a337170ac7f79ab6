import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";

import { Alarms, createAlarms } from "./alarms";
import { invoicesQueue } from "./app";
import { loadSettings, Settings } from "./config";
import { createData, Data } from "./data";
import { createEdge, Edge } from "./edge";
import { createNetwork, Network } from "./network";
import { createSecurityGroups, SecurityGroups, urlPort } from "./security";
import { createServices, Services } from "./services";

export interface Stack {
    settings: Settings;
    network: Network;
    securityGroups: SecurityGroups;
    data: Data;
    edge: Edge;
    services: Services;
    alarms: Alarms;
    outputs: Record<string, pulumi.Input<unknown>>;
}

/** The whole system; index.ts exports its outputs, the tests inspect the rest. */
export function createStack(): Stack {
    const settings = loadSettings();
    const providers = useExplicitProviders(settings.region);
    const tags = { project: pulumi.getProject(), stack: pulumi.getStack(), "managed-by": "pulumi" };

    const network = createNetwork(settings.prefix, tags, settings.natGatewayPerAz, providers.aws);
    const securityGroups = createSecurityGroups({
        vpcId: network.vpc.id,
        prefix: settings.prefix,
        tags,
        https: settings.certificateArn !== undefined,
        rds: settings.externalDatabases === undefined,
        amazonMq: settings.externalBroker === undefined,
        otlpPort: settings.otlpEndpoint ? urlPort(settings.otlpEndpoint) : undefined,
    });
    const data = createData(settings, network, securityGroups, tags);
    const edge = createEdge(settings, network, securityGroups, tags);
    const services = createServices(settings, network, securityGroups, data, edge, tags);

    const alarms = createAlarms(settings, edge, data, tags);

    const scheme = settings.certificateArn ? "https" : "http";
    const outputs: Record<string, pulumi.Input<unknown>> = {
        albDnsName: edge.alb.dnsName,
        url: pulumi.interpolate`${scheme}://${edge.alb.dnsName}`,
        clusterName: services.cluster.name,
        ordersServiceName: services.ordersService.name,
        workerServiceName: services.workerService.name,
        ecrRepositoryUrls: {
            "orders-api": services.repositories["orders-api"].repositoryUrl,
            "outbox-relay": services.repositories["outbox-relay"].repositoryUrl,
            "invoices-worker": services.repositories["invoices-worker"].repositoryUrl,
        },
        migrationTaskDefinitionArns: {
            orders: services.migrations.orders.arn,
            invoices: services.migrations.invoices.arn,
        },
        migrationCommands: services.migrationCommands,
        /**
         * What infra/deploy.sh reads: the deployed image tag, the one-off
         * tasks it runs before the services, and the task definition each
         * service must be on once its deployment is done.
         */
        imageTag: settings.imageTag,
        oneOffTasks: { cluster: services.cluster.name, tasks: services.oneOffTasks },
        ecsServices: {
            orders: { name: services.ordersService.name, taskDefinition: services.ordersTask.arn },
            "invoices-worker": { name: services.workerService.name, taskDefinition: services.workerTask.arn },
        },
        provisionBrokerTaskDefinitionArn: services.provisionBroker.arn,
        provisionBrokerCommand: services.provisionBrokerCommand,
        metricsScraperSecurityGroupId: securityGroups.scraper.id,
        dbAddress: data.db?.address,
        brokerEndpoint: data.broker?.instances[0].endpoints[0],
        alarmTopicArn: alarms.topic.arn,
        /**
         * The values of the Infrastructure dashboard's variables
         * (docker/grafana/dashboards/infrastructure.json), one per variable.
         */
        dashboardVariables: {
            region: settings.region,
            namespace: settings.prefix,
            cluster: services.cluster.name,
            api_service: services.ordersService.name,
            worker_service: services.workerService.name,
            load_balancer: edge.alb.arnSuffix,
            target_group: edge.targetGroup.arnSuffix,
            db_instance: data.db?.identifier ?? "",
            broker: data.broker?.brokerName ?? "",
            invoices_queue: invoicesQueue(settings.brokerNamespace),
        },
    };
    return { settings, network, securityGroups, data, edge, services, alarms, outputs };
}

/**
 * One named provider per package, for every resource of the stack (a stack
 * transformation sets it). Default providers are named by their version
 * (`default_7_48_0`): after a provider upgrade, every resource a targeted or
 * excluding update leaves out still points at the old one, and Pulumi stops
 * ("provider … has not been registered yet", pulumi/pulumi#15732), which is
 * how infra/deploy.sh's steps 2 and 4 run. A named provider keeps its URN and
 * id across versions.
 */
function useExplicitProviders(region: string): { aws: aws.Provider; random: random.Provider } {
    const providers = {
        aws: new aws.Provider("aws", { region: region as aws.Region }),
        random: new random.Provider("random"),
    };
    pulumi.runtime.registerStackTransformation(({ type, props, opts }) => {
        const pkg = type.split(":")[0];
        if ((pkg === "aws" || pkg === "random") && !(opts as pulumi.CustomResourceOptions).provider) {
            return { props, opts: pulumi.mergeOptions(opts, { provider: providers[pkg] }) };
        }
        return undefined;
    });
    return providers;
}
