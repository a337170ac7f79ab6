/**
 * infra/deploy.sh, the one deploy procedure, without AWS: it runs from a copy
 * of infra/ (the script itself, Pulumi.yaml, a stack file the test writes),
 * with stub `pulumi`, `aws`, `docker` and `git` executables first on PATH that
 * record every call (one line each, in order) and answer like the real ones.
 *
 * The dry run prints the procedure in the only order that works (preview,
 * repositories, images, everything but the services, the one-off tasks,
 * services, the rollback check), and a real run issues exactly the commands
 * its dry run prints, so neither can drift back into a broken order.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";

import { DEPLOYED_TAG_PREFIX } from "../src/services";

const INFRA = join(__dirname, "..");
const STACK = "production";
const REGION = "eu-west-1";
const ACCOUNT = "123456789012";
const PREFIX = `orders-pipeline-${STACK}`;
const CLUSTER = PREFIX;
const TAG = "3f9c2a1e0b7d4c6a8e5f1b2c3d4e5f6a7b8c9d0e";
const HEAD = "0123456789abcdef0123456789abcdef01234567";
const ONE_OFF = ["migrate-orders", "migrate-invoices", "provision-broker"] as const;
const taskDefinition = (family: string, revision = 7) =>
    `arn:aws:ecs:${REGION}:${ACCOUNT}:task-definition/${PREFIX}-${family}:${revision}`;
const taskArn = (name: string) => `arn:aws:ecs:${REGION}:${ACCOUNT}:task/${CLUSTER}/${name.replace(/-/g, "")}0123`;
const NETWORK = "awsvpcConfiguration={subnets=[subnet-1,subnet-2],securityGroups=[sg-1],assignPublicIp=DISABLED}";
const ONE_OFF_TASKS = {
    cluster: CLUSTER,
    tasks: Object.fromEntries(ONE_OFF.map((n) => [n, { taskDefinition: taskDefinition(n), networkConfiguration: NETWORK }])),
};
const ECS_SERVICES = {
    orders: { name: "orders", taskDefinition: taskDefinition("orders", 12) },
    "invoices-worker": { name: "invoices-worker", taskDefinition: taskDefinition("invoices-worker", 9) },
};
const STACK_FILE = `config:\n  aws:region: ${REGION}\n  orders-pipeline:certificateArn: arn:aws:acm:${REGION}:${ACCOUNT}:certificate/x\n`;

const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

interface Options {
    /** The stack file's text; null: no stack file. */
    stackFile?: string | null;
    /** Exit codes (and reasons) of the one-off containers, as describe-tasks reports them. */
    exits?: Partial<Record<(typeof ONE_OFF)[number], string>>;
    /** Whether ECR holds the images of the tag already. */
    pushed?: boolean;
    /** A repository describe-repositories does not find. */
    missingRepository?: string;
    /** The task definition ECS reports the orders service on (a rollback: the previous one). */
    ordersRunning?: string;
    gitStatus?: string;
    pulumiVersion?: string;
    /** The preview fails (a program error). */
    failPreview?: boolean;
    /** How many times `aws ecs wait tasks-stopped` gives up before the tasks stop; DEPLOY_TASK_TIMEOUT. */
    waitGiveUps?: number;
    taskTimeout?: string;
}

