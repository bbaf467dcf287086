//! The embedded API server behind `jobcell serve`: shared [`AppState`], the axum router
//! (orchestrator, runtime, logs, health, metrics; cache routes merge in at [`router`]), the
//! background lease sweeper, graceful shutdown, and `serve_main`.
//!
//! Extensions beyond the contract in API.md (all additive):
//! - `POST /api/internal/jobs` rejects unknown fields (400); `leaseSeconds` defaults to 60 and
//!   heartbeats renew by the claim's lease length.
//! - `PUT .../status` accepts only `running`; terminal states go through `complete`. From
//!   `claimed`, only `failed` may complete (the job never started).
//! - `cancel` may be sent by any orchestrator (a dispatcher cancels jobs it did not claim);
//!   cancelling a cancelled job is 200, a finished one 409.
//! - `release` marks the execution `released` (an execution status beside the job states).
//! - `GET /api/internal/jobs/{id}` returns `jobId, userId, status, priority, createdAt,
//!   updatedAt, scheduledFor, orchestratorId, executionId, lease, job, executions[]` with
//!   `executionId, orchestratorId, status, exitCode, outcome, output, condition, createdAt,
//!   startedAt, finishedAt, error` per execution.
//! - `GET /api/internal/audit?since=` takes an event id or an RFC 3339 time; `limit` 1-1000
//!   (default 100); answers `{"events": [{id, time, actor, userId, action, target, result}]}`.
//! - `GET /api/logs/{id}?after=SEQ&limit=N` pages; the answer carries the execution `status`.
//!   The WebSocket accepts the orchestrator key without `X-Orchestrator-ID`.
//! - `GET /api/runtime/executions/{id}/context` also returns `orchestratorId, cacheScope,
//!   scope, tokenExpiresAt, leaseExpiresAt`; `jobcell ctl context` prints it.
//! - Variable keys `[A-Za-z0-9._/:-]{1,256}`, values up to 64 KiB; log lines up to 16 KiB
//!   (longer output lines are split by the executor), 10 000 lines per request.
//! - `jobcell serve --max-jobs N` (local executor parallelism, default 2); the JWT issuer comes
//!   from `JOBCELL_JWT_ISSUER` or `jwt_issuer` in `--config`.
//! - `/healthz` and `/metrics` need no credentials.

pub mod auth;
pub mod error;
pub mod internal;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod runtime;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::sync::broadcast;

use crate::secrets::{Secrets, SecretsError};
use crate::store::{now_ms, ActiveExecution, AuditRecord, Ended, SqliteStore, Store, StoreError};
use error::ApiError;

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot determine the state directory (set --state-dir or XDG_STATE_HOME/HOME)")]
    NoStateDir,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("secrets: {0}")]
    Secrets(#[from] SecretsError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("executor: {0}")]
    Executor(String),
    #[error("cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
}

/// Which executor runs claimed jobs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorMode {
    /// Claim and run jobs here as orchestrator `local-<hostname>`.
    Local,
    /// Serve the API only.
    None,
}

/// `jobcell serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8427")]
    pub listen: String,
    /// State directory (default: $XDG_STATE_HOME/jobcell rootless, /var/lib/jobcell as root).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Executor for claimed jobs.
    #[arg(long, value_enum, default_value = "local")]
    pub executor: ExecutorMode,
    /// TOML file with internal_api_key, jwt_secret, cache_secret, jwt_issuer.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Turn cache authentication off (logged as a warning at every start).
    #[arg(long)]
    pub insecure_no_cache_auth: bool,
    /// Parallel jobs of the local executor.
    #[arg(long, default_value_t = 2)]
    pub max_jobs: usize,
    #[command(flatten)]
    pub cache: crate::cache::CacheArgs,
}

/// Executions whose tokens are valid, by execution id: a cache of the store's claimed and
/// running jobs, rebuilt from the store at start. Entries leave when the execution ends.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<HashMap<String, ActiveExecution>>,
}

