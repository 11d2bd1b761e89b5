//! HTTP API (axum). **Only this module knows HTTP and JSON bodies**: it maps
//! requests to `runtime::Agent` calls and errors to status codes.

mod exec;
mod extract;
pub mod openapi;
pub mod serve;

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Action, Caller, Size};
use crate::runtime::{Agent, AgentError};
use crate::scheduler::Amount;
use crate::spec::TaskSpec;
use crate::status::{StopReason, TaskStatus};
pub use extract::{set_read_timeout, ApiError, ApiJson, MAX_BODY_BYTES};
pub use serve::Door;

#[derive(Clone)]
struct AppState {
    agent: Arc<Agent>,
}

impl From<auth::Denied> for ApiError {
    fn from(e: auth::Denied) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, e.0)
    }
}

fn allow(caller: &Caller, action: Action) -> Result<(), ApiError> {
    Ok(auth::authorize(caller, &action)?)
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

pub fn router(agent: Arc<Agent>) -> Router {
    let state = AppState { agent };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/state", get(node_state))
        .route("/v1/tasks", get(list_tasks).post(submit_task))
        .route("/v1/tasks/{id}", get(get_task).delete(kill_task))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .route("/v1/tasks/{id}/exec", post(exec::exec_task))
        .route("/v1/groups", post(submit_group))
        .route("/v1/groups/{id}", get(get_group))
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
        .route("/v1/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Identifies the caller (socket peer or bearer token), refuses with 401
/// who is neither, and writes the audit line of every call that changes
/// something: caller, method, path, status.
async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let door = req.extensions().get::<Door>().cloned().unwrap_or(Door::Tcp);
    let caller = identify(&st.agent, &door, &req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match &caller {
        Ok(c) => {
            req.extensions_mut().insert(c.clone());
            next.run(req).await
        }
        Err(e) => ApiError::new(StatusCode::UNAUTHORIZED, e.clone()).into_response(),
    };
    let response = json_errors(response).await;
    if !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD) {
        let who = match &caller {
            Ok(c) => c.to_string(),
            Err(_) => match &door {
                Door::Socket { uid, .. } => format!("uid={uid} via socket (refused)"),
                Door::Tcp => "unauthenticated".to_owned(),
            },
        };
        tracing::info!(target: "audit", "{who} {method} {path} {}", response.status().as_u16());
    }
    response
}

/// Every error is `{"error": "..."}`, also the plain-text rejections of
/// axum's own extractors (a path that is not UTF-8, say).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text.trim().to_owned()
    };
    ApiError::new(status, message).into_response()
}

fn identify(agent: &Agent, door: &Door, req: &Request) -> Result<Caller, String> {
    match door {
        Door::Socket { uid, gid, groups } => {
            let cfg = agent.config();
            let mut gids = groups.clone();
            gids.push(*gid);
            if auth::peer_is_admin(*uid, &gids, &cfg.admin_uids, &cfg.admin_gids) {
                Ok(Caller::Peer {
                    uid: *uid,
                    gid: *gid,
                })
            } else {
                Err(format!(
                    "uid {uid} is not an admin (config admin_uids, admin_gids)"
                ))
            }
        }
        Door::Tcp => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or("missing bearer token (Authorization: Bearer <token>)")?;
            agent
                .identify(bearer.trim())
                .ok_or_else(|| "wrong or expired bearer token".to_owned())
        }
    }
}

/// The error shape of every 4xx/5xx.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ErrorBody {
    error: String,
}

/// The reply of `POST /v1/groups`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct GroupReply {
    id: String,
    tasks: Vec<TaskStatus>,
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "node", responses((status = 200, description = "this document", body = Object), (status = 401, description = "no valid credential", body = ErrorBody)))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
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

#[utoipa::path(get, path = "/v1/health", tag = "node", responses((status = 200, description = "the agent answers", body = Object), (status = 401, description = "no valid credential", body = ErrorBody)))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/v1/state", tag = "node", responses((status = 200, description = "node id, version, cgroups, totals, reservations, attributes, task counts", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody)))]
async fn node_state(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ReadNode)?;
    Ok(Json(st.agent.node_state()).into_response())
}

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", responses((status = 200, description = "every task the caller may see", body = Vec<TaskStatus>), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody)))]
async fn list_tasks(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ListTasks)?;
    let mut tasks = st.agent.list();
    tasks.retain(|t| auth::visible(&caller, &t.id, &t.role));
    Ok(Json(tasks).into_response())
}

