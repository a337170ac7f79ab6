/**
 * Pulumi mocks for the unit tests: no engine, no AWS. Every registered resource
 * is recorded (type, name, inputs with secrets unwrapped) and its state is its
 * inputs plus the outputs AWS would compute that the program reads (ARNs, ids,
 * repository URLs, DNS names, endpoints).
 */
import * as pulumi from "@pulumi/pulumi";

export const PROJECT = "orders-pipeline";
export const STACK = "test";
export const REGION = "eu-west-1";
export const ACCOUNT = "123456789012";
/** The image tag every test stack deploys (`imageTag` is required: no default). */
export const IMAGE_TAG = "0123456789abcdef0123456789abcdef01234567";
/** The identity provider every test stack names (the three required `auth*` keys). */
export const AUTH_CONFIG = {
    authJwksUrl: "https://idp.example.com/.well-known/jwks.json",
    authIssuer: "https://idp.example.com/",
    authAudience: "orders-api",
};

export interface Recorded {
    type: string;
    name: string;
    id: string;
    inputs: any;
    state: any;
    /** The provider reference (`<urn>::<id>`) the resource is registered with. */
    provider?: string;
}

const SECRET_KEY = "4dabf18193072939515e22adb298388d";

/** Inputs arrive with secrets wrapped in a signature object: unwrap them. */
function unwrap(value: any): any {
    if (Array.isArray(value)) {
        return value.map(unwrap);
    }
    if (value !== null && typeof value === "object") {
        if (SECRET_KEY in value && "value" in value) {
            return unwrap(value.value);
        }
        return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, unwrap(v)]));
    }
    return value;
}

/** arn:aws:<service>:<region>:<account>:<kind>/<name> from a type token. */
function arnFor(type: string, name: string, inputs: any): string {
    const [, modulePath, kind] = type.split(":");
    const service = modulePath.split("/")[0];
    switch (type) {
        case "aws:secretsmanager/secret:Secret":
            return `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:${name}-AbCdEf`;
        case "aws:ecs/taskDefinition:TaskDefinition":
            return `arn:aws:ecs:${REGION}:${ACCOUNT}:task-definition/${inputs.family}:1`;
        case "aws:iam/role:Role":
            return `arn:aws:iam::${ACCOUNT}:role/${name}`;
        default:
            return `arn:aws:${service}:${REGION}:${ACCOUNT}:${kind.toLowerCase()}/${name}`;
    }
}

function computed(type: string, name: string, inputs: any): Record<string, unknown> {
    switch (type) {
        case "aws:ecr/repository:Repository":
            return { repositoryUrl: `${ACCOUNT}.dkr.ecr.${REGION}.amazonaws.com/${inputs.name}` };
        case "aws:lb/loadBalancer:LoadBalancer":
            return { dnsName: `${name}-1234567890.${REGION}.elb.amazonaws.com`, arnSuffix: `app/${name}/50dc6c495c0c9188` };
        case "aws:lb/targetGroup:TargetGroup":
            return { arnSuffix: `targetgroup/${name}/943f017f100becff` };
        case "aws:rds/instance:Instance":
            return {
                identifier: inputs.identifier ?? `${name}-0a1b2c3d`,
                address: `${name}.c1a2b3c4d5e6.${REGION}.rds.amazonaws.com`,
                endpoint: `${name}.c1a2b3c4d5e6.${REGION}.rds.amazonaws.com:5432`,
            };
        case "aws:mq/broker:Broker":
            return {
                instances: [
                    {
                        consoleUrl: `https://b-1234-abcd.mq.${REGION}.amazonaws.com`,
                        endpoints: [`amqps://b-1234-abcd.mq.${REGION}.amazonaws.com:5671`],
                        ipAddress: "10.0.10.25",
                    },
                ],
            };
        case "random:index/randomPassword:RandomPassword":
            return { result: `Mock${name.replace(/[^A-Za-z0-9]/g, "")}0123456789abcdef` };
        case "aws:rds/subnetGroup:SubnetGroup":
            return { name: inputs.name ?? `${name}-subnets` };
        case "aws:iam/role:Role":
            return { name: inputs.name ?? `${name}-role` };
        default:
            return {};
    }
}

