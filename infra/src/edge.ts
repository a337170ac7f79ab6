import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

import { API, HEALTH_PATH, PORTS } from "./app";
import { Settings } from "./config";
import { Network } from "./network";
import { SecurityGroups } from "./security";

/**
 * The routes the internet may reach, one listener rule each: the rest of the
 * API's port (/metrics, /ready, /openapi.json, anything new) answers 404 at
 * the load balancer and never reaches a task.
 */
export const PUBLIC_ROUTES: { name: string; method: string; path: string }[] = [
    { name: "create-order", method: "POST", path: "/orders" },
    { name: "list-orders", method: "GET", path: "/orders" },
    { name: "get-order", method: "GET", path: "/orders/*" },
    { name: "health", method: "GET", path: HEALTH_PATH },
];

/** The listener's answer to everything else, shaped like the API's problem details. */
export const NOT_FOUND = {
    // ALB fixed responses accept text/plain, text/css, text/html,
    // application/javascript and application/json only, not application/problem+json.
    contentType: "application/json",
    statusCode: "404",
    messageBody: JSON.stringify({
        type: "about:blank",
        title: "Not Found",
        status: 404,
        detail: "no such route",
        code: "not_found",
    }),
};

/** The TLS policy of the HTTPS listener: TLS 1.3 and 1.2 with forward secrecy only. */
export const TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06";

export interface Edge {
    alb: aws.lb.LoadBalancer;
    targetGroup: aws.lb.TargetGroup;
    /** The listener holding the public routes (HTTPS, or HTTP with allowPlainHttp). */
    listener: aws.lb.Listener;
    /** Port 80: redirects to HTTPS, or is `listener` itself with allowPlainHttp. */
    httpListener: aws.lb.Listener;
    /** One per public route, forwarding to the API's target group. */
    rules: aws.lb.ListenerRule[];
    /** With wafRateLimit: the web ACL and its association with the ALB. */
    waf?: { acl: aws.wafv2.WebAcl; association: aws.wafv2.WebAclAssociation };
}

/**
 * The internet-facing side: the ALB, its target group (orders-api on 3333,
 * health-checked on /health), the listeners and their rules, and the optional
 * WAF rate limit.
 */
export function createEdge(s: Settings, net: Network, sgs: SecurityGroups, tags: Record<string, string>): Edge {
    const alb = new aws.lb.LoadBalancer("alb", {
        loadBalancerType: "application",
        internal: false,
        securityGroups: [sgs.alb.id],
        subnets: net.publicSubnets.map((x) => x.id),
        dropInvalidHeaderFields: true,
        tags,
    });
    const targetGroup = new aws.lb.TargetGroup("api", {
        vpcId: net.vpc.id,
        targetType: "ip",
        protocol: "HTTP",
        port: PORTS[API],
        deregistrationDelay: 30,
        healthCheck: {
            enabled: true,
            path: HEALTH_PATH,
            protocol: "HTTP",
            port: "traffic-port",
            matcher: "200",
            interval: 15,
            timeout: 5,
            healthyThreshold: 2,
            unhealthyThreshold: 3,
        },
        tags,
    });

    const notFound = [{ type: "fixed-response", fixedResponse: NOT_FOUND }];
    let listener: aws.lb.Listener;
    let httpListener: aws.lb.Listener;
    if (s.certificateArn) {
        listener = new aws.lb.Listener("https", {
            loadBalancerArn: alb.arn,
            port: 443,
            protocol: "HTTPS",
            sslPolicy: TLS_POLICY,
            certificateArn: s.certificateArn,
            defaultActions: notFound,
            tags,
        });
        httpListener = new aws.lb.Listener("http", {
            loadBalancerArn: alb.arn,
            port: 80,
            protocol: "HTTP",
            defaultActions: [{ type: "redirect", redirect: { protocol: "HTTPS", port: "443", statusCode: "HTTP_301" } }],
            tags,
        });
    } else if (s.allowPlainHttp) {
        listener = httpListener = new aws.lb.Listener("http", {
            loadBalancerArn: alb.arn,
            port: 80,
            protocol: "HTTP",
            defaultActions: notFound,
            tags,
        });
    } else {
        // loadSettings refuses this already; kept so that no caller can build a plain-HTTP edge by accident.
        throw new pulumi.RunError("the load balancer needs certificateArn (or allowPlainHttp for development)");
    }

    const rules = PUBLIC_ROUTES.map(
        ({ name, method, path }, i) =>
            new aws.lb.ListenerRule(`public-${name}`, {
                listenerArn: listener.arn,
                priority: 10 * (i + 1),
                conditions: [{ httpRequestMethod: { values: [method] } }, { pathPattern: { values: [path] } }],
                actions: [{ type: "forward", targetGroupArn: targetGroup.arn }],
                tags,
            }),
    );

    let waf: Edge["waf"];
    if (s.wafRateLimit !== undefined) {
        const visibility = (metricName: string) => ({
            cloudwatchMetricsEnabled: true,
            metricName,
            sampledRequestsEnabled: true,
        });
        const acl = new aws.wafv2.WebAcl("waf", {
            description: `${s.prefix}: at most ${s.wafRateLimit} requests per 5 minutes per client IP`,
            scope: "REGIONAL",
            defaultAction: { allow: {} },
            customResponseBodies: [
                {
                    key: "too-many-requests",
                    contentType: "APPLICATION_JSON",
                    content: JSON.stringify({
                        type: "about:blank",
                        title: "Too Many Requests",
                        status: 429,
                        detail: "request rate limit exceeded",
                        code: "rate_limited",
                    }),
                },
            ],
            rules: [
                {
                    name: "rate-limit-per-ip",
                    priority: 0,
                    action: { block: { customResponse: { responseCode: 429, customResponseBodyKey: "too-many-requests" } } },
                    statement: {
                        rateBasedStatement: { limit: s.wafRateLimit, aggregateKeyType: "IP", evaluationWindowSec: 300 },
                    },
                    visibilityConfig: visibility(`${s.prefix}-rate-limit-per-ip`),
                },
            ],
            visibilityConfig: visibility(`${s.prefix}-waf`),
            tags,
        });
        const association = new aws.wafv2.WebAclAssociation("waf", { resourceArn: alb.arn, webAclArn: acl.arn });
        waf = { acl, association };
    }

    return { alb, targetGroup, listener, httpListener, rules, waf };
}
