//! End to end: devices publish over MQTT (rumqttc and mosquitto_pub), the real binary stores
//! what is valid, and every row is read back over HTTP. Each test runs against SQLite and
//! against PostgreSQL.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use support::{database, mosquitto_pub, Backend, Device, Server, TempDir};

on_both_backends!(
    device_summary_keeps_the_newest_values,
    stores_json_and_msgpack_single_and_batched,
    rejects_bad_input_and_stores_everything_around_it,
    stores_a_redelivered_seq_once,
    keeps_data_and_dedupe_across_a_restart,
    sigterm_during_load_loses_no_acknowledged_message,
);

fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("msgpack encodes JSON values")
}

async fn track(server: &Server, device: &str, n: usize) -> Vec<Value> {
    let body = server
        .wait_for(
            &format!("/api/devices/{device}/track?from=0&limit=100000"),
            |b| b.as_array().is_some_and(|a| a.len() >= n),
        )
        .await;
    body.as_array().expect("array").clone()
}

async fn telemetry(server: &Server, device: &str, n: usize) -> Vec<Value> {
    let body = server
        .wait_for(
            &format!("/api/devices/{device}/telemetry?from=0&limit=100000"),
            |b| b.as_array().is_some_and(|a| a.len() >= n),
        )
        .await;
    body.as_array().expect("array").clone()
}

fn point(ts: &str, seq: u64, lat: f64, lon: f64) -> Value {
    json!({"ts": ts, "seq": seq, "lat": lat, "lon": lon, "speed": null, "heading": null, "alt": null, "accuracy": null})
}

