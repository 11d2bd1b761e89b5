//! Marathon's REST API on the fleet (FLEET.md "Marathon API").
//!
//! * [`model`]: the app definition stored in `apps/<app-id>`, Marathon's
//!   defaults and validation, the TaskSpec its instances run.
//! * [`decide`]: pure: backoff, scale, kill selection, rolling steps.
//! * [`controller`]: the leader keeps apps at their target (a hook before
//!   each placement pass); instances are fleet jobs in queue `marathon`.
//! * [`access`]: admin or an app instance's scoped token, checked by
//!   each endpoint.
//! * [`api`], [`render`], [`events`]: the endpoints, served by every
//!   replica from its [`cache`] of etcd (kept by a watch).

pub mod access;
pub mod api;
pub mod cache;
pub mod controller;
pub mod decide;
pub mod events;
pub mod model;
pub mod render;
pub mod state;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::api::AppState;

/// The Marathon routes, merged into the native router (same token).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ping", get(api::ping))
        .route("/v2/info", get(api::info))
        .route("/v2/leader", get(api::leader))
        .route("/v2/apps", get(api::list_apps).post(api::create_app))
        .route(
            "/v2/apps/{*id}",
            get(api::get_any)
                .put(api::put_app)
                .delete(api::delete_any)
                .post(api::post_any),
        )
        .route("/v2/tasks", get(api::list_tasks))
        .route("/v2/tasks/delete", post(api::delete_tasks))
        .route("/v2/deployments", get(api::list_deployments))
        .route("/v2/deployments/{id}", delete(api::delete_deployment))
        .route("/v2/queue", get(api::queue))
        .route("/v2/events", get(events::events))
}
