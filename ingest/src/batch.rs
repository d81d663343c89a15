//! Gathering a batch: accepted documents become the rows storage writes, rejections the
//! rows that say why.

use std::sync::Arc;

use fieldline_store::batch::{
    Batch, DeviceUpdate, PositionRow, RejectedRow, StatusRow, TelemetryRow,
};

use crate::document::{Body, Document};
use crate::rejection::Rejection;

const PREVIEW_BYTES: usize = 256;

/// Adds an accepted document's rows and what it changes in its device's summary.
pub fn add_document(
    batch: &mut Batch,
    doc: &Document,
    received_ms: i64,
    metric_names: &mut Interner,
) {
    batch.mark_started();
    batch.documents += 1;
    let update = batch
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
                location: *l,
            };
            if update
                .location
                .as_ref()
                .is_none_or(|old| old.ts_ms <= row.ts_ms)
            {
                update.location = Some(row.clone());
            }
            batch.positions.push(row);
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
                batch.telemetry.push(TelemetryRow {
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
            batch.statuses.push(StatusRow {
                device: doc.device.clone(),
                ts_ms: doc.ts_ms,
                seq: doc.seq,
                online: s.online,
                reason: s.reason,
            });
        }
    }
}

/// Adds a rejected message, made storable (no NUL, a short preview of its payload).
pub fn add_rejection(
    batch: &mut Batch,
    rejection: &Rejection,
    topic: &str,
    device: Option<&str>,
    payload: &[u8],
    received_ms: i64,
) {
    batch.mark_started();
    let detail = match rejection.index {
        Some(i) => format!("document {i}: {}", rejection.detail),
        None => rejection.detail.clone(),
    };
    batch.rejected.push(RejectedRow {
        received_ms,
        topic: storable_text(topic.chars().take(256)),
        device: device.map(str::to_owned),
        reason: rejection.reason.as_str(),
        detail: storable_text(detail.chars()),
        payload_size: payload.len(),
        payload_preview: storable_text(preview(payload).chars()),
    });
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
        add_rejection(
            &mut batch,
            &rejection,
            "devices/a\0b/location",
            None,
            b"{\"x\":\"\0\"",
            0,
        );
        add_rejection(&mut batch, &rejection, "t", None, &[0xc1; 4096], 0);
        let (text, binary) = (&batch.rejected[0], &batch.rejected[1]);
        assert!(!format!("{}{}{}", text.topic, text.detail, text.payload_preview).contains('\0'));
        assert_eq!(text.detail, "document 2: bad \u{FFFD} detail");
        assert_eq!(binary.payload_preview, format!("hex:{}", "c1".repeat(64)));
        assert_eq!(binary.payload_size, 4096);
    }
}
