#!/usr/bin/env bash
# The deploy procedure: the one order in which a deploy works, for a new stack
# as for every later release. README.md, infra/README.md and the workflow all
# run it; --dry-run prints every Pulumi, AWS and Docker command it would run,
# and runs none.
#
#   infra/deploy.sh --stack <name> [--tag <tag>] [--no-build] [--dry-run] [deploy]
#   infra/deploy.sh --stack <name> [--tag <tag>] [--dry-run] push
#   infra/deploy.sh --stack <name> [--tag <tag>] [--dry-run] preview
#   infra/deploy.sh --stack <name> region
#
# deploy (the default):
#   0. checks: the stack file infra/Pulumi.<stack>.yaml exists (commit it) with
#      aws:region and without imageTag; the tools are installed; the working
#      tree is clean when the images are built from it;
#   1. pulumi preview of the whole stack at the new tag: an error (a missing
#      key, the connection budget) stops the deploy before anything changes;
#   2. the ECR repositories, created if missing (a targeted pulumi up);
#   3. the images: built and pushed as <tag>, unless ECR holds that tag
#      already (tags are immutable); --no-build: they must be there (CI
#      promotes the build its images job pushed, it does not rebuild);
#   4. everything but the two services (on a new stack: network, database,
#      broker, cluster, task definitions; later: the new task definitions);
#   5. the migrate-orders, migrate-invoices and provision-broker tasks, in
#      parallel: each must exit 0, or the deploy stops here and the services
#      keep running the previous release;
#   6. the whole stack (pulumi up --refresh): the services move to the new
#      task definitions, and Pulumi waits until ECS reports them stable (a
#      rollback by the deployment circuit breaker fails it);
#   7. each service's deployment must be COMPLETED on its new task definition:
#      a rollback Pulumi reported as a success fails the deploy here, loudly;
#   8. the images deployed get a second tag, deployed-<UTC time>, which the
#      repositories' lifecycle policy keeps (the last 10) whatever CI pushes.
# push: 0 and 3 (CI's images job; the repositories must exist). preview: 0
# and 1. region: prints the stack's aws:region (the one region everything uses).
#
# <tag> defaults to the commit checked out (git rev-parse HEAD). imageTag is
# never written to the stack file: each run passes it in a copy, so a plain
# `pulumi up` stops (no default image tag) instead of rolling the services back
# to a tag left in the file. Needs: pulumi (logged in), aws (credentials for the
# stack's account), docker with buildx (when building), jq, git.
# DOCKER_BUILD_FLAGS: extra flags for docker buildx build (e.g. a cache).
# DEPLOY_TASK_TIMEOUT: minutes step 5 waits for the one-off tasks (default 30).
set -Eeuo pipefail

BINARIES=(orders-api outbox-relay invoices-worker)
# A second tag on what was deployed (infra/src/services.ts: DEPLOYED_TAG_PREFIX).
DEPLOYED_TAG="deployed-$(date -u +%Y%m%dT%H%M%SZ)"
SERVICES=(orders invoices-worker)
# The stack output oneOffTasks' tasks (infra/src/services.ts: OneOffName).
ONE_OFF_TASKS=(migrate-orders migrate-invoices provision-broker)

die() { printf 'deploy stopped: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*" >&2; }
usage() {
    sed -n 's|^#   infra/deploy.sh|usage: infra/deploy.sh|p' "$0" >&2
    exit 2
}
step="0. checks"
# A command that fails outside an if or || (pulumi up, …) names the step it stopped.
running=
stopped() {
    # A query's failure is reported once, by the subshell that ran it.
    # shellcheck disable=SC2016 # a literal $(, not an expansion
    [[ $BASH_SUBSHELL -gt 0 || $BASH_COMMAND != *'$(query '* ]] || return 0
    printf 'deploy stopped at step %s: %s failed (its output is above)\n' "$step" "${running:-${BASH_COMMAND%% *}}" >&2
}
trap stopped ERR

infra=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$infra")

stack=${PULUMI_STACK:-}
tag=
build=true
dry_run=false
action=deploy
while [ $# -gt 0 ]; do
    case $1 in
        --stack) [ $# -ge 2 ] || usage; stack=$2; shift 2 ;;
        --tag) [ $# -ge 2 ] || usage; tag=$2; shift 2 ;;
        --no-build) build=false; shift ;;
        --dry-run) dry_run=true; shift ;;
        deploy | push | preview | region) action=$1; shift ;;
        -h | --help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$stack" ] || die "name the stack: --stack <name> (or PULUMI_STACK)"

