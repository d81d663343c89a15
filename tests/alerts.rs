//! Alert rules end to end: a threshold with hysteresis and a duration in device time, and an
//! offline rule raised from presence and cleared when the device is back; both back ends.

#[macro_use]
mod support;

use serde_json::json;
use support::geo::{base_ms, created, kinds_of, rfc3339};
use support::live::Sse;
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(
    a_threshold_rule_with_hysteresis_and_for_s,
    an_offline_rule_is_raised_and_cleared,
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
        .wait_for("/api/events?devices=fridge-1", |b| {
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
        .wait_for("/api/events?devices=tracker-1", |b| {
            b.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert_eq!(raised[0]["state"], "raised", "{raised}");
    assert_eq!(raised[0]["name"], "Silent tracker");
    let _back = Device::connect(server.mqtt_port, "tracker-1").await;
    let events = server
        .wait_for("/api/events?devices=tracker-1", |b| {
            b.as_array().is_some_and(|a| a.len() >= 2)
        })
        .await;
    assert_eq!(events[1]["state"], "cleared", "{events}");
    // Raised once, dated one offline_for_s after the device went offline.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        server
            .get_ok("/api/events?devices=tracker-1")
            .await
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}
