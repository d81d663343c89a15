//! The pipeline stage between the broker and the writer: route, decode, validate, de-duplicate,
//! and gather rows into batches.
//!
//! Every accepted document goes to the live feed the moment it is accepted, and into the batch.
//! It runs on one task and never waits on the database while it has room: when the writer is
//! busy the current batch keeps growing, up to `max_batch_rows`. Then, with a write-ahead log
//! to read back from, it spills ([`crate::spill`]); without one it waits, which in turn makes
//! the broker stop reading from sockets.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::{self, Interner};
use crate::commands::Replies;
use crate::decode::{decode, Limits};
use crate::dedupe::Dedupe;
use crate::document::{Body, Document, Kind, Status};
use crate::events::judges::Judges;
use crate::live::{LiveFeed, Origin};
use crate::presence::PresenceChange;
use crate::rejection::{Reason, Rejection};
use crate::spill::{Backlog, Entry, Logged, Spill, SpillState};
use crate::topic::{route, Route};
use crate::writer::WriterHandle;
use fieldline_store::batch::Batch;
use fieldline_store::time_format::{epoch_ms, now_ms};
use fieldline_store::StreamSeq;

#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub limits: Limits,
    /// Rows at which a batch is handed to the writer.
    pub batch_rows: usize,
    /// Age at which a batch is handed over however small it is.
    pub batch_age: Duration,
    /// Rows a batch may grow to while the writer is busy, before the pipeline waits.
    pub max_batch_rows: usize,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            batch_rows: 5_000,
            batch_age: Duration::from_millis(200),
            max_batch_rows: 100_000,
        }
    }
}

/// Metric handles looked up once: the registry lookup of `counter!` costs more than the
/// increment on a path taken 100,000 times a second.
struct Counters {
    received: metrics::Counter,
    accepted: [metrics::Counter; 3],
    duplicates: [metrics::Counter; 3],
}

impl Counters {
    fn new() -> Self {
        let per_kind = |name: &'static str| {
            Kind::ALL.map(|kind| metrics::counter!(name, "kind" => kind.as_str()))
        };
        Self {
            received: metrics::counter!("fieldline_messages_received_total"),
            accepted: per_kind("fieldline_documents_accepted_total"),
            duplicates: per_kind("fieldline_documents_duplicate_total"),
        }
    }
}

pub struct Pipeline {
    settings: PipelineSettings,
    counters: Counters,
    writer: WriterHandle,
    live: Arc<dyn LiveFeed>,
    dedupe: Dedupe,
    device_ids: Interner,
    metric_names: Interner,
    batch: Batch,
    /// Where rows that storage is too far behind for are read back from (the log).
    backlog: Option<Box<dyn Backlog>>,
    spill: Option<Spill>,
    spill_state: Arc<SpillState>,
    /// The newest log position handled.
    last_position: u64,
    /// At start-up, while the log is replayed from before what storage holds.
    rebuild: Option<Rebuild>,
    /// Geofences and alert rules, judged on the storage path.
    judges: Option<Judges>,
    /// Where devices' replies to commands go.
    replies: Option<Arc<dyn Replies>>,
    role: Role,
}

/// What a pipeline does with what it reads. One node alone does everything; in cluster mode
/// every node mirrors the whole stream to its live views, and the owner of each partition
/// stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Live views and storage: the node alone.
    Single,
    /// Live views only, for every device: cluster mode's reader of the whole stream.
    Mirror,
    /// Storage only (judged, counted): cluster mode's writer of one partition.
    Owner,
}

/// Replaying records storage already holds, to rebuild the live views' history.
struct Rebuild {
    /// The newest record storage holds.
    through: u64,
    /// Started empty at the first replayed record, as the live path's was when it first
    /// judged these records; storage's own state (seeded from what it holds) is past them.
    dedupe: Dedupe,
}

/// Where one message's documents and rejections go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// To live views and into the batch: the normal path.
    Both,
    /// To live views only: storage is behind, and the message waits in the log.
    LiveOnly,
    /// Into the batch only: read back from the log for storage; its live events and its
    /// counts went out when it arrived.
    StoreOnly,
    /// To live views only, replayed at start-up from records storage already holds: it
    /// rebuilds the live history. It was counted and its rejections recorded the first time.
    Rebuild,
    /// To live views only: cluster mode, where another pipeline (maybe on another node)
    /// stores, counts and answers it.
    Mirror,
    /// Into the batch, counted, not live: cluster mode's partition owner.
    Owned,
}

