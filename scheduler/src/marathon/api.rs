//! Marathon's REST endpoints on the scheduler's listener (FLEET.md
//! "Marathon API"): Marathon's shapes, status codes, headers and error
//! bodies `{"message", "details"?}`. Every write is one etcd transaction:
//! the app (guarded by its revision) and its deployment together.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use gleaner_core::fleet::{Job, JobState};
use serde_json::{json, Value};

use super::access::Access;
use super::model::{normalize_id, timestamp, App, Violation};
use super::render::Snapshot;
use super::state::{appstate_key, deployment_key, uuid, Action, Deployment};
use crate::api::AppState;
use gleaner_core::app_token::AppAction;

/// Marathon's error body.
#[derive(Debug)]
pub struct MError {
    pub status: StatusCode,
    pub body: Value,
}

impl MError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> MError {
        MError {
            status,
            body: json!({"message": message.into()}),
        }
    }
    fn invalid(details: Vec<Violation>) -> MError {
        MError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({"message": "Object is not valid", "details": details}),
        }
    }
    fn no_app(id: &str) -> MError {
        MError::new(StatusCode::NOT_FOUND, format!("App '{id}' does not exist"))
    }
}

impl IntoResponse for MError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<crate::api::ApiError> for MError {
    fn from(e: crate::api::ApiError) -> Self {
        MError::new(e.status, e.message)
    }
}

impl From<crate::store::StoreError> for MError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::api::ApiError::from(e).into()
    }
}

type Params = Query<Vec<(String, String)>>;

/// Marathon's query booleans: `true`/`false` in any case.
fn flag(q: &[(String, String)], name: &str) -> Result<bool, MError> {
    match q.iter().rev().find(|(k, _)| k == name) {
        None => Ok(false),
        Some((_, v)) if v.is_empty() || v.eq_ignore_ascii_case("true") => Ok(true),
        Some((_, v)) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some((_, v)) => Err(MError::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid boolean value for query parameter {name}: {v}"),
        )),
    }
}

fn values<'a>(q: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    q.iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.split(','))
        .collect()
}

/// The body as a JSON object; `400 Invalid JSON` otherwise.
fn json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, MError> {
    let bad = |path: &str, e: String| MError {
        status: StatusCode::BAD_REQUEST,
        body: json!({"message": "Invalid JSON", "details": [{"path": path, "errors": [e]}]}),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("/", "error.expected.jsobject".into())),
        Err(e) => Err(bad("/", e.to_string())),
    }
}

/// An app from a JSON object: `400 Invalid JSON` naming the field for a
/// wrong type, `422` for every rule broken.
fn parse_app(obj: serde_json::Map<String, Value>) -> Result<App, MError> {
    let v = Value::Object(obj);
    let mut app: App = serde_path_to_error::deserialize(&v).map_err(|e| {
        let path = format!("/{}", e.path().to_string().replace('.', "/"));
        MError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"message": "Invalid JSON",
                "details": [{"path": path.trim_end_matches('/'), "errors": [e.inner().to_string()]}]}),
        }
    })?;
    if let Ok(id) = normalize_id(&app.id) {
        app.id = id;
    }
    app.validate().map_err(MError::invalid)?;
    Ok(app)
}

fn deployment_reply(status: StatusCode, d: &Deployment) -> Response {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&d.id) {
        h.insert("Marathon-Deployment-Id", v);
    }
    (
        status,
        h,
        Json(json!({"deploymentId": d.id, "version": d.version})),
    )
        .into_response()
}

fn locked(deps: &[&Deployment]) -> MError {
    let first = deps.first().map(|d| d.id.as_str()).unwrap_or("");
    MError {
        status: StatusCode::CONFLICT,
        body: json!({
            "message": format!("App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/{first}'."),
            "deployments": deps.iter().map(|d| json!({"id": d.id})).collect::<Vec<_>>(),
        }),
    }
}

