//! One live event and its wire forms. Each event is serialized at most once per format, on
//! first use, and the bytes are shared by every client that receives it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use fieldline_ingest::document::{Body, Document, Kind};
use fieldline_store::derived::Event;
use fieldline_store::time_format::format_ms;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::position::Position;

/// What an event carries: a device's document, or a geofence or alert event derived from
/// documents (published once stored).
pub enum Payload {
    Document(Arc<Document>),
    Derived(Arc<Event>),
}

pub struct LiveEvent {
    pub position: Position,
    pub payload: Payload,
    /// When the broker received it (ms since 1970), for the history's age limit: the same
    /// whether the event is live or rebuilt from the log after a restart.
    pub(crate) received_ms: i64,
    /// The device's newest known position when the event was published, so bounding-box
    /// filters give the same answer live and on replay.
    pub(crate) device_position: Option<(f64, f64)>,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
}

impl LiveEvent {
    pub(crate) fn new(
        position: Position,
        payload: Payload,
        device_position: Option<(f64, f64)>,
        received_ms: i64,
    ) -> Self {
        Self {
            position,
            payload,
            received_ms,
            device_position,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    /// `location`, `telemetry`, `status`, `geofence`, `alert` or `command`.
    pub fn kind(&self) -> &'static str {
        self.payload.kind()
    }

    pub fn device(&self) -> &str {
        match &self.payload {
            Payload::Document(d) => &d.device,
            Payload::Derived(e) => &e.device,
        }
    }

    /// A position just before this event: a client there has not seen it yet.
    pub fn position_before(&self) -> Position {
        let mut p = self.position;
        match self.payload {
            Payload::Document(_) => p.offset = p.offset.saturating_sub(1),
            Payload::Derived(_) => p.outbox = p.outbox.saturating_sub(1),
        }
        p
    }

    /// The same event under another position (a resumed client's own, see the hub).
    pub(crate) fn at(&self, position: Position) -> LiveEvent {
        let payload = match &self.payload {
            Payload::Document(d) => Payload::Document(d.clone()),
            Payload::Derived(e) => Payload::Derived(e.clone()),
        };
        LiveEvent::new(position, payload, self.device_position, self.received_ms)
    }

    /// Whether a client at `since` has seen this event: its own cursor is no further.
    pub(crate) fn seen_at(&self, since: &Position) -> bool {
        match self.payload {
            Payload::Document(_) => self.position.offset <= since.offset,
            Payload::Derived(_) => self.position.outbox <= since.outbox,
        }
    }

    /// The document, for events that carry one.
    pub fn document(&self) -> Option<&Document> {
        match &self.payload {
            Payload::Document(d) => Some(d),
            Payload::Derived(_) => None,
        }
    }

    /// Location and telemetry may be conflated for a lagging client; other kinds never.
    pub fn conflatable(&self) -> bool {
        self.document()
            .is_some_and(|d| matches!(d.kind(), Kind::Location | Kind::Telemetry))
    }

    /// The event as a JSON object; `skipped` is added when earlier events were conflated away.
    pub fn json(&self, skipped: u64) -> Bytes {
        if skipped > 0 {
            return Bytes::from(self.to_json(skipped));
        }
        self.json
            .get_or_init(|| Bytes::from(self.to_json(0)))
            .clone()
    }

    /// The same fields as a MessagePack map.
    pub fn msgpack(&self, skipped: u64) -> Bytes {
        if skipped > 0 {
            return Bytes::from(self.to_msgpack(skipped));
        }
        self.msgpack
            .get_or_init(|| Bytes::from(self.to_msgpack(0)))
            .clone()
    }

    fn to_json(&self, skipped: u64) -> Vec<u8> {
        self.payload.to_json(&self.position.to_string(), skipped)
    }

    fn to_msgpack(&self, skipped: u64) -> Vec<u8> {
        self.payload.to_msgpack(&self.position.to_string(), skipped)
    }
}

impl Payload {
    /// `location`, `telemetry`, `status`, `geofence`, `alert` or `command`.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Document(d) => d.kind().as_str(),
            Payload::Derived(e) => e.kind.as_str(),
        }
    }

    /// The contract's event object under `id`: live events and replayed ones share it.
    pub fn to_json(&self, id: &str, skipped: u64) -> Vec<u8> {
        // Serializing plain numbers and strings into a Vec cannot fail; NaN never gets here
        // (ingest rejects it), and serde_json writes null for it anyway.
        serde_json::to_vec(&Wire {
            payload: self,
            id,
            skipped,
        })
        .unwrap_or_default()
    }

    /// The same fields as a MessagePack map.
    pub fn to_msgpack(&self, id: &str, skipped: u64) -> Vec<u8> {
        rmp_serde::to_vec_named(&Wire {
            payload: self,
            id,
            skipped,
        })
        .unwrap_or_default()
    }
}

