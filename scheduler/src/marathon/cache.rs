//! Every replica's read cache of what the Marathon endpoints render: apps,
//! deployments, app states, instance jobs and their task records, built
//! from one read of the prefix and kept by a watch. It is a cache of etcd,
//! never a source of truth: writes still go to etcd as guarded
//! transactions, and a read first asks etcd for its current revision and
//! waits until the cache has applied it (so a client reads its own writes,
//! on any replica). A cache that cannot catch up in time (watch broken,
//! etcd reconnecting, or writes outside the prefix moved the revision) is
//! bypassed: that request reads etcd directly.
//!
//! Only events move the cache's revision (their own mod revisions).
//! Progress reports do not: etcd before 3.4.26 / 3.5.8 may send one ahead of events it has not
//! delivered yet (etcd issue 15220; Debian ships 3.4.23), and trusting
//! them served reads that missed the client's own write.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use gleaner_core::fleet::{parse_task_id, Job, Keys, TaskRecord};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::model::{instance_of, App};
use super::state::{appstate_prefix, deployments_prefix, AppStatus, Deployment};
use crate::api::{ApiError, AppState};
use crate::store::{self, StoreError};

/// How long a read waits for the watch to reach etcd's revision before it
/// reads etcd itself.
const CATCH_UP: Duration = Duration::from_millis(1000);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the Marathon endpoints read, at one etcd revision.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// app id → (app, mod revision)
    pub apps: BTreeMap<String, (App, i64)>,
    /// app id → create revision of its key: an app deleted and created
    /// again is a new app (its instances' tokens end with the old one).
    pub created: HashMap<String, i64>,
    /// deployment id → (deployment, mod revision)
    pub deployments: BTreeMap<String, (Deployment, i64)>,
    pub states: HashMap<String, AppStatus>,
    /// app id → job id → (instance job, mod revision)
    pub jobs: BTreeMap<String, BTreeMap<String, (Job, i64)>>,
    /// job id → app id, for deletes.
    job_app: HashMap<String, String>,
    /// Task records of instance jobs, by task id.
    pub tasks: HashMap<String, TaskRecord>,
    /// The etcd revision this data reflects.
    pub revision: i64,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%key, error = %e, "skipping undecodable value");
            None
        }
    }
}

impl Data {
    /// Applies one key's new value (pure: no I/O).
    pub fn put(&mut self, keys: &Keys, key: &str, value: &[u8], rev: i64, created: i64) {
        if let Some(id) = super::state::app_id_of_key(keys, key) {
            if let Some(a) = decode::<App>(key, value) {
                self.created.insert(a.id.clone(), created);
                self.apps.insert(a.id.clone(), (a, rev));
            } else {
                self.remove_app(&id);
            }
        } else if let Some(id) = keys.leaf(key, &deployments_prefix(keys)) {
            if let Some(d) = decode::<Deployment>(key, value) {
                self.deployments.insert(id.to_owned(), (d, rev));
            }
        } else if let Some(rest) = key.strip_prefix(&appstate_prefix(keys)) {
            if let Some(s) = decode::<AppStatus>(key, value) {
                self.states.insert(format!("/{rest}"), s);
            }
        } else if let Some(id) = keys.leaf(key, &keys.jobs_prefix()) {
            // Most jobs are not instances: not decoded at all (a job's
            // env holds `MARATHON_APP_ID` as a JSON key when it is one).
            if !contains(value, br#""MARATHON_APP_ID""#) {
                self.delete(keys, key);
                return;
            }
            let Some(job) = decode::<Job>(key, value) else {
                return;
            };
            let Some((app, _)) = instance_of(&job.spec) else {
                return;
            };
            let app = app.to_owned();
            self.job_app.insert(id.to_owned(), app.clone());
            self.jobs
                .entry(app)
                .or_default()
                .insert(id.to_owned(), (job, rev));
        } else if let Some(id) = keys.leaf(key, &keys.tasks_prefix()) {
            // Only instances' records: the fleet's other tasks are not ours.
            let ours = parse_task_id(id).is_some_and(|(job, _)| self.job_app.contains_key(job));
            if ours {
                if let Some(r) = decode::<TaskRecord>(key, value) {
                    self.tasks.insert(id.to_owned(), r);
                }
            }
        }
    }

    pub fn delete(&mut self, keys: &Keys, key: &str) {
        if let Some(id) = super::state::app_id_of_key(keys, key) {
            self.remove_app(&id);
        } else if let Some(id) = keys.leaf(key, &deployments_prefix(keys)) {
            self.deployments.remove(id);
        } else if let Some(rest) = key.strip_prefix(&appstate_prefix(keys)) {
            self.states.remove(&format!("/{rest}"));
        } else if let Some(id) = keys.leaf(key, &keys.jobs_prefix()) {
            if let Some(app) = self.job_app.remove(id) {
                if let Some(m) = self.jobs.get_mut(&app) {
                    m.remove(id);
                    if m.is_empty() {
                        self.jobs.remove(&app);
                    }
                }
            }
        } else if let Some(id) = keys.leaf(key, &keys.tasks_prefix()) {
            self.tasks.remove(id);
        }
    }

