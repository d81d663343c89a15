//! The registry of live nodes: each node puts its card in a bucket whose entries expire after
//! the lease time, so a node that stops refreshing it drops out of the list on its own.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::Cluster;

/// What a node says about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    /// The node's HTTP and MQTT addresses as it listens on them.
    pub http: String,
    pub mqtt: String,
    pub started_ms: i64,
    /// Devices connected to this node's broker.
    pub devices: usize,
    /// Partitions this node writes.
    pub partitions: Vec<u16>,
    /// The newest stream sequence this node's live views have read.
    pub live_seq: u64,
}

#[derive(Clone)]
pub struct Nodes {
    cluster: Cluster,
}

impl Nodes {
    pub fn new(cluster: Cluster) -> Nodes {
        Nodes { cluster }
    }

    /// Puts (or refreshes) this node's card.
    pub async fn announce(&self, info: &NodeInfo) -> Result<(), String> {
        let value = serde_json::to_vec(info).map_err(|e| e.to_string())?;
        self.cluster
            .nodes
            .put(&self.cluster.node_id, Bytes::from(value))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Takes this node's card down (a clean stop).
    pub async fn withdraw(&self) {
        let _ = self.cluster.nodes.delete(&self.cluster.node_id).await;
    }

    /// Every node whose card has not expired.
    pub async fn list(&self) -> Result<Vec<NodeInfo>, String> {
        let mut keys = self.cluster.nodes.keys().await.map_err(|e| e.to_string())?;
        let mut ids = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(key) = keys.next().await {
                match key {
                    Ok(key) => ids.push(key),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
        .await;
        match read {
            Ok(result) => result?,
            Err(_) => return Err("listing the nodes timed out".to_owned()),
        }
        let mut nodes = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(Some(value)) = self.cluster.nodes.get(id).await {
                if let Ok(info) = serde_json::from_slice::<NodeInfo>(&value) {
                    nodes.push(info);
                }
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}
