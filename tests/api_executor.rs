//! End to end through the local executor, rootless: `jobcell serve --executor local` as an
//! unprivileged user (when the test runs as root it drops to `$JOBCELL_TEST_USER`, default
//! `jc`, with setpriv), a `sh` job using `jobcell ctl` over the bind-mounted API socket,
//! a timeout, a cancel, and SIGTERM releasing a running job.

use std::time::{Duration, Instant};

use jobcell::ctl::http;
use serde_json::{json, Value};

mod serve_common;
use serve_common::{start, Server};

impl Server {
    fn submit(&self, body: Value) -> String {
        let (st, v) = self.call("POST", "/api/internal/jobs", Some(body));
        assert_eq!(st, 201, "{v}");
        v["jobId"].as_str().unwrap().to_string()
    }

    fn wait_status(&self, job: &str, want: &[&str], secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, v) = self.call("GET", &format!("/api/internal/jobs/{job}"), None);
            if want.contains(&v["status"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "job stuck: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

const SCRIPT: &str = r#"set -e
jobcell ctl input
jobcell ctl var set greeting "hello world"
v=$(jobcell ctl var get greeting)
echo "got $v"
jobcell ctl log "via api"
echo "to stderr" >&2
if jobcell ctl var get missing; then echo "missing was set"; exit 3; fi
test "$JOBCELL_API" = unix:/run/jobcell/api.sock
fresh=$(jobcell ctl token refresh)
test -n "$fresh"
JOBCELL_TOKEN=$fresh jobcell ctl condition true
if JOBCELL_TOKEN=forged jobcell ctl condition false 2>/dev/null; then echo "forged token accepted"; exit 4; fi
jobcell ctl output "{\"greeting\": \"$v\", \"input\": $(jobcell ctl input)}"
i=0; while [ $i -lt 200 ]; do echo "line $i"; i=$((i+1)); done
"#;

#[test]
fn sh_job_uses_ctl_and_completes_with_output_and_ordered_logs() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("state"));
    let job = srv.submit(json!({
        "userId": "alice", "script": {"type": "sh", "content": SCRIPT},
        "input": {"n": 7}, "timeoutSeconds": 60
    }));
    let v = srv.wait_status(&job, &["completed", "failed", "timeout"], 60);
    let e = &v["executions"][0];
    let exec = e["executionId"].as_str().unwrap();
    let (_, logs) = srv.call("GET", &format!("/api/logs/{exec}"), None);
    assert_eq!(v["status"], "completed", "{v}\n{logs}");
    assert!(e["orchestratorId"].as_str().unwrap().starts_with("local-"));
    assert_eq!(e["exitCode"], 0);
    assert_eq!(
        e["output"],
        json!({"greeting": "hello world", "input": {"n": 7}})
    );
    assert_eq!(e["condition"], true);
    assert_eq!(e["outcome"]["exitCode"], 0);
    assert_eq!(e["outcome"]["timedOut"], false);
    let lines = logs["lines"].as_array().unwrap();
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as i64).collect::<Vec<_>>());
    let of = |stream: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|l| l["stream"] == stream)
            .map(|l| l["line"].as_str().unwrap())
            .collect()
    };
    let stdout = of("stdout");
    assert_eq!(stdout[0], r#"{"n":7}"#);
    assert_eq!(stdout[1], "got hello world");
    let numbered: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    assert_eq!(
        stdout[2..],
        numbered.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    assert_eq!(of("api"), ["via api"]);
    assert!(of("stderr").contains(&"to stderr"));
    // The token died with the execution; the variable persists for the owner.
    let (_, audit) = srv.call("GET", "/api/internal/audit?limit=1000", None);
    let ev = audit["events"].as_array().unwrap();
    assert!(ev
        .iter()
        .any(|e| e["action"] == "variable.write" && e["userId"] == "alice" && e["result"] == "ok"));
}

#[test]
fn timeout_cancel_and_sigterm_release() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(&dir.path().join("state"));
    let slow = srv.submit(json!({"userId": "u", "command": ["sh", "-c", "echo started; sleep 30"], "timeoutSeconds": 2}));
    let v = srv.wait_status(&slow, &["completed", "failed", "timeout"], 40);
    assert_eq!(v["status"], "timeout", "{v}");
    assert_eq!(v["executions"][0]["outcome"]["timedOut"], true);
    let victim =
        srv.submit(json!({"userId": "u", "command": ["sh", "-c", "echo started; sleep 60"]}));
    srv.wait_status(&victim, &["running"], 20);
    let (st, _) = srv.call("POST", &format!("/api/internal/jobs/{victim}/cancel"), None);
    assert_eq!(st, 200);
    std::thread::sleep(Duration::from_millis(500));
    let (_, m) = (
        0,
        http::request(&srv.api, "GET", "/metrics", &[], None).unwrap(),
    );
    let text = String::from_utf8(m.body).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = text;
    while !text.contains("jobcell_sandboxes_running 0") {
        assert!(
            Instant::now() < deadline,
            "sandbox not stopped after cancel"
        );
        std::thread::sleep(Duration::from_millis(200));
        text = String::from_utf8(
            http::request(&srv.api, "GET", "/metrics", &[], None)
                .unwrap()
                .body,
        )
        .unwrap();
    }
    let v = srv.wait_status(&victim, &["cancelled"], 5);
    assert_eq!(v["executions"][0]["status"], "cancelled");
    // SIGTERM with a job running: the executor stops it and gives it back to the queue.
    let held = srv.submit(json!({"userId": "u", "command": ["sh", "-c", "sleep 60"]}));
    srv.wait_status(&held, &["running"], 20);
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let db = rusqlite::Connection::open(dir.path().join("state/jobcell.db")).unwrap();
    let (job_status, exec_status): (String, String) = db
        .query_row(
            "SELECT j.status, e.status FROM jobs j JOIN executions e ON e.job_id = j.id WHERE j.id = ?1",
            [&held],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (job_status.as_str(), exec_status.as_str()),
        ("queued", "released")
    );
}

