//! Replay of stored history: what a replay asks for, checked the same way for SSE and
//! WebSocket; `source` merges the stored kinds of several devices in time order, reading a
//! chunk at a time, and `player` paces them (speed, pause, seek, gaps, clock ticks).

mod player;
mod source;

use std::fmt;

use fieldline_ingest::document::is_valid_name;
use fieldline_store::time_format::format_ms;

pub use player::{Output, Player};

/// Most devices one replay merges: each costs a chunk of each kind in memory.
pub const MAX_DEVICES: usize = 100;
/// Slowest and fastest paced speeds; `max` is unpaced.
pub const MIN_SPEED: f64 = 0.1;
pub const MAX_SPEED: f64 = 1000.0;

/// The stored kinds, in the order a replay sends items that share a timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplayKind {
    Location,
    Telemetry,
    Status,
    Geofence,
    Alert,
}

impl ReplayKind {
    pub const ALL: [ReplayKind; 5] = [
        ReplayKind::Location,
        ReplayKind::Telemetry,
        ReplayKind::Status,
        ReplayKind::Geofence,
        ReplayKind::Alert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplayKind::Location => "location",
            ReplayKind::Telemetry => "telemetry",
            ReplayKind::Status => "status",
            ReplayKind::Geofence => "geofence",
            ReplayKind::Alert => "alert",
        }
    }

    fn parse(name: &str) -> Option<ReplayKind> {
        ReplayKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// How fast replay time runs against wall time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    Times(f64),
    /// As fast as the client reads.
    Max,
}

impl Speed {
    pub fn parse(text: &str) -> Result<Speed, RequestError> {
        let text = text.trim();
        if text == "max" {
            return Ok(Speed::Max);
        }
        match text.parse::<f64>() {
            Ok(s) => Speed::times(s),
            Err(_) => Err(RequestError::Speed),
        }
    }

    pub fn times(speed: f64) -> Result<Speed, RequestError> {
        if (MIN_SPEED..=MAX_SPEED).contains(&speed) {
            Ok(Speed::Times(speed))
        } else {
            Err(RequestError::Speed)
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        match self {
            Speed::Times(s) => serde_json::json!(s),
            Speed::Max => serde_json::json!("max"),
        }
    }
}

/// A checked replay request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Sorted and without repeats: the order ties between devices are sent in.
    pub devices: Vec<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub speed: Speed,
    /// Sorted, without repeats; all kinds when the request named none.
    pub kinds: Vec<ReplayKind>,
    /// Quiet stretches longer than this (ms) are jumped over.
    pub skip_gaps_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("devices must name 1 to {MAX_DEVICES} devices, comma-separated")]
    DeviceCount,
    #[error("device id must be 1 to 64 characters from [A-Za-z0-9_.-]")]
    DeviceId,
    #[error("from and to are required, RFC 3339 or epoch milliseconds")]
    Time,
    #[error("from must be before to")]
    Order,
    #[error("speed must be {MIN_SPEED} to {MAX_SPEED}, or max")]
    Speed,
    #[error("unknown kind {0:?}: kinds are location, telemetry, status, geofence, alert")]
    Kind(String),
    #[error("skip_gaps must be a whole number of seconds, at least 1")]
    SkipGaps,
    #[error("seek ts must be RFC 3339 or epoch milliseconds within the replay's range")]
    Seek,
}

