//! Bucket sizes for charts: `bucket=` as given, or `points=` picking the smallest standard
//! size that fits, and the rows they produce.

use fieldline_store::time_format::format_ms;
use fieldline_store::{BucketRow, Range};
use serde::Serialize;

use crate::ApiError;

/// Names the bucket size an answer used.
pub const HEADER: &str = "fieldline-bucket";
/// Buckets one answer may have.
const MAX_BUCKETS: i64 = 100_000;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// What `points=` chooses from (CONTRACT.md).
const STANDARD: [i64; 10] = [
    SECOND,
    5 * SECOND,
    10 * SECOND,
    30 * SECOND,
    MINUTE,
    5 * MINUTE,
    15 * MINUTE,
    HOUR,
    6 * HOUR,
    DAY,
];

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub ms: i64,
    /// In the largest unit that divides it: `90s`, `5m`, `1h`, `1d`.
    pub name: String,
}

impl Bucket {
    fn of(ms: i64) -> Self {
        let name = [(DAY, 'd'), (HOUR, 'h'), (MINUTE, 'm'), (SECOND, 's')]
            .into_iter()
            .find(|(unit, _)| ms % unit == 0)
            .map(|(unit, suffix)| format!("{}{suffix}", ms / unit))
            .unwrap_or_else(|| format!("{ms}ms"));
        Self { ms, name }
    }
}

/// `60s`, `5m`, `1h`, `1d`: a whole number of seconds, minutes, hours or days.
fn parse(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (count, unit) = text.split_at(split);
    let count: i64 = count.parse().ok().filter(|&n| n > 0)?;
    let unit = match unit {
        "s" => SECOND,
        "m" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        _ => return None,
    };
    count.checked_mul(unit).filter(|&ms| ms <= 366 * DAY)
}

/// The bucket a query asks for, or `None` for raw rows.
pub fn choose(
    bucket: Option<&str>,
    points: Option<u32>,
    range: &Range,
) -> Result<Option<Bucket>, ApiError> {
    let span = (range.to_ms - range.from_ms).max(1);
    match (bucket, points) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ApiError::bad_request("give bucket or points, not both")),
        (Some(text), None) => {
            let ms = parse(text).ok_or_else(|| {
                ApiError::bad_request(
                    "bucket must be a whole number of s, m, h or d (like 60s, 5m, 1h), at most 366d",
                )
            })?;
            if (span + ms - 1) / ms > MAX_BUCKETS {
                return Err(ApiError::bad_request(format!(
                    "that range in {text} buckets is more than {MAX_BUCKETS}: use a larger bucket or points="
                )));
            }
            Ok(Some(Bucket::of(ms)))
        }
        (None, Some(n)) => {
            if !(1..=MAX_BUCKETS as u32).contains(&n) {
                return Err(ApiError::bad_request(format!(
                    "points must be 1 to {MAX_BUCKETS}"
                )));
            }
            let ms = STANDARD
                .into_iter()
                .find(|ms| (span + ms - 1) / ms <= i64::from(n))
                .unwrap_or(DAY);
            Ok(Some(Bucket::of(ms)))
        }
    }
}

/// One bucket of a metric: its start and the aggregates of the readings in it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BucketJson {
    ts: String,
    avg: f64,
    min: f64,
    max: f64,
    count: i64,
}

pub fn json(rows: &[BucketRow]) -> Vec<BucketJson> {
    rows.iter()
        .map(|r| BucketJson {
            ts: format_ms(r.bucket_ms),
            avg: r.aggregate.avg(),
            min: r.aggregate.min,
            max: r.aggregate.max,
            count: r.aggregate.count,
        })
        .collect()
}

pub fn csv(rows: &[BucketRow]) -> String {
    use std::fmt::Write;
    let mut out = String::from("ts,avg,min,max,count\n");
    for r in rows {
        let a = &r.aggregate;
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            format_ms(r.bucket_ms),
            a.avg(),
            a.min,
            a.max,
            a.count
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(span: i64) -> Range {
        Range {
            from_ms: 0,
            to_ms: span,
            limit: 1,
        }
    }

    #[test]
    fn points_pick_the_smallest_standard_bucket_that_fits() {
        let pick = |span, n| choose(None, Some(n), &range(span)).unwrap().unwrap().name;
        assert_eq!(pick(30 * DAY, 1000), "1h");
        assert_eq!(pick(DAY, 1000), "5m");
        assert_eq!(pick(HOUR, 3600), "1s");
        assert_eq!(pick(HOUR, 3599), "5s");
        assert_eq!(pick(3650 * DAY, 10), "1d");
    }

    #[test]
    fn buckets_parse_and_name() {
        let named = |t| choose(Some(t), None, &range(DAY)).unwrap().unwrap();
        assert_eq!(
            named("60s"),
            Bucket {
                ms: MINUTE,
                name: "1m".into()
            }
        );
        assert_eq!(named("90s").name, "90s");
        assert_eq!(named("24h").name, "1d");
        for bad in ["", "0s", "5", "1w", "-1h", "1.5h", "m", "400d"] {
            assert!(choose(Some(bad), None, &range(DAY)).is_err(), "{bad}");
        }
        assert!(choose(Some("1s"), None, &range(30 * DAY)).is_err());
        assert!(choose(Some("1h"), Some(5), &range(DAY)).is_err());
        assert!(choose(None, Some(0), &range(DAY)).is_err());
    }
}
