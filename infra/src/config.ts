import * as pulumi from "@pulumi/pulumi";

import { checkConnectionBudget, resolveMaxConnections } from "./budget";

/** Everything the program reads from the stack configuration (see README.md). */
export interface Settings {
    /** `${project}-${stack}`, lower-cased: prefix of physical names. */
    prefix: string;
    /** `aws:region`: the one region of the stack (the provider's, the logs', the commands'). */
    region: string;
    /**
     * The tag of the three images the tasks run. No default: `infra/deploy.sh`
     * pushes the images of a commit and passes their tag for each run.
     */
    imageTag: string;
    apiDesiredCount: number;
    apiMaxCount: number;
    workerDesiredCount: number;
    workerMaxCount: number;
    /** OTEL_EXPORTER_OTLP_ENDPOINT (plain); tracing is off when unset. */
    otlpEndpoint?: string;
    /** OTEL_EXPORTER_OTLP_HEADERS (secret), e.g. "x-honeycomb-team=…". */
    otlpHeaders?: pulumi.Output<string>;
    /** External databases (e.g. Neon): both or neither; RDS is created when neither. */
    externalDatabases?: { orders: pulumi.Output<string>; invoices: pulumi.Output<string> };
    /**
     * External broker instead of Amazon MQ: the admin user's amqps:// URL and the
     * https:// URL of its management API with the same credentials (both or neither).
     */
    externalBroker?: { url: pulumi.Output<string>; adminUrl: pulumi.Output<string> };
    brokerNamespace: string;
    dbInstanceClass: string;
    dbDeletionProtection: boolean;
    mqInstanceType: string;
    mqDeploymentMode: "SINGLE_INSTANCE" | "CLUSTER_MULTI_AZ";
    /** ACM certificate of the HTTPS listener; port 80 only redirects to it. */
    certificateArn?: string;
    /**
     * Development only: without a certificate, serve the API over plain HTTP on
     * port 80. Without either, the program refuses to deploy.
     */
    allowPlainHttp: boolean;
    /** AWS WAF: block an IP above this many requests per 5 minutes (no WAF when unset). */
    wafRateLimit?: number;
    logRetentionDays: number;
    /**
     * The API's bearer-token authentication (AUTH_JWKS_URL, AUTH_ISSUER,
     * AUTH_AUDIENCE): the identity provider's JWKS over https, and the `iss` and
     * `aud` its tokens must carry. Required: the program never turns
     * authentication off (AUTH_DISABLED is for local development only).
     */
    auth: { jwksUrl: string; issuer: string; audience: string };
    /** RDS in two AZs (a standby it fails over to). Default: on for the stack `production`. */
    dbMultiAz: boolean;
    /**
     * One NAT gateway per AZ, each private subnet routed through its own AZ's:
     * an AZ's outage does not cut the other AZ's tasks off. Default: on for
     * the stack `production` (one NAT gateway otherwise, the cheaper choice).
     */
    natGatewayPerAz: boolean;
    /**
     * DB_POOL_SIZE of each service container: the most pooled sessions it
     * opens. The defaults fit the default stack (6 orders tasks, 4 workers)
     * into a db.t4g.micro (see src/budget.ts).
     */
    apiDbPoolSize: number;
    relayDbPoolSize: number;
    workerDbPoolSize: number;
    /**
     * The database server's max_connections, for the connection budget and the
     * DbConnections alarm: config `dbMaxConnections`, or the RDS class's value.
     * Undefined with external databases and no override (budget unchecked).
     */
    dbMaxConnections?: number;
    /** With otlpEndpoint: also push metrics over OTLP (OTEL_METRICS_EXPORTER=otlp). */
    otlpMetrics: boolean;
    /** An email address subscribed to the alarms' SNS topic. */
    alarmEmail?: string;
}

/** The stack name that turns the production options on by default. */
export const PRODUCTION_STACK = "production";

