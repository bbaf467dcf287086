#!/bin/sh
# podman driving jobcell as its OCI runtime, on a busybox image imported locally (no registry, no network).
#
#   tests/oci/podman.sh            # as root, or as a user with /etc/subuid ranges (rootless podman)
#
# Environment:
#   JOBCELL_BIN        the jobcell binary (default: target/debug/jobcell, then target/release/jobcell)
#   PODMAN_WORKAROUNDS 1 = add the podman flags that avoid known jobcell gaps (--security-opt
#                      no-new-privileges, --cgroupns private) and pass --root explicitly; 0 (default) = none
#   PODMAN_SKIP_CODE   exit code when skipped (default 0; 77 for automake-style harnesses)
#
# Exit: 0 when every check passes; 1 when podman works with runc/crun here but not with jobcell;
# PODMAN_SKIP_CODE, with "SKIP: <why>" on stdout, when podman itself cannot run a container here.
set -u

skip() {
    echo "SKIP: $*"
    exit "${PODMAN_SKIP_CODE:-0}"
}

here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${JOBCELL_BIN:-}
if [ -z "$bin" ]; then
    for b in "$here/target/debug/jobcell" "$here/target/release/jobcell"; do
        [ -x "$b" ] && bin=$b && break
    done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "podman.sh: no jobcell binary (set JOBCELL_BIN or cargo build)" >&2; exit 1; }
command -v podman >/dev/null 2>&1 || skip "podman is not installed (apt-get install -y --no-install-recommends podman)"
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || skip "busybox (static) is not installed"

work=$(mktemp -d /tmp/jcpodman.XXXXXX)
chmod 755 "$work"
image=localhost/jobcell-podman-test:latest
cleanup() {
    podman rm -f -a --filter ancestor=$image >/dev/null 2>&1
    podman rmi -f $image >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# podman runs the runtime inside its own user namespace when rootless (euid 0 there); give jobcell a state
# root it can write either way, and log every invocation for the report.
runtime="$work/jobcell-runtime"
if [ "$(id -u)" = 0 ]; then state_root="$work/state"; else state_root="${XDG_RUNTIME_DIR:-$work}/jobcell-podman-test"; fi
if [ "${PODMAN_WORKAROUNDS:-0}" = 1 ]; then root_flag="--root $state_root"; else root_flag=""; fi
cat >"$runtime" <<EOF
#!/bin/sh
echo "\$*" >> "$work/runtime.log"
exec "$bin" $root_flag "\$@"
EOF
chmod 755 "$runtime"

# A busybox rootfs as an image.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp "$busybox" "$work/rootfs/bin/busybox"
for a in $("$busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$work/rootfs/bin/$a"; done
tar -C "$work/rootfs" -cf "$work/rootfs.tar" . || exit 1
podman import -q "$work/rootfs.tar" $image >/dev/null 2>"$work/import.err" || skip "podman import failed: $(tail -1 "$work/import.err")"

base="--network none"
# Without CAP_SYS_RESOURCE (as in some CI containers) podman's default rlimits cannot be applied by any
# runtime: find the limits the runtime really has and ask for those.
probe="$work/probe-runtime"
cat >"$probe" <<EOF
#!/bin/sh
case "\$*" in *create*) cat /proc/self/limits > "$work/limits" ;; esac
exit 1
EOF
chmod 755 "$probe"
podman --runtime "$probe" run --rm $base $image true >/dev/null 2>&1
if [ -s "$work/limits" ]; then
    nofile=$(awk '/Max open files/ {print $5}' "$work/limits")
    nproc=$(awk '/Max processes/ {print $4}' "$work/limits")
    [ "$nofile" != unlimited ] && base="$base --ulimit nofile=$nofile:$nofile"
    [ "$nproc" != unlimited ] && base="$base --ulimit nproc=$nproc:$nproc"
fi
if [ "${PODMAN_WORKAROUNDS:-0}" = 1 ]; then
    base="$base --security-opt no-new-privileges --cgroupns private"
fi

# Podman must work with some stock runtime here, or the environment is the problem.
peer=""
for r in runc crun; do
    p=$(command -v $r 2>/dev/null || ls /usr/sbin/$r 2>/dev/null || true)
    [ -n "$p" ] || continue
    out=$(timeout 120 podman --runtime "$p" run --rm $base $image /bin/sh -c 'echo ok' 2>&1)
    if [ "$out" = ok ]; then peer=$p; break; fi
    echo "note: podman with $r fails here: $(echo "$out" | tail -1)"
done
[ -n "$peer" ] || skip "podman cannot run a container with runc or crun on this host"
echo "podman $(podman --version | awk '{print $3}') works with $peer; now with jobcell ($bin), $( [ "$(id -u)" = 0 ] && echo root || echo rootless)"
echo "flags: $base"

P="podman --runtime $runtime"
fails=0
check() { # NAME EXPECTED-OUTPUT EXPECTED-STATUS -- podman args...
    name=$1 want=$2 wantrc=$3
    shift 4
    out=$(timeout 120 "$@" 2>"$work/err")
    rc=$?
    if [ "$out" = "$want" ] && [ "$rc" = "$wantrc" ]; then
        echo "PASS $name"
    else
        echo "FAIL $name: status $rc (want $wantrc), output '$out' (want '$want')"
        sed 's/^/    /' "$work/err" | tail -5
        fails=$((fails + 1))
    fi
}

check "run echo" ok 0 -- $P run --rm $base $image /bin/sh -c 'echo ok'
check "exit status" "" 3 -- $P run --rm $base $image /bin/sh -c 'exit 3'
check "stdin" piped 0 -- sh -c "echo piped | $P run --rm -i $base $image cat"
check "tty" yes 0 -- $P run --rm -t $base $image /bin/sh -c 'test -t 1 && printf yes'
cid=$(timeout 120 $P run -d $base $image sleep 300 2>"$work/err")
if [ -n "$cid" ]; then
    echo "PASS run -d"
    check "exec" "exec-ok" 4 -- $P exec "$cid" /bin/sh -c 'echo exec-ok; exit 4'
    check "top" "ok" 0 -- sh -c "$P top $cid | grep -q 'sleep 300' && echo ok"
    check "stop" "$cid" 0 -- $P stop -t 1 "$cid"
    check "rm" "$cid" 0 -- $P rm "$cid"
else
    echo "FAIL run -d: $(tail -1 "$work/err")"
    fails=$((fails + 1))
fi

if [ $fails -gt 0 ]; then
    echo "$fails podman check(s) failed; runtime invocations:"
    sed 's/^/    /' "$work/runtime.log" 2>/dev/null | cut -c1-200 | tail -20
    exit 1
fi
echo "podman: all checks passed"
