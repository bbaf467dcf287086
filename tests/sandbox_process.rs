//! Processes and signals: pid namespace, pid 1, fork limits, exit statuses, timeouts, signal forwarding, cleanup.

mod sandbox_common;
use sandbox_common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn only_sandbox_pids_are_visible() {
    let o = sh("cd /proc && ls -d [0-9]* | sort -n | tr '\\n' ' '; echo; echo $$; cat /proc/1/cmdline | tr '\\0' ' '");
    assert_code(&o, 0);
    let l = o.lines();
    let pids: Vec<u32> = l[0]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // pid 1 (the reaper), the shell, and ls (maybe also its pipe partners): a handful, all small
    assert_eq!(pids[0], 1, "{o:#?}");
    assert!(pids.len() <= 5, "too many pids visible: {pids:?}");
    assert!(pids.iter().all(|p| *p < 50), "host pids visible: {pids:?}");
    assert_eq!(l[1], "2", "the payload is pid 2 under the reaper");
    // host processes (e.g. this test runner) are not visible by name either
    let o = sh("cat /proc/[0-9]*/comm 2>/dev/null | sort -u | tr '\\n' ' '");
    assert_code(&o, 0);
    for host in ["systemd", "init", "cargo", "sshd", "bash"] {
        assert!(
            !o.stdout.split_whitespace().any(|c| c == host),
            "host process {host} visible: {}",
            o.stdout
        );
    }
}

#[test]
fn pid1_cannot_be_killed_or_traced_by_the_payload() {
    let o = probe(&["kill1"]);
    // whatever kill() returns, the sandbox must survive and report the payload's own status
    assert_code(&o, 0);
    assert_eq!(o.get("pid1_alive"), "yes", "{o:#?}");
    assert_eq!(o.get("ptrace_attach"), "EPERM");
    assert_eq!(o.get("ptrace_seize"), "EPERM");
    assert!(
        ["EACCES", "EPERM"].contains(&o.get("pid1_mem")),
        "/proc/1/mem readable: {}",
        o.get("pid1_mem")
    );
    // the payload's exit status still comes through after the attempts
    let bind = probe_bind();
    let o = sh_with(
        &["--bind", &bind],
        "trap '' TERM INT; /probe/probe kill1 >/dev/null; exit 7",
    );
    assert_code(&o, 7);
}

#[test]
fn pid1_is_not_dumpable() {
    let o = sh("cat /proc/1/environ >/dev/null 2>&1 && echo readable || echo denied; ls -l /proc/1/exe 2>&1 | grep -c 'Permission denied'");
    assert_code(&o, 0);
    assert_eq!(o.lines(), vec!["denied", "1"], "{o:#?}");
}

#[test]
fn fork_bomb_is_bounded_by_pids() {
    let o = probe_with(&["--pids", "20"], &["fork", "1000"]);
    assert_code(&o, 0);
    let n: u32 = o.get("forked").parse().unwrap();
    assert_eq!(o.get("errno"), "EAGAIN", "{o:#?}");
    assert!((5..20).contains(&n), "forked {n} children under --pids 20");
    assert_eq!(
        o.get("fork_after"),
        "0",
        "the sandbox recovers once children exit"
    );
    // a shell fork loop, too: the sandbox survives and reports the payload's status
    let o = sh_with(&["--pids", "20"], "(i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done) 2>/dev/null; echo survived; exit 4");
    assert_code(&o, 4);
    assert!(o.stdout.contains("survived"));
}

#[test]
fn exit_statuses() {
    assert_code(&run(&[], &["true"]), 0);
    assert_code(&run(&[], &["sh", "-c", "exit 3"]), 3);
    assert_code(&run(&[], &["sh", "-c", "exit 255"]), 255);
    let o = run(&[], &["sh", "-c", "kill -9 $$"]);
    assert_code(&o, 137);
    let o = run(&[], &["sh", "-c", "kill -SEGV $$"]);
    assert_code(&o, 139);
    // 126: not executable; 127: not found; both with a message naming the command
    let o = run(&[], &["/etc/passwd"]);
    assert_code(&o, 126);
    assert!(
        o.errors().iter().any(|l| l.contains("/etc/passwd")),
        "{o:#?}"
    );
    let o = run(&[], &["/workspace"]);
    assert_code(&o, 126);
    let o = run(&[], &["no-such-command-xyz"]);
    assert_code(&o, 127);
    assert!(
        o.errors().iter().any(|l| l.contains("no-such-command-xyz")),
        "{o:#?}"
    );
    let o = run(&[], &["/no/such/path"]);
    assert_code(&o, 127);
}

