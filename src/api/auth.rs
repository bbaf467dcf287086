//! Authentication of API callers: the orchestrator key (constant-time) with its
//! `X-Orchestrator-ID`, execution JWTs (HS256 only, every claim checked), and cache tokens
//! (hex HMAC-SHA256 over `jobId:executionId`). Denials are counted and audited.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::secrets::Secrets;
use crate::store::{now_ms, ActiveExecution};

/// Lifetime of an execution token.
pub const TOKEN_TTL_SECS: i64 = 2 * 60 * 60;
/// Clock leeway for `nbf`/`exp`.
pub const LEEWAY_SECS: u64 = 5;
/// Every scope of the runtime API; execution tokens carry all of them.
pub const ALL_SCOPES: &str =
    "input:read output:write condition:write variables:read variables:write logs:write";

/// Claims of an execution token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecClaims {
    #[serde(rename = "executionId")]
    pub execution_id: String,
    #[serde(rename = "jobId")]
    pub job_id: String,
    pub scope: String,
    // Defaults let a token with a missing registered claim reach the explicit
    // "required claims" check (reported as `missing_claim`) instead of a parse error.
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub nbf: i64,
    #[serde(default)]
    pub exp: i64,
}

impl ExecClaims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Why a token was refused (also the `reason` label of the auth failure metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    NotYetValid,
    BadSignature,
    BadAlgorithm,
    WrongIssuer,
    SubjectMismatch,
    MissingClaim,
    Malformed,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::BadSignature => "bad_signature",
            TokenError::BadAlgorithm => "bad_algorithm",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::SubjectMismatch => "subject_mismatch",
            TokenError::MissingClaim => "missing_claim",
            TokenError::Malformed => "malformed",
        }
    }

    fn to_api(self) -> ApiError {
        match self {
            TokenError::Expired => ApiError::unauthorized("token_expired", "token expired"),
            TokenError::NotYetValid => {
                ApiError::unauthorized("token_not_yet_valid", "token not yet valid")
            }
            _ => ApiError::unauthorized("invalid_token", "invalid token"),
        }
    }
}

/// Mints an execution token carrying `scope` (space-separated; [`ALL_SCOPES`] for a new execution, the
/// old token's scope on refresh, so a refresh never widens it); returns it with its expiry (unix seconds).
pub fn mint_token(
    secrets: &Secrets,
    execution_id: &str,
    job_id: &str,
    scope: &str,
) -> Result<(String, i64), jsonwebtoken::errors::Error> {
    let now = now_ms() / 1000;
    let claims = ExecClaims {
        execution_id: execution_id.to_string(),
        job_id: job_id.to_string(),
        scope: scope.to_string(),
        iss: secrets.jwt_issuer.clone(),
        sub: format!("job:{job_id}"),
        iat: now,
        nbf: now,
        exp: now + TOKEN_TTL_SECS,
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secrets.jwt_secret.value.as_bytes()),
    )?;
    Ok((token, claims.exp))
}

/// Verifies signature (HS256 only), `iss`, `sub` = `job:{jobId}`, `iat`/`nbf`/`exp` present,
/// `nbf`/`exp` against the clock with [`LEEWAY_SECS`].
pub fn verify_token(secrets: &Secrets, token: &str) -> Result<ExecClaims, TokenError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms = vec![Algorithm::HS256];
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[secrets.jwt_issuer.as_str()]);
    v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "sub"]);
    let data = jsonwebtoken::decode::<ExecClaims>(
        token,
        &DecodingKey::from_secret(secrets.jwt_secret.value.as_bytes()),
        &v,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::BadAlgorithm,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
        _ => TokenError::Malformed,
    })?;
    // `alg: none` and unknown algorithms fail to parse above; this is a second lock.
    if data.header.alg != Algorithm::HS256 {
        return Err(TokenError::BadAlgorithm);
    }
    let c = data.claims;
    if c.iat <= 0 {
        return Err(TokenError::MissingClaim);
    }
    if c.sub != format!("job:{}", c.job_id) {
        return Err(TokenError::SubjectMismatch);
    }
    Ok(c)
}

