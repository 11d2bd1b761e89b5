//! The agent's etcd session: a full read of the node's attribute prefix,
//! then a watch from the next revision (no polling); the node's `info` key
//! under a lease (TTL 10 s) kept alive while the agent lives. Any failure
//! (etcd down, compacted revision, expired lease) ends the session; the
//! next one resyncs from scratch. etcd being away never drains a task: only
//! a successful read or a watch event changes attributes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::Mutex;

use super::attributes::Source;
use super::placements::{self, Event};
use super::Agent;
use crate::config::EtcdCredentials;
use gleaner_core::fleet::{Keys, NodeInfo, RoleCapacity};
use std::path::PathBuf;

/// TTL of the node's info key: it vanishes this long after the agent dies.
pub const INFO_TTL_S: i64 = 10;
const KEEPALIVE_EVERY: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Changes closer together than this are one info write.
const INFO_DEBOUNCE: Duration = Duration::from_millis(10);

/// Where this node's keys live, and the client of the current session.
pub struct EtcdLink {
    endpoints: Vec<String>,
    attr_prefix: String,
    info_key: String,
    /// Fleet mode: where the scheduler places work for this node.
    placements_prefix: String,
    pub(crate) keys: Keys,
    client: Mutex<Option<Client>>,
    node: String,
    credentials: Option<EtcdCredentials>,
    /// Where the lease of this data dir's last registration is kept: a
    /// restarted agent may take its own node id back at once.
    lease_file: PathBuf,
}

/// Why the agent cannot join the fleet at start.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Another live agent holds this node id (its info key is under a
    /// lease that is not ours).
    #[error("node id {node:?} is taken: {key} is held by another live agent (lease {lease:x}); stop that agent and wait {ttl} s for its lease to expire, or give this one another node_id")]
    Taken {
        node: String,
        key: String,
        lease: i64,
        ttl: i64,
    },
    /// etcd refused the credentials (wrong user or password, auth off
    /// while a user is configured, or no user while auth is on).
    #[error("etcd {endpoints}: {reason} (check etcd_username and etcd_password_file)")]
    Auth { endpoints: String, reason: String },
}

/// `localhost` becomes 127.0.0.1: the static binary has no NSS.
pub(crate) fn endpoint(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.replace("://localhost", "://127.0.0.1");
    match url.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => url,
    }
}

impl EtcdLink {
    pub fn new(
        endpoints: &[String],
        prefix: &str,
        node: &str,
        credentials: Option<EtcdCredentials>,
        lease_file: PathBuf,
    ) -> Self {
        let prefix = prefix.trim_end_matches('/');
        let keys = Keys::new(prefix);
        EtcdLink {
            endpoints: endpoints.iter().map(|e| endpoint(e)).collect(),
            attr_prefix: format!("{prefix}/nodes/{node}/attributes/"),
            info_key: keys.node_info(node),
            placements_prefix: keys.placements_prefix(node),
            keys,
            client: Mutex::new(None),
            node: node.to_owned(),
            credentials,
            lease_file,
        }
    }

    fn connect_options(&self) -> ConnectOptions {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        EtcdCredentials::apply(self.credentials.as_ref(), options)
    }

    /// The leases this data dir claimed the id with lately (newest last).
    fn own_leases(&self) -> Vec<i64> {
        std::fs::read_to_string(&self.lease_file)
            .map(|s| parse_leases(&s))
            .unwrap_or_default()
    }