impl Path {
    fn live(self) -> bool {
        !matches!(self, Path::StoreOnly | Path::Owned)
    }

    fn stores(self) -> bool {
        matches!(self, Path::Both | Path::StoreOnly | Path::Owned)
    }

    /// Counted in metrics and logs: the first time the message is taken.
    fn counts(self) -> bool {
        matches!(self, Path::Both | Path::LiveOnly | Path::Owned)
    }
}

/// Derived events judged but not yet stored (the outbox's backlog); the writer takes them
/// off after the commit.
fn note_pending(events: usize) {
    if events > 0 {
        metrics::gauge!("fieldline_outbox_pending_events").increment(events as f64);
    }
}

/// Log records read back per read while catching storage up.
const CATCH_UP_CHUNK: usize = 1024;
/// Longest one catch-up round keeps the pipeline from new messages.
const CATCH_UP_ROUND: Duration = Duration::from_millis(20);

impl Pipeline {
    /// `seeds` are the last stored seq of each stream, so redeliveries after a restart are
    /// still recognised.
    pub fn new(
        settings: PipelineSettings,
        writer: WriterHandle,
        live: Arc<dyn LiveFeed>,
        seeds: Vec<StreamSeq>,
    ) -> Self {
        let mut pipeline = Self {
            settings,
            counters: Counters::new(),
            writer,
            live,
            dedupe: Dedupe::default(),
            device_ids: Interner::default(),
            metric_names: Interner::default(),
            batch: Batch::default(),
            backlog: None,
            spill: None,
            spill_state: Arc::new(SpillState::default()),
            last_position: 0,
            rebuild: None,
            judges: None,
            replies: None,
            role: Role::Single,
        };
        for seed in seeds {
            let device = pipeline.device_ids.intern(&seed.device);
            pipeline
                .dedupe
                .seed(device, seed.kind, seed.seq, seed.ts_ms);
        }
        pipeline
    }

    /// Lets the pipeline spill to the log when storage falls behind: instead of waiting
    /// (and so slowing every device), it keeps serving live views and reads the rows back
    /// from `backlog` once the writer has room. `state` tells others whether it is spilled.
    pub fn spill_to(&mut self, backlog: Box<dyn Backlog>, state: Arc<SpillState>) {
        self.backlog = Some(backlog);
        self.spill_state = state;
    }

    /// Gives this pipeline its part in cluster mode.
    pub fn play(&mut self, role: Role) {
        self.role = role;
    }

    /// Judges every stored document against geofences and alert rules; their events go into
    /// the batch that stores the document.
    pub fn judge_with(&mut self, judges: Judges) {
        self.judges = Some(judges);
    }

    /// Hands devices' replies to commands to `replies`.
    pub fn answer_replies_with(&mut self, replies: Arc<dyn Replies>) {
        self.replies = Some(replies);
    }

    /// Makes the replay of the log at start-up (oldest retained record first) rebuild the
    /// live history: records up to `stored`, which storage already holds, go to live views
    /// only; the rest to both, as usual.
    pub fn rebuild_live_through(&mut self, stored: u64) {
        self.rebuild = Some(Rebuild {
            through: stored,
            dedupe: Dedupe::default(),
        });
    }

    /// Takes one publish through every stage. `position` is its place in the write-ahead
    /// log, which the batch that stores it records.
    pub async fn handle(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        received_at: SystemTime,
        position: Option<u64>,
    ) {
        let (origin, path) = self.arrived(position, epoch_ms(received_at));
        self.process(topic, payload, origin, path);
        self.hand_off_if_full().await;
    }

    /// Takes a device's presence change (decided by the broker) at log `position`.
    pub async fn presence(
        &mut self,
        change: &PresenceChange,
        received_at: SystemTime,
        position: Option<u64>,
    ) {
        let (origin, path) = self.arrived(position, epoch_ms(received_at));
        self.take_presence(change, origin, path);
        self.hand_off_if_full().await;
    }

