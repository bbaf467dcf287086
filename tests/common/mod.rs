//! Shared helpers of the API integration tests: an in-process server over a temporary state
//! directory, request helpers (tower oneshot), and job shortcuts.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use jobcell::api::{router, ApiConfig, AppState};
use jobcell::secrets::Secrets;
use jobcell::store::SqliteStore;
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Srv {
    pub app: Router,
    pub state: AppState,
    pub key: String,
    pub dir: tempfile::TempDir,
}

pub fn srv() -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::load_with(dir.path(), None, |_| None).unwrap();
    let key = secrets.internal_api_key.value.clone();
    let store = SqliteStore::open(dir.path()).unwrap();
    let state = AppState::new(
        Arc::new(store),
        secrets,
        ApiConfig {
            insecure_no_cache_auth: false,
        },
    )
    .unwrap();
    Srv {
        app: router(state.clone()),
        state,
        key,
        dir,
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub raw: Vec<u8>,
}

pub async fn raw(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        body,
        raw: bytes,
    }
}

pub fn req(
    method: &str,
    path: &str,
    auth: Option<&str>,
    orch: Option<&str>,
    body: Option<&Value>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        b = b.header("authorization", format!("Bearer {a}"));
    }
    if let Some(o) = orch {
        b = b.header("x-orchestrator-id", o);
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

impl Srv {
    /// Orchestrator call as `orch`.
    pub async fn o(&self, orch: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
        raw(
            &self.app,
            req(method, path, Some(&self.key), Some(orch), body.as_ref()),
        )
        .await
    }

    /// Runtime call with a token.
    pub async fn rt(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
        raw(
            &self.app,
            req(method, path, Some(token), None, body.as_ref()),
        )
        .await
    }

    pub async fn submit(&self, body: Value) -> String {
        let r = self
            .o("orch-a", "POST", "/api/internal/jobs", Some(body))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(r.body["status"], "queued");
        r.body["jobId"].as_str().unwrap().to_string()
    }

    pub async fn submit_simple(&self, user: &str) -> String {
        self.submit(json!({"userId": user, "command": ["true"], "input": {"n": 1}}))
            .await
    }

    /// Claims one job as `orch`; returns (jobId, executionId, token, full claim).
    pub async fn claim_one(&self, orch: &str) -> (String, String, String, Value) {
        let r = self
            .o(
                orch,
                "POST",
                "/api/internal/jobs/claim",
                Some(json!({"batchSize": 1, "leaseSeconds": 60})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let j = r.body["jobs"][0].clone();
        assert!(j.is_object(), "nothing claimed: {:?}", r.body);
        (
            j["jobId"].as_str().unwrap().into(),
            j["executionId"].as_str().unwrap().into(),
            j["executionToken"].as_str().unwrap().into(),
            j,
        )
    }

    /// Submits and claims a job for `user`, then sets it running.
    pub async fn running(&self, user: &str) -> (String, String, String) {
        self.submit(json!({"userId": user, "command": ["true"], "input": {"user": user}}))
            .await;
        let (job, exec, token, _) = self.claim_one("orch-a").await;
        let r = self
            .o(
                "orch-a",
                "PUT",
                &format!("/api/internal/jobs/{job}/status"),
                Some(json!({"status": "running"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        (job, exec, token)
    }

    pub fn jwt_secret(&self) -> String {
        self.state.secrets.jwt_secret.value.clone()
    }

    /// Opens the database file directly (to move a lease into the past).
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("jobcell.db")).unwrap()
    }
}

/// Asserts the exact error body shape and returns the code.
pub fn err_code(r: &Resp) -> String {
    let e = &r.body["error"];
    assert!(
        e["code"].is_string() && e["message"].is_string(),
        "not an error body: {:?}",
        r.body
    );
    assert_eq!(
        r.body.as_object().unwrap().len(),
        1,
        "extra fields: {:?}",
        r.body
    );
    assert_eq!(
        e.as_object().unwrap().len(),
        2,
        "extra fields: {:?}",
        r.body
    );
    e["code"].as_str().unwrap().to_string()
}
