//! The leader's app loop, run before each placement pass: for every app,
//! consume finished instances (backoff count, `lastTaskFailure`), start and
//! kill instances as [`decide::step`] says, finish deployments that reached
//! their target, and kill instances of deleted apps. Instances are jobs, so
//! the same pass places them (constraints, fitness, roles) and moves them
//! (drain, lost node). Every write is guarded by the leader's election key
//! and by the revision it was decided on.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use gleaner_core::fleet::{Job, JobState, Keys};
use gleaner_core::health::HealthState;
use gleaner_core::status::TaskState;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::decide::{self, Instance, Target};
use super::model::{instance_of, timestamp, App, ENV_MARATHON_URL, ENV_TOKEN, LABEL_API_ACCESS};
use super::state::{
    appstate_key, appstate_prefix, deployment_key, deployments_prefix, instance_job_id, Action,
    AppStatus, Deployment,
};
use crate::view::View;
use gleaner_core::app_token;

/// Finished instances consumed per app per pass (a transaction's size).
const MAX_CONSUMED: usize = 30;
/// New instances per transaction.
const MAX_STARTS_PER_TXN: usize = 100;

/// What the leader gives instances of apps labelled
/// `GLEANER_API_ACCESS=own-group`: the URL to call and the key their
/// token is signed with (none without an admin token: the API is open).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub key: Option<[u8; 32]>,
    pub url: String,
}

impl Credentials {
    /// `MARATHON_URL` and `GLEANER_TOKEN` into an instance's env (over the
    /// app's own values of those names).
    pub fn inject(&self, app: &App, created: i64, spec: &mut gleaner_core::spec::TaskSpec) {
        if app.labels.get(LABEL_API_ACCESS).map(String::as_str) != Some(app_token::OWN_GROUP) {
            return;
        }
        spec.env.insert(ENV_MARATHON_URL.into(), self.url.clone());
        match &self.key {
            Some(k) => spec
                .env
                .insert(ENV_TOKEN.into(), app_token::mint(k, &app.id, created)),
            None => spec.env.remove(ENV_TOKEN),
        };
    }
}

/// Values under `prefix` with their mod and create revisions.
async fn list_created<T: DeserializeOwned>(
    client: &mut Client,
    prefix: &str,
) -> Result<Vec<(T, i64, i64)>, String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice(kv.value()) {
            Ok(v) => out.push((v, kv.mod_revision(), kv.create_revision())),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "ignoring undecodable value")
            }
        }
    }
    Ok(out)
}

async fn list<T: DeserializeOwned>(
    client: &mut Client,
    prefix: &str,
) -> Result<Vec<(String, T, i64)>, String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match serde_json::from_slice(kv.value()) {
            Ok(v) => out.push((key, v, kv.mod_revision())),
            Err(e) => tracing::warn!(%key, error = %e, "ignoring undecodable value"),
        }
    }
    Ok(out)
}

struct Writer<'a> {
    client: &'a mut Client,
    guard: &'a [u8],
}

impl Writer<'_> {
    /// One transaction under the leader guard; `Ok(Some(rev))` on success.
    async fn txn(
        &mut self,
        mut compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Option<i64>, String> {
        compares.insert(
            0,
            Compare::version(self.guard.to_vec(), CompareOp::Greater, 0),
        );
        let resp = self
            .client
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| e.to_string())?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }
}

/// Marathon's `lastTaskFailure` for a finished instance.
fn task_failure(app: &str, job: &Job, view: &View) -> serde_json::Value {
    let task = job.current_task().unwrap_or_default();
    let rec = view.tasks.get(&task);
    json!({
        "appId": app,
        "host": job.node.clone().unwrap_or_default(),
        "message": job.message.clone().unwrap_or_default(),
        "state": super::render::mesos_state(job, rec),
        "taskId": task,
        "timestamp": timestamp(job.finished_at.unwrap_or_else(Utc::now)),
        "version": instance_of(&job.spec).map(|(_, v)| v.to_owned()).unwrap_or_default(),
        "slaveId": job.node.clone().unwrap_or_default(),
    })
}