/// The contract's event object: `kind`, `id`, `device`, `ts`, then the document's fields.
struct Wire<'a> {
    payload: &'a Payload,
    id: &'a str,
    skipped: u64,
}

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let doc = match self.payload {
            Payload::Document(doc) => doc,
            Payload::Derived(event) => {
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("kind", event.kind.as_str())?;
                map.serialize_entry("id", self.id)?;
                map.serialize_entry("device", &*event.device)?;
                map.serialize_entry("ts", &format_ms(event.ts_ms))?;
                map.serialize_entry("seq", &event.seq)?;
                for (k, v) in &event.fields {
                    map.serialize_entry(k, v)?;
                }
                return map.end();
            }
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", doc.kind().as_str())?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("device", &*doc.device)?;
        map.serialize_entry("ts", &format_ms(doc.ts_ms))?;
        if let Some(seq) = doc.seq {
            map.serialize_entry("seq", &seq)?;
        }
        match &doc.body {
            Body::Location(l) => {
                map.serialize_entry("lat", &l.lat)?;
                map.serialize_entry("lon", &l.lon)?;
                map.serialize_entry("speed", &l.speed)?;
                map.serialize_entry("heading", &l.heading)?;
                map.serialize_entry("alt", &l.alt)?;
                map.serialize_entry("accuracy", &l.accuracy)?;
            }
            Body::Telemetry(t) => map.serialize_entry("metrics", &Metrics(&t.metrics))?,
            Body::Status(s) => {
                map.serialize_entry("online", &s.online)?;
                if let Some(reason) = s.reason.filter(|_| !s.online) {
                    map.serialize_entry("reason", reason)?;
                }
            }
        }
        if self.skipped > 0 {
            map.serialize_entry("skipped", &self.skipped)?;
        }
        map.end()
    }
}

struct Metrics<'a>(&'a [fieldline_ingest::document::Metric]);

impl Serialize for Metrics<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for m in self.0 {
            map.serialize_entry(&m.name, &m.value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_ingest::document::{Location, Metric, Status, Telemetry};

    fn event(body: Body, seq: Option<u64>) -> LiveEvent {
        LiveEvent::new(
            Position {
                epoch: 0xabc,
                offset: 7,
                outbox: 0,
            },
            Payload::Document(Arc::new(Document {
                device: Arc::from("truck-1"),
                ts_ms: 1_764_072_000_123,
                device_ts: true,
                seq,
                body,
            })),
            None,
            1_764_072_000_500,
        )
    }

    #[test]
    fn location_carries_every_field_of_the_contract() {
        let e = event(
            Body::Location(Location {
                lat: 40.5,
                lon: -74.25,
                speed: Some(12.5),
                heading: None,
                alt: None,
                accuracy: Some(4.0),
            }),
            Some(43),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.json(0)).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({"kind": "location", "id": "abc-7", "device": "truck-1",
                "ts": "2025-11-25T12:00:00.123Z", "seq": 43, "lat": 40.5, "lon": -74.25,
                "speed": 12.5, "heading": null, "alt": null, "accuracy": 4.0})
        );
        let conflated: serde_json::Value = serde_json::from_slice(&e.json(5)).expect("valid JSON");
        assert_eq!(conflated["skipped"], 5);
        let from_msgpack: serde_json::Value =
            rmp_serde::from_slice(&e.msgpack(0)).expect("valid MessagePack");
        assert_eq!(from_msgpack, v, "both formats carry the same fields");
    }

    #[test]
    fn telemetry_and_status_shapes() {
        let t = event(
            Body::Telemetry(Telemetry {
                metrics: vec![Metric {
                    name: "temp_c".into(),
                    value: 21.5,
                }],
            }),
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&t.json(0)).expect("valid JSON");
        assert_eq!(v["metrics"], serde_json::json!({"temp_c": 21.5}));
        assert!(v.get("seq").is_none(), "no seq when the device sent none");
        let s = event(
            Body::Status(Status {
                online: false,
                reason: Some("keepalive"),
            }),
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&s.json(0)).expect("valid JSON");
        assert_eq!(v["online"], false);
        assert_eq!(v["reason"], "keepalive");
    }
}
