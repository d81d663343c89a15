//! Live streams across restarts: a dashboard that resumes with an id from before a restart
//! (SIGTERM or SIGKILL) gets exactly the events it missed, once and in order, with no
//! `reset`, because the live history is rebuilt from the write-ahead log. Ids older than what
//! the rebuilt history holds, and ids the stream never gave, still get a `reset`.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::live::{Frame, Sse, Ws};
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(
    a_client_resumes_across_restarts_with_exactly_what_it_missed,
    ids_older_than_the_rebuilt_history_or_never_given_get_a_reset,
);

fn fix(seq: u64) -> Vec<u8> {
    // Up and down one street, so every fix stays in the dispatcher's box below.
    json!({"seq": seq, "lat": 52.5 + (seq % 100) as f64 * 1e-4, "lon": 13.4, "speed": 8.0})
        .to_string()
        .into_bytes()
}

async fn publish_fixes(device: &mut Device, seqs: std::ops::RangeInclusive<u64>) {
    let already = device.acked();
    let n = seqs.clone().count();
    for seq in seqs {
        let topic = format!("devices/{}/location", device.client_id);
        device.publish(&topic, fix(seq)).await;
    }
    device.wait_acked(already + n).await;
}

/// (id, event data) of each event frame, for comparing streams exactly.
fn events(frames: &[Frame]) -> Vec<(String, Value)> {
    frames
        .iter()
        .map(|f| {
            assert_ne!(f.event.as_deref(), Some("reset"), "no reset: {f:?}");
            (f.id.clone().expect("events carry ids"), f.json())
        })
        .collect()
}

/// Up to `n` events, stopping at 20 s without one (keep-alives alone never end the wait), so
/// a missing event fails the comparison instead of hanging the test.
async fn read(sse: &mut Sse, n: usize) -> Vec<(String, Value)> {
    let mut frames = Vec::with_capacity(n);
    while frames.len() < n {
        match tokio::time::timeout(std::time::Duration::from_secs(20), sse.event()).await {
            Ok(frame) => frames.push(frame),
            Err(_) => break,
        }
    }
    events(&frames)
}

fn describe(event: &Value) -> String {
    format!(
        "{} {} {}{}",
        event["kind"].as_str().unwrap_or("?"),
        event["device"].as_str().unwrap_or("?"),
        event["seq"],
        event["online"]
    )
}