/// Hex HMAC-SHA256(cache secret, `"{jobId}:{executionId}"`).
pub fn cache_token(secrets: &Secrets, job_id: &str, execution_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secrets.cache_secret.value.as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(job_id.as_bytes());
    mac.update(b":");
    mac.update(execution_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of a presented cache token.
pub fn cache_token_matches(
    secrets: &Secrets,
    job_id: &str,
    execution_id: &str,
    token: &str,
) -> bool {
    let want = cache_token(secrets, job_id, execution_id);
    bool::from(want.as_bytes().ct_eq(token.as_bytes()))
}

/// Constant-time comparison of a presented orchestrator key (both sides hashed first so
/// neither content nor length leaks through timing).
pub fn key_matches(secrets: &Secrets, presented: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(secrets.internal_api_key.value.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The bearer credential of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// True for ids matching `[A-Za-z0-9._-]{1,64}`.
pub fn valid_orchestrator_id(s: &str) -> bool {
    super::model::name_ok(s, 64, b"")
}

/// Records a refused request: metric, audit row, log line.
pub async fn deny(
    state: &AppState,
    parts: &Parts,
    actor: &str,
    reason: &str,
    err: ApiError,
) -> ApiError {
    state.metrics.auth_failure(reason);
    state
        .audit_denied(
            actor,
            None,
            &format!("{} {}", parts.method, parts.uri.path()),
            reason,
        )
        .await;
    err
}

/// An authenticated orchestrator.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    pub id: String,
}

impl Orchestrator {
    pub fn actor(&self) -> String {
        format!("orchestrator:{}", self.id)
    }
}

impl FromRequestParts<AppState> for Orchestrator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let generic = || ApiError::unauthorized("unauthorized", "unauthorized");
        let Some(key) = bearer(&parts.headers) else {
            return Err(deny(state, parts, "anonymous", "missing_credentials", generic()).await);
        };
        if !key_matches(&state.secrets, key) {
            return Err(deny(state, parts, "anonymous", "bad_key", generic()).await);
        }
        let id = parts
            .headers
            .get("x-orchestrator-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| valid_orchestrator_id(s));
        let Some(id) = id else {
            let err = ApiError::bad_request(
                "invalid_orchestrator_id",
                "missing or invalid X-Orchestrator-ID",
            );
            return Err(deny(state, parts, "orchestrator:?", "bad_orchestrator_id", err).await);
        };
        parts.extensions.insert(super::error::CheckedActor {
            actor: format!("orchestrator:{id}"),
            user_id: None,
        });
        Ok(Orchestrator { id: id.to_string() })
    }
}

/// A caller holding a valid token of an active execution.
#[derive(Debug, Clone)]
pub struct ExecAuth {
    pub claims: ExecClaims,
    pub exec: ActiveExecution,
}

impl ExecAuth {
    pub fn actor(&self) -> String {
        format!("execution:{}", self.claims.execution_id)
    }

    /// 403 unless `path_exec` is the token's execution (any scope).
    pub async fn require_execution(
        &self,
        state: &AppState,
        path_exec: &str,
        action: &str,
    ) -> Result<(), ApiError> {
        self.check(state, path_exec, None, action).await
    }

    /// 403 unless `path_exec` is the token's execution and the token carries `scope`.
    pub async fn require(
        &self,
        state: &AppState,
        path_exec: &str,
        scope: &str,
        action: &str,
    ) -> Result<(), ApiError> {
        self.check(state, path_exec, Some(scope), action).await
    }

    async fn check(
        &self,
        state: &AppState,
        path_exec: &str,
        scope: Option<&str>,
        action: &str,
    ) -> Result<(), ApiError> {
        let reason = if path_exec != self.claims.execution_id {
            "execution_mismatch"
        } else if scope.is_some_and(|s| !self.claims.has_scope(s)) {
            "scope_missing"
        } else {
            return Ok(());
        };
        state.metrics.auth_failure(reason);
        state
            .audit_denied(
                &self.actor(),
                Some(&self.exec.user_id),
                &format!("{action} {path_exec}"),
                reason,
            )
            .await;
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
        ))
    }
}

/// Verifies a bearer JWT and that its execution is still active.
pub async fn exec_auth(state: &AppState, parts: &Parts) -> Result<ExecAuth, ApiError> {
    let Some(token) = bearer(&parts.headers) else {
        let e = ApiError::unauthorized("unauthorized", "unauthorized");
        return Err(deny(state, parts, "anonymous", "missing_credentials", e).await);
    };
    let claims = match verify_token(&state.secrets, token) {
        Ok(c) => c,
        Err(te) => return Err(deny(state, parts, "anonymous", te.reason(), te.to_api()).await),
    };
    match state.registry.get(&claims.execution_id, now_ms()) {
        Some(exec) if exec.job_id == claims.job_id => Ok(ExecAuth { claims, exec }),
        _ => {
            let actor = format!("execution:{}", claims.execution_id);
            let e = ApiError::unauthorized("execution_inactive", "execution no longer active");
            Err(deny(state, parts, &actor, "execution_inactive", e).await)
        }
    }
}

impl FromRequestParts<AppState> for ExecAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let auth = exec_auth(state, parts).await?;
        parts.extensions.insert(super::error::CheckedActor {
            actor: auth.actor(),
            user_id: Some(auth.exec.user_id.clone()),
        });
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orchestrator_ids() {
        assert!(valid_orchestrator_id("local-host_1.a"));
        assert!(!valid_orchestrator_id(""));
        assert!(!valid_orchestrator_id("a b"));
        assert!(!valid_orchestrator_id(&"a".repeat(65)));
        assert!(valid_orchestrator_id(&"a".repeat(64)));
    }
}
