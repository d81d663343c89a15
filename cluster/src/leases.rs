//! Leases: which node writes each partition, and which one does the cluster's single-node
//! duties (deliveries of webhooks and channels, trimming the stream). A lease is a key in a
//! bucket whose entries expire after the lease time; its holder renews it with
//! compare-and-set, and a node that stops renewing loses it when the entry expires.
//!
//! A lease only keeps two writers from working at once in the normal case. Storage fences
//! each partition's commits with a token taken when the partition is claimed, so a stale
//! holder that wakes up cannot commit whatever it believes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Cluster, Nodes};

const DUTY: &str = "duty";

/// What this node holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub partitions: BTreeSet<u16>,
    /// The single-node duties.
    pub duty: bool,
}

pub struct Leases {
    held: watch::Receiver<Lease>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Held {
    revision: u64,
    renewed: Instant,
}

impl Leases {
    /// Starts taking and renewing leases: as many partitions as an even share among the live
    /// nodes, never more.
    pub fn start(cluster: Cluster, nodes: Nodes) -> Leases {
        let (held_tx, held) = watch::channel(Lease::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(cluster, nodes, held_tx, stopped));
        Leases { held, stop, task }
    }

    pub fn held(&self) -> watch::Receiver<Lease> {
        self.held.clone()
    }

    /// Gives every lease back (a clean stop), so other nodes take over at once.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Which node holds each partition now, as the bucket says (within 2 s).
    pub async fn owners(cluster: &Cluster) -> BTreeMap<u16, String> {
        let reads = (0..cluster.settings.partitions).map(|p| async move {
            let read = tokio::time::timeout(Duration::from_secs(2), cluster.leases.get(key(p)));
            match read.await {
                Ok(Ok(Some(value))) => Some((p, String::from_utf8_lossy(&value).into_owned())),
                _ => None,
            }
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

fn key(partition: u16) -> String {
    format!("p{partition}")
}

async fn run(
    cluster: Cluster,
    nodes: Nodes,
    held_tx: watch::Sender<Lease>,
    mut stopped: watch::Receiver<bool>,
) {
    let ttl = cluster.settings.lease;
    let period = (ttl / 5).max(Duration::from_millis(200));
    let partitions = cluster.settings.partitions;
    let me = Bytes::from(cluster.node_id.clone());
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    // Where this node starts looking for free partitions, so nodes starting together do
    // not all try the same ones first.
    let offset = crate::partition_of(&cluster.node_id, partitions);
    let mut live = 1;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        renew(&cluster, &me, &mut held, ttl / 2, ttl).await;
        publish(&held_tx, &held);
        // The live nodes as last counted, when they cannot be counted now.
        if let Ok(Ok(list)) = tokio::time::timeout(period, nodes.list()).await {
            live = list.len().max(1);
        }
        let share = usize::from(partitions).div_ceil(live);
        let owned = |held: &BTreeMap<String, Held>| held.keys().filter(|k| *k != DUTY).count();
        if owned(&held) < share {
            // Taking stops once a period is spent, so renewals come round in time.
            let taking = Instant::now();
            for i in 0..partitions {
                if taking.elapsed() > period {
                    break;
                }
                let name = key((offset + i) % partitions);
                if held.contains_key(&name) {
                    continue;
                }
                if let Some(revision) = take(&cluster, &name, &me, period).await {
                    tracing::info!(lease = %name, "took a partition");
                    held.insert(
                        name,
                        Held {
                            revision,
                            renewed: Instant::now(),
                        },
                    );
                    if owned(&held) >= share {
                        break;
                    }
                }
            }
        } else if owned(&held) > share {
            // One at a time, so the others can take it up before the next goes.
            if let Some(name) = held.keys().rev().find(|k| *k != DUTY).cloned() {
                held.remove(&name);
                publish(&held_tx, &held);
                tracing::info!(lease = %name, "handing a partition to a newer node");
                let _ = tokio::time::timeout(period, cluster.leases.delete(&name)).await;
            }
        }
        if !held.contains_key(DUTY) {
            if let Some(revision) = take(&cluster, DUTY, &me, period).await {
                tracing::info!("took the cluster's single-node duties");
                held.insert(
                    DUTY.to_owned(),
                    Held {
                        revision,
                        renewed: Instant::now(),
                    },
                );
            }
        }
        publish(&held_tx, &held);
    }
    held_tx.send_replace(Lease::default());
    for name in held.keys() {
        let _ = tokio::time::timeout(period, cluster.leases.delete(name)).await;
    }
}

/// Takes the lease `name` if nobody holds it; its revision.
async fn take(cluster: &Cluster, name: &str, me: &Bytes, within: Duration) -> Option<u64> {
    match tokio::time::timeout(within, cluster.leases.create(name, me.clone())).await {
        Ok(Ok(revision)) => Some(revision),
        _ => None,
    }
}

/// Renews every lease held, all at once and each within `within` (a NATS server failing
/// over must not hold the others up). A lease another node took is dropped; one not renewed
/// for most of its time is given up before another node may take it.
async fn renew(
    cluster: &Cluster,
    me: &Bytes,
    held: &mut BTreeMap<String, Held>,
    within: Duration,
    ttl: Duration,
) {
    // A renewal counts from when it was asked for: the entry's time runs from then at best.
    let asked = Instant::now();
    let renewals = held.iter().map(|(name, lease)| {
        let update = cluster.leases.update(name, me.clone(), lease.revision);
        async move { (name.clone(), tokio::time::timeout(within, update).await) }
    });
    let results = futures_util::future::join_all(renewals).await;
    for (name, renewed) in results {
        let Some(lease) = held.get_mut(&name) else {
            continue;
        };
        let failure = match renewed {
            Ok(Ok(revision)) => {
                lease.revision = revision;
                lease.renewed = asked;
                cluster.note_quorum(true);
                continue;
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(lease = %name, "lease taken by another node");
                held.remove(&name);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        cluster.note_quorum(false);
        if lease.renewed.elapsed() > ttl * 3 / 5 {
            tracing::warn!(lease = %name, error = %failure, "cannot renew a lease in time; giving it up");
            held.remove(&name);
        }
    }
}

fn publish(tx: &watch::Sender<Lease>, held: &BTreeMap<String, Held>) {
    let lease = Lease {
        partitions: held
            .keys()
            .filter_map(|k| k.strip_prefix('p')?.parse().ok())
            .collect(),
        duty: held.contains_key(DUTY),
    };
    tx.send_if_modified(|current| {
        let changed = *current != lease;
        *current = lease;
        changed
    });
}
