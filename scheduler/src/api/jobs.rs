//! `/v1/jobs`: submit (all or none), list, get, cancel.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use gleaner_core::constraints;
use gleaner_core::fleet::{check_job_id, Gang, Job, JobState, Queue, TaskRecord};
use gleaner_core::gang;
use gleaner_core::spec::{check_name, TaskSpec};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiJson, AppState};
use crate::marathon::model::{ENV_APP_ID, ENV_APP_VERSION};

/// etcd's default limit is 128 operations per transaction; a submission is
/// one transaction.
pub const MAX_JOBS_PER_REQUEST: usize = 100;
pub const MAX_GANG: u32 = 50;
pub const MAX_RETRIES: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    queue: String,
    jobs: Vec<JobRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    #[serde(default)]
    priority: i32,
    spec: TaskSpec,
    #[serde(default)]
    gang: Option<Gang>,
    #[serde(default)]
    max_retries: Option<u32>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

/// Validates a submission; every job or none.
pub fn validate(req: &Submit) -> Result<(), String> {
    check_name("queue", &req.queue).map_err(|e| e.to_string())?;
    if req.jobs.is_empty() || req.jobs.len() > MAX_JOBS_PER_REQUEST {
        return Err(format!(
            "jobs: give 1 to {MAX_JOBS_PER_REQUEST} jobs per request (one etcd transaction, all or none); send more in several requests"
        ));
    }
    let mut gangs: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    // A gang's members on a node are one task group: they agree.
    let mut members: BTreeMap<String, Vec<(usize, Gang, &TaskSpec)>> = BTreeMap::new();
    for (i, j) in req.jobs.iter().enumerate() {
        if j.spec.id.is_some() {
            return Err(format!(
                "jobs[{i}].spec.id: set by the scheduler (one task id per attempt)"
            ));
        }
        j.spec
            .validate()
            .map_err(|e| format!("jobs[{i}].spec.{e}"))?;
        constraints::parse(&j.spec.constraints).map_err(|e| format!("jobs[{i}].spec.{e}"))?;
        // The app controller takes a job with these for an app's instance
        // (and cancels, then deletes, one whose app does not exist).
        for var in [ENV_APP_ID, ENV_APP_VERSION] {
            if j.spec.env.contains_key(var) {
                return Err(format!(
                    "jobs[{i}].spec.env.{var}: reserved for Marathon app instances"
                ));
            }
        }
        if j.max_retries.is_some_and(|r| r > MAX_RETRIES) {
            return Err(format!("jobs[{i}].max_retries: at most {MAX_RETRIES}"));
        }
        let normal = j
            .gang
            .clone()
            .map(gang::normalized)
            .transpose()
            .map_err(|e| format!("jobs[{i}].{e}"))?;
        gang::check_member(normal.as_ref(), &j.spec).map_err(|e| format!("jobs[{i}].{e}"))?;
        if let Some(g) = normal {
            members
                .entry(g.id.clone())
                .or_default()
                .push((i, g, &j.spec));
        }
        if let Some(g) = &j.gang {
            check_name("gang.id", &g.id).map_err(|e| format!("jobs[{i}].{e}"))?;
            if g.cardinality == 0 || g.cardinality > MAX_GANG {
                return Err(format!(
                    "jobs[{i}].gang.cardinality: must be 1 to {MAX_GANG}"
                ));
            }
            let (n, card) = gangs.entry(&g.id).or_insert((0, g.cardinality));
            if *card != g.cardinality {
                return Err(format!(
                    "jobs[{i}].gang.cardinality: gang {} has members with {} and {}",
                    g.id, card, g.cardinality
                ));
            }
            *n += 1;
            if *n > *card {
                return Err(format!(
                    "jobs[{i}].gang: gang {} has more than {card} members",
                    g.id
                ));
            }
        }
    }
    for list in members.values() {
        let pairs: Vec<(&Gang, &TaskSpec)> = list.iter().map(|(_, g, s)| (g, *s)).collect();
        gang::check_gang(&pairs).map_err(|(k, e)| format!("jobs[{}].{e}", list[k].0))?;
    }
    Ok(())
}

