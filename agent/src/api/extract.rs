//! JSON in and errors out, in the shape of SPEC.md: `{"error": "..."}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, Ordering};

pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How long a request body may take to arrive (config
/// `request_read_timeout_s`); set once when the server starts.
static READ_TIMEOUT_MS: AtomicU64 = AtomicU64::new(10_000);

pub fn set_read_timeout(t: std::time::Duration) {
    READ_TIMEOUT_MS.store(t.as_millis() as u64, Ordering::Relaxed);
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response()
    }
}

/// Like `axum::Json`, but every rejection is a JSON error: 413 over 1 MiB,
/// 400 naming the field for unknown or malformed fields.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = std::time::Duration::from_millis(READ_TIMEOUT_MS.load(Ordering::Relaxed));
        let bytes = tokio::time::timeout(limit, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body did not arrive within {limit:?}"),
                )
            })?
            .map_err(|rej| {
                let status = rej.status();
                let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("request body is larger than {MAX_BODY_BYTES} bytes")
                } else {
                    rej.body_text()
                };
                ApiError::new(status, msg)
            })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(ApiJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = if path == "." {
                    format!("invalid JSON body: {}", e.inner())
                } else {
                    format!("invalid JSON body: {path}: {}", e.inner())
                };
                ApiError::new(StatusCode::BAD_REQUEST, msg)
            })
    }
}
