//! The transactional outbox under a crash: devices cross fences under load, the server is
//! killed with SIGKILL and restarted. Afterwards every transition in the stored fixes has its
//! event exactly once, no event lacks the fix that caused it, and a live client that resumes
//! across the crash sees each event once.

#[macro_use]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use support::geo::{base_ms, created, fix, north, square};
use support::live::Sse;
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(a_crash_under_load_loses_and_duplicates_no_event);

const DEVICES: usize = 20;
const FENCES: usize = 4;
const LAT: f64 = 48.0;
const LON: f64 = 11.0;

/// Fix `i` of a device: two inside its fence, two 2 km outside, and so on; every fourth
/// device's fence is another of the four.
fn position(device: usize, i: u64) -> (f64, f64) {
    let fence_lat = north(LAT, (device % FENCES) as f64 * 10_000.0);
    if (i / 2).is_multiple_of(2) {
        (fence_lat, LON)
    } else {
        (north(fence_lat, 2_000.0), LON)
    }
}

/// Publishes fixes `from..` of one device until `stop` is set; returns how far it got.
async fn publish_until(
    port: u16,
    device: usize,
    from: u64,
    base: i64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let id = format!("crosser-{device}");
    let Ok(client) = Device::try_connect(port, &id, None).await else {
        return from;
    };
    let topic = format!("devices/{id}/location");
    let mut i = from;
    while !*stop.borrow() && client.is_connected() {
        let (lat, lon) = position(device, i);
        let fix = fix(base + i as i64 * 1000, lat, lon, Some(5.0), None);
        // The connection can end between the check above and this publish (the server is
        // killed under load): then this device stops here.
        if client.try_publish(&topic, fix).await.is_err() {
            break;
        }
        i += 1;
        // About 200 fixes a second per device: a steady load the live history keeps whole.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    i
}

/// The transitions the contract's rules give for a track of clear-cut fixes (confirmed by
/// the next fix on the same side, dated at the first): (event, ts).
fn transitions(track: &[Value], inside_lat: f64) -> Vec<(String, String)> {
    let (mut inside, mut pending): (bool, Option<(bool, String, u32)>) = (false, None);
    let mut out = Vec::new();
    for p in track {
        let side = (p["lat"].as_f64().unwrap_or(0.0) - inside_lat).abs() < 0.001;
        let ts = p["ts"].as_str().unwrap_or("").to_owned();
        if side == inside {
            pending = None;
            continue;
        }
        let next = match pending.take() {
            Some((s, first, n)) if s == side => (s, first, n + 1),
            _ => (side, ts, 1),
        };
        if next.2 >= 2 {
            inside = side;
            out.push((if side { "enter" } else { "exit" }.to_owned(), next.1));
        } else {
            pending = Some(next);
        }
    }
    out
}

async fn a_crash_under_load_loses_and_duplicates_no_event(backend: Backend) {
    let dir = TempDir::new("outbox-crash");
    let db = database(backend, &dir, "outbox_crash").await;
    let mut server = Server::start(&dir, &db).await;
    for f in 0..FENCES {
        let lat = north(LAT, f as f64 * 10_000.0);
        created(
            &server,
            "/api/geofences",
            square(&format!("zone-{f}"), lat, LON, 500.0, json!({})),
        )
        .await;
    }
    let base = base_ms();
    let live = Sse::open(&server, "kinds=geofence", None).await;
    let reader = tokio::spawn(async move {
        let mut live = live;
        live.until_end().await
    });
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publishers: Vec<_> = (0..DEVICES)
        .map(|d| tokio::spawn(publish_until(server.mqtt_port, d, 0, base, stop.clone())))
        .collect();
    // Let events flow, then crash in the middle of it.
    server
        .wait_for("/api/events?limit=100000", |b| {
            b.as_array().is_some_and(|a| a.len() >= 1000)
        })
        .await;
    server.kill().await;
    let _ = stop_tx.send(true);
    let mut reached = Vec::new();
    for p in publishers {
        reached.push(p.await.expect("publisher"));
    }
    let before: Vec<_> = reader
        .await
        .expect("reader")
        .into_iter()
        .filter(|f| f.event.is_some())
        .collect();
    assert!(
        !before.is_empty(),
        "the live client saw events before the crash"
    );
    let last_id = before
        .last()
        .and_then(|f| f.id.clone())
        .expect("events carry ids");

    // Restarted: the devices go on from where they were (device time keeps increasing).
    server = Server::start(&dir, &db).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let publishers: Vec<_> = reached
        .iter()
        .enumerate()
        .map(|(d, from)| {
            tokio::spawn(publish_until(
                server.mqtt_port,
                d,
                from + 10,
                base,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(true);
    for p in publishers {
        p.await.expect("publisher");
    }
    // Everything the devices sent is stored once the log is drained.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let events: Vec<Value> = server
        .get_ok("/api/events?limit=100000")
        .await
        .as_array()
        .cloned()
        .unwrap_or_default();

    // Every transition in the stored fixes has its event, exactly once, at that fix.
    let mut by_device: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for e in &events {
        by_device
            .entry(e["device"].as_str().unwrap_or("").to_owned())
            .or_default()
            .push((
                e["event"].as_str().unwrap_or("").to_owned(),
                e["ts"].as_str().unwrap_or("").to_owned(),
            ));
    }
    let mut transitions_total = 0;
    for d in 0..DEVICES {
        let id = format!("crosser-{d}");
        let track = server
            .get_ok(&format!("/api/devices/{id}/track?from=0&limit=100000"))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default();
        let expected = transitions(&track, position(d, 0).0);
        transitions_total += expected.len();
        assert_eq!(
            by_device.get(&id).cloned().unwrap_or_default(),
            expected,
            "{id}"
        );
        // No event without the fix that caused it.
        for (_, ts) in by_device.get(&id).into_iter().flatten() {
            assert!(
                track.iter().any(|p| p["ts"].as_str() == Some(ts)),
                "{id}: no stored fix at {ts}"
            );
        }
    }
    assert_eq!(transitions_total, events.len());

    // The live client resumes from its last id before the crash: it gets each event it did
    // not see, once.
    let mut resumed = Sse::open(&server, "kinds=geofence", Some(&last_id)).await;
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for f in &before {
        *seen
            .entry(f.json()["seq"].as_u64().expect("seq"))
            .or_default() += 1;
    }
    while seen.len() < events.len() {
        let Ok(frame) = tokio::time::timeout(Duration::from_secs(10), resumed.event()).await else {
            break;
        };
        assert_ne!(frame.event.as_deref(), Some("reset"), "{frame:?}");
        *seen
            .entry(frame.json()["seq"].as_u64().expect("seq"))
            .or_default() += 1;
    }
    let stored: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        stored,
        "the live client saw every stored event"
    );
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
}
