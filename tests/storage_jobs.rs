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
