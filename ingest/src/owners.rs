//! Cluster mode's writers: for each partition this node holds the lease of, a pipeline that
//! reads the partition from the stream, from the position storage holds, and stores it with
//! every batch fenced by the partition's claim. State (de-duplication, geofence and rule
//! states) starts from what storage holds, so a new owner goes on exactly where the last one
//! committed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldline_cluster::{partition_of, Lease, StreamReader};
use fieldline_store::partitions::Fence;
use fieldline_store::Store;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::alerts::AlertRules;
use crate::commands::Replies;
use crate::events::catalog::Catalog;
use crate::events::judges::Judges;
use crate::events::EventFeed;
use crate::geofence::Fences;
use crate::live::NoLiveFeed;
use crate::pipeline::Role;
use crate::source::stream::from_stream;
use crate::writer::spawn_fenced_writer;
use crate::{Pipeline, PipelineSettings};

/// Batches a partition's writer may have queued.
const QUEUE_BATCHES: usize = 2;

/// What every partition's pipeline is built from.
pub struct Owners {
    pub store: Arc<dyn Store>,
    pub reader: StreamReader,
    pub node: String,
    pub partitions: u16,
    pub settings: PipelineSettings,
    pub fences: Arc<Catalog<Fences>>,
    pub rules: Arc<Catalog<AlertRules>>,
    pub replies: Arc<dyn Replies>,
    /// Where committed events go at once (other nodes' come from the outbox follower).
    pub events: Arc<dyn EventFeed>,
}

struct Owning {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Owners {
    /// Starts and stops partition writers as `leases` changes, until `shutdown`; then each
    /// stores what it has read and stops.
    pub async fn run(
        self,
        mut leases: watch::Receiver<Lease>,
        owned: watch::Sender<BTreeSet<u16>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let this = Arc::new(self);
        let mut running: HashMap<u16, Owning> = HashMap::new();
        // A writer that ended on its own (refused by its fence) is not started again at once:
        // its lease is most likely being lost too.
        let mut ended: HashMap<u16, Instant> = HashMap::new();
        loop {
            let wanted = leases.borrow_and_update().partitions.clone();
            running.retain(|partition, owning| {
                if owning.task.is_finished() {
                    ended.insert(*partition, Instant::now());
                    return false;
                }
                if wanted.contains(partition) {
                    return true;
                }
                tracing::info!(partition, "partition lease gone: its writer stops");
                owning.task.abort();
                false
            });
            ended.retain(|_, at| at.elapsed() < Duration::from_secs(3));
            for partition in &wanted {
                if running.contains_key(partition) || ended.contains_key(partition) {
                    continue;
                }
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(this.clone().own(*partition, stopped));
                running.insert(*partition, Owning { stop, task });
            }
            owned.send_replace(running.keys().copied().collect());
            tokio::select! {
                _ = leases.changed() => {}
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        for owning in running.values() {
            let _ = owning.stop.send(true);
        }
        for (_, owning) in running {
            let _ = owning.task.await;
        }
        owned.send_replace(BTreeSet::new());
    }

    /// Claims `partition` in storage and writes it until `stop` (then stores what it read)
    /// or until its fence refuses a batch.
    async fn own(self: Arc<Self>, partition: u16, mut stop: watch::Receiver<bool>) {
        let claim = loop {
            match self.store.partitions() {
                // A claim waits for the previous writer's commit; a stop does not wait for it.
                Some(log) => match tokio::select! {
                    claimed = log.claim(partition, &self.node) => claimed,
                    _ = stop.changed() => return,
                } {
                    Ok(claim) => break claim,
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "cannot claim a partition in storage; trying again in 1 s");
                    }
                },
                None => {
                    tracing::error!("this storage cannot record partition positions (cluster mode needs PostgreSQL)");
                    return;
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        let Some((mut pipeline, mut stored)) = self
            .pipeline(claim.partition, claim.token, claim.stored_seq)
            .await
        else {
            return;
        };
        tracing::info!(
            partition,
            from = claim.stored_seq + 1,
            token = claim.token,
            "writing a partition"
        );
        metrics::counter!("fieldline_cluster_partition_claims_total").increment(1);
        let (tx, mut rx) = mpsc::channel(1024);
        let follower = self
            .reader
            .follow(Some(partition), claim.stored_seq + 1, tx);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    follower.abort();
                    // What is stored by then stays; the rest is the next owner's, from the
                    // stream (storage may be down: the stop does not wait for it).
                    let flushed = pipeline.flush_and_wait_stored();
                    if tokio::time::timeout(Duration::from_secs(10), flushed).await.is_err() {
                        tracing::warn!(partition, "stopping without storing the last batch of a partition; its next writer stores it");
                    }
                    return;
                }
                Some(record) = rx.recv() => pipeline.replayed(&from_stream(record)).await,
                _ = tick.tick() => pipeline.flush_if_due().await,
                changed = stored.changed() => {
                    if changed.is_err() {
                        break; // the writer stopped: refused by its fence
                    }
                    let seq = *stored.borrow_and_update();
                    metrics::gauge!("fieldline_cluster_partition_stored_seq", "partition" => partition.to_string()).set(seq as f64);
                }
            }
        }
        follower.abort();
        tracing::warn!(
            partition,
            "this node no longer writes a partition: another node claimed it"
        );
    }

    /// A storage pipeline for `partition`, its state loaded from storage.
    async fn pipeline(
        &self,
        partition: u16,
        token: i64,
        stored_seq: u64,
    ) -> Option<(Pipeline, watch::Receiver<u64>)> {
        let mine = |device: &str| partition_of(device, self.partitions) == partition;
        let loaded = async {
            let seeds = self.store.stream_seqs().await?;
            let seed = self.store.judge_seed().await?;
            Ok::<_, fieldline_store::StoreError>((seeds, seed))
        };
        let (seeds, mut seed) = match loaded.await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot load a partition's state; its lease will be taken up again");
                return None;
            }
        };
        let seeds = seeds.into_iter().filter(|s| mine(&s.device)).collect();
        seed.states.retain(|s| mine(&s.device));
        seed.newest_fix_ms.retain(|(device, _)| mine(device));
        let (writer, _task, stored) = spawn_fenced_writer(
            self.store.clone(),
            QUEUE_BATCHES,
            Fence { partition, token },
            stored_seq,
            self.events.clone(),
        );
        let mut pipeline =
            Pipeline::new(self.settings.clone(), writer, Arc::new(NoLiveFeed), seeds);
        pipeline.play(Role::Owner);
        pipeline.judge_with(Judges::new(self.fences.clone(), self.rules.clone(), seed));
        pipeline.answer_replies_with(self.replies.clone());
        Some((pipeline, stored))
    }
}
