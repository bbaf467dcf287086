//! Orchestrator API (`/api/internal/...`): submit, claim, heartbeat, status, complete,
//! release, cancel, get job, audit. Every route needs the orchestrator key and id; each
//! operation and each refusal is audited.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{cache_token, mint_token, Orchestrator, ALL_SCOPES};
use super::error::{ApiError, ApiPath, ApiQuery, JsonBody};
use super::model::JobSpec;
use super::AppState;
use crate::store::{
    new_id, now_ms, parse_rfc3339, rfc3339, ActiveExecution, AuditSince, Claimed, Ended,
    ExecutionRow, JobRow, NewJob, Status,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/internal/jobs", post(submit))
        .route("/api/internal/jobs/claim", post(claim))
        .route("/api/internal/jobs/{job_id}", get(get_job))
        .route("/api/internal/jobs/{job_id}/heartbeat", post(heartbeat))
        .route("/api/internal/jobs/{job_id}/status", put(set_status))
        .route("/api/internal/jobs/{job_id}/complete", post(complete))
        .route("/api/internal/jobs/{job_id}/release", post(release))
        .route("/api/internal/jobs/{job_id}/cancel", post(cancel))
        .route("/api/internal/audit", get(audit))
}

/// Default lease when a claim does not name one.
pub const DEFAULT_LEASE_SECS: i64 = 60;

/// Audits the result of an operation and passes it through.
async fn audited<T>(
    state: &AppState,
    orch: &Orchestrator,
    user_id: Option<&str>,
    action: &str,
    target: &str,
    r: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let res = r.as_ref().map(|_| ());
    if let Err(e) = &r {
        if e.status == StatusCode::FORBIDDEN {
            state.metrics.auth_failure("job_held_by_other");
        }
    }
    state
        .audit_op(&orch.actor(), user_id, action, target, res)
        .await?;
    r
}

async fn submit(
    State(state): State<AppState>,
    orch: Orchestrator,
    JsonBody(spec): JsonBody<JobSpec>,
) -> Result<Response, ApiError> {
    let job_id = new_id("job_");
    let r = async {
        spec.validate()
            .map_err(|d| ApiError::bad_request("invalid_job", "invalid job").detail(d))?;
        let now = now_ms();
        let scheduled_for = spec
            .scheduled_for
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or(now);
        let job = NewJob {
            id: job_id.clone(),
            user_id: spec.user_id.clone(),
            spec: serde_json::to_value(&spec).map_err(|e| ApiError::internal(e.to_string()))?,
            priority: spec.priority.unwrap_or(0),
            scheduled_for,
            created_at: now,
        };
        state.db(move |s| s.create_job(&job)).await
    }
    .await;
    audited(&state, &orch, Some(&spec.user_id), "job.submit", &job_id, r).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"jobId": job_id, "status": "queued"})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimReq {
    batch_size: i64,
    #[serde(default)]
    lease_seconds: Option<i64>,
}

/// Claims jobs for `orchestrator` and registers their executions (shared with the executor).
pub async fn claim_for(
    state: &AppState,
    orchestrator: &str,
    batch: usize,
    lease_secs: i64,
) -> Result<Vec<Claimed>, ApiError> {
    let orch = orchestrator.to_string();
    let (claimed, ended) = state
        .db(move |s| s.claim_jobs(&orch, batch, lease_secs * 1000, now_ms()))
        .await?;
    state.executions_ended(&ended);
    for c in &claimed {
        state.registry.insert(ActiveExecution {
            execution_id: c.execution_id.clone(),
            job_id: c.job.id.clone(),
            user_id: c.job.user_id.clone(),
            orchestrator_id: orchestrator.to_string(),
            lease_expires_at: c.lease_expires_at,
            cache_scope: c
                .job
                .spec
                .get("cacheScope")
                .and_then(Value::as_str)
                .unwrap_or(&c.job.user_id)
                .to_string(),
        });
    }
    state.metrics.claims(claimed.len() as u64);
    Ok(claimed)
}

