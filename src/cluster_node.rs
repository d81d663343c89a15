//! Cluster mode's wiring: joining the NATS cluster, the shared stream as the broker's log,
//! every node's mirror of the stream for its live views, the partition writers the leases
//! give this node, the shared outbox, the cluster's single-node duties, and this node's card
//! in the registry.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fieldline_broker::{RemoteLog, RemoteRecord, Tap, TapClosed};
use fieldline_cluster::{partition_of, record, Cluster, Leases, NodeInfo, Nodes, StreamLog};
use fieldline_dashboard::live::Hub;
use fieldline_dashboard::{ClusterNode, ClusterPartition, ClusterState, ClusterView};
use fieldline_ingest::alerts::AlertRules;
use fieldline_ingest::channels::Channels;
use fieldline_ingest::commands::CommandDesk;
use fieldline_ingest::events::catalog::Catalog;
use fieldline_ingest::events::EventFeed;
use fieldline_ingest::geofence::Fences;
use fieldline_ingest::owners::Owners;
use fieldline_ingest::source::stream::mirror;
use fieldline_ingest::webhook::Webhooks;
use fieldline_ingest::writer::spawn_writer;
use fieldline_ingest::{Pipeline, PipelineSettings, Role};
use fieldline_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// This node, joined, with the live hub numbered by the stream.
pub struct Node {
    pub cluster: Cluster,
    pub log: StreamLog,
    pub hub: Arc<Hub>,
    /// The mirror starts here; records up to `history_through` rebuild the live history.
    from: u64,
    history_through: u64,
}