async fn commit(st: &AppState, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool, MError> {
    let mut client = st.store.client().await?;
    match client.txn(Txn::new().when(compares).and_then(ops)).await {
        Ok(r) => Ok(r.succeeded()),
        Err(e) => {
            st.store.reset().await;
            Err(st.store.unavailable(e).into())
        }
    }
}

fn changed() -> MError {
    MError::new(
        StatusCode::CONFLICT,
        "The app changed while this request was handled; retry",
    )
}

/// Writes `app` (absent before when `rev` is 0) with a new deployment,
/// replacing (force) the deployments that lock it.
async fn deploy(
    st: &AppState,
    snap: &Snapshot,
    app: &App,
    rev: i64,
    action: Action,
    previous: Option<App>,
    force: bool,
) -> Result<Deployment, MError> {
    let locks = snap.deployments_of(&app.id);
    if !locks.is_empty() && !force {
        return Err(locked(&locks));
    }
    let d = Deployment {
        id: uuid(),
        version: app.version.clone().unwrap_or_default(),
        app: app.id.clone(),
        action,
        previous: previous.map(Box::new),
    };
    let key = st.keys.app(&app.id);
    let mut ops = vec![
        TxnOp::put(key.as_str(), serde_json::to_vec(app).expect("app"), None),
        TxnOp::put(
            deployment_key(&st.keys, &d.id),
            serde_json::to_vec(&d).expect("deployment"),
            None,
        ),
    ];
    for l in locks {
        ops.push(TxnOp::delete(deployment_key(&st.keys, &l.id), None));
    }
    if rev == 0 {
        ops.push(TxnOp::delete(appstate_key(&st.keys, &app.id), None));
    }
    let cmp = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)];
    if !commit(st, cmp, ops).await? {
        return Err(if rev == 0 {
            MError::new(
                StatusCode::CONFLICT,
                format!("An app with id [{}] already exists.", app.id),
            )
        } else {
            changed()
        });
    }
    Ok(d)
}

pub async fn ping() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "pong",
    )
        .into_response()
}

pub async fn list_apps(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Query(q): Params,
) -> Result<Response, MError> {
    let embed = values(&q, "embed");
    let tasks = embed.contains(&"apps.tasks");
    let failure = embed.contains(&"apps.lastTaskFailure");
    let snap = Snapshot::load(&st).await?;
    let id_filter = q.iter().find(|(k, _)| k == "id").map(|(_, v)| v.as_str());
    let cmd_filter = q.iter().find(|(k, _)| k == "cmd").map(|(_, v)| v.as_str());
    let apps: Vec<Value> = snap
        .apps
        .values()
        .map(|(a, _)| a)
        .filter(|a| access.sees(&a.id))
        .filter(|a| id_filter.is_none_or(|f| a.id.contains(f)))
        .filter(|a| cmd_filter.is_none_or(|f| a.cmd.as_deref().is_some_and(|c| c.contains(f))))
        .map(|a| snap.app(a, tasks, failure))
        .collect();
    Ok(Json(json!({ "apps": apps })).into_response())
}

pub async fn create_app(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response, MError> {
    let force = flag(&q, "force")?;
    let mut app = parse_app(json_object(&body)?)?;
    check_define(&access, &app)?;
    let snap = Snapshot::load(&st).await?;
    if snap.apps.contains_key(&app.id) {
        return Err(MError::new(
            StatusCode::CONFLICT,
            format!("An app with id [{}] already exists.", app.id),
        ));
    }
    app.accept(Utc::now(), true);
    let d = deploy(&st, &snap, &app, 0, Action::StartApplication, None, force).await?;
    let mut v = snap.app(&app, false, false);
    v["deployments"] = json!([{"id": d.id}]);
    let mut h = HeaderMap::new();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v2/apps{}", app.id)) {
        h.insert(header::LOCATION, loc);
    }
    if let Ok(id) = HeaderValue::from_str(&d.id) {
        h.insert("Marathon-Deployment-Id", id);
    }
    Ok((StatusCode::CREATED, h, Json(v)).into_response())
}

