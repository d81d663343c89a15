//! Cluster mode's wiring: joining the NATS cluster, the shared stream as the broker's log,
//! every node's mirror of the stream for its live views, the partition writers the leases
//! give this node, the shared outbox, the cluster's single-node duties, and this node's card
//! in the registry.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use std::collections::HashMap;
use std::sync::Mutex;

use fieldline_broker::presence::{Change, DisconnectReason, LOG_TOPIC};
use fieldline_broker::{Kicker, RemoteLog, RemoteRecord, Settling, Tap, TapClosed};
use fieldline_cluster::{
    partition_of, record, Cluster, Leases, NodeInfo, Nodes, Presences, StreamLog,
};
use fieldline_dashboard::judging::{Judging, Touches};
use fieldline_dashboard::live::Hub;
use fieldline_dashboard::{ClusterNode, ClusterPartition, ClusterState, ClusterView};
use fieldline_ingest::channels::Channels;
use fieldline_ingest::commands::CommandDesk;
use fieldline_ingest::events::EventFeed;
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
    // The card goes up before the broker takes devices: the node with the duties sends the
    // devices of nodes without one offline.
    let card = NodeInfo {
        id: cluster.node_id.clone(),
        name: cluster.settings.node_name.clone(),
        http: config.http_listen.to_string(),
        mqtt: config.mqtt_listen.to_string(),
        started_ms: fieldline_store::time_format::now_ms(),
        ..NodeInfo::default()
    };
    // A bucket made a moment ago may not take writes yet: its stream is electing a leader.
    let registry = Nodes::new(cluster.clone());
    let mut tries = 0;
    while let Err(e) = registry.announce(&card).await {
        tries += 1;
        anyhow::ensure!(
            tries < 60,
            "cannot put this node's card in the cluster registry: {e}"
        );
        tracing::warn!(error = %e, "the cluster registry does not take writes yet; trying again in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (first, last) = cluster
        .stream_bounds()
        .await
        .context("cannot read the shared stream")?;
    let history = config.live.history_events as u64;
    let from = first.max(last.saturating_sub(history) + 1).max(1);
    let hub = Hub::following_log(config.live.clone(), cluster.stream_epoch, from);
    crate::live_seed::seed_positions(store, &hub).await?;
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

/// The broker's log in cluster mode: the shared stream, keyed by device; presence settled
/// against the other nodes.
pub struct SharedLog {
    log: StreamLog,
    presences: Presences,
    /// Devices whose connection this node holds, and its client id (to cut it when the
    /// device connects to another node).
    local: Mutex<HashMap<Arc<str>, Arc<str>>>,
    runtime: tokio::runtime::Handle,
}

impl SharedLog {
    pub fn new(node: &Node) -> Arc<SharedLog> {
        Arc::new(SharedLog {
            log: node.log.clone(),
            presences: Presences::new(node.cluster.clone()),
            local: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<str>>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RemoteLog for SharedLog {
    fn append<'a>(
        &'a self,
        records: &'a [RemoteRecord<'a>],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), TapClosed>> + Send + 'a>>
    {
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
        Box::pin(async move {
            self.log
                .append(encoded)
                .await
                .map(|_| ())
                .map_err(|_| TapClosed)
        })
    }

    fn settle(&self, changes: Vec<Settling>) -> Vec<Settling> {
        self.runtime.block_on(async {
            let mut settled = Vec::with_capacity(changes.len());
            for mut s in changes {
                match &mut s.change {
                    Change::Online { device } => {
                        self.local().insert(device.clone(), s.client_id.clone());
                        if !self
                            .presences
                            .connected(device, s.connection, &s.client_id)
                            .await
                        {
                            continue; // taken over from another node: it was online
                        }
                    }
                    Change::Ended {
                        device,
                        offline,
                        will,
                        ..
                    } if *offline => {
                        self.local().remove(device);
                        if !self
                            .presences
                            .ended(device, s.connection, &s.client_id)
                            .await
                        {
                            // Another node holds the device now: this end is not its offline.
                            *offline = false;
                            if will.is_none() {
                                continue;
                            }
                        }
                    }
                    Change::Ended { .. } => {}
                }
                settled.push(s);
            }
            settled
        })
    }
}

/// Geofences, rules, webhooks and channels changed through another node's API: in force here
/// within two seconds (the node that made the change puts it in force at once).
async fn follow_definitions(
    store: Arc<dyn Store>,
    definitions: Arc<Judging>,
    held: watch::Receiver<fieldline_cluster::Lease>,
) {
    use fieldline_store::Definitions;
    use std::hash::{Hash, Hasher};
    let digest = |defs: &[fieldline_store::Definition]| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for d in defs {
            (d.id, &d.name, &d.body).hash(&mut hasher);
        }
        hasher.finish()
    };
    let mut seen: [Option<u64>; 2] = [None, None];
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (i, (what, touches)) in [
            (Definitions::Geofences, Touches::Geofences),
            (Definitions::AlertRules, Touches::Rules),
        ]
        .into_iter()
        .enumerate()
        {
            let Ok(defs) = store.definitions(what).await else {
                continue;
            };
            let now = digest(&defs);
            match seen[i] {
                // The first look only notes what start-up loaded.
                None => {
                    seen[i] = Some(now);
                    continue;
                }
                Some(before) if before == now => continue,
                Some(_) => {}
            }
            // A reload that fails is tried again at the next tick: the old digest stays.
            match definitions.reload(store.as_ref(), touches).await {
                Ok(()) => {
                    seen[i] = Some(now);
                    tracing::info!("geofences or rules changed on another node: in force here now")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload geofences or rules; trying again")
                }
            }
        }
        if held.borrow().duty {
            let synced = async {
                definitions
                    .reload(store.as_ref(), Touches::Webhooks)
                    .await?;
                definitions.reload(store.as_ref(), Touches::Channels).await
            };
            if let Err(e) = synced.await {
                tracing::warn!(error = %e, "cannot read the webhooks and channels");
            }
        }
    }
}

/// Core NATS subject on which nodes announce new commands.
const COMMANDS_SUBJECT: &str = "fl.commands";

/// Commands created on other nodes: sent from here when the device is connected here.
async fn follow_commands(cluster: Cluster, commands: Arc<CommandDesk>) {
    use futures_util::StreamExt;
    loop {
        match cluster.client.subscribe(COMMANDS_SUBJECT).await {
            Ok(mut announced) => {
                while let Some(message) = announced.next().await {
                    let text = String::from_utf8_lossy(&message.payload);
                    let mut parts = text.splitn(3, '\n');
                    let (Some(node), Some(device), Some(id)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    // Core NATS echoes a node's own announcements; its desk has them already.
                    if node != cluster.node_id {
                        commands.created_elsewhere(device, id);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow new commands of other nodes"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Cuts this node's connection of every device another node takes over, for as long as the
/// node runs (the watch is opened again after a failure).
async fn cut_taken_over(shared: Arc<SharedLog>, kicker: Kicker) {
    loop {
        let watched = shared
            .presences
            .watch(|holder| {
                let local = shared.local().remove(holder.device.as_str());
                if let Some(client_id) = local {
                    if kicker.take_over(&client_id) {
                        tracing::info!(device = %holder.device, to = %holder.node, "the device connected to another node: its connection here is cut");
                    }
                }
            })
            .await;
        if let Err(e) = watched {
            tracing::warn!(error = %e, "the presence watch failed; watching again in 1 s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// On the node with the duties: devices held by nodes that died go offline (`dropped`).
/// A node counts as dead once two looks, half a lease apart, miss its card.
async fn reap_dead_nodes(
    shared: Arc<SharedLog>,
    nodes: Nodes,
    held: watch::Receiver<fieldline_cluster::Lease>,
    lease: Duration,
) {
    let mut tick = tokio::time::interval(lease / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_before: Option<Vec<String>> = None;
    loop {
        tick.tick().await;
        if !held.borrow().duty {
            seen_before = None;
            continue;
        }
        let Ok(live) = nodes.list().await else {
            seen_before = None;
            continue;
        };
        let mut live: Vec<String> = live.into_iter().map(|n| n.id).collect();
        // Alive in either look: only nodes missing from both are dead.
        if let Some(before) = seen_before.replace(live.clone()) {
            live.extend(before);
        } else {
            continue;
        }
        let log: &SharedLog = &shared;
        let reaped = shared
            .presences
            .reap(&live, |device| async move {
                let change = Change::Ended {
                    device: Arc::from(device.as_str()),
                    offline: true,
                    reason: DisconnectReason::Dropped,
                    will: None,
                };
                let record = RemoteRecord {
                    received_ms: fieldline_store::time_format::now_ms(),
                    key: &device,
                    topic: LOG_TOPIC,
                    payload: &change.encode(),
                };
                log.append(&[record]).await.is_ok()
            })
            .await;
        if reaped > 0 {
            metrics::counter!("fieldline_cluster_dropped_devices_total").increment(reaped as u64);
            tracing::info!(
                devices = reaped,
                "devices of a node that died went offline (dropped)"
            );
        }
    }
}

/// What runs this node's part of the cluster.
pub struct Parts {
    pub settings: PipelineSettings,
    pub store: Arc<dyn Store>,
    /// The fences and rules in force, the webhooks and channels, and their one-at-a-time reload.
    pub definitions: Arc<Judging>,
    pub commands: Arc<CommandDesk>,
    pub events: Arc<dyn EventFeed>,
    /// The newest stored event when `events` started: the shared outbox is followed from
    /// there, so the feed gets every seq after it.
    pub last_event: u64,
    pub tap: Tap,
    /// The broker's log, and how to cut one of its connections.
    pub shared: Arc<SharedLog>,
    pub kicker: Kicker,
    /// Records the live views keep for clients that resume (the stream keeps as many).
    pub history: u64,
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
            parts.last_event,
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
            fences: parts.definitions.fences.clone(),
            rules: parts.definitions.rules.clone(),
            replies: parts.commands.clone(),
            events: parts.events,
        }
        .run(leases.held(), owned_tx, stopped.clone()),
    );
    tasks.push(tokio::spawn(follow_duties(
        leases.held(),
        parts.definitions.webhooks.clone(),
        parts.definitions.channels.clone(),
    )));
    let client = cluster.client.clone();
    let node_id = cluster.node_id.clone();
    parts.commands.announce_with(Box::new(move |device, id| {
        let client = client.clone();
        let message = bytes::Bytes::from(format!("{node_id}\n{device}\n{id}"));
        tokio::spawn(async move {
            if let Err(e) = client.publish(COMMANDS_SUBJECT, message).await {
                tracing::warn!(error = %e, "cannot tell the other nodes of a new command; it goes out at the device's next connection");
            }
        });
    }));
    tasks.push(tokio::spawn(follow_commands(
        cluster.clone(),
        parts.commands.clone(),
    )));
    tasks.push(tokio::spawn(cut_taken_over(
        parts.shared.clone(),
        parts.kicker,
    )));
    tasks.push(tokio::spawn(reap_dead_nodes(
        parts.shared,
        nodes.clone(),
        leases.held(),
        cluster.settings.lease,
    )));
    tasks.push(tokio::spawn(follow_definitions(
        parts.store.clone(),
        parts.definitions.clone(),
        leases.held(),
    )));
    tasks.push(tokio::spawn(trim_stream(
        cluster.clone(),
        parts.store.clone(),
        nodes.clone(),
        leases.held(),
        parts.history,
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

/// On the node with the duties: drops from the stream what every partition has stored,
/// every node's live views have read and no client that resumes may ask for (the newest
/// `history` records stay), so the stream's size limit is a spool of what waits for storage,
/// as the local log's is on one node.
async fn trim_stream(
    cluster: Cluster,
    store: Arc<dyn Store>,
    nodes: Nodes,
    held: watch::Receiver<fieldline_cluster::Lease>,
    history: u64,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !held.borrow().duty {
            continue;
        }
        let Some(log) = store.partitions() else {
            return;
        };
        let (Ok(positions), Ok((first, last)), Ok(live)) = (
            log.positions().await,
            cluster.stream_bounds().await,
            nodes.list().await,
        ) else {
            continue;
        };
        if live.is_empty() {
            continue;
        }
        // The oldest record some partition has yet to store (an idle partition holds nothing
        // back; one never claimed holds everything it has).
        let mut unstored = last + 1;
        let mut known = true;
        for partition in 0..cluster.settings.partitions {
            let stored = positions
                .iter()
                .find(|p| p.partition == partition)
                .map_or(0, |p| p.stored_seq);
            match cluster.next_in_partition(partition, stored + 1).await {
                Ok(Some(seq)) => unstored = unstored.min(seq),
                Ok(None) => {}
                Err(_) => known = false,
            }
        }
        if !known {
            continue;
        }
        let read = live.iter().map(|n| n.live_seq).min().unwrap_or(0);
        let keep_from = unstored.min(read + 1).min(last.saturating_sub(history) + 1);
        if keep_from <= first {
            continue;
        }
        match cluster.purge_before(keep_from).await {
            Ok(purged) => {
                metrics::counter!("fieldline_cluster_trimmed_records_total").increment(purged);
                tracing::debug!(purged, keep_from, "trimmed the shared stream");
            }
            Err(e) => tracing::warn!(error = %e, "cannot trim the shared stream"),
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

    fn is_log_full(&self) -> bool {
        self.cluster.is_stream_full()
    }

    fn describe(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ClusterState> + Send + '_>> {
        Box::pin(async move {
            // A NATS server failing over must not hold the answer up.
            let within = Duration::from_secs(2);
            let (bounds, nodes, owners) = tokio::join!(
                tokio::time::timeout(within, self.cluster.stream_bounds()),
                tokio::time::timeout(within, self.nodes.list()),
                Leases::owners(&self.cluster),
            );
            let (first, last) = match bounds {
                Ok(Ok(bounds)) => bounds,
                _ => (0, 0),
            };
            let nodes = match nodes {
                Ok(Ok(nodes)) => nodes,
                _ => Vec::new(),
            };
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
                stream_full: self.cluster.is_stream_full(),
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
