//! Telemetry roll-ups in storage: marking the minutes a batch wrote, recomputing marked
//! minutes into the 1-minute and 1-hour roll-ups, and answering bucketed queries from raw
//! rows and roll-ups together.
//!
//! A minute stays marked in `rollup_pending` from the batch that writes into it until the
//! roll-up task has recomputed it from a snapshot no later batch has touched (a `version`
//! the writer bumps). Queries plan their range so that marked minutes, and hours holding one,
//! are read from a finer source: an answer is exact whatever the roll-up task has reached.

use std::collections::BTreeMap;

/// [`RollupStore`] over a back end's `pool` and `roll_up_hour`, its `snapshot` (a read
/// transaction that sees one snapshot across statements) and its `buckets_sql` (a source's
/// buckets in its dialect): the rest is the same SQL and calls on both.
macro_rules! impl_rollup_store {
    ($store:ty, snapshot: $snapshot:path, buckets_sql: $buckets_sql:path $(,)?) => {
        impl $crate::rollups::RollupStore for $store {
            fn pending_minutes(
                &self,
                closed_before_ms: i64,
                limit: u32,
            ) -> $crate::StoreFuture<'_, Vec<i64>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "SELECT minute FROM rollup_pending WHERE minute <= $1 - 60000 ORDER BY minute LIMIT $2",
                    )
                    .bind(closed_before_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?)
                })
            }

            fn pending_count(&self) -> $crate::StoreFuture<'_, i64> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar("SELECT count(*) FROM rollup_pending")
                        .fetch_one(&self.pool)
                        .await?)
                })
            }

            fn roll_up<'a>(
                &'a self,
                hour_ms: i64,
                minutes: &'a [i64],
            ) -> $crate::StoreFuture<'a, usize> {
                Box::pin(self.roll_up_hour(hour_ms, minutes))
            }

            fn telemetry_buckets<'a>(
                &'a self,
                q: $crate::rollups::BucketQuery<'a>,
            ) -> $crate::StoreFuture<'a, Vec<$crate::rollups::BucketRow>> {
                Box::pin(async move {
                    // Which minutes are marked, and each segment's rows, from one snapshot:
                    // a roll-up finishing in between cannot count a minute twice or never.
                    let mut tx = $snapshot(&self.pool).await?;
                    let pending: Vec<i64> = sqlx::query_scalar(
                        "SELECT minute FROM rollup_pending WHERE minute >= $1 AND minute < $2 ORDER BY minute",
                    )
                    .bind($crate::rollups::floor_to(q.from_ms, $crate::rollups::MINUTE_MS))
                    .bind(q.to_ms)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut answer = std::collections::BTreeMap::new();
                    let plan = $crate::rollups::segments(
                        self.rollups,
                        q.from_ms,
                        q.to_ms,
                        q.bucket_ms,
                        &pending,
                    );
                    for segment in plan {
                        let sql = sqlx::AssertSqlSafe($buckets_sql(segment.source));
                        let rows: $crate::rollups::AggregateRows = sqlx::query_as(sql)
                            .bind(q.device)
                            .bind(q.metric)
                            .bind(segment.from_ms)
                            .bind(segment.to_ms)
                            .bind(q.bucket_ms)
                            .fetch_all(&mut *tx)
                            .await?;
                        $crate::rollups::merge_rows(&mut answer, rows);
                    }
                    tx.commit().await?;
                    Ok($crate::rollups::into_rows(answer))
                })
            }
        }
    };
}

pub(super) mod postgres;
pub mod refresh;
pub(super) mod sqlite;

use super::StoreFuture;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;

/// Sum, min, max and count of one bucket: they merge exactly, in any order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub count: i64,
}

impl Aggregate {
    fn merge(&mut self, other: &Aggregate) {
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
    }

    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// One bucket of a bucketed query: its start (epoch ms, a multiple of the bucket size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketRow {
    pub bucket_ms: i64,
    pub aggregate: Aggregate,
}

/// `GET /api/devices/{id}/telemetry?bucket=`: one metric in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy)]
pub struct BucketQuery<'a> {
    pub device: &'a str,
    pub metric: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
}

/// Where a stretch of a query's range is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Raw,
    Minutes,
    Hours,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    pub source: Source,
    pub from_ms: i64,
    pub to_ms: i64,
}

fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

fn ceil_to(t: i64, step: i64) -> i64 {
    floor_to(t + step - 1, step)
}

