//! What the judges derive from accepted documents, as storage keeps it: geofence and alert
//! events (written in the batch's transaction, the outbox) and each device's state with each
//! fence and rule.

use std::collections::HashMap;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::time_format::format_ms;

/// The kinds of stored event, as live streams and the API name them: what the judges derive
/// (geofence, alert), the alarms they open, and the command ledger's moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Geofence,
    Alert,
    Command,
    Alarm,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Geofence,
        EventKind::Alert,
        EventKind::Command,
        EventKind::Alarm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Geofence => "geofence",
            EventKind::Alert => "alert",
            EventKind::Command => "command",
            EventKind::Alarm => "alarm",
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

/// What a state is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Geofence(i64),
    Rule(i64),
}

impl Subject {
    pub fn kind(self) -> &'static str {
        match self {
            Subject::Geofence(_) => "geofence",
            Subject::Rule(_) => "rule",
        }
    }

    pub fn id(self) -> i64 {
        match self {
            Subject::Geofence(id) | Subject::Rule(id) => id,
        }
    }

    pub fn from_parts(kind: &str, id: i64) -> Option<Subject> {
        match kind {
            "geofence" => Some(Subject::Geofence(id)),
            "rule" => Some(Subject::Rule(id)),
            _ => None,
        }
    }
}

/// One device's state with one fence or rule, as stored: `active` is inside (a fence) or
/// raised (a rule), `since_ms` when that began, `state` the whole state as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredState {
    pub device: Arc<str>,
    pub subject: Subject,
    pub active: bool,
    pub since_ms: i64,
    pub state: String,
}

/// What the judges decided for one batch.
#[derive(Debug, Default)]
pub struct Derived {
    pub events: Vec<Event>,
    /// The newest state of each (device, subject) changed; `None`: back to idle, delete it.
    pub states: HashMap<(Arc<str>, Subject), Option<StoredState>>,
}

impl Derived {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.states.is_empty()
    }
}

/// What storage holds for the judges at start-up.
#[derive(Debug, Default)]
pub struct JudgeSeed {
    pub states: Vec<StoredState>,
    /// Each device's newest stored fix time: an older fix is late.
    pub newest_fix_ms: Vec<(String, i64)>,
}