/// `/v2/apps/{id}[/tasks]` (app ids contain `/`: one wildcard route).
pub async fn get_any(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Path(path): Path<String>,
    Query(q): Params,
) -> Result<Response, MError> {
    if let Some(id) = path.strip_suffix("/tasks") {
        let id = normalize_id(id).map_err(|_| MError::no_app(id))?;
        access.check(AppAction::Read { app: &id })?;
        let snap = Snapshot::load(&st).await?;
        if !snap.apps.contains_key(&id) {
            return Err(MError::no_app(&id));
        }
        let tasks: Vec<Value> = snap.tasks_of(&id).iter().map(|j| snap.task(j)).collect();
        return Ok(Json(json!({ "tasks": tasks })).into_response());
    }
    let id = normalize_id(&path).map_err(|_| MError::no_app(&path))?;
    access.check(AppAction::Read { app: &id })?;
    let _ = values(&q, "embed");
    let snap = Snapshot::load(&st).await?;
    let (app, _) = snap.apps.get(&id).ok_or_else(|| MError::no_app(&id))?;
    Ok(Json(json!({ "app": snap.app(app, true, true) })).into_response())
}

/// `PUT /v2/apps/{id}`: a partial update (fields given replace the stored
/// ones); creates the app (`201`) when absent. Only `instances` changed:
/// a scale, the instances stay; anything else: a rolling restart.
pub async fn put_app(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Path(path): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response, MError> {
    let force = flag(&q, "force")?;
    let id = normalize_id(&path).map_err(|e| {
        MError::invalid(vec![Violation {
            path: "/id".into(),
            errors: vec![e],
        }])
    })?;
    let mut patch = json_object(&body)?;
    patch.insert("id".into(), json!(id));
    let snap = Snapshot::load(&st).await?;
    let now = Utc::now();
    let Some((old, rev)) = snap.apps.get(&id).cloned() else {
        let mut app = parse_app(patch)?;
        check_define(&access, &app)?;
        app.accept(now, true);
        let d = deploy(&st, &snap, &app, 0, Action::StartApplication, None, force).await?;
        return Ok(deployment_reply(StatusCode::CREATED, &d));
    };
    let mut merged = match serde_json::to_value(&old).expect("app") {
        Value::Object(m) => m,
        _ => unreachable!("an app is an object"),
    };
    // What the client did not send stays; version fields are the server's.
    patch.remove("version");
    patch.remove("versionInfo");
    let only_scale = patch.keys().all(|k| k == "id" || k == "instances");
    for (k, v) in patch {
        merged.insert(k, v);
    }
    let mut app = parse_app(merged)?;
    if only_scale {
        access.check(AppAction::Change { app: &id })?;
    } else {
        check_define(&access, &app)?;
    }
    app.accept(now, !only_scale);
    let action = if only_scale {
        Action::ScaleApplication
    } else {
        Action::RestartApplication
    };
    let d = deploy(&st, &snap, &app, rev, action, Some(old), force).await?;
    Ok(deployment_reply(StatusCode::OK, &d))
}

pub async fn delete_any(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Path(path): Path<String>,
    Query(q): Params,
) -> Result<Response, MError> {
    let force = flag(&q, "force")?;
    let scale = flag(&q, "scale")?;
    if let Some((id, task)) = path.split_once("/tasks/") {
        let id = normalize_id(id).map_err(|_| MError::no_app(id))?;
        access.check(AppAction::Change { app: &id })?;
        return kill_tasks(&st, &id, Some(task), None, scale, force).await;
    }
    if let Some(id) = path.strip_suffix("/tasks") {
        let id = normalize_id(id).map_err(|_| MError::no_app(id))?;
        access.check(AppAction::Change { app: &id })?;
        let host = q.iter().find(|(k, _)| k == "host").map(|(_, v)| v.as_str());
        return kill_tasks(&st, &id, None, host, scale, force).await;
    }
    let id = normalize_id(&path).map_err(|_| MError::no_app(&path))?;
    access.check(AppAction::Change { app: &id })?;
    let snap = Snapshot::load(&st).await?;
    let (app, rev) = snap.apps.get(&id).ok_or_else(|| MError::no_app(&id))?;
    let locks = snap.deployments_of(&id);
    if !locks.is_empty() && !force {
        return Err(locked(&locks));
    }
    let d = Deployment {
        id: uuid(),
        version: timestamp(Utc::now()),
        app: id.clone(),
        action: Action::StopApplication,
        previous: Some(Box::new(app.clone())),
    };
    let key = st.keys.app(&id);
    let mut ops = vec![
        TxnOp::delete(key.as_str(), None),
        TxnOp::delete(appstate_key(&st.keys, &id), None),
        TxnOp::put(
            deployment_key(&st.keys, &d.id),
            serde_json::to_vec(&d).expect("deployment"),
            None,
        ),
    ];
    for l in locks {
        ops.push(TxnOp::delete(deployment_key(&st.keys, &l.id), None));
    }
    let cmp = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)];
    if !commit(&st, cmp, ops).await? {
        return Err(changed());
    }
    Ok(deployment_reply(StatusCode::OK, &d))
}

