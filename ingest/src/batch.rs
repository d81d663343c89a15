//! Rows on their way to storage, gathered so the store writes them together.

use std::collections::HashMap;
use std::sync::Arc;

use crate::document::{Body, Document};
use crate::events::judges::Derived;
use crate::rejection::Rejection;

#[derive(Clone, Debug, PartialEq)]
pub struct PositionRow {
    pub device: Arc<str>,
    pub ts_ms: i64,
    pub seq: Option<u64>,
    pub lat: f64,
    pub lon: f64,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
    pub alt: Option<f64>,
    pub accuracy: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryRow {
    pub device: Arc<str>,
    pub ts_ms: i64,
    pub seq: Option<u64>,
    pub metric: Arc<str>,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StatusRow {
    pub device: Arc<str>,
    pub ts_ms: i64,
    pub seq: Option<u64>,
    pub online: bool,
    /// For presence changes, what caused them; see [`crate::document::Status::reason`].
    pub reason: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RejectedRow {
    pub received_ms: i64,
    pub topic: String,
    pub device: Option<String>,
    pub reason: &'static str,
    pub detail: String,
    pub payload_size: usize,
    /// The start of the payload, as text when it is text and as hex otherwise.
    pub payload_preview: String,
}

/// What one device's documents in this batch change in its summary row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceUpdate {
    /// Receive times of the device's first and last document in the batch.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The newest position in the batch.
    pub location: Option<PositionRow>,
    /// Each metric's newest (ts, value) in the batch.
    pub metrics: HashMap<Arc<str>, (i64, f64)>,
    /// Per kind (indexed by [`Kind::index`]), the seq and time of the newest document that
    /// had a seq: what de-duplication restarts from.
    pub last_seq: [Option<(u64, i64)>; 3],
    /// The device's connection state after this batch, when a connection started or ended.
    pub online: Option<bool>,
}

/// One write to storage.
#[derive(Debug, Default)]
pub struct Batch {
    pub positions: Vec<PositionRow>,
    pub telemetry: Vec<TelemetryRow>,
    pub statuses: Vec<StatusRow>,
    pub rejected: Vec<RejectedRow>,
    pub devices: HashMap<Arc<str>, DeviceUpdate>,
    /// Geofence and alert events these rows caused, and the states they changed: stored in
    /// the same transaction (the outbox).
    pub derived: Derived,
    /// Documents (not rows) in the batch, for metrics.
    pub documents: usize,
    /// The newest write-ahead log position whose message this batch (with the batches
    /// before it) covers: stored with the rows, in their transaction.
    pub log_position: Option<u64>,
    /// When the oldest entry was added, to flush by age.
    pub started: Option<std::time::Instant>,
}

const PREVIEW_BYTES: usize = 256;

impl Batch {
    /// Nothing to store. A batch whose messages were all duplicates still moves the log
    /// position, so it is not empty.
    pub fn is_empty(&self) -> bool {
        self.documents == 0
            && self.rejected.is_empty()
            && self.log_position.is_none()
            && self.derived.is_empty()
    }

    /// Records that this batch covers the log up to `position`.
    pub fn cover(&mut self, position: u64) {
        self.mark_started();
        self.log_position = Some(position);
    }

    /// Rows the store will write, for sizing decisions.
    pub fn rows(&self) -> usize {
        self.positions.len() + self.telemetry.len() + self.statuses.len() + self.rejected.len()
    }

    pub fn mark_started(&mut self) {
        self.started.get_or_insert_with(std::time::Instant::now);
    }

    pub fn push_document(&mut self, doc: &Document, received_ms: i64, metric_names: &mut Interner) {
        self.mark_started();
        self.documents += 1;
        let update = self
            .devices
            .entry(doc.device.clone())
            .or_insert_with(|| DeviceUpdate {
                first_seen_ms: received_ms,
                ..DeviceUpdate::default()
            });
        update.last_seen_ms = update.last_seen_ms.max(received_ms);
        if let Some(seq) = doc.seq {
            let slot = &mut update.last_seq[doc.kind().index()];
            if slot.is_none_or(|(_, ts)| ts <= doc.ts_ms) {
                *slot = Some((seq, doc.ts_ms));
            }
        }
        match &doc.body {
            Body::Location(l) => {
                let row = PositionRow {
                    device: doc.device.clone(),
                    ts_ms: doc.ts_ms,
                    seq: doc.seq,
                    lat: l.lat,
                    lon: l.lon,
                    speed: l.speed,
                    heading: l.heading,
                    alt: l.alt,
                    accuracy: l.accuracy,
                };
                if update
                    .location
                    .as_ref()
                    .is_none_or(|old| old.ts_ms <= row.ts_ms)
                {
                    update.location = Some(row.clone());
                }
                self.positions.push(row);
            }
            Body::Telemetry(t) => {
                for m in &t.metrics {
                    let metric = metric_names.intern(&m.name);
                    let newest = update
                        .metrics
                        .entry(metric.clone())
                        .or_insert((doc.ts_ms, m.value));
                    if newest.0 <= doc.ts_ms {
                        *newest = (doc.ts_ms, m.value);
                    }
                    self.telemetry.push(TelemetryRow {
                        device: doc.device.clone(),
                        ts_ms: doc.ts_ms,
                        seq: doc.seq,
                        metric,
                        value: m.value,
                    });
                }
            }
            Body::Status(s) => {
                if s.is_presence() {
                    update.online = Some(s.online);
                }
                self.statuses.push(StatusRow {
                    device: doc.device.clone(),
                    ts_ms: doc.ts_ms,
                    seq: doc.seq,
                    online: s.online,
                    reason: s.reason,
                });
            }
        }
    }

    pub fn push_rejection(
        &mut self,
        rejection: &Rejection,
        topic: &str,
        device: Option<&str>,
        payload: &[u8],
        received_ms: i64,
    ) {
        self.mark_started();
        let detail = match rejection.index {
            Some(i) => format!("document {i}: {}", rejection.detail),
            None => rejection.detail.clone(),
        };
        self.rejected.push(RejectedRow {
            received_ms,
            topic: storable_text(topic.chars().take(256)),
            device: device.map(str::to_owned),
            reason: rejection.reason.as_str(),
            detail: storable_text(detail.chars()),
            payload_size: payload.len(),
            payload_preview: storable_text(preview(payload).chars()),
        });
    }
}

/// Shares one allocation per distinct name (device ids, metric names) across rows.
#[derive(Default)]
pub struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    pub fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.0.get(name) {
            return found.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.0.insert(name.clone());
        name
    }
}

/// Text a device chose, made storable: PostgreSQL text cannot hold NUL, and one such row would
/// fail its whole batch on every retry.
fn storable_text(chars: impl Iterator<Item = char>) -> String {
    chars
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect()
}

fn preview(payload: &[u8]) -> String {
    let head = &payload[..payload.len().min(PREVIEW_BYTES)];
    match std::str::from_utf8(head) {
        Ok(text) => text.to_owned(),
        // Cut inside a multi-byte character: keep the valid part.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
            String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned()
        }
        Err(_) => {
            let hex: String = head.iter().take(64).map(|b| format!("{b:02x}")).collect();
            format!("hex:{hex}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::Reason;

    #[test]
    fn rejected_rows_never_carry_nul_and_previews_stay_short() {
        let mut batch = Batch::default();
        let rejection = Rejection::new(Reason::InvalidJson, "bad \0 detail").at(2);
        batch.push_rejection(
            &rejection,
            "devices/a\0b/location",
            None,
            b"{\"x\":\"\0\"",
            0,
        );
        batch.push_rejection(&rejection, "t", None, &[0xc1; 4096], 0);
        let (text, binary) = (&batch.rejected[0], &batch.rejected[1]);
        assert!(!format!("{}{}{}", text.topic, text.detail, text.payload_preview).contains('\0'));
        assert_eq!(text.detail, "document 2: bad \u{FFFD} detail");
        assert_eq!(binary.payload_preview, format!("hex:{}", "c1".repeat(64)));
        assert_eq!(binary.payload_size, 4096);
    }
}
