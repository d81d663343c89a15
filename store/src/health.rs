//! Whether the jobs that keep storage in shape are working: our own (time partitions ahead,
//! retention, roll-ups, pruning) and, on TimescaleDB, its background jobs (columnstore
//! policies, continuous-aggregate refreshes, retention), which can fail silently on the
//! server. Each job's latest outcome is kept here for `/readyz`, as metrics, and in the log:
//! a warning naming the job and its error when it starts failing (again every ten minutes
//! while it goes on), and a note when it works again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::time_format::now_ms;

/// While a job goes on failing, its warning is repeated this often.
const REPEAT_WARNING_MS: i64 = 10 * 60 * 1000;

/// One job that is failing now.
#[derive(Clone, Debug, PartialEq)]
pub struct FailingJob {
    pub job: String,
    pub error: String,
    /// When it started failing (ms since 1970).
    pub since: i64,
}

#[derive(Default)]
struct State {
    /// Failing jobs by name, with when their warning was last logged.
    failing: BTreeMap<String, (FailingJob, i64)>,
}

/// The storage jobs' health, shared by the tasks that run them and the readiness probe.
#[derive(Default)]
pub struct JobHealth {
    state: Mutex<State>,
}

/// One TimescaleDB background job as its statistics show it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ServerJob {
    pub id: i32,
    /// Its procedure: `policy_compression`, `policy_refresh_continuous_aggregate`, ...
    pub procedure: String,
    /// What it works on (a hypertable or continuous aggregate), when it says.
    pub target: Option<String>,
    /// Its last run failed.
    pub failed: bool,
    /// The newest error it recorded.
    pub error: Option<String>,
    /// How long past its next start plus one schedule interval it has not run (0 when on
    /// time): background workers all busy, or the scheduler stopped. A refresh or
    /// compression policy that never runs leaves aggregates stale and chunks uncompressed.
    pub overdue_s: f64,
}

/// A hypertable's chunks past its columnstore policy's age that are still not compressed
/// (TimescaleDB).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct UncompressedChunks {
    pub hypertable: String,
    pub chunks: i64,
}

impl ServerJob {
    /// Its name in health reports: `timescaledb policy_compression on positions (job 1000)`.
    pub fn name(&self) -> String {
        match &self.target {
            Some(target) => format!(
                "timescaledb {} on {target} (job {})",
                self.procedure, self.id
            ),
            None => format!("timescaledb {} (job {})", self.procedure, self.id),
        }
    }
}

impl JobHealth {
    /// `job` ran and did its work.
    pub fn succeeded(&self, job: &str) {
        metrics::gauge!("fieldline_storage_job_failing", "job" => job.to_string()).set(0.0);
        metrics::gauge!("fieldline_storage_job_last_success_timestamp_seconds", "job" => job.to_string())
            .set(now_ms() as f64 / 1000.0);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((was, _)) = state.failing.remove(job) {
            tracing::info!(job, failing_since = %crate::time_format::format_ms(was.since), "storage job works again");
        }
    }

    /// `job` failed with `error`.
    pub fn failed(&self, job: &str, error: &str) {
        metrics::gauge!("fieldline_storage_job_failing", "job" => job.to_string()).set(1.0);
        metrics::counter!("fieldline_storage_job_failures_total", "job" => job.to_string())
            .increment(1);
        let now = now_ms();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = state.failing.entry(job.to_string()).or_insert_with(|| {
            (
                FailingJob {
                    job: job.to_string(),
                    error: String::new(),
                    since: now,
                },
                i64::MIN,
            )
        });
        entry.0.error = error.to_string();
        if now.saturating_sub(entry.1) >= REPEAT_WARNING_MS {
            entry.1 = now;
            tracing::warn!(job, error, "storage job failing: what it keeps in shape (partitions, retention, roll-ups, compression) is falling behind");
        }
    }

    /// Takes the server's own jobs as their statistics show them now.
    pub fn server_jobs(&self, jobs: &[ServerJob]) {
        for job in jobs {
            let name = job.name();
            metrics::gauge!("fieldline_storage_server_job_overdue_seconds", "job" => name.clone())
                .set(job.overdue_s);
            if job.failed {
                let error = job
                    .error
                    .as_deref()
                    .unwrap_or("its last run failed (no error recorded)");
                self.failed(&name, error);
            } else if job.overdue_s > 0.0 {
                self.failed(
                    &name,
                    &format!(
                        "{:.0} s behind its schedule: not started (TimescaleDB's background \
                         workers all busy, see timescaledb.max_background_workers, or its \
                         scheduler stopped), or one run going on that long",
                        job.overdue_s
                    ),
                );
            } else {
                self.succeeded(&name);
            }
        }
    }

    /// Takes the count of chunks left uncompressed past their policy, per hypertable.
    pub fn uncompressed_chunks(&self, tables: &[UncompressedChunks]) {
        for table in tables {
            metrics::gauge!("fieldline_storage_uncompressed_chunks_past_policy", "hypertable" => table.hypertable.clone())
                .set(table.chunks as f64);
            let name = format!("timescaledb compression of {}", table.hypertable);
            if table.chunks > 0 {
                self.failed(
                    &name,
                    &format!(
                        "{} chunks are past the columnstore policy's age and not compressed",
                        table.chunks
                    ),
                );
            } else {
                self.succeeded(&name);
            }
        }
    }

    /// The jobs failing now, by name.
    pub fn failing(&self) -> Vec<FailingJob> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.failing.values().map(|(job, _)| job.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_failing_from_its_first_failure_until_it_works_again() {
        let health = JobHealth::default();
        health.succeeded("retention");
        assert!(health.failing().is_empty());
        health.failed("partitions", "disk full");
        health.failed("partitions", "still full");
        let failing = health.failing();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].job, "partitions");
        assert_eq!(failing[0].error, "still full");
        health.succeeded("partitions");
        assert!(health.failing().is_empty());
    }

    #[test]
    fn server_jobs_are_named_by_procedure_target_and_id() {
        let health = JobHealth::default();
        let job = ServerJob {
            id: 1000,
            procedure: "policy_compression".into(),
            target: Some("positions".into()),
            failed: true,
            error: Some("cannot drop portal while it is being set up".into()),
            overdue_s: 0.0,
        };
        health.server_jobs(std::slice::from_ref(&job));
        assert_eq!(
            health.failing()[0].job,
            "timescaledb policy_compression on positions (job 1000)"
        );
        health.server_jobs(&[ServerJob {
            failed: false,
            ..job.clone()
        }]);
        assert!(health.failing().is_empty());
        // A job that stopped running is failing too, though its last run went well.
        health.server_jobs(&[ServerJob {
            failed: false,
            overdue_s: 7200.0,
            ..job
        }]);
        assert!(health.failing()[0]
            .error
            .starts_with("7200 s behind its schedule"));
    }

    #[test]
    fn chunks_left_uncompressed_past_the_policy_fail_until_compressed() {
        let health = JobHealth::default();
        let behind = |chunks| UncompressedChunks {
            hypertable: "positions".into(),
            chunks,
        };
        health.uncompressed_chunks(&[behind(3)]);
        let failing = health.failing();
        assert_eq!(failing[0].job, "timescaledb compression of positions");
        assert!(failing[0].error.starts_with("3 chunks"));
        health.uncompressed_chunks(&[behind(0)]);
        assert!(health.failing().is_empty());
    }
}
