//! Removes history older than the operator keeps (`--retention-days` for raw rows,
//! `--rollup-retention-days` for roll-ups): a pass every few minutes, in small steps with a
//! pause between them, so ingest is never held up behind a clean-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::health::JobHealth;
use crate::time_format::now_ms;
use crate::{Cutoffs, Store};

const DAY_MS: i64 = 86_400_000;
/// Between passes: retention is by the day, so a few minutes late is nothing.
const EVERY: Duration = Duration::from_secs(300);
/// Between steps of a pass: room for the writer.
const BETWEEN_STEPS: Duration = Duration::from_millis(20);

/// Days to keep of each kind; `None` keeps it forever.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Retention {
    pub raw_days: Option<u32>,
    pub rollup_days: Option<u32>,
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.raw_days.is_none() && self.rollup_days.is_none()
    }

    fn cutoffs(&self, now_ms: i64) -> Cutoffs {
        let before = |days: u32| now_ms - i64::from(days) * DAY_MS;
        Cutoffs {
            raw_before_ms: self.raw_days.map(before),
            rollups_before_ms: self.rollup_days.map(before),
        }
    }
}

/// Runs until the task is aborted.
/// This job's name in storage health.
const JOB: &str = "retention";

pub async fn run(store: Arc<dyn Store>, retention: Retention, health: Arc<JobHealth>) {
    if retention.is_off() {
        return;
    }
    let rows = metrics::counter!("fieldline_retention_rows_total");
    let partitions = metrics::counter!("fieldline_retention_partitions_total");
    let errors = metrics::counter!("fieldline_retention_errors_total");
    let seconds = metrics::histogram!("fieldline_retention_pass_seconds");
    loop {
        let started = Instant::now();
        let cutoffs = retention.cutoffs(now_ms());
        let (mut total_rows, mut total_partitions) = (0, 0);
        loop {
            match store.expire_step(cutoffs).await {
                Ok(removed) if removed.is_empty() => {
                    health.succeeded(JOB);
                    break;
                }
                Ok(removed) => {
                    rows.increment(removed.rows);
                    partitions.increment(removed.partitions);
                    total_rows += removed.rows;
                    total_partitions += removed.partitions;
                    tokio::time::sleep(BETWEEN_STEPS).await;
                }
                Err(e) => {
                    errors.increment(1);
                    health.failed(JOB, &e.to_string());
                    break;
                }
            }
        }
        seconds.record(started.elapsed().as_secs_f64());
        if total_rows > 0 || total_partitions > 0 {
            tracing::info!(
                rows = total_rows,
                partitions = total_partitions,
                "removed history older than the retention"
            );
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_are_days_before_now() {
        let r = Retention {
            raw_days: Some(7),
            rollup_days: None,
        };
        let c = r.cutoffs(10 * DAY_MS);
        assert_eq!(c.raw_before_ms, Some(3 * DAY_MS));
        assert_eq!(c.rollups_before_ms, None);
        assert!(Retention::default().is_off());
    }
}
