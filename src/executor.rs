//! Local executor of `jobcell serve --executor local`: claims jobs as orchestrator
//! `local-<hostname>` through the same store logic as the orchestrator API, runs each in a
//! sandbox by spawning `jobcell run` as a subprocess, serves the runtime API to it on a
//! per-execution Unix socket (bind-mounted at `/run/jobcell/api.sock`), captures
//! stdout/stderr line by line into the log store (bounded memory, backpressure instead of
//! loss), heartbeats, enforces the timeout, and completes the job with the outcome.

use std::future::IntoFuture;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

use crate::api::auth::mint_token;
use crate::api::internal::{claim_for, complete_for, heartbeat_for, release_for, set_running_for};
use crate::api::logs::MAX_LINE;
use crate::api::model::JobSpec;
use crate::api::AppState;
use crate::store::{Claimed, Status};

/// Lease the executor asks for; heartbeats come every third of it.
pub const LEASE_SECS: i64 = crate::api::internal::DEFAULT_LEASE_SECS;
/// Path of the API socket inside the sandbox.
pub const SANDBOX_SOCKET: &str = "/run/jobcell/api.sock";
/// Where the jobcell binary appears inside the sandbox.
pub const SANDBOX_BIN_DIR: &str = "/run/jobcell/bin";
/// Where a job's script appears inside the sandbox.
pub const SANDBOX_SCRIPT: &str = "/run/jobcell/script";
/// Exit code of `jobcell run` on timeout.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of `jobcell run` when it failed before the command started.
pub const EXIT_JOBCELL_FAILED: i32 = 125;

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot find the jobcell binary: {0}")]
    CurrentExe(std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid job: {0}")]
    InvalidJob(String),
}

/// The orchestrator id of this host's executor: `local-<hostname>` reduced to
/// `[A-Za-z0-9._-]{1,64}`.
pub fn orchestrator_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".to_string());
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut id = format!("local-{clean}");
    id.truncate(64);
    id
}

/// Everything needed to start one job's sandbox.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Secrets passed to `jobcell run` through its environment (`--env NAME` inherits them), never argv,
    /// which every user of the host can read in /proc.
    pub env: Vec<(String, String)>,
}

/// Host-side files of one execution, in a private 0700 directory.
#[derive(Debug, Clone)]
pub struct ExecDir {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub script: PathBuf,
    pub outcome: PathBuf,
}

impl ExecDir {
    /// Creates `base/jobcell-<execution id>` with mode 0700. `base` must exist (a runtime or
    /// temp directory); the name is unpredictable before the claim and `mkdir` never follows
    /// a planted symlink, so the directory is always our own.
    pub fn create(base: &Path, execution_id: &str) -> Result<ExecDir, ExecutorError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = base.join(format!("jobcell-{execution_id}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| ExecutorError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(ExecDir {
            socket: dir.join("api.sock"),
            script: dir.join("script"),
            outcome: dir.join("outcome.json"),
            dir,
        })
    }
}

/// Where per-execution directories go: `$XDG_RUNTIME_DIR` when it is set and private,
/// otherwise the system temp directory. Short paths keep the socket under the 108-byte limit
/// of Unix socket addresses.
pub fn runtime_base() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        let private = std::fs::metadata(&d)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                m.is_dir() && m.uid() == me && m.permissions().mode() & 0o077 == 0
            })
            .unwrap_or(false);
        if private {
            return d;
        }
    }
    std::env::temp_dir()
}

fn interpreter(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "sh" => "sh",
        "bash" => "bash",
        "python" => "python3",
        "node" => "node",
        _ => return None,
    })
}

