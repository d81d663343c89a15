//! Webhooks end to end with real local receivers: one that fails its first requests, one that
//! hangs, one that is down across a Fieldline restart. Every event arrives, in order, with a
//! valid signature; ingest goes on while a receiver hangs (counted rows).

#[macro_use]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::geo::{base_ms, created, drive, north, square, wait_stored_fixes};
use support::{database, free_port, Backend, Device, Server, TempDir};

on_both_backends!(every_event_reaches_every_receiver_in_order_and_signed);

#[derive(Clone, Default)]
struct Received {
    /// (seq, signature valid) of each request, in arrival order.
    requests: Arc<Mutex<Vec<(u64, bool)>>>,
    calls: Arc<AtomicUsize>,
}

impl Received {
    /// The distinct seqs delivered (2xx), in the order they first arrived.
    fn delivered(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for (seq, _) in self.requests.lock().expect("lock").iter() {
            if !out.contains(seq) {
                out.push(*seq);
            }
        }
        out
    }
}

/// A receiver on `port` that answers 500 to its first `fail_first` requests, and holds every
/// request while `hang` is set.
async fn receiver(
    port: u16,
    secret: &'static str,
    fail_first: usize,
    hang: Arc<AtomicBool>,
) -> Received {
    let received = Received::default();
    let state = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            let hang = hang.clone();
            async move {
                let call = state.calls.fetch_add(1, Ordering::SeqCst);
                while hang.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if call < fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
                mac.update(&body);
                let expected: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let valid = headers
                    .get("fieldline-signature")
                    .and_then(|v| v.to_str().ok())
                    == Some(format!("sha256={expected}").as_str());
                let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let seq = event["seq"].as_u64().unwrap_or(0);
                state.requests.lock().expect("lock").push((seq, valid));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind receiver");
    tokio::spawn(async move { axum::serve(listener, app).await });
    received
}

/// Drives `device` into and out of the fence `times` times, from fix `from`.
async fn cross(device: &mut Device, base: i64, from: i64, times: usize, lat: f64, lon: f64) -> i64 {
    let mut fixes = Vec::new();
    let mut s = from;
    for _ in 0..times {
        for at in [lat, lat, north(lat, 2000.0), north(lat, 2000.0)] {
            fixes.push((base + s * 1000, at, lon, Some(5.0), None));
            s += 1;
        }
    }
    drive(device, &fixes).await;
    s
}

async fn wait_delivered(name: &str, r: &Received, want: &[u64], server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.delivered() != want {
        assert!(
            Instant::now() < deadline,
            "{name}: delivered {:?}, want {want:?}\n{}",
            r.delivered(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        r.requests
            .lock()
            .expect("lock")
            .iter()
            .all(|(_, valid)| *valid),
        "{name}: every signature is valid"
    );
}

async fn stored_seqs(server: &Server) -> Vec<u64> {
    let events = server.get_ok("/api/events?limit=100000").await;
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}

async fn every_event_reaches_every_receiver_in_order_and_signed(backend: Backend) {
    let dir = TempDir::new("webhooks");
    let db = database(backend, &dir, "webhooks").await;
    let flags = ["--webhook-timeout-seconds", "1"];
    let mut server = Server::start_with(&dir, &db, &flags).await;
    let (lat, lon) = (40.0, -3.0);
    created(
        &server,
        "/api/geofences",
        square("plant", lat, lon, 500.0, json!({})),
    )
    .await;
    let (flaky_port, hung_port, down_port) = (free_port(), free_port(), free_port());
    let no_hang = Arc::new(AtomicBool::new(false));
    let hang = Arc::new(AtomicBool::new(true));
    let flaky = receiver(flaky_port, "flaky-secret", 3, no_hang.clone()).await;
    let hung = receiver(hung_port, "hung-secret", 0, hang.clone()).await;
    let mut hook_ids = Vec::new();
    for (port, secret) in [
        (flaky_port, "flaky-secret"),
        (hung_port, "hung-secret"),
        (down_port, "down-secret"),
    ] {
        let hook = created(
            &server,
            "/api/webhooks",
            json!({"url": format!("http://127.0.0.1:{port}/hook"), "kinds": ["geofence"], "secret": secret}),
        )
        .await;
        assert!(
            hook.get("secret").is_none(),
            "secrets are never shown: {hook}"
        );
        hook_ids.push(hook["id"].as_i64().expect("id"));
    }
    let base = base_ms();
    let mut truck = Device::connect(server.mqtt_port, "truck-1").await;
    let next = cross(&mut truck, base, 0, 3, lat, lon).await;
    server
        .wait_for("/api/events", |b| {
            b.as_array().is_some_and(|a| a.len() == 6)
        })
        .await;
    let first = stored_seqs(&server).await;
    wait_delivered("flaky", &flaky, &first, &server).await;

    // While one receiver hangs, ingest goes on: every fix sent meanwhile is stored.
    let mut other = Device::connect(server.mqtt_port, "counter-1").await;
    let fixes: Vec<_> = (0..2000)
        .map(|i| (base + i * 100, 0.0, 0.0, None, None))
        .collect();
    for chunk in fixes.chunks(200) {
        drive(&mut other, chunk).await;
    }
    wait_stored_fixes(&server, "counter-1", 2000).await;
    assert!(
        hung.delivered().is_empty(),
        "the hung receiver still holds its first request"
    );
    let (_, view) = server.get(&format!("/api/webhooks/{}", hook_ids[1])).await;
    assert!(view["backlog"].as_u64().unwrap_or(0) >= 1, "{view}");
    assert!(view["last_error"].is_string(), "{view}");
    let metrics = server.metrics_text().await;
    assert!(
        server.metric(
            &metrics,
            &format!(
                "fieldline_webhook_failures_total{{webhook=\"{}\"}}",
                hook_ids[1]
            )
        ) >= 1.0,
        "{metrics}"
    );

    // Restart with the third receiver still down; it comes up afterwards.
    drop(truck);
    drop(other);
    server.stop();
    server = Server::start_with(&dir, &db, &flags).await;
    let mut truck = Device::connect(server.mqtt_port, "truck-1").await;
    cross(&mut truck, base, next, 2, lat, lon).await;
    server
        .wait_for("/api/events", |b| {
            b.as_array().is_some_and(|a| a.len() == 10)
        })
        .await;
    let all = stored_seqs(&server).await;
    let down = receiver(down_port, "down-secret", 0, no_hang).await;
    hang.store(false, Ordering::SeqCst);
    for (name, r) in [("flaky", &flaky), ("hung", &hung), ("down", &down)] {
        wait_delivered(name, r, &all, &server).await;
    }
    assert!(
        flaky.calls.load(Ordering::SeqCst) >= all.len() + 3,
        "the flaky receiver's failures were retried"
    );
    let (_, view) = server.get(&format!("/api/webhooks/{}", hook_ids[2])).await;
    assert_eq!(view["delivered_seq"], json!(all.last()), "{view}");
}
