//! Cache API over HTTP (in-process): the protocol round trip (parallel out-of-order chunks,
//! Range downloads), token rules (forged, other secret, finished job, rate limit), scope
//! isolation, signed download URLs (tampered, expired), input limits, size caps, quota with
//! LRU eviction, sweeps, insecure mode, and a crash between upload and commit.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use jobcell::api::{router, ApiConfig, AppState};
use jobcell::cache::{Cache, CacheConfig};
use jobcell::secrets::Secrets;
use jobcell::store::{now_ms, SqliteStore};
use serde_json::{json, Value};

const HOST: &str = "127.0.0.1:8427";

fn open_at(dir: tempfile::TempDir, cfg: CacheConfig, insecure: bool) -> Srv {
    let secrets = Secrets::load_with(dir.path(), None, |_| None).unwrap();
    let key = secrets.internal_api_key.value.clone();
    let store = SqliteStore::open(dir.path()).unwrap();
    let cache = Cache::open(dir.path(), &secrets, cfg).unwrap();
    let state = AppState::new(
        Arc::new(store),
        secrets,
        ApiConfig {
            insecure_no_cache_auth: insecure,
        },
    )
    .unwrap()
    .with_cache(cache);
    Srv {
        app: router(state.clone()),
        state,
        key,
        dir,
    }
}

fn csrv(cfg: CacheConfig) -> Srv {
    open_at(tempfile::tempdir().unwrap(), cfg, false)
}

/// Submits and claims a job; returns (jobId, cacheToken).
async fn job(s: &Srv, body: Value) -> (String, String) {
    s.submit(body).await;
    let (job, _, _, claim) = s.claim_one("orch-a").await;
    (job, claim["cacheToken"].as_str().unwrap().to_string())
}

async fn user_job(s: &Srv, user: &str) -> (String, String) {
    job(s, json!({"userId": user, "command": ["true"]})).await
}

