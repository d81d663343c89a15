//! Live views end to end: devices publish over MQTT to the real binary, and real SSE
//! (reqwest) and WebSocket (tokio-tungstenite) clients read the streams as a dashboard would;
//! the ordering, filter and resume tests run over plain HTTP and again over HTTPS (a test CA,
//! `--https-only`).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::live::{Sse, Ws};
use support::{database, Backend, Device, Server, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn fix(seq: u64) -> Vec<u8> {
    json!({"seq": seq, "lat": 40.5 + seq as f64 * 1e-5, "lon": -74.0, "speed": 3.5})
        .to_string()
        .into_bytes()
}

/// How a test reaches the API.
#[derive(Clone, Copy)]
enum Over {
    Http,
    Https,
}

/// Runs a test body over plain HTTP and over HTTPS: `mod name { http, https }`.
macro_rules! over_http_and_https {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn http() {
                super::$name(Over::Http).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn https() {
                super::$name(Over::Https).await
            }
        }
    };
}

over_http_and_https!(every_event_arrives_once_and_in_order_over_sse_and_both_websocket_formats);
over_http_and_https!(filters_by_kind_device_and_bounding_box_and_change_on_an_open_socket);
over_http_and_https!(resume_after_a_disconnect_delivers_exactly_the_missed_events);

async fn sqlite_server(dir: &TempDir, extra: &[&str], over: Over) -> Server {
    let url = database(Backend::Sqlite, dir, "live").await;
    match over {
        Over::Http => Server::start_with(dir, &url, extra).await,
        Over::Https => Server::start_https(dir, &url, extra).await,
    }
}

/// Publishes fixes `seqs` from `device`, waiting for every PUBACK (so they are in the hub).
async fn publish_fixes(device: &mut Device, seqs: std::ops::RangeInclusive<u64>) {
    let already = device.acked();
    let n = seqs.clone().count();
    for seq in seqs {
        device
            .publish(&format!("devices/{}/location", device_id(device)), fix(seq))
            .await;
    }
    device.wait_acked(already + n).await;
}

fn device_id(device: &Device) -> String {
    device.client_id.clone()
}

fn offset(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .expect("ids end in an offset")
}

/// (kind, device, seq) of an event, for comparing streams.
fn key(event: &Value) -> (String, String, Option<u64>) {
    (
        event["kind"].as_str().unwrap_or("").to_string(),
        event["device"].as_str().unwrap_or("").to_string(),
        event["seq"].as_u64(),
    )
}

