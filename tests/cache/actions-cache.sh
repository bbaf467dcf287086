#!/usr/bin/env bash
# End-to-end test of the cache API with the stock @actions/cache client (3.x, protocol v1).
# Starts `jobcell serve` on 127.0.0.1, claims a job to get its cache token, then: saves a
# multi-megabyte directory, restores it by exact key, restores by prefix (restoreKeys),
# misses on another version, and shows the token refused once the job completed.
# Usage: tests/cache/actions-cache.sh [path/to/jobcell]   (default: target/debug/jobcell)
# Exit 0 on success; prints "SKIP: reason" and exits 77 when node/npm are missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:-${JOBCELL_BIN:-$repo/target/debug/jobcell}}
for t in node npm curl tar; do
    command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
[ -x "$bin" ] || { echo "FAIL: no jobcell binary at $bin"; exit 1; }

work=$(mktemp -d /tmp/jobcell-cache-e2e.XXXXXX)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- server log"; tail -n 40 "$work/serve.log" || true; exit 1; }
step() { echo "== $*"; }

# The stock client, pinned (package-lock.json), installed outside the repository.
step "installing @actions/cache (pinned 3.x) with npm ci"
mkdir -p "$work/client"
cp "$here/package.json" "$here/package-lock.json" "$here/client.js" "$work/client/"
(cd "$work/client" && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>"$work/npm.log") \
    || { cat "$work/npm.log"; fail "npm ci"; }
ver=$(node -p "require('$work/client/node_modules/@actions/cache/package.json').version")
case "$ver" in 3.*) ;; *) fail "@actions/cache $ver is not 3.x (protocol v1)";; esac
echo "@actions/cache $ver"

port=$(( 20000 + RANDOM % 20000 ))
state="$work/state"
JOBCELL_LOG=info "$bin" serve --listen "127.0.0.1:$port" --state-dir "$state" --executor none \
    >"$work/serve.log" 2>&1 &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
    curl -fsS "$base/healthz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || fail "server exited"
    sleep 0.1
done
curl -fsS "$base/healthz" >/dev/null || fail "server not up"
key=$(cat "$state/secrets/internal_api_key")
api() { # METHOD PATH [JSON]
    curl -fsS -X "$1" "$base$2" -H "Authorization: Bearer $key" -H "X-Orchestrator-ID: e2e" \
        -H 'Content-Type: application/json' ${3:+--data "$3"}
}
json() { node -e "let d='';process.stdin.on('data',c=>d+=c).on('end',()=>{const v=JSON.parse(d);console.log($1)})"; }

step "submit and claim a job"
job=$(api POST /api/internal/jobs '{"userId":"alice","command":["true"]}' | json v.jobId)
claim=$(api POST /api/internal/jobs/claim '{"batchSize":1,"leaseSeconds":600}')
token=$(echo "$claim" | json 'v.jobs[0].cacheToken')
[ "$(echo "$claim" | json 'v.jobs[0].jobId')" = "$job" ] || fail "claimed another job"
[ ${#token} -eq 64 ] || fail "no cache token in the claim: $claim"

export ACTIONS_CACHE_URL="$base/" ACTIONS_RUNTIME_TOKEN="$token"
export GITHUB_WORKSPACE="$work/ws" RUNNER_TEMP="$work/runner-temp"
mkdir -p "$RUNNER_TEMP"
mkdir -p "$GITHUB_WORKSPACE/deps/sub"
cd "$GITHUB_WORKSPACE"
# 40 MiB incompressible + 8 MiB of text: more than one 32 MiB upload chunk.
head -c $((40 << 20)) /dev/urandom > deps/blob.bin
for i in $(seq 1 2000); do printf 'line %06d %s\n' "$i" "$(head -c 2048 /dev/zero | tr '\0' x)"; done > deps/sub/text.txt
(cd deps && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/before.sum"
du -sh deps
client() { node "$work/client/client.js" "$@"; }

step "save deps under npm-linux-abc"
out=$(client save npm-linux-abc deps) || fail "save: $out"
echo "$out"
id=$(echo "$out" | tail -n 1 | json v.cacheId)
[ "$id" -gt 0 ] 2>/dev/null || fail "save returned no cache id: $out"

verify() {
    (cd deps && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/after.sum"
    cmp -s "$work/before.sum" "$work/after.sum" || fail "restored content differs"
}

step "restore by exact key"
rm -rf deps
out=$(client restore npm-linux-abc - deps) || fail "restore: $out"
echo "$out" | tail -n 1
[ "$(echo "$out" | tail -n 1 | json v.matchedKey)" = npm-linux-abc ] || fail "exact restore missed"
verify

step "restore by prefix (restoreKeys)"
rm -rf deps
out=$(client restore npm-linux-zzz npm-linux-,npm- deps) || fail "restore: $out"
echo "$out" | tail -n 1
[ "$(echo "$out" | tail -n 1 | json v.matchedKey)" = npm-linux-abc ] || fail "prefix restore missed"
verify

step "another version (other paths) misses"
out=$(client restore npm-linux-abc npm- deps other-path) || fail "restore: $out"
echo "$out" | tail -n 1
[ "$(echo "$out" | tail -n 1 | json v.matchedKey)" = null ] || fail "other version hit"

step "complete the job: the token is refused"
api PUT "/api/internal/jobs/$job/status" '{"status":"running"}' >/dev/null
api POST "/api/internal/jobs/$job/complete" '{"status":"completed","exitCode":0}' >/dev/null
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
    "$base/_apis/artifactcache/cache?keys=npm-linux-abc&version=x")
[ "$code" = 401 ] || fail "finished job's token got $code"
out=$(client restore npm-linux-abc - deps 2>&1) || true
echo "$out" | grep -q 'responded with 401' || fail "client was not refused: $out"
[ "$(echo "$out" | tail -n 1 | json v.matchedKey)" = null ] || fail "refused client restored"
echo "client refused: $(echo "$out" | grep -m1 'responded with 401')"

grep -q 'cache.upload' <(api GET '/api/internal/audit?limit=1000') || fail "no cache.upload audit"
echo "PASS: @actions/cache $ver save, exact restore, prefix restore, version miss, refusal after completion"