/** The authentication settings: all three, the JWKS over https. */
function loadAuth(config: pulumi.Config): Settings["auth"] {
    const missing = ["authJwksUrl", "authIssuer", "authAudience"].filter((key) => !config.get(key));
    if (missing.length > 0) {
        throw new pulumi.RunError(
            `config ${missing.join(", ")} required: the API accepts only bearer tokens of your identity provider ` +
                "(pulumi config set authJwksUrl https://idp.example.com/.well-known/jwks.json; authIssuer and " +
                "authAudience are the iss and aud its access tokens carry). Authentication cannot be turned off here.",
        );
    }
    const jwksUrl = config.require("authJwksUrl");
    let protocol: string;
    try {
        protocol = new URL(jwksUrl).protocol;
    } catch {
        throw new Error(`config authJwksUrl is not a URL: ${jwksUrl}`);
    }
    if (protocol !== "https:") {
        throw new Error(`config authJwksUrl must be an https:// URL (the keys that sign tokens), got ${jwksUrl}`);
    }
    return { jwksUrl, issuer: config.require("authIssuer"), audience: config.require("authAudience") };
}

export function loadSettings(): Settings {
    const config = new pulumi.Config();
    /** The stack whose defaults are the production options (see README). */
    const production = pulumi.getStack() === PRODUCTION_STACK;
    const region = loadRegion();
    const imageTag = loadImageTag(config);
    const int = (key: string, fallback: number, min = 0): number => {
        const value = config.getNumber(key) ?? fallback;
        if (!Number.isInteger(value) || value < min) {
            throw new Error(`config ${key} must be an integer >= ${min}, got ${value}`);
        }
        return value;
    };

    const apiDesiredCount = int("apiDesiredCount", 2, 1);
    const workerDesiredCount = int("workerDesiredCount", 1, 1);
    const apiMaxCount = int("apiMaxCount", Math.max(6, apiDesiredCount), apiDesiredCount);
    const workerMaxCount = int("workerMaxCount", Math.max(4, workerDesiredCount), workerDesiredCount);

    const ordersDatabaseUrl = config.getSecret("ordersDatabaseUrl");
    const invoicesDatabaseUrl = config.getSecret("invoicesDatabaseUrl");
    if ((ordersDatabaseUrl === undefined) !== (invoicesDatabaseUrl === undefined)) {
        throw new Error("set both ordersDatabaseUrl and invoicesDatabaseUrl (external databases) or neither (RDS)");
    }

    const brokerUrl = config.getSecret("brokerUrl");
    const brokerAdminUrl = config.getSecret("brokerAdminUrl");
    if ((brokerUrl === undefined) !== (brokerAdminUrl === undefined)) {
        throw new Error(
            "set both brokerUrl and brokerAdminUrl (external broker: its admin user's amqps:// URL and management API https:// URL) or neither (Amazon MQ)",
        );
    }

    const certificateArn = config.get("certificateArn");
    const allowPlainHttp = config.getBoolean("allowPlainHttp") ?? false;
    if (certificateArn === undefined && !allowPlainHttp) {
        throw new pulumi.RunError(
            "config certificateArn is required: the load balancer serves the API over HTTPS only " +
                "(pulumi config set certificateArn arn:aws:acm:…). For a development stack without a domain, " +
                "`pulumi config set allowPlainHttp true` serves it over unencrypted HTTP on port 80 instead.",
        );
    }

    const wafRateLimit = config.getNumber("wafRateLimit");
    if (wafRateLimit !== undefined && (!Number.isInteger(wafRateLimit) || wafRateLimit < 10 || wafRateLimit > 2_000_000_000)) {
        throw new Error(`config wafRateLimit must be an integer from 10 to 2000000000 (requests per 5 minutes per IP), got ${wafRateLimit}`);
    }

    const mqDeploymentMode = config.get("mqDeploymentMode") ?? "SINGLE_INSTANCE";
    if (mqDeploymentMode !== "SINGLE_INSTANCE" && mqDeploymentMode !== "CLUSTER_MULTI_AZ") {
        throw new Error(`config mqDeploymentMode must be SINGLE_INSTANCE or CLUSTER_MULTI_AZ, got ${mqDeploymentMode}`);
    }

    const mqInstanceType = config.get("mqInstanceType") ?? "mq.t3.micro";
    if (mqDeploymentMode === "CLUSTER_MULTI_AZ" && mqInstanceType === "mq.t3.micro") {
        throw new Error("Amazon MQ: mq.t3.micro supports SINGLE_INSTANCE only; set mqInstanceType to e.g. mq.m5.large");
    }

    const brokerNamespace = config.get("brokerNamespace") ?? "";
    if (!/^[A-Za-z0-9._-]{0,64}$/.test(brokerNamespace)) {
        throw new Error("config brokerNamespace: at most 64 letters, digits, '.', '-' or '_'");
    }

    const otlpEndpoint = config.get("otlpEndpoint");
    if (otlpEndpoint !== undefined) {
        new URL(otlpEndpoint); // throws on a malformed URL
    }

    const alarmEmail = config.get("alarmEmail");
    if (alarmEmail !== undefined && !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(alarmEmail)) {
        throw new pulumi.RunError(
            `config alarmEmail must be an email address (the alarms' SNS topic mails it), got ${alarmEmail}; ` +
                "pulumi config set alarmEmail oncall@example.com, or rm it for no email subscription",
        );
    }

    const pools = {
        apiDbPoolSize: int("apiDbPoolSize", 3, 1),
        relayDbPoolSize: int("relayDbPoolSize", 3, 1),
        workerDbPoolSize: int("workerDbPoolSize", 2, 1),
    };
    const dbInstanceClass = config.get("dbInstanceClass") ?? "db.t4g.micro";
    const rds = ordersDatabaseUrl === undefined;
    const dbMaxConnections = resolveMaxConnections(rds, dbInstanceClass, config.getNumber("dbMaxConnections"));
    checkConnectionBudget({ apiMaxCount, workerMaxCount, ...pools }, rds, dbMaxConnections);

    return {
        prefix: `${pulumi.getProject()}-${pulumi.getStack()}`.toLowerCase(),
        region,
        imageTag,
        apiDesiredCount,
        apiMaxCount,
        workerDesiredCount,
        workerMaxCount,
        otlpEndpoint,
        otlpHeaders: config.getSecret("otlpHeaders"),
        externalDatabases:
            ordersDatabaseUrl && invoicesDatabaseUrl
                ? { orders: ordersDatabaseUrl, invoices: invoicesDatabaseUrl }
                : undefined,
        externalBroker: brokerUrl && brokerAdminUrl ? { url: brokerUrl, adminUrl: brokerAdminUrl } : undefined,
        brokerNamespace,
        dbInstanceClass,
        dbDeletionProtection: config.getBoolean("dbDeletionProtection") ?? false,
        mqInstanceType,
        mqDeploymentMode,
        certificateArn,
        allowPlainHttp,
        wafRateLimit,
        logRetentionDays: int("logRetentionDays", 30, 1),
        auth: loadAuth(config),
        dbMultiAz: config.getBoolean("dbMultiAz") ?? production,
        natGatewayPerAz: config.getBoolean("natGatewayPerAz") ?? production,
        ...pools,
        dbMaxConnections,
        otlpMetrics: config.getBoolean("otlpMetrics") ?? true,
        alarmEmail,
    };
}

