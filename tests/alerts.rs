//! Alert rules end to end: a threshold with hysteresis and a duration in device time, an
//! offline rule raised from presence and cleared when the device is back, and a stale rule
//! raised once when a connected device stops sending a metric (its fixes going on) and
//! cleared by the next reading, never for a device that disconnected; both back ends.

#[macro_use]
mod support;

use serde_json::json;
use support::geo::{base_ms, created, kinds_of, rfc3339};
use support::live::Sse;
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(
    a_threshold_rule_with_hysteresis_and_for_s,
    an_offline_rule_is_raised_and_cleared,
    a_stale_rule_is_raised_once_for_a_connected_device_and_cleared_by_the_next_value,
);

async fn a_threshold_rule_with_hysteresis_and_for_s(backend: Backend) {
    let dir = TempDir::new("alert-threshold");
    let db = database(backend, &dir, "alert_threshold").await;
    let server = Server::start(&dir, &db).await;
    let rule = created(
        &server,
        "/api/rules",
        json!({"name": "Cold chain", "devices": ["fridge-*"], "metric": "temp_c", "above": 8.0, "clear_below": 7.5, "for_s": 120}),
    )
    .await;
    assert!(rule["id"].as_i64().is_some(), "{rule}");
    assert_eq!(
        server.get_ok("/api/rules").await.as_array().map(Vec::len),
        Some(1)
    );
    let mut live = Sse::open(&server, "kinds=alert", None).await;
    let base = base_ms();
    let readings = [
        (0, 9.0),   // above, but not for 120 s yet
        (60, 7.9),  // back below: the duration starts again
        (100, 8.5), // above from here ...
        (219, 8.6),
        (220, 8.7), // ... for 120 s: raised
        (230, 7.8), // between the levels: still raised
        (240, 9.5), // raised once
        (250, 7.4), // below the clear level: cleared
        (260, 7.0),
    ];
    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    let mut other = Device::connect(server.mqtt_port, "freezer-1").await;
    for (s, v) in readings {
        let doc = json!({"ts": base + s * 1000, "metrics": {"temp_c": v}}).to_string();
        fridge
            .publish("devices/fridge-1/telemetry", doc.clone())
            .await;
        // Not one of the rule's devices.
        other.publish("devices/freezer-1/telemetry", doc).await;
    }
    fridge.wait_acked(readings.len()).await;
    other.wait_acked(readings.len()).await;
    server
        .wait_for("/api/events?devices=fridge-1&kinds=alert", |b| {
            b.as_array().is_some_and(|a| a.len() >= 2)
        })
        .await;
    assert_eq!(
        kinds_of(&server, "fridge-1").await,
        [
            ("raised".to_owned(), rfc3339(base + 220_000)),
            ("cleared".to_owned(), rfc3339(base + 250_000)),
        ]
    );
    let events = server.get_ok("/api/events?kinds=alert").await;
    assert_eq!(
        events.as_array().map(Vec::len),
        Some(2),
        "freezer-1 raised nothing: {events}"
    );
    assert_eq!(events[0]["metric"], "temp_c");
    assert_eq!(events[0]["value"], 8.7);
    assert_eq!(events[0]["name"], "Cold chain");
    assert_eq!(events[0]["rule"], rule["id"]);
    for expected in ["raised", "cleared"] {
        let e = tokio::time::timeout(std::time::Duration::from_secs(20), live.event())
            .await
            .expect("a live alert")
            .json();
        assert_eq!(
            (e["kind"].as_str(), e["state"].as_str()),
            (Some("alert"), Some(expected)),
            "{e}"
        );
    }
}

