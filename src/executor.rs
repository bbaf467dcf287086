//! Local executor of `jobcell serve --executor local`: claims jobs as orchestrator
//! `local-<hostname>` and runs each in a sandbox via `jobcell run`.

use crate::api::AppState;

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("the local executor is not available in this build yet; use --executor none")]
    Unavailable,
}

/// Starts the executor loop.
pub fn spawn(
    _state: AppState,
    _max_jobs: usize,
    _stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ExecutorError> {
    Err(ExecutorError::Unavailable)
}
