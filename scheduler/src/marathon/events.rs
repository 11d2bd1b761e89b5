//! `GET /v2/events`: Marathon's event bus as Server-Sent Events, served by
//! any replica from an etcd watch (no state of its own): attach first,
//! then `status_update_event` for app instances' task records,
//! `deployment_info` / `deployment_success` for deployments created and
//! finished, `api_post_event` for app definitions written.
//! `?event_type=` (repeatable) keeps only those types.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use etcd_client::{EventType, WatchOptions, WatchStream};
use gleaner_core::fleet::{parse_task_id, Job, TaskRecord};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};

use super::api::MError;
use super::model::{instance_of, timestamp, App};
use super::render::{render_task, task_health};
use super::state::{deployments_prefix, Deployment};
use crate::api::AppState;
use gleaner_core::health::HealthState;

struct Feed {
    st: AppState,
    stream: WatchStream,
    /// job id → the job (for task records' app and version).
    jobs: HashMap<String, Job>,
    pending: Vec<(String, Value)>,
    wanted: Vec<String>,
}

fn ev(kind: &str, mut body: Value) -> (String, Value) {
    body["eventType"] = json!(kind);
    body["timestamp"] = json!(timestamp(Utc::now()));
    (kind.to_owned(), body)
}

impl Feed {
    fn on_put(&mut self, key: &str, value: &[u8], prev: Option<&[u8]>) {
        let k = &self.st.keys;
        if let Some(id) = k.leaf(key, &k.jobs_prefix()) {
            if let Ok(j) = serde_json::from_slice::<Job>(value) {
                if instance_of(&j.spec).is_some() {
                    self.jobs.insert(id.to_owned(), j);
                }
            }
        } else if k.leaf(key, &k.tasks_prefix()).is_some() {
            let Ok(rec) = serde_json::from_slice::<TaskRecord>(value) else {
                return;
            };
            let Some(job) = parse_task_id(&rec.status.id).and_then(|(j, _)| self.jobs.get(j))
            else {
                return;
            };
            let t = render_task(job, Some(&rec));
            let before = prev.and_then(|p| serde_json::from_slice::<TaskRecord>(p).ok());
            // A record rewritten for its health alone is no status update.
            if before.as_ref().map(|b| b.status.state) != Some(rec.status.state) {
                self.pending.push(ev(
                    "status_update_event",
                    json!({
                        "slaveId": rec.node, "taskId": rec.status.id, "taskStatus": t["state"],
                        "message": rec.status.message.clone().unwrap_or_default(),
                        "appId": t["appId"], "host": rec.node, "ipAddresses": [], "ports": [],
                        "version": t["version"],
                    }),
                ));
            }
            let alive = |r: Option<&TaskRecord>| match task_health(r) {
                Some(HealthState::Healthy) => Some(true),
                Some(HealthState::Unhealthy) => Some(false),
                _ => None,
            };
            if let Some(now) = alive(Some(&rec)) {
                if alive(before.as_ref()) != Some(now) {
                    self.pending.push(ev(
                        "health_status_changed_event",
                        json!({
                            "appId": t["appId"], "taskId": rec.status.id,
                            "instanceId": rec.status.id, "version": t["version"],
                            "alive": now,
                        }),
                    ));
                }
            }
        } else if key.starts_with(&deployments_prefix(k)) {
            if prev.is_none() {
                if let Ok(d) = serde_json::from_slice::<Deployment>(value) {
                    let plan = d.render();
                    self.pending.push(ev(
                        "deployment_info",
                        json!({"plan": plan, "currentStep": plan["steps"][0]}),
                    ));
                }
            }
        } else if key.starts_with(&k.apps_prefix()) {
            if let Ok(a) = serde_json::from_slice::<App>(value) {
                let uri = format!("/v2/apps{}", a.id);
                self.pending.push(ev(
                    "api_post_event",
                    json!({"clientIp": null, "uri": uri, "appDefinition": a}),
                ));
            }
        }
    }

    fn on_delete(&mut self, key: &str, prev: Option<&[u8]>) {
        let k = &self.st.keys;
        if let Some(id) = k.leaf(key, &k.jobs_prefix()) {
            self.jobs.remove(id);
        } else if key.starts_with(&deployments_prefix(k)) {
            if let Some(d) = prev.and_then(|p| serde_json::from_slice::<Deployment>(p).ok()) {
                self.pending.push(ev(
                    "deployment_success",
                    json!({"id": d.id, "plan": d.render()}),
                ));
            }
        }
    }