async fn claim(
    State(state): State<AppState>,
    orch: Orchestrator,
    JsonBody(req): JsonBody<ClaimReq>,
) -> Result<Json<Value>, ApiError> {
    let r = async {
        if !(1..=50).contains(&req.batch_size) {
            return Err(ApiError::bad_request(
                "invalid_batch_size",
                "batchSize must be 1-50",
            ));
        }
        let lease = req.lease_seconds.unwrap_or(DEFAULT_LEASE_SECS);
        if !(10..=600).contains(&lease) {
            return Err(ApiError::bad_request(
                "invalid_lease_seconds",
                "leaseSeconds must be 10-600",
            ));
        }
        let claimed = claim_for(&state, &orch.id, req.batch_size as usize, lease).await?;
        let mut jobs = Vec::with_capacity(claimed.len());
        for c in &claimed {
            let (token, _) = mint_token(&state.secrets, &c.execution_id, &c.job.id, ALL_SCOPES)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            jobs.push(json!({
                "jobId": c.job.id,
                "executionId": c.execution_id,
                "job": c.job.spec,
                "executionToken": token,
                "cacheToken": cache_token(&state.secrets, &c.job.id, &c.execution_id),
                "lease": {"expiresAt": rfc3339(c.lease_expires_at)},
            }));
        }
        Ok(jobs)
    }
    .await;
    let target = match &r {
        Ok(j) => format!("{} jobs", j.len()),
        Err(_) => "-".to_string(),
    };
    let jobs = audited(&state, &orch, None, "job.claim", &target, r).await?;
    Ok(Json(json!({"jobs": jobs})))
}

async fn heartbeat(
    State(state): State<AppState>,
    orch: Orchestrator,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let r = heartbeat_for(&state, &orch.id, &job_id).await;
    let exp = audited(&state, &orch, None, "job.heartbeat", &job_id, r).await?;
    Ok(Json(json!({"lease": {"expiresAt": rfc3339(exp)}})))
}

