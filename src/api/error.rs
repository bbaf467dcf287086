//! The API's error type (`{"error":{"code","message"}}` with a generic message; details go to
//! the log) and the size-limited JSON body extractor (413 over 1 MiB, 400 when malformed).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::store::StoreError;

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// An error answered to a client. `code` and `message` are sent; `detail` only logged.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: &'static str) -> ApiError {
        ApiError {
            status,
            code,
            message,
            detail: None,
        }
    }

    /// Adds a detail for the server log (never sent to the client).
    pub fn detail(mut self, d: impl Into<String>) -> ApiError {
        self.detail = Some(d.into());
        self
    }

    pub fn bad_request(code: &'static str, message: &'static str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
    }

    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
        .detail(detail)
    }

    pub fn unauthorized(code: &'static str, message: &'static str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: &'static str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    /// Short text for the audit `result` column, e.g. `denied:forbidden`.
    pub fn audit_result(&self) -> String {
        let kind = if self.status.is_server_error() {
            "error"
        } else {
            "denied"
        };
        format!("{kind}:{}", self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(d) = &self.detail {
            if self.status.is_server_error() {
                tracing::error!(code = self.code, detail = %d, "request failed");
            } else {
                tracing::info!(code = self.code, detail = %d, "request refused");
            }
        }
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found(),
            StoreError::Forbidden => {
                ApiError::forbidden("forbidden", "job is held by another orchestrator")
            }
            StoreError::LeaseLost => {
                ApiError::new(StatusCode::CONFLICT, "lease_lost", "lease lost")
            }
            StoreError::Conflict(code) => {
                ApiError::new(StatusCode::CONFLICT, code, "conflicting job state")
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// The caller as an auth extractor verified it, left in the request's extensions for the audit row of a
/// request refused later (a malformed body, query or path). Absent: the caller is not known.
#[derive(Debug, Clone)]
pub struct CheckedActor {
    pub actor: String,
    pub user_id: Option<String>,
}

/// Audits a request refused after authentication, naming the caller the auth extractor checked.
async fn audit_refused(state: &AppState, ext: &axum::http::Extensions, target: &str, code: &str) {
    let (actor, user) = match ext.get::<CheckedActor>() {
        Some(c) => (c.actor.as_str(), c.user_id.as_deref()),
        None => ("anonymous", None),
    };
    state.audit_denied(actor, user, target, code).await;
}

/// The 400 for a request part axum could not deserialise, audited.
async fn refuse(
    parts: &Parts,
    state: &AppState,
    code: &'static str,
    message: &'static str,
    detail: String,
) -> ApiError {
    let target = format!("{} {}", parts.method, parts.uri.path());
    audit_refused(state, &parts.extensions, &target, code).await;
    ApiError::bad_request(code, message).detail(detail)
}

/// Query string deserialised into `T`; a bad one is a 400 with the generic JSON body (and audited),
/// never axum's plain-text rejection.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(refuse(
                parts,
                state,
                "invalid_query",
                "invalid query",
                rej.body_text(),
            )
            .await),
        }
    }
}

/// Path parameters deserialised into `T`; like [`ApiQuery`], refusals are generic JSON and audited.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(rej) => Err(refuse(
                parts,
                state,
                "invalid_path",
                "invalid path",
                rej.body_text(),
            )
            .await),
        }
    }
}

/// JSON request body limited to [`MAX_JSON_BODY`] bytes.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        // Credentials were checked by the extractors before this one (they left the caller in the
        // extensions); a header is never trusted to name the caller.
        let target = format!("{} {}", req.method(), req.uri().path());
        let ext = req.extensions().clone();
        match read_json(req).await {
            Ok(v) => Ok(JsonBody(v)),
            Err(e) => {
                audit_refused(state, &ext, &target, e.code).await;
                Err(e)
            }
        }
    }
}

async fn read_json<T: DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body too large",
        )
    };
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid_request", "invalid request"))?;
        if len > MAX_JSON_BODY {
            return Err(too_large());
        }
    }
    let bytes: Bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY)
        .await
        // The only failure a client can cause here is exceeding the limit (a client that
        // disconnects mid-body never reads the answer).
        .map_err(|e| too_large().detail(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", "malformed JSON body").detail(e.to_string())
    })
}
