#!/usr/bin/env bash
# Benchmark of the embedded API: requests/s and p99 latency of a token-checked runtime call
# (GET /api/runtime/executions/{id}/input: JWT verification, active-execution check, store
# read, audit write) at fixed concurrency with wrk, plus the server's RSS idle and under load.
# Loopback only. Usage: bench/api.sh [CONNECTIONS] [DURATION] [RUNS]
set -euo pipefail
CONNS=${1:-16}
DURATION=${2:-10s}
RUNS=${3:-3}
cd "$(dirname "$0")/.."
for tool in wrk curl jq; do
  command -v "$tool" >/dev/null || { echo "bench/api.sh: $tool is required" >&2; exit 2; }
done
cargo build --release --quiet
BIN=target/release/jobcell
WORK=$(mktemp -d)
PORT=$(( 20000 + RANDOM % 20000 ))
API="http://127.0.0.1:$PORT"
cleanup() { [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
JOBCELL_LOG=warn "$BIN" serve --executor none --listen "127.0.0.1:$PORT" --state-dir "$WORK/state" 2>"$WORK/server.log" &
PID=$!
for _ in $(seq 100); do curl -fsS "$API/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
KEY=$(cat "$WORK/state/secrets/internal_api_key")
H=(-H "Authorization: Bearer $KEY" -H "X-Orchestrator-ID: bench" -H "Content-Type: application/json")
curl -fsS "${H[@]}" -d '{"userId":"bench","command":["true"],"input":{"hello":"world"}}' "$API/api/internal/jobs" >/dev/null
CLAIM=$(curl -fsS "${H[@]}" -d '{"batchSize":1,"leaseSeconds":600}' "$API/api/internal/jobs/claim")
JOB=$(jq -r '.jobs[0].jobId' <<<"$CLAIM")
EXEC=$(jq -r '.jobs[0].executionId' <<<"$CLAIM")
TOKEN=$(jq -r '.jobs[0].executionToken' <<<"$CLAIM")
curl -fsS "${H[@]}" -X PUT -d '{"status":"running"}' "$API/api/internal/jobs/$JOB/status" >/dev/null
URL="$API/api/runtime/executions/$EXEC/input"
curl -fsS -H "Authorization: Bearer $TOKEN" "$URL" >/dev/null
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
sleep 1
IDLE=$(rss)
echo "server idle RSS: ${IDLE} KiB"
echo "wrk: $RUNS runs, $CONNS connections, 2 threads, $DURATION each, GET runtime input"
RPS_ALL=(); P99_ALL=(); PEAK=0
for run in $(seq "$RUNS"); do
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $TOKEN" "$URL" >"$WORK/wrk.$run" &
  WRK=$!
  while kill -0 "$WRK" 2>/dev/null; do r=$(rss); (( r > PEAK )) && PEAK=$r; sleep 0.5; done
  wait "$WRK"
  RPS=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.$run")
  P99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk.$run")
  NON2XX=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.$run")
  echo "run $run: ${RPS} req/s, p99 ${P99}${NON2XX:+, NON-2XX: $NON2XX}"
  RPS_ALL+=("$RPS"); P99_ALL+=("$P99")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f\n", v}'; }
P99_MS=(); for p in "${P99_ALL[@]}"; do P99_MS+=("$(to_ms <<<"$p")"); done
echo "median: $(median "${RPS_ALL[@]}") req/s, p99 $(median "${P99_MS[@]}") ms; RSS idle ${IDLE} KiB, peak under load ${PEAK} KiB"