impl Request {
    /// Checks a request given as lists of names (WebSocket) or split query values (SSE).
    pub fn new(
        devices: &[&str],
        from: Option<&str>,
        to: Option<&str>,
        speed: Speed,
        kinds: &[&str],
        skip_gaps_s: Option<i64>,
    ) -> Result<Request, RequestError> {
        let mut devices: Vec<String> = devices
            .iter()
            .map(|d| d.trim())
            .filter(|d| !d.is_empty())
            .map(|d| {
                if is_valid_name(d) {
                    Ok(d.to_owned())
                } else {
                    Err(RequestError::DeviceId)
                }
            })
            .collect::<Result<_, _>>()?;
        devices.sort();
        devices.dedup();
        if devices.is_empty() || devices.len() > MAX_DEVICES {
            return Err(RequestError::DeviceCount);
        }
        let time = |t: Option<&str>| {
            t.and_then(fieldline_store::time_format::parse_api_time)
                .ok_or(RequestError::Time)
        };
        let (from_ms, to_ms) = (time(from)?, time(to)?);
        if from_ms >= to_ms {
            return Err(RequestError::Order);
        }
        let mut kinds = kinds
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| ReplayKind::parse(k).ok_or_else(|| RequestError::Kind(truncated(k))))
            .collect::<Result<Vec<_>, _>>()?;
        if kinds.is_empty() {
            kinds = ReplayKind::ALL.to_vec();
        }
        kinds.sort();
        kinds.dedup();
        let skip_gaps_ms = match skip_gaps_s {
            None => None,
            Some(s) if (1..=i64::MAX / 1000).contains(&s) => Some(s * 1000),
            Some(_) => return Err(RequestError::SkipGaps),
        };
        Ok(Request {
            devices,
            from_ms,
            to_ms,
            speed,
            kinds,
            skip_gaps_ms,
        })
    }

    /// What the stream opens with: the range, devices, kinds and speed it plays.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "devices": self.devices,
            "from": format_ms(self.from_ms),
            "to": format_ms(self.to_ms),
            "speed": self.speed.to_json(),
            "kinds": self.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "skip_gaps": self.skip_gaps_ms.map(|ms| ms / 1000),
        })
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(32).collect()
}

/// An item's place in a replay: its time, and how many items with that same time come
/// before it. The order of such items is fixed (kind, device, then storage order), so the
/// place means the same on every run over the same data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub ts_ms: i64,
    pub index: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ts_ms, self.index)
    }
}

impl std::str::FromStr for Place {
    type Err = ();

    fn from_str(s: &str) -> Result<Place, ()> {
        // A negative time (before 1970) starts with '-': split at the last '-'.
        let (ts, index) = s.trim().rsplit_once('-').ok_or(())?;
        Ok(Place {
            ts_ms: ts.parse().map_err(|_| ())?,
            index: index.parse().map_err(|_| ())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        devices: &[&str],
        from: &str,
        to: &str,
        kinds: &[&str],
    ) -> Result<Request, RequestError> {
        Request::new(devices, Some(from), Some(to), Speed::Max, kinds, None)
    }

    #[test]
    fn requests_are_checked_with_reasons() {
        let ok = request(&["b", "a", "b"], "1000", "2000", &[]).expect("valid");
        assert_eq!(ok.devices, ["a", "b"]);
        assert_eq!(ok.kinds, ReplayKind::ALL);
        assert_eq!(
            request(&["a"], "2000", "1000", &[]),
            Err(RequestError::Order)
        );
        assert_eq!(
            request(&["a"], "1000", "1000", &[]),
            Err(RequestError::Order)
        );
        assert_eq!(
            request(&[], "1000", "2000", &[]),
            Err(RequestError::DeviceCount)
        );
        let many: Vec<String> = (0..=MAX_DEVICES).map(|i| format!("d{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            request(&many, "1000", "2000", &[]),
            Err(RequestError::DeviceCount)
        );
        assert_eq!(
            request(&["a b"], "1000", "2000", &[]),
            Err(RequestError::DeviceId)
        );
        assert_eq!(
            request(&["a"], "1000", "2000", &["location", "smell"]),
            Err(RequestError::Kind("smell".into()))
        );
        assert_eq!(
            request(&["a"], "soon", "2000", &[]),
            Err(RequestError::Time)
        );
        assert_eq!(Speed::parse("0"), Err(RequestError::Speed));
        assert_eq!(Speed::parse("5000"), Err(RequestError::Speed));
        assert_eq!(Speed::parse("NaN"), Err(RequestError::Speed));
        assert_eq!(Speed::parse("max"), Ok(Speed::Max));
        assert_eq!(Speed::parse("0.1"), Ok(Speed::Times(0.1)));
    }

    #[test]
    fn places_round_trip_and_reject_garbage() {
        for place in [
            Place {
                ts_ms: 1_764_072_000_123,
                index: 0,
            },
            Place {
                ts_ms: -5,
                index: 7,
            },
        ] {
            assert_eq!(place.to_string().parse::<Place>(), Ok(place));
        }
        for bad in ["", "x-1", "12", "12-", "12-x", "abc-7-"] {
            assert!(bad.parse::<Place>().is_err(), "{bad}");
        }
    }
}