async fn finish(s: &Srv, job: &str) {
    let r = s
        .o(
            "orch-a",
            "PUT",
            &format!("/api/internal/jobs/{job}/status"),
            Some(json!({"status": "running"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = s
        .o(
            "orch-a",
            "POST",
            &format!("/api/internal/jobs/{job}/complete"),
            Some(json!({"status": "completed", "exitCode": 0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

fn creq(
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

async fn lookup(s: &Srv, tok: &str, keys: &str, version: &str) -> Resp {
    let path = format!(
        "/_apis/artifactcache/cache?keys={}&version={version}",
        keys.replace(',', "%2C")
    );
    raw(&s.app, creq("GET", &path, Some(tok), &[], Body::empty())).await
}

async fn reserve(s: &Srv, tok: &str, key: &str, version: &str, size: i64) -> Resp {
    let body = json!({"key": key, "version": version, "cacheSize": size});
    raw(
        &s.app,
        creq(
            "POST",
            "/_apis/artifactcache/caches",
            Some(tok),
            &[("content-type", "application/json")],
            Body::from(body.to_string()),
        ),
    )
    .await
}

async fn patch(s: &Srv, tok: &str, id: i64, start: u64, data: &[u8]) -> Resp {
    let range = format!("bytes {start}-{}/*", start + data.len() as u64 - 1);
    raw(
        &s.app,
        creq(
            "PATCH",
            &format!("/_apis/artifactcache/caches/{id}"),
            Some(tok),
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", &range),
            ],
            Body::from(data.to_vec()),
        ),
    )
    .await
}

async fn commit(s: &Srv, tok: &str, id: i64, size: i64) -> Resp {
    raw(
        &s.app,
        creq(
            "POST",
            &format!("/_apis/artifactcache/caches/{id}"),
            Some(tok),
            &[("content-type", "application/json")],
            Body::from(json!({ "size": size }).to_string()),
        ),
    )
    .await
}

/// Path and query of an absolute archiveLocation.
fn local(url: &str) -> String {
    let rest = url.strip_prefix(&format!("http://{HOST}")).unwrap();
    assert!(rest.starts_with("/_artifacts/"), "{url}");
    rest.to_string()
}

async fn get(s: &Srv, path: &str, headers: &[(&str, &str)]) -> Resp {
    raw(&s.app, creq("GET", path, None, headers, Body::empty())).await
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// Reserves, uploads in one chunk and commits; returns the id.
async fn save(s: &Srv, tok: &str, key: &str, version: &str, bytes: &[u8]) -> i64 {
    let r = reserve(s, tok, key, version, bytes.len() as i64).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["cacheId"].as_i64().unwrap();
    if !bytes.is_empty() {
        assert_eq!(
            patch(s, tok, id, 0, bytes).await.status,
            StatusCode::NO_CONTENT
        );
    }
    let r = commit(s, tok, id, bytes.len() as i64).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    id
}

async fn audit(s: &Srv) -> Vec<Value> {
    let r = s
        .o("orch-a", "GET", "/api/internal/audit?limit=1000", None)
        .await;
    r.body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn round_trip_parallel_chunks_and_ranges() {
    let s = csrv(CacheConfig::default());
    let (_, tok) = user_job(&s, "alice").await;
    assert_eq!(
        lookup(&s, &tok, "k1", "v1").await.status,
        StatusCode::NO_CONTENT
    );
    let blob = data(3 * 65536 + 123, 7);
    let r = reserve(&s, &tok, "k1", "v1", blob.len() as i64).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["cacheId"].as_i64().unwrap();
    // The same key+version while it is written: 409.
    let r = reserve(&s, &tok, "k1", "v1", 10).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(err_code(&r), "cache_locked");
    // Not visible before the commit.
    assert_eq!(
        lookup(&s, &tok, "k1", "v1").await.status,
        StatusCode::NO_CONTENT
    );
    // Four chunks, sent concurrently, last first.
    let chunks: Vec<(u64, Vec<u8>)> = blob
        .chunks(65536)
        .enumerate()
        .map(|(i, c)| ((i * 65536) as u64, c.to_vec()))
        .rev()
        .collect();
    let futs = chunks.iter().map(|(off, c)| patch(&s, &tok, id, *off, c));
    for r in futures_util::future::join_all(futs).await {
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    }
    let r = commit(&s, &tok, id, blob.len() as i64).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let r = reserve(&s, &tok, "k1", "v1", 10).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = lookup(&s, &tok, "k1", "v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["cacheKey"], "k1");
    assert_eq!(r.body["scope"], "alice");
    assert!(r.body["creationTime"].as_str().unwrap().ends_with('Z'));
    let url = r.body["archiveLocation"].as_str().unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:8427/_artifacts/"),
        "{url}"
    );
    assert!(url.contains("exp=") && url.contains("sig="));
    // Download: no auth header needed.
    let d = get(&s, &local(&url), &[]).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.raw, blob);
    let d = get(&s, &local(&url), &[("range", "bytes=100-199")]).await;
    assert_eq!(d.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(d.raw, &blob[100..200]);
    let d = get(&s, &local(&url), &[("range", "bytes=-5")]).await;
    assert_eq!(d.raw, &blob[blob.len() - 5..]);
    let d = get(&s, &local(&url), &[("range", "bytes=999999-")]).await;
    assert_eq!(d.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // Prefix matching: first key exact only, later keys as prefixes; newest wins.
    save(&s, &tok, "k1-newer", "v1", b"newer").await;
    assert_eq!(
        lookup(&s, &tok, "k", "v1").await.status,
        StatusCode::NO_CONTENT
    );
    let r = lookup(&s, &tok, "nothing,k1", "v1").await;
    assert_eq!(r.body["cacheKey"], "k1-newer");
    let r = lookup(&s, &tok, "k1,k1-", "v1").await;
    assert_eq!(r.body["cacheKey"], "k1");
    // Another version misses.
    assert_eq!(
        lookup(&s, &tok, "k1", "v2").await.status,
        StatusCode::NO_CONTENT
    );
    // Empty entries work too.
    save(&s, &tok, "empty", "v1", b"").await;
    let r = lookup(&s, &tok, "empty", "v1").await;
    let d = get(&s, &local(r.body["archiveLocation"].as_str().unwrap()), &[]).await;
    assert_eq!((d.status, d.raw.len()), (StatusCode::OK, 0));
    // Every operation is audited.
    let ev = audit(&s).await;
    for action in [
        "cache.lookup",
        "cache.reserve",
        "cache.upload",
        "cache.commit",
        "cache.download",
    ] {
        assert!(
            ev.iter()
                .any(|e| e["action"] == action && e["result"] == "ok"),
            "{action} not audited"
        );
    }
    assert!(ev
        .iter()
        .any(|e| e["action"] == "cache.reserve" && e["result"] == "denied:cache_locked"));
}

#[tokio::test]
async fn forged_missing_and_foreign_tokens_get_401() {
    let s = csrv(CacheConfig::default());
    let (_, tok) = user_job(&s, "alice").await;
    assert_eq!(
        lookup(&s, &tok, "k", "v").await.status,
        StatusCode::NO_CONTENT
    );
    // The X-Cache-Token header works as well as Bearer.
    let r = raw(
        &s.app,
        creq(
            "GET",
            "/_apis/artifactcache/cache?keys=k&version=v",
            None,
            &[("x-cache-token", &tok)],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Forged: random hex, one digit changed, a token of another secret, garbage, none.
    let mut flipped = tok.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    let other = Secrets::load_with(tempfile::tempdir().unwrap().path(), None, |_| None).unwrap();
    let r = s.state.registry.active(now_ms());
    let foreign = jobcell::api::auth::cache_token(&other, &r[0].job_id, &r[0].execution_id);
    let upper = tok.to_uppercase();
    for bad in [
        "0".repeat(64),
        flipped,
        foreign,
        "not-a-token".to_string(),
        upper,
    ] {
        let r = lookup(&s, &bad, "k", "v").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(err_code(&r), "unauthorized");
        let r = reserve(&s, &bad, "k", "v", 1).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = raw(
        &s.app,
        creq(
            "POST",
            "/_apis/artifactcache/caches",
            None,
            &[],
            Body::from("{}"),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let ev = audit(&s).await;
    assert!(
        ev.iter()
            .filter(|e| e["result"] == "denied:invalid_cache_token")
            .count()
            >= 10
    );
    assert!(ev
        .iter()
        .any(|e| e["result"] == "denied:missing_credentials"
            && e["target"] == "POST /_apis/artifactcache/caches"));
}

#[tokio::test]
async fn finished_cancelled_and_expired_jobs_tokens_are_refused() {
    let s = csrv(CacheConfig::default());
    let (job, tok) = user_job(&s, "alice").await;
    let id = save(&s, &tok, "k", "v", b"abc").await;
    let r = reserve(&s, &tok, "pending", "v", 3).await;
    let pending = r.body["cacheId"].as_i64().unwrap();
    finish(&s, &job).await;
    assert_eq!(
        lookup(&s, &tok, "k", "v").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        patch(&s, &tok, pending, 0, b"abc").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        commit(&s, &tok, id, 3).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Cancelled.
    let (job2, tok2) = user_job(&s, "alice").await;
    assert_eq!(lookup(&s, &tok2, "k", "v").await.status, StatusCode::OK);
    let r = s
        .o(
            "orch-a",
            "POST",
            &format!("/api/internal/jobs/{job2}/cancel"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        lookup(&s, &tok2, "k", "v").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Lease expired (no heartbeat): the token dies with it.
    let (job3, tok3) = user_job(&s, "alice").await;
    assert_eq!(lookup(&s, &tok3, "k", "v").await.status, StatusCode::OK);
    s.sql()
        .execute(
            "UPDATE jobs SET lease_expires_at = 1 WHERE id = ?1",
            [&job3],
        )
        .unwrap();
    s.state.sweep().await.unwrap();
    assert_eq!(
        lookup(&s, &tok3, "k", "v").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn scopes_are_isolated() {
    let s = csrv(CacheConfig::default());
    let (_, alice) = user_job(&s, "alice").await;
    let id = save(&s, &alice, "shared-key", "v", b"alice data").await;
    let r = reserve(&s, &alice, "in-progress", "v", 4).await;
    let pending = r.body["cacheId"].as_i64().unwrap();
    // Another job of another owner: the same key is a miss, its ids are not found.
    let (_, bob) = user_job(&s, "bob").await;
    assert_eq!(
        lookup(&s, &bob, "shared-key", "v").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        lookup(&s, &bob, "x,shared", "v").await.status,
        StatusCode::NO_CONTENT
    );
    let r = patch(&s, &bob, pending, 0, b"evil").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        commit(&s, &bob, pending, 4).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(commit(&s, &bob, id, 10).await.status, StatusCode::NOT_FOUND);
    // Bob may write the same key in his own scope without touching alice's entry.
    save(&s, &bob, "shared-key", "v", b"bob data").await;
    let r = lookup(&s, &alice, "shared-key", "v").await;
    let d = get(&s, &local(r.body["archiveLocation"].as_str().unwrap()), &[]).await;
    assert_eq!(d.raw, b"alice data");
    // A job with an explicit cacheScope shares that scope, not its owner's.
    let (_, repo) = job(
        &s,
        json!({"userId": "alice", "command": ["true"], "cacheScope": "repo-1"}),
    )
    .await;
    assert_eq!(
        lookup(&s, &repo, "shared-key", "v").await.status,
        StatusCode::NO_CONTENT
    );
    // Another job of alice's scope sees alice's entries.
    let (_, alice2) = user_job(&s, "alice").await;
    let r = lookup(&s, &alice2, "shared-key", "v").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["scope"], "alice");
    // Alice's upload still works after bob's attempts, and the data is hers.
    assert_eq!(
        patch(&s, &alice, pending, 0, b"mine").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        commit(&s, &alice, pending, 4).await.status,
        StatusCode::NO_CONTENT
    );
    let ev = audit(&s).await;
    assert!(ev.iter().any(|e| e["action"] == "cache.upload"
        && e["result"] == "denied:not_found"
        && e["detail"] == "scope_mismatch"
        && e["userId"] == "bob"));
}

#[tokio::test]
async fn download_urls_are_signed_and_expire() {
    let s = csrv(CacheConfig::default());
    let (_, tok) = user_job(&s, "alice").await;
    let id = save(&s, &tok, "k", "v", b"secret bytes").await;
    let r = lookup(&s, &tok, "k", "v").await;
    let good = local(r.body["archiveLocation"].as_str().unwrap());
    assert_eq!(get(&s, &good, &[]).await.status, StatusCode::OK);
    let (path, query) = good.split_once('?').unwrap();
    let exp: i64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("exp="))
        .unwrap()
        .parse()
        .unwrap();
    let sig = query
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap();
    let mut tampered = sig.to_string();
    let c = tampered.pop().unwrap();
    tampered.push(if c == 'a' { 'b' } else { 'a' });
    let other_id = save(&s, &tok, "k2", "v", b"other").await;
    let cache = s.state.cache.clone().unwrap();
    let past = now_ms() / 1000 - 1;
    let expired_sig = cache.signer.sign(id, past);
    for bad in [
        path.to_string(),
        format!("{path}?exp={exp}"),
        format!("{path}?exp={exp}&sig={tampered}"),
        format!("{path}?exp={}&sig={sig}", exp + 1000),
        format!("/_artifacts/{other_id}?exp={exp}&sig={sig}"),
        format!("{path}?exp={exp}&sig=zz"),
        format!("{path}?exp={past}&sig={expired_sig}"),
    ] {
        let r = get(&s, &bad, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{bad}");
        assert_eq!(err_code(&r), "forbidden");
    }
    // A valid signature of an entry that is not committed reads nothing.
    let r = reserve(&s, &tok, "pending", "v", 3).await;
    let pid = r.body["cacheId"].as_i64().unwrap();
    let future = now_ms() / 1000 + 60;
    let p = format!(
        "/_artifacts/{pid}?exp={future}&sig={}",
        cache.signer.sign(pid, future)
    );
    assert_eq!(get(&s, &p, &[]).await.status, StatusCode::NOT_FOUND);
    let ev = audit(&s).await;
    assert!(ev.iter().any(|e| e["result"] == "denied:url_expired"));
    assert!(
        ev.iter()
            .filter(|e| e["result"] == "denied:bad_signature")
            .count()
            >= 6
    );
}

#[tokio::test]
async fn keys_versions_and_bodies_are_validated() {
    let s = csrv(CacheConfig::default());
    let (_, tok) = user_job(&s, "alice").await;
    let long = "k".repeat(513);
    for key in [
        "../etc/passwd",
        "a/../../b",
        "/abs",
        "a\\b",
        "a\u{0}b",
        "a,b",
        "",
        long.as_str(),
    ] {
        let r = reserve(&s, &tok, key, "v", 1).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(err_code(&r), "invalid_key");
    }
    assert_eq!(
        reserve(&s, &tok, &"k".repeat(512), "v", 1).await.status,
        StatusCode::CREATED
    );
    let r = reserve(&s, &tok, "k", &"v".repeat(513), 1).await;
    assert_eq!(err_code(&r), "invalid_version");
    for keys in ["..%2Fx", "%2Fabs", "a%5Cb", "a%00b"] {
        let path = format!("/_apis/artifactcache/cache?keys={keys}&version=v");
        let r = raw(&s.app, creq("GET", &path, Some(&tok), &[], Body::empty())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{keys}");
    }
    // Malformed query strings (a repeated field) get the generic error body too.
    let r = raw(
        &s.app,
        creq(
            "GET",
            "/_apis/artifactcache/cache?keys=a&keys=b&version=v",
            Some(&tok),
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    err_code(&r);
    let eleven = (0..11)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let r = lookup(&s, &tok, &eleven, "v").await;
    assert_eq!(err_code(&r), "too_many_keys");
    let ten = (0..10)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        lookup(&s, &tok, &ten, "v").await.status,
        StatusCode::NO_CONTENT
    );
    let r = raw(
        &s.app,
        creq(
            "GET",
            "/_apis/artifactcache/cache?keys=k",
            Some(&tok),
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(err_code(&r), "invalid_version");
    // JSON bodies over 1 MiB: 413; malformed: 400.
    let big = format!(
        "{{\"key\":\"k\",\"version\":\"v\",\"pad\":\"{}\"}}",
        "x".repeat(1 << 20)
    );
    let r = raw(
        &s.app,
        creq(
            "POST",
            "/_apis/artifactcache/caches",
            Some(&tok),
            &[("content-type", "application/json")],
            Body::from(big),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = raw(
        &s.app,
        creq(
            "POST",
            "/_apis/artifactcache/caches",
            Some(&tok),
            &[("content-type", "application/json")],
            Body::from("{\"key\":"),
        ),
    )
    .await;
    assert_eq!(err_code(&r), "invalid_json");
    // Unknown ids are 404 (also non-numeric ones).
    assert_eq!(commit(&s, &tok, 999, 1).await.status, StatusCode::NOT_FOUND);
    let r = raw(
        &s.app,
        creq(
            "POST",
            "/_apis/artifactcache/caches/abc",
            Some(&tok),
            &[("content-type", "application/json")],
            Body::from("{\"size\":1}"),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Files never leave the blob directories whatever the key.
    let blobs = s.dir.path().join("cache/blobs");
    let tmp = s.dir.path().join("cache/tmp");
    for e in std::fs::read_dir(s.dir.path().join("cache")).unwrap() {
        let p = e.unwrap().path();
        assert!(
            p == blobs || p == tmp || p.to_string_lossy().contains("cache.db"),
            "{p:?}"
        );
    }
}

#[tokio::test]
async fn size_cap_reserved_size_and_commit_size() {
    let s = csrv(CacheConfig {
        max_entry_bytes: 1000,
        ..CacheConfig::default()
    });
    let (_, tok) = user_job(&s, "alice").await;
    let r = reserve(&s, &tok, "big", "v", 1001).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(err_code(&r), "cache_too_large");
    assert_eq!(
        reserve(&s, &tok, "neg", "v", -1).await.status,
        StatusCode::BAD_REQUEST
    );
    let r = reserve(&s, &tok, "k", "v", 100).await;
    let id = r.body["cacheId"].as_i64().unwrap();
    // Past the reserved size: refused, nothing written.
    let r = patch(&s, &tok, id, 90, &[1u8; 11]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(err_code(&r), "range_past_reserved_size");
    let r = patch(&s, &tok, id, 1000, &[1u8; 1]).await;
    assert_eq!(err_code(&r), "range_past_reserved_size");
    let part = s.dir.path().join(format!("cache/tmp/{id}.part"));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 0);
    // Body longer than its Content-Range (no Content-Length): refused.
    let r = raw(
        &s.app,
        creq(
            "PATCH",
            &format!("/_apis/artifactcache/caches/{id}"),
            Some(&tok),
            &[("content-range", "bytes 0-9/*")],
            Body::from_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
                axum::body::Bytes::from(vec![0u8; 50]),
            )])),
        ),
    )
    .await;
    assert_eq!(err_code(&r), "length_mismatch");
    let r = raw(
        &s.app,
        creq(
            "PATCH",
            &format!("/_apis/artifactcache/caches/{id}"),
            Some(&tok),
            &[("content-range", "bytes 0-9")],
            Body::from(vec![0u8; 10]),
        ),
    )
    .await;
    assert_eq!(err_code(&r), "invalid_content_range");
    // Upload 0-49 only, commit 100: mismatch → 400 and the entry is discarded.
    assert_eq!(
        patch(&s, &tok, id, 0, &[2u8; 50]).await.status,
        StatusCode::NO_CONTENT
    );
    let r = commit(&s, &tok, id, 100).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(err_code(&r), "size_mismatch");
    assert!(!part.exists());
    assert_eq!(
        patch(&s, &tok, id, 50, &[2u8; 50]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        lookup(&s, &tok, "k", "v").await.status,
        StatusCode::NO_CONTENT
    );
    // The key is free again; a gap in the middle is a mismatch too.
    let r = reserve(&s, &tok, "k", "v", 100).await;
    let id = r.body["cacheId"].as_i64().unwrap();
    patch(&s, &tok, id, 0, &[3u8; 40]).await;
    patch(&s, &tok, id, 60, &[3u8; 40]).await;
    assert_eq!(
        commit(&s, &tok, id, 100).await.status,
        StatusCode::BAD_REQUEST
    );
    // Committing a smaller size than reserved, fully uploaded, is fine.
    let r = reserve(&s, &tok, "k", "v", 100).await;
    let id = r.body["cacheId"].as_i64().unwrap();
    patch(&s, &tok, id, 0, &[4u8; 60]).await;
    assert_eq!(
        commit(&s, &tok, id, 60).await.status,
        StatusCode::NO_CONTENT
    );
    // A committed entry takes no more uploads or commits.
    assert_eq!(
        patch(&s, &tok, id, 0, &[4u8; 1]).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(commit(&s, &tok, id, 60).await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn quota_evicts_least_recently_used_and_sweeps_run() {
    let s = csrv(CacheConfig {
        scope_quota_bytes: 3000,
        ..CacheConfig::default()
    });
    let (_, tok) = user_job(&s, "alice").await;
    let (_, bob) = user_job(&s, "bob").await;
    save(&s, &bob, "bob", "v", &[9u8; 2500]).await;
    for k in ["a", "b", "c"] {
        save(&s, &tok, k, "v", &[1u8; 1000]).await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    // a is used, so b is now the least recently used.
    assert_eq!(lookup(&s, &tok, "a", "v").await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    save(&s, &tok, "d", "v", &[1u8; 1000]).await;
    assert_eq!(
        lookup(&s, &tok, "b", "v").await.status,
        StatusCode::NO_CONTENT
    );
    for k in ["a", "c", "d"] {
        assert_eq!(lookup(&s, &tok, k, "v").await.status, StatusCode::OK, "{k}");
    }
    // Other scopes are untouched by alice's quota.
    assert_eq!(lookup(&s, &bob, "bob", "v").await.status, StatusCode::OK);
    // Over the whole quota: refused.
    let r = reserve(&s, &tok, "huge", "v", 3001).await;
    assert_eq!(err_code(&r), "cache_quota_exceeded");
    let ev = audit(&s).await;
    assert!(ev.iter().any(
        |e| e["action"] == "cache.evicted" && e["target"].as_str().unwrap().contains("alice/b")
    ));
    // Sweeps: a reservation idle for 16 minutes is abandoned; entries unused for 8 days
    // are removed, with their files. (Reserving 10 more bytes evicts c, now the LRU.)
    let r = reserve(&s, &tok, "stale", "v", 10).await;
    let stale = r.body["cacheId"].as_i64().unwrap();
    let part = s.dir.path().join(format!("cache/tmp/{stale}.part"));
    assert!(part.exists());
    let n = jobcell::cache::sweep_and_audit(&s.state, now_ms() + 16 * 60 * 1000)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(!part.exists());
    let n = jobcell::cache::sweep_and_audit(&s.state, now_ms() + 8 * 24 * 3600 * 1000)
        .await
        .unwrap();
    assert_eq!(n, 3, "bob, a and d");
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("cache/blobs"))
            .unwrap()
            .count(),
        0
    );
    let ev = audit(&s).await;
    assert!(ev.iter().any(|e| e["action"] == "cache.abandoned"));
    assert!(ev.iter().any(|e| e["action"] == "cache.expired"));
}

#[tokio::test]
async fn rate_limit_per_token() {
    let s = csrv(CacheConfig {
        rate_per_sec: 0.2,
        burst: 5.0,
        ..CacheConfig::default()
    });
    let (_, tok) = user_job(&s, "alice").await;
    let (_, other) = user_job(&s, "bob").await;
    for _ in 0..5 {
        assert_eq!(
            lookup(&s, &tok, "k", "v").await.status,
            StatusCode::NO_CONTENT
        );
    }
    let resp = tower::ServiceExt::oneshot(
        s.app.clone(),
        creq(
            "GET",
            "/_apis/artifactcache/cache?keys=k&version=v",
            Some(&tok),
            &[],
            Body::empty(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let r = reserve(&s, &tok, "k", "v", 1).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err_code(&r), "rate_limited");
    // Another token has its own bucket.
    assert_eq!(
        lookup(&s, &other, "k", "v").await.status,
        StatusCode::NO_CONTENT
    );
    let ev = audit(&s).await;
    assert!(
        ev.iter()
            .filter(|e| e["result"] == "denied:rate_limited")
            .count()
            >= 2
    );
}

#[tokio::test]
async fn insecure_mode_serves_without_tokens_in_its_own_scope() {
    let s = open_at(tempfile::tempdir().unwrap(), CacheConfig::default(), true);
    let r = raw(
        &s.app,
        creq(
            "GET",
            "/_apis/artifactcache/cache?keys=k&version=v",
            None,
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // A real token still gets its own scope.
    let (_, tok) = user_job(&s, "alice").await;
    save(&s, &tok, "k", "v", b"x").await;
    let r = raw(
        &s.app,
        creq(
            "GET",
            "/_apis/artifactcache/cache?keys=k&version=v",
            None,
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Without the flag the same request is refused (see the other tests): the flag is the
    // only switch.
    let strict = csrv(CacheConfig::default());
    let r = raw(
        &strict.app,
        creq(
            "GET",
            "/_apis/artifactcache/cache?keys=k&version=v",
            None,
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn crash_between_upload_and_commit_leaves_nothing_readable() {
    let s = csrv(CacheConfig::default());
    let (_, tok) = user_job(&s, "alice").await;
    let bytes = data(100_000, 3);
    let r = reserve(&s, &tok, "k", "v", bytes.len() as i64).await;
    let id = r.body["cacheId"].as_i64().unwrap();
    assert_eq!(
        patch(&s, &tok, id, 0, &bytes[..60_000]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        patch(&s, &tok, id, 60_000, &bytes[60_000..]).await.status,
        StatusCode::NO_CONTENT
    );
    // "Crash": the process state is gone without a commit. Also leave what a crash during a
    // commit's rename could: a blob file for an entry the database does not call committed.
    let Srv {
        dir, state, app, ..
    } = s;
    drop((state, app));
    let stray = dir.path().join(format!("cache/blobs/{id}"));
    std::fs::copy(dir.path().join(format!("cache/tmp/{id}.part")), &stray).unwrap();
    std::fs::write(dir.path().join("cache/blobs/777"), b"orphan").unwrap();
    // Restart over the same state directory: secrets from their files, registry from the
    // store, so the token is still valid.
    let s = open_at(dir, CacheConfig::default(), false);
    assert!(!stray.exists(), "half entry survived the restart");
    assert!(!s.dir.path().join("cache/blobs/777").exists());
    assert_eq!(
        lookup(&s, &tok, "k", "v").await.status,
        StatusCode::NO_CONTENT
    );
    let cache = s.state.cache.clone().unwrap();
    let exp = now_ms() / 1000 + 60;
    let p = format!(
        "/_artifacts/{id}?exp={exp}&sig={}",
        cache.signer.sign(id, exp)
    );
    assert_eq!(get(&s, &p, &[]).await.status, StatusCode::NOT_FOUND);
    // The recorded chunks survived, so the job can still commit; then it is readable whole.
    let r = commit(&s, &tok, id, bytes.len() as i64).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let r = lookup(&s, &tok, "k", "v").await;
    let d = get(&s, &local(r.body["archiveLocation"].as_str().unwrap()), &[]).await;
    assert_eq!(d.raw, bytes);
}