/** Runs deploy.sh with the stubs. Returns the exit status, stdout, stderr and the recorded calls. */
function deploy(args: string[], o: Options = {}) {
    const dir = mkdtempSync(join(tmpdir(), "deploy-test-"));
    dirs.push(dir);
    const infra = join(dir, "repo", "infra");
    const bin = join(dir, "bin");
    mkdirSync(infra, { recursive: true });
    mkdirSync(bin);
    copyFileSync(join(INFRA, "deploy.sh"), join(infra, "deploy.sh"));
    copyFileSync(join(INFRA, "Pulumi.yaml"), join(infra, "Pulumi.yaml"));
    mkdirSync(join(infra, "node_modules", "@pulumi", "pulumi"), { recursive: true });
    const stackFile = o.stackFile === undefined ? STACK_FILE : o.stackFile;
    if (stackFile !== null) {
        writeFileSync(join(infra, `Pulumi.${STACK}.yaml`), stackFile);
    }
    writeFileSync(join(bin, "one-off.json"), JSON.stringify(ONE_OFF_TASKS));
    writeFileSync(join(bin, "services.json"), JSON.stringify(ECS_SERVICES));
    const exits = { "migrate-orders": "0", "migrate-invoices": "0", "provision-broker": "0", ...o.exits };
    writeFileSync(
        join(bin, "tasks.txt"),
        // Tab-separated like --output text: the reason is one field, spaces and all ("None" when there is none).
        ONE_OFF.map((n) => {
            const [code, ...reason] = exits[n].split(" ");
            return [taskArn(n), n, code, reason.join(" ") || "None"].join("\t");
        }).join("\n") + "\n",
    );
    writeFileSync(
        join(bin, "services.txt"),
        `orders\t${o.ordersRunning ?? ECS_SERVICES.orders.taskDefinition}\tCOMPLETED\ninvoices-worker\t${ECS_SERVICES["invoices-worker"].taskDefinition}\tCOMPLETED\n`,
    );
    const calls = join(dir, "calls");
    writeFileSync(calls, "");
    const stub = (name: string, body: string) => {
        writeFileSync(join(bin, name), `#!/usr/bin/env bash\nprintf '%s\\n' "${name} $*" >> "$CALLS"\n${body}\n`);
        chmodSync(join(bin, name), 0o755);
    };
    stub(
        "pulumi",
        `case "$*" in
  version) echo "\${PULUMI_VERSION:-v3.210.0}" ;;
  preview*) if [ "$FAIL_PREVIEW" = 1 ]; then echo "error: config imageTag is not set" >&2; exit 255; fi ;;
  *"stack output"*oneOffTasks*) cat "$STUBS/one-off.json" ;;
  *"stack output"*ecsServices*) cat "$STUBS/services.json" ;;
esac`,
    );
    stub(
        "aws",
        `args="$*"
arg() { local found=; for a in "$@"; do [ -n "$found" ] && { echo "$a"; return; }; [ "$a" = "$want" ] && found=1; done; }
case "$args" in
  "ecr describe-repositories"*)
    want=--repository-names; repo=$(arg "$@")
    if [ "$repo" = "$MISSING_REPOSITORY" ]; then echo "An error occurred (RepositoryNotFoundException): $repo" >&2; exit 254; fi
    echo "${ACCOUNT}.dkr.ecr.${REGION}.amazonaws.com/$repo" ;;
  "ecr describe-images"*)
    [ "$PUSHED" = 1 ] && { echo '{"imageDetails":[{}]}'; exit 0; }
    echo "An error occurred (ImageNotFoundException) when calling the DescribeImages operation" >&2; exit 254 ;;
  "ecr get-login-password"*) echo token ;;
  "ecs run-task"*)
    want=--task-definition; td=$(arg "$@"); name=\${td##*/${PREFIX}-}; name=\${name%%:*}
    echo "arn:aws:ecs:${REGION}:${ACCOUNT}:task/${CLUSTER}/\${name//-/}0123" ;;
  "ecs describe-tasks"*) cat "$STUBS/tasks.txt" ;;
  "ecs wait tasks-stopped"*)
    # The waiter gives up (exit 255) WAIT_GIVE_UPS times before the tasks stop.
    n=$(cat "$STUBS/waits" 2>/dev/null || echo 0); echo $((n + 1)) > "$STUBS/waits"
    if [ "$n" -lt "\${WAIT_GIVE_UPS:-0}" ]; then echo "Waiter TasksStopped failed: Max attempts exceeded" >&2; exit 255; fi ;;
  "ecr batch-get-image"*) echo '["application/vnd.docker.distribution.manifest.v2+json", "{\\"schemaVersion\\":2}"]' ;;
  "ecr put-image"*) want=--image-tag; arg "$@" ;;
  "ecs describe-services"*events*) printf '2026-12-03T10:00:00\\t(service orders) deployment failed: tasks failed to start.\\n' ;;
  "ecs describe-services"*) cat "$STUBS/services.txt" ;;
esac`,
    );
    stub("docker", `[ "$1" = login ] && cat >/dev/null; exit 0`);
    stub(
        "git",
        `case "$*" in
  *"rev-parse HEAD") echo ${HEAD} ;;
  *"status --porcelain") printf '%s' "$GIT_STATUS" ;;
esac`,
    );
    const result = spawnSync("bash", [join(infra, "deploy.sh"), ...args], {
        encoding: "utf8",
        env: {
            ...process.env,
            PATH: `${bin}:${process.env.PATH}`,
            CALLS: calls,
            STUBS: bin,
            PUSHED: o.pushed ? "1" : "0",
            MISSING_REPOSITORY: o.missingRepository ?? "",
            GIT_STATUS: o.gitStatus ?? "",
            PULUMI_VERSION: o.pulumiVersion ?? "",
            FAIL_PREVIEW: o.failPreview ? "1" : "0",
            WAIT_GIVE_UPS: String(o.waitGiveUps ?? 0),
            DEPLOY_TASK_TIMEOUT: o.taskTimeout ?? "",
            PULUMI_STACK: "",
            DOCKER_BUILD_FLAGS: "",
        },
    });
    const recorded = readFileSync(calls, "utf8").split("\n").filter(Boolean);
    return { status: result.status, stdout: result.stdout, stderr: result.stderr, calls: recorded.filter((c) => !c.startsWith("git ")) };
}

