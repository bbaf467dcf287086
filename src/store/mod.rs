//! Persistent state of the embedded API server: the [`Store`] trait (jobs, executions,
//! variables, logs, audit events, secrets metadata) and its SQLite implementation.
//!
//! Every state transition of a job is decided here, inside one database transaction, so the
//! HTTP layer and the local executor share exactly the same rules (state machine, leases,
//! ownership by orchestrator id).

mod sqlite;

pub use sqlite::SqliteStore;

use serde::Serialize;
use serde_json::Value;

/// Status of a job or of one of its executions.
///
/// Jobs move queued → claimed → running → completed | failed | timeout | cancelled.
/// Executions share the names; an execution whose job was released is `released`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Claimed,
    Running,
    Completed,
    Failed,
    Timeout,
    Cancelled,
    Released,
}

impl Status {
    /// The wire and database name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Claimed => "claimed",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
            Status::Released => "released",
        }
    }

    /// Parses a status name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "claimed" => Status::Claimed,
            "running" => Status::Running,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "timeout" => Status::Timeout,
            "cancelled" => Status::Cancelled,
            "released" => Status::Released,
            _ => return None,
        })
    }

    /// True for the statuses a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed
                | Status::Failed
                | Status::Timeout
                | Status::Cancelled
                | Status::Released
        )
    }

    /// True while an execution may use its tokens (claimed or running).
    pub fn is_active(self) -> bool {
        matches!(self, Status::Claimed | Status::Running)
    }
}

/// Errors of the store. The HTTP layer maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not found")]
    NotFound,
    /// The job is held by another orchestrator.
    #[error("job held by another orchestrator")]
    Forbidden,
    /// The caller's lease on the job is gone (expired, released, cancelled).
    #[error("lease lost")]
    LeaseLost,
    /// The requested transition is not allowed from the current state.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("store lock poisoned")]
    Poisoned,
    #[error("migration failed: {0}")]
    Migration(String),
}

/// A job as submitted, already validated by the API layer.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub user_id: String,
    /// The normalized submission (command or script, limits, env, input, ...).
    pub spec: Value,
    pub priority: i64,
    /// Unix milliseconds.
    pub scheduled_for: i64,
    pub created_at: i64,
}

/// A job row.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub user_id: String,
    pub spec: Value,
    pub status: Status,
    pub priority: i64,
    pub scheduled_for: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub orchestrator_id: Option<String>,
    pub execution_id: Option<String>,
    pub lease_expires_at: Option<i64>,
}

/// An execution row: one attempt of a job under one claim.
#[derive(Debug, Clone)]
pub struct ExecutionRow {
    pub id: String,
    pub job_id: String,
    pub orchestrator_id: String,
    pub status: Status,
    pub exit_code: Option<i64>,
    pub outcome: Option<Value>,
    pub output: Option<Value>,
    pub condition: Option<bool>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

/// A job handed to a claimant.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: JobRow,
    pub execution_id: String,
    pub lease_expires_at: i64,
}

/// An execution whose tokens are valid (job claimed or running).
#[derive(Debug, Clone)]
pub struct ActiveExecution {
    pub execution_id: String,
    pub job_id: String,
    pub user_id: String,
    pub orchestrator_id: String,
    pub lease_expires_at: i64,
    pub cache_scope: String,
}

/// An execution that just stopped being active, with the reason.
#[derive(Debug, Clone)]
pub struct Ended {
    pub job_id: String,
    pub execution_id: String,
    pub status: Status,
}

/// Result of a completion request.
#[derive(Debug, Clone)]
pub struct Completion {
    pub execution_id: String,
    /// True when the same completion had already been recorded.
    pub repeated: bool,
}

/// One stored log line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    pub seq: i64,
    pub stream: String,
    /// RFC 3339 time.
    pub ts: String,
    pub line: String,
}

/// An audit event to persist.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub ts: i64,
    /// `orchestrator:<id>`, `execution:<id>`, `executor:<id>` or `anonymous`.
    pub actor: String,
    pub user_id: Option<String>,
    pub action: String,
    pub target: String,
    /// `ok` or `denied:<reason>` / `error:<reason>`.
    pub result: String,
    /// Details never sent to clients.
    pub detail: Option<String>,
}