    /// At start, when etcd answers: refuses a node id another live agent
    /// holds (a second agent with the same id would run every placement
    /// twice), and credentials etcd rejects. etcd unreachable: Ok, the
    /// session checks again when it is back.
    pub async fn check_node_id(&self) -> Result<(), RegisterError> {
        let probe = async {
            let mut client = Client::connect(&self.endpoints, Some(self.connect_options())).await?;
            client.get(self.info_key.as_str(), None).await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT * 2, probe).await {
            Ok(Ok(resp)) => match resp.kvs().first() {
                Some(kv) => self.held_by_other(kv.lease()),
                None => Ok(()),
            },
            Ok(Err(e)) if is_auth_error(&e) => Err(RegisterError::Auth {
                endpoints: self.endpoints.join(","),
                reason: e.to_string(),
            }),
            Ok(Err(e)) => {
                tracing::warn!("etcd at start: {e}; the node id is checked once etcd answers");
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    fn held_by_other(&self, lease: i64) -> Result<(), RegisterError> {
        // Lease 0: written by hand, no agent keeps it alive.
        if lease == 0 || self.own_leases().contains(&lease) {
            return Ok(());
        }
        Err(RegisterError::Taken {
            node: self.node.clone(),
            key: self.info_key.clone(),
            lease,
            ttl: INFO_TTL_S,
        })
    }

    /// Writes the info key under `lease` only if it is absent, ours, or
    /// under no lease: one transaction, so two agents starting at once
    /// cannot both take the id.
    async fn claim(&self, client: &mut Client, info: String, lease: i64) -> Result<(), String> {
        let key = self.info_key.as_str();
        let put = || TxnOp::put(key, info.clone(), Some(PutOptions::new().with_lease(lease)));
        // Remembered before the write: a put that etcd commits but whose
        // answer is lost (etcd dies at that moment) must not leave the id
        // looking taken by "another" agent at our next start.
        self.remember_lease(lease)?;
        for _ in 0..3 {
            let resp = client
                .txn(
                    Txn::new()
                        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                        .and_then([put()])
                        .or_else([TxnOp::get(key, None)]),
                )
                .await
                .map_err(|e| format!("claim {key}: {e}"))?;
            if resp.succeeded() {
                return Ok(());
            }
            let held = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| (kv.lease(), kv.mod_revision()))
                }
                _ => None,
            });
            let Some((held, rev)) = held else { continue };
            self.held_by_other(held).map_err(|e| e.to_string())?;
            let resp = client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                        .and_then([put()]),
                )
                .await
                .map_err(|e| format!("claim {key}: {e}"))?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        Err(format!(
            "claim {key}: it keeps changing under another writer"
        ))
    }

    fn remember_lease(&self, lease: i64) -> Result<(), String> {
        let leases = with_lease(self.own_leases(), lease);
        let text: Vec<String> = leases.iter().map(i64::to_string).collect();
        crate::fsutil::write_atomic(&self.lease_file, text.join(" ").as_bytes())
            .map_err(|e| format!("{}: {e}", self.lease_file.display()))
    }

    /// The current session's client, if etcd is reachable.
    pub(crate) async fn client(&self) -> Option<Client> {
        self.client.lock().await.clone()
    }

    pub fn attribute_key(&self, name: &str) -> String {
        format!("{}{name}", self.attr_prefix)
    }

    async fn connected(&self) -> Result<Client, String> {
        self.client
            .lock()
            .await
            .clone()
            .ok_or_else(|| "etcd is unreachable right now; try again".to_owned())
    }

    /// Writes an attribute through to etcd.
    pub async fn put_attribute(&self, name: &str, value: &str) -> Result<(), String> {
        let mut client = self.connected().await?;
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.put(self.attribute_key(name), value, None),
        )
        .await
        .map_err(|_| "etcd did not answer in time".to_owned())?
        .map_err(|e| format!("etcd: {e}"))?;
        Ok(())
    }

    pub async fn delete_attribute(&self, name: &str) -> Result<(), String> {
        let mut client = self.connected().await?;
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.delete(self.attribute_key(name), None),
        )
        .await
        .map_err(|_| "etcd did not answer in time".to_owned())?
        .map_err(|e| format!("etcd: {e}"))?;
        Ok(())
    }
}

/// Errors that retrying cannot fix: etcd said no to who we are.
fn is_auth_error(e: &etcd_client::Error) -> bool {
    match e {
        // gRPC codes 16 Unauthenticated, 7 PermissionDenied.
        etcd_client::Error::GRpcStatus(s) => {
            matches!(i32::from(s.code()), 7 | 16)
                || s.message().contains("authentication")
                || s.message().contains("user name is empty")
                || s.message().contains("permission denied")
        }
        _ => false,
    }
}

