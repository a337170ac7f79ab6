import { createStack } from "./src/stack";

const { outputs } = createStack();

export const albDnsName = outputs.albDnsName;
export const url = outputs.url;
export const clusterName = outputs.clusterName;
export const ordersServiceName = outputs.ordersServiceName;
export const workerServiceName = outputs.workerServiceName;
export const ecrRepositoryUrls = outputs.ecrRepositoryUrls;
/** One-off task definitions running `orders-api migrate` and `invoices-worker migrate`. */
export const migrationTaskDefinitionArns = outputs.migrationTaskDefinitionArns;
/** `aws ecs run-task …` command lines starting them. */
export const migrationCommands = outputs.migrationCommands;
export const dbAddress = outputs.dbAddress;
export const brokerEndpoint = outputs.brokerEndpoint;
/** The one-off `outbox-relay provision-broker` task (broker users), and its run-task command line. */
export const provisionBrokerTaskDefinitionArn = outputs.provisionBrokerTaskDefinitionArn;
export const provisionBrokerCommand = outputs.provisionBrokerCommand;
/** Attach to a Prometheus inside the VPC: the only way to the services' /metrics. */
export const metricsScraperSecurityGroupId = outputs.metricsScraperSecurityGroupId;
/** The SNS topic every alarm notifies (subscribe on-call tooling to it; alarmEmail adds an email subscription). */
export const alarmTopicArn = outputs.alarmTopicArn;
/** The Infrastructure dashboard's variables (region, cluster, services, ALB, RDS, broker, …). */
export const dashboardVariables = outputs.dashboardVariables;
/** The image tag the services run (set by infra/deploy.sh for each deploy). */
export const imageTag = outputs.imageTag;
/** What infra/deploy.sh needs to run the migrate and provision-broker tasks. */
export const oneOffTasks = outputs.oneOffTasks;
/** Each service's name and the task definition its finished deployment must run. */
export const ecsServices = outputs.ecsServices;
