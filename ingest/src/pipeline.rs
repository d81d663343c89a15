//! The pipeline stage between the broker and the writer: route, decode, validate, de-duplicate,
//! and gather rows into batches.
//!
//! Every accepted document goes to the live feed the moment it is accepted, and into the batch.
//! It runs on one task and never waits on the database while it has room: when the writer is
//! busy the current batch keeps growing, up to `max_batch_rows`; only then does it wait, which
//! in turn makes the broker stop reading from sockets.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::batch::{Batch, Interner};
use crate::decode::{decode, Limits};
use crate::dedupe::Dedupe;
use crate::document::{Body, Document, Kind, Status};
use crate::live::LiveFeed;
use crate::presence::{device_of, Presence};
use crate::rejection::{Reason, Rejection};
use crate::store::StreamSeq;
use crate::time_format::{epoch_ms, now_ms};
use crate::topic::{route, Route};
use crate::writer::WriterHandle;

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
    online: metrics::Gauge,
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
            online: metrics::gauge!("fieldline_devices_online"),
        }
    }
}

pub struct Pipeline {
    settings: PipelineSettings,
    counters: Counters,
    writer: WriterHandle,
    live: Arc<dyn LiveFeed>,
    presence: Presence,
    dedupe: Dedupe,
    device_ids: Interner,
    metric_names: Interner,
    batch: Batch,
}

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
            presence: Presence::default(),
            dedupe: Dedupe::default(),
            device_ids: Interner::default(),
            metric_names: Interner::default(),
            batch: Batch::default(),
        };
        for seed in seeds {
            let device = pipeline.device_ids.intern(&seed.device);
            pipeline
                .dedupe
                .seed(device, seed.kind, seed.seq, seed.ts_ms);
        }
        pipeline
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
        self.counters.received.increment(1);
        if let Some(position) = position {
            self.batch.cover(position);
        }
        let received_ms = epoch_ms(received_at);
        let topic = String::from_utf8_lossy(topic);
        let (device, kind) = match route(&topic) {
            Ok(Route::Data { device, kind }) => (device, kind),
            Ok(Route::Command) => return,
            Err(rejection) => {
                self.reject(&rejection, &topic, None, payload, received_ms);
                return self.hand_off_if_full().await;
            }
        };
        let device = self.device_ids.intern(device);
        let decoded = decode(&device, kind, payload, received_ms, &self.settings.limits);
        for rejection in &decoded.rejections {
            self.reject(rejection, &topic, Some(&device), payload, received_ms);
        }
        for doc in decoded.documents {
            if let Some(seq) = doc.seq {
                let device_ts = doc.device_ts.then_some(doc.ts_ms);
                if !self.dedupe.accept(&device, kind, seq, device_ts) {
                    self.counters.duplicates[kind.index()].increment(1);
                    continue;
                }
            }
            self.counters.accepted[kind.index()].increment(1);
            self.accept(doc, received_ms);
        }
        self.hand_off_if_full().await;
    }

    fn accept(&mut self, doc: Document, received_ms: i64) {
        let doc = Arc::new(doc);
        self.batch
            .push_document(&doc, received_ms, &mut self.metric_names);
        self.live.publish(doc);
    }

    /// The broker accepted a connection: its device is online.
    pub async fn connected(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        connection: u64,
        at: SystemTime,
    ) {
        let Some(device) = device_of(username, client_id) else {
            return;
        };
        let device = self.device_ids.intern(device);
        if self.presence.connected(&device, connection) {
            self.presence_change(device, epoch_ms(at), None, true, "connect");
            self.hand_off_if_full().await;
        }
    }

    /// A connection ended. When it was its device's current one the device goes offline;
    /// a Last Will the connection left on its own status topic becomes that offline status
    /// (reason `will`), and a will on any other topic is ingested like a publish.
    pub async fn disconnected(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        connection: u64,
        reason: &'static str,
        will: Option<(&[u8], &[u8])>,
        at: SystemTime,
    ) {
        let Some(device) = device_of(username, client_id) else {
            return;
        };
        let device = self.device_ids.intern(device);
        let received_ms = epoch_ms(at);
        let (mut reason, mut seq) = (reason, None);
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
                    );
                }
                // The will was written at connect time: its seq is kept, but the offline
                // status is dated when the connection ended.
                if let Some(doc) = decoded.documents.last() {
                    (reason, seq) = ("will", doc.seq);
                }
            } else {
                self.handle(topic, payload, at, None).await;
            }
        }
        if self.presence.disconnected(&device, connection) {
            self.presence_change(device, received_ms, seq, false, reason);
            self.hand_off_if_full().await;
        }
    }

    fn presence_change(
        &mut self,
        device: Arc<str>,
        ts_ms: i64,
        seq: Option<u64>,
        online: bool,
        reason: &'static str,
    ) {
        metrics::counter!("fieldline_device_presence_changes_total", "reason" => reason)
            .increment(1);
        self.counters
            .online
            .set(self.presence.online_devices() as f64);
        let doc = Document {
            device,
            ts_ms,
            device_ts: false,
            seq,
            body: Body::Status(Status {
                online,
                reason: Some(reason),
            }),
        };
        self.accept(doc, now_ms());
    }

    fn reject(
        &mut self,
        rejection: &Rejection,
        topic: &str,
        device: Option<&str>,
        payload: &[u8],
        received_ms: i64,
    ) {
        let reason: Reason = rejection.reason;
        metrics::counter!("fieldline_rejected_messages_total", "reason" => reason.as_str())
            .increment(1);
        tracing::debug!(topic, reason = reason.as_str(), detail = %rejection.detail, "rejected");
        self.batch
            .push_rejection(rejection, topic, device, payload, received_ms);
    }

    async fn hand_off_if_full(&mut self) {
        if self.batch.rows() >= self.settings.batch_rows {
            self.hand_off().await;
        }
    }

    /// Hands the batch over when it has waited long enough; call this on a timer.
    pub async fn flush_if_due(&mut self) {
        let due = self
            .batch
            .started
            .is_some_and(|started| started.elapsed() >= self.settings.batch_age);
        if due {
            self.hand_off().await;
        }
    }

    /// Hands over whatever is gathered, waiting for the writer if it must.
    pub async fn flush(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.writer.send(batch).await;
        }
    }

    async fn hand_off(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let Some(batch) = self.writer.offer(batch) else {
            return;
        };
        if batch.rows() < self.settings.max_batch_rows {
            // The writer is busy: keep gathering, the next write will be larger.
            self.batch = batch;
        } else {
            metrics::counter!("fieldline_pipeline_writer_waits_total").increment(1);
            self.writer.send(batch).await;
        }
    }
}
