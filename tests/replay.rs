//! Replay end to end on both back ends: two devices' locations, telemetry, statuses and
//! geofence events merged in time order with the same fields as the live stream; `max`;
//! resume by `Last-Event-ID` inside a run of equal timestamps; `skip_gaps`; pause, seek,
//! speed and play over WebSocket with clock ticks; and bad requests refused with reasons.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::geo::{base_ms, created, east, rfc3339, square};
use support::live::{Frame, Sse, Ws};
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(
    replay_merges_everything_in_order_and_resumes,
    replay_is_controlled_over_websocket,
);

const LAT: f64 = 52.0;
const LON: f64 = 13.0;
/// The second group of van-b's fixes, after an hour's quiet.
const GAP_MS: i64 = 3_600_000;

struct History {
    base: i64,
    to: i64,
    /// What the live stream sent for these documents and events, without its ids, keyed by
    /// (ts, kind, device, seq).
    live: BTreeMap<(String, String, String, String), Value>,
}

fn key(event: &Value) -> (String, String, String, String) {
    let text = |k: &str| event[k].to_string();
    (text("ts"), text("kind"), text("device"), text("seq"))
}

/// An RFC 3339 time as epoch ms (texts with and without fractions do not sort as times).
fn ms(ts: &Value) -> i64 {
    ts.as_str()
        .and_then(fieldline_store::time_format::parse_api_time)
        .unwrap_or_else(|| panic!("not a time: {ts}"))
}

fn without_id(event: &Value) -> Value {
    let mut v = event.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("id");
    }
    v
}

/// Two vans: van-a drives east through a fence with two readings every 5 s, van-b stands
/// with fixes half a second off van-a's (and equal every 10 s), publishes one status, and
/// comes back an hour later. Everything is watched on the live stream as it is stored.
async fn publish_history(server: &Server) -> History {
    created(
        server,
        "/api/geofences",
        square("depot", LAT, LON, 200.0, json!({})),
    )
    .await;
    let base = base_ms();
    let mut live = Sse::open(server, "devices=van-a,van-b", None).await;
    let mut a = Device::connect(server.mqtt_port, "van-a").await;
    let mut b = Device::connect(server.mqtt_port, "van-b").await;
    let mut sent = 0;
    for i in 0..60i64 {
        let lon = east(LAT, LON, -300.0 + 10.0 * i as f64);
        let fix =
            json!({"ts": base + i * 1000, "seq": i + 1, "lat": LAT, "lon": lon, "speed": 10.0});
        a.publish("devices/van-a/location", fix.to_string()).await;
        let off = if i % 10 == 0 { 0 } else { 500 };
        let fix = json!({"ts": base + i * 1000 + off, "lat": 52.1, "lon": 13.1, "accuracy": 5.0});
        b.publish("devices/van-b/location", fix.to_string()).await;
        sent += 2;
        if i % 5 == 0 {
            let reading = json!({"ts": base + i * 1000, "seq": 1000 + i,
                "metrics": {"temp_c": 4.5 + i as f64, "door": (i / 5) % 2}});
            a.publish("devices/van-a/telemetry", reading.to_string())
                .await;
            sent += 1;
        }
    }
    b.publish(
        "devices/van-b/status",
        json!({"ts": base + 30_500, "online": true}).to_string(),
    )
    .await;
    for i in 0..5i64 {
        let fix = json!({"ts": base + GAP_MS + i * 1000, "lat": 52.1, "lon": 13.1});
        b.publish("devices/van-b/location", fix.to_string()).await;
    }
    a.wait_acked(60 + 12).await;
    b.wait_acked(60 + 1 + 5).await;
    sent += 1 + 5;
    let to = base + GAP_MS + 100_000;
    // Entering and leaving the fence: two geofence events of van-a, and nothing else derived.
    let mut docs = 0;
    let mut derived = 0;
    let mut by_key = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while docs < sent || derived < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "live stream: {docs} of {sent} documents and {derived} of 2 events: {by_key:?}"
        );
        let Ok(frame) = tokio::time::timeout(Duration::from_secs(5), live.event()).await else {
            continue;
        };
        let event = frame.json();
        if !(base..to).contains(&ms(&event["ts"])) {
            continue; // the broker's own connect statuses, at wall time
        }
        match event["kind"].as_str() {
            Some("geofence" | "alert") => derived += 1,
            _ => docs += 1,
        }
        by_key.insert(key(&event), without_id(&event));
    }
    History {
        base,
        to,
        live: by_key,
    }
}

