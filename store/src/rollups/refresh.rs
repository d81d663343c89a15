//! Keeps the telemetry roll-ups up to date: recomputes each minute a batch marked once the
//! minute has closed (late data marks it again, and it is recomputed again).
//!
//! Queries never wait for this task: they read a marked minute from raw rows (see
//! [`super`]). Its pace only decides how much of a long range is answered
//! from roll-ups, so it runs beside ingest with small steps and no hurry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::by_hour;
use crate::health::JobHealth;
use crate::time_format::now_ms;
use crate::Store;

/// How long after a minute ends before it is rolled up: batches of that minute are still on
/// their way for about the batch age.
const CLOSE_GRACE_MS: i64 = 5_000;
/// Marked minutes read per step: a back-fill marks many at once.
const MINUTES_PER_STEP: u32 = 240;
const IDLE_PAUSE: Duration = Duration::from_secs(2);

/// Runs until the task is aborted.
/// This job's name in storage health.
const JOB: &str = "rollups";

pub async fn run(store: Arc<dyn Store>, health: Arc<JobHealth>) {
    let rolled = metrics::counter!("fieldline_rollup_minutes_total");
    let errors = metrics::counter!("fieldline_rollup_errors_total");
    let pending_gauge = metrics::gauge!("fieldline_rollup_pending_minutes");
    let seconds = metrics::histogram!("fieldline_rollup_step_seconds");
    loop {
        let started = Instant::now();
        match step(store.as_ref()).await {
            Ok(done) => {
                health.succeeded(JOB);
                rolled.increment(done as u64);
                seconds.record(started.elapsed().as_secs_f64());
                if let Ok(pending) = store.pending_count().await {
                    pending_gauge.set(pending as f64);
                }
                if done > 0 {
                    // More may be waiting (a back-fill). Pausing as long as the step took
                    // leaves ingest at least half of the time the two compete for.
                    tokio::time::sleep(started.elapsed()).await;
                    continue;
                }
            }
            Err(e) => {
                errors.increment(1);
                health.failed(JOB, &e.to_string());
            }
        }
        tokio::time::sleep(IDLE_PAUSE).await;
    }
}

/// Rolls up the closed marked minutes, an hour at a time; returns how many it cleared.
pub async fn step(store: &dyn Store) -> Result<usize, crate::StoreError> {
    let minutes = store
        .pending_minutes(now_ms() - CLOSE_GRACE_MS, MINUTES_PER_STEP)
        .await?;
    let mut cleared = 0;
    for (hour, minutes) in by_hour(&minutes) {
        cleared += store.roll_up(hour, &minutes).await?;
    }
    Ok(cleared)
}