/// Renews the lease of `job_id` held by `orchestrator` (shared with the executor).
pub async fn heartbeat_for(
    state: &AppState,
    orchestrator: &str,
    job_id: &str,
) -> Result<i64, ApiError> {
    let (o, j) = (orchestrator.to_string(), job_id.to_string());
    let res = state
        .db(move |s| {
            let r = s.heartbeat(&j, &o, now_ms());
            let exec = s
                .get_job(&j)
                .ok()
                .flatten()
                .and_then(|(job, _)| job.execution_id);
            Ok((r, exec))
        })
        .await?;
    match res {
        (Ok(exp), Some(exec)) => {
            state.registry.renew(&exec, exp);
            Ok(exp)
        }
        (Ok(exp), None) => Ok(exp),
        (Err(e), _) => {
            // An expired lease found on access: make sure its tokens are dead now.
            state.resync_job(job_id).await;
            Err(e.into())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusReq {
    status: String,
}

async fn set_status(
    State(state): State<AppState>,
    orch: Orchestrator,
    ApiPath(job_id): ApiPath<String>,
    JsonBody(req): JsonBody<StatusReq>,
) -> Result<Json<Value>, ApiError> {
    let r = async {
        if req.status != "running" {
            return Err(ApiError::bad_request(
                "invalid_status",
                "status must be running (use complete for terminal states)",
            ));
        }
        set_running_for(&state, &orch.id, &job_id).await
    }
    .await;
    audited(&state, &orch, None, "job.status.running", &job_id, r).await?;
    Ok(Json(json!({"jobId": job_id, "status": "running"})))
}

/// claimed → running for the holder (shared with the executor).
pub async fn set_running_for(
    state: &AppState,
    orchestrator: &str,
    job_id: &str,
) -> Result<String, ApiError> {
    let (o, j) = (orchestrator.to_string(), job_id.to_string());
    let r = state.db(move |s| s.set_running(&j, &o, now_ms())).await;
    if r.is_err() {
        state.resync_job(job_id).await;
    }
    r
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CompleteReq {
    status: String,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    outcome: Option<Value>,
}

async fn complete(
    State(state): State<AppState>,
    orch: Orchestrator,
    ApiPath(job_id): ApiPath<String>,
    JsonBody(req): JsonBody<CompleteReq>,
) -> Result<Json<Value>, ApiError> {
    let r = async {
        let status = match Status::parse(&req.status) {
            Some(s @ (Status::Completed | Status::Failed | Status::Timeout)) => s,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_status",
                    "status must be completed, failed or timeout",
                ))
            }
        };
        if req.outcome.as_ref().is_some_and(|o| !o.is_object()) {
            return Err(ApiError::bad_request(
                "invalid_outcome",
                "outcome must be an object",
            ));
        }
        complete_for(
            &state,
            &orch.id,
            &job_id,
            status,
            req.exit_code,
            req.outcome,
        )
        .await
    }
    .await;
    audited(&state, &orch, None, "job.complete", &job_id, r).await?;
    Ok(Json(json!({"jobId": job_id, "status": req.status})))
}

/// Terminal completion by the holder (shared with the executor).
pub async fn complete_for(
    state: &AppState,
    orchestrator: &str,
    job_id: &str,
    status: Status,
    exit_code: Option<i64>,
    outcome: Option<Value>,
) -> Result<(), ApiError> {
    let (o, j) = (orchestrator.to_string(), job_id.to_string());
    let r = state
        .db(move |s| s.complete(&j, &o, status, exit_code, outcome.as_ref(), now_ms()))
        .await;
    match r {
        Ok(c) => {
            if !c.repeated {
                state.executions_ended(&[Ended {
                    job_id: job_id.to_string(),
                    execution_id: c.execution_id,
                    status,
                }]);
            }
            Ok(())
        }
        Err(e) => {
            state.resync_job(job_id).await;
            Err(e)
        }
    }
}

async fn release(
    State(state): State<AppState>,
    orch: Orchestrator,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let r = release_for(&state, &orch.id, &job_id).await;
    audited(&state, &orch, None, "job.release", &job_id, r).await?;
    Ok(Json(json!({"jobId": job_id, "status": "queued"})))
}

/// Gives a held job back to the queue (shared with the executor).
pub async fn release_for(
    state: &AppState,
    orchestrator: &str,
    job_id: &str,
) -> Result<(), ApiError> {
    let (o, j) = (orchestrator.to_string(), job_id.to_string());
    match state.db(move |s| s.release(&j, &o, now_ms())).await {
        Ok(exec) => {
            state.executions_ended(&[Ended {
                job_id: job_id.to_string(),
                execution_id: exec,
                status: Status::Released,
            }]);
            Ok(())
        }
        Err(e) => {
            state.resync_job(job_id).await;
            Err(e)
        }
    }
}

async fn cancel(
    State(state): State<AppState>,
    orch: Orchestrator,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let j = job_id.clone();
    let r = state.db(move |s| s.cancel(&j, now_ms())).await;
    if let Ok(Some(exec)) = &r {
        state.executions_ended(&[Ended {
            job_id: job_id.clone(),
            execution_id: exec.clone(),
            status: Status::Cancelled,
        }]);
    }
    audited(&state, &orch, None, "job.cancel", &job_id, r).await?;
    Ok(Json(json!({"jobId": job_id, "status": "cancelled"})))
}

fn execution_json(e: &ExecutionRow) -> Value {
    json!({
        "executionId": e.id,
        "orchestratorId": e.orchestrator_id,
        "status": e.status,
        "exitCode": e.exit_code,
        "outcome": e.outcome,
        "output": e.output,
        "condition": e.condition,
        "createdAt": rfc3339(e.created_at),
        "startedAt": e.started_at.map(rfc3339),
        "finishedAt": e.finished_at.map(rfc3339),
        "error": e.error,
    })
}

/// JSON view of a job and its executions.
pub fn job_json(j: &JobRow, execs: &[ExecutionRow]) -> Value {
    json!({
        "jobId": j.id,
        "userId": j.user_id,
        "status": j.status,
        "priority": j.priority,
        "createdAt": rfc3339(j.created_at),
        "updatedAt": rfc3339(j.updated_at),
        "scheduledFor": rfc3339(j.scheduled_for),
        "orchestratorId": j.orchestrator_id,
        "executionId": j.execution_id,
        "lease": j.lease_expires_at.map(|t| json!({"expiresAt": rfc3339(t)})),
        "job": j.spec,
        "executions": execs.iter().map(execution_json).collect::<Vec<_>>(),
    })
}

async fn get_job(
    State(state): State<AppState>,
    orch: Orchestrator,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let j = job_id.clone();
    let r = state
        .db(move |s| s.get_job(&j))
        .await
        .and_then(|o| o.ok_or_else(ApiError::not_found));
    let user = r.as_ref().ok().map(|(j, _)| j.user_id.clone());
    let (job, execs) = audited(&state, &orch, user.as_deref(), "job.get", &job_id, r).await?;
    Ok(Json(job_json(&job, &execs)))
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AppState>,
    orch: Orchestrator,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let r = async {
        let since = match q.since.as_deref() {
            None | Some("") => AuditSince::Id(0),
            Some(s) => match s.parse::<i64>() {
                Ok(id) => AuditSince::Id(id),
                Err(_) => AuditSince::Time(parse_rfc3339(s).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_since",
                        "since must be an event id or RFC 3339 time",
                    )
                })?),
            },
        };
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        state.db(move |s| s.list_audit(since, limit)).await
    }
    .await;
    let events = audited(&state, &orch, None, "audit.list", "audit", r).await?;
    Ok(Json(json!({"events": events})))
}