fn replay_path(h: &History, extra: &str) -> String {
    format!(
        "/api/replay?devices=van-b,van-a&from={}&to={}{extra}",
        h.base, h.to
    )
}

/// Reads a replay stream to `end`; returns its events (clock ticks apart) and clock times.
async fn read_replay(sse: &mut Sse) -> (Vec<Frame>, Vec<i64>) {
    let mut events = Vec::new();
    let mut clocks = Vec::new();
    loop {
        let frame = sse.event().await;
        match frame.event.as_deref() {
            Some("end") => return (events, clocks),
            Some("clock") => clocks.push(ms(&frame.json()["ts"])),
            Some("replay") => panic!("a second opening: {frame:?}"),
            Some("error") => panic!("replay failed: {frame:?}"),
            _ => events.push(frame),
        }
    }
}

async fn opened(server: &Server, path: &str, last_event_id: Option<&str>) -> Sse {
    let mut sse = Sse::open_at(server, path, last_event_id).await;
    let opening = sse.event().await;
    assert_eq!(opening.event.as_deref(), Some("replay"), "{opening:?}");
    sse
}

async fn replay_merges_everything_in_order_and_resumes(backend: Backend) {
    let dir = TempDir::new("replay-merge");
    let db = database(backend, &dir, "replay_merge").await;
    let server = Server::start(&dir, &db).await;
    let h = publish_history(&server).await;

    let mut sse = Sse::open_at(&server, &replay_path(&h, "&speed=max"), None).await;
    let opening = sse.event().await;
    assert_eq!(opening.event.as_deref(), Some("replay"));
    let described = opening.json();
    assert_eq!(described["devices"], json!(["van-a", "van-b"]));
    assert_eq!(described["speed"], "max");
    assert_eq!(described["from"], rfc3339(h.base));
    let (events, _) = read_replay(&mut sse).await;

    // Complete, each event as the live stream had it, in time order with a fixed tie order.
    let replayed: BTreeMap<_, _> = events
        .iter()
        .map(|f| (key(&f.json()), without_id(&f.json())))
        .collect();
    assert_eq!(events.len(), h.live.len(), "every stored item once");
    assert_eq!(replayed, h.live, "the same fields as live events");
    let rank = |k: &str| {
        ["location", "telemetry", "status", "geofence", "alert"]
            .iter()
            .position(|x| *x == k)
    };
    let order: Vec<_> = events
        .iter()
        .map(|f| {
            let e = f.json();
            let kind = e["kind"].as_str().unwrap_or("").to_owned();
            assert_eq!(
                f.event.as_deref(),
                Some(kind.as_str()),
                "SSE event name is the kind"
            );
            assert_eq!(
                f.id.as_deref(),
                e["id"].as_str(),
                "SSE id is the event's id"
            );
            (ms(&e["ts"]), rank(&kind), e["device"].to_string())
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(
        order, sorted,
        "time order; at one time by kind, then device"
    );
    assert!(
        events
            .iter()
            .any(|f| f.event.as_deref() == Some("geofence")),
        "geofence events are replayed"
    );
    assert!(events.iter().any(|f| f.event.as_deref() == Some("status")));

    // A run of equal times: van-a's fix, van-b's fix and van-a's reading at base + 10 s.
    let tie = format!("{}-", h.base + 10_000);
    let tied: Vec<&str> = events
        .iter()
        .filter_map(|f| f.id.as_deref())
        .filter(|id| id.starts_with(&tie))
        .collect();
    assert_eq!(
        tied,
        [format!("{tie}0"), format!("{tie}1"), format!("{tie}2")]
    );

    // Resume from inside that run: the rest follows without gap or repeat.
    let cut = events
        .iter()
        .position(|f| f.id.as_deref() == Some(&format!("{tie}1")))
        .expect("the tie is replayed");
    let mut first = opened(&server, &replay_path(&h, "&speed=max"), None).await;
    let mut head = Vec::new();
    while head.len() <= cut {
        let f = first.event().await;
        if f.event.as_deref() != Some("clock") {
            head.push(f);
        }
    }
    drop(first);
    let last_id = head.last().and_then(|f| f.id.clone()).expect("an id");
    let mut resumed = opened(&server, &replay_path(&h, "&speed=max"), Some(&last_id)).await;
    let (rest, _) = read_replay(&mut resumed).await;
    let ids = |fs: &[Frame]| fs.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
    let mut joined = ids(&head);
    joined.extend(ids(&rest));
    assert_eq!(joined, ids(&events), "resumed without gap or duplicate");
    assert_eq!(
        rest.first().map(|f| f.json()["kind"].clone()),
        Some(json!("telemetry"))
    );

    // Paced at 100x with gaps over a minute skipped: no clock tick lands inside the hour's
    // quiet, and the stream still ends.
    let mut paced = opened(&server, &replay_path(&h, "&speed=100&skip_gaps=60"), None).await;
    let (paced_events, clocks) = read_replay(&mut paced).await;
    assert_eq!(
        ids(&paced_events),
        ids(&events),
        "pacing changes no content"
    );
    let quiet_from = h.base + 60_000 + 61_000;
    let quiet_to = h.base + GAP_MS;
    assert!(
        !clocks.iter().any(|c| *c > quiet_from && *c < quiet_to),
        "the gap was jumped over: {clocks:?}"
    );
    assert!(!clocks.is_empty(), "clock ticks while paced");

    // Only some kinds, only one device.
    let path = format!(
        "/api/replay?devices=van-b&from={}&to={}&speed=max&kinds=status",
        h.base, h.to
    );
    let (only, _) = read_replay(&mut opened(&server, &path, None).await).await;
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0].json()["online"], true);

    // The same events exported as CSV (streamed, with a file name), read by a CSV parser.
    let resp = server
        .http
        .get(server.url("/api/events?devices=van-a&format=csv"))
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(resp.status(), 200);
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"events-"),
        "{disposition}"
    );
    let text = resp.text().await.expect("CSV body");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("CSV row")).collect();
    let stored = server.get_ok("/api/events?devices=van-a").await;
    let stored = stored.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), stored.len(), "{text}");
    assert_eq!(rows.len(), 2, "entering and leaving the fence");
    for (row, event) in rows.iter().zip(&stored) {
        assert_eq!(row.get(0), Some(event["seq"].to_string().as_str()));
        assert_eq!(row.get(1), event["kind"].as_str());
        assert_eq!(row.get(3), event["ts"].as_str());
        assert_eq!(row.get(7), event["event"].as_str());
    }
    let (status, _) = server.get("/api/events?format=xml").await;
    assert_eq!(status, 400);

    // Bad requests, each with its reason.
    let many: Vec<String> = (0..101).map(|i| format!("d{i}")).collect();
    let many = many.join(",");
    let range = format!("from={}&to={}", h.base, h.to);
    for (query, reason) in [
        (
            format!("devices=van-a&from={}&to={}", h.to, h.base),
            "from must be before to",
        ),
        (format!("devices=van-a&{range}&speed=0"), "speed must be"),
        (format!("devices=van-a&{range}&speed=5000"), "speed must be"),
        (format!("devices=van-a&{range}&speed=fast"), "speed must be"),
        (
            format!("devices=van-a&{range}&kinds=location,smell"),
            "unknown kind",
        ),
        (format!("devices={many}&{range}"), "1 to 100 devices"),
        (range.clone(), "1 to 100 devices"),
        (
            format!("devices=van-a&from={}", h.base),
            "from and to are required",
        ),
        (format!("devices=van-a&{range}&skip_gaps=-1"), "skip_gaps"),
    ] {
        let (status, body) = server.get(&format!("/api/replay?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{query}: {error:?} should say {reason:?}"
        );
    }
    for garbage in ["garbage", "12-", "-", "1-2-x"] {
        let resp = server
            .http
            .get(server.url(&replay_path(&h, "")))
            .header("Last-Event-ID", garbage)
            .send()
            .await
            .expect("HTTP request");
        assert_eq!(resp.status(), 400, "Last-Event-ID {garbage}");
        let body: Value = resp.json().await.expect("JSON error");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("Last-Event-ID"),
            "{body}"
        );
    }
    let outside = format!("{}-0", h.to + 1);
    let resp = server
        .http
        .get(server.url(&replay_path(&h, "")))
        .header("Last-Event-ID", outside)
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(resp.status(), 400, "a place outside the range");
}

