//! HTTP handlers of the cache: `/_apis/artifactcache/...` (token required) and
//! `/_artifacts/{id}` (signed URL, no token). Each operation and each refusal is audited;
//! errors use the API's generic body.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::store::{CacheStoreError, EntryState, NewReservation};
use super::validate::{
    covers_exactly, parse_content_range, parse_range, valid_key, valid_version, RangeReq,
    MAX_LOOKUP_KEYS,
};
use super::Cache;
use crate::api::auth::{bearer, deny};
use crate::api::error::{ApiError, ApiPath, ApiQuery, JsonBody};
use crate::api::AppState;
use crate::store::{now_ms, rfc3339, AuditRecord};

/// The cache routes (merged into the main router and the sandbox router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_apis/artifactcache/cache", get(lookup))
        .route("/_apis/artifactcache/caches", post(reserve))
        .route(
            "/_apis/artifactcache/caches/{cache_id}",
            post(commit).patch(upload),
        )
        .route("/_artifacts/{cache_id}", get(download))
}

/// Scope used by every caller when authentication is disabled and no valid token is shown.
pub const INSECURE_SCOPE: &str = "_insecure";

/// Write buffer of uploads.
const WRITE_BUF: usize = 4 << 20;
/// Read size of downloads.
const READ_BUF: usize = 1 << 20;

/// A refusal: an API error, or 429 with `Retry-After`.
pub enum Fail {
    Api(ApiError),
    RateLimited(u64),
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        Fail::Api(e)
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::Api(e) => e.into_response(),
            Fail::RateLimited(secs) => {
                let mut r = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
        }
    }
}

fn cache_of(state: &AppState) -> Result<Arc<Cache>, ApiError> {
    state.cache.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cache_disabled",
            "cache not available",
        )
    })
}

/// An authenticated cache caller.
#[derive(Debug, Clone)]
pub struct CacheCaller {
    pub actor: String,
    pub user_id: Option<String>,
    pub scope: String,
    pub job_id: String,
    pub execution_id: String,
}

fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-cache-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(headers).filter(|t| !t.is_empty()))
}

impl FromRequestParts<AppState> for CacheCaller {
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Fail> {
        let cache = cache_of(state)?;
        let generic = || ApiError::unauthorized("unauthorized", "unauthorized");
        let token = presented_token(&parts.headers).map(str::to_string);
        let found = token.as_deref().and_then(|t| {
            cache
                .tokens
                .resolve(&state.secrets, &state.registry, t, now_ms())
        });
        let caller = match (found, token.is_some()) {
            (Some(e), _) => CacheCaller {
                actor: format!("cache:{}", e.execution_id),
                user_id: Some(e.user_id),
                scope: e.cache_scope,
                job_id: e.job_id,
                execution_id: e.execution_id,
            },
            _ if state.config.insecure_no_cache_auth => CacheCaller {
                actor: "anonymous".into(),
                user_id: None,
                scope: INSECURE_SCOPE.into(),
                job_id: String::new(),
                execution_id: String::new(),
            },
            (None, false) => {
                return Err(
                    deny(state, parts, "anonymous", "missing_credentials", generic())
                        .await
                        .into(),
                )
            }
            (None, true) => {
                // Forged, of another secret, or of an execution that is no longer active.
                return Err(
                    deny(state, parts, "anonymous", "invalid_cache_token", generic())
                        .await
                        .into(),
                );
            }
        };
        let who = if caller.execution_id.is_empty() {
            "anonymous"
        } else {
            caller.execution_id.as_str()
        };
        if let Err(secs) = cache.limiter.check(who) {
            state.metrics.auth_failure("rate_limited");
            state
                .audit_denied(
                    &caller.actor,
                    caller.user_id.as_deref(),
                    &format!("{} {}", parts.method, parts.uri.path()),
                    "rate_limited",
                )
                .await;
            return Err(Fail::RateLimited(secs));
        }
        parts.extensions.insert(crate::api::error::CheckedActor {
            actor: caller.actor.clone(),
            user_id: caller.user_id.clone(),
        });
        Ok(caller)
    }
}

