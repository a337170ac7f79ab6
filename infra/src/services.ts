import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

import {
    API,
    API_STOP_TIMEOUT_SECONDS,
    Binary,
    BINARIES,
    BROKER_USERS,
    DB_ROLES,
    invoicesQueue,
    PORTS,
    RELAY,
    RELAY_CONFIRM_TIMEOUT_SECONDS,
    RELAY_STOP_TIMEOUT_SECONDS,
    WORKER,
} from "./app";
import { Settings } from "./config";
import { container, ContainerDefinition } from "./containers";
import { allSecrets, Data } from "./data";
import { Edge } from "./edge";
import { amazonMqQueueDepth } from "./metrics";
import { Network } from "./network";
import { SecurityGroups } from "./security";

export interface Services {
    cluster: aws.ecs.Cluster;
    repositories: Record<Binary, aws.ecr.Repository>;
    logGroups: Record<Binary | "migrate", aws.cloudwatch.LogGroup>;
    /** orders-api + outbox-relay sidecar. */
    ordersTask: aws.ecs.TaskDefinition;
    workerTask: aws.ecs.TaskDefinition;
    ordersService: aws.ecs.Service;
    workerService: aws.ecs.Service;
    migrations: Record<"orders" | "invoices", aws.ecs.TaskDefinition>;
    /** What `aws ecs run-task` needs for each one-off task (infra/deploy.sh runs them). */
    oneOffTasks: Record<OneOffName, OneOffTask>;
    migrationCommands: Record<"orders" | "invoices", pulumi.Output<string>>;
    /** One-off `outbox-relay provision-broker`: the broker users and their permissions. */
    provisionBroker: aws.ecs.TaskDefinition;
    provisionBrokerCommand: pulumi.Output<string>;
    /** One per task definition: each may read exactly the secrets its containers inject. */
    executionRoles: Record<
        "orders" | "worker" | "migrate-orders" | "migrate-invoices" | "provision-broker",
        { role: aws.iam.Role; secrets: aws.iam.RolePolicy }
    >;
    scaling: {
        api: { target: aws.appautoscaling.Target; policies: aws.appautoscaling.Policy[] };
        worker: {
            target: aws.appautoscaling.Target;
            policies: aws.appautoscaling.Policy[];
            alarms: aws.cloudwatch.MetricAlarm[];
        };
    };
}

/** infra/deploy.sh's tag on every image it deployed (deployed-<UTC time>), and how many the repositories keep. */
export const DEPLOYED_TAG_PREFIX = "deployed-";
export const DEPLOYED_IMAGES_KEPT = 10;

/** The one-off tasks, by the names infra/deploy.sh knows them by. */
export type OneOffName = "migrate-orders" | "migrate-invoices" | "provision-broker";

export interface OneOffTask {
    taskDefinition: pulumi.Output<string>;
    /** `aws ecs run-task --network-configuration`: the private subnets and the task's security group. */
    networkConfiguration: pulumi.Output<string>;
}

const TASK_EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy";

/**
 * An execution role (ECR pull, CloudWatch Logs) that may read exactly the given
 * secrets (to inject them as environment variables) and nothing else.
 */
function executionRole(name: string, secretArns: pulumi.Input<string>[], tags: Record<string, string>) {
    const role = new aws.iam.Role(`${name}-execution`, {
        assumeRolePolicy: JSON.stringify({
            Version: "2012-10-17",
            Statement: [{ Effect: "Allow", Principal: { Service: "ecs-tasks.amazonaws.com" }, Action: "sts:AssumeRole" }],
        }),
        tags,
    });
    new aws.iam.RolePolicyAttachment(`${name}-execution`, { role: role.name, policyArn: TASK_EXECUTION_POLICY });
    const secrets = new aws.iam.RolePolicy(`${name}-execution-secrets`, {
        role: role.id,
        policy: pulumi.jsonStringify({
            Version: "2012-10-17",
            Statement: [{ Effect: "Allow", Action: ["secretsmanager:GetSecretValue"], Resource: secretArns }],
        }),
    });
    return { role, secrets };
}

