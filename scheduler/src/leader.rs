//! Leader election and the leader's loop. Every replica campaigns on
//! `<prefix>/scheduler/leader` under its own lease (TTL `leader_ttl_s`);
//! the winner rebuilds its view from etcd, watches from the next revision
//! and runs placement passes. Any failure (etcd away, lease lost, watch
//! compacted) ends the term; the replica campaigns again from scratch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, LeaderKey, ResignOptions, WatchOptions};
use gleaner_core::fleet::Keys;
use tokio::sync::watch;

use crate::config::SchedulerConfig;
use crate::marathon::controller::Credentials;
use crate::metrics::Metrics;
use crate::pass::Pass;
use crate::store;
use crate::view::View;

const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Campaigns and leads until `shutdown` turns true; then resigns.
pub async fn run(
    config: Arc<SchedulerConfig>,
    name: String,
    metrics: Arc<Metrics>,
    creds: Arc<Credentials>,
    mut shutdown: watch::Receiver<bool>,
) {
    let keys = Keys::new(&config.etcd_prefix);
    let endpoints: Vec<String> = config.etcd.iter().map(|e| store::endpoint(e)).collect();
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let result = term(
            &config,
            &keys,
            &endpoints,
            &name,
            &metrics,
            &creds,
            &mut shutdown,
        )
        .await;
        metrics.leader.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "scheduler session ended; campaigning again"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One lease: campaign, lead, resign or fail. Ok only on shutdown.
async fn term(
    config: &SchedulerConfig,
    keys: &Keys,
    endpoints: &[String],
    name: &str,
    metrics: &Metrics,
    creds: &Credentials,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let e = |e: etcd_client::Error| e.to_string();
    let mut client = store::connect(
        endpoints,
        config.etcd_credentials.as_ref(),
        Some(store::REQUEST_TIMEOUT),
    )
    .await
    .map_err(|e| e.to_string())?;
    // Campaigning blocks until elected: no request timeout on that client.
    let mut campaigner = store::connect(endpoints, config.etcd_credentials.as_ref(), None)
        .await
        .map_err(|e| e.to_string())?;
    let lease = client
        .lease_grant(config.leader_ttl_s, None)
        .await
        .map_err(e)?
        .id();
    let (lost_tx, mut lost) = watch::channel(false);
    let keepalive = tokio::spawn(keep_alive(
        client.clone(),
        lease,
        config.leader_ttl_s,
        lost_tx,
    ));
    let result = async {
        let campaign = campaigner.campaign(keys.leader(), name, lease);
        let leader_key = tokio::select! {
            r = campaign => r.map_err(e)?.take_leader().ok_or("campaign returned no leader key")?,
            _ = lost.changed() => return Err("lease lost while campaigning".to_string()),
            _ = shutdown.changed() => return Ok(()),
        };
        metrics.leader.store(true, Ordering::Relaxed);
        metrics.elections_won.fetch_add(1, Ordering::Relaxed);
        tracing::info!(name, "leading");
        let r = lead(
            config,
            keys,
            &mut client,
            &leader_key,
            metrics,
            creds,
            &mut lost,
            shutdown,
        )
        .await;
        metrics.leader.store(false, Ordering::Relaxed);
        if r.is_ok() {
            // Shutdown: step down at once rather than after the TTL.
            let _ = client
                .resign(Some(ResignOptions::new().with_leader(leader_key)))
                .await;
            tracing::info!(name, "resigned");
        }
        r
    }
    .await;
    keepalive.abort();
    let _ = client.lease_revoke(lease).await;
    result
}

async fn keep_alive(mut client: Client, lease: i64, ttl: i64, lost: watch::Sender<bool>) {
    let every = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await {
        loop {
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(every * 2, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                _ => break,
            }
            tokio::time::sleep(every).await;
        }
    }
    let _ = lost.send(true);
}

async fn lead(
    config: &SchedulerConfig,
    keys: &Keys,
    client: &mut Client,
    leader_key: &LeaderKey,
    metrics: &Metrics,
    creds: &Credentials,
    lost: &mut watch::Receiver<bool>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let e = |e: etcd_client::Error| e.to_string();
    let root = format!("{}/", keys.prefix);
    let mut view = View::default();
    let rev = store::for_each_in_prefix(client, &root, |kv| {
        if let Ok(key) = kv.key_str() {
            view.put(keys, key, kv.value(), kv.mod_revision());
        }
    })
    .await
    .map_err(e)?;
    tracing::info!(
        revision = rev,
        nodes = view.nodes.len(),
        jobs = view.jobs.len(),
        "view rebuilt from etcd"
    );
    // Fragmented: a leader that fell behind gets its backlog in pieces of
    // at most etcd's request size, not one message over the client's limit.
    let mut watcher = client
        .watch_client()
        .max_decoding_message_size(store::MAX_MESSAGE);
    let mut stream = watcher
        .watch(
            root.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_fragment()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .map_err(e)?;
    let mut pass = Pass::new(config, keys, leader_key.key().to_vec(), metrics);
    let interval = Duration::from_millis(config.pass_interval_ms);
    let idle = Duration::from_secs(1);
    let mut dirty = true;
    let mut last = Instant::now() - idle;
    loop {
        let gap = if dirty { interval } else { idle };
        let wait = gap.saturating_sub(last.elapsed());
        tokio::select! {
            m = stream.message() => {
                let resp = m.map_err(e)?.ok_or("watch ended")?;
                if resp.canceled() {
                    return Err(format!("watch cancelled: {}", resp.cancel_reason()));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match ev.event_type() {
                        EventType::Put => view.put(keys, key, kv.value(), kv.mod_revision()),
                        EventType::Delete => view.delete(keys, key),
                    }
                }
                dirty = true;
            }
            _ = tokio::time::sleep(wait) => {
                crate::marathon::controller::run(client, keys, leader_key.key(), creds, &mut view)
                    .await?;
                pass.run(client, &mut view).await?;
                last = Instant::now();
                dirty = false;
            }
            _ = lost.changed() => return Err("leader lease lost".into()),
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
