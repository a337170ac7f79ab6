/**
 * deploy.sh without AWS: stub `pulumi` and `aws` executables first on PATH
 * record every call (one line each, in order) and answer like the real ones.
 * The migrations run and are waited for before the full `pulumi up`; a
 * migration that exits non-zero stops the deploy before it.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";

const SCRIPT = join(__dirname, "..", "deploy.sh");
const STACK = "production";
const CLUSTER = "orders-pipeline-production";
const TASK_DEFINITION = (name: string) => `arn:aws:ecs:eu-west-1:123456789012:task-definition/orders-pipeline-production-${name}:7`;
const COMMANDS = {
    orders: `aws ecs run-task --cluster ${CLUSTER} --launch-type FARGATE --task-definition ${TASK_DEFINITION("migrate-orders")} --network-configuration 'awsvpcConfiguration={subnets=[subnet-1,subnet-2],securityGroups=[sg-1],assignPublicIp=DISABLED}' --started-by pulumi-migrate --query 'tasks[0].taskArn' --output text`,
    invoices: `aws ecs run-task --cluster ${CLUSTER} --launch-type FARGATE --task-definition ${TASK_DEFINITION("migrate-invoices")} --network-configuration 'awsvpcConfiguration={subnets=[subnet-1,subnet-2],securityGroups=[sg-1],assignPublicIp=DISABLED}' --started-by pulumi-migrate --query 'tasks[0].taskArn' --output text`,
};
const TASK = (db: string) => `arn:aws:ecs:eu-west-1:123456789012:task/${CLUSTER}/${db}0123456789`;

const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/**
 * Runs deploy.sh with the stubs; `exitCodes` are the migrate containers'
 * (what describe-tasks reports). Returns the exit status, stderr and the calls.
 */
function deploy(args: string[], exitCodes: { orders: string; invoices: string } = { orders: "0", invoices: "0" }) {
    const dir = mkdtempSync(join(tmpdir(), "deploy-test-"));
    dirs.push(dir);
    const calls = join(dir, "calls");
    writeFileSync(calls, "");
    writeFileSync(join(dir, "commands.json"), JSON.stringify(COMMANDS));
    const stub = (name: string, body: string) => {
        writeFileSync(join(dir, name), `#!/usr/bin/env bash\nprintf '%s\\n' "${name} $*" >> "$CALLS"\n${body}\n`);
        chmodSync(join(dir, name), 0o755);
    };
    stub(
        "pulumi",
        `case "$*" in
  "stack --show-name") echo ${STACK} ;;
  *"stack output"*clusterName*) echo ${CLUSTER} ;;
  *"stack output"*migrationCommands*) cat "$STUBS/commands.json" ;;
esac`,
    );
    stub(
        "aws",
        `case "$*" in
  *"run-task"*migrate-orders*) echo ${TASK("orders")} ;;
  *"run-task"*migrate-invoices*) echo ${TASK("invoices")} ;;
  *"describe-tasks"*) printf '%s\\t%s\\t%s\\n' ${TASK("orders")} orders-migrate "$ORDERS_EXIT" ${TASK("invoices")} invoices-migrate "$INVOICES_EXIT" ;;
esac`,
    );
    const result = spawnSync("bash", [SCRIPT, ...args], {
        encoding: "utf8",
        env: {
            ...process.env,
            PATH: `${dir}:${process.env.PATH}`,
            CALLS: calls,
            STUBS: dir,
            ORDERS_EXIT: exitCodes.orders,
            INVOICES_EXIT: exitCodes.invoices,
            PULUMI_STACK: "",
        },
    });
    const lines = readFileSync(calls, "utf8").split("\n").filter(Boolean);
    return { status: result.status, stderr: result.stderr, calls: lines };
}

const index = (calls: string[], pattern: RegExp) => calls.findIndex((c) => pattern.test(c));
const FULL_UP = /^pulumi up --yes --stack production$/;

describe("deploy.sh", () => {
    it("sets the image tag, updates the one-off task definitions, migrates and waits, then runs the full pulumi up", () => {
        const { status, stderr, calls } = deploy(["v1.4.0"]);
        assert.equal(status, 0, stderr);
        const setTag = index(calls, /^pulumi config set --stack production imageTag v1\.4\.0$/);
        const targeted = index(calls, /^pulumi up --yes --stack production --target /);
        const runOrders = index(calls, /^aws ecs run-task .*migrate-orders/);
        const runInvoices = index(calls, /^aws ecs run-task .*migrate-invoices/);
        const wait = index(calls, /^aws ecs wait tasks-stopped /);
        const describeTasks = index(calls, /^aws ecs describe-tasks /);
        const fullUp = index(calls, FULL_UP);
        for (const [what, i] of Object.entries({ setTag, targeted, runOrders, runInvoices, wait, describeTasks, fullUp })) {
            assert.ok(i >= 0, `no ${what} call in:\n${calls.join("\n")}`);
        }
        assert.ok(setTag < targeted && targeted < runOrders && targeted < runInvoices, calls.join("\n"));
        assert.ok(Math.max(runOrders, runInvoices) < wait && wait < describeTasks && describeTasks < fullUp, calls.join("\n"));
        assert.equal(calls.filter((c) => /^pulumi up /.test(c)).length, 2, "one targeted and one full pulumi up");

        // Only the three one-off task definitions are targeted.
        const targets = [...calls[targeted].matchAll(/--target (\S+)/g)].map((m) => m[1]);
        assert.deepEqual(
            targets,
            ["migrate-orders", "migrate-invoices", "provision-broker"].map(
                (n) => `urn:pulumi:production::orders-pipeline::aws:ecs/taskDefinition:TaskDefinition::${n}`,
            ),
        );
        // It waits for, and checks, both tasks it started.
        for (const i of [wait, describeTasks]) {
            assert.ok(calls[i].includes(`--cluster ${CLUSTER}`), calls[i]);
            assert.ok(calls[i].includes(`--tasks ${TASK("orders")} ${TASK("invoices")}`), calls[i]);
        }
        // The run-task command lines are the stack output's, as they are.
        assert.ok(calls[runOrders].includes("--started-by pulumi-migrate --query tasks[0].taskArn --output text"), calls[runOrders]);
    });

    for (const failing of ["orders", "invoices"] as const) {
        it(`stops before the full pulumi up when the ${failing} migration exits non-zero, naming the log group`, () => {
            const codes = { orders: "0", invoices: "0", [failing]: "1" };
            const { status, stderr, calls } = deploy(["v1.4.0"], codes);
            assert.notEqual(status, 0);
            assert.equal(index(calls, FULL_UP), -1, `the services were deployed:\n${calls.join("\n")}`);
            assert.ok(index(calls, /^aws ecs wait tasks-stopped /) >= 0);
            assert.match(stderr, new RegExp(`${failing}-migrate of task \\S+ exited with 1`));
            assert.match(stderr, /log group \/ecs\/orders-pipeline-production\/migrate/);
        });
    }

    it("stops when a migration container never ran (no exit code)", () => {
        const { status, calls } = deploy(["v1.4.0"], { orders: "None", invoices: "0" });
        assert.notEqual(status, 0);
        assert.equal(index(calls, FULL_UP), -1);
    });

    it("wants exactly one image tag", () => {
        for (const args of [[], ["a", "b"], [""]]) {
            const { status, stderr, calls } = deploy(args);
            assert.equal(status, 2, `args ${JSON.stringify(args)}`);
            assert.match(stderr, /usage: .*deploy\.sh <image-tag>/);
            assert.deepEqual(calls, []);
        }
    });
});
