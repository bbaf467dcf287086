#!/bin/sh
# create + start + delete of a busybox bundle running /bin/true: jobcell vs runc vs crun, with hyperfine.
#
#   bench/oci.sh [RUNS]        (default 50 runs, 5 warmup; as root or as an unprivileged user)
#
# Every runtime gets the same rootless-style config (a user namespace mapping the caller's uid/gid to 0,
# pid/ipc/uts/mount namespaces, /proc and a /dev tmpfs) and its own --root state directory, so the same
# script measures root and rootless. A peer that cannot run the bundle here is skipped with its error.
# Environment: JOBCELL_BIN (default target/release/jobcell, else target/debug/jobcell), RUNC, CRUN.
set -eu

runs=${1:-50}
here=$(cd "$(dirname "$0")/.." && pwd)
jobcell=${JOBCELL_BIN:-}
if [ -z "$jobcell" ]; then
    for b in "$here/target/release/jobcell" "$here/target/debug/jobcell"; do
        [ -x "$b" ] && jobcell=$b && break
    done
fi
[ -n "$jobcell" ] && [ -x "$jobcell" ] || { echo "bench/oci.sh: no jobcell binary (cargo build --release or set JOBCELL_BIN)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "bench/oci.sh: hyperfine is not installed (apt-get install hyperfine)" >&2; exit 1; }
busybox=$(command -v busybox) || { echo "bench/oci.sh: busybox is not installed" >&2; exit 1; }
find_bin() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
runc=${RUNC:-$(find_bin runc)}
crun=${CRUN:-$(find_bin crun)}

work=$(mktemp -d /tmp/jcbench.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/bundle/rootfs/bin" "$work/bundle/rootfs/proc" "$work/bundle/rootfs/dev"
cp "$busybox" "$work/bundle/rootfs/bin/busybox"
ln -s busybox "$work/bundle/rootfs/bin/true"
uid=$(id -u)
gid=$(id -g)
cat >"$work/bundle/config.json" <<EOF
{
  "ociVersion": "1.0.2",
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "bench",
  "process": {
    "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "env": ["PATH=/bin"], "cwd": "/",
    "noNewPrivileges": true,
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
  },
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}],
    "uidMappings": [{"containerID": 0, "hostID": $uid, "size": 1}],
    "gidMappings": [{"containerID": 0, "hostID": $gid, "size": 1}]
  }
}
EOF

# One create+start+delete; delete --force because /bin/true may not have exited yet (all three accept it).
cycle() { # NAME BIN [GLOBAL-FLAGS...]
    name=$1 b=$2
    shift 2
    echo "$b $* --root $work/root-$name create -b $work/bundle c >/dev/null && $b $* --root $work/root-$name start c && $b $* --root $work/root-$name delete --force c"
}

names="" cmds=""
add() { # NAME BIN
    [ -n "$2" ] || { echo "skip $1: not installed"; return; }
    c=$(cycle "$1" "$2")
    if err=$(sh -c "$c" 2>&1 </dev/null); then
        names="$names $1"
        printf '%s\n' "$c" >>"$work/cmds"
        echo "$1: $2 ($("$2" --version 2>/dev/null | head -1))"
    else
        echo "skip $1: $2 fails here: $(printf '%s' "$err" | tail -1)"
    fi
}
: >"$work/cmds"
add jobcell "$jobcell"
add runc "$runc"
add crun "$crun"
[ -s "$work/cmds" ] || { echo "nothing to benchmark" >&2; exit 1; }
echo "as $(id -un) (uid $uid), $(nproc) cpus, $(uname -r); $runs runs, 5 warmup"

set --
for n in $names; do set -- "$@" -n "$n"; done
while IFS= read -r c; do set -- "$@" "$c"; done <"$work/cmds"
hyperfine --warmup 5 --runs "$runs" --export-json "$work/result.json" --style basic "$@"

python3 - "$work/result.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
med = {x["command"]: x["median"] for x in r}
base = med.get("jobcell")
print()
print("%-8s %12s %12s %16s" % ("runtime", "median (ms)", "mean (ms)", "vs jobcell"))
for x in r:
    ratio = "%.2fx" % (x["median"] / base) if base else "-"
    print("%-8s %12.2f %12.2f %16s" % (x["command"], x["median"] * 1000, x["mean"] * 1000, ratio))
EOF
