//! The GitHub Actions cache service (protocol v1, as spoken by `@actions/cache` 3.x) with
//! job-scoped HMAC tokens: lookup, reserve, chunked parallel upload at offsets, commit (fsync
//! and rename, so no half entry is ever readable), and downloads through signed short-lived
//! URLs. Entries live in the job's cache scope; quota per scope with LRU eviction,
//! retention and abandoned-reservation sweeps, per-token rate limit, every operation audited.
//!
//! Layout under `<state-dir>/cache/`: `cache.db` (metadata, [`store::SqliteCacheStore`]),
//! `tmp/<id>.part` (uploads in progress), `blobs/<id>` (committed entries).

pub mod auth;
pub mod routes;
pub mod sandbox;
pub mod store;
pub mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::AppState;
use crate::secrets::Secrets;
use crate::store::{now_ms, AuditRecord};
pub use routes::routes;
pub use store::{CacheStore, CacheStoreError, EntryState, Removed, SqliteCacheStore};

/// Errors opening the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache store: {0}")]
    Store(#[from] CacheStoreError),
    #[error("invalid cache option {name}: {message}")]
    Option { name: &'static str, message: String },
}

/// Limits and timings of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Largest entry (bytes).
    pub max_entry_bytes: u64,
    /// Bytes a scope may hold (committed plus reserved); least recently used entries are
    /// evicted to make room.
    pub scope_quota_bytes: u64,
    /// Committed entries unused this long are removed.
    pub retention: Duration,
    /// Reservations without an upload or commit this long are removed.
    pub abandoned_after: Duration,
    /// Requests per second per token (refill rate).
    pub rate_per_sec: f64,
    /// Bucket size (burst) per token.
    pub burst: f64,
    /// Lifetime of a signed download URL.
    pub url_ttl: Duration,
    /// Interval of the background sweep.
    pub sweep_every: Duration,
    /// Base of download URLs (e.g. `http://cache.example:8427`); default from `Host`.
    pub public_url: Option<String>,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            max_entry_bytes: 10 << 30,
            scope_quota_bytes: 50 << 30,
            retention: Duration::from_secs(7 * 24 * 3600),
            abandoned_after: Duration::from_secs(15 * 60),
            rate_per_sec: 50.0,
            burst: 200.0,
            url_ttl: Duration::from_secs(600),
            sweep_every: Duration::from_secs(60),
            public_url: None,
        }
    }
}

/// Cache options of `jobcell serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CacheArgs {
    /// Largest cache entry, e.g. 10G.
    #[arg(long = "cache-max-entry-size", default_value = "10G")]
    pub max_entry_size: String,
    /// Total cache size per scope, e.g. 50G (LRU eviction beyond).
    #[arg(long = "cache-quota", default_value = "50G")]
    pub quota: String,
    /// Remove cache entries unused for this long, e.g. 7d, 12h.
    #[arg(long = "cache-retention", default_value = "7d")]
    pub retention: String,
    /// Cache requests per second per token.
    #[arg(long = "cache-rate", default_value_t = 50.0)]
    pub rate: f64,
    /// Burst of cache requests per token.
    #[arg(long = "cache-burst", default_value_t = 200.0)]
    pub burst: f64,
    /// Public base URL of download links (default: from the request's Host header).
    #[arg(long = "cache-public-url")]
    pub public_url: Option<String>,
}

fn parse_days(s: &str) -> Result<Duration, String> {
    if let Some(d) = s.strip_suffix('d') {
        let n: u64 = d.parse().map_err(|_| format!("bad duration {s:?}"))?;
        return Ok(Duration::from_secs(n * 86400));
    }
    crate::units::parse_duration(s).map_err(|e| e.to_string())
}

impl CacheArgs {
    /// The configuration these options describe.
    pub fn config(&self) -> Result<CacheConfig, CacheError> {
        let opt = |name: &'static str| move |message: String| CacheError::Option { name, message };
        let size = |name: &'static str, s: &str| {
            crate::units::parse_size(s).map_err(|e| opt(name)(e.to_string()))
        };
        let c = CacheConfig {
            max_entry_bytes: size("--cache-max-entry-size", &self.max_entry_size)?,
            scope_quota_bytes: size("--cache-quota", &self.quota)?,
            retention: parse_days(&self.retention).map_err(opt("--cache-retention"))?,
            rate_per_sec: self.rate,
            burst: self.burst,
            public_url: self
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
            ..CacheConfig::default()
        };
        if !(c.rate_per_sec > 0.0 && c.burst >= 1.0) {
            return Err(opt("--cache-rate")(
                "rate must be > 0 and burst >= 1".into(),
            ));
        }
        Ok(c)
    }
}

