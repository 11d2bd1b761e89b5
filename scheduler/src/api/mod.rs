//! The native API (FLEET.md). Every replica serves it; reads go to etcd,
//! writes are etcd transactions, so any replica answers the same. Errors:
//! `{"error": ...}`; bad input is a 4xx and stores nothing.

mod extract;
mod jobs;
pub mod origin;
mod queues;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use gleaner_core::fleet::{Keys, NodeInfo, NodeKey};
use serde_json::json;

use crate::marathon::access::{self, Access};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
pub use extract::{ApiError, ApiJson, MAX_BODY_BYTES};
use gleaner_core::app_token::AppAction;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub keys: Arc<Keys>,
    pub token: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    /// This replica's name in the election.
    pub name: Arc<str>,
    pub default_max_retries: u32,
    /// Signing key of app instances' tokens (derived from `token`).
    pub app_key: Option<[u8; 32]>,
    /// The Marathon endpoints' read cache (kept by its own watch).
    pub marathon: Arc<crate::marathon::cache::Cache>,
    /// A request body must arrive within this (config
    /// `request_read_timeout_s`).
    pub read_timeout: std::time::Duration,
    /// One permit per `GET /v2/events` subscriber (`max_event_streams`).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    pub max_event_streams: usize,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Decode { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get_one).delete(jobs::cancel))
        .route("/v1/queues", get(queues::list))
        .route(
            "/v1/queues/{name}",
            delete(queues::remove).put(queues::set).get(queues::get_one),
        )
        .route("/v1/nodes", get(nodes))
        .route("/v1/leader", get(leader))
        .route("/metrics", get(metrics))
        .merge(crate::marathon::router())
        .merge(crate::ui::data())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read whole, within the deadline, once the caller is
        // known (a 401 never waits for a body).
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // The console's assets hold no data: a browser needs them to log in.
        .merge(crate::ui::assets())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Cross-site browser requests refused first ([`origin`]), then the admin
/// token, or an app instance's scoped token (Marathon paths only; each
/// endpoint checks what it touches). Leaves an [`Access`] in the request's
/// extensions. Tokens are never logged.
async fn require_token(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(why) = origin::refusal(req.headers(), st.token.is_some()) {
        return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
    }
    let access = match &st.token {
        None => Access::Admin,
        Some(token) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            match identify(&st, token, given).await {
                Ok(Some(a)) => a,
                Ok(None) => {
                    return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                        .into_response()
                }
                Err(e) => return e.into_response(),
            }
        }
    };
    if let Access::App(_) = &access {
        let path = req.uri().path();
        let marathon = path == "/ping" || (path.starts_with("/v2/") && path != "/v2/events");
        if !marathon {
            let what = path.to_owned();
            if let Err(e) = access.check(AppAction::Admin { what: &what }) {
                return e.into_response();
            }
        }
    }
    req.extensions_mut().insert(access);
    next.run(req).await
}

/// The whole body within `read_timeout` and [`MAX_BODY_BYTES`]: a client
/// that sends a head and then trickles its body is dropped like one that
/// trickles its head. Errors in the shape of the API the path belongs to.
async fn read_body(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match gleaner_core::serve::read_body(body, MAX_BODY_BYTES, st.read_timeout).await {
        Ok(bytes) => next.run(Request::from_parts(parts, bytes.into())).await,
        Err(e) => {
            let status = match e {
                gleaner_core::serve::BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                gleaner_core::serve::BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                gleaner_core::serve::BodyError::Broken(_) => StatusCode::BAD_REQUEST,
            };
            let mut r = if parts.uri.path().starts_with("/v2/") {
                (status, Json(json!({"message": e.to_string()}))).into_response()
            } else {
                ApiError::new(status, e.to_string()).into_response()
            };
            // The rest of the body is not read: the connection ends.
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

async fn identify(st: &AppState, admin: &str, given: &str) -> Result<Option<Access>, ApiError> {
    // Constant-time comparison (the agent's credential model).
    if gleaner_core::auth::tokens_equal(given, admin) {
        return Ok(Some(Access::Admin));
    }
    let Some((app, created)) = st
        .app_key
        .as_ref()
        .and_then(|k| gleaner_core::app_token::verify(k, given))
    else {
        return Ok(None);
    };
    // Valid while its app lives: read at etcd's current revision.
    let data = st.marathon.read(st).await?;
    Ok(access::scope_of(&data, &app, created).map(Access::App))
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

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

/// Live nodes (info key present) with their placement counts.
async fn nodes(State(st): State<AppState>) -> Result<Response, ApiError> {
    let infos: Vec<(String, NodeInfo, i64)> = st.store.list(&st.keys.nodes_prefix()).await?;
    let placements: Vec<(String, serde_json::Value, i64)> =
        st.store.list(&st.keys.placements_root()).await?;
    let mut out = Vec::new();
    for (key, info, _) in infos {
        let Some(NodeKey::Info { node }) = st.keys.parse_node_key(&key) else {
            continue;
        };
        let tasks = placements
            .iter()
            .filter(|(k, _, _)| st.keys.parse_placement(k).is_some_and(|(n, _)| n == node))
            .count();
        out.push(json!({
            "node": info.node,
            "address": info.address,
            "agent_url": info.agent_url,
            "version": info.version,
            "roles": info.roles,
            "attributes": info.attributes,
            "port_ranges": info.port_ranges,
            "tasks": tasks,
            "last_seen": info.reported_at,
        }));
    }
    Ok(Json(out).into_response())
}

async fn leader(State(st): State<AppState>) -> Result<Response, ApiError> {
    let mut client = st.store.client().await?;
    let leader = match client.leader(st.keys.leader()).await {
        Ok(resp) => resp
            .kv()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        // etcd answers "election: no leader" as an error.
        Err(e) if e.to_string().contains("no leader") => None,
        Err(e) => {
            st.store.reset().await;
            return Err(st.store.unavailable(e).into());
        }
    };
    let is_self = leader.as_deref() == Some(st.name.as_ref());
    Ok(Json(json!({"leader": leader, "self": is_self, "name": st.name.as_ref()})).into_response())
}
