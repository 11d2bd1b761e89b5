//! Reading the fleet from etcd for `gleaner nodes`: every node's live
//! `info` (present while its agent keeps the lease) and its attributes.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::config::EtcdCredentials;

#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node: String,
    pub cpus: String,
    pub mem_mb: String,
    pub running: u64,
    pub queued: u64,
    /// From the info key's modification, as the node reported it.
    pub last_seen: String,
    /// `k=v,...`
    pub attributes: String,
}

pub fn list(
    endpoints: &[String],
    prefix: &str,
    credentials: Option<&EtcdCredentials>,
) -> Result<Vec<NodeRow>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(read(endpoints, prefix, credentials))
}

async fn read(
    endpoints: &[String],
    prefix: &str,
    credentials: Option<&EtcdCredentials>,
) -> Result<Vec<NodeRow>, String> {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| crate::runtime::etcd::endpoint(e))
        .collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    let options = EtcdCredentials::apply(credentials, options);
    let mut client = Client::connect(&endpoints, Some(options))
        .await
        .map_err(|e| e.to_string())?;
    let root = format!("{}/nodes/", prefix.trim_end_matches('/'));
    let resp = client
        .get(root.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let mut infos: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut attrs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for kv in resp.kvs() {
        let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
            continue;
        };
        let Some(rest) = key.strip_prefix(&root) else {
            continue;
        };
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(node), Some("info"), None) => {
                infos.insert(
                    node.to_owned(),
                    serde_json::from_str(value).unwrap_or_default(),
                );
            }
            (Some(node), Some("attributes"), Some(name)) => {
                attrs
                    .entry(node.to_owned())
                    .or_default()
                    .insert(name.to_owned(), value.to_owned());
            }
            _ => {}
        }
    }
    let mut nodes: Vec<String> = infos.keys().chain(attrs.keys()).cloned().collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes
        .into_iter()
        .map(|node| {
            let info = infos.get(&node);
            let num = |v: Option<&serde_json::Value>| {
                v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
            };
            NodeRow {
                cpus: num(info.and_then(|i| i.pointer("/total/cpus"))),
                mem_mb: num(info.and_then(|i| i.pointer("/total/mem_mb"))),
                running: info
                    .and_then(|i| i.pointer("/tasks/RUNNING"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
                queued: info
                    .and_then(|i| i.pointer("/tasks/QUEUED"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
                last_seen: info
                    .and_then(|i| i.get("reported_at"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| "down (no live info)".into()),
                attributes: attrs
                    .get(&node)
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
                node,
            }
        })
        .collect())
}
