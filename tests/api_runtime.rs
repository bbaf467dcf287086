//! Runtime API over HTTP (in-process): every JWT rule against forged tokens, 403 for another
//! execution's path or a missing scope, the data routes, variables keyed by the job owner,
//! token refresh, and tokens dying with their execution.

mod common;

use axum::http::StatusCode;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn now() -> i64 {
    jobcell::store::now_ms() / 1000
}

fn claims(exec: &str, job: &str) -> Value {
    let t = now();
    json!({
        "executionId": exec, "jobId": job,
        "scope": jobcell::api::auth::ALL_SCOPES,
        "iss": "jobcell", "sub": format!("job:{job}"),
        "iat": t, "nbf": t, "exp": t + 7200,
    })
}

fn sign(alg: Algorithm, secret: &str, c: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        c,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test]
async fn forged_tokens_are_rejected_with_401() {
    let s = srv();
    let (job, exec, good) = s.running("alice").await;
    let secret = s.jwt_secret();
    let path = format!("/api/runtime/executions/{exec}/input");
    let r = s.rt(&good, "GET", &path, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let base = claims(&exec, &job);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    // Sanity: a token we mint the same way is accepted, so rejections below are real.
    assert_eq!(
        s.rt(&sign(Algorithm::HS256, &secret, &base), "GET", &path, None)
            .await
            .status,
        StatusCode::OK
    );
    let payload = b64(serde_json::to_vec(&base).unwrap().as_slice());
    let sig_of = |header: &Value, payload: &str| {
        use hmac::Mac;
        let h = b64(&serde_json::to_vec(header).unwrap());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{h}.{payload}").as_bytes());
        format!("{h}.{payload}.{}", b64(&mac.finalize().into_bytes()))
    };
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let none_upper = format!("{}.{payload}.", b64(br#"{"alg":"None","typ":"JWT"}"#));
    let rs256 = sig_of(&json!({"alg": "RS256", "typ": "JWT"}), &payload);
    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered_claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    tampered_claims["scope"] = json!("input:read output:write admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&tampered_claims).unwrap()),
        parts[2]
    );
    let fixed: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "invalid_token"),
        ("alg None", none_upper, "invalid_token"),
        (
            "HS384",
            sign(Algorithm::HS384, &secret, &base),
            "invalid_token",
        ),
        (
            "HS512",
            sign(Algorithm::HS512, &secret, &base),
            "invalid_token",
        ),
        ("RS256 header, HMAC signature", rs256, "invalid_token"),
        (
            "wrong secret",
            sign(Algorithm::HS256, "another-secret-0123456789abcdef", &base),
            "invalid_token",
        ),
        ("tampered payload", tampered, "invalid_token"),
        (
            "expired",
            sign(Algorithm::HS256, &secret, &with("exp", json!(now() - 60))),
            "token_expired",
        ),
        (
            "nbf in future",
            sign(Algorithm::HS256, &secret, &with("nbf", json!(now() + 600))),
            "token_not_yet_valid",
        ),
        (
            "wrong iss",
            sign(Algorithm::HS256, &secret, &with("iss", json!("evil"))),
            "invalid_token",
        ),
        (
            "sub mismatch",
            sign(Algorithm::HS256, &secret, &with("sub", json!("job:other"))),
            "invalid_token",
        ),
        ("garbage", "a.b.c".to_string(), "invalid_token"),
        ("empty", String::new(), "invalid_token"),
        (
            "unknown execution",
            sign(
                Algorithm::HS256,
                &secret,
                &with("executionId", json!("ex_0000")),
            ),
            "execution_inactive",
        ),
    ];
    let mut cases: Vec<(String, String, &str)> = fixed
        .into_iter()
        .map(|(name, token, code)| (name.to_string(), token, code))
        .collect();
    // every claim is required: a token lacking any one of them is refused
    for claim in [
        "exp",
        "nbf",
        "iss",
        "iat",
        "sub",
        "executionId",
        "jobId",
        "scope",
    ] {
        cases.push((
            format!("missing {claim}"),
            sign(Algorithm::HS256, &secret, &without(claim)),
            "invalid_token",
        ));
    }
    let refused = cases.len();
    for (name, token, code) in cases {
        let r = s.rt(&token, "GET", &path, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        if name != "empty" {
            assert_eq!(err_code(&r), code, "{name}");
        }
    }
    let r = s
        .rt(
            &sign(Algorithm::HS256, &secret, &with("exp", json!(now() - 60))),
            "GET",
            &path,
            None,
        )
        .await;
    assert_eq!(r.body["error"]["message"], "token expired");
    // Every refusal was audited and counted.
    let a = s
        .o("o", "GET", "/api/internal/audit?limit=1000", None)
        .await;
    let denied = a.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"].as_str().unwrap().starts_with("denied:"))
        .count();
    assert!(denied >= refused, "{denied} of {refused} refusals audited");
    let m = String::from_utf8(
        raw(&s.app, req("GET", "/metrics", None, None, None))
            .await
            .raw,
    )
    .unwrap();
    for reason in [
        "bad_algorithm",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "subject_mismatch",
        "missing_claim",
        "execution_inactive",
    ] {
        assert!(
            m.contains(&format!(
                "jobcell_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn other_execution_and_missing_scope_are_403() {
    let s = srv();
    let (job_a, exec_a, tok_a) = s.running("alice").await;
    let (_job_b, exec_b, _tok_b) = s.running("bob").await;
    for (m, p, body) in [
        (
            "GET",
            format!("/api/runtime/executions/{exec_b}/input"),
            None,
        ),
        (
            "GET",
            format!("/api/runtime/executions/{exec_b}/context"),
            None,
        ),
        (
            "POST",
            format!("/api/runtime/executions/{exec_b}/output"),
            Some(json!({"data": 1})),
        ),
        (
            "POST",
            format!("/api/runtime/executions/{exec_b}/condition"),
            Some(json!({"condition": true})),
        ),
        (
            "GET",
            format!("/api/runtime/executions/{exec_b}/variables/k"),
            None,
        ),
        (
            "PUT",
            format!("/api/runtime/executions/{exec_b}/variables/k"),
            Some(json!({"value": "v"})),
        ),
        (
            "POST",
            format!("/api/runtime/executions/{exec_b}/logs"),
            Some(json!({"lines": ["x"]})),
        ),
    ] {
        let r = s.rt(&tok_a, m, &p, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {p}");
        assert_eq!(err_code(&r), "forbidden");
    }
    // A token limited to input:read cannot write.
    let mut c = claims(&exec_a, &job_a);
    c["scope"] = json!("input:read");
    let limited = sign(Algorithm::HS256, &s.jwt_secret(), &c);
    // Refreshing it keeps its scope: a refresh never widens a token.
    let r = s
        .rt(&limited, "POST", "/api/runtime/token/refresh", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let refreshed = r.body["token"].as_str().unwrap().to_string();
    let payload = refreshed.split('.').nth(1).unwrap();
    let claims_back: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims_back["scope"], "input:read");
    let r = s
        .rt(
            &refreshed,
            "POST",
            &format!("/api/runtime/executions/{exec_a}/output"),
            Some(json!({"data": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = s
        .rt(
            &limited,
            "GET",
            &format!("/api/runtime/executions/{exec_a}/input"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for (m, p, body) in [
        ("POST", "output", Some(json!({"data": 1}))),
        ("POST", "condition", Some(json!({"condition": true}))),
        ("GET", "variables/k", None),
        ("PUT", "variables/k", Some(json!({"value": "v"}))),
        ("POST", "logs", Some(json!({"lines": ["x"]}))),
    ] {
        let r = s
            .rt(
                &limited,
                m,
                &format!("/api/runtime/executions/{exec_a}/{p}"),
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{p}");
    }
    let a = s
        .o("o", "GET", "/api/internal/audit?limit=1000", None)
        .await;
    let ev = a.body["events"].as_array().unwrap();
    assert_eq!(
        ev.iter()
            .filter(|e| e["result"] == "denied:execution_mismatch")
            .count(),
        7
    );
    assert_eq!(
        ev.iter()
            .filter(|e| e["result"] == "denied:scope_missing")
            .count(),
        6, // the five writes of the limited token, and the write of its refreshed successor
    );
    assert!(ev
        .iter()
        .any(|e| e["result"] == "denied:scope_missing" && e["userId"] == "alice"));
}

#[tokio::test]
async fn data_routes_variables_by_owner_and_refresh() {
    let s = srv();
    let (job, exec, tok) = s.running("alice").await;
    let p = |x: &str| format!("/api/runtime/executions/{exec}/{x}");
    let r = s.rt(&tok, "GET", &p("input"), None).await;
    assert_eq!(r.body, json!({"data": {"user": "alice"}}));
    let r = s.rt(&tok, "GET", &p("context"), None).await;
    assert_eq!(r.body["executionId"], exec.as_str());
    assert_eq!(r.body["jobId"], job.as_str());
    assert_eq!(r.body["userId"], "alice");
    let r = s.rt(&tok, "GET", &p("variables/color"), None).await;
    assert_eq!(
        (r.status, err_code(&r).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = s
        .rt(
            &tok,
            "PUT",
            &p("variables/color"),
            Some(json!({"value": "blue"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.rt(&tok, "GET", &p("variables/color"), None).await;
    assert_eq!(r.body, json!({"key": "color", "value": "blue"}));
    let r = s
        .rt(
            &tok,
            "PUT",
            &p("variables/color"),
            Some(json!({"value": 5})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = s
        .rt(
            &tok,
            "PUT",
            &p("variables/color"),
            Some(json!({"value": "x", "userId": "bob"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = s
        .rt(
            &tok,
            "POST",
            &p("condition"),
            Some(json!({"condition": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .rt(
            &tok,
            "POST",
            &p("output"),
            Some(json!({"data": [1, "two"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .rt(
            &tok,
            "POST",
            &p("logs"),
            Some(json!({"lines": ["one", "two"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .rt(&tok, "POST", &p("output"), Some(json!({"nodata": 1})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Another job of the same owner sees the variable; another owner does not.
    let (_j2, e2, t2) = s.running("alice").await;
    let r = s
        .rt(
            &t2,
            "GET",
            &format!("/api/runtime/executions/{e2}/variables/color"),
            None,
        )
        .await;
    assert_eq!(r.body["value"], "blue");
    let (_j3, e3, t3) = s.running("bob").await;
    let r = s
        .rt(
            &t3,
            "GET",
            &format!("/api/runtime/executions/{e3}/variables/color"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Refresh gives a working token with a later or equal expiry.
    let r = s.rt(&tok, "POST", "/api/runtime/token/refresh", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let fresh = r.body["token"].as_str().unwrap().to_string();
    assert!(r.body["expiresAt"].is_string());
    let r = s.rt(&fresh, "GET", &p("input"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Condition and output are stored on the execution.
    let v = s
        .o("o", "GET", &format!("/api/internal/jobs/{job}"), None)
        .await;
    assert_eq!(v.body["executions"][0]["condition"], true);
    assert_eq!(v.body["executions"][0]["output"], json!([1, "two"]));
    // After completion neither the old nor the refreshed token works, refresh included.
    let r = s
        .o(
            "orch-a",
            "POST",
            &format!("/api/internal/jobs/{job}/complete"),
            Some(json!({"status": "failed", "exitCode": 3})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for t in [&tok, &fresh] {
        let r = s.rt(t, "GET", &p("input"), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body["error"]["message"], "execution no longer active");
        let r = s.rt(t, "POST", "/api/runtime/token/refresh", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Audit rows of data operations carry the owner.
    let a = s
        .o("o", "GET", "/api/internal/audit?limit=1000", None)
        .await;
    let ev = a.body["events"].as_array().unwrap();
    for action in [
        "input.read",
        "variable.write",
        "variable.read",
        "output.write",
        "condition.write",
        "logs.write",
        "token.refresh",
    ] {
        assert!(
            ev.iter().any(|e| e["action"] == action
                && e["result"] == "ok"
                && e["userId"] == "alice"
                && e["actor"] == format!("execution:{exec}")),
            "{action}"
        );
    }
    // `since` by id pages forward.
    let last = ev.last().unwrap()["id"].as_i64().unwrap();
    let a = s
        .o(
            "o",
            "GET",
            &format!("/api/internal/audit?since={last}"),
            None,
        )
        .await;
    assert!(a.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["id"].as_i64().unwrap() > last));
}
