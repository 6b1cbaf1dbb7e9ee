#!/usr/bin/env bash
# `make run`: the platform on this machine, for a demo or a first look.
#
#   timekeeper    http://127.0.0.1:8080   SQLite in .run/, budgets in .run/budgets.yaml (a copy
#                                         of deployment/examples/budgets.yaml to edit freely)
#   webhook       https://127.0.0.1:8443  self-signed CA in .run/certs/
#   node manager  http://127.0.0.1:9400/metrics, two simulated 16 GiB GPUs, no kubelet
#   sidecar       one demo pod in namespace team-a, reporting every 5 s
#
# There is no Kubernetes here: the webhook is called with curl, the node manager serves its
# device plugin sockets under .run/ and the sidecar reports for a made-up pod.
# Ports move with GPUSHARE_RUN_*_PORT, the state folder with GPUSHARE_RUN_DIR. Ctrl-C stops
# everything, the sidecar first (its last interval delivered), then the rest; state stays.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
RUN=$(realpath -m "${GPUSHARE_RUN_DIR:-.run}")
TIMEKEEPER_PORT=${GPUSHARE_RUN_TIMEKEEPER_PORT:-8080}
WEBHOOK_PORT=${GPUSHARE_RUN_WEBHOOK_PORT:-8443}
NODEMANAGER_PORT=${GPUSHARE_RUN_NODEMANAGER_PORT:-9400}
TIMEKEEPER_URL="http://127.0.0.1:$TIMEKEEPER_PORT"
WEBHOOK_URL="https://127.0.0.1:$WEBHOOK_PORT"

mkdir -p "$RUN/logs" "$RUN/device-plugins" "$RUN/containers" "$RUN/spool"

say() { printf 'gpushare: %s\n' "$*"; }

# Wait for a URL to answer 2xx, with a deadline; on failure show the part's log.
wait_ready() {
    local name=$1 url=$2 log=$3 deadline=$((SECONDS + 60))
    until curl --silent --fail --max-time 2 --cacert "$RUN/certs/ca.crt" "$url" >/dev/null; do
        if ((SECONDS >= deadline)); then
            say "$name did not become ready at $url; its log:" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        sleep 0.2
    done
    say "$name ready at $url"
}

