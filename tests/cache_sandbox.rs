//! The cache from inside a sandbox of the local executor: `jobcell serve --executor local`
//! (rootless; as root the server drops to `$JOBCELL_TEST_USER`, default `jc`) runs an `sh`
//! job whose script finds `ACTIONS_CACHE_URL` and `ACTIONS_RUNTIME_TOKEN` in its
//! environment and, with curl over the sandbox's loopback, reserves, uploads in two chunks,
//! commits, looks up and downloads through the signed URL. A second job of another owner
//! misses the key; a third of the same owner hits it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod serve_common;
use serve_common::{start, Server};

impl Server {
    /// Runs an `sh` job to its end; returns (status, stdout lines).
    fn run(&self, user: &str, script: &str) -> (String, Vec<String>) {
        let (st, v) = self.call(
            "POST",
            "/api/internal/jobs",
            Some(
                json!({"userId": user, "script": {"type": "sh", "content": script},
                        "timeoutSeconds": 60}),
            ),
        );
        assert_eq!(st, 201, "{v}");
        let job = v["jobId"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(90);
        let v = loop {
            let (_, v) = self.call("GET", &format!("/api/internal/jobs/{job}"), None);
            let s = v["status"].as_str().unwrap_or("").to_string();
            if ["completed", "failed", "timeout", "cancelled"].contains(&s.as_str()) {
                break v;
            }
            assert!(Instant::now() < deadline, "job stuck: {v}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let exec = v["executionId"].as_str().unwrap().to_string();
        let (_, logs) = self.call("GET", &format!("/api/logs/{exec}"), None);
        let lines = logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                format!(
                    "{}: {}",
                    l["stream"].as_str().unwrap(),
                    l["line"].as_str().unwrap()
                )
            })
            .collect();
        (v["status"].as_str().unwrap().to_string(), lines)
    }
}

const SAVE_AND_RESTORE: &str = r#"set -eu
test "$ACTIONS_CACHE_URL" = "http://127.0.0.1:8427/"
test ${#ACTIONS_RUNTIME_TOKEN} -eq 64
A="Authorization: Bearer $ACTIONS_RUNTIME_TOKEN"
api="${ACTIONS_CACHE_URL}_apis/artifactcache"
cd /tmp
head -c 300000 /dev/urandom > data
head -c 200000 data > part1; tail -c 100000 data > part2
id=$(curl -fsS -H "$A" -H 'Content-Type: application/json' \
  -d '{"key":"sandbox-key","version":"v1","cacheSize":300000}' "$api/caches" \
  | sed 's/.*"cacheId":\([0-9]*\).*/\1/')
echo "reserved $id"
curl -fsS -X PATCH -H "$A" -H 'Content-Range: bytes 200000-299999/*' --data-binary @part2 "$api/caches/$id"
curl -fsS -X PATCH -H "$A" -H 'Content-Range: bytes 0-199999/*' --data-binary @part1 "$api/caches/$id"
curl -fsS -H "$A" -H 'Content-Type: application/json' -d '{"size":300000}' "$api/caches/$id"
url=$(curl -fsS -H "$A" "$api/cache?keys=sandbox-key&version=v1" \
  | sed 's/.*"archiveLocation":"\([^"]*\)".*/\1/')
echo "location ${url%%\?*}"
curl -fsS -o back "$url"
cmp data back
echo CACHE-ROUNDTRIP-OK
"#;

const LOOKUP: &str = r#"set -eu
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ACTIONS_RUNTIME_TOKEN" \
  "${ACTIONS_CACHE_URL}_apis/artifactcache/cache?keys=sandbox-key&version=v1")
echo "lookup=$code"
"#;

#[test]
fn sandboxed_job_uses_the_cache_over_its_loopback() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED sandboxed_job_uses_the_cache_over_its_loopback: curl is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let s = start(&state);
    let (status, lines) = s.run("alice", SAVE_AND_RESTORE);
    let text = lines.join("\n");
    assert_eq!(status, "completed", "{text}");
    assert!(text.contains("stdout: CACHE-ROUNDTRIP-OK"), "{text}");
    assert!(
        text.contains("stdout: location http://127.0.0.1:8427/_artifacts/"),
        "{text}"
    );
    let (_, lines) = s.run("bob", LOOKUP);
    assert!(lines.iter().any(|l| l == "stdout: lookup=204"), "{lines:?}");
    let (_, lines) = s.run("alice", LOOKUP);
    assert!(lines.iter().any(|l| l == "stdout: lookup=200"), "{lines:?}");
    let (_, audit) = s.call("GET", "/api/internal/audit?limit=1000", None);
    let ev = audit["events"].as_array().unwrap();
    assert!(ev
        .iter()
        .any(|e| e["action"] == "cache.commit" && e["result"] == "ok" && e["userId"] == "alice"));
}
