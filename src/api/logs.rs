//! Execution logs: appending (ordered per execution, persisted before publication), the
//! in-memory hub that fans live lines out, `GET /api/logs/{executionId}` and the WebSocket
//! `/api/logs/{executionId}/ws` (backlog, live lines, then `{"end": true, "status"}`).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::auth::{bearer, exec_auth, key_matches};
use super::error::{ApiError, ApiPath, ApiQuery};
use super::AppState;
use crate::store::{now_ms, LogLine};

/// Longest stored line (longer lines are split by the executor, truncated here).
pub const MAX_LINE: usize = 16 * 1024;
const PAGE: usize = 1000;

/// A live log event.
#[derive(Debug, Clone)]
pub enum LogEvent {
    Line(LogLine),
    End(String),
}

/// Fan-out of live log lines per execution.
#[derive(Default)]
pub struct LogHub {
    chans: Mutex<HashMap<String, broadcast::Sender<LogEvent>>>,
}

impl LogHub {
    pub fn subscribe(&self, execution_id: &str) -> Option<broadcast::Receiver<LogEvent>> {
        let mut m = self.chans.lock().ok()?;
        Some(
            m.entry(execution_id.to_string())
                .or_insert_with(|| broadcast::channel(1024).0)
                .subscribe(),
        )
    }

    pub fn publish(&self, execution_id: &str, lines: &[LogLine]) {
        let Ok(m) = self.chans.lock() else { return };
        if let Some(tx) = m.get(execution_id) {
            for l in lines {
                let _ = tx.send(LogEvent::Line(l.clone()));
            }
        }
    }

    /// Forgets the channel of `execution_id` when nobody listens any more.
    pub fn gc(&self, execution_id: &str) {
        let Ok(mut m) = self.chans.lock() else { return };
        if m.get(execution_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            m.remove(execution_id);
        }
    }

    /// Sends the end marker and forgets the channel.
    pub fn end(&self, execution_id: &str, status: &str) {
        let Ok(mut m) = self.chans.lock() else { return };
        if let Some(tx) = m.remove(execution_id) {
            let _ = tx.send(LogEvent::End(status.to_string()));
        }
    }
}

/// Stores lines of one stream in order, then publishes them. Returns how many were stored.
pub async fn append(
    state: &AppState,
    execution_id: &str,
    stream: &'static str,
    lines: Vec<String>,
) -> Result<usize, ApiError> {
    if lines.is_empty() {
        return Ok(0);
    }
    let lines: Vec<String> = lines
        .into_iter()
        .map(|mut l| {
            if l.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                l.truncate(cut);
            }
            l
        })
        .collect();
    let e = execution_id.to_string();
    let stored = state
        .db(move |s| s.append_logs(&e, stream, &lines, now_ms()))
        .await?;
    state.logs.publish(execution_id, &stored);
    Ok(stored.len())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/logs/{exec}", get(get_logs))
        .route("/api/logs/{exec}/ws", get(ws))
}

#[derive(Deserialize)]
struct LogsQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

async fn get_logs(
    State(state): State<AppState>,
    orch: super::auth::Orchestrator,
    ApiPath(exec): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    let e = exec.clone();
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(10_000).clamp(1, 10_000);
    let r = async {
        let row = state
            .db({
                let e = e.clone();
                move |s| s.get_execution(&e)
            })
            .await?
            .ok_or_else(ApiError::not_found)?;
        let lines = state.db(move |s| s.logs(&e, after, limit)).await?;
        Ok((row, lines))
    }
    .await;
    let res = r.as_ref().map(|_| ());
    state
        .audit_op(&orch.actor(), None, "logs.read", &exec, res)
        .await?;
    let (row, lines) = r?;
    Ok(Json(json!({
        "executionId": exec,
        "status": row.status,
        "lines": lines,
    })))
}

/// WebSocket: the orchestrator key or that execution's own token.
async fn ws(
    State(state): State<AppState>,
    ApiPath(exec): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = req.into_parts();
    let actor = match bearer(&parts.headers) {
        Some(k) if key_matches(&state.secrets, k) => "orchestrator".to_string(),
        _ => {
            let auth = exec_auth(&state, &parts).await?;
            auth.require_execution(&state, &exec, "logs.stream").await?;
            auth.actor()
        }
    };
    let e = exec.clone();
    let found = state.db(move |s| s.get_execution(&e)).await;
    if let Err(err) = found.and_then(|r| r.ok_or_else(ApiError::not_found)) {
        state
            .audit_op(&actor, None, "logs.stream", &exec, Err(&err))
            .await?;
        return Err(err);
    }
    state
        .audit_op(&actor, None, "logs.stream", &exec, Ok(()))
        .await?;
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
        .await
        .map_err(|_| ApiError::bad_request("websocket_required", "WebSocket upgrade required"))?;
    Ok(upgrade.on_upgrade(move |socket| stream(state, exec, socket)))
}

use axum::extract::FromRequestParts;

async fn send_json(socket: &mut WebSocket, v: &impl serde::Serialize) -> bool {
    match serde_json::to_string(v) {
        Ok(s) => socket.send(Message::Text(s.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// Sends stored lines after `*last` until caught up.
async fn catch_up(state: &AppState, exec: &str, last: &mut i64, socket: &mut WebSocket) -> bool {
    loop {
        let (e, after) = (exec.to_string(), *last);
        let Ok(batch) = state.db(move |s| s.logs(&e, after, PAGE)).await else {
            return false;
        };
        for l in &batch {
            if !send_json(socket, l).await {
                return false;
            }
            *last = l.seq;
        }
        if batch.len() < PAGE {
            return true;
        }
    }
}

async fn current_status(state: &AppState, exec: &str) -> Option<String> {
    let e = exec.to_string();
    let row = state.db(move |s| s.get_execution(&e)).await.ok()??;
    row.status
        .is_terminal()
        .then(|| row.status.as_str().to_string())
}

async fn finish(
    state: &AppState,
    exec: &str,
    last: &mut i64,
    socket: &mut WebSocket,
    status: &str,
) {
    if catch_up(state, exec, last, socket).await {
        let _ = send_json(socket, &json!({"end": true, "status": status})).await;
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn stream(state: AppState, exec: String, socket: WebSocket) {
    stream_inner(&state, &exec, socket).await;
    state.logs.gc(&exec);
}

async fn stream_inner(state: &AppState, exec: &str, mut socket: WebSocket) {
    let (state, exec) = (state.clone(), exec.to_string());
    // Subscribe before reading the backlog so no line falls between the two.
    let Some(mut rx) = state.logs.subscribe(&exec) else {
        return;
    };
    let mut last = 0i64;
    if !catch_up(&state, &exec, &mut last, &mut socket).await {
        return;
    }
    if let Some(status) = current_status(&state, &exec).await {
        finish(&state, &exec, &mut last, &mut socket, &status).await;
        return;
    }
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(LogEvent::Line(l)) => {
                    if l.seq <= last {
                        continue;
                    }
                    if l.seq == last + 1 {
                        if !send_json(&mut socket, &l).await {
                            return;
                        }
                        last = l.seq;
                    } else if !catch_up(&state, &exec, &mut last, &mut socket).await {
                        return;
                    }
                }
                Ok(LogEvent::End(status)) => {
                    finish(&state, &exec, &mut last, &mut socket, &status).await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !catch_up(&state, &exec, &mut last, &mut socket).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let status = current_status(&state, &exec).await.unwrap_or_else(|| "unknown".into());
                    finish(&state, &exec, &mut last, &mut socket, &status).await;
                    return;
                }
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