/// `POST /v2/apps/{id}/restart`: a new version of the same definition,
/// replaced within the upgrade strategy.
pub async fn post_any(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Path(path): Path<String>,
    Query(q): Params,
) -> Result<Response, MError> {
    let force = flag(&q, "force")?;
    let Some(id) = path.strip_suffix("/restart") else {
        return Err(MError::new(StatusCode::NOT_FOUND, "Not Found"));
    };
    let id = normalize_id(id).map_err(|_| MError::no_app(id))?;
    access.check(AppAction::Change { app: &id })?;
    let snap = Snapshot::load(&st).await?;
    let (old, rev) = snap
        .apps
        .get(&id)
        .cloned()
        .ok_or_else(|| MError::no_app(&id))?;
    let mut app = old.clone();
    app.accept(Utc::now(), true);
    let d = deploy(
        &st,
        &snap,
        &app,
        rev,
        Action::RestartApplication,
        Some(old),
        force,
    )
    .await?;
    Ok(deployment_reply(StatusCode::OK, &d))
}

/// Kills instances of one app: one task, or all (optionally on one host).
/// `scale`: the app's `instances` goes down by as many, as a deployment.
async fn kill_tasks(
    st: &AppState,
    id: &str,
    task: Option<&str>,
    host: Option<&str>,
    scale: bool,
    force: bool,
) -> Result<Response, MError> {
    let snap = Snapshot::load(st).await?;
    let Some((app, rev)) = snap.apps.get(id).cloned() else {
        return Err(MError::no_app(id));
    };
    let picked: Vec<(Job, i64)> = snap
        .jobs
        .get(id)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|(j, _)| matches!(j.state, JobState::Placed | JobState::Running))
        .filter(|(j, _)| task.is_none_or(|t| j.current_task().as_deref() == Some(t)))
        .filter(|(j, _)| host.is_none_or(|h| j.node.as_deref() == Some(h)))
        .cloned()
        .collect();
    if let Some(t) = task {
        if picked.is_empty() {
            return Err(MError::new(
                StatusCode::NOT_FOUND,
                format!("Task '{t}' does not exist"),
            ));
        }
    }
    let rendered: Vec<Value> = picked.iter().map(|(j, _)| snap.task(j)).collect();
    let (mut compares, mut ops) = cancel_ops(st, &picked);
    let mut reply = None;
    if scale {
        let locks = snap.deployments_of(id);
        if !locks.is_empty() && !force {
            return Err(locked(&locks));
        }
        let mut next = app.clone();
        next.instances = next.instances.saturating_sub(picked.len() as u32);
        next.accept(Utc::now(), false);
        let d = Deployment {
            id: uuid(),
            version: next.version.clone().unwrap_or_default(),
            app: id.to_owned(),
            action: Action::ScaleApplication,
            previous: Some(Box::new(app.clone())),
        };
        let key = st.keys.app(id);
        compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, rev));
        ops.push(TxnOp::put(
            key,
            serde_json::to_vec(&next).expect("app"),
            None,
        ));
        ops.push(TxnOp::put(
            deployment_key(&st.keys, &d.id),
            serde_json::to_vec(&d).expect("deployment"),
            None,
        ));
        for l in locks {
            ops.push(TxnOp::delete(deployment_key(&st.keys, &l.id), None));
        }
        reply = Some(d);
    }
    if !ops.is_empty() && !commit(st, compares, ops).await? {
        return Err(changed());
    }
    Ok(match (reply, task) {
        (Some(d), _) => deployment_reply(StatusCode::OK, &d),
        (None, Some(_)) => Json(json!({"task": rendered[0]})).into_response(),
        (None, None) => Json(json!({ "tasks": rendered })).into_response(),
    })
}