/// `<ms since epoch, base 36>-<8 random hex digits>`: sortable by
/// submission, unique across replicas (the put also checks absence).
fn new_job_id() -> String {
    let mut ms = Utc::now().timestamp_millis().max(0) as u64;
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut b36 = Vec::new();
    loop {
        b36.push(digits[(ms % 36) as usize]);
        ms /= 36;
        if ms == 0 {
            break;
        }
    }
    b36.reverse();
    let mut rnd = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut rnd);
    }
    let id = format!(
        "{}-{:08x}",
        String::from_utf8_lossy(&b36),
        u32::from_le_bytes(rnd)
    );
    debug_assert!(check_job_id(&id).is_ok());
    id
}

pub async fn submit(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<Submit>,
) -> Result<Response, ApiError> {
    validate(&req).map_err(bad)?;
    let queue_key = st.keys.queue(&req.queue);
    if st.store.get::<Queue>(&queue_key).await?.is_none() {
        return Err(bad(format!(
            "queue: {} does not exist (create it with PUT /v1/queues/{})",
            req.queue, req.queue
        )));
    }
    let now = Utc::now();
    let jobs: Vec<Job> = req
        .jobs
        .into_iter()
        .map(|j| Job {
            id: new_job_id(),
            queue: req.queue.clone(),
            priority: j.priority,
            spec: j.spec,
            // Checked by `validate`.
            gang: j.gang.and_then(|g| gang::normalized(g).ok()),
            max_retries: j.max_retries.unwrap_or(st.default_max_retries),
            submitted_at: now,
            state: JobState::Queued,
            attempt: 0,
            retries: 0,
            node: None,
            message: None,
            placed_at: None,
            finished_at: None,
            avoid: vec![],
            withdrawing: false,
        })
        .collect();
    // The queue must still exist and no id may be taken: all or none.
    let mut compares = vec![Compare::version(queue_key.as_str(), CompareOp::Greater, 0)];
    let mut ops = Vec::new();
    for j in &jobs {
        let key = st.keys.job(&j.id);
        compares.push(Compare::version(key.as_str(), CompareOp::Equal, 0));
        ops.push(TxnOp::put(
            key,
            serde_json::to_vec(j).expect("job serializes"),
            None,
        ));
    }
    let mut client = st.store.client().await?;
    let resp = match client.txn(Txn::new().when(compares).and_then(ops)).await {
        Ok(r) => r,
        Err(e) => {
            st.store.reset().await;
            return Err(st.store.unavailable(e).into());
        }
    };
    if !resp.succeeded() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "queue {} was removed, or a job id was taken; nothing stored, retry",
                req.queue
            ),
        ));
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    Ok((StatusCode::CREATED, Json(json!({"jobs": ids}))).into_response())
}

/// A job as the API shows it: the stored job, its current task id and, for
/// one job, that task's status.
fn view(job: &Job, status: Option<&TaskRecord>) -> serde_json::Value {
    let mut v = serde_json::to_value(job).expect("job serializes");
    v["task"] = json!(job.current_task());
    if let Some(s) = status {
        v["task_status"] = serde_json::to_value(s).expect("status serializes");
    }
    v
}

pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut queue = None;
    let mut state = None;
    for (k, v) in &q {
        match k.as_str() {
            "queue" => queue = Some(v.clone()),
            "state" => {
                state = Some(JobState::parse(v).ok_or_else(|| {
                    bad(format!(
                    "state: unknown {v:?} (QUEUED, PLACED, RUNNING, SUCCEEDED, FAILED, CANCELLED)"
                ))
                })?)
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (queue, state)"
                )))
            }
        }
    }
    let jobs: Vec<(String, Job, i64)> = st.store.list(&st.keys.jobs_prefix()).await?;
    let out: Vec<serde_json::Value> = jobs
        .iter()
        .map(|(_, j, _)| j)
        .filter(|j| queue.as_ref().is_none_or(|q| &j.queue == q))
        .filter(|j| state.is_none_or(|s| j.state == s))
        .map(|j| view(j, None))
        .collect();
    Ok(Json(out).into_response())
}