/// The cache service: metadata store, blob directories, token index, limiter, signer.
pub struct Cache {
    pub config: CacheConfig,
    pub store: Arc<dyn CacheStore>,
    blobs: PathBuf,
    tmp: PathBuf,
    pub(crate) tokens: auth::TokenIndex,
    pub(crate) limiter: auth::RateLimiter,
    pub signer: auth::UrlSigner,
    /// Per pending entry: uploads hold it shared, the commit exclusively.
    locks: Mutex<HashMap<i64, Arc<tokio::sync::RwLock<()>>>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Cache {
    /// Opens the cache under `<state_dir>/cache`, removing files that no committed (blobs) or
    /// pending (temporary files) entry owns — what a crash between upload and commit leaves.
    pub fn open(
        state_dir: &Path,
        secrets: &Secrets,
        config: CacheConfig,
    ) -> Result<Cache, CacheError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = state_dir.join("cache");
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        for d in [&dir, &blobs, &tmp] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err(d))?;
        }
        let store = SqliteCacheStore::open(&dir.join("cache.db"))?;
        let known: HashMap<i64, EntryState> = store.all_ids()?.into_iter().collect();
        for (d, want) in [(&blobs, EntryState::Committed), (&tmp, EntryState::Pending)] {
            for f in std::fs::read_dir(d).map_err(io_err(d))?.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let id = name.trim_end_matches(".part").parse::<i64>().ok();
                if id.and_then(|i| known.get(&i)) != Some(&want) {
                    tracing::warn!(file = %f.path().display(), "removing orphaned cache file");
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        // A committed entry without its blob cannot be served, a pending one without its
        // temporary file cannot be completed (a crash inside a commit): drop both.
        for (id, st) in &known {
            let file = match st {
                EntryState::Committed => blobs.join(id.to_string()),
                EntryState::Pending => tmp.join(format!("{id}.part")),
            };
            if !file.exists() {
                tracing::warn!(id, "cache entry without its file; removing");
                store.remove(*id)?;
            }
        }
        Ok(Cache {
            limiter: auth::RateLimiter::new(config.rate_per_sec, config.burst),
            signer: auth::UrlSigner::new(secrets),
            tokens: auth::TokenIndex::default(),
            config,
            store: Arc::new(store),
            blobs,
            tmp,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn blob_path(&self, id: i64) -> PathBuf {
        self.blobs.join(id.to_string())
    }

    pub fn part_path(&self, id: i64) -> PathBuf {
        self.tmp.join(format!("{id}.part"))
    }

    pub(crate) fn lock(&self, id: i64) -> Arc<tokio::sync::RwLock<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id).or_default().clone()
    }

    pub(crate) fn unlock(&self, id: i64) {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&id);
    }

    /// Deletes the files of removed entries.
    pub fn delete_files(&self, removed: &[Removed]) {
        for r in removed {
            let _ = std::fs::remove_file(self.blob_path(r.id));
            let _ = std::fs::remove_file(self.part_path(r.id));
            self.unlock(r.id);
        }
    }

    /// Removes entries past retention and reservations abandoned, as of `now` (ms).
    pub fn sweep(&self, now: i64) -> Result<Vec<Removed>, CacheStoreError> {
        let gone = self.store.sweep(
            now - self.config.retention.as_millis() as i64,
            now - self.config.abandoned_after.as_millis() as i64,
        )?;
        self.delete_files(&gone);
        Ok(gone)
    }
}

/// One sweep with auditing (what the background task runs).
pub async fn sweep_and_audit(
    state: &AppState,
    now: i64,
) -> Result<usize, crate::api::error::ApiError> {
    let Some(cache) = state.cache.clone() else {
        return Ok(0);
    };
    let c = cache.clone();
    let gone = tokio::task::spawn_blocking(move || c.sweep(now))
        .await
        .map_err(|e| crate::api::error::ApiError::internal(e.to_string()))?
        .map_err(|e| crate::api::error::ApiError::internal(e.to_string()))?;
    for r in &gone {
        state
            .audit(AuditRecord {
                ts: now_ms(),
                actor: "cache:sweeper".into(),
                user_id: None,
                action: format!("cache.{}", r.reason),
                target: format!("{}/{} #{}", r.scope, r.key, r.id),
                result: "ok".into(),
                detail: None,
            })
            .await?;
    }
    Ok(gone.len())
}

/// Spawns the retention / abandoned-reservation sweeper.
pub fn spawn_sweeper(state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    let every = state.cache.as_ref()?.config.sweep_every;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep_and_audit(&state, now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "cache sweep"),
                Err(e) => tracing::error!(?e, "cache sweep failed"),
            }
        }
    }))
}
