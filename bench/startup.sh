#!/usr/bin/env bash
# Start-up cost of one sandbox running /bin/true, rootless: jobcell (default seccomp and unconfined) vs bubblewrap
# with an equivalent read-only root, and vs rootless runc/crun on a bundle binding the same host dirs (each only
# when it works on this host; otherwise the reason is printed).
#
#   bench/startup.sh [JOBCELL_BINARY]     default: the static release binary (built when missing, see README)
#
# Env: BENCH_RUNS (default 100), BENCH_WARMUP (default 10), BENCH_USER (default jctest: the user to re-exec as
# when started as root), BENCH_OUT (default bench/results: JSON exports and the summary table).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUNS=${BENCH_RUNS:-100}
WARMUP=${BENCH_WARMUP:-10}
BUSER=${BENCH_USER:-jctest}

STATIC=$ROOT/target/x86_64-unknown-linux-gnu/release/jobcell
if [ "$(id -u)" = 0 ]; then
    # Rootless only: re-run as an unprivileged user with its own copy of the binary and a writable output dir.
    JC=${1:-$STATIC}
    if [ ! -x "$JC" ]; then
        # The shipped form: glibc and libseccomp linked in, not position-independent (no start-up relocation).
        (cd "$ROOT" && LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
            RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
            cargo build --release --target x86_64-unknown-linux-gnu --bins)
    fi
    if ! id -u "$BUSER" >/dev/null 2>&1; then
        useradd -m -s /bin/bash "$BUSER"
    fi
    uid=$(id -u "$BUSER")
    for f in /etc/subuid /etc/subgid; do
        touch "$f"
        if ! grep -qE "^($BUSER|$uid):" "$f"; then
            start=100000 # the first 65536-block above 100000 that no other line uses
            while awk -F: -v s="$start" '$2 + 0 < s + 65536 && $2 + $3 > s { found = 1 } END { exit !found }' "$f"; do
                start=$((start + 65536))
            done
            echo "$BUSER:$start:65536" >>"$f"
        fi
    done
    STAGE=$(mktemp -d /tmp/jobcell-bench.XXXXXX)
    chmod 755 "$STAGE"
    cp "$JC" "$STAGE/jobcell"
    cp "$0" "$STAGE/startup.sh"
    chmod 755 "$STAGE/jobcell" "$STAGE/startup.sh"
    OUT=${BENCH_OUT:-$ROOT/bench/results}
    mkdir -p "$OUT"
    chown -R "$BUSER:" "$STAGE"
    rc=0
    setpriv --reuid "$BUSER" --regid "$BUSER" --init-groups --reset-env \
        env HOME="$(getent passwd "$BUSER" | cut -d: -f6)" USER="$BUSER" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        BENCH_RUNS="$RUNS" BENCH_WARMUP="$WARMUP" BENCH_OUT="$STAGE/out" \
        bash "$STAGE/startup.sh" "$STAGE/jobcell" || rc=$?
    cp -r "$STAGE/out/." "$OUT/" 2>/dev/null || true
    rm -rf "$STAGE"
    [ "$rc" = 0 ] && echo "results copied to $OUT"
    exit "$rc"
fi

