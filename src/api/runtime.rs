//! Runtime API (`/api/runtime/...`) used from inside a sandbox with the execution's JWT:
//! input, output, context, condition, variables (keyed by the job owner's userId from the
//! store), log lines, token refresh.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{mint_token, ExecAuth};
use super::error::{ApiError, ApiPath, JsonBody};
use super::AppState;
use crate::store::{now_ms, rfc3339};

/// Longest variable key and value, and the most log lines per request.
pub const MAX_VAR_KEY: usize = 256;
pub const MAX_VAR_VALUE: usize = 64 * 1024;
pub const MAX_LOG_LINES: usize = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/runtime/executions/{exec}/input", get(input))
        .route("/api/runtime/executions/{exec}/output", post(output))
        .route("/api/runtime/executions/{exec}/context", get(context))
        .route("/api/runtime/executions/{exec}/condition", post(condition))
        .route(
            "/api/runtime/executions/{exec}/variables/{key}",
            get(var_get).put(var_put),
        )
        .route("/api/runtime/executions/{exec}/logs", post(logs))
        .route("/api/runtime/token/refresh", post(refresh))
}

async fn audited<T>(
    state: &AppState,
    auth: &ExecAuth,
    action: &str,
    target: &str,
    r: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let res = r.as_ref().map(|_| ());
    state
        .audit_op(&auth.actor(), Some(&auth.exec.user_id), action, target, res)
        .await?;
    r
}

async fn input(
    State(state): State<AppState>,
    auth: ExecAuth,
    ApiPath(exec): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(&state, &exec, "input:read", "input.read")
        .await?;
    let job_id = auth.exec.job_id.clone();
    let r = state
        .db(move |s| s.get_job(&job_id))
        .await
        .and_then(|j| j.ok_or_else(ApiError::not_found));
    let (job, _) = audited(&state, &auth, "input.read", &exec, r).await?;
    let data = job.spec.get("input").cloned().unwrap_or(Value::Null);
    Ok(Json(json!({"data": data})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataReq {
    data: Value,
}

async fn output(
    State(state): State<AppState>,
    auth: ExecAuth,
    ApiPath(exec): ApiPath<String>,
    JsonBody(req): JsonBody<DataReq>,
) -> Result<Json<Value>, ApiError> {
    auth.require(&state, &exec, "output:write", "output.write")
        .await?;
    let e = exec.clone();
    let r = state.db(move |s| s.set_output(&e, &req.data)).await;
    audited(&state, &auth, "output.write", &exec, r).await?;
    Ok(Json(json!({"ok": true})))
}

async fn context(
    State(state): State<AppState>,
    auth: ExecAuth,
    ApiPath(exec): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(&state, &exec, "input:read", "context.read")
        .await?;
    audited(&state, &auth, "context.read", &exec, Ok(())).await?;
    Ok(Json(json!({
        "executionId": auth.claims.execution_id,
        "jobId": auth.exec.job_id,
        "userId": auth.exec.user_id,
        "orchestratorId": auth.exec.orchestrator_id,
        "cacheScope": auth.exec.cache_scope,
        "scope": auth.claims.scope,
        "tokenExpiresAt": rfc3339(auth.claims.exp * 1000),
        "leaseExpiresAt": rfc3339(auth.exec.lease_expires_at),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionReq {
    condition: bool,
}

async fn condition(
    State(state): State<AppState>,
    auth: ExecAuth,
    ApiPath(exec): ApiPath<String>,
    JsonBody(req): JsonBody<ConditionReq>,
) -> Result<Json<Value>, ApiError> {
    auth.require(&state, &exec, "condition:write", "condition.write")
        .await?;
    let e = exec.clone();
    let r = state.db(move |s| s.set_condition(&e, req.condition)).await;
    audited(&state, &auth, "condition.write", &exec, r).await?;
    Ok(Json(json!({"ok": true})))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty()
        || key.len() > MAX_VAR_KEY
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
    {
        return Err(ApiError::bad_request("invalid_key", "invalid variable key"));
    }
    Ok(())
}

async fn var_get(
    State(state): State<AppState>,
    auth: ExecAuth,
    ApiPath((exec, key)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    auth.require(&state, &exec, "variables:read", "variable.read")
        .await?;
    let r = async {
        check_key(&key)?;
        let (u, k) = (auth.exec.user_id.clone(), key.clone());
        state
            .db(move |s| s.get_variable(&u, &k))
            .await?
            .ok_or_else(ApiError::not_found)
    }
    .await;
    let value = audited(&state, &auth, "variable.read", &key, r).await?;
    Ok(Json(json!({"key": key, "value": value})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VarReq {
    value: String,
}

async fn var_put(
    State(state): State<AppState>,
    auth: ExecAuth,
    ApiPath((exec, key)): ApiPath<(String, String)>,
    JsonBody(req): JsonBody<VarReq>,
) -> Result<Json<Value>, ApiError> {
    auth.require(&state, &exec, "variables:write", "variable.write")
        .await?;
    let r = async {
        check_key(&key)?;
        if req.value.len() > MAX_VAR_VALUE {
            return Err(ApiError::bad_request(
                "value_too_large",
                "variable value too large",
            ));
        }
        let (u, k) = (auth.exec.user_id.clone(), key.clone());
        state
            .db(move |s| s.set_variable(&u, &k, &req.value, now_ms()))
            .await
    }
    .await;
    audited(&state, &auth, "variable.write", &key, r).await?;
    Ok(Json(json!({"key": key, "ok": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsReq {
    lines: Vec<String>,
}

async fn logs(
    State(state): State<AppState>,
    auth: ExecAuth,
    ApiPath(exec): ApiPath<String>,
    JsonBody(req): JsonBody<LogsReq>,
) -> Result<Json<Value>, ApiError> {
    auth.require(&state, &exec, "logs:write", "logs.write")
        .await?;
    let r = async {
        if req.lines.len() > MAX_LOG_LINES {
            return Err(ApiError::bad_request(
                "too_many_lines",
                "too many log lines",
            ));
        }
        super::logs::append(&state, &exec, "api", req.lines).await
    }
    .await;
    let n = audited(&state, &auth, "logs.write", &exec, r).await?;
    Ok(Json(json!({"accepted": n})))
}

async fn refresh(State(state): State<AppState>, auth: ExecAuth) -> Result<Json<Value>, ApiError> {
    let exec = auth.claims.execution_id.clone();
    let r = mint_token(&state.secrets, &exec, &auth.exec.job_id, &auth.claims.scope)
        .map_err(|e| ApiError::internal(e.to_string()));
    let (token, exp) = audited(&state, &auth, "token.refresh", &exec, r).await?;
    Ok(Json(
        json!({"token": token, "expiresAt": rfc3339(exp * 1000)}),
    ))
}
