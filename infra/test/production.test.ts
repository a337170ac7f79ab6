/**
 * A stack named `production`: the production options are on by default (RDS
 * in two AZs, a NAT gateway per AZ); config can still turn each off.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";

import * as pulumi from "@pulumi/pulumi";

import { loadSettings, PRODUCTION_STACK } from "../src/config";
import { createStack } from "../src/stack";
import { AUTH_CONFIG, ofType, one, PROJECT, IMAGE_TAG, REGION, run, setup, T } from "./harness";

const CONFIG = {
    "aws:region": REGION,
    imageTag: IMAGE_TAG,
    allowPlainHttp: "true",
    ...AUTH_CONFIG,
};
setup(CONFIG, [], PRODUCTION_STACK);

before(async () => {
    await run(createStack);
});

describe("a production stack", () => {
    it("runs RDS in two AZs (Multi-AZ)", () => {
        assert.equal(one(T.rds, "db").inputs.multiAz, true);
    });

    it("gives each AZ its own NAT gateway, and routes each private subnet through its own AZ's", () => {
        const nats = ofType(T.natGateway);
        assert.equal(nats.length, 2);
        const publicSubnetOf = (id: string) => ofType(T.subnet).find((s) => s.id === id);
        const natAz = new Map(nats.map((n) => [n.id, publicSubnetOf(n.inputs.subnetId)?.inputs.availabilityZone]));
        assert.deepEqual(new Set(natAz.values()), new Set([`${REGION}a`, `${REGION}b`]));
        const privateSubnets = ofType(T.subnet).filter((s) => s.inputs.tags.tier === "private");
        assert.equal(privateSubnets.length, 2);
        for (const subnet of privateSubnets) {
            const association = ofType(T.routeTableAssociation).find((a) => a.inputs.subnetId === subnet.id);
            const table = ofType(T.routeTable).find((t) => t.id === association?.inputs.routeTableId);
            const natId = table?.inputs.routes?.[0]?.natGatewayId;
            assert.equal(natAz.get(natId), subnet.inputs.availabilityZone, `${subnet.name} goes out through another AZ`);
        }
    });

    it("lets config turn either option off", () => {
        const config = { ...CONFIG, dbMultiAz: "false", natGatewayPerAz: "false" };
        pulumi.runtime.setAllConfig(
            Object.fromEntries(Object.entries(config).map(([k, v]) => [k.includes(":") ? k : `${PROJECT}:${k}`, v])),
        );
        const settings = loadSettings();
        assert.equal(settings.dbMultiAz, false);
        assert.equal(settings.natGatewayPerAz, false);
    });
});