/// Audits an operation (fail-closed) and passes its result through.
async fn audited<T>(
    state: &AppState,
    caller: &CacheCaller,
    action: &str,
    target: &str,
    detail: Option<String>,
    r: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let (result, det) = match &r {
        Ok(_) => ("ok".to_string(), detail),
        Err(e) => {
            if e.status == StatusCode::NOT_FOUND && e.detail.as_deref() == Some("scope_mismatch") {
                state.metrics.auth_failure("cache_scope_mismatch");
            }
            (e.audit_result(), e.detail.clone())
        }
    };
    state
        .audit(AuditRecord {
            ts: 0,
            actor: caller.actor.clone(),
            user_id: caller.user_id.clone(),
            action: action.to_string(),
            target: target.to_string(),
            result,
            detail: det,
        })
        .await?;
    r
}

fn store_err(e: CacheStoreError) -> ApiError {
    match e {
        CacheStoreError::NotFound => ApiError::not_found(),
        CacheStoreError::Locked => ApiError::new(
            StatusCode::CONFLICT,
            "cache_locked",
            "entry is being written",
        ),
        CacheStoreError::Exists => {
            ApiError::new(StatusCode::CONFLICT, "cache_exists", "entry exists")
        }
        CacheStoreError::NotPending => ApiError::new(
            StatusCode::CONFLICT,
            "cache_not_pending",
            "entry is not being written",
        ),
        CacheStoreError::QuotaExceeded => {
            ApiError::bad_request("cache_quota_exceeded", "cache quota exceeded")
        }
        other => ApiError::internal(other.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("task: {e}")))?
}

async fn cdb<T: Send + 'static>(
    cache: &Arc<Cache>,
    f: impl FnOnce(&dyn super::CacheStore) -> Result<T, CacheStoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let c = cache.clone();
    blocking(move || f(c.store.as_ref()).map_err(store_err)).await
}

