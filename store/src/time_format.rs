//! Times in and out of the public interface: epoch milliseconds and RFC 3339.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Unix epoch milliseconds of `t` (0 before 1970).
pub fn epoch_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix epoch milliseconds now.
pub fn now_ms() -> i64 {
    epoch_ms(std::time::SystemTime::now())
}

/// Formats epoch milliseconds as RFC 3339 in UTC, e.g. `2026-11-25T12:00:00.123Z`.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses RFC 3339 into epoch milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Accepts what the HTTP API takes as a time: RFC 3339 or epoch milliseconds.
pub fn parse_api_time(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().or_else(|| parse_rfc3339_ms(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        let ms = 1_764_072_000_123;
        assert_eq!(format_ms(ms), "2025-11-25T12:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&format_ms(ms)), Some(ms));
        assert_eq!(parse_api_time("1764072000123"), Some(ms));
        assert_eq!(parse_rfc3339_ms("2025-11-25T13:00:00.123+01:00"), Some(ms));
        assert_eq!(parse_api_time("yesterday"), None);
    }
}