/// Checks a submission of `specs` (one task, or a group `group`) against
/// the caller's scope. A scoped caller's task without an id gets one under
/// its prefix.
fn allow_submit(
    agent: &Agent,
    caller: &Caller,
    group: Option<&str>,
    specs: &mut [TaskSpec],
) -> Result<(), ApiError> {
    let Caller::Task(scope) = caller else {
        return Ok(());
    };
    if group.is_none() {
        for spec in specs.iter_mut().filter(|s| s.id.is_none()) {
            let mut random = [0u8; 4];
            getrandom::getrandom(&mut random)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            spec.id = Some(format!("{}{}", scope.prefix, auth::new_token_short(random)));
        }
    }
    let mut ids: Vec<&str> = group.into_iter().collect();
    ids.extend(specs.iter().filter_map(|s| s.id.as_deref()));
    let demand = specs.iter().fold(
        Size {
            cpus: 0.0,
            mem_mb: 0.0,
        },
        |a, s| Size {
            cpus: a.cpus + s.resources.cpus,
            mem_mb: a.mem_mb + s.resources.mem_mb,
        },
    );
    for spec in specs.iter() {
        let reserved = agent.reservation_of(&spec.role).map(|r| Size {
            cpus: r.cpus,
            mem_mb: r.mem_mb,
        });
        allow(
            caller,
            Action::Submit {
                ids: &ids,
                role: &spec.role,
                demand,
                reserved,
            },
        )?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = TaskSpec, responses((status = 201, description = "accepted: QUEUED, STAGING or RUNNING", body = TaskStatus), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 408, description = "body too slow", body = ErrorBody), (status = 409, description = "the id exists", body = ErrorBody), (status = 413, description = "body over 1 MiB", body = ErrorBody), (status = 503, description = "etcd unavailable", body = ErrorBody)))]
async fn submit_task(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<TaskSpec>,
) -> Result<Response, ApiError> {
    let mut specs = [spec];
    allow_submit(&st.agent, &caller, None, &mut specs)?;
    let [spec] = specs;
    let status = st.agent.submit(spec).await?;
    Ok((StatusCode::CREATED, Json(status)).into_response())
}

/// A scoped caller learns nothing of tasks outside its prefix, not even
/// whether they exist: 403 before the lookup.
fn allow_task(agent: &Agent, caller: &Caller, id: &str, kill: bool) -> Result<(), ApiError> {
    let Caller::Task(scope) = caller else {
        return Ok(());
    };
    let role = if id.starts_with(&scope.prefix) {
        agent.get(id)?.role
    } else {
        String::new()
    };
    let action = if kill {
        Action::KillTask { id, role: &role }
    } else {
        Action::ReadTask { id, role: &role }
    };
    allow(caller, action)
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "the task", body = TaskStatus), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 404, description = "unknown task", body = ErrorBody)))]
async fn get_task(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allow_task(&st.agent, &caller, &id, false)?;
    Ok(Json(st.agent.get(&id)?).into_response())
}

#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "it had ended", body = TaskStatus), (status = 202, description = "stopping: SIGTERM, SIGKILL after its grace", body = TaskStatus), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 404, description = "unknown task", body = ErrorBody)))]
async fn kill_task(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allow_task(&st.agent, &caller, &id, true)?;
    let status = st.agent.stop(&id, StopReason::Killed)?;
    let code = if status.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(status)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    id: String,
    tasks: Vec<TaskSpec>,
    /// Where every member sees the group's shared volume (default `/shared`).
    #[serde(default)]
    shared_path: Option<String>,
    /// `host` (default: each member's own) or `group`: one network
    /// namespace for all members, only `lo` up.
    #[serde(default)]
    network: gleaner_core::group::GroupNetwork,
}

#[utoipa::path(post, path = "/v1/groups", tag = "tasks", request_body = GroupSpec, responses((status = 201, description = "all members accepted", body = GroupReply), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 408, description = "body too slow", body = ErrorBody), (status = 409, description = "the group or an id exists", body = ErrorBody), (status = 413, description = "body over 1 MiB", body = ErrorBody), (status = 503, description = "etcd unavailable", body = ErrorBody)))]
async fn submit_group(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(mut group): ApiJson<GroupSpec>,
) -> Result<Response, ApiError> {
    let id = group.id.clone();
    allow_submit(&st.agent, &caller, Some(&id), &mut group.tasks)?;
    let options = crate::runtime::GroupOptions {
        shared_path: group.shared_path,
        network: group.network,
    };
    let tasks = st
        .agent
        .submit_group(&group.id, group.tasks, options)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": group.id, "tasks": tasks})),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/groups/{id}", tag = "tasks", params(("id" = String, Path, description = "group id")), responses((status = 200, description = "the group: state of its main members, shared path, network, members", body = crate::runtime::GroupStatus), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 404, description = "unknown group", body = ErrorBody)))]