# ---- 0. checks -------------------------------------------------------------
stack_file="$infra/Pulumi.$stack.yaml"
[ -f "$stack_file" ] || die "infra/Pulumi.$stack.yaml is missing: the stack's configuration (its region, \
its database and broker settings) lives in that file, and CI deploys from the committed one. Copy \
infra/Pulumi.example.yaml to it, set your values (secrets with pulumi config set --secret), and commit \
it (infra/README.md: one-time bootstrap)"
# A plain scalar (`aws:region: eu-west-1`, optionally quoted or commented).
region=$(sed -nE 's/^[[:space:]]+aws:region:[[:space:]]*"?([a-z0-9-]+)"?[[:space:]]*(#.*)?$/\1/p' "$stack_file" | head -n 1)
[ -n "$region" ] || die "infra/Pulumi.$stack.yaml sets no aws:region: pulumi config set --stack $stack aws:region <region>, \
then commit the file (the program, this script and CI all read the region there)"
if [ "$action" = region ]; then
    printf '%s\n' "$region"
    exit 0
fi
if grep -qE '^[[:space:]]+[^:[:space:]]+:imageTag:' "$stack_file"; then
    die "infra/Pulumi.$stack.yaml sets imageTag: remove it (pulumi config rm --stack $stack imageTag) and \
commit; this script passes the tag for each deploy, and a tag left in the file would let a plain pulumi up \
roll the services back to it"
fi
project=$(sed -nE 's/^name:[[:space:]]*([^[:space:]]+).*/\1/p' "$infra/Pulumi.yaml" | head -n 1)
prefix=$(printf '%s-%s' "$project" "$stack" | tr '[:upper:]' '[:lower:]')

if [ "$action" = push ] && ! $build; then
    die "push builds the images: --no-build has nothing to do"
fi
building=false
if [ "$action" = push ] || { [ "$action" = deploy ] && $build; }; then
    building=true
fi
if [ -z "$tag" ]; then
    tag=$(git -C "$root" rev-parse HEAD) || die "no --tag given and $root is not a git checkout"
fi
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag $tag is not a Docker tag"
say "stack $stack ($project, $region): $action, image tag $tag$($dry_run && printf ' (dry run: nothing is run)')"
if $building && [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]; then
    if $dry_run; then
        say "note: the working tree has uncommitted changes, which a real run refuses to build"
    else
        die "the working tree has uncommitted changes: the images are tagged by commit, so commit (or stash) first"
    fi
fi
if ! $dry_run; then
    needed=(jq)
    case $action in
        deploy) needed+=(pulumi aws) ;;
        push) needed+=(aws) ;;
        preview) needed+=(pulumi) ;;
    esac
    $building && needed+=(docker)
    for tool in "${needed[@]}"; do
        command -v "$tool" >/dev/null || die "$tool is not installed (infra/README.md: prerequisites)"
    done
    if [[ " ${needed[*]} " == *" pulumi "* ]]; then
        [ -d "$infra/node_modules/@pulumi/pulumi" ] || die "the Pulumi program's dependencies are not installed: (cd infra && npm ci)"
        # Step 4's --exclude came with Pulumi 3.158.
        version=$(pulumi version)
        [[ $version =~ ^v?([0-9]+)\.([0-9]+) ]] || die "cannot read the Pulumi CLI's version from: $version"
        if [ "${BASH_REMATCH[1]}" -lt 3 ] || { [ "${BASH_REMATCH[1]}" -eq 3 ] && [ "${BASH_REMATCH[2]}" -lt 158 ]; }; then
            die "Pulumi CLI $version is too old: the deploy needs 3.158 or newer (pulumi up --exclude)"
        fi
    fi
fi

# Pulumi runs in the project's directory; docker builds the repository (..).
cd "$infra"

