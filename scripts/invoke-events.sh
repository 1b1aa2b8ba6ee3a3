#!/usr/bin/env bash
# Runs every sample event in events/ through the real function binaries (trigger, status,
# people, batch, credits, cancel, worker, webhook-settings, outbox-relay, webhook-delivery)
# served by `cargo lambda watch`, against a private local stack, and checks each answer.
#
#   1. starts target/debug/local-stack on a free loopback port, state in a fresh temp folder,
#      with its own worker, outbox relay and webhook pollers off (jobs and webhook events stay
#      where they are, so the answers do not depend on timing), and a webhook receiver on
#      another free loopback port (answers 204, keeps every request);
#   2. grants 100 credits to org_demo, imports tools/local-stack/fixtures/people.csv and mints a
#      token for user_demo in org_demo; in temp copies of the events, the first imported id
#      (Ada Quill, whom the simulator knows) replaces {{PERSON_ID}}, the next ones
#      {{PERSON_ID_2}} to {{PERSON_ID_4}}, the token {{TOKEN}}, the id trigger-post answers
#      {{ENRICHMENT_ID}}, the receiver's URL {{WEBHOOK_URL}}, and one webhook event's id and
#      times {{EVENT_ID}}, {{CREATED_AT}} (now), {{DUE_AT}} (now, Unix seconds) and
#      {{EXPIRES_AT}} (two days on);
#   3. starts `cargo lambda watch` on another free loopback port with the functions' environment
#      pointed at the stack (DynamoDB, SQS, the dev JWKS, the provider simulator, the webhook
#      queue; loopback webhook endpoints accepted, as only a local stack does);
#   4. invokes each event, checks the answer, prints a table; exits 1 on any mismatch;
#   5. stops everything it started and removes the temp folder, however it exits.
#
# Every server listens on 127.0.0.1 only; every wait is bounded.
#
# Environment:
#   INVOKE_TIMEOUT   seconds one invoke may take, first compile included (default 300)
#   READY_TIMEOUT    seconds the stack and the watch server may take to listen (default 120)
#   KEEP_LOGS=1      keep the temp folder (logs, events, answers) and print where it is
set -euo pipefail

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
cd "${repo_root}"

INVOKE_TIMEOUT="${INVOKE_TIMEOUT:-300}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
CARGO="${CARGO:-cargo}"
ORG="org_demo"
USER_ID="user_demo"
CREDITS=100
EMAIL_COST=5

log() { printf '[invoke-events] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/invoke-events.XXXXXX")"
state="${work}/state"
mkdir -p "${state}" "${work}/events" "${work}/out"

# Each server runs in its own process group (job control on), so that stopping the group also
# stops what it spawned: moto under the stack, `cargo run` and the functions under the watch.
set -m
server_pids=()

# Stops the process group PID leads: SIGINT (the stack and the watch shut down cleanly on it),
# then SIGTERM after 5 s, then SIGKILL after 3 s more.
stop_group() {
    local pid="$1" signal tries
    for signal in INT TERM; do
        kill -0 -- "-${pid}" 2>/dev/null || return 0
        kill "-${signal}" -- "-${pid}" 2>/dev/null || true
        tries=$([[ "${signal}" == INT ]] && echo 50 || echo 30)
        while ((tries-- > 0)); do
            kill -0 -- "-${pid}" 2>/dev/null || return 0
            sleep 0.1
        done
    done
    kill -KILL -- "-${pid}" 2>/dev/null || true
}

# Prints the ids of every descendant of process PID.
descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        printf '%s\n' "${child}"
        descendants "${child}"
    done
}