async fn an_offline_rule_is_raised_and_cleared(backend: Backend) {
    let dir = TempDir::new("alert-offline");
    let db = database(backend, &dir, "alert_offline").await;
    let server = Server::start(&dir, &db).await;
    created(
        &server,
        "/api/rules",
        json!({"name": "Silent tracker", "devices": ["tracker-*"], "offline_for_s": 1}),
    )
    .await;
    let tracker = Device::connect(server.mqtt_port, "tracker-1").await;
    server
        .wait_for("/api/devices/tracker-1", |d| d["online"] == true)
        .await;
    tracker.client.disconnect().await.expect("disconnect");
    drop(tracker);
    let raised = server
        .wait_for("/api/events?devices=tracker-1&kinds=alert", |b| {
            b.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert_eq!(raised[0]["state"], "raised", "{raised}");
    assert_eq!(raised[0]["name"], "Silent tracker");
    let _back = Device::connect(server.mqtt_port, "tracker-1").await;
    let events = server
        .wait_for("/api/events?devices=tracker-1&kinds=alert", |b| {
            b.as_array().is_some_and(|a| a.len() >= 2)
        })
        .await;
    assert_eq!(events[1]["state"], "cleared", "{events}");
    // Raised once, dated one offline_for_s after the device went offline.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        server
            .get_ok("/api/events?devices=tracker-1&kinds=alert")
            .await
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

async fn a_stale_rule_is_raised_once_for_a_connected_device_and_cleared_by_the_next_value(
    backend: Backend,
) {
    let dir = TempDir::new("alert-stale");
    let db = database(backend, &dir, "alert_stale").await;
    let server = Server::start(&dir, &db).await;
    let rule = created(
        &server,
        "/api/rules",
        json!({"name": "Quiet fridge", "devices": ["fridge-*"], "metric": "temp_c", "stale_for_s": 2}),
    )
    .await;
    for (bad, why) in [
        (
            json!({"name": "x", "metric": "temp_c", "stale_for_s": 0}),
            "above 0",
        ),
        (
            json!({"name": "x", "metric": "temp_c", "stale_for_s": -1}),
            "stale_for_s",
        ),
        (
            json!({"name": "x", "metric": "temp_c", "above": 3, "stale_for_s": 5}),
            "takes no above",
        ),
    ] {
        let (status, reply) = server
            .request(reqwest::Method::POST, "/api/rules", None, Some(bad))
            .await;
        assert_eq!(status, 400, "{reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| e.contains(why)),
            "{reply}"
        );
    }

    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    let mut gone = Device::connect(server.mqtt_port, "fridge-2").await;
    let heard = now_ms();
    let reading = |ts: i64, v: f64| json!({"ts": ts, "metrics": {"temp_c": v}}).to_string();
    fridge
        .publish("devices/fridge-1/telemetry", reading(heard, 4.0))
        .await;
    gone.publish("devices/fridge-2/telemetry", reading(heard, 4.0))
        .await;
    fridge.wait_acked(1).await;
    gone.wait_acked(1).await;
    // fridge-2 leaves: its silence is the offline rule's business.
    gone.client.disconnect().await.expect("disconnect");
    drop(gone);

    // fridge-1 stays connected and keeps sending fixes, but no temperature.
    let fix = |seq: u64| json!({"seq": seq, "lat": 52.5, "lon": 13.4}).to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seq = 0;
    let raised = loop {
        seq += 1;
        fridge.publish("devices/fridge-1/location", fix(seq)).await;
        let (_, events) = server.get("/api/events?devices=fridge-1&kinds=alert").await;
        if events.as_array().is_some_and(|a| !a.is_empty()) {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never raised:\n{}",
            server.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(raised[0]["state"], "raised", "{raised}");
    assert_eq!(raised[0]["name"], "Quiet fridge");
    assert_eq!(raised[0]["rule"], rule["id"]);
    assert_eq!(raised[0]["metric"], "temp_c");
    // Dated in device time: the last reading's time plus the silence.
    assert_eq!(raised[0]["ts"], rfc3339(heard + 2_000), "{raised}");

    // Raised once, however long the silence goes on.
    for _ in 0..12 {
        seq += 1;
        fridge.publish("devices/fridge-1/location", fix(seq)).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    fridge.wait_acked(1 + seq as usize).await;
    let events = server
        .get_ok("/api/events?devices=fridge-1&kinds=alert")
        .await;
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");

    // The next reading clears it, dated by the reading.
    let back = now_ms();
    fridge
        .publish("devices/fridge-1/telemetry", reading(back, 4.5))
        .await;
    let events = server
        .wait_for("/api/events?devices=fridge-1&kinds=alert", |b| {
            b.as_array().is_some_and(|a| a.len() >= 2)
        })
        .await;
    assert_eq!(events[1]["state"], "cleared", "{events}");
    assert_eq!(events[1]["ts"], rfc3339(back));

    // The device that disconnected was never raised, though silent longer than the rule's 2 s.
    let events = server
        .get_ok("/api/events?devices=fridge-2&kinds=alert")
        .await;
    assert_eq!(events, json!([]), "{events}");
}