/// The plan of a bucket query: all raw rows when roll-ups are not kept (`--rollups off`).
fn segments(
    rollups_kept: bool,
    from: i64,
    to: i64,
    bucket_ms: i64,
    pending: &[i64],
) -> Vec<Segment> {
    if rollups_kept {
        plan(from, to, bucket_ms, pending)
    } else {
        vec![Segment {
            source: Source::Raw,
            from_ms: from,
            to_ms: to,
        }]
    }
}

/// Splits `[from, to)` into stretches read from raw rows, minute roll-ups or hour roll-ups,
/// coarsest first where the bucket size allows: a bucket that is a whole number of hours can
/// be made from hour roll-ups, of minutes from minute roll-ups. `pending` (sorted) are the
/// marked minutes: read raw, and their hours from minutes.
fn plan(from: i64, to: i64, bucket_ms: i64, pending: &[i64]) -> Vec<Segment> {
    let mut out = Vec::new();
    let coarsest = if bucket_ms % HOUR_MS == 0 {
        Source::Hours
    } else if bucket_ms % MINUTE_MS == 0 {
        Source::Minutes
    } else {
        Source::Raw
    };
    plan_into(&mut out, from, to, coarsest, pending);
    // Neighbours from the same source read in one query.
    let mut merged: Vec<Segment> = Vec::with_capacity(out.len());
    for s in out.into_iter().filter(|s| s.from_ms < s.to_ms) {
        match merged.last_mut() {
            Some(last) if last.source == s.source && last.to_ms == s.from_ms => {
                last.to_ms = s.to_ms
            }
            _ => merged.push(s),
        }
    }
    merged
}

fn plan_into(out: &mut Vec<Segment>, from: i64, to: i64, source: Source, pending: &[i64]) {
    let step = match source {
        Source::Raw => {
            out.push(Segment {
                source,
                from_ms: from,
                to_ms: to,
            });
            return;
        }
        Source::Minutes => MINUTE_MS,
        Source::Hours => HOUR_MS,
    };
    let finer = if source == Source::Hours {
        Source::Minutes
    } else {
        Source::Raw
    };
    let (inner_from, inner_to) = (ceil_to(from, step), floor_to(to, step));
    if inner_from >= inner_to {
        plan_into(out, from, to, finer, pending);
        return;
    }
    plan_into(out, from, inner_from, finer, pending);
    // Whole steps: a step holding a marked minute comes from the finer source.
    let mut cursor = inner_from;
    let first = pending.partition_point(|&m| m < inner_from);
    for &minute in &pending[first..] {
        if minute >= inner_to {
            break;
        }
        let step_start = floor_to(minute, step);
        if step_start < cursor {
            continue; // a second marked minute in a step already handed down
        }
        out.push(Segment {
            source,
            from_ms: cursor,
            to_ms: step_start,
        });
        plan_into(out, step_start, step_start + step, finer, pending);
        cursor = step_start + step;
    }
    out.push(Segment {
        source,
        from_ms: cursor,
        to_ms: inner_to,
    });
    plan_into(out, inner_to, to, finer, pending);
}

/// Adds rows of (bucket start, aggregate) into the answer, merging buckets that several
/// segments share.
fn merge_rows(answer: &mut BTreeMap<i64, Aggregate>, rows: AggregateRows) {
    for (bucket, sum, min, max, count) in rows {
        let a = Aggregate {
            sum,
            min,
            max,
            count,
        };
        answer
            .entry(bucket)
            .and_modify(|b| b.merge(&a))
            .or_insert(a);
    }
}

fn into_rows(answer: BTreeMap<i64, Aggregate>) -> Vec<BucketRow> {
    answer
        .into_iter()
        .map(|(bucket_ms, aggregate)| BucketRow {
            bucket_ms,
            aggregate,
        })
        .collect()
}

/// The minutes of a batch's telemetry, ascending: every writer marks them in this order, as
/// the roll-up task clears them, so their row locks are always taken the same way round.
pub(super) fn batch_minutes(rows: &[crate::batch::TelemetryRow]) -> Vec<i64> {
    let mut minutes: Vec<i64> = rows.iter().map(|r| floor_to(r.ts_ms, MINUTE_MS)).collect();
    minutes.sort_unstable();
    minutes.dedup();
    minutes
}

/// `[1, 2, 3]`: how SQLite takes a list (through `json_each`).
pub(super) fn json_array(values: &[i64]) -> String {
    let items: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(","))
}

/// Groups marked minutes (ascending) by their hour: the unit the roll-up task works in.
pub fn by_hour(minutes: &[i64]) -> Vec<(i64, Vec<i64>)> {
    let mut out: Vec<(i64, Vec<i64>)> = Vec::new();
    for &m in minutes {
        let hour = floor_to(m, HOUR_MS);
        match out.last_mut() {
            Some((h, ms)) if *h == hour => ms.push(m),
            _ => out.push((hour, vec![m])),
        }
    }
    out
}