cleanup() {
    local status=$? pid left=()
    set +e
    # cargo lambda watch runs each function in a process group of its own: note them first.
    for pid in "${server_pids[@]}"; do
        mapfile -t -O "${#left[@]}" left < <(descendants "${pid}")
    done
    for pid in "${server_pids[@]}"; do
        stop_group "${pid}"
    done
    for pid in "${left[@]}"; do
        kill -KILL "${pid}" 2>/dev/null
    done
    wait 2>/dev/null
    if [[ "${KEEP_LOGS:-0}" == 1 ]]; then
        log "logs and answers kept in ${work}"
    elif ((status != 0)) && [[ -f "${work}/watch.log" || -f "${work}/stack.log" ]]; then
        for f in stack.log watch.log; do
            [[ -s "${work}/${f}" ]] || continue
            log "last lines of ${f}:"
            tail -n 25 "${work}/${f}" | cut -c1-300 | sed "s/^/    /" >&2
        done
    fi
    [[ "${KEEP_LOGS:-0}" == 1 ]] || rm -rf -- "${work}"
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback port (the kernel picks it; it is released before the server binds it).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until `pattern` appears in `file`, while process `pid` lives, at most `seconds`.
wait_for_line() {
    local file="$1" pattern="$2" pid="$3" seconds="$4" what="$5" deadline
    deadline=$((SECONDS + seconds))
    until grep -q -- "${pattern}" "${file}" 2>/dev/null; do
        kill -0 "${pid}" 2>/dev/null || die "${what} exited before it was ready"
        ((SECONDS < deadline)) || die "${what} not ready within ${seconds} s"
        sleep 0.2
    done
}

# Waits until something accepts connections on 127.0.0.1:port, at most `seconds`.
wait_for_port() {
    local port="$1" pid="$2" seconds="$3" what="$4" deadline
    deadline=$((SECONDS + seconds))
    until (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; do
        kill -0 "${pid}" 2>/dev/null || die "${what} exited before it listened"
        ((SECONDS < deadline)) || die "${what} did not listen on ${port} within ${seconds} s"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- tools and builds
bash "${script_dir}/install-local-tools.sh" moto
lambda_bin="$(bash "${script_dir}/install-lambda-tools.sh" | tail -n1)"
export PATH="${lambda_bin}:${PATH}"

log "building local-stack, enrichctl and the functions (debug)"
# As `make run` builds them.
"${CARGO}" build -q -p local-stack -p enrichctl
# `cargo lambda watch` starts each function with `cargo run --bin NAME` at the workspace root,
# which resolves features for that one package: built the same way (one at a time, into
# target/debug), its first invoke finds the function built instead of compiling it under the
# invoke's timeout.
for bin in trigger status worker people batch credits cancel webhook-settings outbox-relay \
    webhook-delivery; do
    "${CARGO}" build -q --bin "${bin}"
done

# ---------------------------------------------------------------- local stack
log "starting the local stack (state in ${state})"
LOCAL_STATE_DIR="${state}" PORT=0 LOCAL_WORKER=off LOCAL_OUTBOX_RELAY=off \
    LOCAL_WEBHOOK_CONCURRENCY=0 RUST_LOG=warn \
    "${CARGO_TARGET_DIR:-target}/debug/local-stack" >"${work}/stack.log" 2>&1 </dev/null &
stack_pid=$!
server_pids+=("${stack_pid}")
wait_for_line "${work}/stack.log" '^ready:' "${stack_pid}" "${READY_TIMEOUT}" "local-stack"
[[ -s "${state}/stack.json" ]] || die "local-stack wrote no ${state}/stack.json"

stack_field() {
    python3 -c 'import json, sys; v = json.load(open(sys.argv[1])).get(sys.argv[2]); print(v or "")' \
        "${state}/stack.json" "$1"
}
gateway_url="$(stack_field gatewayUrl)"
dynamodb_url="$(stack_field dynamodbUrl)"
sqs_url="$(stack_field sqsUrl)"
table_name="$(stack_field tableName)"
queue_url="$(stack_field queueUrl)"
bulk_queue_url="$(stack_field bulkQueueUrl)"
[[ -n "${bulk_queue_url}" ]] || die "stack.json has no bulkQueueUrl"
simulator_url="$(stack_field simulatorUrl)"
[[ -n "${simulator_url}" ]] || die "stack.json has no simulatorUrl"
webhook_queue_url="$(stack_field webhookQueueUrl)"
[[ -n "${webhook_queue_url}" ]] || die "stack.json has no webhookQueueUrl"

enrichctl() { "${CARGO_TARGET_DIR:-target}/debug/enrichctl" --state-dir "${state}" "$@"; }
enrichctl credits grant --org "${ORG}" --amount "${CREDITS}" >/dev/null
enrichctl people import --org "${ORG}" tools/local-stack/fixtures/people.csv >"${work}/people.txt"
mapfile -t imported <"${work}/people.txt"
((${#imported[@]} >= 4)) || die "people import printed fewer than 4 person ids"
for id in "${imported[@]:0:4}"; do
    [[ "${id}" =~ ^[0-9a-f-]{36}$ ]] || die "people import printed ${id:-nothing}, not a person id"
done
person_id="${imported[0]}"
token="$(enrichctl token --user "${USER_ID}" --org "${ORG}" --expires-in 3600)"

# ---------------------------------------------------------------- webhook receiver
# Answers every request 204 and appends it to receiver.jsonl (path, webhook headers, body).
webhook_port="$(free_port)"
webhook_url="http://127.0.0.1:${webhook_port}/hook"
cat >"${work}/receiver.py" <<'PY'
import http.server, json, sys

class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
        record = {"path": self.path, "body": body}
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type"):
            record[name] = self.headers.get(name)
        with open(sys.argv[2], "a") as log:
            log.write(json.dumps(record) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

try:
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
except KeyboardInterrupt:
    pass
PY
: >"${work}/receiver.jsonl"
python3 "${work}/receiver.py" "${webhook_port}" "${work}/receiver.jsonl" \
    >"${work}/receiver.log" 2>&1 </dev/null &
receiver_pid=$!
server_pids+=("${receiver_pid}")
wait_for_port "${webhook_port}" "${receiver_pid}" "${READY_TIMEOUT}" "webhook receiver"

# One webhook event, as the outbox holds it (outbox-relay-insert) and as the relay queues its
# first attempt (webhook-delivery-sqs).
read -r event_id created_at due_at expires_at < <(python3 -c '
import datetime, uuid
now = datetime.datetime.now(datetime.timezone.utc)
print(uuid.uuid4(), now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
      int(now.timestamp()), int(now.timestamp()) + 2 * 86400)')

# Writes the temp copy of events/NAME.json with the placeholders filled in; prints its path.
render() {
    local out="${work}/events/$1.json"
    sed -e "s/{{PERSON_ID}}/${person_id}/g" -e "s/{{PERSON_ID_2}}/${imported[1]}/g" \
        -e "s/{{PERSON_ID_3}}/${imported[2]}/g" -e "s/{{PERSON_ID_4}}/${imported[3]}/g" \
        -e "s/{{TOKEN}}/${token}/g" -e "s/{{ENRICHMENT_ID}}/${first_id}/g" \
        -e "s|{{WEBHOOK_URL}}|${webhook_url}|g" -e "s/{{EVENT_ID}}/${event_id}/g" \
        -e "s/{{CREATED_AT}}/${created_at}/g" -e "s/{{DUE_AT}}/${due_at}/g" \
        -e "s/{{EXPIRES_AT}}/${expires_at}/g" \
        "events/$1.json" >"${out}"
    printf '%s\n' "${out}"
}
first_id=""

# ---------------------------------------------------------------- cargo lambda watch
watch_port="$(free_port)"
log "starting cargo lambda watch on 127.0.0.1:${watch_port}"
(
    unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
    export TABLE_NAME="${table_name}" QUEUE_URL="${queue_url}" BULK_QUEUE_URL="${bulk_queue_url}"
    # The receiver is on loopback over http: accepted by a local stack only (never deployed).
    export WEBHOOK_QUEUE_URL="${webhook_queue_url}" WEBHOOK_ALLOW_LOOPBACK_HTTP=true
    export AUTH_JWKS_URL="${gateway_url}/.well-known/jwks.json" AUTH_ISSUER="${gateway_url}"
    export AWS_ENDPOINT_URL_DYNAMODB="${dynamodb_url}" AWS_ENDPOINT_URL_SQS="${sqs_url}"
    export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_EC2_METADATA_DISABLED=true
    export EMAIL_PROVIDERS=hunter,pdl PHONE_PROVIDERS=pdl
    export HUNTER_BASE_URL="${simulator_url}/hunter" HUNTER_API_KEY=local
    export PDL_BASE_URL="${simulator_url}/pdl" PDL_API_KEY=local
    export PROVIDER_TIMEOUT_SECONDS=5 RUST_LOG=info
    exec "${CARGO}" lambda watch -A 127.0.0.1 -P "${watch_port}" --ignore-changes
) >"${work}/watch.log" 2>&1 </dev/null &
watch_pid=$!
server_pids+=("${watch_pid}")
wait_for_port "${watch_port}" "${watch_pid}" "${READY_TIMEOUT}" "cargo lambda watch"

# ---------------------------------------------------------------- invoke and check
# Prints what an answer says, as one comparable line: `STATUS CODE-OR-STATE` for an API
# Gateway response (with `dataFound=` once finished; `[STATE,...]` for an array of enrichments,
# as the batch routes answer; `balance=N` for a credit balance; `count=N` for a page of credit
# history, with the number of transactions if it differs; `url` for a webhook endpoint, with
# `,secret` when the answer shows its secret; `deliveries=N delivered=M` for the deliveries
# log), `failures=N` for an SQS or DynamoDB stream batch response, `outcome=X` for a single
# job; the enrichment id (if any) on a second line.
summarize() {
    python3 - "$1" <<'PY'
import json, sys
try:
    answer = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"unreadable answer: {e}")
    print("")
    sys.exit(0)
if isinstance(answer, dict) and "statusCode" in answer:
    try:
        body = json.loads(answer.get("body") or "null")
    except ValueError:
        body = None
    if isinstance(body, list):
        states = [item.get("status", "?") if isinstance(item, dict) else "?" for item in body]
        print(f"{answer['statusCode']} [{','.join(states)}]")
        print("")
        sys.exit(0)
    body = body if isinstance(body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    what = error.get("code") or body.get("status") or "-"
    if what == "-" and "balance" in body:
        what = "balance=" + json.dumps(body["balance"])
    elif what == "-" and isinstance(body.get("transactions"), list):
        what = "count=" + json.dumps(body.get("count"))
        if body.get("count") != len(body["transactions"]):
            what += f" transactions={len(body['transactions'])}"
    elif what == "-" and isinstance(body.get("url"), str):
        what = "url"
        if str(body.get("secret") or "").startswith("whsec_"):
            what += ",secret"
    elif what == "-" and isinstance(body.get("deliveries"), list):
        deliveries = body["deliveries"]
        delivered = sum(1 for d in deliveries if isinstance(d, dict) and d.get("delivered"))
        what = f"deliveries={len(deliveries)} delivered={delivered}"
    if body.get("status") == "finished":
        what += " dataFound=" + json.dumps(body.get("dataFound"))
    print(f"{answer['statusCode']} {what}")
    print(body.get("id") or "")
elif isinstance(answer, dict) and "batchItemFailures" in answer:
    failures = [f.get("itemIdentifier") for f in answer["batchItemFailures"] or []]
    print(f"failures={len(failures)}" + (f" {','.join(failures)}" if failures else ""))
    print("")
elif isinstance(answer, dict) and "outcome" in answer:
    print(f"outcome={answer['outcome']}")
    print(answer.get("enrichmentId") or "")
else:
    print("unexpected answer: " + json.dumps(answer)[:120])
    print("")
PY
}

rows=()
mismatches=0

# check EVENT FUNCTION EXPECTED [same-id]: invokes FUNCTION with events/EVENT.json and compares
# the summary of its answer with EXPECTED; with same-id, the answer's enrichment id must also be
# the one trigger-post created.
check() {
    local event="$1" function="$2" expected="$3" same_id="${4:-}" out got id result started data
    out="${work}/out/${event}.$((${#rows[@]} + 1)).json"
    data="$(render "${event}")"
    started=${SECONDS}
    if timeout "${INVOKE_TIMEOUT}" "${CARGO}" lambda invoke "${function}" -A 127.0.0.1 \
        -P "${watch_port}" --data-file "${data}" >"${out}" 2>"${out%.json}.err"; then
        { read -r got && read -r id; } < <(summarize "${out}") || true
    else
        got="invoke failed: $(tr '\n' ' ' <"${out%.json}.err" | cut -c1-100)"
        id=""
    fi
    result=ok
    [[ "${got}" == "${expected}" ]] || result=MISMATCH
    if [[ "${result}" == ok && -n "${same_id}" ]]; then
        if [[ -z "${first_id}" || "${id}" != "${first_id}" ]]; then
            result=MISMATCH
            got="${got} (id ${id:-none}, expected ${first_id:-none})"
        else
            got="${got} (same id)"
            expected="${expected} (same id)"
        fi
    fi
    [[ "${event}" == trigger-post ]] && first_id="${id}"
    [[ "${result}" == ok ]] || mismatches=$((mismatches + 1))
    rows+=("$(printf '%-27s %-16s %-37s %-37s %4ss  %s' "${event}" "${function}" "${expected}" \
        "${got}" "$((SECONDS - started))" "${result}")")
}

# check_balance LABEL EXPECTED: the org's credit balance, through enrichctl.
check_balance() {
    local label="$1" expected="$2" balance result=ok
    balance="$(enrichctl credits balance --org "${ORG}" 2>&1 | tr -d '[:space:]')"
    [[ "${balance}" == "${expected}" ]] || {
        result=MISMATCH
        mismatches=$((mismatches + 1))
    }
    rows+=("$(printf '%-27s %-16s %-37s %-37s %4s   %s' "${label}" "-" "${expected}" \
        "${balance:0:37}" "" "${result}")")
}

# check_receiver LABEL COUNT: the receiver got COUNT requests, each the event {{EVENT_ID}} with
# a Standard Webhooks signature that the secret webhook-settings-put answered verifies
# (v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">).
check_receiver() {
    local label="$1" expected="$2" got result=ok secret_file
    secret_file="$(compgen -G "${work}/out/webhook-settings-put.*.json" | head -n1 || true)"
    got="$(python3 - "${work}/receiver.jsonl" "${secret_file}" "${event_id}" <<'PY'
import base64, hashlib, hmac, json, sys
requests = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
try:
    secret = json.loads(json.load(open(sys.argv[2]))["body"])["secret"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
except Exception:
    key = None
good = 0
for r in requests:
    signed = f"{r['webhook-id']}.{r['webhook-timestamp']}.{r['body']}".encode()
    expected = "v1," + base64.b64encode(hmac.new(key or b"", signed, hashlib.sha256).digest()).decode()
    signatures = (r.get("webhook-signature") or "").split()
    if key and r["webhook-id"] == sys.argv[3] and expected in signatures:
        good += 1
print(f"requests={len(requests)} signed={good}")
PY
)"
    [[ "${got}" == "${expected}" ]] || {
        result=MISMATCH
        mismatches=$((mismatches + 1))
    }
    rows+=("$(printf '%-27s %-16s %-37s %-37s %4s   %s' "${label}" "-" "${expected}" \
        "${got:0:37}" "" "${result}")")
}

log "invoking the events"
check trigger-post trigger "200 pending"
check trigger-replay trigger "200 pending" same-id
check trigger-bad-field trigger "400 VALIDATION_ERROR"
check trigger-missing-token trigger "401 UNAUTHORIZED"
check status-get status "200 pending" same-id
check status-bad-field status "400 VALIDATION_ERROR"
# trigger-post charged one emails enrichment; the replay cost nothing.
check_balance "(credits balance)" "$((CREDITS - EMAIL_COST))"
# The same balance through the credits function.
check credits-balance credits "200 balance=$((CREDITS - EMAIL_COST))"
# The emails enrichment trigger-post created (the summary task is not asked for).
check batch-query batch "200 [pending]"
# A new enrichment of the second person, charged; its job is held in the bulk queue.
check batch-enrich batch "200 [pending]"
# Ada's pending enrichment reused free, the third person's created and charged, the fourth
# excluded.
check bulk-enrich batch "200 [pending,pending]"
check_balance "(credits balance)" "$((CREDITS - 3 * EMAIL_COST))"
check people-create people "201 -"
check people-get people "200 -"
check people-list people "200 -"
check people-bad-body people "400 VALIDATION_ERROR"
# Its enrichment ids exist in no table: both jobs are acknowledged, none is retried.
check worker-sqs-batch worker "failures=0"
# The job trigger-post queued, as the Step Functions task passes it: the worker asks the
# simulated providers, which know Ada Quill. (cargo-lambda 1.9.2's emulator sends
# Lambda-Runtime-Deadline-Ms as 600000, a duration where Lambda sends an epoch time; the
# functions read such a small value as a duration.)
check worker-job worker "outcome=finished"
check status-get status "200 finished dataFound=true" same-id
# A finished enrichment keeps its charge.
check_balance "(credits balance)" "$((CREDITS - 3 * EMAIL_COST))"
check credits-balance credits "200 balance=$((CREDITS - 3 * EMAIL_COST))"
# The ledger now holds the grant and the three debits (trigger-post, batch-enrich, bulk-enrich),
# all within the event's range (2000-01-01 to 2099-12-31); offset=1 skips the newest.
check credits-history credits "200 count=3"
# The second person's pending enrichment (batch-enrich's) cancelled and refunded; cancelled
# again: the same, nothing more refunded. Ada's, finished, cannot be cancelled.
check cancel-pending cancel "200 cancelled"
check cancel-pending cancel "200 cancelled"
check_balance "(credits balance)" "$((CREDITS - 2 * EMAIL_COST))"
check cancel-finished cancel "409 CONFLICT"
# Webhooks: org_demo registers the receiver (the answer shows the secret, once); the relay gets
# an outbox event of Ada's finished enrichment from the table's stream, writes its delivery and
# queues attempt 1; the delivery function gets that attempt from the webhook queue, signs it and
# posts it to the receiver (204: delivered). The same attempt again (a duplicate message) is
# dropped: the receiver still has one request. The deliveries log shows it delivered.
check webhook-settings-put webhook-settings "200 url,secret"
check outbox-relay-insert outbox-relay "failures=0"
check webhook-delivery-sqs webhook-delivery "failures=0"
check_receiver "(webhook receiver)" "requests=1 signed=1"
check webhook-delivery-sqs webhook-delivery "failures=0"
check_receiver "(webhook receiver)" "requests=1 signed=1"
check webhook-settings-deliveries webhook-settings "200 deliveries=1 delivered=1"

printf '%-27s %-16s %-37s %-37s %5s  %s\n' event function expected got time result
printf '%s\n' "${rows[@]}"
if ((mismatches == 0)); then
    log "all ${#rows[@]} checks match"
else
    log "${mismatches} of ${#rows[@]} checks do not match"
    exit 1
fi