/// Connects (waiting up to a minute for JetStream to elect its leaders) and builds the hub.
pub async fn join(config: &Config, store: &dyn Store) -> anyhow::Result<Node> {
    let settings = config
        .cluster
        .clone()
        .context("cluster mode without cluster settings")?;
    anyhow::ensure!(
        store.partitions().is_some(),
        "--cluster needs PostgreSQL or TimescaleDB storage"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let cluster = loop {
        match Cluster::connect(settings.clone()).await {
            Ok(cluster) => break cluster,
            Err(e @ fieldline_cluster::ClusterError::JetStream { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e, "JetStream is not ready yet; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("cannot join the cluster (--cluster)"),
        }
    };
    let (first, last) = cluster
        .stream_bounds()
        .await
        .context("cannot read the shared stream")?;
    let history = config.live.history_events as u64;
    let from = first.max(last.saturating_sub(history) + 1).max(1);
    let hub = Hub::following_log(config.live.clone(), cluster.stream_epoch, from);
    let devices = store
        .devices()
        .await
        .context("cannot read the devices' newest positions")?;
    hub.seed_positions(devices.into_iter().filter_map(|d| {
        let location = d.location?;
        Some((d.id, location["lat"].as_f64()?, location["lon"].as_f64()?))
    }));
    crate::judging::start_live_outbox(store, &hub, Some(from), config.live.history_events).await?;
    let log = StreamLog::new(cluster.clone());
    Ok(Node {
        cluster,
        log,
        hub,
        from,
        history_through: last,
    })
}

/// The broker's log in cluster mode: the shared stream, keyed by device.
pub struct SharedLog {
    log: StreamLog,
    runtime: tokio::runtime::Handle,
}

impl SharedLog {
    pub fn new(log: StreamLog) -> Arc<SharedLog> {
        Arc::new(SharedLog {
            log,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl RemoteLog for SharedLog {
    fn append(&self, records: &[RemoteRecord<'_>]) -> Result<(), TapClosed> {
        let partitions = self.log.partitions();
        let encoded = records
            .iter()
            .map(|r| {
                (
                    partition_of(r.key, partitions),
                    record::encode(r.received_ms, r.topic, r.payload),
                )
            })
            .collect();
        self.runtime
            .block_on(self.log.append(encoded))
            .map(|_| ())
            .map_err(|_| TapClosed)
    }
}

/// What runs this node's part of the cluster.
pub struct Parts {
    pub settings: PipelineSettings,
    pub store: Arc<dyn Store>,
    pub fences: Arc<Catalog<Fences>>,
    pub rules: Arc<Catalog<AlertRules>>,
    pub commands: Arc<CommandDesk>,
    pub events: Arc<dyn EventFeed>,
    pub webhooks: Arc<Webhooks>,
    pub channels: Arc<Channels>,
    pub tap: Tap,
    pub http: String,
    pub mqtt: String,
}

/// This node at work: stopped by [`Running::stop`].
pub struct Running {
    shutdown: watch::Sender<bool>,
    leases: Leases,
    owners: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    nodes: Nodes,
    log: StreamLog,
    pub view: Arc<View>,
}

pub async fn start(node: &Node, parts: Parts) -> anyhow::Result<Running> {
    let cluster = node.cluster.clone();
    let (shutdown, stopped) = watch::channel(false);
    let seeds = parts
        .store
        .stream_seqs()
        .await
        .context("cannot read the last sequence numbers")?;
    let last_event = parts
        .store
        .last_event_seq()
        .await
        .context("cannot read the newest stored event")?;
    // The mirror stores nothing: its writer never gets a batch.
    let (idle_writer, _, _) = spawn_writer(parts.store.clone(), 1, 0, parts.events.clone());
    let mut pipeline = Pipeline::new(parts.settings.clone(), idle_writer, node.hub.clone(), seeds);
    pipeline.play(Role::Mirror);
    let live_seq = Arc::new(AtomicU64::new(node.from.saturating_sub(1)));
    let reader = fieldline_cluster::StreamReader::new(cluster.clone());
    let mut tasks = vec![tokio::spawn(mirror(
        pipeline,
        reader.clone(),
        node.from,
        node.history_through,
        node.hub.clone(),
        live_seq.clone(),
        stopped.clone(),
    ))];
    tasks.push(tokio::spawn(
        fieldline_ingest::events::shared_outbox::follow(
            parts.store.clone(),
            parts.events.clone(),
            last_event,
            stopped.clone(),
        ),
    ));
    let nodes = Nodes::new(cluster.clone());
    let leases = Leases::start(cluster.clone(), nodes.clone());
    let (owned_tx, owned) = watch::channel(BTreeSet::new());
    let owners = tokio::spawn(
        Owners {
            store: parts.store.clone(),
            reader,
            node: cluster.node_id.clone(),
            partitions: cluster.settings.partitions,
            settings: parts.settings,
            fences: parts.fences,
            rules: parts.rules,
            replies: parts.commands,
            events: parts.events,
        }
        .run(leases.held(), owned_tx, stopped.clone()),
    );
    tasks.push(tokio::spawn(follow_duties(
        leases.held(),
        parts.webhooks,
        parts.channels,
    )));
    let view = Arc::new(View {
        cluster: cluster.clone(),
        nodes: nodes.clone(),
        store: parts.store,
        live_seq: live_seq.clone(),
    });
    tasks.push(tokio::spawn(announce(
        nodes.clone(),
        NodeInfo {
            id: cluster.node_id.clone(),
            name: cluster.settings.node_name.clone(),
            http: parts.http,
            mqtt: parts.mqtt,
            started_ms: fieldline_store::time_format::now_ms(),
            ..NodeInfo::default()
        },
        parts.tap,
        owned,
        live_seq,
        cluster.settings.lease,
    )));
    Ok(Running {
        shutdown,
        leases,
        owners,
        tasks,
        nodes,
        log: node.log.clone(),
        view,
    })
}

impl Running {
    /// A clean stop: the partition writers store what they read, then every lease and this
    /// node's card are given back so the others take over at once.
    pub async fn stop(self) {
        self.log.close();
        let _ = self.shutdown.send(true);
        let _ = self.owners.await;
        self.leases.release().await;
        self.nodes.withdraw().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Webhooks and channels are delivered by the node holding the cluster's duties only.
async fn follow_duties(
    mut held: watch::Receiver<fieldline_cluster::Lease>,
    webhooks: Arc<Webhooks>,
    channels: Arc<Channels>,
) {
    let mut duty = None;
    loop {
        let now = held.borrow_and_update().duty;
        if duty != Some(now) {
            if now {
                tracing::info!("this node delivers webhooks and notification channels now");
            }
            let a = webhooks.deliver_here(now).await;
            let b = channels.deliver_here(now).await;
            match a.and(b) {
                Ok(()) => duty = Some(now),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start or stop deliveries; trying again")
                }
            }
        }
        tokio::select! {
            changed = held.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Keeps this node's card fresh in the registry.
async fn announce(
    nodes: Nodes,
    mut card: NodeInfo,
    tap: Tap,
    owned: watch::Receiver<BTreeSet<u16>>,
    live_seq: Arc<AtomicU64>,
    lease: Duration,
) {
    let mut tick = tokio::time::interval((lease / 5).max(Duration::from_millis(200)));
    loop {
        tick.tick().await;
        card.devices = tap.online_devices();
        card.partitions = owned.borrow().iter().copied().collect();
        card.live_seq = live_seq.load(Ordering::Relaxed);
        if let Err(e) = nodes.announce(&card).await {
            tracing::warn!(error = %e, "cannot refresh this node's card in the cluster registry");
        }
    }
}

/// `/api/cluster` and readiness.
pub struct View {
    cluster: Cluster,
    nodes: Nodes,
    store: Arc<dyn Store>,
    live_seq: Arc<AtomicU64>,
}

impl ClusterView for View {
    fn has_quorum(&self) -> bool {
        self.cluster.has_quorum()
    }

    fn describe(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ClusterState> + Send + '_>> {
        Box::pin(async move {
            let (first, last) = self.cluster.stream_bounds().await.unwrap_or((0, 0));
            let nodes = self.nodes.list().await.unwrap_or_default();
            let owners = Leases::owners(&self.cluster).await;
            let stored = match self.store.partitions() {
                Some(log) => log.positions().await.unwrap_or_default(),
                None => Vec::new(),
            };
            let partitions = (0..self.cluster.settings.partitions)
                .map(|p| {
                    let stored_seq = stored
                        .iter()
                        .find(|s| s.partition == p)
                        .map_or(0, |s| s.stored_seq);
                    ClusterPartition {
                        partition: p,
                        owner: owners.get(&p).cloned(),
                        stored_seq,
                        lag: last.saturating_sub(stored_seq),
                    }
                })
                .collect();
            ClusterState {
                mode: "cluster",
                node: Some(self.cluster.node_id.clone()),
                quorum: self.cluster.has_quorum(),
                nodes: nodes
                    .into_iter()
                    .map(|n| ClusterNode {
                        id: n.id,
                        name: n.name,
                        http: n.http,
                        mqtt: n.mqtt,
                        devices: n.devices,
                        partitions: n.partitions,
                    })
                    .collect(),
                partitions,
                stream_first_seq: first,
                stream_last_seq: last,
                live_lag: last.saturating_sub(self.live_seq.load(Ordering::Relaxed)),
            }
        })
    }
}