    /// Takes one record read back from the log (the replay at start-up).
    pub async fn replayed(&mut self, record: &Logged) {
        let (origin, path) = self.arrived(Some(record.position), record.received_ms);
        self.take(&record.entry, origin, path);
        self.hand_off_if_full().await;
    }

    /// A message at log `position`: where it came from, and where it goes.
    fn arrived(&mut self, position: Option<u64>, received_ms: i64) -> (Origin, Path) {
        let path = self.path_for(position);
        let origin = Origin {
            position,
            index: 0,
            received_ms,
        };
        (origin, path)
    }

    /// Where a message at log `position` goes, given how far storage and the replay are.
    fn path_for(&mut self, position: Option<u64>) -> Path {
        let Some(position) = position else {
            return Path::Both;
        };
        self.last_position = position;
        match self.role {
            Role::Single => {}
            Role::Mirror => return Path::Mirror,
            Role::Owner => {
                self.batch.cover(position);
                return Path::Owned;
            }
        }
        if let Some(rebuild) = &self.rebuild {
            if position <= rebuild.through {
                return Path::Rebuild;
            }
            // Past what storage holds: storage's own state goes on from here.
            self.rebuild = None;
        }
        if self.spill.is_some() {
            Path::LiveOnly
        } else {
            self.batch.cover(position);
            Path::Both
        }
    }

    fn take(&mut self, entry: &Entry, origin: Origin, path: Path) {
        match entry {
            Entry::Publish { topic, payload } => self.process(topic, payload, origin, path),
            Entry::Presence(change) => self.take_presence(change, origin, path),
            Entry::Unreadable => {}
        }
    }

    fn process(&mut self, topic: &[u8], payload: &[u8], origin: Origin, path: Path) {
        if path.counts() {
            self.counters.received.increment(1);
        }
        let received_ms = origin.received_ms;
        let topic = String::from_utf8_lossy(topic);
        let (device, kind) = match route(&topic) {
            Ok(Route::Data { device, kind }) => (device, kind),
            Ok(Route::Command) => return,
            Ok(Route::Reply { device, command }) => {
                // Also when the start-up replay rebuilds: recording a reply is idempotent, and
                // one acknowledged just before a crash is recorded then. A record read back
                // for storage was taken when it arrived.
                if matches!(path, Path::StoreOnly | Path::Mirror) {
                    return;
                }
                let taken = match &self.replies {
                    Some(replies) => replies.reply(device, command, payload),
                    None => Ok(()),
                };
                if let Err(rejection) = taken {
                    let device = self.device_ids.intern(device);
                    self.reject(
                        &rejection,
                        &topic,
                        Some(&device),
                        payload,
                        received_ms,
                        path,
                    );
                }
                return;
            }
            Err(rejection) => {
                self.reject(&rejection, &topic, None, payload, received_ms, path);
                return;
            }
        };
        let device = self.device_ids.intern(device);
        let decoded = decode(&device, kind, payload, received_ms, &self.settings.limits);
        for rejection in &decoded.rejections {
            self.reject(rejection, &topic, Some(&device), payload, received_ms, path);
        }
        for (index, doc) in decoded.documents.into_iter().enumerate() {
            if let Some(seq) = doc.seq {
                let device_ts = doc.device_ts.then_some(doc.ts_ms);
                let dedupe = match (&mut self.spill, path) {
                    (_, Path::Rebuild) => match &mut self.rebuild {
                        Some(rebuild) => &mut rebuild.dedupe,
                        None => &mut self.dedupe,
                    },
                    (Some(spill), Path::StoreOnly) => &mut spill.dedupe,
                    (Some(spill), Path::Both) => {
                        // Not in the log (a Last Will), stored now: the catch-up's state
                        // must know it too, or it would accept a later copy.
                        spill.dedupe.accept(&device, kind, seq, device_ts);
                        &mut self.dedupe
                    }
                    _ => &mut self.dedupe,
                };
                if !dedupe.accept(&device, kind, seq, device_ts) {
                    if path.counts() {
                        self.counters.duplicates[kind.index()].increment(1);
                    }
                    continue;
                }
            }
            if path.counts() {
                self.counters.accepted[kind.index()].increment(1);
            }
            self.accept(doc, origin.at(index), path);
        }
    }