async fn get_group(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ListTasks)?;
    let mut group = st.agent.group_status(&id)?;
    // A scoped caller sees a group only if it sees every member.
    if !group
        .tasks
        .iter()
        .all(|t| auth::visible(&caller, &t.id, &t.role))
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("group {id:?} not found"),
        ));
    }
    group.tasks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(group).into_response())
}

#[utoipa::path(get, path = "/v1/reservations", tag = "reservations", responses((status = 200, description = "per role: reserved, allocated, free, running, queued", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody)))]
async fn list_reservations(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ReadNode)?;
    Ok(Json(st.agent.reservations()).into_response())
}

#[utoipa::path(put, path = "/v1/reservations/{role}", tag = "reservations", params(("role" = String, Path, description = "role")), request_body = Amount, responses((status = 200, description = "applied (cgroup written) and persisted; preempted task ids", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 408, description = "body too slow", body = ErrorBody), (status = 413, description = "body over 1 MiB", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
async fn set_reservation(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(role): Path<String>,
    ApiJson(amount): ApiJson<Amount>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ChangeReservation { role: &role })?;
    Ok(Json(st.agent.set_reservation(&role, amount).await?).into_response())
}

#[utoipa::path(delete, path = "/v1/reservations/{role}", tag = "reservations", params(("role" = String, Path, description = "role")), responses((status = 200, description = "removed; its tasks preempted", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 404, description = "no such reservation", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
async fn remove_reservation(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(role): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ChangeReservation { role: &role })?;
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

#[utoipa::path(get, path = "/v1/attributes", tag = "attributes", params(("sources" = Option<bool>, Query, description = "with each value's source")), responses((status = 200, description = "effective attributes", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody)))]
async fn list_attributes(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<AttributesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ReadNode)?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(if q.sources {
        Json(st.agent.attributes_with_sources()).into_response()
    } else {
        Json(st.agent.attributes()).into_response()
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AttributeValue {
    value: String,
}

#[utoipa::path(put, path = "/v1/attributes/{name}", tag = "attributes", params(("name" = String, Path, description = "attribute")), request_body = AttributeValue, responses((status = 200, description = "set (through etcd when configured)", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 408, description = "body too slow", body = ErrorBody), (status = 413, description = "body over 1 MiB", body = ErrorBody), (status = 503, description = "etcd unavailable", body = ErrorBody)))]
async fn set_attribute(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AttributeValue>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ChangeAttribute { name: &name })?;
    let set = st.agent.set_attribute(&name, &body.value).await?;
    Ok(Json(json!({"name": name, "value": set.value, "source": set.source})).into_response())
}

#[utoipa::path(delete, path = "/v1/attributes/{name}", tag = "attributes", params(("name" = String, Path, description = "attribute")), responses((status = 200, description = "removed; tasks whose constraints stop matching are drained", body = Object), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 404, description = "no such attribute", body = ErrorBody), (status = 503, description = "etcd unavailable", body = ErrorBody)))]
async fn remove_attribute(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ChangeAttribute { name: &name })?;
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

#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks", params(("id" = String, Path, description = "task id"), ("stream" = Option<String>, Query, description = "stdout (default) or stderr"), ("tail" = Option<u32>, Query, description = "last N lines")), responses((status = 200, description = "captured output", body = String, content_type = "text/plain"), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody), (status = 404, description = "unknown task", body = ErrorBody)))]
async fn task_logs(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    allow_task(&st.agent, &caller, &id, false)?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let dir = st.agent.task_dir(&id)?;
    let stream = match q.stream.as_deref().unwrap_or("stdout") {
        s @ ("stdout" | "stderr") => s.to_owned(),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("stream: {other:?} is not stdout or stderr"),
            ))
        }
    };
    let text = tokio::task::spawn_blocking(move || {
        let path = if stream == "stdout" {
            dir.stdout()
        } else {
            dir.stderr()
        };
        match open_log(&path) {
            Ok(f) => read_tail(f, MAX_LOG_BYTES),
            // Runs started before the logs left the sandbox wrote them
            // there: task-writable, so opened without following anything.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::safeopen::open_beneath(&dir.sandbox(), std::path::Path::new(&stream))
                    .map(|f| read_tail(f, MAX_LOG_BYTES))
                    .unwrap_or_default()
            }
            Err(_) => String::new(),
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let text = match q.tail {
        Some(n) => last_lines(&text, n).to_owned(),
        None => text,
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// A log file in the task dir (not task-writable; no link followed anyway).
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn read_tail(mut f: std::fs::File, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
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

#[utoipa::path(get, path = "/metrics", tag = "node", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), (status = 400, description = "bad input", body = ErrorBody), (status = 401, description = "no valid credential", body = ErrorBody), (status = 403, description = "outside the caller's scope", body = ErrorBody)))]
async fn metrics(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    allow(&caller, Action::ReadNode)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&st.agent),
    )
        .into_response())
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