# ---- running, or printing --------------------------------------------------
# A dry run prints each command on standard output (descriptor 3, so that a
# command whose output is captured still prints) and runs none.
exec 3>&1
show() {
    local out='' word
    for word in "$@"; do
        # The temporary copy of the stack file shows as what it is.
        [ "$word" = "$config" ] && word="<copy>/Pulumi.$stack.yaml"
        # Placeholders (<…>) stay bare, to be read; anything else a shell
        # would split or expand is single-quoted.
        if [[ $word =~ ^[A-Za-z0-9_./:=,@%+\<\>-]+$ ]]; then
            out+=" $word"
        else
            out+=" '${word//\'/\'\\\'\'}'"
        fi
    done
    printf '%s\n' "${out# }" >&3
}
comment() {
    step=${1%%.*}
    if $dry_run; then printf '# %s\n' "$*" >&3; else say "$*"; fi
}
# Runs a command (a dry run prints it); `running` names it for the ERR trap.
run() {
    if $dry_run; then show "$@"; else running="$1 $2" && "$@" && running=; fi
}
# Runs a command for its output; a dry run prints it and answers <placeholder>.
query() {
    local placeholder=$1
    shift
    run "$@" || return
    if $dry_run; then printf '%s\n' "$placeholder"; fi
}

# The stack's configuration plus imageTag, in a copy: the committed file is
# never changed (see the top).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
config="$work/Pulumi.$stack.yaml"
pulumi_args=(--stack "$stack" --config-file "$config")
urn() { printf 'urn:pulumi:%s::%s::%s::%s' "$stack" "$project" "$1" "$2"; }

configure() {
    comment "0. the stack's configuration with imageTag $tag, in a copy (the committed file stays as it is)"
    cp "$stack_file" "$config"
    run pulumi config set "${pulumi_args[@]}" imageTag "$tag"
}

preview() {
    comment "1. preview the whole stack at image tag $tag: an error stops the deploy before any change"
    run pulumi preview "${pulumi_args[@]}" --diff
}

repositories() {
    comment "2. the ECR repositories, created if missing"
    local targets=() binary
    for binary in "${BINARIES[@]}"; do
        targets+=(--target "$(urn aws:ecr/repository:Repository "$binary")")
        targets+=(--target "$(urn aws:ecr/lifecyclePolicy:LifecyclePolicy "$binary")")
    done
    run pulumi up --yes --skip-preview "${pulumi_args[@]}" "${targets[@]}"
}

# Is <repository>:<tag> in ECR? Any answer but "no such image" is an error.
image_pushed() {
    local repository=$1 err
    if $dry_run; then
        show aws ecr describe-images --region "$region" --repository-name "$repository" --image-ids "imageTag=$tag"
        # A dry run shows the build (or, with --no-build, goes on as if pushed).
        if $build; then return 1; fi
        return 0
    fi
    err=$(aws ecr describe-images --region "$region" --repository-name "$repository" --image-ids "imageTag=$tag" 2>&1 >/dev/null) && return 0
    grep -q ImageNotFoundException <<<"$err" && return 1
    die "cannot tell whether $repository:$tag is in ECR: $err"
}

