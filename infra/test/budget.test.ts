/**
 * The database connection budget (src/budget.ts): the default stack fits the
 * default class; a configuration that does not fit stops at preview with the
 * arithmetic and the ways out; dbMaxConnections overrides the class's value
 * and is required for a class the table does not know; external databases are
 * checked each on its own, or a warning says the budget cannot be checked.
 */
import assert from "node:assert/strict";
import { describe, it, mock } from "node:test";

import * as pulumi from "@pulumi/pulumi";

import { BUDGET_HEADROOM, connectionBudget, RDS_MAX_CONNECTIONS } from "../src/budget";
import { loadSettings } from "../src/config";
import { AUTH_CONFIG, PROJECT, IMAGE_TAG, REGION, setup } from "./harness";

const CONFIG: Record<string, string> = {
    "aws:region": REGION,
    imageTag: IMAGE_TAG,
    allowPlainHttp: "true",
    ...AUTH_CONFIG,
};
const EXTERNAL = {
    ordersDatabaseUrl: "postgres://app:pw@db.example.com:5432/orders",
    invoicesDatabaseUrl: "postgres://app:pw@db.example.com:5432/invoices",
};
setup(CONFIG);

const settingsWith = (extra: Record<string, string>) => () => {
    pulumi.runtime.setAllConfig(
        Object.fromEntries(Object.entries({ ...CONFIG, ...extra }).map(([k, v]) => [k.includes(":") ? k : `${PROJECT}:${k}`, v])),
        Object.keys(EXTERNAL).map((k) => `${PROJECT}:${k}`),
    );
    return loadSettings();
};

describe("connection budget", () => {
    it("fits the default stack (6 orders tasks, 4 workers) into the default db.t4g.micro", () => {
        const s = settingsWith({})();
        assert.equal(s.dbInstanceClass, "db.t4g.micro");
        assert.equal(s.dbMaxConnections, 80);
        assert.deepEqual([s.apiMaxCount, s.workerMaxCount], [6, 4]);
        assert.deepEqual([s.apiDbPoolSize, s.relayDbPoolSize, s.workerDbPoolSize], [3, 3, 2]);
        const b = connectionBudget(s);
        // 6 × (3 + 3 + 1 LISTEN) + 4 × 2 + (2 migrate + 3 operator + 5 reserved) = 42 + 8 + 10
        assert.deepEqual(b, { perOrdersTask: 7, orders: 42, invoices: 8, reserve: 10 });
        assert.ok(b.orders + b.invoices + b.reserve <= BUDGET_HEADROOM * 80);
        assert.ok(BUDGET_HEADROOM < 0.8, "the budget stays below the DbConnections alarm");
    });

    it("refuses a configuration over budget, with the arithmetic and the ways out", () => {
        assert.throws(
            settingsWith({ apiMaxCount: "8" }),
            (e: Error) =>
                /budget exceeded on the RDS instance/.test(e.message) &&
                e.message.includes("74 sessions") &&
                e.message.includes("apiMaxCount 8 × (apiDbPoolSize 3 + relayDbPoolSize 3 + 1 LISTEN session) = 56") &&
                e.message.includes("workerMaxCount 4 × workerDbPoolSize 2 = 8") &&
                e.message.includes("> 60 = 75 % of max_connections 80") &&
                /smaller pools.*apiMaxCount, workerMaxCount.*bigger dbInstanceClass.*dbMaxConnections/s.test(e.message),
        );
        assert.throws(settingsWith({ apiDbPoolSize: "16" }), /budget exceeded/);
        assert.throws(settingsWith({ workerDbPoolSize: "8" }), /budget exceeded/);
        assert.throws(settingsWith({ relayDbPoolSize: "0" }), /relayDbPoolSize must be an integer >= 1/);
    });

    it("fits a bigger stack on a bigger class, and takes dbMaxConnections over the class's value", () => {
        assert.equal(settingsWith({ apiMaxCount: "8", dbInstanceClass: "db.t4g.small" })().dbMaxConnections, RDS_MAX_CONNECTIONS["db.t4g.small"]);
        const s = settingsWith({ apiMaxCount: "8", dbMaxConnections: "100" })();
        assert.equal(s.dbMaxConnections, 100);
        assert.throws(settingsWith({ apiMaxCount: "8", dbMaxConnections: "90" }), /budget exceeded.*> 67 = 75 % of max_connections 90/s);
    });

    it("wants dbMaxConnections for a class it does not know", () => {
        assert.throws(settingsWith({ dbInstanceClass: "db.x2g.large" }), /config dbMaxConnections is required.*db\.x2g\.large/s);
        assert.equal(settingsWith({ dbInstanceClass: "db.x2g.large", dbMaxConnections: "1000" })().dbMaxConnections, 1000);
    });

    it("has conservative values: below RDS's formula on the nominal memory, never above 5000", () => {
        for (const [cls, max] of Object.entries(RDS_MAX_CONNECTIONS)) {
            assert.ok(Number.isInteger(max) && max > 0 && max <= 5000, cls);
        }
        assert.ok(RDS_MAX_CONNECTIONS["db.t4g.micro"] < 2 ** 30 / 9531392);
        assert.ok(RDS_MAX_CONNECTIONS["db.r6g.large"] < 16 * 2 ** 30 / 9531392);
    });

    it("checks external databases each on its own against dbMaxConnections", () => {
        // orders: 6 × 7 + 10 = 52 ≤ 52 (70 × 0.75); invoices: 4 × 2 + 10 = 18.
        assert.equal(settingsWith({ ...EXTERNAL, dbMaxConnections: "70" })().dbMaxConnections, 70);
        assert.throws(settingsWith({ ...EXTERNAL, dbMaxConnections: "60" }), /budget exceeded on the orders database: 52 sessions/);
        assert.throws(
            settingsWith({ ...EXTERNAL, dbMaxConnections: "70", workerMaxCount: "25" }),
            /budget exceeded on the invoices database: 60 sessions/,
        );
    });

    it("warns that it cannot check external databases without dbMaxConnections", () => {
        const warn = mock.method(pulumi.log, "warn", () => Promise.resolve());
        try {
            const s = settingsWith({ ...EXTERNAL, apiMaxCount: "50" })();
            assert.equal(s.dbMaxConnections, undefined);
            assert.equal(warn.mock.callCount(), 1);
            assert.match(String(warn.mock.calls[0].arguments[0]), /connection budget cannot be checked.*dbMaxConnections/s);
        } finally {
            warn.mock.restore();
        }
    });
});