/// Per device, metric and minute, the aggregate of its raw rows: what replaces the minutes'
/// roll-up rows.
type MinuteRows = Vec<(String, String, i64, f64, f64, f64, i64)>;

/// Bucket start, sum, min, max, count: a query's rows from one segment.
type AggregateRows = Vec<(i64, f64, f64, f64, i64)>;

/// Roll-ups as storage keeps them.
pub trait RollupStore {
    /// Marked minutes that ended before `closed_before_ms`, oldest first, at most `limit`.
    fn pending_minutes(&self, closed_before_ms: i64, limit: u32) -> StoreFuture<'_, Vec<i64>>;
    /// How many minutes are marked.
    fn pending_count(&self) -> StoreFuture<'_, i64>;
    /// Recomputes the marked `minutes` (all in the hour starting at `hour_ms`) and that
    /// hour; returns how many it cleared (a minute a batch marked again stays marked).
    fn roll_up<'a>(&'a self, hour_ms: i64, minutes: &'a [i64]) -> StoreFuture<'a, usize>;
    /// Buckets with data in the range, oldest first.
    fn telemetry_buckets<'a>(&'a self, query: BucketQuery<'a>) -> StoreFuture<'a, Vec<BucketRow>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(source: Source, from_ms: i64, to_ms: i64) -> Segment {
        Segment {
            source,
            from_ms,
            to_ms,
        }
    }

    #[test]
    fn small_buckets_read_raw_rows() {
        assert_eq!(
            plan(1_000, 10 * HOUR_MS, 30_000, &[]),
            vec![seg(Source::Raw, 1_000, 10 * HOUR_MS)]
        );
    }

    #[test]
    fn unaligned_edges_come_from_finer_sources() {
        let from = 2 * HOUR_MS - 90_500; // 1 min 30.5 s before hour 2
        let to = 5 * HOUR_MS + 61_000;
        assert_eq!(
            plan(from, to, HOUR_MS, &[]),
            vec![
                seg(Source::Raw, from, 2 * HOUR_MS - MINUTE_MS),
                seg(Source::Minutes, 2 * HOUR_MS - MINUTE_MS, 2 * HOUR_MS),
                seg(Source::Hours, 2 * HOUR_MS, 5 * HOUR_MS),
                seg(Source::Minutes, 5 * HOUR_MS, 5 * HOUR_MS + MINUTE_MS),
                seg(Source::Raw, 5 * HOUR_MS + MINUTE_MS, to),
            ]
        );
    }

    #[test]
    fn marked_minutes_are_raw_and_their_hours_come_from_minutes() {
        let m = 3 * HOUR_MS + 10 * MINUTE_MS;
        assert_eq!(
            plan(0, 6 * HOUR_MS, HOUR_MS, &[m, m + MINUTE_MS, 5 * HOUR_MS]),
            vec![
                seg(Source::Hours, 0, 3 * HOUR_MS),
                seg(Source::Minutes, 3 * HOUR_MS, m),
                seg(Source::Raw, m, m + 2 * MINUTE_MS),
                seg(Source::Minutes, m + 2 * MINUTE_MS, 4 * HOUR_MS),
                seg(Source::Hours, 4 * HOUR_MS, 5 * HOUR_MS),
                seg(Source::Raw, 5 * HOUR_MS, 5 * HOUR_MS + MINUTE_MS),
                seg(Source::Minutes, 5 * HOUR_MS + MINUTE_MS, 6 * HOUR_MS),
            ]
        );
    }

    #[test]
    fn segments_cover_the_range_exactly() {
        let pending = [
            7 * MINUTE_MS,
            61 * MINUTE_MS,
            62 * MINUTE_MS,
            300 * MINUTE_MS,
        ];
        for (from, to, bucket) in [
            (0, 10 * HOUR_MS, HOUR_MS),
            (123, 10 * HOUR_MS - 7, 5 * MINUTE_MS),
            (59_999, 60_001, HOUR_MS),
            (5, 5, MINUTE_MS),
        ] {
            let segments = plan(from, to, bucket, &pending);
            let mut cursor = from;
            for s in &segments {
                assert_eq!(s.from_ms, cursor);
                assert!(s.to_ms > s.from_ms);
                cursor = s.to_ms;
                if s.source != Source::Raw {
                    for m in pending {
                        assert!(m + MINUTE_MS <= s.from_ms || m >= s.to_ms);
                    }
                }
            }
            assert!(segments.is_empty() && from == to || cursor == to);
        }
    }
}