async fn stores_json_and_msgpack_single_and_batched(backend: Backend) {
    let dir = TempDir::new("store");
    let url = database(backend, &dir, "store").await;
    let server = Server::start(&dir, &url).await;
    let mut dev = Device::connect(server.mqtt_port, "test-client-1").await;

    // Location: JSON single (every field, RFC 3339 time) and JSON batch (epoch ms).
    dev.publish(
        "devices/truck-1/location",
        r#"{"ts":"2025-11-25T12:00:00.123Z","seq":43,"lat":40.7128,"lon":-74.006,"speed":12.3,"heading":270.0,"alt":10.5,"accuracy":4.0,"driver":"ignored"}"#,
    )
    .await;
    dev.publish(
        "devices/truck-1/location",
        r#"[{"ts":1764072001000,"seq":44,"lat":40.713,"lon":-74.0061},{"ts":1764072002000,"seq":45,"lat":40.7132,"lon":-74.0062}]"#,
    )
    .await;
    // Location: MessagePack single and batch.
    dev.publish("devices/van.2/location", msgpack(&json!({"ts": 1764072000000u64, "seq": 1, "lat": -33.8688, "lon": 151.2093, "speed": 3.5})))
        .await;
    dev.publish(
        "devices/van.2/location",
        msgpack(
            &json!([{"ts": 1764072001000u64, "seq": 2, "lat": -33.8689, "lon": 151.2094},
                        {"ts": 1764072002000u64, "seq": 3, "lat": -33.869, "lon": 151.2095}]),
        ),
    )
    .await;
    // Telemetry: JSON single, JSON batch, MessagePack single and batch.
    dev.publish(
        "devices/sensor_1/telemetry",
        r#"{"ts":1764072000000,"seq":1,"metrics":{"temp_c":21.5,"pump_on":true}}"#,
    )
    .await;
    dev.publish(
        "devices/sensor_1/telemetry",
        r#"[{"ts":1764072060000,"seq":2,"metrics":{"temp_c":21.7}},{"ts":1764072120000,"seq":3,"metrics":{"pump_on":false}}]"#,
    )
    .await;
    dev.publish(
        "devices/sensor_2/telemetry",
        msgpack(&json!({"ts": 1764072000000u64, "seq": 7, "metrics": {"moisture": 0.31}})),
    )
    .await;
    dev.publish(
        "devices/sensor_2/telemetry",
        msgpack(&json!([{"ts": 1764072060000u64, "seq": 8, "metrics": {"moisture": 0.32}}])),
    )
    .await;
    dev.wait_acked(8).await;
    // A third-party client, over MQTT 3.1.1 and MQTT 5.
    mosquitto_pub(
        server.mqtt_port,
        "devices/soil-9/telemetry",
        br#"{"ts":1764072000000,"seq":1,"metrics":{"ec":1.25}}"#,
        &[],
    );
    mosquitto_pub(
        server.mqtt_port,
        "devices/soil-9/location",
        br#"{"ts":1764072000000,"seq":1,"lat":52.52,"lon":13.405}"#,
        &["-V", "mqttv5"],
    );

    assert_eq!(
        track(&server, "truck-1", 3).await,
        vec![
            json!({"ts": "2025-11-25T12:00:00.123Z", "seq": 43, "lat": 40.7128, "lon": -74.006, "speed": 12.3, "heading": 270.0, "alt": 10.5, "accuracy": 4.0}),
            point("2025-11-25T12:00:01Z", 44, 40.713, -74.0061),
            point("2025-11-25T12:00:02Z", 45, 40.7132, -74.0062),
        ]
    );
    let mut first = point("2025-11-25T12:00:00Z", 1, -33.8688, 151.2093);
    first["speed"] = json!(3.5);
    assert_eq!(
        track(&server, "van.2", 3).await,
        vec![
            first,
            point("2025-11-25T12:00:01Z", 2, -33.8689, 151.2094),
            point("2025-11-25T12:00:02Z", 3, -33.869, 151.2095)
        ]
    );
    assert_eq!(
        telemetry(&server, "sensor_1", 4).await,
        vec![
            json!({"ts": "2025-11-25T12:00:00Z", "seq": 1, "metric": "pump_on", "value": 1.0}),
            json!({"ts": "2025-11-25T12:00:00Z", "seq": 1, "metric": "temp_c", "value": 21.5}),
            json!({"ts": "2025-11-25T12:01:00Z", "seq": 2, "metric": "temp_c", "value": 21.7}),
            json!({"ts": "2025-11-25T12:02:00Z", "seq": 3, "metric": "pump_on", "value": 0.0}),
        ]
    );
    let only_temp = server.get_ok("/api/devices/sensor_1/telemetry?metric=temp_c&from=2025-11-25T12:00:30Z&to=1764072090000").await;
    assert_eq!(
        only_temp,
        json!([{"ts": "2025-11-25T12:01:00Z", "seq": 2, "metric": "temp_c", "value": 21.7}])
    );
    assert_eq!(
        telemetry(&server, "sensor_2", 2).await,
        vec![
            json!({"ts": "2025-11-25T12:00:00Z", "seq": 7, "metric": "moisture", "value": 0.31}),
            json!({"ts": "2025-11-25T12:01:00Z", "seq": 8, "metric": "moisture", "value": 0.32}),
        ]
    );
    assert_eq!(
        telemetry(&server, "soil-9", 1).await,
        vec![json!({"ts": "2025-11-25T12:00:00Z", "seq": 1, "metric": "ec", "value": 1.25})]
    );
    assert_eq!(
        track(&server, "soil-9", 1).await,
        vec![point("2025-11-25T12:00:00Z", 1, 52.52, 13.405)]
    );

    // Device summaries: the newest fix and each metric's newest value.
    let devices = server.get_ok("/api/devices").await;
    let ids: Vec<&str> = devices
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    // The publishing connection's client id names a device too: its presence is tracked.
    assert_eq!(
        ids,
        vec![
            "sensor_1",
            "sensor_2",
            "soil-9",
            "test-client-1",
            "truck-1",
            "van.2"
        ]
    );
    let truck = server.get_ok("/api/devices/truck-1").await;
    assert_eq!(truck["location"]["ts"], "2025-11-25T12:00:02Z");
    assert_eq!(truck["location"]["lat"], 40.7132);
    let sensor = server.get_ok("/api/devices/sensor_1").await;
    assert_eq!(
        sensor["metrics"]["temp_c"],
        json!({"ts": "2025-11-25T12:01:00Z", "value": 21.7})
    );
    assert_eq!(
        sensor["metrics"]["pump_on"],
        json!({"ts": "2025-11-25T12:02:00Z", "value": 0.0})
    );

    // Track export formats.
    let geo = server
        .get_ok("/api/devices/van.2/track?from=0&format=geojson")
        .await;
    assert_eq!(
        geo["features"][0]["geometry"]["coordinates"][0],
        json!([151.2093, -33.8688])
    );
    let (status, csv) = server
        .get("/api/devices/van.2/track?from=0&format=csv")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        csv.as_str().expect("csv text").lines().nth(1),
        Some("2025-11-25T12:00:00Z,1,-33.8688,151.2093,3.5,,,")
    );

    // HTTP bad input: unknown device, bad id, bad times, unknown format, unknown endpoint.
    for (path, status) in [
        ("/api/devices/nobody", 404),
        ("/api/devices/nobody/track", 404),
        ("/api/devices/bad%20id", 400),
        ("/api/devices/truck-1/track?from=yesterday", 400),
        ("/api/devices/truck-1/track?from=10&to=5", 400),
        ("/api/devices/truck-1/track?format=kml", 400),
        ("/api/devices/truck-1/track?limit=0", 400),
        ("/api/devices/truck-1/track?limit=lots", 400),
        ("/api/devices/truck-1/track?to=-9223372036854775808", 400),
        ("/api/devices/truck-1/track?from=99999999999999999", 400),
        ("/api/devices/truck-1/telemetry?from=-1", 400),
        ("/api/nothing-here", 404),
    ] {
        let (got, body) = server.get(path).await;
        assert_eq!(got, status, "GET {path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "GET {path} gives a JSON error: {body}"
        );
    }
    let metrics = server.metrics_text().await;
    assert_eq!(
        server.metric(&metrics, "fieldline_broker_lost_messages_total"),
        0.0
    );
}

