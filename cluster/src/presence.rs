//! Presence across nodes: which node holds each device's connection, in a bucket keyed by
//! device. A connection that starts on one node while another node holds the device takes it
//! over (the other node cuts its connection, and that connection's end sends nothing offline);
//! a connection that ends sends its device offline only if it still holds it. Entries of a
//! node that died are reaped by the node with the duties, which sends the device offline with
//! reason `dropped`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Cluster;

/// Whose a device is, as the bucket says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    pub connection: u64,
    pub client_id: String,
    pub device: String,
    #[serde(skip)]
    pub revision: u64,
}

/// The value a reaper leaves while it sends a device offline.
const REAPED: &str = "reaped";

#[derive(Clone)]
pub struct Presences {
    cluster: Cluster,
    /// Every device's holder as last seen through the watch.
    holders: Arc<Mutex<HashMap<String, Holder>>>,
}

/// A bucket key for a device: its id when that is a valid key, else its hex.
fn key(device: &str) -> String {
    if !device.is_empty()
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        format!("d{device}")
    } else {
        let hex: String = device.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

fn encode(node: &str, connection: u64, client_id: &str, device: &str) -> Bytes {
    let holder = Holder {
        node: node.to_owned(),
        connection,
        client_id: client_id.to_owned(),
        device: device.to_owned(),
        revision: 0,
    };
    Bytes::from(serde_json::to_vec(&holder).unwrap_or_default())
}

fn decode(value: &[u8], revision: u64) -> Option<Holder> {
    let holder: Holder = serde_json::from_slice(value).ok()?;
    Some(Holder { revision, ..holder })
}

impl Presences {
    pub fn new(cluster: Cluster) -> Presences {
        Presences {
            cluster,
            holders: Arc::default(),
        }
    }

    fn kv(&self) -> &kv::Store {
        &self.cluster.presence
    }

    /// A connection of `device` started on this node: whether its `online` stands (false:
    /// the device was held elsewhere and is now taken over; it was online already).
    pub async fn connected(&self, device: &str, connection: u64, client_id: &str) -> bool {
        let key = key(device);
        let mine = encode(&self.cluster.node_id, connection, client_id, device);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let current = match self.kv().entry(&key).await {
                Ok(entry) => entry.filter(|e| e.operation == Operation::Put),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a device's presence; deciding alone");
                    return true;
                }
            };
            let held = current.as_ref().and_then(|e| decode(&e.value, e.revision));
            // A reaper is sending it offline: let it finish, so the offline comes first.
            let reaping = held.as_ref().is_some_and(|h| h.node == REAPED);
            if reaping && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // Written only over what was read: a change meanwhile (a reaper, another node)
            // is read again.
            let written = match &current {
                Some(entry) => self
                    .kv()
                    .update(&key, mine.clone(), entry.revision)
                    .await
                    .is_ok(),
                None => self.kv().create(&key, mine.clone()).await.is_ok(),
            };
            if !written && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            return match held {
                Some(holder) if holder.node != REAPED && holder.node != self.cluster.node_id => {
                    metrics::counter!("fieldline_cluster_presence_takeovers_total").increment(1);
                    false
                }
                _ => true,
            };
        }
    }

    /// A connection of `device` ended on this node with the device offline as far as this
    /// node knows: whether that stands (false: another node or connection holds it now).
    pub async fn ended(&self, device: &str, connection: u64, client_id: &str) -> bool {
        let key = key(device);
        for _ in 0..3 {
            let entry = match self.kv().entry(&key).await {
                Ok(Some(entry)) if entry.operation == Operation::Put => entry,
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a device's presence; deciding alone");
                    return true;
                }
            };
            let ours = decode(&entry.value, entry.revision).is_some_and(|h| {
                h.node == self.cluster.node_id
                    && h.connection == connection
                    && h.client_id == client_id
            });
            if !ours {
                return false;
            }
            if self
                .kv()
                .delete_expect_revision(&key, Some(entry.revision))
                .await
                .is_ok()
            {
                return true;
            }
        }
        true
    }

    /// Follows the bucket (from its current entries on), calling `taken` with every device a
    /// node other than this one takes, until the watch fails.
    pub async fn watch(&self, taken: impl Fn(&Holder)) -> Result<(), String> {
        let mut watch = self
            .kv()
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        // The history replays every entry: what a watch that ended knew may be gone since.
        self.holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
            match entry.operation {
                Operation::Put => {
                    if let Some(holder) = decode(&entry.value, entry.revision) {
                        if holder.node != self.cluster.node_id && holder.node != REAPED {
                            taken(&holder);
                        }
                        holders.insert(entry.key, holder);
                    }
                }
                Operation::Delete | Operation::Purge => {
                    holders.remove(&entry.key);
                }
            }
        }
        Err("the presence watch ended".to_owned())
    }

    /// Devices held by nodes not in `live`: each is marked as being reaped (if it still is
    /// that node's), handed to `offline` to send offline, then removed. Returns how many.
    pub async fn reap<F>(&self, live: &[String], offline: impl Fn(String) -> F) -> usize
    where
        F: std::future::Future<Output = bool>,
    {
        let dead: Vec<(String, Holder)> = self
            .holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, h)| h.node != REAPED && !live.contains(&h.node))
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        let mut reaped = 0;
        for (key, holder) in dead {
            let marker = encode(REAPED, 0, "", &holder.device);
            let Ok(revision) = self.kv().update(&key, marker, holder.revision).await else {
                continue; // it moved on meanwhile
            };
            if offline(holder.device.clone()).await {
                let _ = self.kv().delete_expect_revision(&key, Some(revision)).await;
                reaped += 1;
            } else {
                // Not sent offline: the dead node's entry back, for the next round to reap
                // (the marker left would keep it online and hold up its reconnection).
                let back = encode(
                    &holder.node,
                    holder.connection,
                    &holder.client_id,
                    &holder.device,
                );
                let _ = self.kv().update(&key, back, revision).await;
            }
        }
        reaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        assert_eq!(key("truck-1"), "dtruck-1");
        assert_eq!(key("a.b"), "x612e62");
        assert_eq!(key(""), "x");
        let value = encode("node-1", 7, "client|x", "dev");
        let holder = decode(&value, 3).expect("decodes");
        assert_eq!(
            (
                holder.connection,
                holder.client_id.as_str(),
                holder.revision
            ),
            (7, "client|x", 3)
        );
        assert!(decode(b"garbage", 1).is_none());
    }
}
