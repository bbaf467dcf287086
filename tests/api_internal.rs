//! Orchestrator API over HTTP (in-process): auth rules, validation, body limits, claims
//! (order, schedule, atomicity under concurrency), the state machine, ownership (403),
//! leases and their expiry, release, cancel, job view and audit.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use jobcell::store::now_ms;
use serde_json::json;

#[tokio::test]
async fn key_and_orchestrator_id_rules() {
    let s = srv();
    let body = json!({"userId": "u", "command": ["true"]});
    // No key, wrong key, wrong scheme: 401 with the generic body.
    for auth in [None, Some("wrong-key"), Some("")] {
        let r = raw(
            &s.app,
            req("POST", "/api/internal/jobs", auth, Some("o1"), Some(&body)),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(err_code(&r), "unauthorized");
        assert_eq!(r.body["error"]["message"], "unauthorized");
    }
    let basic = Request::builder()
        .method("GET")
        .uri("/api/internal/audit")
        .header("authorization", format!("Basic {}", s.key))
        .header("x-orchestrator-id", "o1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(raw(&s.app, basic).await.status, StatusCode::UNAUTHORIZED);
    // Key with the last character changed.
    let mut bad = s.key.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'a' { 'b' } else { 'a' });
    let r = raw(
        &s.app,
        req("GET", "/api/internal/audit", Some(&bad), Some("o1"), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Orchestrator id missing or malformed: 400.
    let long = "x".repeat(65);
    for orch in [
        None,
        Some("a b"),
        Some(""),
        Some(long.as_str()),
        Some("a/b"),
    ] {
        let r = raw(
            &s.app,
            req(
                "POST",
                "/api/internal/jobs",
                Some(&s.key),
                orch,
                Some(&body),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{orch:?}");
        assert_eq!(err_code(&r), "invalid_orchestrator_id");
    }
    let ok = "A-z_0.9".to_string() + &"x".repeat(57);
    let r = s.o(&ok, "POST", "/api/internal/jobs", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Denials are in the audit log.
    let r = s
        .o("o1", "GET", "/api/internal/audit?limit=1000", None)
        .await;
    let events = r.body["events"].as_array().unwrap();
    let denied = |reason: &str| {
        events
            .iter()
            .filter(|e| e["result"] == format!("denied:{reason}"))
            .count()
    };
    assert!(denied("missing_credentials") >= 2, "{events:?}");
    assert!(denied("bad_key") >= 2);
    assert_eq!(denied("bad_orchestrator_id"), 5);
    assert!(events
        .iter()
        .any(|e| e["action"] == "job.submit" && e["result"] == "ok"));
    for e in events {
        assert!(e["time"].is_string() && e["actor"].is_string() && e["target"].is_string());
    }
    // Failures are counted by reason.
    let m = raw(&s.app, req("GET", "/metrics", None, None, None)).await;
    let text = String::from_utf8(m.raw).unwrap();
    assert!(
        text.contains("jobcell_auth_failures_total{reason=\"bad_key\"} 3"),
        "{text}"
    );
    assert!(text.contains("jobcell_jobs{state=\"queued\"} 1"));
    assert!(text.contains("jobcell_request_duration_seconds_bucket{api=\"internal\""));
}

#[tokio::test]
async fn bodies_malformed_oversized_and_invalid() {
    let s = srv();
    let send = |body: Vec<u8>| {
        Request::builder()
            .method("POST")
            .uri("/api/internal/jobs")
            .header("authorization", format!("Bearer {}", s.key))
            .header("x-orchestrator-id", "o1")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let r = raw(&s.app, send(b"{\"userId\": ".to_vec())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(err_code(&r), "invalid_json");
    // Over 1 MiB: 413 (with a Content-Length and streamed without one).
    let mut big = b"{\"userId\":\"u\",\"command\":[\"true\"],\"input\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend(b"\"}");
    let r = raw(&s.app, send(big.clone())).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err_code(&r), "payload_too_large");
    let stream = futures_util::stream::iter(
        big.chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let chunked = Request::builder()
        .method("POST")
        .uri("/api/internal/jobs")
        .header("authorization", format!("Bearer {}", s.key))
        .header("x-orchestrator-id", "o1")
        .body(Body::from_stream(stream))
        .unwrap();
    assert_eq!(
        raw(&s.app, chunked).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Just under the limit is fine.
    let mut ok = b"{\"userId\":\"u\",\"command\":[\"true\"],\"input\":\"".to_vec();
    ok.extend(std::iter::repeat_n(b'a', (1 << 20) - 100));
    ok.extend(b"\"}");
    assert_eq!(raw(&s.app, send(ok)).await.status, StatusCode::CREATED);
    for bad in [
        json!({"userId": "u"}),
        json!({"userId": "u", "command": ["true"], "script": {"type": "sh", "content": "x"}}),
        json!({"userId": "u", "command": []}),
        json!({"userId": "u", "script": {"type": "ruby", "content": "x"}}),
        json!({"userId": "u", "command": ["true"], "priority": 4}),
        json!({"userId": "u", "command": ["true"], "network": "host"}),
        json!({"userId": "u", "command": ["true"], "scheduledFor": "tomorrow"}),
        json!({"userId": "u", "command": ["true"], "profile": "../etc/passwd"}),
        json!({"userId": "u", "command": ["true"], "env": {"JOBCELL_TOKEN": "x"}}),
        json!({"userId": "u", "command": ["true"], "surprise": 1}),
        json!({"userId": "", "command": ["true"]}),
        json!({"userId": "u", "command": ["true"], "limits": {"memoryMb": 0}}),
    ] {
        let r = s
            .o("o1", "POST", "/api/internal/jobs", Some(bad.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        err_code(&r);
    }
    // Refused bodies are audited.
    let a = s
        .o("o1", "GET", "/api/internal/audit?limit=1000", None)
        .await;
    let ev = a.body["events"].as_array().unwrap();
    let n = |r: &str| {
        ev.iter()
            .filter(|e| e["result"] == r && e["actor"] == "orchestrator:o1")
            .count()
    };
    assert_eq!(n("denied:invalid_json"), 2, "{ev:?}");
    assert_eq!(n("denied:invalid_job"), 11);
    assert_eq!(n("denied:payload_too_large"), 2);
    // Unknown route and method: JSON errors too.
    let r = s.o("o1", "GET", "/api/internal/nope", None).await;
    assert_eq!(
        (r.status, err_code(&r).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = s.o("o1", "DELETE", "/api/internal/jobs", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    err_code(&r);
}

#[tokio::test]
async fn claim_order_schedule_and_limits() {
    let s = srv();
    let low = s
        .submit(json!({"userId": "u", "command": ["a"], "priority": 0}))
        .await;
    let high = s
        .submit(json!({"userId": "u", "command": ["b"], "priority": 3}))
        .await;
    let low2 = s
        .submit(json!({"userId": "u", "command": ["c"], "priority": 0}))
        .await;
    let future = s
        .submit(json!({"userId": "u", "command": ["d"], "priority": 3, "scheduledFor": "2999-01-01T00:00:00Z"}))
        .await;
    let past = s
        .submit(json!({"userId": "u", "command": ["e"], "priority": 1, "scheduledFor": "2000-01-01T00:00:00Z"}))
        .await;
    for bad in [
        json!({"batchSize": 0}),
        json!({"batchSize": 51}),
        json!({"batchSize": 1, "leaseSeconds": 9}),
        json!({"batchSize": 1, "leaseSeconds": 601}),
        json!({}),
    ] {
        let r = s
            .o("o1", "POST", "/api/internal/jobs/claim", Some(bad.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = s
        .o(
            "o1",
            "POST",
            "/api/internal/jobs/claim",
            Some(json!({"batchSize": 50, "leaseSeconds": 600})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: Vec<&str> = r.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [high.as_str(), past.as_str(), low.as_str(), low2.as_str()]
    );
    assert!(!ids.contains(&future.as_str()));
    let j = &r.body["jobs"][0];
    assert_eq!(j["job"]["command"], json!(["b"]));
    // The lease expiry is about leaseSeconds away.
    let exp = jobcell::store::parse_rfc3339(j["lease"]["expiresAt"].as_str().unwrap()).unwrap();
    assert!((exp - now_ms() - 600_000).abs() < 5_000);
    // Tokens: JWT verifies with the server's rules; cache token is the HMAC.
    let claims =
        jobcell::api::auth::verify_token(&s.state.secrets, j["executionToken"].as_str().unwrap())
            .unwrap();
    assert_eq!(claims.job_id, j["jobId"].as_str().unwrap());
    assert_eq!(claims.execution_id, j["executionId"].as_str().unwrap());
    assert_eq!(claims.sub, format!("job:{}", claims.job_id));
    assert_eq!(claims.exp - claims.iat, 7200);
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(s.state.secrets.cache_secret.value.as_bytes())
            .unwrap();
    mac.update(format!("{}:{}", claims.job_id, claims.execution_id).as_bytes());
    assert_eq!(j["cacheToken"], hex::encode(mac.finalize().into_bytes()));
    // Nothing left to claim.
    let r = s
        .o(
            "o2",
            "POST",
            "/api/internal/jobs/claim",
            Some(json!({"batchSize": 5})),
        )
        .await;
    assert_eq!(r.body["jobs"], json!([]));
}

#[tokio::test]
async fn state_machine_ownership_and_idempotence() {
    let s = srv();
    s.submit_simple("u").await;
    let (job, exec, token, _) = s.claim_one("orch-a").await;
    let p = |what: &str| format!("/api/internal/jobs/{job}/{what}");
    // Another orchestrator may not act on it.
    for (m, path, body) in [
        ("POST", p("heartbeat"), None),
        ("PUT", p("status"), Some(json!({"status": "running"}))),
        (
            "POST",
            p("complete"),
            Some(json!({"status": "completed", "exitCode": 0})),
        ),
        ("POST", p("release"), None),
    ] {
        let r = s.o("orch-b", m, &path, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(err_code(&r), "forbidden");
    }
    // claimed -> completed is not a valid transition; running first.
    let r = s
        .o(
            "orch-a",
            "POST",
            &p("complete"),
            Some(json!({"status": "completed", "exitCode": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = s
        .o(
            "orch-a",
            "PUT",
            &p("status"),
            Some(json!({"status": "completed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for _ in 0..2 {
        let r = s
            .o(
                "orch-a",
                "PUT",
                &p("status"),
                Some(json!({"status": "running"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = s.o("orch-a", "POST", &p("heartbeat"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["lease"]["expiresAt"].is_string());
    // Output written by the job shows up in the job view.
    let r = s
        .rt(
            &token,
            "POST",
            &format!("/api/runtime/executions/{exec}/output"),
            Some(json!({"data": {"answer": 42}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let done =
        json!({"status": "completed", "exitCode": 0, "outcome": {"exitCode": 0, "wallMs": 5}});
    let r = s
        .o("orch-a", "POST", &p("complete"), Some(done.clone()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Same completion again: 200. A different terminal status: 409.
    let r = s.o("orch-a", "POST", &p("complete"), Some(done)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .o(
            "orch-a",
            "POST",
            &p("complete"),
            Some(json!({"status": "failed", "exitCode": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = s
        .o(
            "orch-b",
            "POST",
            &p("complete"),
            Some(json!({"status": "completed", "exitCode": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = s.o("orch-a", "POST", &p("heartbeat"), None).await;
    assert_eq!(
        (r.status, err_code(&r).as_str()),
        (StatusCode::CONFLICT, "lease_lost")
    );
    // The token died with the execution.
    let r = s
        .rt(
            &token,
            "GET",
            &format!("/api/runtime/executions/{exec}/input"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Job view.
    let r = s
        .o("orch-b", "GET", &format!("/api/internal/jobs/{job}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "completed");
    let e = &r.body["executions"][0];
    assert_eq!(e["executionId"], exec.as_str());
    assert_eq!(e["status"], "completed");
    assert_eq!(e["exitCode"], 0);
    assert_eq!(e["outcome"]["wallMs"], 5);
    assert_eq!(e["output"], json!({"answer": 42}));
    let r = s
        .o("orch-a", "GET", "/api/internal/jobs/job_doesnotexist", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Cancel after completion conflicts.
    let r = s.o("orch-a", "POST", &p("cancel"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn release_and_cancel_kill_tokens() {
    let s = srv();
    let (job, exec, token) = s.running("u").await;
    let mut ended = s.state.ended.subscribe();
    let r = s
        .o(
            "orch-a",
            "POST",
            &format!("/api/internal/jobs/{job}/release"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(ended.recv().await.unwrap().execution_id, exec);
    let r = s
        .rt(
            &token,
            "GET",
            &format!("/api/runtime/executions/{exec}/input"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"]["message"], "execution no longer active");
    let r = s
        .o("orch-a", "GET", &format!("/api/internal/jobs/{job}"), None)
        .await;
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["executions"][0]["status"], "released");
    // Claimed again with a new execution, then cancelled by any orchestrator.
    let (job2, exec2, token2, _) = s.claim_one("orch-b").await;
    assert_eq!(job2, job);
    assert_ne!(exec2, exec);
    let r = s
        .o(
            "orch-c",
            "POST",
            &format!("/api/internal/jobs/{job}/cancel"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let ev = ended.recv().await.unwrap();
    assert_eq!(
        (ev.execution_id.as_str(), ev.status.as_str()),
        (exec2.as_str(), "cancelled")
    );
    let r = s
        .rt(
            &token2,
            "GET",
            &format!("/api/runtime/executions/{exec2}/input"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .o(
            "orch-b",
            "POST",
            &format!("/api/internal/jobs/{job}/complete"),
            Some(json!({"status": "completed", "exitCode": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Cancelling again is idempotent; a queued job cancels without an execution.
    let r = s
        .o(
            "orch-c",
            "POST",
            &format!("/api/internal/jobs/{job}/cancel"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let q = s.submit_simple("u").await;
    let r = s
        .o(
            "orch-c",
            "POST",
            &format!("/api/internal/jobs/{q}/cancel"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .o(
            "orch-a",
            "POST",
            "/api/internal/jobs/claim",
            Some(json!({"batchSize": 5})),
        )
        .await;
    assert_eq!(r.body["jobs"], json!([]));
}

fn expire_lease(s: &Srv, job: &str) {
    let n = s
        .sql()
        .execute(
            "UPDATE jobs SET lease_expires_at = ?2 WHERE id = ?1",
            rusqlite::params![job, now_ms() - 1],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn lease_expiry_requeues_marks_failed_and_kills_tokens() {
    let s = srv();
    // Found by the sweeper.
    let (job, exec, token) = s.running("u").await;
    expire_lease(&s, &job);
    assert_eq!(s.state.sweep().await.unwrap(), 1);
    let r = s
        .rt(
            &token,
            "GET",
            &format!("/api/runtime/executions/{exec}/input"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .o("orch-a", "GET", &format!("/api/internal/jobs/{job}"), None)
        .await;
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["executions"][0]["status"], "failed");
    assert_eq!(r.body["executions"][0]["error"], "lease expired");
    let r = s
        .o(
            "orch-a",
            "POST",
            &format!("/api/internal/jobs/{job}/heartbeat"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Found on access (heartbeat), before any sweep.
    let (job2, exec2, token2, _) = s.claim_one("orch-b").await;
    assert_eq!(job2, job);
    expire_lease(&s, &job);
    let r = s
        .o(
            "orch-b",
            "POST",
            &format!("/api/internal/jobs/{job}/heartbeat"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, err_code(&r).as_str()),
        (StatusCode::CONFLICT, "lease_lost")
    );
    let r = s
        .rt(
            &token2,
            "GET",
            &format!("/api/runtime/executions/{exec2}/input"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .o(
            "orch-b",
            "POST",
            &format!("/api/internal/jobs/{job}/complete"),
            Some(json!({"status": "completed", "exitCode": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Found by a claim.
    let (_, _, _, _) = s.claim_one("orch-c").await;
    expire_lease(&s, &job);
    let (job3, _, _, _) = s.claim_one("orch-d").await;
    assert_eq!(job3, job);
    let r = s
        .o("orch-a", "GET", &format!("/api/internal/jobs/{job}"), None)
        .await;
    let statuses: Vec<&str> = r.body["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "failed", "failed", "claimed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_claimers_each_job_exactly_once() {
    let s = srv();
    let mut all = std::collections::HashSet::new();
    for i in 0..200 {
        let id = s
            .submit(json!({"userId": format!("u{}", i % 7), "command": ["true"]}))
            .await;
        all.insert(id);
    }
    let mut tasks = Vec::new();
    for c in 0..8 {
        let app = s.app.clone();
        let key = s.key.clone();
        tasks.push(tokio::spawn(async move {
            let orch = format!("claimer-{c}");
            let mut got = Vec::new();
            loop {
                let body = json!({"batchSize": 1 + (c % 5), "leaseSeconds": 60});
                let r = raw(
                    &app,
                    req(
                        "POST",
                        "/api/internal/jobs/claim",
                        Some(&key),
                        Some(&orch),
                        Some(&body),
                    ),
                )
                .await;
                assert_eq!(r.status, StatusCode::OK);
                let jobs = r.body["jobs"].as_array().unwrap().clone();
                if jobs.is_empty() {
                    return got;
                }
                got.extend(
                    jobs.iter()
                        .map(|j| j["jobId"].as_str().unwrap().to_string()),
                );
            }
        }));
    }
    let mut claimed = Vec::new();
    let mut per_claimer = Vec::new();
    for t in tasks {
        let g = t.await.unwrap();
        per_claimer.push(g.len());
        claimed.extend(g);
    }
    assert_eq!(claimed.len(), 200, "per claimer {per_claimer:?}");
    let unique: std::collections::HashSet<_> = claimed.into_iter().collect();
    assert_eq!(unique, all);
    let counts = s.state.store.job_counts().unwrap();
    assert_eq!(counts, vec![("claimed".to_string(), 200)]);
    let r = s.o("x", "GET", "/healthz", None).await;
    assert_eq!(r.body, json!({"status": "ok"}));
}

#[tokio::test]
async fn sandbox_socket_router_serves_the_runtime_api_only() {
    let s = srv();
    let (_job, exec, tok) = s.running("u").await;
    let sb = jobcell::api::sandbox_router(s.state.clone());
    let r = raw(
        &sb,
        req("GET", "/api/internal/audit", Some(&s.key), Some("o"), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = raw(
        &sb,
        req(
            "POST",
            "/api/internal/jobs/claim",
            Some(&s.key),
            Some("o"),
            Some(&json!({"batchSize": 1})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = raw(
        &sb,
        req(
            "GET",
            &format!("/api/logs/{exec}"),
            Some(&s.key),
            Some("o"),
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = raw(
        &sb,
        req(
            "GET",
            &format!("/api/runtime/executions/{exec}/input"),
            Some(&tok),
            None,
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn refused_queries_paths_and_methods_get_json_and_an_audit_row_naming_the_checked_caller() {
    let s = srv();
    let (_job, exec, tok) = s.running("alice").await;
    // A query axum cannot deserialise: JSON 400, not axum's plain-text rejection.
    let r = s
        .o("orch-1", "GET", "/api/internal/audit?limit=lots", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(err_code(&r), "invalid_query");
    assert!(
        !String::from_utf8_lossy(&r.raw).contains("deserialize"),
        "{:?}",
        r.raw
    );
    // A malformed body on a runtime route, with a forged X-Orchestrator-ID: the audit row names the
    // execution whose token was checked, never the header.
    let bad = raw(
        &s.app,
        axum::http::Request::builder()
            .method("POST")
            .uri(format!("/api/runtime/executions/{exec}/output"))
            .header("authorization", format!("Bearer {tok}"))
            .header("x-orchestrator-id", "forged")
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{not json"))
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // 405 is JSON on both routers.
    for app in [s.app.clone(), jobcell::api::sandbox_router(s.state.clone())] {
        let r = raw(&app, req("DELETE", "/healthz", None, None, None)).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(err_code(&r), "method_not_allowed");
    }
    let a = s
        .o("orch-1", "GET", "/api/internal/audit?limit=1000", None)
        .await;
    let ev = a.body["events"].as_array().unwrap();
    assert!(
        ev.iter()
            .any(|e| e["actor"] == "orchestrator:orch-1" && e["result"] == "denied:invalid_query"),
        "{ev:#?}"
    );
    let body_row = ev
        .iter()
        .find(|e| {
            e["result"]
                .as_str()
                .is_some_and(|r| r.starts_with("denied:"))
                && e["target"].as_str().is_some_and(|a| a.contains("/output"))
        })
        .unwrap_or_else(|| panic!("no audit row for the refused body: {ev:#?}"));
    assert_eq!(body_row["actor"], format!("execution:{exec}"), "{body_row}");
    assert_eq!(body_row["userId"], "alice", "{body_row}");
    assert!(
        !ev.iter().any(|e| e["actor"] == "orchestrator:forged"),
        "{ev:#?}"
    );
}
