#!/usr/bin/env bash
# Cache throughput: upload (32 MiB chunks, 4 in parallel, as @actions/cache does, then the
# commit with its fsync) and download (signed URL, written to the same disk and fsynced) of
# one entry, against dd copying the same file on the same disk with an fsync. One run;
# prints MB/s and the ratio (goal: >= 80 %). Loopback only.
# Usage: bench/cache.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
SIZE_MIB=${1:-1024}
CHUNK_MIB=32
cd "$(dirname "$0")/.."
for tool in curl node dd split; do
  command -v "$tool" >/dev/null || { echo "bench/cache.sh: $tool is required" >&2; exit 2; }
done
cargo build --release --quiet
BIN=target/release/jobcell
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jobcell-cache-bench.XXXXXX")
PORT=$(( 20000 + RANDOM % 20000 ))
API="http://127.0.0.1:$PORT"
cleanup() { [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
JOBCELL_LOG=warn "$BIN" serve --executor none --listen "127.0.0.1:$PORT" --state-dir "$WORK/state" \
  --cache-rate 1000 --cache-burst 1000 2>"$WORK/server.log" &
PID=$!
for _ in $(seq 100); do curl -fsS "$API/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
KEY=$(cat "$WORK/state/secrets/internal_api_key")
H=(-H "Authorization: Bearer $KEY" -H "X-Orchestrator-ID: bench" -H "Content-Type: application/json")
json() { node -e "let d='';process.stdin.on('data',c=>d+=c).on('end',()=>console.log($1))"; }
curl -fsS "${H[@]}" -d '{"userId":"bench","command":["true"]}' "$API/api/internal/jobs" >/dev/null
TOKEN=$(curl -fsS "${H[@]}" -d '{"batchSize":1,"leaseSeconds":600}' "$API/api/internal/jobs/claim" \
  | json 'JSON.parse(d).jobs[0].cacheToken')
A=(-H "Authorization: Bearer $TOKEN")
BYTES=$(( SIZE_MIB << 20 ))
now() { date +%s.%N; }
mbps() { node -e "console.log(($BYTES/1e6/($2-$1)).toFixed(1))"; }

echo "preparing ${SIZE_MIB} MiB of random data in $WORK (disk: $(df --output=source "$WORK" | tail -1))"
dd if=/dev/urandom of="$WORK/src" bs=1M count="$SIZE_MIB" status=none
mkdir "$WORK/chunks"
split -b "${CHUNK_MIB}M" -d -a 4 "$WORK/src" "$WORK/chunks/c"
sync

# Baseline: dd copy to the same disk, fsynced.
t0=$(now); dd if="$WORK/src" of="$WORK/dd-copy" bs=${CHUNK_MIB}M conv=fsync status=none; t1=$(now)
DD_W=$(mbps "$t0" "$t1"); rm -f "$WORK/dd-copy"; sync

# Upload: reserve, PATCH chunks 4 at a time, commit (fsync + rename).
t0=$(now)
ID=$(curl -fsS "${A[@]}" -H 'Content-Type: application/json' \
  -d "{\"key\":\"bench\",\"version\":\"1\",\"cacheSize\":$BYTES}" "$API/_apis/artifactcache/caches" \
  | json 'JSON.parse(d).cacheId')
export API ID TOKEN CHUNK_MIB
ls "$WORK/chunks" | xargs -P 4 -I{} bash -c '
  f="$0/chunks/$1"; i=$((10#${1#c})); s=$((i * (CHUNK_MIB << 20))); n=$(stat -c %s "$f")
  curl -fsS -X PATCH -T "$f" -H "Authorization: Bearer $TOKEN" \
    -H "Content-Type: application/octet-stream" -H "Content-Range: bytes $s-$((s + n - 1))/*" \
    "$API/_apis/artifactcache/caches/$ID"' "$WORK" {}
curl -fsS "${A[@]}" -H 'Content-Type: application/json' -d "{\"size\":$BYTES}" \
  "$API/_apis/artifactcache/caches/$ID"
t1=$(now)
UP=$(mbps "$t0" "$t1")

# Download: lookup, GET the signed URL into a file on the same disk, fsync.
URL=$(curl -fsS "${A[@]}" "$API/_apis/artifactcache/cache?keys=bench&version=1" \
  | json 'JSON.parse(d).archiveLocation')
BLOB="$WORK/state/cache/blobs/$ID"
sync
t0=$(now); dd if="$BLOB" of="$WORK/dd-read" bs=${CHUNK_MIB}M conv=fsync status=none; t1=$(now)
DD_R=$(mbps "$t0" "$t1"); rm -f "$WORK/dd-read"; sync
t0=$(now); curl -fsS -o "$WORK/down" "$URL"; sync "$WORK/down"; t1=$(now)
DOWN=$(mbps "$t0" "$t1")
cmp -s "$WORK/src" "$WORK/down" || { echo "downloaded data differs" >&2; exit 1; }

ratio() { node -e "console.log((100*$1/$2).toFixed(0))"; }
printf '%-10s %10s %10s %7s\n' "" "jobcell" "dd" "ratio"
printf '%-10s %7s MB/s %5s MB/s %6s%%\n' upload "$UP" "$DD_W" "$(ratio "$UP" "$DD_W")"
printf '%-10s %7s MB/s %5s MB/s %6s%%\n' download "$DOWN" "$DD_R" "$(ratio "$DOWN" "$DD_R")"