async fn every_event_arrives_once_and_in_order_over_sse_and_both_websocket_formats(over: Over) {
    let dir = TempDir::new("live-order");
    let server = sqlite_server(&dir, &[], over).await;
    let mut sse = Sse::open(&server, "", None).await;
    let mut ws_json = Ws::open(&server, "fieldline.json").await;
    ws_json.subscribe(json!({"type": "subscribe"})).await;
    let mut ws_msgpack = Ws::open(&server, "fieldline.msgpack").await;
    ws_msgpack.subscribe(json!({"type": "subscribe"})).await;

    let mut truck = Device::connect(server.mqtt_port, "truck-1").await;
    publish_fixes(&mut truck, 1..=300).await;
    // Telemetry in batches of 10, MessagePack payloads.
    for batch in 0..20u64 {
        let docs: Vec<Value> = (0..10)
            .map(|i| json!({"seq": batch * 10 + i + 1, "metrics": {"temp_c": 20.0 + i as f64, "pump_on": true}}))
            .collect();
        truck
            .publish(
                "devices/truck-1/telemetry",
                rmp_serde::to_vec_named(&docs).expect("msgpack"),
            )
            .await;
    }
    truck.wait_acked(320).await;
    let total = 1 + 300 + 200; // online status, fixes, readings

    let frames = sse.events(total).await;
    let sse_events: Vec<Value> = frames.iter().map(|f| f.json()).collect();
    for (frame, event) in frames.iter().zip(&sse_events) {
        assert_eq!(
            frame.id.as_deref(),
            event["id"].as_str(),
            "SSE id is the event id"
        );
        assert_eq!(frame.event.as_deref(), event["kind"].as_str());
    }
    // Ids grow with every event (by their message's place in the log, so not by one).
    let offsets: Vec<u64> = sse_events
        .iter()
        .map(|e| offset(e["id"].as_str().expect("id")))
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[1] > w[0]),
        "ids grow: {offsets:?}"
    );
    // The ten readings of one payload are one message: their ids are consecutive.
    let batch: Vec<u64> = sse_events
        .iter()
        .zip(&offsets)
        .filter(|(e, _)| e["kind"] == "telemetry")
        .take(10)
        .map(|(_, &o)| o)
        .collect();
    assert!(batch.windows(2).all(|w| w[1] == w[0] + 1), "{batch:?}");
    assert_eq!(
        key(&sse_events[0]),
        ("status".into(), "truck-1".into(), None)
    );
    assert_eq!(sse_events[0]["online"], true);
    let fixes: Vec<u64> = sse_events
        .iter()
        .filter(|e| e["kind"] == "location")
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(fixes, (1..=300).collect::<Vec<_>>());
    let readings: Vec<u64> = sse_events
        .iter()
        .filter(|e| e["kind"] == "telemetry")
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(readings, (1..=200).collect::<Vec<_>>());
    assert_eq!(
        sse_events[1],
        json!({"kind": "location", "id": sse_events[1]["id"], "device": "truck-1",
               "ts": sse_events[1]["ts"], "seq": 1, "lat": 40.50001, "lon": -74.0,
               "speed": 3.5, "heading": null, "alt": null, "accuracy": null})
    );
    assert_eq!(
        sse_events[301]["metrics"],
        json!({"temp_c": 20.0, "pump_on": 1.0})
    );

    let json_events = ws_json.events(total).await;
    assert_eq!(
        json_events, sse_events,
        "WebSocket JSON carries the same events"
    );
    let msgpack_events = ws_msgpack.events(total).await;
    assert_eq!(
        msgpack_events, sse_events,
        "MessagePack frames decode to the same events"
    );
}