/// The next message that is not a clock tick; clock times seen on the way go to `clocks`.
async fn next_non_clock(ws: &mut Ws, clocks: &mut Vec<i64>) -> Value {
    loop {
        let m = ws.next().await;
        if m["type"] == "clock" {
            clocks.push(ms(&m["ts"]));
        } else {
            return m;
        }
    }
}

/// Reads until a reply of type `kind`; returns it and the events before it.
async fn until_reply(ws: &mut Ws, kind: &str) -> (Value, Vec<Value>) {
    let mut events = Vec::new();
    let mut clocks = Vec::new();
    loop {
        let m = next_non_clock(ws, &mut clocks).await;
        if m["type"] == kind {
            return (m, events);
        }
        assert!(m.get("type").is_none(), "unexpected message {m}");
        events.push(m);
    }
}

async fn replay_is_controlled_over_websocket(backend: Backend) {
    let dir = TempDir::new("replay-ws");
    let db = database(backend, &dir, "replay_ws").await;
    let server = Server::start(&dir, &db).await;
    let h = publish_history(&server).await;
    let all: Vec<Value> = {
        let mut sse = opened(&server, &replay_path(&h, "&speed=max"), None).await;
        let (events, _) = read_replay(&mut sse).await;
        events.iter().map(Frame::json).collect()
    };

    for protocol in ["fieldline.json", "fieldline.msgpack"] {
        let mut ws = Ws::open(&server, protocol).await;
        // Mistakes get an error and the socket stays usable.
        ws.send(&json!({"type": "pause"})).await;
        let reply = ws.next().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(
            reply["error"].as_str().unwrap_or("").contains("no replay"),
            "{reply}"
        );
        ws.send(&json!({"type": "replay", "devices": ["van-a"], "from": h.to, "to": h.base}))
            .await;
        let reply = ws.next().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert!(reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("from must be before to"));
        ws.send(&json!({"type": "replay", "devices": ["van-a"], "from": h.base, "to": h.to, "speed": 0}))
            .await;
        assert_eq!(ws.next().await["type"], "error");

        // Real time: the first event is due at once, then clock ticks move on.
        ws.send(&json!({"type": "replay", "devices": ["van-a", "van-b"],
                        "from": rfc3339(h.base), "to": rfc3339(h.to), "speed": 1}))
            .await;
        let (reply, _) = until_reply(&mut ws, "replay").await;
        assert_eq!(reply["speed"], 1.0);
        let mut clocks = Vec::new();
        let first = next_non_clock(&mut ws, &mut clocks).await;
        assert_eq!(first, all[0], "{protocol}: the first item, as SSE sends it");
        while clocks.len() < 3 {
            let m = next_non_clock(&mut ws, &mut clocks).await;
            assert!(m["kind"].is_string(), "{m}");
        }
        let mut ticks = clocks.clone();
        ticks.sort();
        ticks.dedup();
        assert!(ticks.len() >= 2, "the clock moves: {clocks:?}");

        // Paused: nothing arrives, not even a tick.
        ws.send(&json!({"type": "pause"})).await;
        let (state, _) = until_reply(&mut ws, "replay_state").await;
        assert_eq!(state["state"], "paused", "{state}");
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(1500), ws.next()).await {
            panic!("{protocol}: a message during the pause: {m}");
        }

        // Seek to van-a's 30th second and play it all at max: the rest, exactly.
        let seek = h.base + 30_000;
        ws.send(&json!({"type": "seek", "ts": seek})).await;
        let (state, early) = until_reply(&mut ws, "replay_state").await;
        assert!(early.is_empty(), "paused through the seek");
        assert_eq!(state["ts"], rfc3339(seek));
        ws.send(&json!({"type": "speed", "speed": "max"})).await;
        let (state, _) = until_reply(&mut ws, "replay_state").await;
        assert_eq!(state["speed"], "max");
        ws.send(&json!({"type": "play"})).await;
        let (state, _) = until_reply(&mut ws, "replay_state").await;
        assert_eq!(state["state"], "playing");
        let (_, rest) = until_reply(&mut ws, "end").await;
        let want: Vec<Value> = all
            .iter()
            .filter(|e| ms(&e["ts"]) >= seek)
            .map(without_id)
            .collect();
        let got: Vec<Value> = rest.iter().map(without_id).collect();
        assert_eq!(got, want, "{protocol}: from the seek to the end");

        // After the end a seek plays again; an unknown seek time is refused.
        ws.send(&json!({"type": "seek", "ts": h.to + 1})).await;
        let reply = ws.next().await;
        assert_eq!(reply["type"], "error", "{reply}");
        ws.send(&json!({"type": "stop"})).await;
        assert_eq!(ws.next().await["type"], "stopped");
    }
}