/// Builds the `jobcell run` command line for a job (flags as in the `jobcell run` contract).
pub fn build_launch(
    exe: &Path,
    spec: &JobSpec,
    dirs: &ExecDir,
    execution_id: &str,
    token: &str,
) -> Result<Launch, ExecutorError> {
    let mut a: Vec<String> = vec!["run".into()];
    let mut push = |k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    if let Some(p) = &spec.profile {
        push("--profile", p.clone());
    }
    if let Some(l) = &spec.limits {
        if let Some(c) = l.cpus {
            push("--cpus", c.to_string());
        }
        if let Some(m) = l.memory_mb {
            push("--memory", format!("{m}M"));
        }
        if let Some(p) = l.pids {
            push("--pids", p.to_string());
        }
        if let Some(t) = l.tmpfs_mb {
            push("--tmpfs-size", format!("{t}M"));
        }
    }
    if let Some(n) = &spec.network {
        push("--net", n.clone());
    }
    for (k, v) in spec.env.iter().flatten() {
        push("--env", format!("{k}={v}"));
    }
    push("--env", format!("JOBCELL_API=unix:{SANDBOX_SOCKET}"));
    push("--env", "JOBCELL_TOKEN".to_string());
    push("--env", format!("JOBCELL_EXECUTION_ID={execution_id}"));
    push(
        "--env",
        format!(
            "PATH={SANDBOX_BIN_DIR}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
        ),
    );
    push(
        "--bind",
        format!("{}:{SANDBOX_SOCKET}:rw", dirs.socket.display()),
    );
    push(
        "--bind",
        format!("{}:{SANDBOX_BIN_DIR}/jobcell", exe.display()),
    );
    let command: Vec<String> = match (&spec.command, &spec.script) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => {
            let interp = interpreter(&s.kind)
                .ok_or_else(|| ExecutorError::InvalidJob(format!("script type {}", s.kind)))?;
            push(
                "--bind",
                format!("{}:{SANDBOX_SCRIPT}", dirs.script.display()),
            );
            vec![interp.to_string(), SANDBOX_SCRIPT.to_string()]
        }
        (None, None) => return Err(ExecutorError::InvalidJob("no command".into())),
    };
    push("--timeout", format!("{}s", spec.timeout_secs()));
    push("--json", dirs.outcome.display().to_string());
    a.push("--".into());
    a.extend(command);
    Ok(Launch {
        program: exe.to_path_buf(),
        args: a,
        env: vec![("JOBCELL_TOKEN".into(), token.to_string())],
    })
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes (longer lines are cut into
/// pieces, nothing is dropped) and sends them; waits when the channel is full.
pub async fn pump_lines(
    mut r: impl AsyncRead + Unpin,
    stream: &'static str,
    tx: mpsc::Sender<(&'static str, String)>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        let mut data = &chunk[..n];
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) if buf.len() + i <= MAX_LINE => {
                    buf.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    emit(&mut buf, stream, &tx).await?;
                }
                _ => {
                    let room = MAX_LINE - buf.len();
                    let take = data.len().min(room);
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if buf.len() >= MAX_LINE {
                        emit(&mut buf, stream, &tx).await?;
                    }
                }
            }
        }
    }
    if !buf.is_empty() {
        emit(&mut buf, stream, &tx).await?;
    }
    Ok(())
}