async fn filters_by_kind_device_and_bounding_box_and_change_on_an_open_socket(over: Over) {
    let dir = TempDir::new("live-filters");
    let server = sqlite_server(&dir, &[], over).await;
    let mut telemetry_only = Sse::open(&server, "kinds=telemetry", None).await;
    let mut only_b = Sse::open(&server, "devices=dev-b", None).await;
    let mut in_new_york = Sse::open(&server, "bbox=-75,40,-73,41", None).await;
    let mut ws = Ws::open(&server, "fieldline.json").await;
    ws.subscribe(json!({"type": "subscribe", "kinds": ["location"], "devices": ["dev-a"]}))
        .await;

    let k =
        |kind: &str, device: &str, seq: Option<u64>| (kind.to_string(), device.to_string(), seq);
    let mut a = Device::connect(server.mqtt_port, "dev-a").await;
    let mut b = Device::connect(server.mqtt_port, "dev-b").await;
    let publish = |device: &Device, kind: &str, body: Value| {
        let topic = format!("devices/{}/{kind}", device.client_id);
        let client = device.client.clone();
        async move {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string())
                .await
                .expect("publish queued");
        }
    };
    // One at a time, each acknowledged, so the global order is known.
    publish(&a, "location", json!({"seq": 1, "lat": 40.7, "lon": -74.0})).await;
    a.wait_acked(1).await;
    publish(&b, "location", json!({"seq": 1, "lat": 51.5, "lon": -0.1})).await;
    b.wait_acked(1).await;
    publish(&a, "telemetry", json!({"seq": 1, "metrics": {"x": 1}})).await;
    a.wait_acked(2).await;
    publish(&b, "telemetry", json!({"seq": 1, "metrics": {"x": 2}})).await;
    b.wait_acked(2).await;
    assert_eq!(key(&ws.next().await), k("location", "dev-a", Some(1)));
    // New filters on the open socket: dev-b's telemetry, from the last event this socket got
    // (so dev-b's reading published meanwhile is not lost).
    let ack = ws
        .subscribe(json!({"type": "subscribe", "kinds": ["telemetry"], "devices": ["dev-b"]}))
        .await;
    assert!(
        ack["id"].is_string(),
        "the reply says where the stream stands: {ack}"
    );
    publish(&a, "telemetry", json!({"seq": 99, "metrics": {"x": 3}})).await;
    a.wait_acked(3).await;
    publish(&b, "telemetry", json!({"seq": 99, "metrics": {"x": 4}})).await;
    b.wait_acked(3).await;

    let keys = |events: Vec<Value>| events.iter().map(key).collect::<Vec<_>>();
    let sse_keys =
        |frames: Vec<support::live::Frame>| keys(frames.iter().map(|f| f.json()).collect());
    assert_eq!(
        sse_keys(telemetry_only.events(4).await),
        [
            k("telemetry", "dev-a", Some(1)),
            k("telemetry", "dev-b", Some(1)),
            k("telemetry", "dev-a", Some(99)),
            k("telemetry", "dev-b", Some(99)),
        ]
    );
    assert_eq!(
        sse_keys(only_b.events(4).await),
        [
            k("status", "dev-b", None),
            k("location", "dev-b", Some(1)),
            k("telemetry", "dev-b", Some(1)),
            k("telemetry", "dev-b", Some(99)),
        ]
    );
    // The box: dev-a's fix inside it, then dev-a's other events (its newest fix is inside);
    // nothing of dev-b (outside), and not dev-a's "online" (no fix known yet then).
    assert_eq!(
        sse_keys(in_new_york.events(3).await),
        [
            k("location", "dev-a", Some(1)),
            k("telemetry", "dev-a", Some(1)),
            k("telemetry", "dev-a", Some(99)),
        ]
    );
    assert_eq!(key(&ws.next().await), k("telemetry", "dev-b", Some(1)));
    assert_eq!(key(&ws.next().await), k("telemetry", "dev-b", Some(99)));
}

