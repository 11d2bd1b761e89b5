//! `/v1/queues`: list with pending / running counts and current share;
//! set; remove (only when it holds no unfinished job).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use gleaner_core::admission::Amount;
use gleaner_core::fleet::{Job, JobState, NodeInfo, Queue};
use gleaner_core::placement::amount;
use gleaner_core::spec::check_name;
use serde_json::json;

use super::{ApiError, ApiJson, AppState};

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

/// Every queue with its counts and share of the fleet's reservation.
async fn views(st: &AppState, only: Option<&str>) -> Result<Vec<serde_json::Value>, ApiError> {
    let queues: Vec<(String, Queue, i64)> = st.store.list(&st.keys.queues_prefix()).await?;
    let jobs: Vec<(String, Job, i64)> = st.store.list(&st.keys.jobs_prefix()).await?;
    let nodes: Vec<(String, NodeInfo, i64)> = st.store.list(&st.keys.nodes_prefix()).await?;
    let total = nodes
        .iter()
        .flat_map(|(_, n, _)| n.roles.values())
        .fold(Amount::default(), |a, r| a.add(amount(r.reserved)));
    let mut out = Vec::new();
    for (key, q, _) in &queues {
        let Some(name) = st.keys.leaf(key, &st.keys.queues_prefix()) else {
            continue;
        };
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mine = jobs.iter().map(|(_, j, _)| j).filter(|j| j.queue == name);
        let (mut pending, mut running, mut held) = (0, 0, Amount::default());
        for j in mine {
            match j.state {
                JobState::Queued => pending += 1,
                JobState::Placed | JobState::Running => {
                    running += 1;
                    held = held.add(amount(j.spec.resources));
                }
                _ => {}
            }
        }
        let mut v = serde_json::to_value(q).expect("queue serializes");
        v["name"] = json!(name);
        v["pending"] = json!(pending);
        v["running"] = json!(running);
        v["share"] = json!(held.dominant_share(total));
        out.push(v);
    }
    Ok(out)
}

pub async fn list(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(views(&st, None).await?).into_response())
}

pub async fn get_one(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name("queue", &name).map_err(|e| bad(e.to_string()))?;
    let mut v = views(&st, Some(&name)).await?;
    match v.pop() {
        Some(q) => Ok(Json(q).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no queue {name}"),
        )),
    }
}

pub async fn set(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(q): ApiJson<Queue>,
) -> Result<Response, ApiError> {
    check_name("queue", &name).map_err(|e| bad(e.to_string()))?;
    q.validate().map_err(bad)?;
    let key = st.keys.queue(&name);
    let mut client = st.store.client().await?;
    let put = client
        .put(
            key.as_str(),
            serde_json::to_vec(&q).expect("queue serializes"),
            Some(etcd_client::PutOptions::new().with_prev_key()),
        )
        .await;
    let resp = match put {
        Ok(r) => r,
        Err(e) => {
            st.store.reset().await;
            return Err(st.store.unavailable(e).into());
        }
    };
    let code = if resp.prev_key().is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut v = serde_json::to_value(&q).expect("queue serializes");
    v["name"] = json!(name);
    Ok((code, Json(v)).into_response())
}

pub async fn remove(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name("queue", &name).map_err(|e| bad(e.to_string()))?;
    let key = st.keys.queue(&name);
    let Some((_, rev)) = st.store.get::<Queue>(&key).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no queue {name}"),
        ));
    };
    let jobs: Vec<(String, Job, i64)> = st.store.list(&st.keys.jobs_prefix()).await?;
    let unfinished = jobs
        .iter()
        .filter(|(_, j, _)| j.queue == name && !j.state.is_final())
        .count();
    if unfinished > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("queue {name} has {unfinished} unfinished job(s); cancel them first"),
        ));
    }
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            rev,
        )])
        .and_then(vec![TxnOp::delete(key.as_str(), None)]);
    let mut client = st.store.client().await?;
    match client.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(Json(json!({"queue": name, "deleted": true})).into_response()),
        Ok(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("queue {name} changed meanwhile; retry"),
        )),
        Err(e) => {
            st.store.reset().await;
            Err(st.store.unavailable(e).into())
        }
    }
}
