//! `POST /v1/tasks/{id}/exec`: an HTTP/1.1 upgrade to an exec session
//! (`crate::exec`). Admins only.

use axum::extract::{Extension, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::{allow, ApiError, AppState, MAX_BODY_BYTES};
use crate::auth::{Action, Caller};
use crate::exec::proto::UPGRADE;
use crate::exec::ExecRequest;

fn asks_for_exec_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, want: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, UPGRADE)
}

/// Runs a command inside a running task: its namespaces, root, cgroup,
/// user and seccomp filter. The request must ask for
/// `Connection: Upgrade`, `Upgrade: gleaner-exec.v1`; after `101` the
/// connection carries frames (see the README). The command is killed when
/// the connection ends.
#[utoipa::path(post, path = "/v1/tasks/{id}/exec", tag = "tasks", params(("id" = String, Path, description = "task id")), request_body = ExecRequest, responses((status = 101, description = "switching to the exec stream"), (status = 400, description = "bad input, no upgrade asked for, or the program is not in the task's root", body = super::ErrorBody), (status = 401, description = "no valid credential", body = super::ErrorBody), (status = 403, description = "exec is for admins", body = super::ErrorBody), (status = 404, description = "unknown task", body = super::ErrorBody), (status = 408, description = "body too slow", body = super::ErrorBody), (status = 409, description = "the task is not running", body = super::ErrorBody), (status = 413, description = "body over 1 MiB", body = super::ErrorBody)))]
pub(super) async fn exec_task(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    allow(&caller, Action::Exec { id: &id })?;
    if !asks_for_exec_upgrade(req.headers()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("exec needs the headers Connection: Upgrade and Upgrade: {UPGRADE}"),
        ));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}")))?;
    let exec: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let session = st.agent.exec_start(&id, &exec).await?;
    tracing::info!(target: "audit", "{caller} exec in task {id}: {:?} tty={}", exec.argv, exec.tty);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session.relay(TokioIo::new(upgraded)).await,
            Err(e) => {
                tracing::debug!("exec in {}: upgrade failed: {e}", session.task_id());
                session.abort().await;
            }
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_both_headers() {
        let mut h = HeaderMap::new();
        assert!(!asks_for_exec_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(!asks_for_exec_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!asks_for_exec_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("gleaner-exec.v1"));
        assert!(asks_for_exec_upgrade(&h));
    }
}
