//! SQLite implementation of [`Store`]: one WAL-mode database file in the state directory,
//! schema migrations in code (tracked with `PRAGMA user_version`) applied when opened.

use super::*;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;

/// Ordered schema migrations; entry `i` moves `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    scheduled_for INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    orchestrator_id TEXT,
    execution_id TEXT,
    lease_expires_at INTEGER,
    lease_ms INTEGER
);
CREATE INDEX jobs_queue ON jobs(status, priority DESC, seq);
CREATE INDEX jobs_lease ON jobs(status, lease_expires_at);
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    orchestrator_id TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    outcome TEXT,
    output TEXT,
    condition INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT
);
CREATE INDEX executions_job ON executions(job_id, created_at);
CREATE TABLE variables (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID;
CREATE TABLE logs (
    execution_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    ts INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
) WITHOUT ROWID;
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    actor TEXT NOT NULL,
    user_id TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_ts ON audit(ts);
CREATE TABLE secrets_meta (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
"#];

/// The SQLite store: one writer connection behind a mutex (SQLite serializes writers
/// anyway) and a small pool of read-only connections, which WAL lets run beside the writer.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
}

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;

const JOB_COLS: &str = "id, user_id, spec, status, priority, scheduled_for, created_at, \
                        updated_at, orchestrator_id, execution_id, lease_expires_at";
const EXEC_COLS: &str = "id, job_id, orchestrator_id, status, exit_code, outcome, output, \
                         condition, created_at, started_at, finished_at, error";

fn status_col(s: String) -> rusqlite::Result<Status> {
    Status::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown status {s}").into(),
        )
    })
}

fn json_col(s: Option<String>) -> rusqlite::Result<Option<Value>> {
    match s {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s).map(Some).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        }),
    }
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        spec: json_col(Some(r.get(2)?))?.unwrap_or(Value::Null),
        status: status_col(r.get(3)?)?,
        priority: r.get(4)?,
        scheduled_for: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        orchestrator_id: r.get(8)?,
        execution_id: r.get(9)?,
        lease_expires_at: r.get(10)?,
    })
}

fn exec_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRow> {
    Ok(ExecutionRow {
        id: r.get(0)?,
        job_id: r.get(1)?,
        orchestrator_id: r.get(2)?,
        status: status_col(r.get(3)?)?,
        exit_code: r.get(4)?,
        outcome: json_col(r.get(5)?)?,
        output: json_col(r.get(6)?)?,
        condition: r.get::<_, Option<i64>>(7)?.map(|c| c != 0),
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        error: r.get(11)?,
    })
}

