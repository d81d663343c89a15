//! `GET /api/cluster`: in cluster mode, the live nodes (their devices and the partitions
//! each writes), every partition's owner and stored position, and how far behind the
//! stream storage and this node's live views are. One node alone says so.

use std::future::Future;
use std::pin::Pin;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// What the binary tells the dashboard about the cluster.
pub trait ClusterView: Send + Sync {
    /// Whether this node reaches a JetStream quorum now.
    fn has_quorum(&self) -> bool;
    /// Whether the shared stream (the log in cluster mode) has no room for this node's records.
    fn is_log_full(&self) -> bool;
    fn describe(&self) -> Pin<Box<dyn Future<Output = ClusterState> + Send + '_>>;
}

#[derive(Serialize, ToSchema, Default)]
pub struct ClusterState {
    /// `single` or `cluster`.
    pub mode: &'static str,
    /// This node's id.
    pub node: Option<String>,
    pub quorum: bool,
    /// The stream refuses publishes for want of room: devices are not acknowledged.
    pub stream_full: bool,
    pub nodes: Vec<ClusterNode>,
    pub partitions: Vec<ClusterPartition>,
    /// The stream's first and last sequence.
    pub stream_first_seq: u64,
    pub stream_last_seq: u64,
    /// Records this node's live views have yet to read.
    pub live_lag: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterNode {
    pub id: String,
    pub name: String,
    pub http: String,
    pub mqtt: String,
    pub devices: usize,
    pub partitions: Vec<u16>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterPartition {
    pub partition: u16,
    /// The node holding its lease now, if any.
    pub owner: Option<String>,
    /// Storage holds its records up to this stream sequence.
    pub stored_seq: u64,
    /// Records of the stream after `stored_seq` (of any partition): an upper bound of its lag.
    pub lag: u64,
}

#[utoipa::path(get, path = "/api/cluster", tag = "operations", operation_id = "cluster",
    summary = "Cluster mode: nodes, partitions and their owners, devices per node, stream lag",
    responses((status = 200, description = "Success", body = ClusterState)))]
pub async fn state(State(state): State<AppState>) -> Json<ClusterState> {
    match &state.cluster {
        Some(cluster) => Json(cluster.describe().await),
        None => Json(ClusterState {
            mode: "single",
            quorum: true,
            ..ClusterState::default()
        }),
    }
}