impl Registry {
    pub fn insert(&self, e: ActiveExecution) {
        if let Ok(mut m) = self.inner.write() {
            m.insert(e.execution_id.clone(), e);
        }
    }

    pub fn remove(&self, execution_id: &str) -> Option<ActiveExecution> {
        self.inner.write().ok()?.remove(execution_id)
    }

    /// The active execution, unless unknown or its lease ran out (fail-closed on poison).
    pub fn get(&self, execution_id: &str, now: i64) -> Option<ActiveExecution> {
        let m = self.inner.read().ok()?;
        m.get(execution_id)
            .filter(|e| e.lease_expires_at > now)
            .cloned()
    }

    /// The active execution `execution_id` of job `job_id` (for cache token checks).
    pub fn get_for_job(
        &self,
        job_id: &str,
        execution_id: &str,
        now: i64,
    ) -> Option<ActiveExecution> {
        self.get(execution_id, now).filter(|e| e.job_id == job_id)
    }

    pub fn renew(&self, execution_id: &str, expires: i64) {
        if let Ok(mut m) = self.inner.write() {
            if let Some(e) = m.get_mut(execution_id) {
                e.lease_expires_at = expires;
            }
        }
    }

    /// Every registered execution whose lease has not run out.
    pub fn active(&self, now: i64) -> Vec<ActiveExecution> {
        self.inner
            .read()
            .map(|m| {
                m.values()
                    .filter(|e| e.lease_expires_at > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Execution ids registered for `job_id`.
    pub fn executions_of(&self, job_id: &str) -> Vec<String> {
        self.inner
            .read()
            .map(|m| {
                m.values()
                    .filter(|e| e.job_id == job_id)
                    .map(|e| e.execution_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Options of the API that are not secrets.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    pub insecure_no_cache_auth: bool,
}

/// State shared by every handler (and by the cache routes and the executor).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub secrets: Arc<Secrets>,
    pub registry: Arc<Registry>,
    pub logs: Arc<logs::LogHub>,
    pub metrics: Arc<metrics::Metrics>,
    /// Executions that ended (completed, cancelled, released, lease expired).
    pub ended: broadcast::Sender<Ended>,
    pub config: Arc<ApiConfig>,
    /// The cache service (`None`: cache routes answer 503), see [`AppState::with_cache`].
    pub cache: Option<Arc<crate::cache::Cache>>,
}

impl AppState {
    /// Builds the state and rebuilds the registry of active executions from the store.
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Secrets,
        config: ApiConfig,
    ) -> Result<AppState, StoreError> {
        let now = now_ms();
        for (name, s) in secrets.metadata() {
            store.record_secret(name, s.source.as_str(), &s.fingerprint(), now)?;
        }
        let registry = Registry::default();
        for e in store.active_executions(now)? {
            registry.insert(e);
        }
        let (ended, _) = broadcast::channel(1024);
        Ok(AppState {
            store,
            secrets: Arc::new(secrets),
            registry: Arc::new(registry),
            logs: Arc::new(logs::LogHub::default()),
            metrics: Arc::new(metrics::Metrics::default()),
            ended,
            config: Arc::new(config),
            cache: None,
        })
    }

    /// Attaches the cache service.
    pub fn with_cache(mut self, cache: crate::cache::Cache) -> AppState {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// Runs a store call on the blocking pool.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(e) => Err(ApiError::internal(format!("store task: {e}"))),
        }
    }

    /// Persists an audit event; a failure is an error of the request (fail-closed).
    pub async fn audit(&self, rec: AuditRecord) -> Result<(), ApiError> {
        let rec = AuditRecord {
            ts: if rec.ts == 0 { now_ms() } else { rec.ts },
            ..rec
        };
        self.db(move |s| s.audit(&rec)).await
    }

    /// Audits a successful or refused data operation.
    pub async fn audit_op(
        &self,
        actor: &str,
        user_id: Option<&str>,
        action: &str,
        target: &str,
        result: Result<(), &ApiError>,
    ) -> Result<(), ApiError> {
        let (result, detail) = match result {
            Ok(()) => ("ok".to_string(), None),
            Err(e) => (e.audit_result(), e.detail.clone()),
        };
        self.audit(AuditRecord {
            ts: 0,
            actor: actor.to_string(),
            user_id: user_id.map(str::to_string),
            action: action.to_string(),
            target: target.to_string(),
            result,
            detail,
        })
        .await
    }

    /// Audits a denied request; failures only reach the log (the request is refused anyway).
    pub async fn audit_denied(
        &self,
        actor: &str,
        user_id: Option<&str>,
        target: &str,
        reason: &str,
    ) {
        let rec = AuditRecord {
            ts: now_ms(),
            actor: actor.to_string(),
            user_id: user_id.map(str::to_string),
            action: "auth".to_string(),
            target: target.to_string(),
            result: format!("denied:{reason}"),
            detail: None,
        };
        if let Err(e) = self.db(move |s| s.audit(&rec)).await {
            tracing::error!(?e, "audit write failed");
        }
    }

    /// Kills the tokens of executions that ended, closes their log streams and tells the
    /// executor (which kills a sandbox still running).
    pub fn executions_ended(&self, ended: &[Ended]) {
        for e in ended {
            self.registry.remove(&e.execution_id);
            if let Some(c) = &self.cache {
                c.limiter.forget(&e.execution_id);
            }
            self.logs.end(&e.execution_id, e.status.as_str());
            let _ = self.ended.send(e.clone());
        }
    }

    /// Re-reads from the store the executions of `job_id` that the registry holds and ends
    /// those no longer active (after a store call found a lease expired on access).
    pub async fn resync_job(&self, job_id: &str) {
        for exec in self.registry.executions_of(job_id) {
            let e = exec.clone();
            match self.db(move |s| s.get_execution(&e)).await {
                Ok(Some(row)) if row.status.is_active() => {}
                Ok(row) => {
                    let status = row
                        .map(|r| r.status)
                        .unwrap_or(crate::store::Status::Failed);
                    self.executions_ended(&[Ended {
                        job_id: job_id.to_string(),
                        execution_id: exec,
                        status,
                    }]);
                }
                Err(e) => {
                    // Fail closed: without an answer from the store the tokens die.
                    tracing::error!(?e, "resync failed; revoking");
                    self.registry.remove(&exec);
                }
            }
        }
    }

    /// One sweep: requeue jobs whose lease expired.
    pub async fn sweep(&self) -> Result<usize, ApiError> {
        let ended = self.db(|s| s.requeue_expired(now_ms())).await?;
        for e in &ended {
            tracing::warn!(job = %e.job_id, execution = %e.execution_id, "lease expired; job requeued");
        }
        self.executions_ended(&ended);
        Ok(ended.len())
    }
}

/// The complete router. Cache routes (`/_apis/artifactcache/...`, `/_artifacts/...`) are merged
/// here by adding `.merge(cache::routes())` next to the other groups.
pub fn router(state: AppState) -> Router {
    let r = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics::metrics_handler))
        .merge(internal::routes())
        .merge(runtime::routes())
        .merge(logs::routes())
        .merge(crate::cache::routes());
    finish_router(r, state)
}

/// What both routers end with: JSON 404/405 bodies, request metrics, the state.
fn finish_router(r: Router<AppState>, state: AppState) -> Router {
    r.fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_requests,
        ))
        .with_state(state)
}

/// The router served to a sandbox on its own Unix socket: the runtime API only (cache
/// routes join here too), never the orchestrator API.
pub fn sandbox_router(state: AppState) -> Router {
    let r = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(runtime::routes())
        .merge(crate::cache::routes());
    finish_router(r, state)
}

/// Spawns the lease sweeper (one sweep per `every`).
pub fn spawn_sweeper(state: AppState, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = state.sweep().await {
                tracing::error!(?e, "lease sweep failed");
            }
            if let Err(e) = state.db(|s| s.maintenance()).await {
                tracing::warn!(?e, "store maintenance failed");
            }
        }
    })
}