    /// Reads the watch as fast as etcd sends and hands the events to the
    /// subscriber's outbox. Unread watch data holds the flow-control window
    /// of the etcd connection the API shares, so a subscriber that does not
    /// read must never hold the watch back: one too far behind is dropped
    /// (its queued events freed) instead. Ends when the subscriber is gone.
    async fn pump(mut self, out: Arc<Outbox>, mut gone: oneshot::Receiver<()>) {
        loop {
            for (kind, body) in std::mem::take(&mut self.pending) {
                // The attach event comes first whatever the filter.
                if !(self.wanted.is_empty()
                    || self.wanted.contains(&kind)
                    || kind == "event_stream_attached")
                {
                    continue;
                }
                let data = body.to_string();
                let size = data.len();
                if !out.push(Event::default().event(kind).data(data), size) {
                    return;
                }
            }
            let msg = tokio::select! {
                m = self.stream.message() => m,
                _ = &mut gone => return,
            };
            let Ok(Some(resp)) = msg else {
                out.close();
                return;
            };
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                let prev = e.prev_kv().map(|p| p.value());
                match e.event_type() {
                    EventType::Put => self.on_put(key, kv.value(), prev),
                    EventType::Delete => self.on_delete(key, prev),
                }
            }
        }
    }
}

/// Most bytes of events a subscriber may leave unread before it is dropped.
pub const MAX_UNREAD_BYTES: usize = 8 << 20;

/// Events waiting for one subscriber.
#[derive(Default)]
struct Outbox {
    inner: Mutex<Queued>,
    ready: Notify,
}

#[derive(Default)]
struct Queued {
    events: VecDeque<(Event, usize)>,
    bytes: usize,
    closed: bool,
}

impl Outbox {
    /// `false`: the subscriber is dropped (too far behind, or gone).
    fn push(&self, e: Event, size: usize) -> bool {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed {
            return false;
        }
        if q.bytes + size > MAX_UNREAD_BYTES {
            tracing::warn!(
                unread = q.bytes,
                "dropping an event subscriber that does not read"
            );
            q.events.clear();
            q.bytes = 0;
            q.closed = true;
            drop(q);
            self.ready.notify_one();
            return false;
        }
        q.events.push_back((e, size));
        q.bytes += size;
        drop(q);
        self.ready.notify_one();
        true
    }

    fn close(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_one();
    }

    async fn next(&self) -> Option<Event> {
        loop {
            {
                let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((e, size)) = q.events.pop_front() {
                    q.bytes -= size;
                    return Some(e);
                }
                if q.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }
}

pub async fn events(
    State(st): State<AppState>,
    Query(q): Query<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, MError> {
    // Each subscriber holds an etcd watch and a pump: their number is
    // capped (`max_event_streams`); the permit lives as long as the stream.
    let Ok(permit) = st.event_streams.clone().try_acquire_owned() else {
        let mut r = MError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many event stream subscribers (max_event_streams = {}); retry later",
                st.max_event_streams
            ),
        )
        .into_response();
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return Ok(r);
    };
    let wanted: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "event_type")
        .map(|(_, v)| v.clone())
        .collect();
    let jobs: Vec<(String, Job, i64)> = st.store.list(&st.keys.jobs_prefix()).await?;
    let mut client = st.store.client().await?;
    let root = format!("{}/", st.keys.prefix);
    let stream = match client
        .watch(
            root.as_str(),
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
    {
        Ok(w) => w,
        Err(e) => {
            st.store.reset().await;
            return Err(st.store.unavailable(e).into());
        }
    };
    let attached = ev(
        "event_stream_attached",
        json!({"remoteAddress": headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()}),
    );
    let feed = Feed {
        st,
        stream,
        jobs: jobs
            .into_iter()
            .filter(|(_, j, _)| instance_of(&j.spec).is_some())
            .map(|(_, j, _)| (j.id.clone(), j))
            .collect(),
        pending: vec![attached],
        wanted,
    };
    let out = Arc::new(Outbox::default());
    // Dropped with the response: the pump (and its watch) ends.
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    tokio::spawn(feed.pump(out.clone(), gone_rx));
    let stream =
        futures_util::stream::unfold((out, gone_tx, permit), |(out, gone, permit)| async move {
            let e = out.next().await?;
            Some((Ok::<_, Infallible>(e), (out, gone, permit)))
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