    fn accept(&mut self, doc: Document, origin: Origin, path: Path) {
        let doc = Arc::new(doc);
        if path.stores() {
            batch::add_document(
                &mut self.batch,
                &doc,
                origin.received_ms,
                &mut self.metric_names,
            );
            if let Some(judges) = &mut self.judges {
                let before = self.batch.derived.events.len();
                judges.document(
                    &doc,
                    origin.position,
                    origin.received_ms,
                    &mut self.batch.derived,
                );
                note_pending(self.batch.derived.events.len() - before);
            }
        }
        if path.live() {
            self.live.publish(doc, origin);
        }
    }

    /// A device came online, or a connection ended: the device may be offline now (then
    /// with the reason, or `will` when its Last Will was on its own status topic), and a will
    /// on any other topic is ingested like a publish.
    fn take_presence(&mut self, change: &PresenceChange, origin: Origin, path: Path) {
        let received_ms = origin.received_ms;
        match change {
            PresenceChange::Online { device } => {
                let device = self.device_ids.intern(device);
                self.presence_change(device, None, true, "connect", origin, path);
            }
            PresenceChange::Ended {
                device,
                offline,
                reason,
                will,
            } => {
                let device = self.device_ids.intern(device);
                let (mut reason, mut seq) = (*reason, None);
                if let Some((topic, payload)) = will {
                    let status_topic = format!("devices/{device}/status");
                    if topic == status_topic.as_bytes() {
                        let decoded = decode(
                            &device,
                            Kind::Status,
                            payload,
                            received_ms,
                            &self.settings.limits,
                        );
                        for rejection in &decoded.rejections {
                            self.reject(
                                rejection,
                                &status_topic,
                                Some(&device),
                                payload,
                                received_ms,
                                path,
                            );
                        }
                        // The will was written at connect time: its seq is kept, but the
                        // offline status is dated when the connection ended.
                        if let Some(doc) = decoded.documents.last() {
                            (reason, seq) = ("will", doc.seq);
                        }
                    } else {
                        self.process(topic, payload, origin, path);
                    }
                }
                if *offline {
                    let last = Origin {
                        index: Origin::LAST_INDEX,
                        ..origin
                    };
                    self.presence_change(device, seq, false, reason, last, path);
                }
            }
        }
    }

    /// A status document dated when the broker saw the change.
    fn presence_change(
        &mut self,
        device: Arc<str>,
        seq: Option<u64>,
        online: bool,
        reason: &'static str,
        origin: Origin,
        path: Path,
    ) {
        if path.counts() {
            metrics::counter!("fieldline_device_presence_changes_total", "reason" => reason)
                .increment(1);
        }
        let doc = Document {
            device,
            ts_ms: origin.received_ms,
            device_ts: false,
            seq,
            body: Body::Status(Status {
                online,
                reason: Some(reason),
            }),
        };
        self.accept(doc, origin, path);
    }

    fn reject(
        &mut self,
        rejection: &Rejection,
        topic: &str,
        device: Option<&str>,
        payload: &[u8],
        received_ms: i64,
        path: Path,
    ) {
        let reason: Reason = rejection.reason;
        if path.counts() {
            metrics::counter!("fieldline_rejected_messages_total", "reason" => reason.as_str())
                .increment(1);
            tracing::debug!(topic, reason = reason.as_str(), detail = %rejection.detail, "rejected");
        }
        if path.stores() {
            batch::add_rejection(
                &mut self.batch,
                rejection,
                topic,
                device,
                payload,
                received_ms,
            );
        }
    }

    async fn hand_off_if_full(&mut self) {
        if self.batch.rows() >= self.settings.batch_rows {
            self.hand_off().await;
        }
    }

    /// Hands the batch over when it has waited long enough, and catches storage up from the
    /// log while it is behind; call this on a timer.
    pub async fn flush_if_due(&mut self) {
        if self.spill.is_some() {
            self.catch_up().await;
        }
        if let Some(judges) = &mut self.judges {
            let before = self.batch.derived.events.len();
            judges.tick(now_ms(), &mut self.batch.derived);
            if self.batch.derived.events.len() > before {
                note_pending(self.batch.derived.events.len() - before);
                self.batch.mark_started();
            }
        }
        let due = self
            .batch
            .started
            .is_some_and(|started| started.elapsed() >= self.settings.batch_age);
        if due {
            self.hand_off().await;
        }
    }