/// Cancelling instance jobs: state CANCELLED and their placement key gone
/// (the agent kills the task); the leader replaces them unless scaled.
fn cancel_ops(st: &AppState, jobs: &[(Job, i64)]) -> (Vec<Compare>, Vec<TxnOp>) {
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    let now = Utc::now();
    for (j, rev) in jobs {
        let key = st.keys.job(&j.id);
        let mut next = j.clone();
        next.state = JobState::Cancelled;
        next.finished_at = Some(now);
        next.message = Some("killed through the Marathon API".into());
        compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev));
        ops.push(TxnOp::put(
            key,
            serde_json::to_vec(&next).expect("job"),
            None,
        ));
        if let (Some(node), Some(t)) = (&j.node, j.current_task()) {
            ops.push(TxnOp::delete(st.keys.placement(node, &t), None));
        }
    }
    (compares, ops)
}

pub async fn list_tasks(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Query(q): Params,
) -> Result<Response, MError> {
    let status = values(&q, "status");
    let snap = Snapshot::load(&st).await?;
    let tasks: Vec<Value> = snap
        .apps
        .keys()
        .filter(|id| access.sees(id))
        .flat_map(|id| snap.tasks_of(id))
        .map(|j| snap.task(j))
        .filter(|t| {
            status.is_empty()
                || status
                    .iter()
                    .any(|s| match s.to_ascii_lowercase().as_str() {
                        "running" => t["state"] == "TASK_RUNNING",
                        "staging" => t["state"] == "TASK_STAGING",
                        _ => false,
                    })
        })
        .collect();
    Ok(Json(json!({ "tasks": tasks })).into_response())
}

/// `POST /v2/tasks/delete {"ids": [...]}`.
pub async fn delete_tasks(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Query(q): Params,
    body: Bytes,
) -> Result<Response, MError> {
    let scale = flag(&q, "scale")?;
    let force = flag(&q, "force")?;
    let obj = json_object(&body)?;
    let ids: Vec<String> = match obj.get("ids") {
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return Err(MError {
                status: StatusCode::BAD_REQUEST,
                body: json!({"message": "Invalid JSON", "details": [{"path": "/ids", "errors": ["error.expected.jsarray of strings"]}]}),
            })
        }
    };
    let snap = Snapshot::load(&st).await?;
    let mut by_app: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &ids {
        let app = snap.jobs.iter().find_map(|(app, jobs)| {
            jobs.values()
                .any(|(j, _)| j.current_task().as_deref() == Some(t.as_str()))
                .then(|| app.clone())
        });
        match app {
            Some(a) => by_app.entry(a).or_default().push(t.clone()),
            None => {
                return Err(MError::new(
                    StatusCode::NOT_FOUND,
                    format!("Task '{t}' does not exist"),
                ))
            }
        }
    }
    // All or nothing: every task's app must be in scope.
    for app in by_app.keys() {
        access.check(AppAction::Change { app })?;
    }
    let mut last = None;
    for (app, tasks) in by_app {
        for t in tasks {
            let r = kill_tasks(&st, &app, Some(&t), None, scale, force).await?;
            last = Some(r);
        }
    }
    match (scale, last) {
        (true, Some(r)) => Ok(r),
        _ => Ok(Json(json!({})).into_response()),
    }
}