export const resources: Recorded[] = [];
/** Resource options (dependsOn, ignoreChanges, …) by `${type}::${name}`. */
export const options = new Map<string, pulumi.CustomResourceOptions>();

/** Registers the mocks and the stack configuration (before the program runs). */
export function setup(config: Record<string, string>, secretKeys: string[] = [], stack: string = STACK): void {
    pulumi.runtime.setMocks(
        {
            newResource(args: pulumi.runtime.MockResourceArgs): { id: string; state: any } {
                const inputs = unwrap(args.inputs);
                const id = `${args.name}_id`;
                const state = {
                    ...args.inputs,
                    arn: arnFor(args.type, args.name, inputs),
                    ...computed(args.type, args.name, inputs),
                };
                resources.push({ type: args.type, name: args.name, id, inputs, state: unwrap(state), provider: args.provider });
                return { id, state };
            },
            call(args: pulumi.runtime.MockCallArgs): Record<string, any> {
                switch (args.token) {
                    case "aws:index/getAvailabilityZones:getAvailabilityZones":
                        return {
                            names: [`${REGION}a`, `${REGION}b`, `${REGION}c`],
                            zoneIds: ["euw1-az1", "euw1-az2", "euw1-az3"],
                            id: REGION,
                        };
                    // No aws:index/getRegion: the program reads the stack's
                    // aws:region, never the region of whoever runs it.
                    default:
                        throw new Error(`unmocked call ${args.token}`);
                }
            },
        },
        PROJECT,
        stack,
        false,
    );
    pulumi.runtime.setAllConfig(
        Object.fromEntries(Object.entries(config).map(([k, v]) => [k.includes(":") ? k : `${PROJECT}:${k}`, v])),
        secretKeys.map((k) => (k.includes(":") ? k : `${PROJECT}:${k}`)),
    );
}

/**
 * Runs the program inside a root stack resource (as the Pulumi CLI would),
 * recording every resource's options, then waits until every registration has
 * reached the mocks.
 */
export async function run<R>(program: () => R): Promise<R> {
    let result: R | undefined;
    await pulumi.runtime.runInPulumiStack(async () => {
        pulumi.runtime.registerStackTransformation((args) => {
            options.set(`${args.type}::${args.name}`, args.opts);
            return undefined;
        });
        result = program();
        return {};
    });
    await pulumi.runtime.disconnect();
    return result as R;
}

/** The value of an input/output (outputs are known in a mocked update). */
export function value<T>(input: pulumi.Input<T> | undefined): Promise<T> {
    return new Promise((resolve) => pulumi.output(input as pulumi.Input<T>).apply((v) => resolve(v as T)));
}

export const ofType = (type: string): Recorded[] => resources.filter((r) => r.type === type);

export function one(type: string, name: string): Recorded {
    const found = resources.filter((r) => r.type === type && r.name === name);
    if (found.length !== 1) {
        throw new Error(`expected one ${type} named ${name}, found ${found.length}`);
    }
    return found[0];
}

