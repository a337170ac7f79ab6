/** The entry point the Pulumi CLI runs: it builds the stack and exports its outputs. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";

import { AUTH_CONFIG, IMAGE_TAG, REGION, run, setup, value } from "./harness";

setup({
    "aws:region": REGION,
    imageTag: IMAGE_TAG,
    allowPlainHttp: "true",
    ...AUTH_CONFIG,
});

it("index.ts exports the stack outputs", async () => {
    const index = await run(() => require("../index") as Record<string, unknown>);
    for (const name of [
        "albDnsName",
        "url",
        "clusterName",
        "ecrRepositoryUrls",
        "migrationTaskDefinitionArns",
        "migrationCommands",
        "provisionBrokerTaskDefinitionArn",
        "provisionBrokerCommand",
        "metricsScraperSecurityGroupId",
        "alarmTopicArn",
        "dashboardVariables",
    ]) {
        assert.ok(name in index, `missing output ${name}`);
    }
    assert.equal(await value(index.url as string), `http://alb-1234567890.${REGION}.elb.amazonaws.com`);
    // Defaults: RDS and Amazon MQ, tracing off (no endpoint configured).
    assert.match((await value(index.dbAddress as string)) ?? "", /\.rds\.amazonaws\.com$/);
    assert.match((await value(index.brokerEndpoint as string)) ?? "", /^amqps:\/\/.+:5671$/);
    assert.match(await value(index.alarmTopicArn as string), /^arn:aws:sns:[a-z0-9-]+:\d{12}:/);
    // One value for each text variable of the Infrastructure dashboard, and no other.
    const dashboard = JSON.parse(
        readFileSync(join(__dirname, "../../docker/grafana/dashboards/infrastructure.json"), "utf8"),
    );
    const textboxes = dashboard.templating.list
        .filter((v: { type: string }) => v.type === "textbox")
        .map((v: { name: string }) => v.name)
        .sort();
    const variables = (await value(index.dashboardVariables)) as Record<string, string>;
    assert.deepEqual(Object.keys(variables).sort(), textboxes);
    assert.equal(variables.region, REGION);
    assert.equal(variables.invoices_queue, "invoices.order-created");
    for (const [name, v] of Object.entries(variables)) {
        assert.ok(typeof v === "string" && v.length > 0, `${name}: ${v}`);
    }
});