/// The pending entry `id` of the caller's scope (404 for any other scope, as for a missing
/// one; the crossing is audited).
async fn own_pending(
    cache: &Arc<Cache>,
    caller: &CacheCaller,
    id: &str,
) -> Result<super::store::Entry, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found())?;
    let e = cdb(cache, move |s| s.get(id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    if e.scope != caller.scope {
        return Err(ApiError::not_found().detail("scope_mismatch"));
    }
    if e.state != EntryState::Pending {
        return Err(store_err(CacheStoreError::NotPending));
    }
    Ok(e)
}

#[derive(Deserialize)]
struct LookupQuery {
    keys: Option<String>,
    version: Option<String>,
}

fn base_url(cache: &Cache, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(u) = &cache.config.public_url {
        return Ok(u.clone());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .ok_or_else(|| ApiError::bad_request("invalid_host", "invalid Host header"))?;
    Ok(format!("http://{host}"))
}

async fn lookup(
    State(state): State<AppState>,
    caller: CacheCaller,
    ApiQuery(q): ApiQuery<LookupQuery>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let cache = cache_of(&state)?;
    let keys_raw = q.keys.clone().unwrap_or_default();
    let version = q.version.clone().unwrap_or_default();
    let target = format!("{}/{}@{}", caller.scope, keys_raw, version);
    let r = async {
        let keys: Vec<String> = keys_raw.split(',').map(str::to_string).collect();
        if keys.len() > MAX_LOOKUP_KEYS {
            return Err(ApiError::bad_request("too_many_keys", "too many keys"));
        }
        if !keys.iter().all(|k| valid_key(k)) {
            return Err(ApiError::bad_request("invalid_key", "invalid key"));
        }
        if !valid_version(&version) {
            return Err(ApiError::bad_request("invalid_version", "invalid version"));
        }
        let base = base_url(&cache, &headers)?;
        let (scope, v) = (caller.scope.clone(), version.clone());
        let hit = cdb(&cache, move |s| s.lookup(&scope, &v, &keys, now_ms())).await?;
        Ok(hit.map(|e| {
            let exp = now_ms() / 1000 + cache.config.url_ttl.as_secs() as i64;
            let sig = cache.signer.sign(e.id, exp);
            (
                e.id,
                json!({
                    "cacheKey": e.key,
                    "scope": e.scope,
                    "archiveLocation": format!("{base}/_artifacts/{}?exp={exp}&sig={sig}", e.id),
                    "creationTime": rfc3339(e.committed_at.unwrap_or(e.created_at)),
                }),
            )
        }))
    }
    .await;
    let detail = match &r {
        Ok(Some((id, _))) => Some(format!("hit:{id}")),
        Ok(None) => Some("miss".to_string()),
        Err(_) => None,
    };
    match audited(&state, &caller, "cache.lookup", &target, detail, r).await? {
        Some((_, body)) => Ok(Json(body).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReserveReq {
    key: String,
    version: String,
    #[serde(default)]
    cache_size: Option<i64>,
}

async fn reserve(
    State(state): State<AppState>,
    caller: CacheCaller,
    JsonBody(req): JsonBody<ReserveReq>,
) -> Result<Response, Fail> {
    let cache = cache_of(&state)?;
    let target = format!("{}/{}@{}", caller.scope, req.key, req.version);
    let r = async {
        if !valid_key(&req.key) {
            return Err(ApiError::bad_request("invalid_key", "invalid key"));
        }
        if !valid_version(&req.version) {
            return Err(ApiError::bad_request("invalid_version", "invalid version"));
        }
        let cap = cache.config.max_entry_bytes.min(i64::MAX as u64) as i64;
        let size = req.cache_size.unwrap_or(cap);
        if size < 0 {
            return Err(ApiError::bad_request("invalid_size", "invalid cache size"));
        }
        if size > cap {
            return Err(
                ApiError::bad_request("cache_too_large", "cache size over the limit")
                    .detail(format!("{size} > {cap}")),
            );
        }
        let quota = cache.config.scope_quota_bytes.min(i64::MAX as u64) as i64;
        let (scope, key, version) = (caller.scope.clone(), req.key.clone(), req.version.clone());
        let (job, exec) = (caller.job_id.clone(), caller.execution_id.clone());
        let (id, evicted) = cdb(&cache, move |s| {
            s.reserve(&NewReservation {
                scope: &scope,
                key: &key,
                version: &version,
                reserved_size: size,
                job_id: &job,
                execution_id: &exec,
                now: now_ms(),
                quota,
            })
        })
        .await?;
        let c = cache.clone();
        let ev = evicted.clone();
        let part = cache.part_path(id);
        let created = blocking(move || {
            c.delete_files(&ev);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&part)
                .map(drop)
                .map_err(|e| ApiError::internal(format!("{}: {e}", part.display())))
        })
        .await;
        if let Err(e) = created {
            let _ = cdb(&cache, move |s| s.remove(id)).await;
            return Err(e);
        }
        Ok((id, evicted))
    }
    .await;
    if let Ok((_, evicted)) = &r {
        for e in evicted {
            state
                .audit(AuditRecord {
                    ts: 0,
                    actor: caller.actor.clone(),
                    user_id: caller.user_id.clone(),
                    action: "cache.evicted".into(),
                    target: format!("{}/{} #{}", e.scope, e.key, e.id),
                    result: "ok".into(),
                    detail: Some("lru".into()),
                })
                .await?;
        }
    }
    let detail = r.as_ref().ok().map(|(id, _)| format!("id:{id}"));
    let (id, _) = audited(&state, &caller, "cache.reserve", &target, detail, r).await?;
    Ok((StatusCode::CREATED, Json(json!({ "cacheId": id }))).into_response())
}

async fn upload(
    State(state): State<AppState>,
    caller: CacheCaller,
    ApiPath(cache_id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Fail> {
    let cache = cache_of(&state)?;
    let mut target = format!("{}/#{}", caller.scope, cache_id);
    let r = async {
        let entry = own_pending(&cache, &caller, &cache_id).await?;
        let (start, end) = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_content_range", "invalid Content-Range")
            })?;
        target.push_str(&format!(" bytes {start}-{end}"));
        if end >= entry.reserved_size as u64 {
            return Err(ApiError::bad_request(
                "range_past_reserved_size",
                "range past the reserved size",
            ));
        }
        let want = end - start + 1;
        if let Some(len) = headers.get(header::CONTENT_LENGTH) {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::bad_request("invalid_request", "invalid request"))?;
            if len != want {
                return Err(ApiError::bad_request(
                    "length_mismatch",
                    "body length differs from Content-Range",
                ));
            }
        }
        let lock = cache.lock(entry.id);
        let _shared = lock.read().await;
        // A commit or discard may have finished while this upload waited for the lock.
        let id = entry.id;
        match cdb(&cache, move |s| s.get(id)).await? {
            Some(e) if e.state == EntryState::Pending => {}
            _ => return Err(store_err(CacheStoreError::NotPending)),
        }
        let part = cache.part_path(entry.id);
        let file = {
            let p = part.clone();
            blocking(move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| ApiError::internal(format!("{}: {e}", p.display())))
            })
            .await?
        };
        let file = Arc::new(file);
        let mut stream = body.into_data_stream();
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BUF);
        let mut offset = start;
        let mut received: u64 = 0;
        let mut inflight: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
        let short =
            || ApiError::bad_request("length_mismatch", "body length differs from Content-Range");
        loop {
            let next = stream.next().await;
            let chunk: Option<Bytes> = match next {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    return Err(ApiError::bad_request("invalid_body", "body read failed")
                        .detail(e.to_string()))
                }
                None => None,
            };
            let done = chunk.is_none();
            if let Some(c) = chunk {
                received += c.len() as u64;
                if received > want {
                    return Err(short());
                }
                buf.extend_from_slice(&c);
            }
            if buf.len() >= WRITE_BUF || (done && !buf.is_empty()) {
                if let Some(w) = inflight.take() {
                    w.await
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                }
                let data = std::mem::replace(&mut buf, Vec::with_capacity(WRITE_BUF));
                let (f, at) = (file.clone(), offset);
                offset += data.len() as u64;
                inflight = Some(tokio::task::spawn_blocking(move || {
                    f.write_all_at(&data, at)
                }));
            }
            if done {
                break;
            }
        }
        if let Some(w) = inflight.take() {
            w.await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        if received != want {
            return Err(short());
        }
        cdb(&cache, move |s| {
            s.add_range(id, start as i64, end as i64 + 1, now_ms())
        })
        .await?;
        Ok(())
    }
    .await;
    audited(&state, &caller, "cache.upload", &target, None, r).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct CommitReq {
    size: i64,
}

async fn commit(
    State(state): State<AppState>,
    caller: CacheCaller,
    ApiPath(cache_id): ApiPath<String>,
    JsonBody(req): JsonBody<CommitReq>,
) -> Result<Response, Fail> {
    let cache = cache_of(&state)?;
    let target = format!("{}/#{} size {}", caller.scope, cache_id, req.size);
    let r = async {
        let entry = own_pending(&cache, &caller, &cache_id).await?;
        let id = entry.id;
        let lock = cache.lock(id);
        let _excl = lock.write().await;
        let ranges = cdb(&cache, move |s| s.ranges(id)).await?;
        let size = req.size;
        if size < 0 || size > entry.reserved_size || !covers_exactly(ranges, size) {
            // The upload is unusable: discard it so nothing half-written can ever be read.
            let c = cache.clone();
            let removed = cdb(&cache, move |s| s.remove(id)).await?;
            if removed {
                let _ = blocking(move || {
                    let _ = std::fs::remove_file(c.part_path(id));
                    c.unlock(id);
                    Ok(())
                })
                .await;
            }
            return Err(ApiError::bad_request(
                "size_mismatch",
                "size differs from the uploaded data",
            ));
        }
        let c = cache.clone();
        blocking(move || {
            let part = c.part_path(id);
            let blob = c.blob_path(id);
            let ie = |e: std::io::Error| ApiError::internal(format!("commit {id}: {e}"));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&part)
                .map_err(ie)?;
            f.set_len(size as u64).map_err(ie)?;
            f.sync_all().map_err(ie)?;
            drop(f);
            std::fs::rename(&part, &blob).map_err(ie)?;
            if let Some(dir) = blob.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(ie)?;
            }
            if let Err(e) = c.store.mark_committed(id, size, now_ms()) {
                let _ = std::fs::remove_file(&blob);
                let _ = c.store.remove(id);
                return Err(store_err(e));
            }
            c.unlock(id);
            Ok(())
        })
        .await
    }
    .await;
    audited(&state, &caller, "cache.commit", &target, None, r).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct DownloadQuery {
    exp: Option<String>,
    sig: Option<String>,
}