async fn a_client_resumes_across_restarts_with_exactly_what_it_missed(backend: Backend) {
    let dir = TempDir::new("live-restart");
    let url = database(backend, &dir, "live_restart").await;
    // Small segments: the history spans several, and the rebuild starts in the oldest kept.
    let flags = ["--wal-segment-bytes", "65536"];
    let mut server = Server::start_with(&dir, &url, &flags).await;

    // The watcher stays on and records every event the server sends: the truth to compare
    // against. The dashboard reads a while, then goes away.
    let mut watcher = Sse::open(&server, "", None).await;
    let mut dashboard = Sse::open(&server, "", None).await;
    // A dispatcher zoomed in on the truck's street.
    let bbox = "bbox=13.39,52.49,13.41,52.51";
    let mut zoomed = Sse::open(&server, bbox, None).await;
    let mut truck = Device::connect(server.mqtt_port, "truck-1").await;
    publish_fixes(&mut truck, 1..=10).await;
    let seen = read(&mut dashboard, 11).await;
    // All but the first status: the truck had no position yet, so it was in no box.
    assert_eq!(read(&mut zoomed, 10).await, seen[1..]);
    let resume_from = seen.last().expect("events").0.clone();
    drop(dashboard);
    drop(zoomed);

    // Missed while it was away: fixes, a payload of five readings, and a second device that
    // comes, reports once and goes.
    publish_fixes(&mut truck, 11..=20).await;
    let readings: Vec<Value> = (1..=5)
        .map(|i| json!({"seq": i, "metrics": {"temp_c": 4.0 + i as f64}}))
        .collect();
    truck
        .publish(
            "devices/truck-1/telemetry",
            rmp_serde::to_vec_named(&readings).expect("msgpack"),
        )
        .await;
    // A redelivery beside a new reading: only seq 6 is new.
    let again: Vec<Value> = [3, 6]
        .iter()
        .map(|i| json!({"seq": i, "metrics": {"temp_c": 4.0 + *i as f64}}))
        .collect();
    truck
        .publish(
            "devices/truck-1/telemetry",
            serde_json::to_vec(&again).expect("json"),
        )
        .await;
    truck.wait_acked(22).await;
    // Enough fixes to fill several segments.
    publish_fixes(&mut truck, 21..=1000).await;
    let mut van = Device::connect(server.mqtt_port, "van-2").await;
    van.publish(
        "devices/van-2/location",
        json!({"seq": 1, "lat": 48.1, "lon": 11.6}).to_string(),
    )
    .await;
    van.wait_acked(1).await;
    drop(van);
    // online, 1,000 fixes, 5 + 1 readings; van: online, a fix, offline.
    let mut truth = read(&mut watcher, 1 + 1000 + 6 + 3).await;
    assert_eq!(truth.len(), 1010, "the watcher saw every event");
    assert_eq!(
        truth[..11],
        seen[..],
        "both clients saw the same first events"
    );

    for (round, crash) in [(1, false), (2, true)] {
        // The watcher has every event so far; then the server goes down.
        if crash {
            server.kill().await;
        } else {
            assert!(server.stop().success());
        }
        drop(truck);
        server = Server::start_with(&dir, &url, &flags).await;

        // What the restart changed comes next: the truck's connection ended with it.
        let mut watcher = Sse::open(&server, "", Some(&truth.last().expect("events").0)).await;
        let after_restart = read(&mut watcher, 1).await;
        let offline = &after_restart[0].1;
        assert_eq!(
            (
                &offline["kind"],
                &offline["device"],
                &offline["online"],
                &offline["reason"]
            ),
            (
                &json!("status"),
                &json!("truck-1"),
                &json!(false),
                &json!("dropped")
            ),
            "round {round}: {offline}"
        );
        truth.extend(after_restart);

        // The dashboard resumes from the id it had before the first restart: exactly what it
        // missed, in order, with the ids and data the watcher got.
        let missed: Vec<(String, Value)> = truth[11..].to_vec();
        let mut resumed = Sse::open(&server, "", Some(&resume_from)).await;
        let got = read(&mut resumed, missed.len()).await;
        assert_eq!(
            got.iter().map(|e| describe(&e.1)).collect::<Vec<_>>(),
            missed.iter().map(|e| describe(&e.1)).collect::<Vec<_>>(),
            "round {round}: the missed events, in order"
        );
        assert_eq!(got, missed, "round {round}: the same ids and data");
        // The same over WebSocket, by `since`.
        let mut ws = Ws::open(&server, "fieldline.msgpack").await;
        ws.subscribe(json!({"type": "subscribe", "since": resume_from}))
            .await;
        let over_ws = ws.events(missed.len()).await;
        for (event, (id, data)) in over_ws.iter().zip(&missed) {
            assert_eq!(event["id"].as_str(), Some(id.as_str()), "round {round}");
            assert_eq!(
                event, data,
                "round {round}: MessagePack carries the same fields"
            );
        }

        // Zoomed in, it gets the truck's part of it: the van was far away.
        let truck_only: Vec<(String, Value)> = missed
            .iter()
            .filter(|e| e.1["device"] == "truck-1")
            .cloned()
            .collect();
        let mut zoomed = Sse::open(&server, bbox, Some(&resume_from)).await;
        let got = read(&mut zoomed, truck_only.len()).await;
        assert_eq!(
            got, truck_only,
            "round {round}: the box places rebuilt events as live did"
        );

        // Then live, once: the truck is back and reports again.
        truck = Device::connect(server.mqtt_port, "truck-1").await;
        publish_fixes(&mut truck, 1000 + round..=1000 + round).await;
        let live = read(&mut resumed, 2).await;
        assert_eq!(
            live.iter().map(|e| describe(&e.1)).collect::<Vec<_>>(),
            [
                "status truck-1 nulltrue".to_string(),
                format!("location truck-1 {}null", 1000 + round)
            ],
            "round {round}"
        );
        assert_eq!(read(&mut watcher, 2).await, live);
        let ids: Vec<&str> = truth
            .iter()
            .chain(&live)
            .map(|(id, _)| id.as_str())
            .collect();
        let offsets: Vec<u64> = ids
            .iter()
            .map(|id| {
                id.rsplit('-')
                    .next()
                    .and_then(|o| o.parse().ok())
                    .expect("offset")
            })
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[1] > w[0]),
            "ids grow across restarts: {ids:?}"
        );
        assert_eq!(read(&mut zoomed, 2).await, live, "round {round}");
        truth.extend(live);
    }
    // Each restart stored one offline status for the truck, whatever ended the server.
    let reasons = |history: &Value| -> Vec<String> {
        history
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|s| s["reason"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let history = server
        .wait_for("/api/devices/truck-1/status", |h| reasons(h).len() >= 5)
        .await;
    assert_eq!(
        reasons(&history),
        ["connect", "dropped", "connect", "dropped", "connect"],
        "{history}"
    );
}

async fn ids_older_than_the_rebuilt_history_or_never_given_get_a_reset(backend: Backend) {
    let dir = TempDir::new("live-restart-reset");
    let url = database(backend, &dir, "live_restart_reset").await;
    // Small segments, so the log lets go of those the history no longer needs.
    let flags = [
        "--live-history-events",
        "20",
        "--wal-segment-bytes",
        "65536",
    ];
    let mut server = Server::start_with(&dir, &url, &flags).await;
    let mut watcher = Sse::open(&server, "kinds=location", None).await;
    let mut truck = Device::connect(server.mqtt_port, "truck-7").await;
    publish_fixes(&mut truck, 1..=2000).await;
    let fixes = read(&mut watcher, 2000).await;
    drop(truck);
    // Stored, and the log has let go of what neither storage nor the history needs.
    server
        .wait_for_metrics(|m| {
            m.lines().any(|l| {
                l.strip_prefix("fieldline_wal_segments ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| v <= 2.0)
            })
        })
        .await;
    server.kill().await;
    let segments = std::fs::read_dir(support::wal_dir(&dir))
        .expect("the log directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        })
        .count();
    assert!(
        segments <= 3,
        "stored segments the history no longer needs are gone: {segments}"
    );
    let server = Server::start_with(&dir, &url, &flags).await;

    // The history holds the newest 20 events (the truck's offline from the restart among
    // them): an id from before them cannot be filled.
    let mut old = Sse::open(&server, "", Some(&fixes[0].0)).await;
    let reset = old.event().await;
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    // One from inside it is.
    let mut recent = Sse::open(&server, "kinds=location", Some(&fixes[1994].0)).await;
    let got = read(&mut recent, 5).await;
    assert_eq!(got, fixes[1995..].to_vec());

    // An id of this stream's epoch that it never gave, and one of another epoch.
    let (epoch, offset) = fixes[1999].0.split_once('-').expect("epoch-offset");
    let offset: u64 = offset.parse().expect("offset");
    for id in [
        format!("{epoch}-{}", offset * 1000),
        format!("1{epoch}-{offset}"),
    ] {
        let mut sse = Sse::open(&server, "", Some(&id)).await;
        let frame = sse.event().await;
        assert_eq!(frame.event.as_deref(), Some("reset"), "{id}: {frame:?}");
    }
}