pub async fn run(
    client: &mut Client,
    keys: &Keys,
    guard: &[u8],
    creds: &Credentials,
    view: &mut View,
) -> Result<(), String> {
    // Deployments before apps: an app and its deployment are written in
    // one transaction, so a deployment read here has its app in the read
    // after. The other order saw a new app's deployment without the app
    // and ended it at once (found by tests/marathon_fleet.rs).
    let deployments: Vec<(String, Deployment, i64)> =
        list(client, &deployments_prefix(keys)).await?;
    let apps: Vec<(App, i64, i64)> = list_created(client, &keys.apps_prefix()).await?;
    let states: Vec<(String, AppStatus, i64)> = list(client, &appstate_prefix(keys)).await?;
    let now = Utc::now();

    let created: HashMap<String, i64> = apps.iter().map(|(a, _, c)| (a.id.clone(), *c)).collect();
    let apps: BTreeMap<String, (App, i64)> = apps
        .into_iter()
        .map(|(a, rev, _)| (a.id.clone(), (a, rev)))
        .collect();
    let mut states: HashMap<String, (AppStatus, i64)> = states
        .into_iter()
        .map(|(k, s, rev)| {
            let id = format!("/{}", k.trim_start_matches(&appstate_prefix(keys)));
            (id, (s, rev))
        })
        .collect();
    // Instances by app: (job, rev).
    let mut by_app: BTreeMap<String, Vec<(Job, i64)>> = BTreeMap::new();
    for (job, rev) in view.jobs.values() {
        if let Some((app, _)) = instance_of(&job.spec) {
            by_app
                .entry(app.to_owned())
                .or_default()
                .push((job.clone(), *rev));
        }
    }
    let mut w = Writer { client, guard };
    let mut done_apps = Vec::new();

    for (app_id, jobs) in &by_app {
        let app = apps.get(app_id).map(|(a, _)| a);
        // 1. Finished instances: consumed (job and task record deleted),
        // counted toward the backoff when they failed.
        let finished: Vec<&(Job, i64)> = jobs
            .iter()
            .filter(|(j, _)| j.state.is_final())
            .take(MAX_CONSUMED)
            .collect();
        if !finished.is_empty() {
            let (mut st, st_rev) = states.get(app_id).cloned().unwrap_or_default();
            let cfg = app.map(|a| a.config_version()).unwrap_or_default();
            if st.version != cfg {
                st = AppStatus {
                    version: cfg.clone(),
                    last_task_failure: st.last_task_failure,
                    ..AppStatus::default()
                };
            }
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            for (job, rev) in &finished {
                compares.push(Compare::mod_revision(
                    keys.job(&job.id),
                    CompareOp::Equal,
                    *rev,
                ));
                ops.push(TxnOp::delete(keys.job(&job.id), None));
                if let Some(t) = job.current_task() {
                    ops.push(TxnOp::delete(keys.task(&t), None));
                }
                let lost = job.message.as_deref().is_some_and(|m| m.contains("LOST"));
                if job.state == JobState::Failed {
                    st.last_task_failure = Some(task_failure(app_id, job, view));
                    let v = instance_of(&job.spec).map(|(_, v)| v).unwrap_or("");
                    if !lost && v == cfg {
                        st.failures += 1;
                        st.last_failure_at = Some(job.finished_at.unwrap_or(now));
                    }
                }
            }
            let skey = appstate_key(keys, app_id);
            if app.is_some() {
                compares.push(Compare::mod_revision(
                    skey.as_str(),
                    CompareOp::Equal,
                    st_rev,
                ));
                ops.push(TxnOp::put(
                    skey.as_str(),
                    serde_json::to_vec(&st).expect("appstate serializes"),
                    None,
                ));
            }
            if let Some(rev) = w.txn(compares, ops).await? {
                // This pass's launch decisions see the new count.
                states.insert(app_id.clone(), (st, rev));
                for (job, _) in &finished {
                    view.remove_job(&job.id);
                }
            }
        }
        let live: Vec<&(Job, i64)> = jobs.iter().filter(|(j, _)| !j.state.is_final()).collect();

        // 2. A deleted app: every live instance is killed.
        if app.is_none() {
            for (job, rev) in live {
                kill(&mut w, keys, view, job, *rev, "app deleted").await?;
            }
        }
    }

    // 3. Each app towards its target (apps without instances included).
    for (app_id, (app, _)) in &apps {
        let cfg = app.config_version();
        let jobs: Vec<(Job, i64)> = view
            .jobs
            .values()
            .filter(|(j, _)| !j.state.is_final())
            .filter(|(j, _)| instance_of(&j.spec).is_some_and(|(a, _)| a == app_id))
            .cloned()
            .collect();
        let live: Vec<Instance> = jobs
            .iter()
            .map(|(j, _)| {
                let rec = j.current_task().and_then(|t| view.tasks.get(&t));
                let running = j.state == JobState::Running
                    && rec.is_some_and(|t| t.status.state == TaskState::Running);
                // Marathon: with health checks an instance counts toward
                // minimumHealthCapacity once healthy.
                let ready = running
                    && (app.health_checks.is_empty()
                        || super::render::task_health(rec) == Some(HealthState::Healthy));
                Instance {
                    id: j.id.clone(),
                    current: instance_of(&j.spec).is_some_and(|(_, v)| v == cfg),
                    placed: matches!(j.state, JobState::Placed | JobState::Running),
                    ready,
                    since_ms: j.submitted_at.timestamp_millis(),
                }
            })
            .collect();
        let delayed = states.get(app_id).is_some_and(|(s, _)| {
            s.version == cfg
                && s.last_failure_at.is_some_and(|at| {
                    let d = decide::launch_delay(
                        s.failures,
                        app.backoff_seconds,
                        app.backoff_factor,
                        app.max_launch_delay_seconds,
                    );
                    now < at + chrono::Duration::from_std(d).unwrap_or_default()
                })
        });
        let target = Target {
            instances: app.instances,
            minimum_health_capacity: app.upgrade_strategy.minimum_health_capacity,
            maximum_over_capacity: app.upgrade_strategy.maximum_over_capacity,
            kill_selection: app.kill_selection(),
            delayed,
        };
        let step = decide::step(&target, &live);
        for id in &step.kill {
            if let Some((job, rev)) = jobs.iter().find(|(j, _)| &j.id == id) {
                kill(&mut w, keys, view, job, *rev, "killed by deployment").await?;
            }
        }
        if step.start > 0 {
            let mut spec = app.task_spec();
            creds.inject(app, created.get(app_id).copied().unwrap_or(0), &mut spec);
            start(&mut w, keys, view, app, spec, step.start, now).await?;
        }
        if step.done {
            done_apps.push(app_id.clone());
        }
    }

    // 4. Deployments that reached their target end (a stop: once no
    // instance is left).
    for (_, d, rev) in &deployments {
        let finished = match d.action {
            Action::StopApplication => {
                !apps.contains_key(&d.app)
                    && !view.jobs.values().any(|(j, _)| {
                        !j.state.is_final() && instance_of(&j.spec).is_some_and(|(a, _)| a == d.app)
                    })
            }
            _ => !apps.contains_key(&d.app) || done_apps.contains(&d.app),
        };
        if finished {
            let key = deployment_key(keys, &d.id);
            let cmp = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)];
            if w.txn(cmp, vec![TxnOp::delete(key, None)]).await?.is_some() {
                tracing::info!(deployment = %d.id, app = %d.app, "deployment finished");
            }
        }
    }
    Ok(())
}