    /// Hands over whatever is gathered, waiting for the writer if it must; when spilled, first
    /// reads everything storage lacks back from the log.
    pub async fn flush(&mut self) {
        while let Some(from) = self.spill.as_ref().map(|s| s.from) {
            self.catch_up().await;
            if self.spill.is_none() {
                break;
            }
            if !self.batch.is_empty() {
                // The writer is busy: wait for it, then go on reading.
                let batch = std::mem::take(&mut self.batch);
                self.writer.send(batch).await;
            } else if self.spill.as_ref().is_some_and(|s| s.from == from) {
                // The log could not be read (logged): try again shortly.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.writer.send(batch).await;
        }
    }

    /// Hands over whatever is gathered and waits until storage has written it.
    pub async fn flush_and_wait_stored(&mut self) {
        self.flush().await;
        self.writer.written().await;
    }

    async fn hand_off(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let Some(batch) = self.writer.offer(batch) else {
            return;
        };
        if batch.rows() < self.settings.max_batch_rows || self.spill.is_some() {
            // The writer is busy: keep gathering, the next write will be larger. (While
            // spilled the batch holds only what the log does not: presence changes.)
            self.batch = batch;
            return;
        }
        if self.backlog.is_some() {
            // Storage is this far behind: stop holding rows in memory. Everything from the
            // next position on waits in the log, and is read back as the writer catches up.
            self.batch = batch;
            self.spill = Some(Spill {
                from: self.last_position + 1,
                dedupe: self.dedupe.clone(),
                since: Instant::now(),
            });
            self.spill_state.set(true);
            metrics::counter!("fieldline_pipeline_spills_total").increment(1);
            tracing::warn!(
                from = self.last_position + 1,
                "storage is behind: new data waits in the write-ahead log on disk and is stored once storage catches up; live views go on"
            );
            return;
        }
        metrics::counter!("fieldline_pipeline_writer_waits_total").increment(1);
        self.writer.send(batch).await;
    }

    /// One round of catching storage up: reads logged messages back into the batch while
    /// the writer takes batches, for at most [`CATCH_UP_ROUND`], so new messages keep
    /// flowing to live views meanwhile.
    async fn catch_up(&mut self) {
        let round = Instant::now();
        loop {
            if self.batch.rows() >= self.settings.batch_rows {
                self.hand_off().await;
                if !self.batch.is_empty() {
                    return; // the writer is still busy
                }
            }
            let Some(from) = self.spill.as_ref().map(|s| s.from) else {
                return;
            };
            if from > self.last_position {
                self.end_spill();
                return;
            }
            if round.elapsed() >= CATCH_UP_ROUND {
                return;
            }
            let Some(backlog) = self.backlog.as_mut() else {
                return;
            };
            let until = self.last_position;
            let read = tokio::task::block_in_place(|| backlog.read(from, until, CATCH_UP_CHUNK));
            let records = match read {
                Ok(records) if records.first().is_some_and(|r| r.position == from) => records,
                Ok(records) if !records.is_empty() => {
                    tracing::error!(
                        from,
                        got = records[0].position,
                        "the write-ahead log gave back records out of place; retrying"
                    );
                    return;
                }
                Ok(_) => {
                    tracing::error!(
                        from,
                        until,
                        "the write-ahead log has no record where storage needs one; retrying"
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, from, "cannot read the write-ahead log back for storage; retrying");
                    return;
                }
            };
            metrics::counter!("fieldline_pipeline_caught_up_records_total")
                .increment(records.len() as u64);
            for record in records {
                self.batch.cover(record.position);
                let origin = Origin {
                    position: Some(record.position),
                    index: 0,
                    received_ms: record.received_ms,
                };
                self.take(&record.entry, origin, Path::StoreOnly);
                if let Some(spill) = self.spill.as_mut() {
                    spill.from = record.position + 1;
                }
            }
        }
    }

    fn end_spill(&mut self) {
        if let Some(spill) = self.spill.take() {
            // Both paths have now seen the same messages: the live path's state goes on, and
            // the catch-up's copy goes with the spill.
            self.spill_state.set(false);
            tracing::info!(
                behind_s = spill.since.elapsed().as_secs(),
                "storage has caught up with the write-ahead log"
            );
        }
    }
}