/**
 * `aws:region`, required: without it the AWS provider would take the region
 * of whoever runs the program (AWS_REGION, the CLI profile), and CI would
 * deploy a second stack in its own region.
 */
function loadRegion(): string {
    const region = new pulumi.Config("aws").get("region");
    if (!region) {
        throw new Error(
            `config aws:region is not set: the stack's region is read from Pulumi.${pulumi.getStack()}.yaml ` +
                "by this program, infra/deploy.sh and CI alike; pulumi config set aws:region eu-west-1, and commit the stack file",
        );
    }
    return region;
}

/** A Docker tag: what `docker buildx build --tag` accepts. */
const IMAGE_TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/**
 * `imageTag`, required: a default (`latest`) would start the services on
 * images nobody pushed, and a tag kept in the stack file would let a plain
 * `pulumi up` roll the services back to it.
 */
function loadImageTag(config: pulumi.Config): string {
    const imageTag = config.get("imageTag");
    if (!imageTag) {
        throw new Error(
            "config imageTag is not set: it names the images the services run, and has no default. " +
                "Deploy with infra/deploy.sh, which pushes the images of a commit and sets imageTag to their tag for that run " +
                `(infra/deploy.sh --stack ${pulumi.getStack()} preview shows the plan); do not commit imageTag to the stack file`,
        );
    }
    if (!IMAGE_TAG.test(imageTag)) {
        throw new Error(`config imageTag must be a Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}), got ${JSON.stringify(imageTag)}`);
    }
    return imageTag;
}