/// Default state directory: `/var/lib/jobcell` as root, `$XDG_STATE_HOME/jobcell` (or
/// `~/.local/state/jobcell`) otherwise.
pub fn default_state_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/lib/jobcell"));
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("jobcell"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/jobcell"))
}

/// Opens the store and secrets in `state_dir` and builds the state.
pub fn open_state(
    state_dir: &std::path::Path,
    config: Option<&std::path::Path>,
    insecure_no_cache_auth: bool,
) -> Result<AppState, ServeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let sd = |source| ServeError::StateDir {
        path: state_dir.to_path_buf(),
        source,
    };
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(sd)?;
    }
    let mode = std::fs::metadata(state_dir)
        .map_err(sd)?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        // Fail closed: others could swap the database or the secrets under us.
        return Err(sd(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("writable by group or others (mode {:o})", mode & 0o777),
        )));
    }
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %state_dir.display(), "state directory is readable by others; secrets stay 0600 in secrets/ (0700)");
    }
    let secrets = Secrets::load(state_dir, config)?;
    for (name, s) in secrets.metadata() {
        tracing::info!(secret = name, source = s.source.as_str(), fingerprint = %s.fingerprint(), "secret loaded");
    }
    let store = SqliteStore::open(state_dir)?;
    Ok(AppState::new(
        Arc::new(store),
        secrets,
        ApiConfig {
            insecure_no_cache_auth,
        },
    )?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
    tracing::info!("shutdown signal received");
}