pub async fn list_deployments(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Response, MError> {
    let snap = Snapshot::load(&st).await?;
    let out: Vec<Value> = snap
        .deployments
        .values()
        .filter(|(d, _)| access.sees(&d.app))
        .map(|(d, _)| d.render())
        .collect();
    Ok(Json(out).into_response())
}

/// `DELETE /v2/deployments/{id}`: `force=true` stops it where it is
/// (`202`); otherwise a rollback deployment restores the app as it was.
pub async fn delete_deployment(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, MError> {
    let force = flag(&q, "force")?;
    let snap = Snapshot::load(&st).await?;
    let Some((d, drev)) = snap.deployments.values().find(|(d, _)| d.id == id).cloned() else {
        return Err(MError::new(
            StatusCode::NOT_FOUND,
            format!("DeploymentPlan {id} does not exist"),
        ));
    };
    access.check(AppAction::Change { app: &d.app })?;
    let dkey = deployment_key(&st.keys, &d.id);
    if force {
        let cmp = vec![Compare::mod_revision(dkey.as_str(), CompareOp::Equal, drev)];
        if !commit(&st, cmp, vec![TxnOp::delete(dkey, None)]).await? {
            return Err(changed());
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let now = Utc::now();
    let current = snap.apps.get(&d.app).cloned();
    let rollback = Deployment {
        id: uuid(),
        version: timestamp(now),
        app: d.app.clone(),
        action: match (&d.previous, &current) {
            (Some(_), Some(_)) => Action::RestartApplication,
            (Some(_), None) => Action::StartApplication,
            (None, _) => Action::StopApplication,
        },
        previous: None,
    };
    let akey = st.keys.app(&d.app);
    let arev = current.as_ref().map(|(_, r)| *r).unwrap_or(0);
    let mut ops = vec![
        TxnOp::delete(dkey.as_str(), None),
        TxnOp::put(
            deployment_key(&st.keys, &rollback.id),
            serde_json::to_vec(&rollback).expect("deployment"),
            None,
        ),
    ];
    match &d.previous {
        Some(prev) => {
            let mut app = (**prev).clone();
            app.accept(now, true);
            ops.push(TxnOp::put(
                akey.as_str(),
                serde_json::to_vec(&app).expect("app"),
                None,
            ));
        }
        None => ops.push(TxnOp::delete(akey.as_str(), None)),
    }
    let cmp = vec![
        Compare::mod_revision(dkey.as_str(), CompareOp::Equal, drev),
        Compare::mod_revision(akey.as_str(), CompareOp::Equal, arev),
    ];
    if !commit(&st, cmp, ops).await? {
        return Err(changed());
    }
    Ok(deployment_reply(StatusCode::OK, &rollback))
}

pub async fn queue(
    State(st): State<AppState>,
    Extension(access): Extension<Access>,
) -> Result<Response, MError> {
    let snap = Snapshot::load(&st).await?;
    let mut q = snap.queue();
    if let Some(items) = q["queue"].as_array_mut() {
        items.retain(|i| i["app"]["id"].as_str().is_some_and(|id| access.sees(id)));
    }
    Ok(Json(q).into_response())
}

/// A definition a scoped caller may write: in its group, role and queue.
fn check_define(access: &Access, app: &App) -> Result<(), MError> {
    access.check(AppAction::Define {
        app: &app.id,
        role: &app.role(),
        queue: &app.queue(),
    })
}

/// `GET /v2/info`: Marathon's keys that have a meaning here.
pub async fn info(State(st): State<AppState>) -> Result<Response, MError> {
    let leader = current_leader(&st).await?;
    Ok(Json(json!({
        "name": "marathon",
        "version": "1.10.0",
        "buildref": format!("gleaner-{}", env!("CARGO_PKG_VERSION")),
        "elected": leader.as_deref() == Some(st.name.as_ref()),
        "leader": leader,
        "frameworkId": st.keys.prefix,
        "marathon_config": {
            "master": st.store.endpoints().join(","),
            "mesos_role": gleaner_core::spec::DEFAULT_ROLE,
            "task_launch_timeout": 300000,
            "local_port_min": 31000,
            "local_port_max": 32000,
        },
        "http_config": {"http_port": null, "https_port": null},
        "event_subscriber": {"type": "http_callback"},
        "zookeeper_config": {},
    }))
    .into_response())
}

/// `GET /v2/leader`: `{"leader": name}`, `404` while no replica leads.
pub async fn leader(State(st): State<AppState>) -> Result<Response, MError> {
    match current_leader(&st).await? {
        Some(l) => Ok(Json(json!({ "leader": l })).into_response()),
        None => Err(MError::new(StatusCode::NOT_FOUND, "There is no leader")),
    }
}

async fn current_leader(st: &AppState) -> Result<Option<String>, MError> {
    let mut client = st.store.client().await?;
    match client.leader(st.keys.leader()).await {
        Ok(resp) => Ok(resp
            .kv()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
        Err(e) if e.to_string().contains("no leader") => Ok(None),
        Err(e) => {
            st.store.reset().await;
            Err(st.store.unavailable(e).into())
        }
    }
}
