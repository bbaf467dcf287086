#!/usr/bin/env bash
# The test command of jobcell (README and CI call it).
#
#   tests/run.sh            build (debug), run the unit tests, then the sandbox integration tests
#                           as an unprivileged user: once with a /etc/subuid range, once without
#
# As root (CI on a fresh Debian 12): creates the users jctest (with subuid/subgid ranges) and jctest-nosub (without)
# when missing, copies the binaries to a temp dir they can read, and runs the tests as them with setpriv.
# As a normal user: runs them as yourself; the no-subuid pass then runs as jctest-nosub only when sudo works without
# a password, otherwise it is skipped with a note (CI runs as root and covers it).
#
# Environment: JOBCELL_TEST_VM=1 runs tests/cgroup_limits.rs in the cgroup v2 VM (vagrant/cargo-test, slow; the
#              default as root, 0 turns it off),
#              JOBCELL_TEST_USER (default jctest), JOBCELL_TEST_USER_NOSUB (default jctest-nosub),
#              JOBCELL_TEST_FILTER (passed to every test executable), CARGO (default cargo).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CARGO=${CARGO:-cargo}
TEST_USER=${JOBCELL_TEST_USER:-jctest}
NOSUB_USER=${JOBCELL_TEST_USER_NOSUB:-jctest-nosub}
FILTER=${JOBCELL_TEST_FILTER:-}
FAILED=0

say() { printf '\n==> %s\n' "$*"; }

say "build: cargo build --bins"
"$CARGO" build --bins

say "build test executables: cargo test --no-run"
MSGS=$(mktemp)
trap 'rm -f "$MSGS"' EXIT
"$CARGO" test --no-run --message-format=json >"$MSGS"

# Test executables: "name<TAB>path" for unit tests (lib, bins) and sandbox_* integration tests.
mapfile -t EXES < <(python3 - "$MSGS" <<'EOF' 2>/dev/null || true
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m.get("profile", {}).get("test"):
        continue
    t = m["target"]
    print("%s\t%s\t%s" % ("+".join(t["kind"]), t["name"], m["executable"]))
EOF
)
if [ "${#EXES[@]}" -eq 0 ]; then
    # no python3: a grep/sed fallback over cargo's JSON lines
    mapfile -t EXES < <(grep '"reason":"compiler-artifact"' "$MSGS" | grep -E '"profile":\{[^}]*"test":true' | grep -v '"executable":null' |
        sed -E 's/.*"kind":\["([^"]+)"\].*"name":"([^"]+)".*"executable":"([^"]+)".*/\1\t\2\t\3/; t; d')
fi
UNIT=()
SANDBOX=()
for e in "${EXES[@]}"; do
    IFS=$'\t' read -r kind name path <<<"$e"
    if [ "$kind" = test ]; then
        # every integration test (sandbox_*, cgroup_limits, ...) runs as the unprivileged user
        SANDBOX+=("$name"$'\t'"$path")
    else
        UNIT+=("$name"$'\t'"$path")
    fi
done
[ "${#SANDBOX[@]}" -gt 0 ] || { echo "tests/run.sh: no integration test executables found" >&2; exit 1; }
JOBCELL=$ROOT/target/debug/jobcell

say "unit tests"
for e in "${UNIT[@]}"; do
    IFS=$'\t' read -r name path <<<"$e"
    echo "-- $name [unit] ($path)"
    "$path" ${FILTER:+"$FILTER"} || FAILED=1
done

# run_as USER DIR: runs every sandbox test executable found in DIR as USER (or as ourselves when USER is empty).
run_as() {
    local user=$1 dir=$2 label=$3 e name rc
    for e in "${SANDBOX[@]}"; do
        IFS=$'\t' read -r name _ <<<"$e"
        echo "-- $name [$label]"
        rc=0
        if [ -z "$user" ]; then
            (cd "$dir" && env JOBCELL_BIN="$dir/jobcell" TMPDIR="$dir/tmp" "$dir/$name" ${FILTER:+"$FILTER"}) || rc=$?
        elif [ "$(id -u)" = 0 ]; then
            (cd "$dir" && setpriv --reuid "$user" --regid "$user" --init-groups --reset-env \
                env HOME="$(getent passwd "$user" | cut -d: -f6)" USER="$user" PATH=/usr/local/bin:/usr/bin:/bin \
                JOBCELL_BIN="$dir/jobcell" TMPDIR="$dir/tmp" RUST_BACKTRACE=1 \
                JOBCELL_TEST_HOST_MARKERS="${JOBCELL_TEST_HOST_MARKERS:-}" "$dir/$name" ${FILTER:+"$FILTER"}) || rc=$?
        else
            (cd "$dir" && sudo -n -u "$user" env JOBCELL_BIN="$dir/jobcell" TMPDIR="$dir/tmp" "$dir/$name" ${FILTER:+"$FILTER"}) || rc=$?
        fi
        if [ "$rc" != 0 ]; then
            echo "!! $name [$label] failed (exit $rc)"
            FAILED=1
        fi
    done
}

