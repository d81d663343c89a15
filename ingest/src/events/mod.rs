//! Derived events: the geofence and alert facts that accepted documents cause, judged on the
//! storage path ([`judges`]), written in the same transaction as the batch that caused them
//! (a transactional outbox), and handed to live views and webhooks only after that commit
//! ([`EventFeed`]).

pub mod catalog;
pub mod devices;
pub mod judges;

use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::time_format::format_ms;

/// The two kinds of derived event, as live streams and the API name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Geofence,
    Alert,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::Geofence, EventKind::Alert];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Geofence => "geofence",
            EventKind::Alert => "alert",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One derived event. `fields` are the kind's own (`geofence`, `name`, `event`, `lat`, `lon`
/// for a geofence event; `rule`, `name`, `state`, `metric`, `value` for an alert).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Its place in the outbox: 1, 2, 3, ... in commit order; 0 until stored.
    pub seq: u64,
    pub kind: EventKind,
    pub device: Arc<str>,
    /// Device time of the fix or reading it is about (server time for an offline alert).
    pub ts_ms: i64,
    /// The write-ahead log record whose document caused it, when there is one.
    pub log_position: Option<u64>,
    pub fields: Map<String, Value>,
    /// When storage took it (ms since 1970); 0 until stored. Webhooks retry for 24 h from it.
    pub stored_ms: i64,
}

impl Event {
    /// The fields as stored: a JSON object.
    pub fn fields_json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }
}

/// The public form: `seq`, `kind`, `device`, `ts`, then the kind's fields.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4 + self.fields.len()))?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("kind", self.kind.as_str())?;
        map.serialize_entry("device", &*self.device)?;
        map.serialize_entry("ts", &format_ms(self.ts_ms))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Where committed events go: called by the store writer after the commit that stored them,
/// in outbox order. Must return at once.
pub trait EventFeed: Send + Sync {
    fn committed(&self, events: &[Arc<Event>]);
}

/// Several feeds, each given every event (live views and webhooks).
pub struct EventFeeds(pub Vec<Arc<dyn EventFeed>>);

impl EventFeed for EventFeeds {
    fn committed(&self, events: &[Arc<Event>]) {
        for feed in &self.0 {
            feed.committed(events);
        }
    }
}