const ARGS = ["--stack", STACK, "--tag", TAG];
const index = (calls: string[], pattern: RegExp) => calls.findIndex((c) => pattern.test(c));
const commands = (stdout: string) => stdout.split("\n").filter((l) => l && !l.startsWith("#"));

/** The procedure's steps, each a pattern its command matches, in the only order that works. */
const PROCEDURE: [string, RegExp][] = [
    ["imageTag into a copy of the stack file", new RegExp(`^pulumi config set --stack ${STACK} --config-file \\S+/Pulumi\\.${STACK}\\.yaml imageTag ${TAG}$`)],
    ["preview (the gate)", /^pulumi preview --stack production --config-file \S+ --diff$/],
    ["the repositories", /^pulumi up --yes --skip-preview --stack production --config-file \S+ (--target \S+ ?){6}$/],
    ["orders-api image", /^docker buildx build --platform linux\/amd64 --provenance=false --target orders-api --tag \S+\/orders-pipeline-production\/orders-api:3f9c2a1\S* --push \.\.$/],
    ["outbox-relay image", /^docker buildx build .* --target outbox-relay /],
    ["invoices-worker image", /^docker buildx build .* --target invoices-worker /],
    ["all but the services", /^pulumi up --yes --skip-preview --stack production --config-file \S+ --exclude \S+::orders --exclude \S+::invoices-worker --exclude-dependents$/],
    ["the one-off tasks' parameters", /^pulumi stack output --stack production oneOffTasks --json$/],
    ["migrate-orders", /^aws ecs run-task .*--task-definition \S*migrate-orders/],
    ["migrate-invoices", /^aws ecs run-task .*--task-definition \S*migrate-invoices/],
    ["provision-broker", /^aws ecs run-task .*--task-definition \S*provision-broker/],
    ["wait for them", /^aws ecs wait tasks-stopped /],
    ["their exit codes", /^aws ecs describe-tasks /],
    ["the services", /^pulumi up --yes --skip-preview --refresh --stack production --config-file \S+$/],
    ["the services' expected task definitions", /^pulumi stack output --stack production ecsServices --json$/],
    ["wait until stable", /^aws ecs wait services-stable /],
    ["rollback check", /^aws ecs describe-services .*rolloutState/],
    ["orders-api kept", /^aws ecr put-image --region eu-west-1 --repository-name orders-pipeline-production\/orders-api --image-tag deployed-\d{8}T\d{6}Z /],
    ["outbox-relay kept", /^aws ecr put-image .*--repository-name orders-pipeline-production\/outbox-relay --image-tag deployed-/],
    ["invoices-worker kept", /^aws ecr put-image .*--repository-name orders-pipeline-production\/invoices-worker --image-tag deployed-/],
];

/** The procedure's steps in order; without the image builds when `built` is false (--no-build). */
function assertProcedure(lines: string[], built = true) {
    let at = -1;
    for (const [step, pattern] of PROCEDURE.filter(([, p]) => built || !p.source.startsWith("^docker"))) {
        const i = lines.findIndex((l, n) => n > at && pattern.test(l));
        assert.ok(i > at, `step "${step}" missing or out of order in:\n${lines.join("\n")}`);
        at = i;
    }
}