/** The secrets of a set of containers, as the execution role needs them. */
const secretArnsOf = (containers: ContainerDefinition[]) => [
    ...new Set(containers.flatMap((c) => c.secrets.map((s) => s.valueFrom))),
];

export function createServices(
    s: Settings,
    net: Network,
    sgs: SecurityGroups,
    data: Data,
    edge: Edge,
    tags: Record<string, string>,
): Services {
    const region = s.region;
    const privateSubnetIds = net.privateSubnets.map((x) => x.id);

    // ---- Images and logs -------------------------------------------------
    const repositories = {} as Record<Binary, aws.ecr.Repository>;
    for (const binary of BINARIES) {
        const repo = new aws.ecr.Repository(binary, {
            name: `${s.prefix}/${binary}`,
            // A tag is a commit (infra/deploy.sh pushes each once): what was
            // tested and deployed under a tag cannot be replaced behind it.
            imageTagMutability: "IMMUTABLE",
            // `pulumi destroy` removes the repositories with their images.
            forceDelete: true,
            imageScanningConfiguration: { scanOnPush: true },
            encryptionConfigurations: [{ encryptionType: "AES256" }],
            tags,
        });
        new aws.ecr.LifecyclePolicy(binary, {
            repository: repo.name,
            policy: JSON.stringify({
                rules: [
                    {
                        // infra/deploy.sh tags each image it deployed deployed-<time>:
                        // the running release and the ones before it stay, however
                        // many commits CI pushes meanwhile (a rule cannot expire
                        // an image a rule of higher priority matched).
                        rulePriority: 1,
                        description: `keep the last ${DEPLOYED_IMAGES_KEPT} deployed images`,
                        selection: {
                            tagStatus: "tagged",
                            tagPrefixList: [DEPLOYED_TAG_PREFIX],
                            countType: "imageCountMoreThan",
                            countNumber: DEPLOYED_IMAGES_KEPT,
                        },
                        action: { type: "expire" },
                    },
                    {
                        rulePriority: 2,
                        description: "expire untagged images after 7 days",
                        selection: { tagStatus: "untagged", countType: "sinceImagePushed", countUnit: "days", countNumber: 7 },
                        action: { type: "expire" },
                    },
                    {
                        rulePriority: 3,
                        description: "keep the last 50 images",
                        selection: { tagStatus: "any", countType: "imageCountMoreThan", countNumber: 50 },
                        action: { type: "expire" },
                    },
                ],
            }),
        });
        repositories[binary] = repo;
    }
    const image = (binary: Binary) => pulumi.interpolate`${repositories[binary].repositoryUrl}:${s.imageTag}`;

    const logGroups = {} as Record<Binary | "migrate", aws.cloudwatch.LogGroup>;
    for (const name of [...BINARIES, "migrate"] as const) {
        logGroups[name] = new aws.cloudwatch.LogGroup(name, {
            name: `/ecs/${s.prefix}/${name}`,
            retentionInDays: s.logRetentionDays,
            tags,
        });
    }

    const cluster = new aws.ecs.Cluster("cluster", {
        name: s.prefix,
        settings: [{ name: "containerInsights", value: "enabled" }],
        tags,
    });

    // ---- Secrets, by container ------------------------------------------
    // Each service connects as its own database role and broker user; the
    // owner's URLs and the admin's broker URL go to the one-off tasks only.
    const secrets = data.secrets;
    const otlp: Record<string, pulumi.Input<string>> = secrets.otlpHeaders
        ? { OTEL_EXPORTER_OTLP_HEADERS: secrets.otlpHeaders.secret.arn }
        : {};
    const common = { region, otlpEndpoint: s.otlpEndpoint };
    /**
     * The long-running services' metrics (not the one-off tasks'): EMF gauges
     * to CloudWatch under the stack prefix, for the alarms; with an OTLP
     * endpoint, also pushed over OTLP unless otlpMetrics is false.
     */
    const metricsEnv: Record<string, string> = {
        METRICS_EMF_NAMESPACE: s.prefix,
        ...(s.otlpEndpoint && s.otlpMetrics ? { OTEL_METRICS_EXPORTER: "otlp" } : {}),
    };
    /** DB_POOL_SIZE, always explicit: the connection budget (src/budget.ts) counts on it. */
    const pool = (size: number) => ({ DB_POOL_SIZE: String(size) });

    // ---- orders task: orders-api + outbox-relay sidecar -----------------
    // Both essential: a dead relay must replace the task (orders would pile up
    // in the outbox otherwise), and so must a dead API. The API starts after
    // the relay (START, not HEALTHY: the relay needs no API, so its health
    // must not delay the API), which reverses on shutdown: ECS stops the API
    // first (no new outbox rows), then the relay, which has 60 s to finish the
    // batch in flight.
    const ordersContainers: ContainerDefinition[] = [
        container({
            ...common,
            binary: API,
            image: image(API),
            essential: true,
            service: true,
            // Bearer tokens of the configured identity provider, always: the
            // program has no way to set AUTH_DISABLED.
            environment: {
                ...metricsEnv,
                ...pool(s.apiDbPoolSize),
                AUTH_JWKS_URL: s.auth.jwksUrl,
                AUTH_ISSUER: s.auth.issuer,
                AUTH_AUDIENCE: s.auth.audience,
            },
            secrets: { DATABASE_URL: secrets.databaseUrls.ordersApi.secret.arn, ...otlp },
            dependsOn: [{ containerName: RELAY, condition: "START" }],
            stopTimeout: API_STOP_TIMEOUT_SECONDS,
            logGroup: logGroups[API].name,
        }),
        container({
            ...common,
            binary: RELAY,
            image: image(RELAY),
            essential: true,
            service: true,
            environment: {
                ...metricsEnv,
                ...pool(s.relayDbPoolSize),
                RELAY_CONFIRM_TIMEOUT: `${RELAY_CONFIRM_TIMEOUT_SECONDS}s`,
                ...(s.brokerNamespace ? { BROKER_NAMESPACE: s.brokerNamespace } : {}),
            },
            secrets: {
                DATABASE_URL: secrets.databaseUrls.outboxRelay.secret.arn,
                BROKER_URL: secrets.brokerUrls.outboxRelay.secret.arn,
                ...otlp,
            },
            stopTimeout: RELAY_STOP_TIMEOUT_SECONDS,
            logGroup: logGroups[RELAY].name,
        }),
    ];
    const workerContainers: ContainerDefinition[] = [
        container({
            ...common,
            binary: WORKER,
            image: image(WORKER),
            essential: true,
            service: true,
            environment: {
                ...metricsEnv,
                ...pool(s.workerDbPoolSize),
                ...(s.brokerNamespace ? { BROKER_NAMESPACE: s.brokerNamespace } : {}),
            },
            secrets: {
                DATABASE_URL: secrets.databaseUrls.invoicesWorker.secret.arn,
                BROKER_URL: secrets.brokerUrls.invoicesWorker.secret.arn,
                ...otlp,
            },
            stopTimeout: 30,
            logGroup: logGroups[WORKER].name,
        }),
    ];
    const migrateContainers = {
        orders: container({
            ...common,
            binary: API,
            name: "orders-migrate",
            image: image(API),
            essential: true,
            service: false,
            command: ["migrate"],
            // Migrates as the owner, then gives the API's and the relay's roles LOGIN and their passwords.
            secrets: {
                DATABASE_URL: secrets.ordersOwnerDatabaseUrl.secret.arn,
                [DB_ROLES.ordersApi.passwordVar]: secrets.dbPasswords.ordersApi.secret.arn,
                [DB_ROLES.outboxRelay.passwordVar]: secrets.dbPasswords.outboxRelay.secret.arn,
                ...otlp,
            },
            logGroup: logGroups.migrate.name,
        }),
        invoices: container({
            ...common,
            binary: WORKER,
            name: "invoices-migrate",
            image: image(WORKER),
            essential: true,
            service: false,
            command: ["migrate"],
            secrets: {
                DATABASE_URL: secrets.invoicesOwnerDatabaseUrl.secret.arn,
                [DB_ROLES.invoicesWorker.passwordVar]: secrets.dbPasswords.invoicesWorker.secret.arn,
                ...otlp,
            },
            logGroup: logGroups.migrate.name,
        }),
    };
    // Creates (or updates) the relay's and the worker's broker users and their
    // permissions through the management API, as the broker's admin user.
    // BROKER_URL (the relay's) only names the vhost.
    const provisionContainer = container({
        ...common,
        binary: RELAY,
        name: "provision-broker",
        image: image(RELAY),
        essential: true,
        service: false,
        command: ["provision-broker"],
        environment: s.brokerNamespace ? { BROKER_NAMESPACE: s.brokerNamespace } : {},
        secrets: {
            BROKER_ADMIN_URL: secrets.brokerAdminUrl.secret.arn,
            BROKER_URL: secrets.brokerUrls.outboxRelay.secret.arn,
            [BROKER_USERS.outboxRelay.passwordVar]: secrets.brokerPasswords.outboxRelay.secret.arn,
            [BROKER_USERS.invoicesWorker.passwordVar]: secrets.brokerPasswords.invoicesWorker.secret.arn,
            ...otlp,
        },
        logGroup: logGroups.migrate.name,
    });

    const executionRoles = {
        orders: executionRole("orders", secretArnsOf(ordersContainers), tags),
        worker: executionRole("worker", secretArnsOf(workerContainers), tags),
        "migrate-orders": executionRole("migrate-orders", secretArnsOf([migrateContainers.orders]), tags),
        "migrate-invoices": executionRole("migrate-invoices", secretArnsOf([migrateContainers.invoices]), tags),
        "provision-broker": executionRole("provision-broker", secretArnsOf([provisionContainer]), tags),
    };

    const taskDefinition = (
        name: string,
        cpu: number,
        memory: number,
        role: aws.iam.Role,
        containers: ContainerDefinition[],
    ) =>
        new aws.ecs.TaskDefinition(name, {
            family: `${s.prefix}-${name}`,
            requiresCompatibilities: ["FARGATE"],
            networkMode: "awsvpc",
            cpu: String(cpu),
            memory: String(memory),
            runtimePlatform: { operatingSystemFamily: "LINUX", cpuArchitecture: "X86_64" },
            executionRoleArn: role.arn,
            containerDefinitions: pulumi.jsonStringify(containers),
            tags,
        });

    const ordersTask = taskDefinition("orders", 512, 1024, executionRoles.orders.role, ordersContainers);
    const workerTask = taskDefinition("invoices-worker", 256, 512, executionRoles.worker.role, workerContainers);
    const migrations = {
        orders: taskDefinition("migrate-orders", 256, 512, executionRoles["migrate-orders"].role, [migrateContainers.orders]),
        invoices: taskDefinition("migrate-invoices", 256, 512, executionRoles["migrate-invoices"].role, [migrateContainers.invoices]),
    };
    const provisionBroker = taskDefinition("provision-broker", 256, 512, executionRoles["provision-broker"].role, [
        provisionContainer,
    ]);

    // ---- Services ----------------------------------------------------------
    const secretVersions = allSecrets(secrets).map((x) => x.version);
    const service = (
        name: string,
        task: aws.ecs.TaskDefinition,
        desiredCount: number,
        sg: aws.ec2.SecurityGroup,
        dependsOn: pulumi.Resource[],
        extra: Partial<aws.ecs.ServiceArgs> = {},
    ) =>
        new aws.ecs.Service(
            name,
            {
                name,
                cluster: cluster.arn,
                taskDefinition: task.arn,
                desiredCount,
                launchType: "FARGATE",
                platformVersion: "LATEST",
                networkConfiguration: { subnets: privateSubnetIds, securityGroups: [sg.id], assignPublicIp: false },
                deploymentCircuitBreaker: { enable: true, rollback: true },
                // `pulumi up` returns once the deployment is done, not when
                // ECS has merely accepted it (infra/deploy.sh then checks that
                // it was not rolled back).
                waitForSteadyState: true,
                deploymentMinimumHealthyPercent: 100,
                deploymentMaximumPercent: 200,
                propagateTags: "SERVICE",
                enableEcsManagedTags: true,
                tags,
                ...extra,
            },
            // Auto scaling owns desiredCount once the service exists. The wait
            // for steady state may include a rollback and the load balancer's
            // deregistration delay: more than the provider's 20 minutes.
            {
                dependsOn: [...secretVersions, ...dependsOn],
                ignoreChanges: ["desiredCount"],
                customTimeouts: { create: "40m", update: "40m" },
            },
        );

    const ordersService = service(
        "orders",
        ordersTask,
        s.apiDesiredCount,
        sgs.api,
        [edge.listener, edge.httpListener, ...edge.rules, executionRoles.orders.secrets],
        {
            loadBalancers: [{ targetGroupArn: edge.targetGroup.arn, containerName: API, containerPort: PORTS[API] }],
            healthCheckGracePeriodSeconds: 60,
        },
    );
    const workerService = service("invoices-worker", workerTask, s.workerDesiredCount, sgs.worker, [
        executionRoles.worker.secrets,
    ]);

    // ---- Auto scaling ----------------------------------------------------
    const scalingTarget = (name: string, svc: aws.ecs.Service, min: number, max: number) =>
        new aws.appautoscaling.Target(name, {
            serviceNamespace: "ecs",
            scalableDimension: "ecs:service:DesiredCount",
            resourceId: pulumi.interpolate`service/${cluster.name}/${svc.name}`,
            minCapacity: min,
            maxCapacity: max,
        });
    const cpuPolicy = (name: string, target: aws.appautoscaling.Target, targetValue: number) =>
        new aws.appautoscaling.Policy(name, {
            policyType: "TargetTrackingScaling",
            serviceNamespace: target.serviceNamespace,
            scalableDimension: target.scalableDimension,
            resourceId: target.resourceId,
            targetTrackingScalingPolicyConfiguration: {
                predefinedMetricSpecification: { predefinedMetricType: "ECSServiceAverageCPUUtilization" },
                targetValue,
                scaleInCooldown: 120,
                scaleOutCooldown: 60,
            },
        });

    const apiTarget = scalingTarget("orders", ordersService, s.apiDesiredCount, s.apiMaxCount);
    const apiPolicies = [cpuPolicy("orders-cpu", apiTarget, 60)];

    const workerTarget = scalingTarget("invoices-worker", workerService, s.workerDesiredCount, s.workerMaxCount);
    const workerPolicies: aws.appautoscaling.Policy[] = [];
    const workerAlarms: aws.cloudwatch.MetricAlarm[] = [];
    if (data.broker) {
        // Queue depth of invoices.order-created (Amazon MQ publishes it per minute).
        const step = (name: string, adjustments: aws.types.input.appautoscaling.PolicyStepScalingPolicyConfigurationStepAdjustment[]) =>
            new aws.appautoscaling.Policy(name, {
                policyType: "StepScaling",
                serviceNamespace: workerTarget.serviceNamespace,
                scalableDimension: workerTarget.scalableDimension,
                resourceId: workerTarget.resourceId,
                stepScalingPolicyConfiguration: {
                    adjustmentType: "ChangeInCapacity",
                    cooldown: 60,
                    metricAggregationType: "Maximum",
                    stepAdjustments: adjustments,
                },
            });
        const scaleOut = step("invoices-worker-queue-out", [
            { metricIntervalLowerBound: "0", metricIntervalUpperBound: "900", scalingAdjustment: 1 },
            { metricIntervalLowerBound: "900", scalingAdjustment: 2 },
        ]);
        const scaleIn = step("invoices-worker-queue-in", [{ metricIntervalUpperBound: "0", scalingAdjustment: -1 }]);
        const queueDepth = amazonMqQueueDepth(data.broker.brokerName, invoicesQueue(s.brokerNamespace));
        workerAlarms.push(
            new aws.cloudwatch.MetricAlarm("invoices-worker-queue-high", {
                ...queueDepth,
                alarmDescription: "invoices.order-created backlog: add invoices-worker tasks",
                comparisonOperator: "GreaterThanThreshold",
                threshold: 100,
                evaluationPeriods: 2,
                treatMissingData: "notBreaching",
                alarmActions: [scaleOut.arn],
                tags,
            }),
            new aws.cloudwatch.MetricAlarm("invoices-worker-queue-low", {
                ...queueDepth,
                alarmDescription: "invoices.order-created drained: remove invoices-worker tasks",
                comparisonOperator: "LessThanThreshold",
                threshold: 10,
                evaluationPeriods: 10,
                treatMissingData: "notBreaching",
                alarmActions: [scaleIn.arn],
                tags,
            }),
        );
        workerPolicies.push(scaleOut, scaleIn);
    } else {
        // External broker: no queue metric in CloudWatch, scale on CPU.
        workerPolicies.push(cpuPolicy("invoices-worker-cpu", workerTarget, 70));
    }

    // ---- One-off tasks -----------------------------------------------------
    // What `aws ecs run-task` needs to run each one-off task (infra/deploy.sh
    // runs all three on every deploy, before the services are updated).
    const oneOff = (task: aws.ecs.TaskDefinition, sg: aws.ec2.SecurityGroup): OneOffTask => ({
        taskDefinition: task.arn,
        networkConfiguration: pulumi.interpolate`awsvpcConfiguration={subnets=[${pulumi
            .all(privateSubnetIds)
            .apply((ids) => ids.join(","))}],securityGroups=[${sg.id}],assignPublicIp=DISABLED}`,
    });
    const oneOffTasks = {
        "migrate-orders": oneOff(migrations.orders, sgs.migrate),
        "migrate-invoices": oneOff(migrations.invoices, sgs.migrate),
        "provision-broker": oneOff(provisionBroker, sgs.provision),
    };
    /** One task as a command line, for running it by hand (migrationCommands, provisionBrokerCommand). */
    const runTask = (task: OneOffTask, startedBy: string) =>
        pulumi.interpolate`aws ecs run-task --region ${region} --cluster ${cluster.name} --launch-type FARGATE --task-definition ${task.taskDefinition} --network-configuration '${task.networkConfiguration}' --started-by ${startedBy} --query 'tasks[0].taskArn' --output text`;

    return {
        cluster,
        repositories,
        logGroups,
        ordersTask,
        workerTask,
        ordersService,
        workerService,
        migrations,
        oneOffTasks,
        migrationCommands: {
            orders: runTask(oneOffTasks["migrate-orders"], "pulumi-migrate"),
            invoices: runTask(oneOffTasks["migrate-invoices"], "pulumi-migrate"),
        },
        provisionBroker,
        provisionBrokerCommand: runTask(oneOffTasks["provision-broker"], "pulumi-provision-broker"),
        executionRoles,
        scaling: {
            api: { target: apiTarget, policies: apiPolicies },
            worker: { target: workerTarget, policies: workerPolicies, alarms: workerAlarms },
        },
    };
}