images() {
    comment "3. the images, tagged $tag"
    local binary repository uri registry='' logged_in=false
    for binary in "${BINARIES[@]}"; do
        repository="$prefix/$binary"
        uri=$(query "<account>.dkr.ecr.$region.amazonaws.com/$repository" \
            aws ecr describe-repositories --region "$region" --repository-names "$repository" \
            --query 'repositories[0].repositoryUri' --output text) ||
            die "no ECR repository $repository in $region: the stack's first deploy creates it (infra/deploy.sh --stack $stack)"
        if image_pushed "$repository"; then
            $dry_run || say "$uri:$tag is in ECR already"
            continue
        fi
        $build || die "$uri:$tag is not in ECR, and --no-build deploys only images already pushed: CI's images job \
pushes every commit of main (tag a commit whose main run has pushed its images), or run without --no-build"
        if ! $logged_in; then
            registry=${uri%%/*}
            if $dry_run; then
                printf '%s\n' "aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $registry" >&3
            else
                aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"
            fi
            logged_in=true
        fi
        # shellcheck disable=SC2086 # DOCKER_BUILD_FLAGS is a list of flags
        # One image manifest per tag (no attestation index): what ECR's scan on
        # push scans, and what step 8 can tag again.
        run docker buildx build --platform linux/amd64 --provenance=false --target "$binary" --tag "$uri:$tag" --push ${DOCKER_BUILD_FLAGS:-} ..
    done
}

all_but_services() {
    comment "4. everything but the services (and what depends on them)"
    local excludes=() service
    for service in "${SERVICES[@]}"; do
        excludes+=(--exclude "$(urn aws:ecs/service:Service "$service")")
    done
    run pulumi up --yes --skip-preview "${pulumi_args[@]}" "${excludes[@]}" --exclude-dependents
}

one_off_tasks() {
    comment "5. migrate both databases and provision the broker users, in parallel; each must exit 0"
    local placeholder tasks name arns=() arn results failed=0 code container reason reported
    placeholder=$(jq -cn '{cluster: "<oneOffTasks.cluster>", tasks: ($ARGS.positional
        | map({key: ., value: {taskDefinition: "<oneOffTasks.tasks.\(.).taskDefinition>",
                                 networkConfiguration: "<oneOffTasks.tasks.\(.).networkConfiguration>"}}) | from_entries)}' \
        --args "${ONE_OFF_TASKS[@]}")
    tasks=$(query "$placeholder" pulumi stack output --stack "$stack" oneOffTasks --json)
    cluster=$(jq -er .cluster <<<"$tasks")
    for name in "${ONE_OFF_TASKS[@]}"; do
        arn=$(query "<task:$name>" aws ecs run-task --region "$region" --cluster "$cluster" --launch-type FARGATE \
            --task-definition "$(jq -er --arg n "$name" '.tasks[$n].taskDefinition' <<<"$tasks")" \
            --network-configuration "$(jq -er --arg n "$name" '.tasks[$n].networkConfiguration' <<<"$tasks")" \
            --started-by deploy --query 'tasks[0].taskArn' --output text)
        if [ -z "$arn" ] || [ "$arn" = None ]; then
            die "the $name task did not start (aws ecs run-task returned no task; its failures say why: capacity, \
the task definition, the subnets)"
        fi
        arns+=("$arn")
    done
    # The waiter gives up after 10 minutes; a long migration gets DEPLOY_TASK_TIMEOUT.
    local deadline=$((SECONDS + ${DEPLOY_TASK_TIMEOUT:-30} * 60))
    until run aws ecs wait tasks-stopped --region "$region" --cluster "$cluster" --tasks "${arns[@]}"; do
        [ "$SECONDS" -lt "$deadline" ] || die "the one-off tasks did not stop within ${DEPLOY_TASK_TIMEOUT:-30} minutes \
(DEPLOY_TASK_TIMEOUT); they may still be running: aws ecs describe-tasks --region $region --cluster $cluster --tasks ${arns[*]}"
        say "the one-off tasks are still running: waiting on"
    done
    # One line per container: task ARN, container, exit code ("None" when it
    # never ran), and ECS's reason (e.g. CannotPullContainerError).
    results=$(query "" aws ecs describe-tasks --region "$region" --cluster "$cluster" --tasks "${arns[@]}" \
        --query 'tasks[].containers[].[taskArn,name,exitCode,reason]' --output text)
    $dry_run && return 0
    while read -r arn container code reason; do
        [ -n "${arn:-}" ] || continue
        if [ "$code" != 0 ]; then
            printf 'deploy: container %s of task %s exited with %s%s\n' "$container" "$arn" "$code" \
                "$([ "${reason:-None}" = None ] || printf ' (%s)' "$reason")" >&2
            failed=1
        else
            say "$container exited 0"
        fi
    done <<<"$results"
    reported=$(awk 'NF { print $1 }' <<<"$results" | sort -u | wc -l)
    [ "$reported" -eq "${#arns[@]}" ] || { echo "deploy: aws ecs describe-tasks reported $reported of the ${#arns[@]} tasks" >&2; failed=1; }
    if [ "$failed" != 0 ]; then
        local group="/ecs/$prefix/migrate"
        die "a one-off task failed, so the services were not updated (they run the previous release). \
Their logs: aws logs tail $group --region $region --since 1h; fix the cause, then run this again"
    fi
}

keep_deployed() {
    comment "8. tag the deployed images $DEPLOYED_TAG (the lifecycle policy keeps the last 10 so tagged)"
    local binary repository image media_type manifest
    for binary in "${BINARIES[@]}"; do
        repository="$prefix/$binary"
        image=$(query '["<mediaType>", "<manifest>"]' aws ecr batch-get-image --region "$region" --repository-name "$repository" \
            --image-ids "imageTag=$tag" --accepted-media-types \
            application/vnd.docker.distribution.manifest.v2+json application/vnd.oci.image.manifest.v1+json \
            --query 'images[0].[imageManifestMediaType,imageManifest]' --output json)
        if ! media_type=$(jq -er '.[0]' <<<"$image") || ! manifest=$(jq -er '.[1]' <<<"$image"); then
            die "ECR returned no manifest for $repository:$tag, so it is not tagged $DEPLOYED_TAG (the deploy itself is done)"
        fi
        run aws ecr put-image --region "$region" --repository-name "$repository" --image-tag "$DEPLOYED_TAG" \
            --image-manifest "$manifest" --image-manifest-media-type "$media_type" --query 'image.imageId.imageTag' --output text
    done
}

services() {
    comment "6. the services, on the new task definitions; Pulumi waits until ECS reports them stable"
    run pulumi up --yes --skip-preview --refresh "${pulumi_args[@]}" ||
        die "pulumi up failed (above); if ECS rolled a service back, step 7's check says why: \
aws ecs describe-services --region $region --cluster $cluster --services ${SERVICES[*]} --query 'services[].events[:8].message'"
}

check_services() {
    comment "7. each service's deployment is COMPLETED on its new task definition (not rolled back)"
    local placeholder expected names=() name line service task_definition state want failed=0
    placeholder=$(jq -cn '$ARGS.positional | map({key: ., value: {name: "<ecsServices.\(.).name>",
        taskDefinition: "<ecsServices.\(.).taskDefinition>"}}) | from_entries' --args "${SERVICES[@]}")
    expected=$(query "$placeholder" pulumi stack output --stack "$stack" ecsServices --json)
    while read -r name; do names+=("$name"); done < <(jq -r '.[].name' <<<"$expected")
    run aws ecs wait services-stable --region "$region" --cluster "$cluster" --services "${names[@]}" ||
        die "the services did not become stable in time: aws ecs describe-services --region $region --cluster $cluster --services ${names[*]}"
    # shellcheck disable=SC2016 # backquotes are JMESPath literals, not a shell expansion
    line=$(query "" aws ecs describe-services --region "$region" --cluster "$cluster" --services "${names[@]}" \
        --query 'services[].[serviceName,taskDefinition,deployments[?status==`PRIMARY`]|[0].rolloutState]' --output text)
    $dry_run && return 0
    for name in "${names[@]}"; do
        want=$(jq -r --arg n "$name" '.[] | select(.name == $n) | .taskDefinition' <<<"$expected")
        read -r service task_definition state < <(awk -v n="$name" '$1 == n' <<<"$line") || true
        if [ "${service:-}" != "$name" ]; then
            echo "deploy: ECS does not report the service $name" >&2
            failed=1
        elif [ "$task_definition" != "$want" ] || [ "$state" != COMPLETED ]; then
            printf 'deploy: service %s was ROLLED BACK or did not finish: it runs %s (rollout %s), not %s. ECS says:\n' \
                "$name" "$task_definition" "$state" "$want" >&2
            aws ecs describe-services --region "$region" --cluster "$cluster" --services "$name" \
                --query 'services[0].events[:8].[createdAt,message]' --output text >&2 || true
            failed=1
        else
            say "$name runs $want"
        fi
        service=
    done
    [ "$failed" = 0 ] || die "the new release is not running (the services run the previous one). Read the events \
above and the tasks' logs (/ecs/$prefix/<container>), fix, then run this again; pulumi up --refresh (step 6) \
moves the services forward again"
}

case $action in
    push)
        images
        ;;
    preview)
        configure
        preview
        ;;
    deploy)
        configure
        preview
        repositories
        images
        all_but_services
        one_off_tasks
        services
        check_services
        keep_deployed
        if $dry_run; then say "dry run: the commands above, none run"; else say "deployed $tag to $stack"; fi
        ;;
esac
