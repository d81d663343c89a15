//! Keeps the telemetry roll-ups up to date: recomputes each minute a batch marked once the
//! minute has closed (late data marks it again, and it is recomputed again), and says how far
//! behind they are: the age of the oldest closed minute still waiting, a metric, and a failing
//! storage job in `/readyz` past [`LAG_LIMIT_MS`] (on TimescaleDB these refreshes are what keeps
//! the continuous aggregates current; its own policies are the backstop).
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

/// Behind by more than this, roll-ups are reported as a failing job: charts over long ranges
/// would miss what was stored since.
pub const LAG_LIMIT_MS: i64 = 10 * 60 * 1000;

/// This job's name in storage health, and its lag's.
const JOB: &str = "rollups";
const LAG_JOB: &str = "rollup lag";

/// Runs until the task is aborted.
pub async fn run(store: Arc<dyn Store>, health: Arc<JobHealth>) {
    let rolled = metrics::counter!("fieldline_rollup_minutes_total");
    let errors = metrics::counter!("fieldline_rollup_errors_total");
    let pending_gauge = metrics::gauge!("fieldline_rollup_pending_minutes");
    let seconds = metrics::histogram!("fieldline_rollup_step_seconds");
    let lag_gauge = metrics::gauge!("fieldline_rollup_lag_seconds");
    loop {
        let started = Instant::now();
        let stepped = step(store.as_ref()).await;
        match lag_ms(store.as_ref()).await {
            Ok(lag) => {
                lag_gauge.set(lag as f64 / 1000.0);
                if lag > LAG_LIMIT_MS {
                    health.failed(
                        LAG_JOB,
                        &format!(
                            "the oldest minute waiting for its roll-up closed {} minutes ago",
                            lag / 60_000
                        ),
                    );
                } else {
                    health.succeeded(LAG_JOB);
                }
            }
            Err(e) => health.failed(LAG_JOB, &e.to_string()),
        }
        match stepped {
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

/// How long ago the oldest minute still waiting for its roll-up closed (0: none waits).
pub async fn lag_ms(store: &dyn Store) -> Result<i64, crate::StoreError> {
    let now = now_ms();
    let oldest = store.pending_minutes(now - CLOSE_GRACE_MS, 1).await?;
    Ok(oldest
        .first()
        .map_or(0, |minute| (now - (minute + super::MINUTE_MS)).max(0)))
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