describe("deploy.sh --dry-run", () => {
    it("prints the procedure in the only order that works, and runs nothing", () => {
        const { status, stdout, stderr, calls } = deploy([...ARGS, "--dry-run"]);
        assert.equal(status, 0, stderr);
        assert.deepEqual(calls, [], "a dry run ran commands");
        const lines = commands(stdout);
        assertProcedure(lines);
        // One region, the stack's, for every AWS command; one stack for every Pulumi command.
        for (const line of lines) {
            if (line.startsWith("aws ")) {
                assert.match(line, new RegExp(`--region ${REGION}( |$)`), line);
            }
            if (line.startsWith("pulumi ")) {
                assert.match(line, /--stack production( |$)/, line);
            }
            if (/^pulumi (up|preview|config)/.test(line)) {
                assert.match(line, /--config-file /, line);
            }
        }
        // The repositories targeted, and only they; the two services excluded, and what depends on them.
        const targets = [...lines.find((l) => l.includes("--target"))!.matchAll(/--target (\S+)/g)].map((m) => m[1]);
        assert.deepEqual(
            targets,
            ["orders-api", "outbox-relay", "invoices-worker"].flatMap((b) => [
                `urn:pulumi:production::orders-pipeline::aws:ecr/repository:Repository::${b}`,
                `urn:pulumi:production::orders-pipeline::aws:ecr/lifecyclePolicy:LifecyclePolicy::${b}`,
            ]),
        );
        const excluded = [...lines.find((l) => l.includes("--exclude "))!.matchAll(/--exclude (\S+)/g)].map((m) => m[1]);
        assert.deepEqual(excluded, ["orders", "invoices-worker"].map((s) => `urn:pulumi:production::orders-pipeline::aws:ecs/service:Service::${s}`));
        // Each step is named.
        for (let step = 0; step <= 8; step++) {
            assert.match(stdout, new RegExp(`^# ${step}\\. `, "m"), `step ${step} is not named`);
        }
    });

    it("promotes pushed images with --no-build: no docker build, the images only checked", () => {
        const { status, stdout, stderr } = deploy([...ARGS, "--no-build", "--dry-run"]);
        assert.equal(status, 0, stderr);
        const lines = commands(stdout);
        assert.equal(lines.filter((l) => l.startsWith("docker ")).length, 0, stdout);
        assert.equal(lines.filter((l) => /^aws ecr describe-images .*--image-ids imageTag=3f9c2a1/.test(l)).length, 3, stdout);
        assertProcedure(lines, false);
    });

    it("push: the images only, no Pulumi (CI's images job)", () => {
        const { status, stdout, stderr } = deploy([...ARGS, "--dry-run", "push"]);
        assert.equal(status, 0, stderr);
        const lines = commands(stdout);
        assert.deepEqual(lines.filter((l) => l.startsWith("pulumi ")), []);
        assert.equal(lines.filter((l) => l.startsWith("docker buildx build ")).length, 3);
    });

    it("preview: the configuration and the preview, nothing else", () => {
        const { status, stdout, stderr } = deploy([...ARGS, "--dry-run", "preview"]);
        assert.equal(status, 0, stderr);
        assert.deepEqual(
            commands(stdout).map((l) => l.split(" ").slice(0, 2).join(" ")),
            ["pulumi config", "pulumi preview"],
        );
    });
});