export const T = {
    subnet: "aws:ec2/subnet:Subnet",
    routeTable: "aws:ec2/routeTable:RouteTable",
    routeTableAssociation: "aws:ec2/routeTableAssociation:RouteTableAssociation",
    natGateway: "aws:ec2/natGateway:NatGateway",
    sg: "aws:ec2/securityGroup:SecurityGroup",
    ingress: "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    egress: "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
    taskDefinition: "aws:ecs/taskDefinition:TaskDefinition",
    service: "aws:ecs/service:Service",
    cluster: "aws:ecs/cluster:Cluster",
    secret: "aws:secretsmanager/secret:Secret",
    secretVersion: "aws:secretsmanager/secretVersion:SecretVersion",
    role: "aws:iam/role:Role",
    rolePolicy: "aws:iam/rolePolicy:RolePolicy",
    rolePolicyAttachment: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    loadBalancer: "aws:lb/loadBalancer:LoadBalancer",
    targetGroup: "aws:lb/targetGroup:TargetGroup",
    listener: "aws:lb/listener:Listener",
    listenerRule: "aws:lb/listenerRule:ListenerRule",
    webAcl: "aws:wafv2/webAcl:WebAcl",
    webAclAssociation: "aws:wafv2/webAclAssociation:WebAclAssociation",
    scalingTarget: "aws:appautoscaling/target:Target",
    scalingPolicy: "aws:appautoscaling/policy:Policy",
    alarm: "aws:cloudwatch/metricAlarm:MetricAlarm",
    logGroup: "aws:cloudwatch/logGroup:LogGroup",
    ecr: "aws:ecr/repository:Repository",
    rds: "aws:rds/instance:Instance",
    dbSubnetGroup: "aws:rds/subnetGroup:SubnetGroup",
    broker: "aws:mq/broker:Broker",
    topic: "aws:sns/topic:Topic",
    subscription: "aws:sns/topicSubscription:TopicSubscription",
} as const;

/** A recorded task definition's containers. */
export function containersOf(family: string): any[] {
    const td = ofType(T.taskDefinition).find((r) => r.inputs.family === family);
    if (!td) {
        throw new Error(`no task definition with family ${family}`);
    }
    return JSON.parse(td.inputs.containerDefinitions);
}

export const envOf = (c: any): Record<string, string> =>
    Object.fromEntries((c.environment ?? []).map((e: any) => [e.name, e.value]));
export const secretsOf = (c: any): Record<string, string> =>
    Object.fromEntries((c.secrets ?? []).map((e: any) => [e.name, e.valueFrom]));

/** The value stored in the secret with this ARN (its SecretVersion's secretString). */
export function secretValue(arn: string): string {
    const secret = ofType(T.secret).find((r) => r.state.arn === arn);
    if (!secret) {
        throw new Error(`no secret with ARN ${arn}`);
    }
    return one(T.secretVersion, secret.name).inputs.secretString;
}

/** Actions that send a request to a target (anything but a fixed response or a redirect). */
const reachesTarget = (action: any) => action.type !== "fixed-response" && action.type !== "redirect";

/**
 * Every way the load balancer lets a request through to a target, as
 * "<listener port> <METHOD|*> <path pattern|*>": one per method and path of each
 * rule that forwards (other conditions only narrow a rule, so they are left
 * out), "<port> * *" for a listener whose default action forwards.
 */
export function exposedRoutes(): string[] {
    const listeners = ofType(T.listener);
    const routes: string[] = [];
    for (const l of listeners) {
        if ((l.inputs.defaultActions ?? []).some(reachesTarget)) {
            routes.push(`${l.inputs.port} * *`);
        }
    }
    for (const r of ofType(T.listenerRule)) {
        if (!(r.inputs.actions ?? []).some(reachesTarget)) {
            continue;
        }
        const listener = listeners.find((l) => l.state.arn === r.inputs.listenerArn);
        if (!listener) {
            throw new Error(`listener rule ${r.name} belongs to no listener of this stack`);
        }
        const conditions: any[] = r.inputs.conditions ?? [];
        const methods: string[] = conditions.flatMap((c) => c.httpRequestMethod?.values ?? []);
        const paths: string[] = conditions.flatMap((c) => c.pathPattern?.values ?? []);
        for (const m of methods.length ? methods : ["*"]) {
            for (const p of paths.length ? paths : ["*"]) {
                routes.push(`${listener.inputs.port} ${m} ${p}`);
            }
        }
    }
    return routes.sort();
}
