//! Retention on both back ends: raw rows older than `--retention-days` are removed while
//! their roll-ups stay (until `--rollup-retention-days`), recent history is untouched, and a
//! device publishing through the clean-up loses nothing it was acknowledged for.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{assert_stored_once, database, AckedPublisher, Backend, Device, Server, TempDir};

on_both_backends!(old_history_goes_and_its_rollups_stay);

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// An hour of readings (one a minute, value 2) and fixes starting at `start`.
async fn publish_hour(device: &mut Device, start: i64) {
    let readings: Vec<Value> = (0..60)
        .map(|i| json!({"ts": start + i * 60_000, "metrics": {"temp_c": 2.0}}))
        .collect();
    let fixes: Vec<Value> = (0..60)
        .map(|i| json!({"ts": start + i * 60_000, "lat": 52.0, "lon": 13.0}))
        .collect();
    let before = device.acked();
    let id = device.client_id.clone();
    device
        .publish(
            &format!("devices/{id}/telemetry"),
            Value::Array(readings).to_string(),
        )
        .await;
    device
        .publish(
            &format!("devices/{id}/location"),
            Value::Array(fixes).to_string(),
        )
        .await;
    device
        .publish(
            &format!("devices/{id}/status"),
            json!({"ts": start, "online": true}).to_string(),
        )
        .await;
    device.wait_acked(before + 3).await;
}

fn count(body: &Value) -> usize {
    body.as_array().map_or(0, Vec::len)
}

async fn old_history_goes_and_its_rollups_stay(backend: Backend) {
    let dir = TempDir::new("retention");
    let db = database(backend, &dir, "retention").await;
    let hour = |ms: i64| ms / HOUR * HOUR;
    let (ancient, old, recent) = (
        hour(now_ms() - 10 * DAY),
        hour(now_ms() - 3 * DAY),
        hour(now_ms() - 3 * HOUR),
    );
    {
        let mut server = Server::start(&dir, &db).await;
        let mut device = Device::connect(server.mqtt_port, "cold-1").await;
        for start in [ancient, old, recent] {
            publish_hour(&mut device, start).await;
        }
        // Every minute rolled up before the clean-up starts.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = server.metrics_text().await;
            if server.metric(&text, "fieldline_rollup_minutes_total") >= 180.0
                && server.metric(&text, "fieldline_rollup_pending_minutes") == 0.0
            {
                break;
            }
            assert!(Instant::now() < deadline, "roll-ups never caught up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server.stop();
    }

    // Keep two days of raw rows and five of roll-ups; a device publishes all along.
    let mut server = Server::start_with(
        &dir,
        &db,
        &["--retention-days", "2", "--rollup-retention-days", "5"],
    )
    .await;
    let publisher = AckedPublisher::start(server.mqtt_port, "busy-1", 1, 200);
    let raw = |from: i64| {
        format!(
            "/api/devices/cold-1/telemetry?metric=temp_c&from={from}&to={}",
            from + HOUR
        )
    };
    let hourly = |from: i64| format!("{}&bucket=1h", raw(from));
    let track = |from: i64| format!("/api/devices/cold-1/track?from={from}&to={}", from + HOUR);
    let status = |from: i64| format!("/api/devices/cold-1/status?from={from}&to={}", from + HOUR);
    // The pass runs at start-up; wait until the 3-day-old raw rows are gone.
    server.wait_for(&raw(old), |b| count(b) == 0).await;
    server.wait_for(&track(old), |b| count(b) == 0).await;
    server.wait_for(&status(old), |b| count(b) == 0).await;
    server.wait_for(&hourly(ancient), |b| count(b) == 0).await;
    assert_eq!(count(&server.get_ok(&raw(ancient)).await), 0);
    assert_eq!(count(&server.get_ok(&track(ancient)).await), 0);

    // The old hour's roll-up answers still, exactly.
    let rolled = server.get_ok(&hourly(old)).await;
    assert_eq!(
        rolled,
        json!([{"ts": support::geo::rfc3339(old), "avg": 2.0, "min": 2.0, "max": 2.0, "count": 60}]),
        "roll-ups outlive raw rows"
    );
    // Recent history is untouched.
    assert_eq!(count(&server.get_ok(&raw(recent)).await), 60);
    assert_eq!(count(&server.get_ok(&track(recent)).await), 60);
    let metrics = server.metrics_text().await;
    assert!(
        server.metric(&metrics, "fieldline_retention_rows_total")
            + server.metric(&metrics, "fieldline_retention_partitions_total")
            > 0.0,
        "the clean-up is counted"
    );

    // Ingest went on: every acknowledged publish is stored once, and new data lands.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, _) = publisher.stop().await;
    assert!(
        !acked.is_empty(),
        "the device published during the clean-up"
    );
    let acked: Vec<(String, u64)> = acked
        .into_iter()
        .map(|n| ("busy-1".to_owned(), n))
        .collect();
    // Acknowledged means in the write-ahead log; storage follows within a batch age.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_stored_once(&db, &acked).await;
    server.stop();

    // Zero days is refused with a reason.
    let out = std::process::Command::new(support::binary())
        .args(["--database-url", &db, "--retention-days", "0"])
        .output()
        .expect("fieldline runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