async fn load(st: &AppState, id: &str) -> Result<(Job, i64), ApiError> {
    check_job_id(id).map_err(bad)?;
    st.store
        .get::<Job>(&st.keys.job(id))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")))
}

pub async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (job, _) = load(&st, &id).await?;
    let status = match job.current_task() {
        Some(t) => st
            .store
            .get::<TaskRecord>(&st.keys.task(&t))
            .await?
            .map(|(s, _)| s),
        None => None,
    };
    Ok(Json(view(&job, status.as_ref())).into_response())
}

/// Cancel: a queued job is CANCELLED; a placed or running one too, and its
/// placement key is deleted in the same transaction (its agent kills it).
pub async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    for _ in 0..5 {
        let (job, rev) = load(&st, &id).await?;
        if job.state.is_final() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("job {id} already {}", job.state.as_str()),
            ));
        }
        let mut next = job.clone();
        next.state = JobState::Cancelled;
        next.finished_at = Some(Utc::now());
        next.message = Some("cancelled".into());
        let key = st.keys.job(&id);
        let mut ops = vec![TxnOp::put(
            key.as_str(),
            serde_json::to_vec(&next).expect("job serializes"),
            None,
        )];
        if let (Some(node), Some(task)) = (&job.node, job.current_task()) {
            if matches!(job.state, JobState::Placed | JobState::Running) {
                ops.push(TxnOp::delete(st.keys.placement(node, &task), None));
            }
        }
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(ops);
        let mut client = st.store.client().await?;
        match client.txn(txn).await {
            Ok(r) if r.succeeded() => return Ok(Json(view(&next, None)).into_response()),
            // The leader changed the job meanwhile: read it again.
            Ok(_) => continue,
            Err(e) => {
                st.store.reset().await;
                return Err(st.store.unavailable(e).into());
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("job {id} kept changing; retry"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Submit {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn job_ids_are_valid_and_distinct() {
        let a = new_job_id();
        let b = new_job_id();
        assert_ne!(a, b);
        check_job_id(&a).unwrap();
        let task = gleaner_core::fleet::task_id(&a, 1000);
        check_name("id", &task).unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let spec = json!({"cmd": "true", "resources": {"cpus": 1, "mem_mb": 64}});
        assert!(validate(&req(json!({"queue": "q", "jobs": [{"spec": spec}]}))).is_ok());
        for (body, want) in [
            (json!({"queue": "q", "jobs": []}), "jobs: give 1 to"),
            (
                json!({"queue": "q", "jobs": vec![json!({"spec": spec}); MAX_JOBS_PER_REQUEST + 1]}),
                "jobs: give 1 to 100 jobs per request",
            ),
            (json!({"queue": "a/b", "jobs": [{"spec": spec}]}), "queue"),
            (
                json!({"queue": "q", "jobs": [{"spec": {"cmd": "x", "resources": {"cpus": -1, "mem_mb": 64}}}]}),
                "jobs[0].spec.resources.cpus",
            ),
            (
                json!({"queue": "q", "jobs": [{"spec": {"id": "x", "cmd": "x", "resources": {"cpus": 1, "mem_mb": 64}}}]}),
                "jobs[0].spec.id",
            ),
            (
                json!({"queue": "q", "jobs": [{"spec": {"cmd": "x", "constraints": [["a", "NOPE"]], "resources": {"cpus": 1, "mem_mb": 64}}}]}),
                "jobs[0].spec.constraints[0]",
            ),
            (
                json!({"queue": "q", "jobs": [{"spec": spec, "gang": {"id": "g", "cardinality": 1}}, {"spec": spec, "gang": {"id": "g", "cardinality": 1}}]}),
                "more than 1 members",
            ),
            (
                json!({"queue": "q", "jobs": [{"spec": spec, "gang": {"id": "g", "cardinality": 0}}]}),
                "cardinality",
            ),
            (
                json!({"queue": "q", "jobs": [{"spec": spec, "max_retries": 1000}]}),
                "max_retries",
            ),
            (
                json!({"queue": "q", "jobs": [{"spec": {"cmd": "x", "env": {"MARATHON_APP_ID": "/a"}, "resources": {"cpus": 1, "mem_mb": 64}}}]}),
                "jobs[0].spec.env.MARATHON_APP_ID: reserved",
            ),
        ] {
            let e = validate(&req(body.clone())).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn a_gangs_pod_settings_follow_the_group_rules() {
        let spec = json!({"cmd": "true", "resources": {"cpus": 1, "mem_mb": 64}});
        let side = json!({"cmd": "true", "sidecar": true, "resources": {"cpus": 1, "mem_mb": 64}});
        let g = |extra: serde_json::Value| {
            let mut g = json!({"id": "g", "cardinality": 2});
            g.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            g
        };
        let two = |a: &serde_json::Value,
                   ga: serde_json::Value,
                   b: &serde_json::Value,
                   gb: serde_json::Value| {
            req(json!({"queue": "q", "jobs": [{"spec": a, "gang": ga}, {"spec": b, "gang": gb}]}))
        };
        let net = json!({"network": "group", "shared_path": "/data"});
        validate(&two(&spec, g(net.clone()), &side, g(net.clone()))).unwrap();
        // A plain gang (no pod settings, no sidecar) keeps mixed roles and
        // restart policies, as before pods.
        validate(&two(
            &spec,
            g(json!({})),
            &json!({"cmd": "x", "role": "web", "restart": {"policy": "always"}, "resources": {"cpus": 1, "mem_mb": 64}}),
            g(json!({})),
        ))
        .unwrap();
        // "host" is the default: the same as leaving it out.
        validate(&two(
            &spec,
            g(json!({"network": "host"})),
            &spec,
            g(json!({})),
        ))
        .unwrap();
        for (body, want) in [
            (
                two(
                    &spec,
                    g(json!({"shared_path": "/etc"})),
                    &spec,
                    g(json!({"shared_path": "/etc"})),
                ),
                "jobs[0].gang.shared_path",
            ),
            (
                two(&spec, g(net.clone()), &spec, g(json!({}))),
                "jobs[1].gang: every member",
            ),
            (
                two(
                    &spec,
                    g(json!({"network": "group"})),
                    &json!({"cmd": "x", "network": "none", "resources": {"cpus": 1, "mem_mb": 64}}),
                    g(json!({"network": "group"})),
                ),
                "jobs[1].spec.network",
            ),
            (
                two(&side, g(json!({})), &side, g(json!({}))),
                "not a sidecar",
            ),
            (
                two(
                    &spec,
                    g(json!({"shared_path": "/data"})),
                    &json!({"cmd": "x", "role": "web", "resources": {"cpus": 1, "mem_mb": 64}}),
                    g(json!({"shared_path": "/data"})),
                ),
                "jobs[1].spec.role",
            ),
            (
                two(
                    &spec,
                    g(json!({"shared_path": "/data"})),
                    &json!({"cmd": "x", "restart": {"policy": "always"}, "resources": {"cpus": 1, "mem_mb": 64}}),
                    g(json!({"shared_path": "/data"})),
                ),
                "jobs[1].spec.restart",
            ),
            (
                req(json!({"queue": "q", "jobs": [{"spec": side}]})),
                "jobs[0].spec.sidecar: only a member of a gang",
            ),
        ] {
            let e = match validate(&body) {
                Err(e) => e,
                Ok(()) => panic!("accepted, want {want:?}"),
            };
            assert!(e.contains(want), "{e} (want {want:?})");
        }
    }
}