    fn remove_app(&mut self, id: &str) {
        self.apps.remove(id);
        self.created.remove(id);
    }

    /// One read of the whole prefix at one revision, in pages.
    pub async fn load(client: &mut Client, keys: &Keys) -> Result<Data, etcd_client::Error> {
        let root = format!("{}/", keys.prefix);
        let mut d = Data::default();
        // Keys come sorted: `jobs/` before `tasks/`, as `put` needs.
        d.revision = store::for_each_in_prefix(client, &root, |kv| {
            if let Ok(key) = kv.key_str() {
                d.put(
                    keys,
                    key,
                    kv.value(),
                    kv.mod_revision(),
                    kv.create_revision(),
                );
            }
        })
        .await?;
        Ok(d)
    }
}

/// The cache: the latest [`Data`] (replaced copy-on-write, so a reader
/// renders from an `Arc` without holding any lock) and its revision.
pub struct Cache {
    data: RwLock<Arc<Data>>,
    revision: watch::Sender<i64>,
    /// Set while the watch runs; unset while it reconnects.
    live: AtomicBool,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            data: RwLock::new(Arc::new(Data::default())),
            revision: watch::channel(0).0,
            live: AtomicBool::new(false),
        }
    }
}

impl Cache {
    pub fn current(&self) -> Arc<Data> {
        self.data.read().expect("cache lock").clone()
    }

    fn replace(&self, d: Data) {
        let rev = d.revision;
        *self.data.write().expect("cache lock") = Arc::new(d);
        self.revision.send_replace(rev);
    }

    /// Data at least as new as etcd's revision at the time of the call.
    pub async fn read(&self, st: &AppState) -> Result<Arc<Data>, ApiError> {
        let want = current_revision(st).await?;
        if self.live.load(Ordering::Relaxed) {
            if *self.revision.borrow() >= want {
                return Ok(self.current());
            }
            let mut rx = self.revision.subscribe();
            if let Ok(Ok(_)) = tokio::time::timeout(CATCH_UP, rx.wait_for(|r| *r >= want)).await {
                return Ok(self.current());
            }
            tracing::warn!(want, "marathon cache behind etcd; reading etcd directly");
        }
        let mut client = st.store.client().await?;
        match Data::load(&mut client, &st.keys).await {
            Ok(d) => Ok(Arc::new(d)),
            Err(e) => {
                st.store.reset().await;
                Err(st.store.unavailable(e).into())
            }
        }
    }

    /// Keeps the cache until `stop` turns true: load, watch, and on any
    /// failure start over.
    pub async fn run(
        self: Arc<Self>,
        endpoints: Vec<String>,
        credentials: Option<store::EtcdCredentials>,
        keys: Keys,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let r = tokio::select! {
                r = self.follow(&endpoints, credentials.as_ref(), &keys) => r,
                _ = stop.changed() => return,
            };
            self.live.store(false, Ordering::Relaxed);
            if let Err(e) = r {
                tracing::warn!(error = %e, "marathon cache: watch ended; reloading");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn follow(
        &self,
        endpoints: &[String],
        credentials: Option<&store::EtcdCredentials>,
        keys: &Keys,
    ) -> Result<(), String> {
        let e = |e: etcd_client::Error| e.to_string();
        let mut client = store::connect(endpoints, credentials, Some(store::REQUEST_TIMEOUT))
            .await
            .map_err(|e: StoreError| e.to_string())?;
        let data = Data::load(&mut client, keys).await.map_err(e)?;
        let start = data.revision + 1;
        self.replace(data);
        let root = format!("{}/", keys.prefix);
        // The watch's client has no request timeout: it lives for ever.
        let watch_client = store::connect(endpoints, credentials, None)
            .await
            .map_err(|e: StoreError| e.to_string())?;
        // Fragmented, as the leader's: a backlog after a burst comes in
        // pieces, not one message over the client's limit.
        let mut watcher = watch_client
            .watch_client()
            .max_decoding_message_size(store::MAX_MESSAGE);
        let mut stream = watcher
            .watch(
                root.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_fragment()
                        .with_start_revision(start),
                ),
            )
            .await
            .map_err(e)?;
        self.live.store(true, Ordering::Relaxed);
        loop {
            let resp = stream.message().await.map_err(e)?.ok_or("watch ended")?;
            if resp.canceled() {
                return Err(format!("watch cancelled: {}", resp.cancel_reason()));
            }
            if resp.events().is_empty() {
                continue;
            }
            // The events' own revision, not the header's: a watch catching
            // up sends at most 1,000 revisions a response, each headed with
            // the current revision.
            let rev = resp
                .events()
                .iter()
                .filter_map(|ev| ev.kv().map(|kv| kv.mod_revision()))
                .max()
                .unwrap_or(0);
            {
                let mut guard = self.data.write().expect("cache lock");
                // Copies only when a reader still holds the old data.
                let d = Arc::make_mut(&mut guard);
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match ev.event_type() {
                        EventType::Put => d.put(
                            keys,
                            key,
                            kv.value(),
                            kv.mod_revision(),
                            kv.create_revision(),
                        ),
                        EventType::Delete => d.delete(keys, key),
                    }
                }
                d.revision = d.revision.max(rev);
            }
            if rev > *self.revision.borrow() {
                self.revision.send_replace(rev);
            }
        }
    }
}

