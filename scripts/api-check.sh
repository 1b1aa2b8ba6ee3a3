#!/usr/bin/env bash
# Checks the running API against openapi.yaml with Schemathesis (pinned in .local/venv-schemathesis
# by install-local-tools.sh):
#
#   1. starts target/debug/local-stack on a free loopback port, state in a fresh temp folder,
#      with its own worker off (enrichments stay `pending`, so the answers do not depend on
#      timing) and no table stream (LOCAL_TABLE_STREAM=off: the emulator's stream makes every
#      write slower the more came before, and a few thousand cases write tens of thousands of
#      items; the webhook routes answer the same without it);
#   2. grants 1,000,000 credits to org_api (so that the POSTs are not all 402), imports the
#      fixture people and mints a token for user_api in org_api;
#   3. runs `schemathesis run` on the document the gateway serves (GET /openapi.yaml): every
#      operation, its examples and generated cases (positive and negative), with the checks
#      not_a_server_error, status_code_conformance, content_type_conformance and
#      response_schema_conformance, at most API_CHECK_MAX_EXAMPLES cases per operation and
#      phase and API_CHECK_MAX_TIME seconds in all; exits 1 on any failure;
#   4. stops the stack and removes the temp folder, however it exits.
#
# Environment:
#   API_CHECK_MAX_EXAMPLES  cases per operation (default 20)
#   API_CHECK_MAX_TIME      seconds for the whole Schemathesis run (default 120)
#   API_CHECK_SEED          Schemathesis seed (default: random; the run prints it)
#   READY_TIMEOUT           seconds the stack may take to be ready (default 120)
#   KEEP_LOGS=1             keep the temp folder (stack log, Schemathesis reports)
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
cd "${repo_root}"

MAX_EXAMPLES="${API_CHECK_MAX_EXAMPLES:-20}"
MAX_TIME="${API_CHECK_MAX_TIME:-120}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
CARGO="${CARGO:-cargo}"
ORG="org_api"
USER_ID="user_api"
CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"

log() { printf '[api-check] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/api-check.XXXXXX")"
state="${work}/state"
mkdir -p "${state}"

# The stack runs in its own process group (job control on), so that stopping the group also
# stops moto under it.
set -m
stack_pid=""

cleanup() {
    local status=$? tries
    set +e
    if [[ -n "${stack_pid}" ]] && kill -0 -- "-${stack_pid}" 2>/dev/null; then
        kill -INT -- "-${stack_pid}" 2>/dev/null
        tries=100
        while ((tries-- > 0)) && kill -0 -- "-${stack_pid}" 2>/dev/null; do sleep 0.1; done
        kill -KILL -- "-${stack_pid}" 2>/dev/null
    fi
    wait 2>/dev/null
    if [[ "${KEEP_LOGS:-0}" == 1 ]]; then
        log "logs and reports kept in ${work}"
    else
        if ((status != 0)) && [[ -s "${work}/stack.log" ]]; then
            log "last lines of the stack's log:"
            tail -n 25 "${work}/stack.log" | cut -c1-300 | sed "s/^/    /" >&2
        fi
        rm -rf -- "${work}"
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "${script_dir}/install-local-tools.sh"
schemathesis="${repo_root}/.local/venv-schemathesis/bin/schemathesis"
[[ -x "${schemathesis}" ]] || die "${schemathesis} is missing (scripts/install-local-tools.sh)"

log "building local-stack and enrichctl (debug)"
"${CARGO}" build -q -p local-stack -p enrichctl

log "starting the local stack (state in ${state})"
LOCAL_STATE_DIR="${state}" PORT=0 LOCAL_WORKER=off LOCAL_TABLE_STREAM=off RUST_LOG=warn \
    "${CARGO_TARGET_DIR:-target}/debug/local-stack" >"${work}/stack.log" 2>&1 </dev/null &
stack_pid=$!
deadline=$((SECONDS + READY_TIMEOUT))
until grep -q '^ready:' "${work}/stack.log" 2>/dev/null; do
    kill -0 "${stack_pid}" 2>/dev/null || die "local-stack exited before it was ready"
    ((SECONDS < deadline)) || die "local-stack not ready within ${READY_TIMEOUT} s"
    sleep 0.2
done
gateway_url="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["gatewayUrl"])' \
    "${state}/stack.json")"

enrichctl() { "${CARGO_TARGET_DIR:-target}/debug/enrichctl" --state-dir "${state}" "$@"; }
enrichctl credits grant --org "${ORG}" --amount 1000000 >/dev/null
enrichctl people import --org "${ORG}" tools/local-stack/fixtures/people.csv >"${work}/people.txt"
token="$(enrichctl token --user "${USER_ID}" --org "${ORG}" --expires-in 3600)"

# Warm-up: the stack's first enrichment and first bulk pay one-time costs (connections, the
# emulators' first calls) that could push a large bulk generated early past its 10 s deadline.
api="${gateway_url}/api/v1/operations/enrichment"
first_person="$(head -n1 "${work}/people.txt")"
for request in "${first_person}?field=emails" "bulk"; do
    body='{"selection": {"mode": "bulk", "targetCount": 1}, "field": "phones"}'
    curl -fsS -o /dev/null -X POST "${api}/${request}" -H "Authorization: Bearer ${token}" \
        -H 'content-type: application/json' -d "${body}" ||
        die "warm-up POST ${request} failed"
done

seed=()
[[ -n "${API_CHECK_SEED:-}" ]] && seed=(--seed "${API_CHECK_SEED}")
log "schemathesis run ${gateway_url}/openapi.yaml (at most ${MAX_EXAMPLES} cases per operation, ${MAX_TIME} s)"
# The token goes in a header; --output-sanitize keeps it out of the output.
(cd "${work}" && "${schemathesis}" run "${gateway_url}/openapi.yaml" \
    --url "${gateway_url}" \
    --header "Authorization: Bearer ${token}" \
    --checks "${CHECKS}" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "${MAX_EXAMPLES}" \
    --max-time "${MAX_TIME}" \
    --request-timeout 30 \
    --workers 1 \
    --no-color \
    --generation-database none \
    --report junit --report-dir "${work}/report" \
    "${seed[@]}")
