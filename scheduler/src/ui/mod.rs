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
    let rings: Vec<(String, HarvestRing, i64)> = st.store.list(&harvest::prefix(&st.keys)).await?;
    let out: Vec<_> = rings
        .into_iter()
        .map(|(_, r, _)| r)
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