/// Entry point of `jobcell serve`.
pub fn serve_main(args: ServeArgs) -> Result<(), ServeError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JOBCELL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir().ok_or(ServeError::NoStateDir)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let state = open_state(&state_dir, args.config.as_deref(), args.insecure_no_cache_auth)?;
        let cache = crate::cache::Cache::open(&state_dir, &state.secrets, args.cache.config()?)?;
        let state = state.with_cache(cache);
        if args.insecure_no_cache_auth {
            tracing::warn!("cache authentication is DISABLED (--insecure-no-cache-auth)");
        }
        let addr: SocketAddr = args.listen.parse().map_err(|e| ServeError::Listen {
            addr: args.listen.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen {
                addr: args.listen.clone(),
                source,
            })?;
        tracing::info!(addr = %listener.local_addr()?, state_dir = %state_dir.display(), "jobcell serve listening");
        let sweeper = spawn_sweeper(state.clone(), Duration::from_secs(1));
        let cache_sweeper = crate::cache::spawn_sweeper(state.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let executor = match args.executor {
            ExecutorMode::Local => Some(
                crate::executor::spawn(state.clone(), args.max_jobs, stop_rx)
                    .map_err(|e| ServeError::Executor(e.to_string()))?,
            ),
            ExecutorMode::None => None,
        };
        let app = router(state.clone());
        // On SIGTERM/SIGINT: stop accepting, stop the executor (it releases the jobs it still
        // runs), let open requests finish; connections still open after 10 s (e.g. log
        // WebSockets) are dropped.
        let (sig_tx, mut sig_rx) = tokio::sync::watch::channel(false);
        let stop_exec = stop_tx.clone();
        let graceful = async move {
            shutdown_signal().await;
            let _ = stop_exec.send(true);
            let _ = sig_tx.send(true);
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
        tokio::select! {
            r = std::future::IntoFuture::into_future(server) => r?,
            _ = async {
                let _ = sig_rx.wait_for(|v| *v).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            } => tracing::warn!("connections still open 10 s after the shutdown signal; closing"),
        }
        let _ = stop_tx.send(true);
        if let Some(ex) = executor {
            let _ = tokio::time::timeout(Duration::from_secs(20), ex).await;
        }
        sweeper.abort();
        if let Some(s) = cache_sweeper {
            s.abort();
        }
        tracing::info!("jobcell serve stopped");
        Ok(())
    })
}
