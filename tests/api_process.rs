//! The real `jobcell serve` binary on loopback: secrets generated 0600 and reused across
//! restarts, `kill -9` mid-job then restart (no committed row lost, lease expires, job
//! requeued), graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobcell::ctl::http;
use serde_json::{json, Value};

struct Server {
    child: Child,
    api: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobcell"))
        .args([
            "serve",
            "--executor",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir)
        .env_remove("JOBCELL_INTERNAL_API_KEY")
        .env_remove("INTERNAL_API_KEY")
        .env_remove("JOBCELL_JWT_SECRET")
        .env_remove("JOBCELL_CACHE_SECRET")
        .env("JOBCELL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("addr=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server did not start");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    Server {
        child,
        api: format!("http://{addr}"),
    }
}

fn call(
    srv: &Server,
    auth: &str,
    orch: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let a = format!("Bearer {auth}");
    let mut h = vec![("Authorization", a.as_str())];
    if let Some(o) = orch {
        h.push(("X-Orchestrator-ID", o));
    }
    let b = body.map(|v| serde_json::to_vec(&v).unwrap());
    let r = http::request(&srv.api, method, path, &h, b.as_deref()).unwrap();
    (r.status, r.json().unwrap_or(Value::Null))
}

fn secret(dir: &Path, name: &str) -> String {
    let p = dir.join("secrets").join(name);
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{name}");
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn secrets_persist_and_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let a = start(&state);
    let key = secret(&state, "internal_api_key");
    let jwt = secret(&state, "jwt_secret");
    let cache = secret(&state, "cache_secret");
    assert!(key.len() >= 64 && jwt.len() >= 64 && cache.len() >= 64);
    assert_eq!(
        std::fs::metadata(state.join("secrets"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let (st, _) = call(&a, "nope", Some("o"), "GET", "/api/internal/audit", None);
    assert_eq!(st, 401);
    let mut jobs = Vec::new();
    for i in 0..20 {
        let (st, v) = call(
            &a,
            &key,
            Some("o1"),
            "POST",
            "/api/internal/jobs",
            Some(
                json!({"userId": "u", "command": ["echo", i.to_string()], "priority": if i == 0 { 3 } else { 0 }}),
            ),
        );
        assert_eq!(st, 201);
        jobs.push(v["jobId"].as_str().unwrap().to_string());
    }
    let (st, v) = call(
        &a,
        &key,
        Some("o1"),
        "POST",
        "/api/internal/jobs/claim",
        Some(json!({"batchSize": 1, "leaseSeconds": 10})),
    );
    assert_eq!(st, 200);
    let c = &v["jobs"][0];
    let (job, exec, token) = (
        c["jobId"].as_str().unwrap().to_string(),
        c["executionId"].as_str().unwrap().to_string(),
        c["executionToken"].as_str().unwrap().to_string(),
    );
    assert_eq!(job, jobs[0]);
    assert_eq!(
        call(
            &a,
            &key,
            Some("o1"),
            "PUT",
            &format!("/api/internal/jobs/{job}/status"),
            Some(json!({"status": "running"}))
        )
        .0,
        200
    );
    let rt = |srv: &Server, m: &str, p: &str, b: Option<Value>| {
        call(
            srv,
            &token,
            None,
            m,
            &format!("/api/runtime/executions/{exec}/{p}"),
            b,
        )
    };
    assert_eq!(
        rt(
            &a,
            "POST",
            "output",
            Some(json!({"data": {"partial": true}}))
        )
        .0,
        200
    );
    assert_eq!(
        rt(&a, "PUT", "variables/k", Some(json!({"value": "v1"}))).0,
        200
    );
    assert_eq!(
        rt(&a, "POST", "logs", Some(json!({"lines": ["before crash"]}))).0,
        200
    );

    // kill -9 mid-job, then restart on the same state directory.
    let pid = a.child.id() as i32;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    drop(a);
    let b = start(&state);
    assert_eq!(secret(&state, "internal_api_key"), key);
    assert_eq!(secret(&state, "jwt_secret"), jwt);
    assert_eq!(secret(&state, "cache_secret"), cache);
    // Every committed job is there; the claimed one is still running on its lease and its
    // token still works (same JWT secret, registry rebuilt from the store).
    for (i, j) in jobs.iter().enumerate() {
        let (st, v) = call(
            &b,
            &key,
            Some("o2"),
            "GET",
            &format!("/api/internal/jobs/{j}"),
            None,
        );
        assert_eq!(st, 200);
        assert_eq!(v["job"]["command"][1], i.to_string());
        assert_eq!(v["status"], if i == 0 { "running" } else { "queued" });
    }
    assert_eq!(rt(&b, "GET", "variables/k", None).1["value"], "v1");
    // The lease (10 s) expires without heartbeats: job requeued, execution failed, token dead.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (_, v) = call(
            &b,
            &key,
            Some("o2"),
            "GET",
            &format!("/api/internal/jobs/{job}"),
            None,
        );
        if v["status"] == "queued" {
            break v;
        }
        assert!(Instant::now() < deadline, "lease never expired: {v}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let e = &v["executions"][0];
    assert_eq!(e["status"], "failed");
    assert_eq!(e["error"], "lease expired");
    assert_eq!(e["output"], json!({"partial": true}));
    let (st, v) = rt(&b, "GET", "input", None);
    assert_eq!(st, 401, "{v}");
    let (_, v) = call(
        &b,
        &key,
        Some("o2"),
        "GET",
        &format!("/api/logs/{exec}"),
        None,
    );
    assert_eq!(v["lines"][0]["line"], "before crash");
    let (_, v) = call(
        &b,
        &key,
        Some("o2"),
        "GET",
        "/api/internal/audit?limit=1000",
        None,
    );
    let ev = v["events"].as_array().unwrap();
    assert!(ev
        .iter()
        .any(|e| e["action"] == "lease.expire" && e["target"] == job.as_str()));
    assert!(ev
        .iter()
        .any(|e| e["action"] == "variable.write" && e["result"] == "ok"));
    // It can be claimed again.
    let (_, v) = call(
        &b,
        &key,
        Some("o2"),
        "POST",
        "/api/internal/jobs/claim",
        Some(json!({"batchSize": 1})),
    );
    assert_eq!(v["jobs"][0]["jobId"], job.as_str());
    // Metrics reflect the store.
    let r = http::request(&b.api, "GET", "/metrics", &[], None).unwrap();
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("jobcell_jobs{state=\"queued\"} 19"), "{text}");
    assert!(text.contains("jobcell_jobs{state=\"claimed\"} 1"));

    // SIGTERM: graceful exit with status 0.
    let mut b = b;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(b.child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = b.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn short_env_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jobcell"))
        .args([
            "serve",
            "--executor",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path())
        .env("JOBCELL_JWT_SECRET", "short")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter"));
}

#[test]
fn group_writable_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jobcell"))
        .args([
            "serve",
            "--executor",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(&state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by group or others"));
    assert!(!state.join("secrets").exists());
}