/// Cancels one instance (its placement goes: the agent kills it).
async fn kill(
    w: &mut Writer<'_>,
    keys: &Keys,
    view: &mut View,
    job: &Job,
    rev: i64,
    why: &str,
) -> Result<(), String> {
    let mut next = job.clone();
    next.state = JobState::Cancelled;
    next.finished_at = Some(Utc::now());
    next.message = Some(why.into());
    let key = keys.job(&job.id);
    let mut ops = vec![TxnOp::put(
        key.as_str(),
        serde_json::to_vec(&next).expect("job serializes"),
        None,
    )];
    let mut gone = None;
    if let (Some(node), Some(task)) = (&job.node, job.current_task()) {
        if matches!(job.state, JobState::Placed | JobState::Running) {
            ops.push(TxnOp::delete(keys.placement(node, &task), None));
            gone = Some((node.clone(), task));
        }
    }
    let cmp = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)];
    if let Some(r) = w.txn(cmp, ops).await? {
        if let Some(p) = gone {
            view.placements.remove(&p);
        }
        view.set_job(next, r);
    }
    Ok(())
}

async fn start(
    w: &mut Writer<'_>,
    keys: &Keys,
    view: &mut View,
    app: &App,
    spec: gleaner_core::spec::TaskSpec,
    n: u32,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let queue = app.queue();
    let mut remaining = n as usize;
    while remaining > 0 {
        let batch = remaining.min(MAX_STARTS_PER_TXN);
        remaining -= batch;
        let jobs: Vec<Job> = (0..batch)
            .map(|_| Job {
                id: instance_job_id(&app.id),
                queue: queue.clone(),
                priority: 0,
                spec: spec.clone(),
                gang: None,
                max_retries: 0,
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
        // The app must still be this version: a change meanwhile decides
        // again next pass.
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for j in &jobs {
            let key = keys.job(&j.id);
            compares.push(Compare::version(key.as_str(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(
                key,
                serde_json::to_vec(j).expect("job serializes"),
                None,
            ));
        }
        if let Some(rev) = w.txn(compares, ops).await? {
            for j in jobs {
                view.set_job(j, rev);
            }
        }
    }
    Ok(())
}