async fn emit(
    buf: &mut Vec<u8>,
    stream: &'static str,
    tx: &mpsc::Sender<(&'static str, String)>,
) -> std::io::Result<()> {
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    let line = String::from_utf8_lossy(buf).into_owned();
    buf.clear();
    tx.send((stream, line))
        .await
        .map_err(|_| std::io::Error::other("log writer gone"))
}

/// Writes lines from `rx` to the log store in arrival order, batching runs of one stream.
pub async fn write_logs(
    state: AppState,
    execution_id: String,
    mut rx: mpsc::Receiver<(&'static str, String)>,
) -> usize {
    let mut total = 0;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let mut i = 0;
        while i < batch.len() {
            let stream = batch[i].0;
            let mut lines = Vec::new();
            while i < batch.len() && batch[i].0 == stream {
                lines.push(std::mem::take(&mut batch[i].1));
                i += 1;
            }
            match crate::api::logs::append(&state, &execution_id, stream, lines).await {
                Ok(n) => total += n,
                Err(e) => {
                    tracing::error!(?e, execution = %execution_id, "storing log lines failed")
                }
            }
        }
    }
    total
}

/// Starts the executor loop; it stops claiming when `stop` turns true and releases the jobs
/// it still runs.
pub fn spawn(
    state: AppState,
    max_jobs: usize,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ExecutorError> {
    let exe = std::env::current_exe().map_err(ExecutorError::CurrentExe)?;
    let orch = orchestrator_id();
    let run_dir = runtime_base();
    tracing::info!(orchestrator = %orch, max_jobs, "local executor started");
    Ok(tokio::spawn(executor_loop(
        state,
        exe,
        orch,
        run_dir,
        max_jobs.max(1),
        stop,
    )))
}

async fn executor_loop(
    state: AppState,
    exe: PathBuf,
    orch: String,
    run_dir: PathBuf,
    max_jobs: usize,
    mut stop: watch::Receiver<bool>,
) {
    recover(&state, &orch).await;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if *stop.borrow() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let free = max_jobs.saturating_sub(tasks.len());
        let mut got = 0;
        if free > 0 {
            match claim_for(&state, &orch, free, LEASE_SECS).await {
                Ok(claimed) => {
                    got = claimed.len();
                    for c in claimed {
                        let ctx = JobCtx {
                            state: state.clone(),
                            exe: exe.clone(),
                            orch: orch.clone(),
                            run_dir: run_dir.clone(),
                            stop: stop.clone(),
                        };
                        tasks.spawn(ctx.run(c));
                    }
                }
                Err(e) => tracing::error!(?e, "executor claim failed"),
            }
        }
        if got == 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => {}
                _ = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!("local executor stopped");
}

/// Jobs this host's executor held when the previous server process died cannot still be
/// running (their sandboxes died with it): give them back to the queue now instead of
/// waiting for their leases to expire.
async fn recover(state: &AppState, orch: &str) {
    let held: Vec<String> = match state
        .db(|s| s.active_executions(crate::store::now_ms()))
        .await
    {
        Ok(v) => v
            .into_iter()
            .filter(|e| e.orchestrator_id == orch)
            .map(|e| e.job_id)
            .collect(),
        Err(e) => {
            tracing::error!(?e, "executor recovery: listing held jobs failed");
            return;
        }
    };
    for job in held {
        tracing::warn!(job = %job, "executor restarted: releasing a job it held");
        if let Err(e) = release_for(state, orch, &job).await {
            tracing::warn!(job = %job, code = e.code, "executor recovery: release refused");
        }
    }
}

struct JobCtx {
    state: AppState,
    exe: PathBuf,
    orch: String,
    run_dir: PathBuf,
    stop: watch::Receiver<bool>,
}

/// Why a sandbox was stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The execution ended elsewhere (cancelled, lease lost): the store is already final.
    Ended,
    /// The server is shutting down: release the job.
    Shutdown,
    /// Our watchdog hit the job timeout.
    Timeout,
}

impl JobCtx {
    async fn run(self, c: Claimed) {
        let job_id = c.job.id.clone();
        let exec = c.execution_id.clone();
        let result = self.run_inner(&c).await;
        if let Err(e) = result {
            tracing::error!(job = %job_id, execution = %exec, error = %e, "job failed to start");
            let _ = crate::api::logs::append(
                &self.state,
                &exec,
                "stderr",
                vec![format!("jobcell: could not start the job: {e}")],
            )
            .await;
            let _ = complete_for(
                &self.state,
                &self.orch,
                &job_id,
                Status::Failed,
                Some(EXIT_JOBCELL_FAILED as i64),
                None,
            )
            .await;
        }
    }

    async fn run_inner(&self, c: &Claimed) -> Result<(), ExecutorError> {
        let state = &self.state;
        let job_id = c.job.id.as_str();
        let exec = c.execution_id.as_str();
        let spec: JobSpec = serde_json::from_value(c.job.spec.clone())
            .map_err(|e| ExecutorError::InvalidJob(e.to_string()))?;
        let dirs = ExecDir::create(&self.run_dir, exec)?;
        let _cleanup = RemoveDir(dirs.dir.clone());
        if let Some(s) = &spec.script {
            std::fs::write(&dirs.script, &s.content).map_err(|source| ExecutorError::Io {
                path: dirs.script.clone(),
                source,
            })?;
        }
        // The sandbox talks to the runtime API (only) on its own socket.
        let listener =
            tokio::net::UnixListener::bind(&dirs.socket).map_err(|source| ExecutorError::Io {
                path: dirs.socket.clone(),
                source,
            })?;
        let server = tokio::spawn(
            axum::serve(listener, crate::api::sandbox_router(state.clone())).into_future(),
        );
        let _server_guard = AbortOnDrop(server);
        let (token, _) = mint_token(&state.secrets, exec, job_id, crate::api::auth::ALL_SCOPES)
            .map_err(|e| ExecutorError::InvalidJob(e.to_string()))?;
        let mut launch = build_launch(&self.exe, &spec, &dirs, exec, &token)?;
        // ACTIONS_CACHE_URL / ACTIONS_RUNTIME_TOKEN and the in-sandbox cache listener.
        let cache_ready =
            crate::cache::sandbox::prepare(state, &mut launch, job_id, exec, &dirs.dir).map_err(
                |source| ExecutorError::Io {
                    path: dirs.dir.clone(),
                    source,
                },
            )?;
        let mut ended = state.ended.subscribe();
        set_running_for(state, &self.orch, job_id)
            .await
            .map_err(|e| ExecutorError::InvalidJob(format!("set running: {}", e.code)))?;
        let mut cmd = tokio::process::Command::new(&launch.program);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe. PDEATHSIG makes `jobcell run` (and with it the sandbox,
        // whose pid 1 dies with its supervisor) die if this server is killed, so no job keeps
        // running unsupervised after a crash while its lease expires and it is requeued.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecutorError::Io {
                path: launch.program.clone(),
                source,
            })?;
        let _cache_listener = cache_ready.and_then(|ready| {
            let pid = child.id()?;
            Some(crate::cache::sandbox::spawn_listener(
                state.clone(),
                pid,
                ready,
            ))
        });
        state
            .metrics
            .sandboxes_running
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _running = RunningGuard(state.clone());
        // At most 256 pending lines of at most 16 KiB each: a chatty job waits on its pipe
        // instead of growing memory or losing lines.
        let (tx, rx) = mpsc::channel(256);
        let writer = tokio::spawn(write_logs(state.clone(), exec.to_string(), rx));
        let out = child
            .stdout
            .take()
            .map(|o| tokio::spawn(pump_lines(o, "stdout", tx.clone())));
        let err = child
            .stderr
            .take()
            .map(|e| tokio::spawn(pump_lines(e, "stderr", tx.clone())));
        drop(tx);

        let timeout = Duration::from_secs(spec.timeout_secs()) + Duration::from_secs(30);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut beat = tokio::time::interval(Duration::from_secs((LEASE_SECS / 3) as u64));
        beat.tick().await;
        let mut stop_rx = self.stop.clone();
        let mut stopped: Option<Stop> = None;
        let status = loop {
            tokio::select! {
                st = child.wait() => break st.ok(),
                _ = beat.tick() => {
                    if let Err(e) = heartbeat_for(state, &self.orch, job_id).await {
                        tracing::warn!(job = %job_id, code = e.code, "lease lost; stopping sandbox");
                        stopped = Some(Stop::Ended);
                        let _ = child.start_kill();
                    }
                }
                ev = ended.recv() => match ev {
                    Ok(e) if e.execution_id == exec => {
                        stopped = Some(Stop::Ended);
                        let _ = child.start_kill();
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if state.registry.get(exec, crate::store::now_ms()).is_none() {
                            stopped = Some(Stop::Ended);
                            let _ = child.start_kill();
                        }
                    }
                    Err(_) => {}
                },
                _ = stop_rx.changed() => {
                    if *stop_rx.borrow() && stopped.is_none() {
                        stopped = Some(Stop::Shutdown);
                        let _ = child.start_kill();
                    }
                }
                _ = &mut deadline, if stopped.is_none() => {
                    stopped = Some(Stop::Timeout);
                    let _ = child.start_kill();
                }
            }
        };
        for t in [out, err].into_iter().flatten() {
            let _ = t.await;
        }
        let _ = writer.await;
        let outcome: Option<Value> = std::fs::read(&dirs.outcome)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object);
        let code = status.and_then(|s| s.code());
        match stopped {
            Some(Stop::Ended) => return Ok(()),
            Some(Stop::Shutdown) => {
                let _ = release_for(state, &self.orch, job_id).await;
                return Ok(());
            }
            _ => {}
        }
        let timed_out = stopped == Some(Stop::Timeout)
            || code == Some(EXIT_TIMEOUT)
            || outcome
                .as_ref()
                .and_then(|o| o.get("timedOut"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let exit = outcome
            .as_ref()
            .and_then(|o| o.get("exitCode"))
            .and_then(Value::as_i64)
            .or(code.map(i64::from));
        let final_status = if timed_out {
            Status::Timeout
        } else if exit == Some(0) {
            Status::Completed
        } else {
            Status::Failed
        };
        if let Err(e) = complete_for(state, &self.orch, job_id, final_status, exit, outcome).await {
            tracing::warn!(job = %job_id, code = e.code, "completion refused");
        }
        Ok(())
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Aborts a background task when the job that needs it ends.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct RunningGuard(AppState);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .sandboxes_running
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> JobSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn launch_flags_follow_the_run_contract() {
        let dirs = ExecDir {
            dir: "/r/ex".into(),
            socket: "/r/ex/api.sock".into(),
            script: "/r/ex/script".into(),
            outcome: "/r/ex/outcome.json".into(),
        };
        let s = spec(serde_json::json!({
            "userId": "u", "script": {"type": "python", "content": "print(1)"},
            "profile": "strict", "limits": {"cpus": 0.5, "memoryMb": 256, "pids": 50, "tmpfsMb": 64},
            "env": {"A": "b"}, "timeoutSeconds": 30, "network": "none"
        }));
        let l = build_launch(Path::new("/bin/jobcell"), &s, &dirs, "ex_1", "tok").unwrap();
        let a = l.args.join(" ");
        assert!(!a.contains("tok "), "the token never appears in argv: {a}");
        assert_eq!(
            l.env,
            vec![("JOBCELL_TOKEN".to_string(), "tok".to_string())]
        );
        assert!(a.starts_with("run --profile strict --cpus 0.5 --memory 256M --pids 50 --tmpfs-size 64M --net none --env A=b "), "{a}");
        assert!(a.contains("--env JOBCELL_API=unix:/run/jobcell/api.sock --env JOBCELL_TOKEN --env JOBCELL_EXECUTION_ID=ex_1 --env PATH=/run/jobcell/bin:"));
        assert!(a.contains("--bind /r/ex/api.sock:/run/jobcell/api.sock:rw --bind /bin/jobcell:/run/jobcell/bin/jobcell --bind /r/ex/script:/run/jobcell/script "));
        assert!(
            a.ends_with("--timeout 30s --json /r/ex/outcome.json -- python3 /run/jobcell/script"),
            "{a}"
        );
        let c = spec(serde_json::json!({"userId": "u", "command": ["echo", "a b"]}));
        let l = build_launch(Path::new("/bin/jobcell"), &c, &dirs, "ex_1", "tok").unwrap();
        assert_eq!(&l.args[l.args.len() - 3..], ["--", "echo", "a b"]);
        assert!(!l.args.iter().any(|x| x.contains("script")));
        assert!(l.args.contains(&"3600s".to_string()));
    }

    #[tokio::test]
    async fn lines_are_split_bounded_and_complete() {
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend(b"\nlast-no-newline");
        let (tx, mut rx) = mpsc::channel(1);
        let pump = tokio::spawn(pump_lines(std::io::Cursor::new(input), "stdout", tx));
        let mut got = Vec::new();
        while let Some((s, l)) = rx.recv().await {
            assert_eq!(s, "stdout");
            got.push(l);
        }
        pump.await.unwrap().unwrap();
        assert_eq!(got[0], "one");
        assert_eq!(got[1], "two");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3], "x".repeat(10));
        assert_eq!(got[4], "last-no-newline");
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn orchestrator_id_is_valid() {
        let id = orchestrator_id();
        assert!(id.starts_with("local-"));
        assert!(crate::api::auth::valid_orchestrator_id(&id), "{id}");
    }
}