/// Keeps a session up for the agent's whole life.
pub(crate) async fn run(
    agent: Arc<Agent>,
    link: Arc<EtcdLink>,
    placed: tokio::sync::mpsc::UnboundedSender<Event>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut down_since: Option<Instant> = None;
    // One member per session, in turn: a client balanced over every
    // endpoint keeps sending part of its requests to a dead member (each
    // fails the session), so a cluster with one member down would flap.
    let mut turn = 0usize;
    let mut harvester = super::harvest::Harvester::new(&agent.node_id);
    loop {
        let n = link.endpoints.len().max(1);
        let member = link
            .endpoints
            .get(turn % n)
            .cloned()
            .into_iter()
            .collect::<Vec<_>>();
        turn += 1;
        let err = session(
            &agent,
            &link,
            &member,
            &placed,
            &mut down_since,
            &mut backoff,
            &mut harvester,
        )
        .await;
        *link.client.lock().await = None;
        if turn % n != 0 {
            // The next member at once; the backoff is per round.
            tracing::debug!("etcd member {member:?}: {err}; trying the next one");
            continue;
        }
        if down_since.is_none() {
            tracing::warn!(
                "etcd unreachable ({err}); keeping the last attributes, retrying with backoff"
            );
            down_since = Some(Instant::now());
        } else {
            tracing::debug!("etcd still unreachable: {err}");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One session; returns why it ended.
async fn session(
    agent: &Arc<Agent>,
    link: &EtcdLink,
    endpoints: &[String],
    placed: &tokio::sync::mpsc::UnboundedSender<Event>,
    down_since: &mut Option<Instant>,
    backoff: &mut Duration,
    harvester: &mut super::harvest::Harvester,
) -> String {
    let mut client = match Client::connect(endpoints, Some(link.connect_options())).await {
        Ok(c) => c,
        Err(e) => return format!("connect {endpoints:?}: {e}"),
    };
    // The node id first: nothing of a node another agent holds is read.
    let lease = match client.lease_grant(INFO_TTL_S, None).await {
        Ok(l) => l.id(),
        Err(e) => return format!("lease: {e}"),
    };
    if let Err(e) = link.claim(&mut client, info_doc(agent), lease).await {
        // Not registered, no placements read: this agent runs nothing
        // new until the id is free.
        tracing::error!("{e}");
        let _ = client.lease_revoke(lease).await;
        return e;
    }
    // Resync: everything under the prefix, at one revision.
    let snapshot = match client
        .get(
            link.attr_prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return format!("read {}: {e}", link.attr_prefix),
    };
    let revision = snapshot.header().map(|h| h.revision()).unwrap_or(0);
    let mut values = BTreeMap::new();
    for kv in snapshot.kvs() {
        if let Some((name, value)) =
            attribute_of(&link.attr_prefix, kv.key_str().ok(), kv.value_str().ok())
        {
            values.insert(name, value);
        }
    }
    agent.apply_etcd_snapshot(values);
    // Fleet mode: every placement for this node, then a watch from there.
    let placements = match client
        .get(
            link.placements_prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return format!("read {}: {e}", link.placements_prefix),
    };
    let placements_rev = placements.header().map(|h| h.revision()).unwrap_or(0);
    let all = placements
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = kv.key_str().ok()?;
            let id = placements::task_id_of(&link.placements_prefix, key)?;
            Some((id, placements::parse(key, kv.value())))
        })
        .collect();
    let _ = placed.send(Event::Snapshot(all));
    if let Some(since) = down_since.take() {
        tracing::info!(
            "etcd reachable again after {:.1}s; attributes resynced",
            since.elapsed().as_secs_f64()
        );
    }
    *backoff = Duration::from_millis(100);
    *link.client.lock().await = Some(client.clone());
    // The outbox goes out now, not at the publisher's next sweep.
    agent.touched();

    let mut last_info = None;
    if let Err(e) = put_info(&mut client, link, agent, lease, &mut last_info, true).await {
        return e;
    }
    let (mut keeper, mut keepalives) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return format!("keep-alive: {e}"),
    };
    let watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = match client.watch(link.attr_prefix.as_str(), Some(watch)).await {
        Ok(w) => w,
        Err(e) => return format!("watch: {e}"),
    };
    let placement_watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(placements_rev + 1);
    let mut placement_watch = match client
        .watch(link.placements_prefix.as_str(), Some(placement_watch))
        .await
    {
        Ok(stream) => stream,
        Err(e) => return format!("watch: {e}"),
    };
    let mut changes = agent.subscribe_changes();
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    let mut harvest_tick = tokio::time::interval(super::harvest::SAMPLE_EVERY);
    harvester.rewrite_soon();
    loop {
        tokio::select! {
            msg = placement_watch.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return "placement watch closed".into(),
                    Err(e) => return format!("placement watch: {e}"),
                };
                if resp.canceled() {
                    return format!("placement watch canceled ({}; compacted at {})", resp.cancel_reason(), resp.compact_revision());
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Some(key) = kv.key_str().ok() else { continue };
                    let Some(id) = placements::task_id_of(&link.placements_prefix, key) else { continue };
                    let _ = placed.send(match ev.event_type() {
                        EventType::Put => Event::Put(id, placements::parse(key, kv.value())),
                        EventType::Delete => Event::Delete(id),
                    });
                }
            }
            r = changes.changed() => {
                if r.is_err() {
                    return "agent stopped".into();
                }
                // Debounced: a burst of changes is one write.
                tokio::time::sleep(INFO_DEBOUNCE).await;
                changes.borrow_and_update();
                if let Err(e) = put_info(&mut client, link, agent, lease, &mut last_info, false).await {
                    return e;
                }
            }
            msg = watch.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return "watch closed".into(),
                    Err(e) => return format!("watch: {e}"),
                };
                if resp.canceled() {
                    return format!("watch canceled ({}; compacted at {})", resp.cancel_reason(), resp.compact_revision());
                }
                let mut changes = Vec::new();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let value = (ev.event_type() == EventType::Put).then(|| kv.value_str().ok()).flatten();
                    match (ev.event_type(), attribute_of(&link.attr_prefix, kv.key_str().ok(), value.or(Some("")))) {
                        (EventType::Put, Some((name, value))) => changes.push((name, Some(value))),
                        (EventType::Delete, Some((name, _))) => changes.push((name, None)),
                        _ => {}
                    }
                }
                if !changes.is_empty() {
                    agent.apply_etcd_changes(changes);
                }
            }
            _ = tick.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    return format!("keep-alive: {e}");
                }
                if let Err(e) = put_info(&mut client, link, agent, lease, &mut last_info, true).await {
                    return e;
                }
            }
            _ = harvest_tick.tick() => {
                if let Some(ring) = harvester.tick(agent, Instant::now()) {
                    let key = gleaner_core::harvest::key(&link.keys, &agent.node_id);
                    if let Err(e) = client.put(key.as_str(), ring, Some(PutOptions::new().with_lease(lease))).await {
                        return format!("write {key}: {e}");
                    }
                }
            }
            ka = keepalives.message() => {
                match ka {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return "lease expired".into(),
                    Ok(None) => return "keep-alive stream closed".into(),
                    Err(e) => return format!("keep-alive: {e}"),
                }
            }
        }
    }
}