async fn resume_after_a_disconnect_delivers_exactly_the_missed_events(over: Over) {
    let dir = TempDir::new("live-resume");
    let server = sqlite_server(&dir, &[], over).await;
    let mut device = Device::connect(server.mqtt_port, "van-3").await;
    let mut sse = Sse::open(&server, "kinds=location", None).await;
    let mut ws = Ws::open(&server, "fieldline.msgpack").await;
    ws.subscribe(json!({"type": "subscribe", "kinds": ["location"]}))
        .await;
    publish_fixes(&mut device, 1..=100).await;
    let seen = sse.events(60).await;
    let last_seen = seen[59].id.clone().expect("events have ids");
    assert_eq!(seen[59].json()["seq"], 60);
    let ws_seen = ws.events(40).await;
    let ws_last = ws_seen[39]["id"].as_str().expect("id").to_string();
    // Both clients go away mid-stream; events go on without them.
    drop(sse);
    drop(ws);
    publish_fixes(&mut device, 101..=200).await;

    let seqs = |events: &[Value]| {
        events
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect::<Vec<_>>()
    };
    // EventSource style: the Last-Event-ID header.
    let mut resumed = Sse::open(&server, "kinds=location", Some(&last_seen)).await;
    let events: Vec<Value> = resumed.events(140).await.iter().map(|f| f.json()).collect();
    assert_eq!(
        seqs(&events),
        (61..=200).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    // The `since` parameter does the same, and then the stream goes on live.
    let mut by_query = Sse::open(&server, &format!("kinds=location&since={last_seen}"), None).await;
    let events: Vec<Value> = by_query
        .events(140)
        .await
        .iter()
        .map(|f| f.json())
        .collect();
    assert_eq!(seqs(&events), (61..=200).collect::<Vec<_>>());
    publish_fixes(&mut device, 201..=201).await;
    assert_eq!(by_query.event().await.json()["seq"], 201, "then live");
    assert_eq!(resumed.event().await.json()["seq"], 201);

    let mut ws = Ws::open(&server, "fieldline.msgpack").await;
    ws.subscribe(json!({"type": "subscribe", "kinds": ["location"], "since": ws_last}))
        .await;
    let events = ws.events(161).await;
    assert_eq!(seqs(&events), (41..=201).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_when_the_history_is_exceeded_or_the_server_restarted_without_a_log() {
    let dir = TempDir::new("live-reset");
    let url = database(Backend::Sqlite, &dir, "live").await;
    let mut server = Server::start_with(&dir, &url, &["--live-history-events", "50"]).await;
    let mut device = Device::connect(server.mqtt_port, "bus-9").await;
    let mut sse = Sse::open(&server, "kinds=location", None).await;
    publish_fixes(&mut device, 1..=1).await;
    let first = sse.event().await.id.expect("id");
    drop(sse);
    // A PUBACK can come before the event reaches the live history: watched until all 99 are
    // there, so the client below comes back to a gap of 99, not to some still arriving.
    let mut watcher = Sse::open(&server, "kinds=location", None).await;
    publish_fixes(&mut device, 2..=100).await;
    while watcher.event().await.json()["seq"] != 100 {}
    drop(watcher);

    // 99 events later, with 50 held: the gap cannot be filled.
    let mut sse = Sse::open(&server, "kinds=location", Some(&first)).await;
    let reset = sse.event().await;
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    let reset_id = reset.id.expect("a reset carries the id to resume from");
    publish_fixes(&mut device, 101..=101).await;
    let next = sse.event().await;
    assert_eq!(next.json()["seq"], 101, "after the reset, live events");
    assert!(offset(next.id.as_deref().expect("id")) > offset(&reset_id));
    let mut ws = Ws::open(&server, "fieldline.json").await;
    ws.subscribe(json!({"type": "subscribe", "since": first}))
        .await;
    assert_eq!(ws.next().await["type"], "reset");
    drop(device);

    // Without a write-ahead log (`--durability memory`) there is nothing to rebuild the
    // history from: a position from before a restart belongs to another epoch.
    let last = next.id.expect("id");
    server.stop();
    let server = Server::start_with(&dir, &url, &["--durability", "memory"]).await;
    let mut sse = Sse::open(&server, "", Some(&last)).await;
    assert_eq!(sse.event().await.event.as_deref(), Some("reset"));
    let mut ws = Ws::open(&server, "fieldline.json").await;
    ws.subscribe(json!({"type": "subscribe", "since": last}))
        .await;
    assert_eq!(ws.next().await["type"], "reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_never_slows_ingest_or_other_clients() {
    let dir = TempDir::new("live-stalled");
    let server = sqlite_server(
        &dir,
        &["--live-client-queue", "2048", "--live-stall-seconds", "2"],
        Over::Http,
    )
    .await;
    // A client that connects and never reads, with the smallest receive buffer it can have.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = socket
        .connect(([127, 0, 0, 1], server.http_port).into())
        .await
        .expect("connect");
    stalled
        .write_all(b"GET /api/stream HTTP/1.1\r\nHost: fieldline\r\n\r\n")
        .await
        .expect("request sent");
    let mut normal = Sse::open(&server, "kinds=location", None).await;
    // Make sure the stalled client is registered before the flood.
    let mut head = [0u8; 64];
    let _ = stalled.read(&mut head).await.expect("response head");

    let mut devices = Vec::new();
    for i in 0..4 {
        devices.push(Device::connect(server.mqtt_port, &format!("fast-{i}")).await);
    }
    // 4 devices × 12,000 fixes in batches of 500: far more than the socket buffers hold.
    // Each round is read by the normal client before the next is sent, so it keeps up by
    // construction (a round is smaller than its queue) while the stalled one never reads.
    let per_device = 12_000u64;
    let mut last = BTreeMap::new();
    for (round, start) in (1..=per_device).step_by(500).enumerate() {
        for (i, device) in devices.iter_mut().enumerate() {
            let docs: Vec<Value> = (start..start + 500)
                .map(|seq| json!({"seq": seq, "lat": 10.0 + i as f64, "lon": 20.0}))
                .collect();
            device
                .publish(
                    &format!("devices/fast-{i}/location"),
                    Value::Array(docs).to_string(),
                )
                .await;
            device.wait_acked(round + 1).await;
        }
        for _ in 0..4 * 500 {
            let event = normal.event().await.json();
            assert!(
                event.get("skipped").is_none(),
                "a client that keeps up is never conflated"
            );
            let seq = event["seq"].as_u64().expect("seq");
            let previous = last.insert(event["device"].as_str().expect("device").to_string(), seq);
            assert_eq!(previous.unwrap_or(0) + 1, seq, "in order, no gap");
        }
    }
    assert!(last.values().all(|&s| s == per_device));
    // Everything was stored too: ingest did not wait for the stalled client.
    for i in 0..4 {
        server
            .wait_for(&format!("/api/devices/fast-{i}"), |d| {
                d["location"]["seq"] == per_device
            })
            .await;
    }
    let metrics = server.metrics_text().await;
    let conflated = server.metric(&metrics, "fieldline_live_conflated_events_total");
    let cut_off = metrics
        .lines()
        .any(|l| l.starts_with("fieldline_live_disconnects_total{reason=\"stalled\"}"));
    assert!(
        conflated > 0.0 || cut_off,
        "the stalled client was conflated or cut off:\n{metrics}"
    );

    // When it finally reads, it sees skipped counts or the reason it was cut off.
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = String::from_utf8_lossy(&seen);
        if text.contains("\"skipped\":") || text.contains("event: error") {
            break;
        }
        let n = tokio::time::timeout_at(deadline, stalled.read(&mut chunk))
            .await
            .expect("the stalled client learns what happened within 30 s")
            .expect("read");
        assert!(n > 0, "stream ended without saying why");
        seen.extend_from_slice(&chunk[..n]);
        // Keep only a tail: the start is just old events.
        if seen.len() > 1 << 20 {
            seen.drain(..seen.len() - 4096);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_requests_get_clear_errors_and_the_server_stays_up() {
    let dir = TempDir::new("live-bad");
    let server = sqlite_server(&dir, &[], Over::Http).await;
    for (query, expected) in [
        ("kinds=location,weather", "unknown kind"),
        ("bbox=1,2,3", "bbox"),
        ("bbox=0,50,10,40", "bbox"),
        ("bbox=a,b,c,d", "bbox"),
        ("devices=ok,not%20ok", "device id"),
        ("since=garbage", "since"),
        ("since=1-99999999999999999999999999", "since"),
    ] {
        let (status, body) = server.get(&format!("/api/stream?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains(expected),
            "{query}: {body}"
        );
    }
    // A well-formed position this server never issued, or garbage from an EventSource's
    // Last-Event-ID, starts the stream with a reset rather than failing it.
    let mut sse = Sse::open(&server, "since=ffffffff-123456789012", None).await;
    assert_eq!(sse.event().await.event.as_deref(), Some("reset"));
    let mut sse = Sse::open(&server, "", Some("not-a-position")).await;
    assert_eq!(sse.event().await.event.as_deref(), Some("reset"));

    let mut ws = Ws::open(&server, "fieldline.json").await;
    for (message, expected) in [
        (Message::Text("{not json".into()), "malformed"),
        (Message::Text("[1,2]".into()), "malformed"),
        (
            Message::Text(r#"{"type": "dance"}"#.into()),
            "unknown message type",
        ),
        (
            Message::Text(r#"{"type": "subscribe", "kinds": ["weather"]}"#.into()),
            "unknown kind",
        ),
        (
            Message::Text(r#"{"type": "subscribe", "bbox": [1, 2]}"#.into()),
            "bbox",
        ),
        (
            Message::Text(r#"{"type": "subscribe", "bbox": "x"}"#.into()),
            "malformed",
        ),
        (
            Message::Text(r#"{"type": "subscribe", "since": "nope"}"#.into()),
            "since",
        ),
    ] {
        ws.send_raw(message.clone()).await;
        let reply = ws.next().await;
        assert_eq!(reply["type"], "error", "{message:?}: {reply}");
        assert!(
            reply["error"].as_str().unwrap_or("").contains(expected),
            "{message:?}: {reply}"
        );
    }
    // The socket is still usable after the mistakes.
    ws.subscribe(json!({"type": "subscribe", "since": "ffffffff-99999999999999"}))
        .await;
    assert_eq!(
        ws.next().await["type"],
        "reset",
        "a huge since is answered with a reset"
    );
    // Binary frames on the JSON subprotocol: closed with 1003 and a reason.
    ws.send_raw(Message::Binary(vec![0x81, 0xa1, b'x'].into()))
        .await;
    match ws.frame().await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1003);
            assert!(frame.reason.contains("msgpack"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let mut ws = Ws::open(&server, "fieldline.msgpack").await;
    ws.send_raw(Message::Binary(vec![0xc1, 0xc1].into())).await;
    assert_eq!(
        ws.next().await["type"],
        "error",
        "garbage MessagePack gets an error"
    );
    // A message over the 1 MiB limit ends that socket and nothing else.
    let mut huge = Ws::open(&server, "fieldline.json").await;
    let subscribe = format!(
        r#"{{"type": "subscribe", "devices": ["{}"]}}"#,
        "a".repeat(2 << 20)
    );
    // The server may reset the connection before the client has even finished sending.
    let sent = huge.try_send_raw(Message::Text(subscribe.into())).await;
    while let Some(frame) = if sent { huge.raw().await } else { None } {
        assert!(
            matches!(
                frame,
                Message::Close(_) | Message::Ping(_) | Message::Pong(_)
            ),
            "no reply but the end: {frame:?}"
        );
        if matches!(frame, Message::Close(_)) {
            break;
        }
    }
    let mut ws = Ws::open(&server, "fieldline.json").await;
    ws.subscribe(json!({"type": "subscribe"})).await;
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200, "the server stays up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keep_alives_and_clients_are_counted() {
    let dir = TempDir::new("live-keepalive");
    let server = sqlite_server(&dir, &[], Over::Http).await;
    let mut sse = Sse::open(&server, "", None).await;
    let mut ws = Ws::open(&server, "fieldline.json").await;
    ws.subscribe(json!({"type": "subscribe"})).await;
    let metrics = server
        .wait_for_metrics(|m| m.contains("fieldline_live_subscriptions 2"))
        .await;
    assert!(
        metrics.contains(r#"fieldline_live_clients{transport="sse"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fieldline_live_clients{transport="ws"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("fieldline_live_queued_events 0"),
        "{metrics}"
    );
    // Nothing happens for 15 s: a comment line on SSE, a ping on WebSocket.
    let (comment, ping) = tokio::join!(sse.frame(), ws.raw());
    assert_eq!(
        comment.comment.as_deref(),
        Some("keep-alive"),
        "{comment:?}"
    );
    assert!(matches!(ping, Some(Message::Ping(_))), "{ping:?}");
    drop((sse, ws));
    server
        .wait_for_metrics(|m| m.contains("fieldline_live_subscriptions 0"))
        .await;
}