/// etcd's current revision: the header of a read of one absent key.
async fn current_revision(st: &AppState) -> Result<i64, ApiError> {
    let mut client = st.store.client().await?;
    let probe = format!("{}/\u{0}revision", st.keys.prefix);
    match client
        .get(probe, Some(GetOptions::new().with_count_only()))
        .await
    {
        Ok(r) => Ok(r.header().map(|h| h.revision()).unwrap_or(0)),
        Err(e) => {
            st.store.reset().await;
            Err(st.store.unavailable(e).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(id: &str, app: &str) -> Vec<u8> {
        let mut spec = json!({"cmd": "sleep 1", "resources": {"cpus": 0.1, "mem_mb": 16}});
        spec["env"] = json!({"MARATHON_APP_ID": app, "MARATHON_APP_VERSION": "v1"});
        serde_json::to_vec(&json!({
            "id": id, "queue": "marathon", "priority": 0, "spec": spec,
            "max_retries": 0, "submitted_at": "2026-01-01T00:00:00Z", "state": "QUEUED",
        }))
        .unwrap()
    }

    #[test]
    fn follows_puts_and_deletes_of_every_kind() {
        let k = Keys::new("/g");
        let mut d = Data::default();
        d.put(
            &k,
            "/g/apps/a/web",
            br#"{"id": "/a/web", "cmd": "x"}"#,
            5,
            5,
        );
        d.put(
            &k,
            "/g/apps/a/web",
            br#"{"id": "/a/web", "cmd": "y"}"#,
            6,
            5,
        );
        assert_eq!(d.apps["/a/web"].0.cmd.as_deref(), Some("y"));
        assert_eq!((d.apps["/a/web"].1, d.created["/a/web"]), (6, 5));
        d.put(&k, "/g/jobs/a_web_1", &job("a_web_1", "/a/web"), 7, 7);
        // A plain fleet job is not an instance: not kept.
        let mut plain: serde_json::Value = serde_json::from_slice(&job("j", "/x")).unwrap();
        plain["spec"]["env"] = json!({});
        d.put(&k, "/g/jobs/j", &serde_json::to_vec(&plain).unwrap(), 8, 8);
        assert_eq!(d.jobs.len(), 1);
        assert_eq!(d.jobs["/a/web"].len(), 1);
        let rec = json!({
            "id": "a_web_1.0", "role": "batch", "state": "RUNNING", "reason": null,
            "exit_code": null, "signal": null, "pid": null, "cgroup": null, "sandbox": null,
            "resources": {"cpus": 1, "mem_mb": 64}, "submitted_at": "2026-11-22T10:00:00Z",
            "started_at": null, "finished_at": null, "restarts": 0, "node": "n1"
        });
        let rec = serde_json::to_vec(&rec).unwrap();
        d.put(&k, "/g/tasks/a_web_1.0", &rec, 9, 9);
        d.put(&k, "/g/tasks/j.0", &rec, 9, 9);
        assert_eq!(d.tasks.len(), 1, "only instances' records");
        d.put(
            &k,
            "/g/deployments/d1",
            br#"{"id": "d1", "version": "v", "app": "/a/web", "action": "StartApplication"}"#,
            10,
            10,
        );
        d.put(&k, "/g/appstate/a/web", br#"{"failures": 2}"#, 11, 11);
        assert_eq!(d.states["/a/web"].failures, 2);
        assert_eq!(d.deployments.len(), 1);
        // An undecodable value is skipped, not fatal.
        d.put(&k, "/g/deployments/d2", b"nope", 12, 12);
        assert_eq!(d.deployments.len(), 1);
        d.delete(&k, "/g/jobs/a_web_1");
        assert!(d.jobs.is_empty());
        d.delete(&k, "/g/tasks/a_web_1.0");
        assert!(d.tasks.is_empty());
        d.delete(&k, "/g/deployments/d1");
        d.delete(&k, "/g/appstate/a/web");
        d.delete(&k, "/g/apps/a/web");
        assert!(d.apps.is_empty() && d.created.is_empty());
        assert!(d.deployments.is_empty() && d.states.is_empty());
        // Keys of other prefixes are ignored.
        d.put(&k, "/g/nodes/n1/info", b"{}", 13, 13);
        d.put(&k, "/other/apps/x", br#"{"id": "/x", "cmd": "x"}"#, 14, 14);
        assert!(d.apps.is_empty());
    }
}