# stage DIR OWNER: copies jobcell and the sandbox test executables into DIR, owned by OWNER.
stage() {
    local dir=$1 owner=$2 e name path
    mkdir -p "$dir/tmp"
    cp "$JOBCELL" "$dir/jobcell"
    for e in "${SANDBOX[@]}"; do
        IFS=$'\t' read -r name path <<<"$e"
        cp "$path" "$dir/$name"
    done
    chmod 755 "$dir" "$dir"/*
    chmod 1777 "$dir/tmp"
    [ -z "$owner" ] || chown -R "$owner:" "$dir/tmp"
}

ensure_user() {
    local u=$1 want_range=$2
    if ! id -u "$u" >/dev/null 2>&1; then
        useradd -m -s /bin/bash "$u"
    fi
    local uid
    uid=$(id -u "$u")
    if [ "$want_range" = yes ]; then
        for f in /etc/subuid /etc/subgid; do
            touch "$f"
            if ! grep -qE "^($u|$uid):" "$f"; then
                # the first free 65536-block above 100000 that no other line uses
                local start=100000
                while awk -F: -v s="$start" '$2 + 0 < s + 65536 && $2 + $3 > s { found = 1 } END { exit !found }' "$f"; do
                    start=$((start + 65536))
                done
                echo "$u:$start:65536" >>"$f"
            fi
        done
    else
        for f in /etc/subuid /etc/subgid; do
            [ -f "$f" ] && sed -i -E "/^($u|$uid):/d" "$f"
        done
    fi
}

STAGE=$(mktemp -d /tmp/jobcell-tests.XXXXXX)
chmod 755 "$STAGE"
trap 'rm -f "$MSGS"; rm -rf "$STAGE"' EXIT

if [ "$(id -u)" = 0 ]; then
    if ! setpriv --reuid nobody --regid nogroup --clear-groups test -r "$ROOT/seccomp/default.json" 2>/dev/null; then
        echo "note: $ROOT is not readable by other users; tests that read files of the source tree at run time" \
            "(env!(\"CARGO_MANIFEST_DIR\")) will fail as the test users: check out the repository under a readable path"
    fi
    # markers in host places the test users cannot write; sandbox_fs checks they are invisible inside
    MARK=jobcell-host-marker-$$-$RANDOM
    HOST_MARKERS=""
    for d in /home /root /etc /var/tmp /run; do
        if [ -d "$d" ] && echo secret >"$d/$MARK" 2>/dev/null; then
            chmod 644 "$d/$MARK"
            HOST_MARKERS="$HOST_MARKERS:$d/$MARK"
        fi
    done
    export JOBCELL_TEST_HOST_MARKERS=$HOST_MARKERS
    trap 'rm -f "$MSGS"; rm -rf "$STAGE"; for m in ${HOST_MARKERS//:/ }; do rm -f "$m"; done' EXIT
    command -v newuidmap >/dev/null || echo "note: newuidmap/newgidmap missing (apt-get install uidmap): the subuid pass maps a single id too"
    ensure_user "$TEST_USER" yes
    ensure_user "$NOSUB_USER" no
    stage "$STAGE/sub" "$TEST_USER"
    say "sandbox tests as $TEST_USER (uid $(id -u "$TEST_USER"), subuid range: $(grep -E "^$TEST_USER:" /etc/subuid || true))"
    run_as "$TEST_USER" "$STAGE/sub" "subuid"
    stage "$STAGE/nosub" "$NOSUB_USER"
    say "sandbox tests as $NOSUB_USER (uid $(id -u "$NOSUB_USER"), no subuid range: single-id fallback)"
    run_as "$NOSUB_USER" "$STAGE/nosub" "single-id"
else
    stage "$STAGE/me" ""
    say "sandbox tests as $(id -un) (uid $(id -u))"
    run_as "" "$STAGE/me" "$(id -un)"
    if id -u "$NOSUB_USER" >/dev/null 2>&1 && ! grep -qE "^($NOSUB_USER|$(id -u "$NOSUB_USER")):" /etc/subuid 2>/dev/null &&
        sudo -n true 2>/dev/null; then
        stage "$STAGE/nosub" ""
        say "sandbox tests as $NOSUB_USER (no subuid range: single-id fallback)"
        run_as "$NOSUB_USER" "$STAGE/nosub" "single-id"
    else
        echo "note: single-id fallback pass skipped (needs user $NOSUB_USER without a subuid range and passwordless sudo; CI runs it as root)"
    fi
fi

# podman driving jobcell as its runtime (root, and rootless as the test user), when podman is installed.
if command -v podman >/dev/null 2>&1; then
    say "podman with --runtime jobcell"
    if [ "$(id -u)" = 0 ]; then
        JOBCELL_BIN=$JOBCELL sh tests/oci/podman.sh || FAILED=1
        cp tests/oci/podman.sh "$STAGE/sub/podman.sh" && chmod 755 "$STAGE/sub/podman.sh"
        runuser -l "$TEST_USER" -c "cd $STAGE/sub && JOBCELL_BIN=$STAGE/sub/jobcell sh ./podman.sh" || FAILED=1
    else
        JOBCELL_BIN=$JOBCELL sh tests/oci/podman.sh || FAILED=1
    fi
else
    echo "note: podman not installed: the podman check is skipped (apt-get install --no-install-recommends podman)"
fi

# cgroup v2 limits need a host with delegated controllers; the throwaway VM of vagrant/ provides one (slow: qemu TCG).
# Default: on as root (CI; the harness installs qemu and builds the guest), off otherwise.
if [ "$(id -u)" = 0 ]; then VM_DEFAULT=1; else VM_DEFAULT=0; fi
if [ "${JOBCELL_TEST_VM:-$VM_DEFAULT}" = 1 ]; then
    if [ -x vagrant/cargo-test ]; then
        say "cgroup v2 tests in the VM: vagrant/cargo-test --test cgroup_limits"
        vagrant/cargo-test --test cgroup_limits || FAILED=1
    else
        echo "note: JOBCELL_TEST_VM=1 but vagrant/cargo-test is missing"
    fi
else
    echo "note: cgroup v2 limit tests in the VM skipped (set JOBCELL_TEST_VM=1; on this host cgroup_limits only checks the report)"
fi

if [ "$FAILED" != 0 ]; then
    say "FAILED"
    exit 1
fi
say "all tests passed"
