//! Storage health: a storage upkeep job that fails is named in `/readyz`
//! (`storage_jobs_failing`), as a metric and in the log, while ingest goes on; with nothing
//! failing the list is empty. The failure is real: PostgreSQL's function that makes time
//! partitions ahead is replaced by one that raises after start-up, as a full disk or a lock
//! would.

#[macro_use]
mod support;

use serde_json::Value;
use sqlx::Connection;
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(a_failing_upkeep_job_is_reported_and_ingest_goes_on);

/// The `partitions` entry of `/readyz`'s failing storage jobs.
fn partitions_failing(ready: &Value) -> Option<&Value> {
    ready["storage_jobs_failing"]
        .as_array()?
        .iter()
        .find(|j| j["job"] == "partitions")
}

async fn a_failing_upkeep_job_is_reported_and_ingest_goes_on(backend: Backend) {
    let dir = TempDir::new("storage-jobs");
    let url = database(backend, &dir, "storage_jobs").await;
    let mut server = Server::start(&dir, &url).await;
    let ready = server.get_ok("/readyz").await;
    // On TimescaleDB the server's own jobs may be failing already: only ours are asserted.
    assert!(partitions_failing(&ready).is_none(), "{ready}");
    assert!(ready["storage_jobs_failing"].is_array(), "{ready}");
    if matches!(backend, Backend::Sqlite) {
        assert_eq!(
            ready["storage_jobs_failing"],
            Value::Array(Vec::new()),
            "{ready}"
        );
        return;
    }
    assert!(server.stop().success());

    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    // Start-up makes today's partitions (the first call); the upkeep after it fails.
    for sql in [
        "CREATE SEQUENCE test_partition_calls",
        "CREATE OR REPLACE FUNCTION fieldline_ensure_partitions(days_ahead integer) RETURNS void
         LANGUAGE plpgsql AS $$
         BEGIN
             IF nextval('test_partition_calls') > 1 THEN
                 RAISE EXCEPTION 'no space left for new partitions (test)';
             END IF;
             PERFORM fieldline_ensure_days(ARRAY(
                 SELECT d::date FROM generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                     (now() AT TIME ZONE 'UTC')::date + days_ahead, interval '1 day') AS d));
         END $$",
    ] {
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .expect("replace the function");
    }
    conn.close().await.expect("close");

    let server = Server::start(&dir, &url).await;
    let ready = server
        .wait_for("/readyz", |r| partitions_failing(r).is_some())
        .await;
    assert_eq!(
        ready["ready"], true,
        "failing upkeep does not stop traffic: {ready}"
    );
    let failing = partitions_failing(&ready).expect("partitions failing");
    assert!(
        failing["error"]
            .as_str()
            .is_some_and(|e| e.contains("no space left for new partitions")),
        "{ready}"
    );
    assert!(failing["since"].is_string());
    server
        .wait_for_metrics(|m| m.contains(r#"fieldline_storage_job_failing{job="partitions"} 1"#))
        .await;
    let log = server.log_text();
    assert!(
        log.contains("storage job failing") && log.contains("no space left for new partitions"),
        "the log names the job's error: {log}"
    );
    // Ingest goes on.
    let device = Device::connect(server.mqtt_port, "jobs-1").await;
    device
        .publish(
            "devices/jobs-1/location",
            br#"{"lat": 1.0, "lon": 2.0}"#.to_vec(),
        )
        .await;
    server
        .wait_for("/api/devices/jobs-1", |d| d["id"] == "jobs-1")
        .await;
}

on_both_backends!(roll_ups_that_fall_behind_are_reported_until_they_catch_up);

/// A storage job of `/readyz`'s failing list, by name.
fn failing<'a>(ready: &'a Value, job: &str) -> Option<&'a Value> {
    ready["storage_jobs_failing"]
        .as_array()?
        .iter()
        .find(|j| j["job"] == job)
}

/// Runs one statement on the test's database, whichever back end it is.
async fn execute(backend: Backend, url: &str, sql: &'static str) {
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
            conn.close().await.expect("close");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
            conn.close().await.expect("close");
        }
    }
}

async fn roll_ups_that_fall_behind_are_reported_until_they_catch_up(backend: Backend) {
    let dir = TempDir::new("rollup-lag");
    let url = database(backend, &dir, "rollup_lag").await;
    let server = Server::start(&dir, &url).await;
    // Roll-ups can recompute but not clear what they did, as when a disk is full: the marked
    // minutes stay, and their age grows.
    let refuse = match backend {
        Backend::Sqlite => {
            "CREATE TRIGGER test_refuse BEFORE DELETE ON rollup_pending
             BEGIN SELECT RAISE(ABORT, 'roll-up storage refused (test)'); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'roll-up storage refused (test)'; END $$;
             CREATE TRIGGER test_refuse BEFORE DELETE ON rollup_pending
             FOR EACH ROW EXECUTE FUNCTION test_refuse();"
        }
    };
    execute(backend, &url, refuse).await;

    // A device catching up sends a reading from 20 minutes ago: its minute closed long since.
    let mut device = Device::connect(server.mqtt_port, "fridge-1").await;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 20 * 60_000;
    device
        .publish(
            "devices/fridge-1/telemetry",
            serde_json::json!({"ts": ts, "seq": 1, "metrics": {"temp_c": 4.0}}).to_string(),
        )
        .await;
    device.wait_acked(1).await;
    let ready = server
        .wait_for("/readyz", |r| failing(r, "rollup lag").is_some())
        .await;
    assert_eq!(ready["ready"], true, "lagging roll-ups do not stop traffic");
    let lag = failing(&ready, "rollup lag").expect("rollup lag");
    assert!(
        lag["error"].as_str().is_some_and(
            |e| e.contains("closed 19 minutes ago") || e.contains("closed 20 minutes ago")
        ),
        "{ready}"
    );
    assert!(
        failing(&ready, "rollups").is_some_and(|j| j["error"]
            .as_str()
            .is_some_and(|e| e.contains("roll-up storage refused"))),
        "{ready}"
    );
    let metrics = server.metrics_text().await;
    let seconds = server.metric(&metrics, "fieldline_rollup_lag_seconds");
    assert!((1140.0..1300.0).contains(&seconds), "lag {seconds} s");

    // Fixed: the roll-ups catch up, and nothing is reported any more.
    let mend = match backend {
        Backend::Sqlite => "DROP TRIGGER test_refuse",
        Backend::Postgres => "DROP TRIGGER test_refuse ON rollup_pending",
    };
    execute(backend, &url, mend).await;
    let ready = server
        .wait_for("/readyz", |r| {
            failing(r, "rollup lag").is_none() && failing(r, "rollups").is_none()
        })
        .await;
    assert_eq!(ready["ready"], true);
    let metrics = server.metrics_text().await;
    assert_eq!(server.metric(&metrics, "fieldline_rollup_lag_seconds"), 0.0);
    let buckets = server
        .get_ok(&format!(
            "/api/devices/fridge-1/telemetry?metric=temp_c&bucket=1h&from={}",
            ts - 3_600_000
        ))
        .await;
    assert_eq!(buckets[0]["count"], 1, "{buckets}");
}