/// Writes the node's info when it changed (or `always`, which refreshes
/// `reported_at`).
async fn put_info(
    client: &mut Client,
    link: &EtcdLink,
    agent: &Agent,
    lease: i64,
    last: &mut Option<NodeInfo>,
    always: bool,
) -> Result<(), String> {
    let mut info = agent.node_info();
    if let Some(prev) = last.as_ref() {
        let mut same = info.clone();
        same.reported_at = prev.reported_at;
        if !always && &same == prev {
            return Ok(());
        }
    }
    *last = Some(info.clone());
    info.reported_at = chrono::Utc::now();
    let info = info_json(agent, &info);
    client
        .put(
            link.info_key.as_str(),
            info,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("write {}: {e}", link.info_key))
}

/// The fleet's NodeInfo over SPEC.md's `/v1/state` shape: one document
/// that both the scheduler and `gleaner nodes` read.
fn info_json(agent: &Agent, info: &NodeInfo) -> String {
    let mut doc = serde_json::to_value(agent.node_state()).unwrap_or_default();
    if let (Some(doc), serde_json::Value::Object(fleet)) = (
        doc.as_object_mut(),
        serde_json::to_value(info).unwrap_or_default(),
    ) {
        doc.extend(fleet);
    }
    doc.to_string()
}

fn info_doc(agent: &Agent) -> String {
    info_json(agent, &agent.node_info())
}

