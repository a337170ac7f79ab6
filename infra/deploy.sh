#!/usr/bin/env bash
# Deploys the images tagged <image-tag> with the migrations first, so that new
# images never meet an old schema:
#
#   1. imageTag := <image-tag>;
#   2. `pulumi up` of the one-off task definitions only (migrate-orders,
#      migrate-invoices, provision-broker), so that they run the new images;
#   3. both migrate tasks (`migrationCommands`), in parallel; wait until they
#      stop; every container must have exited 0, or the deploy stops here and
#      names the log group to read;
#   4. the full `pulumi up` (services, everything else).
#
# provision-broker is only updated, not run: run `provisionBrokerCommand` when
# the broker namespace or the passwords change (see README.md).
#
# Usage: infra/deploy.sh <image-tag>
# Environment: PULUMI_STACK (default: the selected stack); the pulumi and aws
# CLIs logged in, jq.
set -euo pipefail

usage() { echo "usage: $0 <image-tag>" >&2; exit 2; }
[ $# -eq 1 ] && [ -n "$1" ] || usage
tag=$1

cd "$(dirname "$0")"

stack=${PULUMI_STACK:-$(pulumi stack --show-name)}
project=$(sed -n 's/^name:[[:space:]]*//p' Pulumi.yaml | head -n 1)
stack_arg=(--stack "$stack")
log_group="/ecs/$(printf '%s-%s' "$project" "$stack" | tr '[:upper:]' '[:lower:]')/migrate"

say() { printf '==> %s\n' "$*" >&2; }
urn() { printf 'urn:pulumi:%s::%s::aws:ecs/taskDefinition:TaskDefinition::%s' "$stack" "$project" "$1"; }

say "stack $stack: image tag $tag"
pulumi config set "${stack_arg[@]}" imageTag "$tag"

say "updating the one-off task definitions to the new images"
pulumi up --yes "${stack_arg[@]}" \
    --target "$(urn migrate-orders)" \
    --target "$(urn migrate-invoices)" \
    --target "$(urn provision-broker)"

cluster=$(pulumi stack output "${stack_arg[@]}" clusterName)
commands=$(pulumi stack output "${stack_arg[@]}" migrationCommands --json)

tasks=()
for database in orders invoices; do
    command=$(jq -er --arg db "$database" '.[$db]' <<<"$commands")
    say "migrating the $database database"
    # The command line is the stack's own output (aws ecs run-task … --output text).
    task=$(eval "$command")
    if [ -z "$task" ] || [ "$task" = None ]; then
        echo "deploy stopped: the $database migrate task did not start (aws ecs run-task returned no task)" >&2
        exit 1
    fi
    tasks+=("$task")
done

say "waiting for the migrate tasks to stop: ${tasks[*]}"
if ! aws ecs wait tasks-stopped --cluster "$cluster" --tasks "${tasks[@]}"; then
    echo "deploy stopped: the migrate tasks did not stop in time (aws ecs wait gave up);" >&2
    echo "  they may still be running: aws ecs describe-tasks --cluster $cluster --tasks ${tasks[*]}" >&2
    exit 1
fi

# One line per container: task ARN, container name, exit code ("None" when it never ran).
results=$(aws ecs describe-tasks --cluster "$cluster" --tasks "${tasks[@]}" \
    --query 'tasks[].containers[].[taskArn,name,exitCode]' --output text)
failed=0
while read -r arn name code; do
    [ -n "${arn:-}" ] || continue
    if [ "$code" != 0 ]; then
        echo "deploy stopped: migration container $name of task $arn exited with ${code}" >&2
        failed=1
    else
        say "$name exited 0"
    fi
done <<<"$results"
reported=$(awk 'NF { print $1 }' <<<"$results" | sort -u | wc -l)
if [ "$reported" -ne "${#tasks[@]}" ]; then
    echo "deploy stopped: aws ecs describe-tasks reported $reported of the ${#tasks[@]} migrate tasks" >&2
    failed=1
fi
if [ "$failed" != 0 ]; then
    echo "deploy stopped before updating the services: read the CloudWatch log group $log_group" >&2
    echo "  (aws logs tail $log_group --since 1h); fix, then run this script again" >&2
    exit 1
fi

say "migrations done: deploying the services"
pulumi up --yes "${stack_arg[@]}"