# Each part runs in its own session, so Ctrl-C reaches only this script (a terminal sends it
# to the whole foreground process group), which stops the sidecar first, while the timekeeper
# can still take its last interval, and then the other parts at once.
pids=()
sidecar_pid=
stop_all() {
    trap - INT TERM HUP EXIT
    local i last=$((${#pids[@]} - 1))
    # The sidecar (started last) alone first; then the rest together, which keeps Ctrl-C
    # under 2 s (each part takes a fraction of a second to stop).
    if ((last >= 0)) && [[ ${pids[last]} == "$sidecar_pid" ]]; then
        kill -TERM "$sidecar_pid" 2>/dev/null || true
        wait "$sidecar_pid" 2>/dev/null || true
        last=$((last - 1))
    fi
    for ((i = last; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    for ((i = last; i >= 0; i--)); do
        wait "${pids[i]}" 2>/dev/null || true
    done
    say "stopped; state and logs are in $RUN/"
}
# Ctrl-C is the normal way out: stop everything and exit 0.
trap 'stop_all; exit 0' INT TERM HUP
trap stop_all EXIT

start() {
    local name=$1
    shift
    setsid "$@" >"$RUN/logs/$name.log" 2>&1 &
    pids+=($!)
}

if [[ ! -f $RUN/certs/tls.crt ]]; then
    "$BIN/gpushare" certs generate --out "$RUN/certs" --dns localhost --ip 127.0.0.1 \
        >"$RUN/logs/certs.log" 2>&1 || { cat "$RUN/logs/certs.log" >&2; exit 1; }
    say "made a CA and a serving certificate in $RUN/certs/"
fi

if [[ ! -f $RUN/tokens.yaml ]]; then
    token=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))')
    printf 'tokens:\n  - {token: "%s", namespace: team-a}\n' "$token" >"$RUN/tokens.yaml"
    chmod 600 "$RUN/tokens.yaml"
fi
demo_token=$("$BIN/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["tokens"][0]["token"])' "$RUN/tokens.yaml")

# The demo's budgets live in .run/, so editing them (they are reloaded live) never touches
# the tracked example.
if [[ ! -f $RUN/budgets.yaml ]]; then
    cp deployment/examples/budgets.yaml "$RUN/budgets.yaml"
fi

database_url="sqlite:///$RUN/timekeeper.db"
"$BIN/gpushare" db upgrade --database-url "$database_url" >"$RUN/logs/migrations.log" 2>&1

start timekeeper "$BIN/gpushare" timekeeper --host 127.0.0.1 --port "$TIMEKEEPER_PORT" \
    --database-url "$database_url" --budgets "$RUN/budgets.yaml" \
    --tokens "$RUN/tokens.yaml" --no-migrate --log-format text
wait_ready timekeeper "$TIMEKEEPER_URL/readyz" "$RUN/logs/timekeeper.log"

start webhook "$BIN/gpushare" webhook --host 127.0.0.1 --port "$WEBHOOK_PORT" \
    --cert "$RUN/certs/tls.crt" --key "$RUN/certs/tls.key" \
    --timekeeper-url "$TIMEKEEPER_URL" --log-format text
wait_ready webhook "$WEBHOOK_URL/readyz" "$RUN/logs/webhook.log"

start nodemanager "$BIN/gpushare" nodemanager --node-name local --simulate-gpus 2x16GiB \
    --no-kubernetes --device-plugin-dir "$RUN/device-plugins" \
    --pod-resources-socket "$RUN/pod-resources.sock" \
    --hook-library-dir "$PWD/vgpu-runtime/hook/build" --state-dir "$RUN/containers" \
    --checkpoint "$RUN/allocations.json" --host 127.0.0.1 --port "$NODEMANAGER_PORT" \
    --log-format text
wait_ready "node manager" "http://127.0.0.1:$NODEMANAGER_PORT/metrics" "$RUN/logs/nodemanager.log"

start sidecar env GPUSHARE_TIMEKEEPER_URL="$TIMEKEEPER_URL" GPUSHARE_TOKEN="$demo_token" \
    GPUSHARE_POD_NAME=demo-train GPUSHARE_POD_NAMESPACE=team-a \
    GPUSHARE_POD_UID=00000000-0000-4000-8000-000000000001 \
    GPUSHARE_VCUDA_CORE=50 GPUSHARE_VCUDA_MEMORY=16 GPUSHARE_REPORT_INTERVAL_SECONDS=5 \
    GPUSHARE_SPOOL_DIR="$RUN/spool" GPUSHARE_SHUTDOWN_DEADLINE_SECONDS=1 \
    GPUSHARE_USAGE_DIR="$RUN/usage" GPUSHARE_LOG_FORMAT=text "$BIN/gpushare" sidecar
sidecar_pid=${pids[-1]}
say "demo sidecar reporting for pod team-a/demo-train (50 % of a GPU) every 5 s"

cat <<MSG

Try:
  $BIN/gpushare usage --url $TIMEKEEPER_URL                # budgets and use of every namespace
  $BIN/gpushare usage --url $TIMEKEEPER_URL team-a         # one namespace, by pod
  open $TIMEKEEPER_URL/ui/                                 # the same as a web page
  edit $RUN/budgets.yaml                                   # reloaded within 2 s
  curl -s $TIMEKEEPER_URL/api/v1/namespaces/interns
  curl -s --cacert $RUN/certs/ca.crt -H 'Content-Type: application/json' \\
       --data @deployment/examples/admission-review.json $WEBHOOK_URL/mutate
  curl -s http://127.0.0.1:$NODEMANAGER_PORT/metrics | grep '^gpushare'
Logs: $RUN/logs/   Ctrl-C stops everything.

MSG

# Stop everything as soon as any part exits on its own.
wait -n "${pids[@]}"
say "a part exited; see $RUN/logs/" >&2
exit 1