/// A stored audit event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub id: i64,
    pub time: String,
    pub actor: String,
    pub user_id: Option<String>,
    pub action: String,
    pub target: String,
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where audit listing starts.
#[derive(Debug, Clone, Copy)]
pub enum AuditSince {
    /// Events with an id greater than this.
    Id(i64),
    /// Events at or after this unix-millisecond time.
    Time(i64),
}

/// Storage behind the API. Implementations must make each method atomic.
pub trait Store: Send + Sync + 'static {
    /// Inserts a queued job.
    fn create_job(&self, job: &NewJob) -> Result<(), StoreError>;
    /// Requeues expired leases, then claims up to `batch` due jobs for `orchestrator` in one
    /// `BEGIN IMMEDIATE` transaction (priority first, then oldest). Returns the claims and the
    /// executions that expired on the way.
    fn claim_jobs(
        &self,
        orchestrator: &str,
        batch: usize,
        lease_ms: i64,
        now: i64,
    ) -> Result<(Vec<Claimed>, Vec<Ended>), StoreError>;
    /// Renews the lease by the length the claim asked for; `LeaseLost` when it already
    /// expired or the job left claimed/running.
    fn heartbeat(&self, job_id: &str, orchestrator: &str, now: i64) -> Result<i64, StoreError>;
    /// claimed → running (idempotent when already running).
    fn set_running(&self, job_id: &str, orchestrator: &str, now: i64)
        -> Result<String, StoreError>;
    /// Terminal completion by the holder; idempotent for the same status and exit code.
    fn complete(
        &self,
        job_id: &str,
        orchestrator: &str,
        status: Status,
        exit_code: Option<i64>,
        outcome: Option<&Value>,
        now: i64,
    ) -> Result<Completion, StoreError>;
    /// Gives the job back to the queue; returns the execution that ended.
    fn release(&self, job_id: &str, orchestrator: &str, now: i64) -> Result<String, StoreError>;
    /// Cancels a queued or active job; returns the execution that ended, if any.
    fn cancel(&self, job_id: &str, now: i64) -> Result<Option<String>, StoreError>;
    /// Requeues every job whose lease expired before `now`.
    fn requeue_expired(&self, now: i64) -> Result<Vec<Ended>, StoreError>;
    fn get_job(&self, job_id: &str) -> Result<Option<(JobRow, Vec<ExecutionRow>)>, StoreError>;
    fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRow>, StoreError>;
    /// Executions whose tokens are valid right now (for rebuilding registries at start).
    fn active_executions(&self, now: i64) -> Result<Vec<ActiveExecution>, StoreError>;
    fn set_output(&self, execution_id: &str, output: &Value) -> Result<(), StoreError>;
    fn set_condition(&self, execution_id: &str, condition: bool) -> Result<(), StoreError>;
    fn get_variable(&self, user_id: &str, key: &str) -> Result<Option<String>, StoreError>;
    fn set_variable(
        &self,
        user_id: &str,
        key: &str,
        value: &str,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Appends lines in order, assigning consecutive sequence numbers per execution.
    fn append_logs(
        &self,
        execution_id: &str,
        stream: &str,
        lines: &[String],
        now: i64,
    ) -> Result<Vec<LogLine>, StoreError>;
    /// Lines with `seq > after`, oldest first.
    fn logs(
        &self,
        execution_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError>;
    fn audit(&self, rec: &AuditRecord) -> Result<(), StoreError>;
    fn list_audit(&self, since: AuditSince, limit: usize) -> Result<Vec<AuditEvent>, StoreError>;
    /// Number of jobs per status.
    fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Periodic housekeeping (the SQLite store checkpoints its WAL here).
    fn maintenance(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Records where a secret came from (never its value).
    fn record_secret(
        &self,
        name: &str,
        source: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<(), StoreError>;
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats unix milliseconds as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Parses RFC 3339 into unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A fresh random identifier: `prefix` + 32 hex digits (128 random bits).
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}
