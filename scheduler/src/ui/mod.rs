//! The web console (FLEET.md "Web console"): static assets compiled into
//! the binary, served at `/ui/` without a token (they hold no data), and
//! two read-only data endpoints behind the API's bearer token:
//! `/ui/api/overview` ([`overview`], shared by every open console for
//! half a second) and `/ui/api/harvest` (the nodes' `harvest/<node>` rings,
//! downsampled). Everything else the console shows comes from the
//! documented API (`/v1/jobs/{id}`, `/v2/apps`, `/v2/deployments`).

pub mod overview;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use gleaner_core::harvest::{self, HarvestRing};
use serde_json::json;

use crate::api::{ApiError, AppState};

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// How long every console shares one read of the rings (agents rewrite
/// theirs every 60 s; each console asks every 15 s).
const HARVEST_TTL: Duration = Duration::from_secs(5);

/// Points per node when the harvest is asked without `points`.
pub const DEFAULT_POINTS: usize = 60;
pub const MAX_POINTS: usize = harvest::MAX_SAMPLES;

/// The assets; no token (a browser loads them before it has one).
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
}

/// The data endpoints; merged before the token layer.
pub fn data() -> Router<AppState> {
    Router::new()
        .route("/ui/api/overview", get(overview_handler))
        .route("/ui/api/harvest", get(harvest_handler))
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The token lives in sessionStorage: no script or frame from elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `/ui/?token=` must not leak through a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn cache() -> &'static overview::Cache {
    static CACHE: OnceLock<overview::Cache> = OnceLock::new();
    CACHE.get_or_init(overview::Cache::default)
}

async fn overview_handler(State(st): State<AppState>) -> Result<Response, ApiError> {
    let body: Arc<Vec<u8>> = cache().get(&st).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.as_ref().clone(),
    )
        .into_response())
}

/// The `harvest/<node>` rings, read from etcd at most once per
/// [`HARVEST_TTL`] for every caller (the lock is held across the read, so
/// consoles asking together cause one). A ring whose `node` is not its
/// key's is left out: it would be drawn as another node's.
async fn shared_rings(st: &AppState) -> Result<Arc<Vec<HarvestRing>>, ApiError> {
    type Slot = tokio::sync::Mutex<Option<(Instant, Arc<Vec<HarvestRing>>)>>;
    static SLOT: OnceLock<Slot> = OnceLock::new();
    let mut slot = SLOT.get_or_init(Slot::default).lock().await;
    if let Some((at, rings)) = slot.as_ref() {
        if at.elapsed() < HARVEST_TTL {
            return Ok(rings.clone());
        }
    }
    let prefix = harvest::prefix(&st.keys);
    let listed: Vec<(String, HarvestRing, i64)> = st.store.list(&prefix).await?;
    let rings: Arc<Vec<HarvestRing>> = Arc::new(
        listed
            .into_iter()
            .filter(|(k, r, _)| k.strip_prefix(&prefix) == Some(r.node.as_str()))
            .map(|(_, r, _)| r)
            .collect(),
    );
    *slot = Some((Instant::now(), rings.clone()));
    Ok(rings)
}

async fn harvest_handler(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut points = DEFAULT_POINTS;
    let mut node = None;
    for (k, v) in &q {
        match k.as_str() {
            "points" => {
                points = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=MAX_POINTS).contains(p))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("points: give 1 to {MAX_POINTS}"),
                        )
                    })?
            }
            "node" => node = Some(v.clone()),
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {other:?} (points, node)"),
                ))
            }
        }
    }
    let rings = shared_rings(&st).await?;
    let out: Vec<_> = rings
        .iter()
        .filter(|r| node.as_ref().is_none_or(|n| &r.node == n))
        .map(|r| {
            json!({
                "node": r.node,
                "every_s": r.every_s,
                "columns": harvest::COLUMNS,
                "samples": harvest::downsample(&r.samples, points),
            })
        })
        .collect();
    Ok(axum::Json(json!({"nodes": out})).into_response())
}
