//! Documents as devices send them, in JSON or MessagePack.

use clap::ValueEnum;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Encoding {
    Json,
    Msgpack,
}

#[derive(Serialize, Clone)]
pub struct Fix {
    pub ts: i64,
    pub seq: u64,
    pub lat: f64,
    pub lon: f64,
    pub speed: f64,
    pub heading: f64,
    /// Metres; left out when `None`, so simulators that do not model it send what they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

/// Metric names are borrowed: a simulator names its metrics once, not in every reading.
#[derive(Serialize, Clone)]
pub struct Reading<'a> {
    pub ts: i64,
    pub seq: u64,
    pub metrics: std::collections::BTreeMap<&'a str, f64>,
}

/// One document, or the batch as an array.
pub fn encode<T: Serialize>(docs: &[T], encoding: Encoding) -> anyhow::Result<Vec<u8>> {
    Ok(match (encoding, docs) {
        (Encoding::Json, [one]) => serde_json::to_vec(one)?,
        (Encoding::Json, many) => serde_json::to_vec(many)?,
        (Encoding::Msgpack, [one]) => rmp_serde::to_vec_named(one)?,
        (Encoding::Msgpack, many) => rmp_serde::to_vec_named(many)?,
    })
}

/// A time from the command line or an event: epoch milliseconds, or RFC 3339 (as Fieldline
/// takes both).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is neither epoch milliseconds nor RFC 3339: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("{s:?} is out of range"))
}

/// Epoch milliseconds as RFC 3339 in UTC, for reports (the epoch number when out of range).
pub fn format_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Encodes and publishes; `false` once the connection is gone (the simulator then stops).
pub async fn publish<T: Serialize>(
    client: &AsyncClient,
    topic: &str,
    qos: QoS,
    docs: &[T],
    encoding: Encoding,
) -> bool {
    match encode(docs, encoding) {
        Ok(payload) => client.publish(topic, qos, false, payload).await.is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_both_ways() {
        assert_eq!(
            parse_time("2025-11-25T12:00:00.123Z"),
            Ok(1_764_072_000_123)
        );
        assert_eq!(
            parse_time("2025-11-25T13:00:00.123+01:00"),
            Ok(1_764_072_000_123)
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time(" 1764072000123"), Ok(1_764_072_000_123));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(format_time(1_764_072_000_123), "2025-11-25T12:00:00.123Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    }
}