/// The attribute a key under the prefix stands for; names that are not
/// valid attribute names (nested keys, odd characters) are ignored.
fn attribute_of(prefix: &str, key: Option<&str>, value: Option<&str>) -> Option<(String, String)> {
    let name = key?.strip_prefix(prefix)?;
    crate::spec::check_name("attribute", name).ok()?;
    Some((name.to_owned(), value?.to_owned()))
}

impl Agent {
    /// What the scheduler needs of this node (`nodes/<node>/info`).
    pub(crate) fn node_info(&self) -> NodeInfo {
        let res = |a: crate::scheduler::Amount| crate::spec::Resources {
            cpus: a.cpus,
            mem_mb: a.mem_mb,
            disk_mb: a.disk_mb,
        };
        let roles = self
            .reservations()
            .into_iter()
            .map(|(role, u)| {
                (
                    role,
                    RoleCapacity {
                        reserved: res(u.reserved),
                        allocated: res(u.allocated),
                    },
                )
            })
            .collect();
        let listen = self.cfg.listen.replace("localhost:", "127.0.0.1:");
        let address = listen
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_owned())
            .unwrap_or_default();
        NodeInfo {
            node: self.node_id.clone(),
            address,
            agent_url: format!("http://{listen}"),
            version: super::VERSION.to_owned(),
            roles,
            attributes: self.attributes(),
            port_ranges: vec![self.cfg.port_range],
            reported_at: chrono::Utc::now(),
        }
    }

    fn apply_etcd_snapshot(self: &Arc<Self>, values: BTreeMap<String, String>) {
        let changed = self.attributes.lock().unwrap().replace_etcd(values);
        match changed {
            Ok(true) => self.attributes_changed(),
            Ok(false) => {}
            Err(e) => tracing::error!("persist attributes: {e}"),
        }
    }

    fn apply_etcd_changes(self: &Arc<Self>, changes: Vec<(String, Option<String>)>) {
        let mut changed = false;
        {
            let mut attrs = self.attributes.lock().unwrap();
            for (name, value) in changes {
                let r = match value {
                    Some(v) => attrs.set(&name, &v, Source::Etcd),
                    None => attrs.remove(&name),
                };
                match r {
                    Ok(c) => changed |= c,
                    Err(e) => tracing::error!("persist attributes: {e}"),
                }
            }
        }
        if changed {
            self.attributes_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_avoid_name_lookups() {
        assert_eq!(endpoint("http://localhost:2379/"), "http://127.0.0.1:2379");
        assert_eq!(endpoint("localhost:2379"), "127.0.0.1:2379");
        assert_eq!(endpoint("10.1.2.3:2379"), "10.1.2.3:2379");
    }

    #[test]
    fn keys_map_to_attribute_names() {
        let p = "/gleaner/nodes/h1/attributes/";
        assert_eq!(
            attribute_of(p, Some("/gleaner/nodes/h1/attributes/ssd"), Some("true")),
            Some(("ssd".into(), "true".into()))
        );
        assert_eq!(
            attribute_of(p, Some("/gleaner/nodes/h1/attributes/a/b"), Some("x")),
            None
        );
        assert_eq!(
            attribute_of(p, Some("/gleaner/nodes/h2/attributes/ssd"), Some("x")),
            None
        );
    }
}

/// How many of its latest leases a data dir remembers: the info key may be
/// under any lease granted since the last acknowledged claim.
const LEASES_KEPT: usize = 4;

fn parse_leases(text: &str) -> Vec<i64> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// `leases` with `lease` added last, the oldest dropped past LEASES_KEPT.
fn with_lease(mut leases: Vec<i64>, lease: i64) -> Vec<i64> {
    leases.retain(|&l| l != lease);
    leases.push(lease);
    let excess = leases.len().saturating_sub(LEASES_KEPT);
    leases.drain(..excess);
    leases
}

#[cfg(test)]
mod lease_file_tests {
    use super::*;

    #[test]
    fn the_lease_file_keeps_the_latest_few_and_reads_the_old_format() {
        assert_eq!(parse_leases("42\n"), vec![42]);
        assert_eq!(parse_leases("1 2 x 3"), vec![1, 2, 3]);
        assert_eq!(with_lease(vec![], 7), vec![7]);
        assert_eq!(with_lease(vec![1, 2, 3, 4], 5), vec![2, 3, 4, 5]);
        assert_eq!(with_lease(vec![1, 2, 3], 2), vec![1, 3, 2]);
    }
}