#[test]
fn timeout_gives_124_quickly() {
    let start = Instant::now();
    let o = run(&["--timeout", "1s"], &["sleep", "10"]);
    assert_code(&o, 124);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "took {:?}",
        start.elapsed()
    );
    // a payload that ignores SIGTERM is killed too
    let start = Instant::now();
    let o = run(
        &["--timeout", "1s"],
        &["sh", "-c", "trap '' TERM; sleep 10 & wait; sleep 10"],
    );
    assert_code(&o, 124);
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
}

/// Starts `jobcell run OPTS -- sh -c SCRIPT` where SCRIPT runs `/probe/probe sleep 1000 MARKER`, and returns once
/// that probe runs (so jobcell's signal forwarding is surely in place).
fn spawn_running(opts: &[&str], script: &str, marker: &str) -> std::process::Child {
    let bind = probe_bind();
    let mut a = vec!["run", "--bind", bind.as_str()];
    a.extend_from_slice(opts);
    a.extend_from_slice(&["--", "sh", "-c", script]);
    let child = command(&a).spawn().unwrap();
    let start = Instant::now();
    while !pids_with(marker)
        .iter()
        .any(|(_, c)| c.starts_with("/probe/probe"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "payload never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn sigterm_to_jobcell_is_forwarded_to_the_payload() {
    for (sig, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
    ] {
        let marker = unique("sig");
        let child = spawn_running(
            &[],
            &format!("exec /probe/probe sleep 1000 {marker}"),
            &marker,
        );
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = finish(child, Duration::from_secs(10));
        assert_code(&o, code);
        let left = wait_gone(&marker, Duration::from_secs(2));
        assert!(left.is_empty(), "left after signal {sig}: {left:?}");
    }
}

#[test]
fn payload_handling_sigterm_exits_with_its_own_status() {
    let marker = unique("trap");
    let child = spawn_running(
        &[],
        &format!("trap 'exit 42' TERM; /probe/probe sleep 1000 {marker} & wait"),
        &marker,
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = finish(child, Duration::from_secs(10));
    assert_code(&o, 42);
    let left = wait_gone(&marker, Duration::from_secs(2));
    assert!(left.is_empty(), "the payload's child outlived it: {left:?}");
}

#[test]
fn sigkill_of_jobcell_leaves_no_process() {
    let marker = unique("kill9");
    // the payload, a background child and a setsid'd grandchild all carry the marker
    let child = spawn_running(
        &[],
        &format!("/probe/probe sleep 1000 {marker} & setsid /probe/probe sleep 1000 {marker} & exec /probe/probe sleep 1000 {marker}"),
        &marker,
    );
    let start = Instant::now();
    while pids_with(&marker)
        .iter()
        .filter(|(_, c)| c.starts_with("/probe/probe"))
        .count()
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "payload never started: {:?}",
            pids_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let o = finish(child, Duration::from_secs(5));
    assert_eq!(o.code, 1000 + libc::SIGKILL);
    let left = wait_gone(&marker, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "processes left after SIGKILL of jobcell: {left:?}"
    );
}

#[test]
fn background_children_die_with_the_payload() {
    let marker = unique("orphan");
    let start = Instant::now();
    let bind = probe_bind();
    let o = sh_with(
        &["--bind", &bind],
        &format!("/probe/probe sleep 1000 {marker} & sleep 1000 & exit 0"),
    );
    assert_code(&o, 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "jobcell waited for background children: {:?}",
        start.elapsed()
    );
    let left = wait_gone(&marker, Duration::from_secs(2));
    assert!(left.is_empty(), "orphans left: {left:?}");
    // a daemonized (double-forked, setsid) child dies too
    let marker = unique("daemon");
    let o = sh_with(
        &["--bind", &bind],
        &format!("setsid sh -c '/probe/probe sleep 1000 {marker} &' ; exit 0"),
    );
    assert_code(&o, 0);
    let left = wait_gone(&marker, Duration::from_secs(2));
    assert!(left.is_empty(), "daemon left: {left:?}");
}

#[test]
fn payload_runs_in_its_own_session_without_controlling_tty() {
    let o = sh("ps -o sid= -p $$ 2>/dev/null || cut -d' ' -f6 /proc/$$/stat; cat /proc/$$/stat | cut -d' ' -f7");
    assert_code(&o, 0);
    let l = o.lines();
    assert_eq!(
        l[0].trim(),
        "2",
        "payload (pid 2) must lead its own session: {o:#?}"
    );
    assert_eq!(l[1].trim(), "0", "no controlling tty: {o:#?}");
}

#[test]
fn rlimits_are_set() {
    let limit = |o: &Out, name: &str| -> String {
        let l = o
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}: {o:#?}"));
        l[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let o = run(&[], &["cat", "/proc/self/limits"]);
    assert_code(&o, 0);
    assert_eq!(limit(&o, "Max core file size"), "0 0");
    assert_eq!(limit(&o, "Max open files"), "1024 1024");
    assert_eq!(
        limit(&o, "Max processes"),
        "100 100",
        "RLIMIT_NPROC = --pids (default 100)"
    );
    assert_eq!(
        limit(&o, "Max file size"),
        "1073741824 1073741824",
        "RLIMIT_FSIZE = 1G"
    );
    assert_eq!(
        limit(&o, "Max data size"),
        "536870912 536870912",
        "RLIMIT_DATA = --memory (default 512M)"
    );
    let o = run(
        &["--pids", "33", "--memory", "256M"],
        &["cat", "/proc/self/limits"],
    );
    assert_code(&o, 0);
    assert_eq!(limit(&o, "Max processes"), "33 33");
    assert_eq!(limit(&o, "Max data size"), "268435456 268435456");
}

#[test]
fn stdin_stdout_stderr_pass_through() {
    use std::io::Write;
    let mut child = command(&["run", "--", "sh", "-c", "cat; echo err >&2"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin\n")
        .unwrap();
    let o = finish(child, DEADLINE);
    assert_code(&o, 0);
    assert_eq!(o.stdout, "from-stdin\n");
    assert_eq!(o.errors(), vec!["err"]);
}

fn outcome(opts: &[&str], cmd: &[&str]) -> (Out, serde_json::Value) {
    let d = tempdir();
    let p = d.path().join("outcome.json");
    let ps = p.display().to_string();
    let mut a = vec!["--json", ps.as_str()];
    a.extend_from_slice(opts);
    let o = run(&a, cmd);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("no outcome file: {e}; {o:#?}"));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("outcome is not JSON ({e}): {text}"));
    (o, v)
}

#[test]
fn json_outcome_has_the_contract_fields() {
    let (o, v) = outcome(&[], &["sh", "-c", "echo hi; exit 3"]);
    assert_code(&o, 3);
    assert_eq!(o.stdout, "hi\n", "the outcome goes to the file, not stdout");
    assert_eq!(v["exitCode"], 3, "{v}");
    assert!(v["signal"].is_null(), "{v}");
    assert_eq!(v["timedOut"], false, "{v}");
    assert!(
        v["oomKilled"].is_boolean() || v["oomKilled"].is_null(),
        "{v}"
    );
    assert!(v["wallMs"].is_u64(), "{v}");
    assert!(v["wallMs"].as_u64().unwrap() < 10_000, "{v}");
    assert!(v["cpuUsec"].is_u64(), "{v}");
    for k in ["memoryPeakBytes", "pidsPeak"] {
        assert!(v[k].is_u64() || v[k].is_null(), "{k}: {v}");
    }
    let l = &v["limits"];
    assert!(l["enforced"].is_boolean(), "{v}");
    assert!(l["mechanism"].is_string(), "{v}");
    if l["enforced"] == false {
        assert_eq!(l["mechanism"], "rlimit", "{v}");
        assert!(
            l["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "not enforced needs a reason: {v}"
        );
        assert!(
            o.stderr.contains("warning"),
            "not enforced must warn on stderr: {o:#?}"
        );
        assert!(v["oomKilled"].is_null() || v["oomKilled"] == false);
    } else {
        assert_eq!(l["mechanism"], "cgroup2", "{v}");
        assert!(l["reason"].is_null(), "{v}");
    }
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    for k in [
        "exitCode",
        "signal",
        "timedOut",
        "oomKilled",
        "wallMs",
        "cpuUsec",
        "memoryPeakBytes",
        "pidsPeak",
        "limits",
    ] {
        assert!(keys.iter().any(|x| *x == k), "missing {k}: {v}");
    }
}

#[test]
fn json_outcome_for_signal_and_timeout() {
    let (o, v) = outcome(&[], &["sh", "-c", "kill -9 $$"]);
    assert_code(&o, 137);
    assert_eq!(v["exitCode"], 137, "{v}");
    assert_eq!(v["signal"], 9, "{v}");
    assert_eq!(v["timedOut"], false);
    let (o, v) = outcome(&["--timeout", "1s"], &["sleep", "10"]);
    assert_code(&o, 124);
    assert_eq!(v["exitCode"], 124, "{v}");
    assert_eq!(v["timedOut"], true, "{v}");
    let w = v["wallMs"].as_u64().unwrap();
    assert!((900..5000).contains(&w), "wallMs {w}");
}

#[test]
fn json_outcome_to_stdout() {
    let o = run(&["--json", "-"], &["sh", "-c", "echo payload"]);
    assert_code(&o, 0);
    let l = o.lines();
    assert_eq!(l.len(), 2, "{o:#?}");
    assert_eq!(l[0], "payload");
    let v: serde_json::Value = serde_json::from_str(l[1]).unwrap();
    assert_eq!(v["exitCode"], 0);
}

#[test]
fn cpu_time_is_accounted() {
    let (o, v) = outcome(
        &[],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
        ],
    );
    assert_code(&o, 0);
    let cpu = v["cpuUsec"].as_u64().unwrap();
    assert!(
        cpu > 50_000,
        "a busy loop of {}ms wall used {cpu}us CPU: {v}",
        v["wallMs"]
    );
}

#[test]
fn no_file_descriptors_leak_into_the_payload() {
    // the payload shell's own fds, listed by a child (so the listing's directory fd is not counted)
    let o = run(&[], &["sh", "-c", "ls /proc/$$/fd"]);
    assert_code(&o, 0);
    let mut fds: Vec<u32> = o
        .stdout
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, vec![0, 1, 2], "fds leaked into the payload: {o:#?}");
    let o = run(&[], &["sh", "-c", "ls -l /proc/$$/fd | grep -o -- '-> .*'"]);
    assert!(
        !o.stdout.contains("jobcell") && !o.stdout.contains("cgroup"),
        "{o:#?}"
    );
}

#[test]
fn the_jobcell_binary_cannot_be_overwritten_through_proc() {
    // CVE-2019-5736 style: the payload gets a handle on the runtime's binary through /proc/1/exe (pid 1 is
    // jobcell's reaper) and writes it, now or once it is no longer busy. Opening it for writing alone
    // cannot fail the test (ETXTBSY while jobcell runs, EACCES on a root-owned binary even when pid 1 is
    // reachable), so what is checked is the handle. pid 1 runs as the job user; what keeps /proc/1/exe from
    // the job is that pid 1 is not dumpable and holds capabilities the job lacks (the ptrace access check
    // /proc applies). readlink and open for reading must be denied, while the same on a process of the job
    // itself (a sleep it started) must work, or the test would show nothing about pid 1.
    let bind = probe_bind();
    for user in ["1000:1000", "0:0"] {
        let o = sh_with(
            &["--user", user, "--bind", &bind],
            "sleep 10 & s=$!; echo child=$s; \
             for p in 1 $s; do \
               r=$(readlink -v /proc/$p/exe 2>&1) && echo \"readlink_$p=ok\" || echo \"readlink_$p=$r\"; \
               r=$( (exec 3</proc/$p/exe) 2>&1) && echo \"open_$p=ok\" || echo \"open_$p=$r\"; \
             done; /probe/probe write /proc/1/exe; kill $s",
        );
        assert_code(&o, 0);
        let child = o.get("child");
        for k in ["readlink", "open"] {
            assert_eq!(
                o.get(&format!("{k}_{child}")),
                "ok",
                "--user {user}: control: {o:#?}"
            );
            assert!(
                o.get(&format!("{k}_1")).ends_with("Permission denied"),
                "--user {user}: {k} /proc/1/exe: the job reached pid 1's executable: {o:#?}"
            );
        }
        assert_eq!(
            o.get("write"),
            "EACCES",
            "--user {user}: write /proc/1/exe: {o:#?}"
        );
    }
}

#[test]
fn sysv_ipc_of_the_host_is_invisible() {
    // a SysV shared memory segment created on the host must not be listed in the sandbox's IPC namespace
    // SAFETY: plain shmget/shmctl on a private segment that is removed below.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o644) };
    assert!(id >= 0, "shmget on the host failed");
    let o = run(&[], &["cat", "/proc/sysvipc/shm"]);
    // SAFETY: removing the segment created above.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    assert_code(&o, 0);
    let ids: Vec<&str> = o
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(
        !ids.contains(&id.to_string().as_str()),
        "host shm segment {id} visible inside: {o:#?}"
    );
    assert!(ids.is_empty(), "{o:#?}");
}