async fn download(
    State(state): State<AppState>,
    ApiPath(cache_id): ApiPath<String>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let cache = cache_of(&state)?;
    let (st, cid) = (&state, &cache_id);
    let denied = |reason: &'static str| async move {
        st.metrics.auth_failure(reason);
        st.audit_denied("anonymous", None, &format!("GET /_artifacts/{cid}"), reason)
            .await;
        Fail::Api(ApiError::forbidden("forbidden", "forbidden"))
    };
    let q = q.map(|Query(q)| q).unwrap_or(DownloadQuery {
        exp: None,
        sig: None,
    });
    let exp = q.exp.as_deref().and_then(|e| e.parse::<i64>().ok());
    let (Ok(id), Some(exp), Some(sig)) = (cache_id.parse::<i64>(), exp, q.sig.as_deref()) else {
        return Err(denied("bad_signature").await);
    };
    if !cache.signer.verify(id, exp, sig) {
        return Err(denied("bad_signature").await);
    }
    if exp < now_ms() / 1000 {
        return Err(denied("url_expired").await);
    }
    let entry = cdb(&cache, move |s| s.get(id)).await?;
    let caller = CacheCaller {
        actor: format!("cache-url:{id}"),
        user_id: None,
        scope: entry.as_ref().map(|e| e.scope.clone()).unwrap_or_default(),
        job_id: String::new(),
        execution_id: String::new(),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let r = async {
        let entry = entry
            .filter(|e| e.state == EntryState::Committed)
            .ok_or_else(ApiError::not_found)?;
        let mut file = tokio::fs::File::open(cache.blob_path(id))
            .await
            .map_err(|_| ApiError::not_found())?;
        let len = entry.size.unwrap_or(0) as u64;
        let _ = cdb(&cache, move |s| s.touch(id, now_ms())).await;
        let (status, start, count) = match parse_range(range.as_deref(), len) {
            RangeReq::Full => (StatusCode::OK, 0, len),
            RangeReq::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
            RangeReq::Unsatisfiable => {
                let mut r = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    "range not satisfiable",
                )
                .into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                );
                return Ok((r, format!("{} bytes */{len}", entry.key)));
            }
        };
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        let stream = futures_util::stream::unfold((file, count), |(mut f, left)| async move {
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; (left as usize).min(READ_BUF)];
            match f.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                    (f, 0),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), (f, left - n as u64)))
                }
                Err(e) => Some((Err(e), (f, 0))),
            }
        });
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if status == StatusCode::PARTIAL_CONTENT {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
                    .expect("ascii"),
            );
        }
        Ok((resp, format!("{} bytes {start}+{count}", entry.key)))
    }
    .await;
    let target = match &r {
        Ok((_, t)) => format!("{}/{t} #{id}", caller.scope),
        Err(_) => format!("#{id}"),
    };
    let (resp, _) = audited(&state, &caller, "cache.download", &target, None, r).await?;
    Ok(resp)
}