async fn rejects_bad_input_and_stores_everything_around_it(backend: Backend) {
    let dir = TempDir::new("reject");
    let url = database(backend, &dir, "reject").await;
    let server = Server::start(&dir, &url).await;
    let mut dev = Device::connect(server.mqtt_port, "bad-input").await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;

    let mut valid_seq = 0u64;
    let mut sent = 0;
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "devices/d1/location",
            b"{\"lat\": 1, \"lon\": ".to_vec(),
            "invalid_json",
        ),
        (
            "devices/d1/location",
            vec![0xc1, 0xff, 0x13, 0x37, 0x00],
            "invalid_msgpack",
        ),
        // A NUL byte: valid UTF-8, invalid JSON, and not storable as PostgreSQL text.
        (
            "devices/d1/location",
            b"{\"lat\":\"\0\"}".to_vec(),
            "invalid_json",
        ),
        (
            "devices/d1/location",
            br#"{"lat":91,"lon":0}"#.to_vec(),
            "out_of_range",
        ),
        // Built from maps, not JSON values: serde_json would turn NaN into null.
        (
            "devices/d1/location",
            rmp_serde::to_vec_named(&BTreeMap::from([("lat", f64::NAN), ("lon", 0.0)]))
                .expect("encodes"),
            "not_finite",
        ),
        (
            "devices/d1/telemetry",
            rmp_serde::to_vec_named(&BTreeMap::from([(
                "metrics",
                BTreeMap::from([("t", f64::INFINITY)]),
            )]))
            .expect("encodes"),
            "not_finite",
        ),
        (
            "devices/d1/location",
            format!(r#"{{"ts":{},"lat":1,"lon":1}}"#, now_ms + 3_600_000).into_bytes(),
            "future_timestamp",
        ),
        (
            "devices/d1/location",
            vec![b' '; 300 * 1024],
            "payload_too_large",
        ),
        (
            "devices/d1/altitude",
            br#"{"alt":1}"#.to_vec(),
            "unknown_topic",
        ),
        (
            "sensors/d1/location",
            br#"{"lat":1,"lon":1}"#.to_vec(),
            "unknown_topic",
        ),
        (
            "devices/bad$id/location",
            br#"{"lat":1,"lon":1}"#.to_vec(),
            "invalid_device_id",
        ),
        (
            "devices/caf\u{e9}/location",
            br#"{"lat":1,"lon":1}"#.to_vec(),
            "invalid_device_id",
        ),
    ];
    for (topic, payload, _) in &bad {
        valid_seq += 1;
        dev.publish(
            "devices/d1/location",
            format!(r#"{{"seq":{valid_seq},"lat":10,"lon":{valid_seq}}}"#),
        )
        .await;
        dev.publish(topic, payload.clone()).await;
        sent += 2;
    }
    // A batch with bad documents in the middle: the good ones are stored.
    let batch = r#"[{"seq":100,"lat":10,"lon":100},{"seq":101,"lat":-91,"lon":0},{"seq":102,"lat":"north","lon":0},{"seq":103,"lat":10,"lon":103}]"#;
    dev.publish("devices/d1/location", batch).await;
    sent += 1;
    valid_seq += 1;
    dev.publish(
        "devices/d1/location",
        format!(r#"{{"seq":{valid_seq},"lat":10,"lon":{valid_seq}}}"#),
    )
    .await;
    sent += 1;
    dev.wait_acked(sent).await;

    // Every valid fix is stored: 12 singles and 2 from the batch.
    let stored = track(&server, "d1", 14).await;
    let seqs: Vec<u64> = stored
        .iter()
        .map(|p| p["seq"].as_u64().expect("seq"))
        .collect();
    let mut expected: Vec<u64> = (1..=valid_seq).collect();
    expected.extend([100, 103]);
    expected.sort();
    let mut got = seqs.clone();
    got.sort();
    assert_eq!(got, expected);
    // Nothing of the bad ones was stored as data.
    assert!(stored.iter().all(|p| p["lat"] == json!(10.0)), "{stored:?}");
    assert_eq!(
        server.get("/api/devices/d1/telemetry?from=0").await.1,
        json!([])
    );

    // Each rejection is recorded with its reason, in order.
    let rejected = server
        .wait_for("/api/rejected?limit=1000", |b| {
            b.as_array().is_some_and(|a| a.len() >= bad.len() + 2)
        })
        .await;
    let mut rejected = rejected.as_array().expect("array").clone();
    rejected.reverse();
    let reasons: Vec<&str> = rejected
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    let mut expected_reasons: Vec<&str> = bad.iter().map(|(_, _, reason)| *reason).collect();
    expected_reasons.extend(["out_of_range", "invalid_document"]);
    assert_eq!(reasons, expected_reasons);
    let topics: Vec<&str> = rejected
        .iter()
        .take(bad.len())
        .filter_map(|r| r["topic"].as_str())
        .collect();
    assert_eq!(topics, bad.iter().map(|(t, _, _)| *t).collect::<Vec<_>>());
    let batch_details: Vec<&str> = rejected[bad.len()..]
        .iter()
        .filter_map(|r| r["detail"].as_str())
        .collect();
    assert!(
        batch_details[0].starts_with("document 1: lat -91"),
        "{batch_details:?}"
    );
    assert!(
        batch_details[1].starts_with("document 2: "),
        "{batch_details:?}"
    );
    assert_eq!(rejected[7]["payload_size"], json!(300 * 1024));
    assert_eq!(
        rejected[2]["payload_preview"],
        json!("{\"lat\":\"\u{FFFD}\"}")
    );

    // Counters by reason.
    let metrics = server.metrics_text().await;
    for (reason, count) in [
        ("invalid_json", 2.0),
        ("invalid_msgpack", 1.0),
        ("out_of_range", 2.0),
        ("not_finite", 2.0),
        ("future_timestamp", 1.0),
        ("payload_too_large", 1.0),
        ("unknown_topic", 2.0),
        ("invalid_device_id", 2.0),
        ("invalid_document", 1.0),
    ] {
        let name = format!("fieldline_rejected_messages_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&metrics, &name), count, "{name}\n{metrics}");
    }
    assert_eq!(
        server.metric(&metrics, "fieldline_broker_lost_messages_total"),
        0.0
    );
    // The connection that sent all this is still up and publishing.
    dev.publish("devices/d1/location", r#"{"seq":999,"lat":10,"lon":0}"#)
        .await;
    dev.wait_acked(sent + 1).await;
    track(&server, "d1", 15).await;
}

async fn stores_a_redelivered_seq_once(backend: Backend) {
    let dir = TempDir::new("dedupe");
    let url = database(backend, &dir, "dedupe").await;
    let server = Server::start(&dir, &url).await;
    let mut dev = Device::connect(server.mqtt_port, "dup").await;
    let fix = r#"{"ts":1764072000000,"seq":5,"lat":1,"lon":2}"#;
    dev.publish("devices/d/location", fix).await;
    dev.publish("devices/d/location", fix).await;
    // The same seq inside a batch, and again from another client.
    dev.publish("devices/d/location", format!("[{fix},{fix}]"))
        .await;
    mosquitto_pub(server.mqtt_port, "devices/d/location", fix.as_bytes(), &[]);
    // Another kind with the same seq is another stream; a document without seq is never deduplicated.
    dev.publish(
        "devices/d/telemetry",
        r#"{"ts":1764072000000,"seq":5,"metrics":{"v":1}}"#,
    )
    .await;
    dev.publish(
        "devices/d/location",
        r#"{"ts":1764072001000,"lat":1,"lon":2}"#,
    )
    .await;
    dev.publish(
        "devices/d/location",
        r#"{"ts":1764072001000,"lat":1,"lon":2}"#,
    )
    .await;
    dev.publish(
        "devices/d/location",
        r#"{"ts":1764072002000,"seq":6,"lat":1,"lon":2}"#,
    )
    .await;
    dev.wait_acked(7).await;

    let stored = track(&server, "d", 4).await;
    let seqs: Vec<Value> = stored.iter().map(|p| p["seq"].clone()).collect();
    assert_eq!(seqs, vec![json!(5), Value::Null, Value::Null, json!(6)]);
    assert_eq!(telemetry(&server, "d", 1).await.len(), 1);

    // A device that reboots and counts from 1 again, with a later clock: new data, stored;
    // a redelivery after the reboot is still caught.
    for (seq, ts) in [
        (1, 1764072000000u64),
        (2, 1764072001000),
        (3, 1764072002000),
        (1, 1764072010000),
        (2, 1764072011000),
        (2, 1764072011000),
    ] {
        dev.publish(
            "devices/reboot/location",
            format!(r#"{{"ts":{ts},"seq":{seq},"lat":1,"lon":2}}"#),
        )
        .await;
    }
    dev.wait_acked(13).await;
    let stored = track(&server, "reboot", 5).await;
    let seqs: Vec<u64> = stored.iter().filter_map(|p| p["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 1, 2]);
    let metrics = server.wait_for("/metrics", |_| true).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert_eq!(
        server.metric(
            &text,
            "fieldline_documents_duplicate_total{kind=\"location\"}"
        ),
        5.0,
        "{text}"
    );
}

async fn keeps_data_and_dedupe_across_a_restart(backend: Backend) {
    let fix = |seq: u64| {
        format!(
            r#"{{"ts":{},"seq":{seq},"lat":1,"lon":{seq}}}"#,
            1764072000000u64 + seq
        )
    };
    let dir = TempDir::new("restart");
    let url = database(backend, &dir, "restart").await;
    let mut server = Server::start(&dir, &url).await;
    let mut dev = Device::connect(server.mqtt_port, "r").await;
    for seq in 1..=20u64 {
        dev.publish("devices/r1/location", fix(seq)).await;
    }
    dev.wait_acked(20).await;
    track(&server, "r1", 20).await;
    drop(dev);
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status}:\n{}",
        server.log_text()
    );

    let server = Server::start(&dir, &url).await;
    let stored = track(&server, "r1", 20).await;
    assert_eq!(stored.len(), 20);
    assert_eq!(
        server.get_ok("/api/devices/r1").await["location"]["seq"],
        20
    );
    // A device resending after the restart does not duplicate what is stored.
    let mut dev = Device::connect(server.mqtt_port, "r").await;
    for seq in 18..=22u64 {
        dev.publish("devices/r1/location", fix(seq)).await;
    }
    dev.wait_acked(5).await;
    let stored = track(&server, "r1", 22).await;
    let seqs: Vec<u64> = stored.iter().filter_map(|p| p["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=22).collect::<Vec<_>>());
    // The device reboots and counts from 1 again with a later clock: stored, not dropped.
    dev.publish(
        "devices/r1/location",
        r#"{"ts":1764072100000,"seq":1,"lat":1,"lon":1}"#,
    )
    .await;
    dev.wait_acked(6).await;
    let stored = track(&server, "r1", 23).await;
    assert_eq!(stored[22]["seq"], 1);
}

async fn sigterm_during_load_loses_no_acknowledged_message(backend: Backend) {
    let dir = TempDir::new("sigterm");
    let url = database(backend, &dir, "sigterm").await;
    let mut server = Server::start(&dir, &url).await;
    const DEVICES: usize = 4;
    const MAX_PER_DEVICE: u64 = 200_000;
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(Device::connect(server.mqtt_port, &format!("load-{d}")).await);
    }
    // Publish flat out on every connection; each stops when its connection goes away.
    let mut publishers = Vec::new();
    for (d, dev) in devices.iter().enumerate() {
        let client = dev.client.clone();
        publishers.push(tokio::spawn(async move {
            for seq in 1..=MAX_PER_DEVICE {
                let payload = format!(r#"{{"seq":{seq},"lat":1.5,"lon":2.5}}"#);
                let sent = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    client.publish(
                        format!("devices/load-{d}/location"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        payload,
                    ),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
        }));
    }
    // SIGTERM once the broker is well into the load (a count, not a time).
    for dev in devices.iter_mut() {
        dev.wait_acked(2_000).await;
    }
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM exits 0 under load, got {status}:\n{}",
        server.log_text()
    );
    for p in publishers {
        p.abort();
    }
    // PUBACKs come back in order on one connection, so the first `acked` seqs were acknowledged.
    let acked: Vec<usize> = devices.iter().map(|d| d.acked()).collect();
    drop(devices);
    assert!(acked.iter().all(|&a| a >= 2_000));

    let server = Server::start(&dir, &url).await;
    for (d, &acked) in acked.iter().enumerate() {
        let body = server
            .get_ok(&format!("/api/devices/load-{d}/track?from=0&limit=100000"))
            .await;
        let stored: BTreeSet<u64> = body
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|p| p["seq"].as_u64())
            .collect();
        let missing: Vec<u64> = (1..=acked as u64)
            .filter(|s| !stored.contains(s))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "device {d}: {acked} acknowledged, missing seqs {missing:?}"
        );
        assert_eq!(
            stored.len(),
            body.as_array().expect("array").len(),
            "no duplicates"
        );
    }
}

async fn device_summary_keeps_the_newest_values(backend: Backend) {
    let dir = TempDir::new("newest");
    let url = database(backend, &dir, "newest").await;
    let server = Server::start(&dir, &url).await;
    let mut dev = Device::connect(server.mqtt_port, "newest").await;
    dev.publish(
        "devices/n1/telemetry",
        r#"{"ts":1764072060000,"seq":2,"metrics":{"t":20.0,"h":0.5}}"#,
    )
    .await;
    dev.publish(
        "devices/n1/location",
        r#"{"ts":1764072060000,"seq":2,"lat":2,"lon":2}"#,
    )
    .await;
    dev.wait_acked(2).await;
    // Stored means written: a batch is one transaction, so the location is stored too and
    // the back-filled history below arrives in a later batch. It is stored, but the summary
    // keeps the newer values.
    telemetry(&server, "n1", 2).await;
    dev.publish(
        "devices/n1/telemetry",
        r#"{"ts":1764072000000,"seq":1,"metrics":{"t":10.0,"p":1}}"#,
    )
    .await;
    dev.publish(
        "devices/n1/location",
        r#"{"ts":1764072000000,"seq":1,"lat":1,"lon":1}"#,
    )
    .await;
    dev.wait_acked(4).await;
    telemetry(&server, "n1", 4).await;
    track(&server, "n1", 2).await;
    let summary = server.get_ok("/api/devices/n1").await;
    assert_eq!(
        summary["metrics"]["t"],
        json!({"ts": "2025-11-25T12:01:00Z", "value": 20.0})
    );
    assert_eq!(summary["metrics"]["h"]["value"], 0.5);
    assert_eq!(
        summary["metrics"]["p"],
        json!({"ts": "2025-11-25T12:00:00Z", "value": 1.0}),
        "a new metric is added"
    );
    assert_eq!(summary["location"]["lat"], 2.0);
    assert!(
        summary["first_seen"].as_str() < summary["last_seen"].as_str(),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_before_connect_is_never_stored() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new("no-connect");
    let url = database(Backend::Sqlite, &dir, "no_connect").await;
    let server = Server::start(&dir, &url).await;
    // A raw MQTT PUBLISH (QoS 0) as the first packet on a socket, with no CONNECT.
    let topic = b"devices/sneaky/location";
    let payload = br#"{"lat":1,"lon":2}"#;
    let mut packet = vec![
        0x30,
        (2 + topic.len() + payload.len()) as u8,
        0,
        topic.len() as u8,
    ];
    packet.extend_from_slice(topic);
    packet.extend_from_slice(payload);
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", server.mqtt_port))
        .await
        .expect("connect");
    raw.write_all(&packet).await.expect("write");
    // A proper device afterwards: once its fix is stored, the raw one would have been too.
    let mut dev = Device::connect(server.mqtt_port, "legit").await;
    dev.publish("devices/legit/location", r#"{"lat":1,"lon":2}"#)
        .await;
    dev.wait_acked(1).await;
    track(&server, "legit", 1).await;
    assert_eq!(server.get("/api/devices/sneaky").await.0, 404);
    let metrics = server.metrics_text().await;
    assert_eq!(
        server.metric(&metrics, "fieldline_messages_received_total"),
        1.0,
        "{metrics}"
    );
}