fn sleepers(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first() == Some(&&b"sleep"[..]) && args.get(1) == Some(&marker.as_bytes())
        })
        .count()
}

#[test]
fn kill_9_of_the_server_kills_its_sandboxes_and_restart_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut srv = start(&state);
    let marker = "4321.5";
    let job = srv.submit(json!({"userId": "u", "command": ["sleep", marker]}));
    srv.wait_status(&job, &["running"], 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleepers(marker) == 0 {
        assert!(Instant::now() < deadline, "sandbox never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(srv.child.id() as i32, libc::SIGKILL) },
        0
    );
    let _ = srv.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleepers(marker) != 0 {
        assert!(
            Instant::now() < deadline,
            "sandbox outlived the killed server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(srv);
    // The restarted executor gives the job back at once (no wait for the 60 s lease) and
    // runs it again under a new execution.
    let srv = start(&state);
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (_, v) = srv.call("GET", &format!("/api/internal/jobs/{job}"), None);
        if v["executions"].as_array().unwrap().len() == 2 && v["status"] == "running" {
            break v;
        }
        assert!(Instant::now() < deadline, "job not rerun: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["executions"][0]["status"], "released");
    let (st, _) = srv.call("POST", &format!("/api/internal/jobs/{job}/cancel"), None);
    assert_eq!(st, 200);
    srv.wait_status(&job, &["cancelled"], 5);
}

/// A job sees its own execution token, and none of the server's master secrets: not in its environment, not in
/// any process's environment it can read, not under /run/jobcell, and the server's state directory is absent.
#[test]
fn no_master_secret_reaches_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let srv = start(&state);
    let probe = format!(
        "env; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null; \
         find /run/jobcell -type f -size -64k -exec cat {{}} + 2>/dev/null | tr -c '[:print:]\\n' '\\n'; \
         test -e {} && echo STATE-DIR-VISIBLE; echo probe-done",
        state.display()
    );
    let job = srv.submit(json!({"userId": "mallory", "command": ["sh", "-c", probe]}));
    let v = srv.wait_status(&job, &["completed", "failed", "timeout"], 60);
    assert_eq!(v["status"], "completed", "{v}");
    let exec = v["executions"][0]["executionId"].as_str().unwrap();
    let (_, logs) = srv.call("GET", &format!("/api/logs/{exec}"), None);
    let seen: String = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap_or("").to_string() + "\n")
        .collect();
    assert!(
        seen.contains("probe-done"),
        "the probe ran to its end: {seen}"
    );
    assert!(
        seen.contains("JOBCELL_TOKEN="),
        "the execution token is there: {seen}"
    );
    assert!(
        !seen.contains("STATE-DIR-VISIBLE"),
        "the server's state directory is visible inside"
    );
    for name in ["internal_api_key", "jwt_secret", "cache_secret"] {
        let secret = std::fs::read_to_string(state.join("secrets").join(name)).unwrap();
        let secret = secret.trim();
        assert!(secret.len() >= 32, "{name} was generated");
        assert!(
            !seen.contains(secret),
            "{name} is visible inside the sandbox"
        );
    }
}
