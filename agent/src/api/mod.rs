//! HTTP API (axum). **Only this module knows HTTP and JSON bodies**: it maps
//! requests to `runtime::Agent` calls and errors to status codes.

mod extract;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::runtime::{Agent, AgentError};
use crate::scheduler::Amount;
use crate::spec::TaskSpec;
use crate::status::StopReason;
pub use extract::{ApiError, ApiJson, MAX_BODY_BYTES};

#[derive(Clone)]
struct AppState {
    agent: Arc<Agent>,
    token: Option<Arc<str>>,
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let status = match &e {
            AgentError::Invalid(_) => StatusCode::BAD_REQUEST,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AgentError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

pub fn router(agent: Arc<Agent>, token: Option<String>) -> Router {
    let state = AppState {
        agent,
        token: token.map(Into::into),
    };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/state", get(node_state))
        .route("/v1/tasks", get(list_tasks).post(submit_task))
        .route("/v1/tasks/{id}", get(get_task).delete(kill_task))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .route("/v1/groups", post(submit_group))
        .route("/v1/reservations", get(list_reservations))
        .route(
            "/v1/reservations/{role}",
            put(set_reservation).delete(remove_reservation),
        )
        .route("/v1/attributes", get(list_attributes))
        .route(
            "/v1/attributes/{name}",
            put(set_attribute).delete(remove_attribute),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_ref()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                .into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn node_state(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.agent.node_state())
}

async fn list_tasks(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.agent.list())
}

async fn submit_task(
    State(st): State<AppState>,
    ApiJson(spec): ApiJson<TaskSpec>,
) -> Result<Response, ApiError> {
    let status = st.agent.submit(spec).await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

async fn get_task(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(st.agent.get(&id)?).into_response())
}

async fn kill_task(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let status = st.agent.stop(&id, StopReason::Killed)?;
    let code = if status.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(status)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    id: String,
    tasks: Vec<TaskSpec>,
}

async fn submit_group(
    State(st): State<AppState>,
    ApiJson(group): ApiJson<GroupSpec>,
) -> Result<Response, ApiError> {
    let tasks = st.agent.submit_group(&group.id, group.tasks).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": group.id, "tasks": tasks})),
    )
        .into_response())
}

async fn list_reservations(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.agent.reservations())
}

async fn set_reservation(
    State(st): State<AppState>,
    Path(role): Path<String>,
    ApiJson(amount): ApiJson<Amount>,
) -> Result<Response, ApiError> {
    Ok(Json(st.agent.set_reservation(&role, amount).await?).into_response())
}

async fn remove_reservation(
    State(st): State<AppState>,
    Path(role): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(st.agent.remove_reservation(&role).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributesQuery {
    /// `true`: `{"name": {"value": ..., "source": ...}}` instead of
    /// `{"name": "value"}`.
    #[serde(default)]
    sources: bool,
}

async fn list_attributes(
    State(st): State<AppState>,
    query: Result<Query<AttributesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(if q.sources {
        Json(st.agent.attributes_with_sources()).into_response()
    } else {
        Json(st.agent.attributes()).into_response()
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributeValue {
    value: String,
}

async fn set_attribute(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AttributeValue>,
) -> Result<Response, ApiError> {
    let set = st.agent.set_attribute(&name, &body.value).await?;
    Ok(Json(json!({"name": name, "value": set.value, "source": set.source})).into_response())
}

async fn remove_attribute(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    st.agent.remove_attribute(&name).await?;
    Ok(Json(json!({"name": name, "removed": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    tail: Option<usize>,
}

/// Largest slice of a log file one request returns (its end).
const MAX_LOG_BYTES: u64 = 4 << 20;

async fn task_logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let dir = st.agent.task_dir(&id)?;
    let path = match q.stream.as_deref().unwrap_or("stdout") {
        "stdout" => dir.stdout(),
        "stderr" => dir.stderr(),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("stream: {other:?} is not stdout or stderr"),
            ))
        }
    };
    let text = tokio::task::spawn_blocking(move || read_tail(&path, MAX_LOG_BYTES))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let text = match q.tail {
        Some(n) => last_lines(&text, n).to_owned(),
        None => text,
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

fn read_tail(path: &std::path::Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of `text` (a trailing newline does not count as a line).
fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&st.agent),
    )
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn tail_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(last_lines("a\n", 0), "");
    }
}