fn load_job(tx: &Connection, job_id: &str) -> Result<JobRow, StoreError> {
    tx.query_row(
        &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
        [job_id],
        job_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

/// Ends the job's active execution because its lease ran out: job back to queued,
/// execution failed. Caller checked that the job is active.
fn expire_job(tx: &Transaction<'_>, job: &JobRow, now: i64) -> Result<Option<Ended>, StoreError> {
    tx.execute(
        "UPDATE jobs SET status = 'queued', orchestrator_id = NULL, execution_id = NULL, \
         lease_expires_at = NULL, updated_at = ?2 WHERE id = ?1",
        params![job.id, now],
    )?;
    let Some(exec) = &job.execution_id else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE executions SET status = 'failed', finished_at = ?2, error = 'lease expired' \
         WHERE id = ?1",
        params![exec, now],
    )?;
    tx.execute(
        "INSERT INTO audit (ts, actor, user_id, action, target, result, detail) \
         VALUES (?1, 'server', ?2, 'lease.expire', ?3, 'ok', ?4)",
        params![now, job.user_id, job.id, format!("execution {exec}")],
    )?;
    Ok(Some(Ended {
        job_id: job.id.clone(),
        execution_id: exec.clone(),
        status: Status::Failed,
    }))
}

/// Loads the job for an action by `orchestrator`, enforcing ownership and lease expiry.
/// Returns the job when the caller holds an active (claimed/running) lease on it.
fn held_job(
    tx: &Transaction<'_>,
    job_id: &str,
    orchestrator: &str,
    now: i64,
    ended: &mut Vec<Ended>,
) -> Result<JobRow, StoreError> {
    let job = load_job(tx, job_id)?;
    if let Some(holder) = &job.orchestrator_id {
        if holder != orchestrator {
            return Err(StoreError::Forbidden);
        }
    }
    if !job.status.is_active() {
        return Err(StoreError::LeaseLost);
    }
    if job.lease_expires_at.is_some_and(|t| t <= now) {
        ended.extend(expire_job(tx, &job, now)?);
        return Err(StoreError::LeaseLost);
    }
    Ok(job)
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/jobcell.db`, enables WAL, applies migrations.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_file(&dir.join("jobcell.db"))
    }

    /// Opens a database file directly.
    pub fn open_file(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Migration(format!(
                "journal_mode is {mode}, not wal"
            )));
        }
        // WAL + NORMAL: a committed transaction survives a crash of the process (kill -9);
        // only an OS crash or power loss may lose the last commits.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        // Checkpoints run from `maintenance` (the server's sweeper, once a second) on a reader
        // connection, not inside request commits, which keeps the fsync off the request path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut store = SqliteStore {
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let conn = self.conn.get_mut().map_err(|_| StoreError::Poisoned)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::Migration(format!(
                "database schema {version} is newer than this binary ({known})"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)
                .map_err(|e| StoreError::Migration(format!("step {}: {e}", i + 1)))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut conn)
    }

    /// Runs a read on a pooled read-only connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().map_err(|_| StoreError::Poisoned)?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
        }
        out
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committing only on success.
    fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Like [`Self::tx`], but commits lease expiries found on the way even when `f` fails
    /// (so an expired lease is requeued by whichever access notices it first).
    fn tx_expiring<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut Vec<Ended>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut ended = Vec::new();
            match f(&tx, &mut ended) {
                Ok(v) => {
                    tx.commit()?;
                    Ok(v)
                }
                Err(e) => {
                    if !ended.is_empty() {
                        tx.commit()?;
                    }
                    Err(e)
                }
            }
        })
    }
}

fn requeue_expired_tx(tx: &Transaction<'_>, now: i64) -> Result<Vec<Ended>, StoreError> {
    let jobs: Vec<JobRow> = {
        let mut st = tx.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE status IN ('claimed', 'running') \
             AND lease_expires_at <= ?1"
        ))?;
        let rows = st.query_map([now], job_row)?;
        rows.collect::<Result<_, _>>()?
    };
    let mut ended = Vec::new();
    for job in &jobs {
        ended.extend(expire_job(tx, job, now)?);
    }
    Ok(ended)
}

fn cache_scope(spec: &Value, user_id: &str) -> String {
    spec.get("cacheScope")
        .and_then(Value::as_str)
        .unwrap_or(user_id)
        .to_string()
}

impl Store for SqliteStore {
    fn maintenance(&self) -> Result<(), StoreError> {
        let c = Connection::open(&self.path)?;
        c.busy_timeout(std::time::Duration::from_millis(100))?;
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn create_job(&self, job: &NewJob) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO jobs (id, user_id, spec, status, priority, scheduled_for, \
                 created_at, updated_at) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?6)",
                params![
                    job.id,
                    job.user_id,
                    serde_json::to_string(&job.spec)?,
                    job.priority,
                    job.scheduled_for,
                    job.created_at
                ],
            )?;
            Ok(())
        })
    }

    fn claim_jobs(
        &self,
        orchestrator: &str,
        batch: usize,
        lease_ms: i64,
        now: i64,
    ) -> Result<(Vec<Claimed>, Vec<Ended>), StoreError> {
        self.tx(|tx| {
            let ended = requeue_expired_tx(tx, now)?;
            let jobs: Vec<JobRow> = {
                let mut st = tx.prepare_cached(&format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE status = 'queued' AND scheduled_for <= ?1 \
                     ORDER BY priority DESC, seq ASC LIMIT ?2"
                ))?;
                let rows = st.query_map(params![now, batch as i64], job_row)?;
                rows.collect::<Result<_, _>>()?
            };
            let expires = now + lease_ms;
            let mut claimed = Vec::with_capacity(jobs.len());
            for mut job in jobs {
                let exec = new_id("ex_");
                let n = tx.execute(
                    "UPDATE jobs SET status = 'claimed', orchestrator_id = ?2, execution_id = ?3, \
                     lease_expires_at = ?4, updated_at = ?5, lease_ms = ?6 \
                     WHERE id = ?1 AND status = 'queued'",
                    params![job.id, orchestrator, exec, expires, now, lease_ms],
                )?;
                if n != 1 {
                    return Err(StoreError::Conflict("claim_race"));
                }
                tx.execute(
                    "INSERT INTO executions (id, job_id, orchestrator_id, status, created_at) \
                     VALUES (?1, ?2, ?3, 'claimed', ?4)",
                    params![exec, job.id, orchestrator, now],
                )?;
                tx.execute(
                    "INSERT INTO audit (ts, actor, user_id, action, target, result, detail) \
                     VALUES (?1, ?2, ?3, 'job.claim', ?4, 'ok', ?5)",
                    params![
                        now,
                        format!("orchestrator:{orchestrator}"),
                        job.user_id,
                        job.id,
                        format!("execution {exec}")
                    ],
                )?;
                job.status = Status::Claimed;
                job.orchestrator_id = Some(orchestrator.to_string());
                job.execution_id = Some(exec.clone());
                job.lease_expires_at = Some(expires);
                job.updated_at = now;
                claimed.push(Claimed {
                    job,
                    execution_id: exec,
                    lease_expires_at: expires,
                });
            }
            Ok((claimed, ended))
        })
    }

    fn heartbeat(&self, job_id: &str, orchestrator: &str, now: i64) -> Result<i64, StoreError> {
        self.tx_expiring(|tx, ended| {
            held_job(tx, job_id, orchestrator, now, ended)?;
            let lease_ms: i64 = tx.query_row(
                "SELECT COALESCE(lease_ms, 60000) FROM jobs WHERE id = ?1",
                [job_id],
                |r| r.get(0),
            )?;
            let expires = now + lease_ms;
            tx.execute(
                "UPDATE jobs SET lease_expires_at = ?2, updated_at = ?3 WHERE id = ?1",
                params![job_id, expires, now],
            )?;
            Ok(expires)
        })
    }

    fn set_running(
        &self,
        job_id: &str,
        orchestrator: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        self.tx_expiring(|tx, ended| {
            let job = held_job(tx, job_id, orchestrator, now, ended)?;
            let exec = job.execution_id.clone().ok_or(StoreError::LeaseLost)?;
            if job.status == Status::Claimed {
                tx.execute(
                    "UPDATE jobs SET status = 'running', updated_at = ?2 WHERE id = ?1",
                    params![job_id, now],
                )?;
                tx.execute(
                    "UPDATE executions SET status = 'running', started_at = ?2 WHERE id = ?1",
                    params![exec, now],
                )?;
            }
            Ok(exec)
        })
    }

    fn complete(
        &self,
        job_id: &str,
        orchestrator: &str,
        status: Status,
        exit_code: Option<i64>,
        outcome: Option<&Value>,
        now: i64,
    ) -> Result<Completion, StoreError> {
        if !matches!(status, Status::Completed | Status::Failed | Status::Timeout) {
            return Err(StoreError::Conflict("invalid_status"));
        }
        self.tx_expiring(|tx, ended| {
            let job = load_job(tx, job_id)?;
            if job.status.is_terminal() || job.status == Status::Queued {
                // Idempotent repeat of the completion that ended this job?
                if job.orchestrator_id.as_deref().is_some_and(|h| h != orchestrator) {
                    return Err(StoreError::Forbidden);
                }
                if job.status == Status::Queued {
                    return Err(StoreError::LeaseLost);
                }
                let exec_id = job.execution_id.clone().ok_or(StoreError::LeaseLost)?;
                let exec = tx
                    .query_row(
                        &format!("SELECT {EXEC_COLS} FROM executions WHERE id = ?1"),
                        [&exec_id],
                        exec_row,
                    )
                    .optional()?
                    .ok_or(StoreError::LeaseLost)?;
                if job.status == status && exec.exit_code == exit_code {
                    return Ok(Completion {
                        execution_id: exec_id,
                        repeated: true,
                    });
                }
                return Err(StoreError::Conflict("already_finished"));
            }
            let job = held_job(tx, job_id, orchestrator, now, ended)?;
            let exec = job.execution_id.clone().ok_or(StoreError::LeaseLost)?;
            if job.status == Status::Claimed && status != Status::Failed {
                // claimed → running → completed|timeout: the job must have started.
                return Err(StoreError::Conflict("not_running"));
            }
            let outcome = outcome.map(serde_json::to_string).transpose()?;
            tx.execute(
                "UPDATE jobs SET status = ?2, lease_expires_at = NULL, updated_at = ?3 WHERE id = ?1",
                params![job_id, status.as_str(), now],
            )?;
            tx.execute(
                "UPDATE executions SET status = ?2, exit_code = ?3, outcome = ?4, finished_at = ?5 \
                 WHERE id = ?1",
                params![exec, status.as_str(), exit_code, outcome, now],
            )?;
            Ok(Completion {
                execution_id: exec,
                repeated: false,
            })
        })
    }

    fn release(&self, job_id: &str, orchestrator: &str, now: i64) -> Result<String, StoreError> {
        self.tx_expiring(|tx, ended| {
            let job = held_job(tx, job_id, orchestrator, now, ended)?;
            let exec = job.execution_id.clone().ok_or(StoreError::LeaseLost)?;
            tx.execute(
                "UPDATE jobs SET status = 'queued', orchestrator_id = NULL, execution_id = NULL, \
                 lease_expires_at = NULL, updated_at = ?2 WHERE id = ?1",
                params![job_id, now],
            )?;
            tx.execute(
                "UPDATE executions SET status = 'released', finished_at = ?2 WHERE id = ?1",
                params![exec, now],
            )?;
            Ok(exec)
        })
    }

    fn cancel(&self, job_id: &str, now: i64) -> Result<Option<String>, StoreError> {
        self.tx(|tx| {
            let job = load_job(tx, job_id)?;
            match job.status {
                Status::Cancelled => Ok(None),
                s if s.is_terminal() => Err(StoreError::Conflict("already_finished")),
                _ => {
                    tx.execute(
                        "UPDATE jobs SET status = 'cancelled', lease_expires_at = NULL, \
                         updated_at = ?2 WHERE id = ?1",
                        params![job_id, now],
                    )?;
                    if job.status.is_active() {
                        if let Some(exec) = &job.execution_id {
                            tx.execute(
                                "UPDATE executions SET status = 'cancelled', finished_at = ?2 \
                                 WHERE id = ?1",
                                params![exec, now],
                            )?;
                            return Ok(Some(exec.clone()));
                        }
                    }
                    Ok(None)
                }
            }
        })
    }

    fn requeue_expired(&self, now: i64) -> Result<Vec<Ended>, StoreError> {
        self.tx(|tx| requeue_expired_tx(tx, now))
    }

    fn get_job(&self, job_id: &str) -> Result<Option<(JobRow, Vec<ExecutionRow>)>, StoreError> {
        self.read(|conn| {
            let job = match load_job(conn, job_id) {
                Ok(j) => j,
                Err(StoreError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut st = conn.prepare_cached(&format!(
                "SELECT {EXEC_COLS} FROM executions WHERE job_id = ?1 ORDER BY created_at, rowid"
            ))?;
            let execs = st
                .query_map([job_id], exec_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((job, execs)))
        })
    }

    fn get_execution(&self, execution_id: &str) -> Result<Option<ExecutionRow>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {EXEC_COLS} FROM executions WHERE id = ?1"),
                    [execution_id],
                    exec_row,
                )
                .optional()?)
        })
    }

    fn active_executions(&self, now: i64) -> Result<Vec<ActiveExecution>, StoreError> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE status IN ('claimed', 'running') \
                 AND lease_expires_at > ?1"
            ))?;
            let jobs = st
                .query_map([now], job_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(jobs
                .into_iter()
                .filter_map(|j| {
                    Some(ActiveExecution {
                        execution_id: j.execution_id.clone()?,
                        cache_scope: cache_scope(&j.spec, &j.user_id),
                        job_id: j.id,
                        user_id: j.user_id,
                        orchestrator_id: j.orchestrator_id?,
                        lease_expires_at: j.lease_expires_at?,
                    })
                })
                .collect())
        })
    }

    fn set_output(&self, execution_id: &str, output: &Value) -> Result<(), StoreError> {
        let s = serde_json::to_string(output)?;
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE executions SET output = ?2 WHERE id = ?1",
                params![execution_id, s],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn set_condition(&self, execution_id: &str, condition: bool) -> Result<(), StoreError> {
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE executions SET condition = ?2 WHERE id = ?1",
                params![execution_id, condition as i64],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    fn get_variable(&self, user_id: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM variables WHERE user_id = ?1 AND key = ?2",
                    params![user_id, key],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn set_variable(
        &self,
        user_id: &str,
        key: &str,
        value: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO variables (user_id, key, value, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (user_id, key) DO UPDATE SET value = excluded.value, \
                 updated_at = excluded.updated_at",
                params![user_id, key, value, now],
            )?;
            Ok(())
        })
    }

    fn append_logs(
        &self,
        execution_id: &str,
        stream: &str,
        lines: &[String],
        now: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.tx(|tx| {
            let last: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE execution_id = ?1",
                [execution_id],
                |r| r.get(0),
            )?;
            let mut out = Vec::with_capacity(lines.len());
            let mut st = tx.prepare_cached(
                "INSERT INTO logs (execution_id, seq, stream, ts, line) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let ts = rfc3339(now);
            for (i, line) in lines.iter().enumerate() {
                let seq = last + 1 + i as i64;
                st.execute(params![execution_id, seq, stream, now, line])?;
                out.push(LogLine {
                    seq,
                    stream: stream.to_string(),
                    ts: ts.clone(),
                    line: line.clone(),
                });
            }
            Ok(out)
        })
    }

    fn logs(
        &self,
        execution_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(
                "SELECT seq, stream, ts, line FROM logs WHERE execution_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = st.query_map(params![execution_id, after, limit as i64], |r| {
                Ok(LogLine {
                    seq: r.get(0)?,
                    stream: r.get(1)?,
                    ts: rfc3339(r.get(2)?),
                    line: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn audit(&self, rec: &AuditRecord) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.prepare_cached(
                "INSERT INTO audit (ts, actor, user_id, action, target, result, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                rec.ts,
                rec.actor,
                rec.user_id,
                rec.action,
                rec.target,
                rec.result,
                rec.detail
            ])?;
            Ok(())
        })
    }

    fn list_audit(&self, since: AuditSince, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.read(|conn| {
            let (sql, arg) = match since {
                AuditSince::Id(id) => ("id > ?1", id),
                AuditSince::Time(t) => ("ts >= ?1", t),
            };
            let mut st = conn.prepare(&format!(
                "SELECT id, ts, actor, user_id, action, target, result, detail FROM audit \
                 WHERE {sql} ORDER BY id LIMIT ?2"
            ))?;
            let rows = st.query_map(params![arg, limit as i64], |r| {
                Ok(AuditEvent {
                    id: r.get(0)?,
                    time: rfc3339(r.get(1)?),
                    actor: r.get(2)?,
                    user_id: r.get(3)?,
                    action: r.get(4)?,
                    target: r.get(5)?,
                    result: r.get(6)?,
                    detail: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|conn| {
            let mut st =
                conn.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn record_secret(
        &self,
        name: &str,
        source: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO secrets_meta (name, source, fingerprint, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE SET \
                 source = excluded.source, fingerprint = excluded.fingerprint, \
                 updated_at = excluded.updated_at",
                params![name, source, fingerprint, now],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        (dir, s)
    }

    fn job(s: &SqliteStore, id: &str, prio: i64, at: i64) {
        s.create_job(&NewJob {
            id: id.into(),
            user_id: "u1".into(),
            spec: json!({"command": ["true"]}),
            priority: prio,
            scheduled_for: at,
            created_at: at,
        })
        .unwrap();
    }

    #[test]
    fn claim_order_and_schedule() {
        let (_d, s) = store();
        job(&s, "a", 0, 100);
        job(&s, "b", 2, 100);
        job(&s, "c", 0, 5_000);
        let (c, _) = s.claim_jobs("o1", 10, 10_000, 1_000).unwrap();
        let ids: Vec<_> = c.iter().map(|c| c.job.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
    }

    #[test]
    fn state_machine_and_leases() {
        let (_d, s) = store();
        job(&s, "a", 0, 0);
        let (c, _) = s.claim_jobs("o1", 1, 10_000, 1).unwrap();
        let exec = c[0].execution_id.clone();
        assert!(matches!(
            s.set_running("a", "o2", 2),
            Err(StoreError::Forbidden)
        ));
        assert!(matches!(
            s.complete("a", "o1", Status::Completed, Some(0), None, 2),
            Err(StoreError::Conflict("not_running"))
        ));
        s.set_running("a", "o1", 2).unwrap();
        assert!(
            !s.complete("a", "o1", Status::Completed, Some(0), None, 3)
                .unwrap()
                .repeated
        );
        assert!(
            s.complete("a", "o1", Status::Completed, Some(0), None, 4)
                .unwrap()
                .repeated
        );
        assert!(matches!(
            s.complete("a", "o1", Status::Failed, Some(1), None, 5),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            s.get_execution(&exec).unwrap().unwrap().status,
            Status::Completed
        );
        // Lease expiry on access.
        job(&s, "b", 0, 0);
        let (c, _) = s.claim_jobs("o1", 1, 10_000, 10).unwrap();
        assert!(matches!(
            s.heartbeat("b", "o1", 10_011),
            Err(StoreError::LeaseLost)
        ));
        let (j, ex) = s.get_job("b").unwrap().unwrap();
        assert_eq!(j.status, Status::Queued);
        assert_eq!(ex[0].status, Status::Failed);
        assert_eq!(ex[0].id, c[0].execution_id);
    }

    #[test]
    fn logs_are_ordered_and_migration_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path()).unwrap();
            s.append_logs("e", "stdout", &["1".into(), "2".into()], 1)
                .unwrap();
            s.append_logs("e", "stderr", &["3".into()], 2).unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        let l = s.logs("e", 0, 100).unwrap();
        let seqs: Vec<_> = l.iter().map(|l| (l.seq, l.line.as_str())).collect();
        assert_eq!(seqs, [(1, "1"), (2, "2"), (3, "3")]);
        assert_eq!(s.logs("e", 2, 100).unwrap().len(), 1);
    }
}