describe("deploy.sh", () => {
    /** A dry-run line and a recorded call are the same command: placeholders stand for any value, the copy's path may differ. */
    const same = (dry: string, real: string) => {
        // The deployed-<time> tag is the time of each run.
        const time = (line: string) => line.replace(/deployed-\d{8}T\d{6}Z/g, "deployed-<time>");
        const dryWords = time(dry).split(" ");
        const realWords = time(real).split(" ");
        return (
            dryWords.length === realWords.length &&
            dryWords.every((w, i) => w === realWords[i] || w.includes("<") || (dryWords[i - 1] === "--config-file" && realWords[i - 1] === "--config-file"))
        );
    };

    it("runs exactly the commands its dry run prints, in the same order", () => {
        const dry = deploy([...ARGS, "--dry-run"]);
        const real = deploy(ARGS);
        assert.equal(real.status, 0, real.stderr);
        // The checks' own query (pulumi version) changes nothing and is not printed.
        real.calls = real.calls.filter((c) => c !== "pulumi version");
        // Both sides of the login pipeline start at once: either may log first.
        const login = real.calls.findIndex((c) => c.startsWith("docker login "));
        if (login >= 0 && real.calls[login + 1]?.startsWith("aws ecr get-login-password ")) {
            [real.calls[login], real.calls[login + 1]] = [real.calls[login + 1], real.calls[login]];
        }
        // The login pipeline is one printed line, two calls.
        const printed = commands(dry.stdout).flatMap((l) => l.split(" | "));
        // The dry run prints quoted words ('…'); the stubs record them unquoted.
        const unquoted = printed.map((l) => l.replace(/'([^']*)'/g, "$1"));
        assert.equal(unquoted.length, real.calls.length, `printed:\n${unquoted.join("\n")}\n\nran:\n${real.calls.join("\n")}`);
        unquoted.forEach((line, i) => assert.ok(same(line, real.calls[i]), `printed: ${line}\nran:     ${real.calls[i]}`));
        assertProcedure(real.calls);
        // It runs the tasks the stack names, waits for the three it started, and checks all three.
        for (const name of ONE_OFF) {
            assert.ok(real.calls.some((c) => c.includes(`--task-definition ${taskDefinition(name)} --network-configuration ${NETWORK}`)), name);
        }
        const tasks = ONE_OFF.map(taskArn).join(" ");
        assert.ok(real.calls.some((c) => c.startsWith(`aws ecs wait tasks-stopped --region ${REGION} --cluster ${CLUSTER} --tasks ${tasks}`)));
        assert.ok(real.calls.some((c) => c.startsWith(`aws ecs describe-tasks --region ${REGION} --cluster ${CLUSTER} --tasks ${tasks}`)));
        assert.ok(real.calls.some((c) => c.startsWith(`aws ecs wait services-stable --region ${REGION} --cluster ${CLUSTER} --services orders invoices-worker`)));
        assert.match(real.stderr, /deployed 3f9c2a1\S* to production/);
    });

    it("stops at the preview gate when the preview fails: nothing is created, built or run", () => {
        const { status, stderr, calls } = deploy(ARGS, { failPreview: true });
        assert.notEqual(status, 0);
        assert.match(stderr, /deploy stopped at step 1: pulumi preview failed/);
        assert.deepEqual(
            calls.map((c) => c.split(" ").slice(0, 3).join(" ")),
            ["pulumi version", "pulumi config set", "pulumi preview --stack"],
        );
    });

    for (const failing of ONE_OFF) {
        it(`stops before the services when ${failing} exits non-zero, naming the container, the code and the logs`, () => {
            const { status, stderr, calls } = deploy(ARGS, { exits: { [failing]: "1" } });
            assert.equal(status, 1);
            assert.equal(index(calls, /^pulumi up .*--refresh/), -1, `the services were updated:\n${calls.join("\n")}`);
            assert.ok(index(calls, /^aws ecs wait tasks-stopped /) >= 0);
            assert.match(stderr, new RegExp(`container ${failing} of task \\S+ exited with 1`));
            assert.match(stderr, /aws logs tail \/ecs\/orders-pipeline-production\/migrate --region eu-west-1/);
            assert.match(stderr, /the services were not updated/);
        });
    }

    it("stops when a one-off container never ran, with ECS's reason", () => {
        const { status, stderr, calls } = deploy(ARGS, { exits: { "migrate-orders": "None CannotPullContainerError: pull image manifest has been retried" } });
        assert.equal(status, 1);
        assert.equal(index(calls, /^pulumi up .*--refresh/), -1);
        assert.match(stderr, /migrate-orders of task \S+ exited with None \(CannotPullContainerError: pull image manifest/);
    });

    it("fails loudly when the circuit breaker rolled a service back, with ECS's events", () => {
        const previous = taskDefinition("orders", 11);
        const { status, stderr, calls } = deploy(ARGS, { ordersRunning: previous });
        assert.equal(status, 1);
        assert.ok(index(calls, /^pulumi up .*--refresh/) >= 0);
        assert.match(stderr, new RegExp(`service orders was ROLLED BACK .*runs ${previous}`));
        assert.match(stderr, /deployment failed: tasks failed to start/);
        assert.match(stderr, /the new release is not running/);
        assert.doesNotMatch(stderr, /deployed /);
    });

    it("with --no-build, deploys images already pushed and builds none", () => {
        const { status, stderr, calls } = deploy([...ARGS, "--no-build"], { pushed: true });
        assert.equal(status, 0, stderr);
        assert.deepEqual(calls.filter((c) => c.startsWith("docker ")), []);
        assertProcedure(calls, false);
    });

    it("with --no-build, stops before changing anything past the repositories when an image is not in ECR", () => {
        const { status, stderr, calls } = deploy([...ARGS, "--no-build"]);
        assert.equal(status, 1);
        assert.match(stderr, new RegExp(`orders-pipeline-production/orders-api:${TAG} is not in ECR.*CI's images job`, "s"));
        assert.equal(index(calls, /--exclude-dependents/), -1);
        assert.equal(index(calls, /^aws ecs run-task/), -1);
    });

    it("does not rebuild an image ECR holds already (tags are immutable)", () => {
        const { status, stderr, calls } = deploy(ARGS, { pushed: true });
        assert.equal(status, 0, stderr);
        assert.deepEqual(calls.filter((c) => c.startsWith("docker ")), []);
    });

    it("push fails clearly when the stack has no repositories yet", () => {
        const { status, stderr, calls } = deploy([...ARGS, "push"], { missingRepository: "orders-pipeline-production/orders-api" });
        assert.equal(status, 1);
        assert.match(stderr, /no ECR repository orders-pipeline-production\/orders-api in eu-west-1: the stack's first deploy creates it/);
        assert.deepEqual(calls.filter((c) => c.startsWith("pulumi ") || c.startsWith("docker ")), []);
    });

    it("tags the images with the commit checked out, and refuses to build from a tree with uncommitted changes", () => {
        const clean = deploy(["--stack", STACK, "--dry-run"]);
        assert.equal(clean.status, 0, clean.stderr);
        assert.match(clean.stdout, new RegExp(`--tag \\S+/orders-api:${HEAD} --push`));
        const dirty = deploy(["--stack", STACK], { gitStatus: " M orders-api/src/main.rs\n" });
        assert.equal(dirty.status, 1);
        assert.match(dirty.stderr, /uncommitted changes: the images are tagged by commit/);
        assert.deepEqual(dirty.calls, []);
    });

    it("refuses a missing stack file, one without aws:region and one with imageTag, before any command", () => {
        const cases: [string | null, RegExp][] = [
            [null, /infra\/Pulumi\.production\.yaml is missing.*Pulumi\.example\.yaml.*commit it/s],
            ["config:\n  orders-pipeline:allowPlainHttp: \"true\"\n", /sets no aws:region/],
            [`${STACK_FILE}  orders-pipeline:imageTag: latest\n`, /sets imageTag: remove it.*roll the services back/s],
        ];
        for (const [stackFile, message] of cases) {
            const { status, stderr, calls } = deploy(ARGS, { stackFile });
            assert.equal(status, 1, stderr);
            assert.match(stderr, message);
            assert.deepEqual(calls, []);
        }
    });

    it("wants a Pulumi CLI that has --exclude (3.158), before changing anything", () => {
        const old = deploy(ARGS, { pulumiVersion: "v3.157.1" });
        assert.equal(old.status, 1);
        assert.match(old.stderr, /Pulumi CLI v3\.157\.1 is too old: the deploy needs 3\.158 or newer/);
        assert.deepEqual(old.calls, ["pulumi version"]);
        assert.equal(deploy(ARGS, { pulumiVersion: "v3.158.0" }).status, 0);
    });

    it("waits for long one-off tasks past the waiter's 10 minutes, up to DEPLOY_TASK_TIMEOUT", () => {
        const patient = deploy(ARGS, { waitGiveUps: 2 });
        assert.equal(patient.status, 0, patient.stderr);
        assert.equal(patient.calls.filter((c) => c.startsWith("aws ecs wait tasks-stopped ")).length, 3);
        assert.match(patient.stderr, /the one-off tasks are still running: waiting on/);
        const impatient = deploy(ARGS, { waitGiveUps: 1, taskTimeout: "0" });
        assert.equal(impatient.status, 1);
        assert.match(impatient.stderr, /did not stop within 0 minutes \(DEPLOY_TASK_TIMEOUT\); they may still be running/);
        assert.equal(index(impatient.calls, /^pulumi up .*--refresh/), -1);
    });

    it("tags what it deployed with the prefix the lifecycle policy keeps, with the image's own manifest", () => {
        const { status, stderr, calls } = deploy(ARGS);
        assert.equal(status, 0, stderr);
        const puts = calls.filter((c) => c.startsWith("aws ecr put-image "));
        assert.equal(puts.length, 3);
        for (const put of puts) {
            assert.match(put, new RegExp(`--image-tag ${DEPLOYED_TAG_PREFIX}\\d{8}T\\d{6}Z `));
            assert.match(put, /--image-manifest \{"schemaVersion":2\} --image-manifest-media-type application\/vnd\.docker\.distribution\.manifest\.v2\+json /);
        }
        assert.ok(calls.some((c) => c.startsWith(`aws ecr batch-get-image --region ${REGION} --repository-name ${PREFIX}/orders-api --image-ids imageTag=${TAG} `)));
        // Not before the services run the release.
        assert.ok(index(calls, /^aws ecr put-image /) > index(calls, /^aws ecs describe-services /));
        const rolledBack = deploy(ARGS, { ordersRunning: taskDefinition("orders", 11) });
        assert.equal(index(rolledBack.calls, /^aws ecr put-image /), -1, "a rolled-back release was tagged deployed");
    });

    it("accepts Pulumi.example.yaml as a stack file (the one the bootstrap copies)", () => {
        const example = readFileSync(join(INFRA, "Pulumi.example.yaml"), "utf8");
        const { status, stdout, stderr } = deploy([...ARGS, "--dry-run"], { stackFile: example });
        assert.equal(status, 0, stderr);
        assertProcedure(commands(stdout));
        assert.equal(deploy(["--stack", STACK, "region"], { stackFile: example }).stdout, "eu-west-1\n");
    });

    it("prints the stack's region (what CI logs in to), and wants a stack named", () => {
        const region = deploy(["--stack", STACK, "region"]);
        assert.equal(region.status, 0, region.stderr);
        assert.equal(region.stdout, `${REGION}\n`);
        const quoted = deploy(["--stack", STACK, "region"], { stackFile: `config:\n  aws:region: "us-west-2"\n` });
        assert.equal(quoted.stdout, "us-west-2\n");
        const unnamed = deploy(["region"]);
        assert.equal(unnamed.status, 1);
        assert.match(unnamed.stderr, /name the stack: --stack <name>/);
        const bad = deploy(["--stack", STACK, "--frobnicate"]);
        assert.equal(bad.status, 2);
        assert.match(bad.stderr, /usage: infra\/deploy\.sh/);
    });
});

describe("the one procedure", () => {
    const read = (path: string) => readFileSync(join(INFRA, "..", path), "utf8");

    it("is what the workflow runs: no other build, push or deploy there", () => {
        const ci = read(".github/workflows/ci.yml");
        assert.match(ci, /^\s+run: infra\/deploy\.sh --tag "\$GITHUB_SHA" push$/m);
        assert.match(ci, /^\s+run: infra\/deploy\.sh --tag "\$GITHUB_SHA" --no-build$/m);
        assert.match(ci, /region=\$\(infra\/deploy\.sh region\)/);
        assert.match(ci, /aws-region: \$\{\{ needs\.release-config\.outputs\.region \}\}/);
        for (const other of [/pulumi (up|preview)/, /\bdocker (buildx )?build\b/, /build-push-action/, /aws ecs /, /AWS_REGION/, /aws-region: (?!\$\{\{ needs\.release-config)/]) {
            assert.doesNotMatch(ci, other);
        }
    });

    it("is what the READMEs tell to run: no shell line of theirs deploys any other way", () => {
        for (const path of ["README.md", "infra/README.md", "docs/deployment.md"]) {
            const text = read(path);
            assert.match(text, /infra\/deploy\.sh --stack production/, `${path} does not show the deploy command`);
            const blocks = [...text.matchAll(/```(?:sh|bash)\n([\s\S]*?)```/g)].map((m) => m[1]);
            for (const line of blocks.join("\n").split("\n")) {
                assert.doesNotMatch(
                    line.replace(/#.*$/, ""),
                    // (aws ecs run-task stays: the runbooks run operator commands with it)
                    /\b(pulumi (up|preview|destroy)|docker (buildx )?build|aws ecs update-service)\b/,
                    `${path}: ${line}`,
                );
            }
        }
    });
});