JC=${1:-$STATIC}
OUT=${BENCH_OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
command -v hyperfine >/dev/null || { echo "bench: hyperfine not installed (apt-get install hyperfine)" >&2; exit 1; }
[ -x "$JC" ] || { echo "bench: $JC not found; build with cargo build --release" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jobcell-bench-work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Host system dirs jobcell binds by default: /usr, /bin, /sbin, /lib* (symlinks into /usr on merged-/usr hosts).
sysdirs() {
    for d in /bin /sbin /lib /lib32 /lib64 /libx32; do
        [ -e "$d" ] && echo "$d"
    done
}

NAMES=()
CMDS=()
add() {
    NAMES+=("$1")
    CMDS+=("$2")
}
skip() { printf 'skipped %-22s %s\n' "$1:" "$2"; }

# --- jobcell
if "$JC" run -- /bin/true 2>"$WORK/jc.err"; then
    add jobcell "$JC run -- /bin/true"
    add jobcell-unconfined "$JC run --seccomp unconfined -- /bin/true"
    # The same id mapping bubblewrap makes (one id, no setuid helpers), still with the default seccomp filter.
    add jobcell-single "$JC run --userns single -- /bin/true"
else
    echo "bench: '$JC run -- /bin/true' fails here:" >&2
    cat "$WORK/jc.err" >&2
    exit 1
fi
grep -q 'warning' "$WORK/jc.err" && echo "note: jobcell warns here: $(grep -m1 warning "$WORK/jc.err")"

# --- bubblewrap with the same read-only root
if command -v bwrap >/dev/null; then
    B="bwrap --unshare-all --die-with-parent --new-session --ro-bind /usr /usr"
    for d in $(sysdirs); do
        if [ -L "$d" ]; then
            B="$B --symlink $(readlink "$d") $d"
        else
            B="$B --ro-bind $d $d"
        fi
    done
    B="$B --proc /proc --dev /dev --tmpfs /tmp --tmpfs /workspace --chdir /workspace /bin/true"
    if err=$($B 2>&1); then
        add bwrap "$B"
    else
        skip bwrap "$B failed: $err"
    fi
else
    skip bwrap "not installed"
fi

# --- runc / crun, rootless, on a bundle whose rootfs binds the same dirs
make_bundle() { # $1 = runtime (runc|crun), prints the bundle dir or fails
    local rt=$1 b=$WORK/bundle-$1
    mkdir -p "$b/rootfs"
    (cd "$b" && "$rt" spec --rootless >/dev/null 2>&1) || return 1
    for d in usr $(sysdirs | sed 's|^/||') tmp workspace proc dev; do
        [ -L "/$d" ] && { ln -sf "$(readlink "/$d")" "$b/rootfs/$d"; continue; }
        mkdir -p "$b/rootfs/$d"
    done
    python3 - "$b/config.json" <<'EOF' || return 1
import json, os, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c["process"]["cwd"] = "/workspace"
c["root"] = {"path": "rootfs", "readonly": True}
mounts = [m for m in c["mounts"] if m["destination"] not in ("/sys",)]
binds = []
for d in ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]:
    if os.path.exists(d) and not os.path.islink(d):
        binds.append({"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro", "nosuid", "nodev"]})
for t in ["/tmp", "/workspace"]:
    mounts.append({"destination": t, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=100m"]})
c["mounts"] = mounts + binds
# runc/crun rootless: no network namespace setup beyond a new one with lo
ns = c["linux"].get("namespaces", [])
if not any(n["type"] == "network" for n in ns):
    ns.append({"type": "network"})
c["linux"]["namespaces"] = ns
json.dump(c, open(p, "w"), indent=1)
EOF
    echo "$b"
}

for rt in runc crun; do
    if ! command -v "$rt" >/dev/null; then
        skip "$rt" "not installed"
        continue
    fi
    if ! command -v python3 >/dev/null; then
        skip "$rt" "python3 needed to edit config.json"
        continue
    fi
    if ! b=$(make_bundle "$rt"); then
        skip "$rt" "'$rt spec --rootless' failed"
        continue
    fi
    state="$WORK/state-$rt"
    mkdir -p "$state"
    # crun refuses hybrid cgroup hosts unless told not to manage cgroups (jobcell does not manage v1 either)
    extra=""
    if [ "$rt" = crun ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
        extra="--cgroup-manager=disabled"
    fi
    if err=$("$rt" --root "$state" $extra run --bundle "$b" "bench-$rt-probe" 2>&1); then
        # a foreground "run" deletes its container on exit, so one id serves every run
        add "$rt" "$rt --root $state $extra run --bundle $b bench-$rt"
    else
        skip "$rt" "$(echo "$err" | tr '\n' ' ' | cut -c1-240)"
    fi
done

echo
echo "host: $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -r), user $(id -un) (uid $(id -u))"
args=()
for i in "${!NAMES[@]}"; do
    args+=(--command-name "${NAMES[$i]}" "${CMDS[$i]}")
done
hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --export-json "$OUT/startup.json" "${args[@]}"

echo
python3 - "$OUT/startup.json" <<'EOF' | tee "$OUT/startup.txt"
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ms = lambda x: x * 1000.0
print("%-20s %10s %10s %10s %10s" % ("command", "median ms", "mean ms", "min ms", "stddev"))
for name, x in r.items():
    print("%-20s %10.2f %10.2f %10.2f %10.2f" % (name, ms(x["median"]), ms(x["mean"]), ms(x["min"]), ms(x["stddev"] or 0)))
if "bwrap" in r:
    b = r["bwrap"]["median"]
    print()
    for name in r:
        if name != "bwrap":
            print("ratio %s/bwrap (median): %.2f" % (name, r[name]["median"] / b))
EOF
