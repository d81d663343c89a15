//! Geofences end to end: fences over the API, fixes over MQTT, events read back over HTTP
//! and SSE, on both back ends. Each shape type, a hole, the antimeridian, dating at the first
//! fix, GPS jitter, inaccurate and late fixes, dwell, overspeed, a restart while inside,
//! fences changed and deleted under devices, and bad input.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::geo::{
    base_ms, created, drive, east, kinds_of, north, post, rfc3339, square, wait_stored_fixes, Fix,
};
use support::live::Sse;
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(
    every_shape_type_enters_and_exits_dated_at_the_first_fix,
    jitter_and_bad_fixes_change_nothing_dwell_and_overspeed_once,
    a_restart_raises_no_second_enter_and_changed_or_deleted_fences_behave_as_documented,
    bad_geofences_are_refused_with_the_reason_and_nothing_is_stored,
);

fn at(base: i64, s: i64, lat: f64, lon: f64) -> Fix {
    (base + s * 1000, lat, lon, None, None)
}

async fn every_shape_type_enters_and_exits_dated_at_the_first_fix(backend: Backend) {
    let dir = TempDir::new("geofence-shapes");
    let db = database(backend, &dir, "geofence_shapes").await;
    let server = Server::start(&dir, &db).await;
    // A 1 km square with a 400 m hole; a 200 m circle; a 100 m wide corridor; a box across
    // the antimeridian.
    let (hl, hn) = (10.0, 10.0);
    let ring = |side_m: f64| {
        let h = side_m / 2.0;
        let (s, n) = (north(hl, -h), north(hl, h));
        let (w, e) = (east(hl, hn, -h), east(hl, hn, h));
        json!([[w, s], [e, s], [e, n], [w, n], [w, s]])
    };
    let holed = json!({"type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring(1000.0), ring(400.0)]},
        "properties": {"name": "yard", "devices": ["holed-*"]}});
    let circle = json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [20.0, 20.0]},
        "properties": {"name": "customer", "radius_m": 200, "devices": ["circle-1"]}});
    let corridor = json!({"type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[30.0, 30.0], [30.02, 30.0]]},
        "properties": {"name": "route", "width_m": 100, "devices": ["corridor-1"]}});
    let across = json!({"type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[179.99, -0.01], [-179.99, -0.01], [-179.99, 0.01], [179.99, 0.01], [179.99, -0.01]]]},
        "properties": {"name": "dateline", "devices": ["pacific-1"]}});
    let reply = created(
        &server,
        "/api/geofences",
        json!({"type": "FeatureCollection", "features": [holed, circle, corridor, across]}),
    )
    .await;
    assert_eq!(
        reply["features"].as_array().map(Vec::len),
        Some(4),
        "{reply}"
    );
    let listed = server.get_ok("/api/geofences").await;
    assert_eq!(listed["type"], "FeatureCollection");
    assert_eq!(listed["features"].as_array().map(Vec::len), Some(4));

    let mut live = Sse::open(&server, "kinds=geofence", None).await;
    let base = base_ms();
    // The yard: outside, into the ring (enter at 10 s), on into the hole (exit at 30 s).
    let mut holed = Device::connect(server.mqtt_port, "holed-1").await;
    let ring_lat = north(hl, 350.0);
    drive(
        &mut holed,
        &[
            at(base, 0, north(hl, 900.0), hn),
            at(base, 10, ring_lat, hn),
            at(base, 20, ring_lat, hn),
            at(base, 30, hl, hn),
            at(base, 40, hl, hn),
        ],
    )
    .await;
    // The circle: 100 m from the centre is inside; 1 km is out.
    let mut circle = Device::connect(server.mqtt_port, "circle-1").await;
    drive(
        &mut circle,
        &[
            at(base, 0, north(20.0, 100.0), 20.0),
            at(base, 5, north(20.0, 120.0), 20.0),
            at(base, 9, north(20.0, 1000.0), 20.0),
            at(base, 12, north(20.0, 1000.0), 20.0),
        ],
    )
    .await;
    // The corridor: 40 m beside the line is inside, 300 m is out.
    let mut corridor = Device::connect(server.mqtt_port, "corridor-1").await;
    drive(
        &mut corridor,
        &[
            at(base, 0, north(30.0, 40.0), 30.01),
            at(base, 1, north(30.0, -40.0), 30.011),
            at(base, 2, north(30.0, 300.0), 30.012),
            at(base, 3, north(30.0, 300.0), 30.013),
        ],
    )
    .await;
    // Across the antimeridian: both sides of 180° are inside.
    let mut pacific = Device::connect(server.mqtt_port, "pacific-1").await;
    drive(
        &mut pacific,
        &[
            at(base, 0, 0.0, 179.995),
            at(base, 1, 0.0, -179.995),
            at(base, 2, 0.0, -179.995),
        ],
    )
    .await;

    let expect = [
        (
            "holed-1",
            vec![("enter", base + 10_000), ("exit", base + 30_000)],
        ),
        ("circle-1", vec![("enter", base), ("exit", base + 9_000)]),
        ("corridor-1", vec![("enter", base), ("exit", base + 2_000)]),
        ("pacific-1", vec![("enter", base)]),
    ];
    for (device, events) in &expect {
        let want: Vec<(String, String)> = events
            .iter()
            .map(|(e, ts)| (e.to_string(), rfc3339(*ts)))
            .collect();
        let path = format!("/api/events?devices={device}");
        server
            .wait_for(&path, |b| {
                b.as_array().is_some_and(|a| a.len() >= want.len())
            })
            .await;
        assert_eq!(kinds_of(&server, device).await, want, "{device}");
    }
    // What an operator sees: fences loaded, checks made, events by kind.
    let metrics = server.metrics_text().await;
    assert_eq!(
        server.metric(&metrics, "fieldline_geofences_loaded"),
        4.0,
        "{metrics}"
    );
    assert!(
        server.metric(&metrics, "fieldline_geofence_checks_total") >= 10.0,
        "{metrics}"
    );
    assert_eq!(
        server.metric(&metrics, "fieldline_events_total{kind=\"geofence\"}"),
        7.0,
        "{metrics}"
    );
    assert_eq!(
        server.metric(&metrics, "fieldline_outbox_pending_events"),
        0.0
    );
    // The same events live, each with the fields the contract names.
    let mut seen = Vec::new();
    for _ in 0..7 {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(20), live.event())
            .await
            .expect("a live geofence event");
        let e = frame.json();
        assert_eq!(e["kind"], "geofence");
        for field in [
            "id", "device", "ts", "geofence", "name", "event", "lat", "lon",
        ] {
            assert!(!e[field].is_null(), "{field} in {e}");
        }
        assert_eq!(frame.id.as_deref(), e["id"].as_str());
        seen.push((
            e["device"].as_str().unwrap_or("").to_owned(),
            e["event"].as_str().unwrap_or("").to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen.iter().filter(|(_, e)| e == "enter").count(),
        4,
        "{seen:?}"
    );
    // CSV carries the same rows.
    let csv = server
        .http
        .get(server.url("/api/events?format=csv&devices=holed-1"))
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("csv body");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].contains(",geofence,holed-1,") && lines[1].contains(",yard,enter,"),
        "{csv}"
    );
}

async fn jitter_and_bad_fixes_change_nothing_dwell_and_overspeed_once(backend: Backend) {
    let dir = TempDir::new("geofence-jitter");
    let db = database(backend, &dir, "geofence_jitter").await;
    let server = Server::start(&dir, &db).await;
    let (lat, lon) = (45.0, 7.0);
    created(
        &server,
        "/api/geofences",
        square(
            "lot",
            lat,
            lon,
            500.0,
            json!({"devices": ["parked-1", "foggy-1", "late-1"]}),
        ),
    )
    .await;
    created(
        &server,
        "/api/geofences",
        square(
            "school",
            46.0,
            7.0,
            2000.0,
            json!({"devices": ["van-1"], "dwell_s": 60, "speed_limit": 10, "overspeed_s": 10}),
        ),
    )
    .await;
    let base = base_ms();

    // Parked on the lot's east edge for 10 minutes: fixes scatter ±20 m across the line with
    // accuracy about 20 m.
    let edge = east(lat, lon, 250.0);
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 4001) as f64 / 100.0 - 20.0
    };
    let parked_fixes: Vec<Fix> = (0..600)
        .map(|s| {
            let accuracy = 15.0 + (noise() + 20.0) / 4.0;
            (
                base + s * 1000,
                north(lat, noise()),
                east(lat, edge, noise()),
                Some(accuracy),
                Some(0.0),
            )
        })
        .collect();
    let mut parked = Device::connect(server.mqtt_port, "parked-1").await;
    for chunk in parked_fixes.chunks(100) {
        drive(&mut parked, chunk).await;
    }

    // Inside the lot, then fixes 1 km away but 500 m inaccurate: no exit.
    let mut foggy = Device::connect(server.mqtt_port, "foggy-1").await;
    let far = north(lat, 1000.0);
    drive(
        &mut foggy,
        &[
            at(base, 0, lat, lon),
            at(base, 1, lat, lon),
            (base + 2000, far, lon, Some(500.0), None),
            (base + 3000, far, lon, Some(500.0), None),
            (base + 4000, far, lon, Some(500.0), None),
        ],
    )
    .await;

    // Inside, then two fixes far away but older than what was judged: stored, not judged.
    let mut late = Device::connect(server.mqtt_port, "late-1").await;
    drive(
        &mut late,
        &[
            at(base, 100, lat, lon),
            at(base, 101, lat, lon),
            at(base, 50, far, lon),
            at(base, 51, far, lon),
        ],
    )
    .await;

    // In the school zone for 2 minutes: one dwell at 60 s; above the limit for 30 s, below,
    // above again for 30 s: two overspeeds, one per stretch.
    let mut van = Device::connect(server.mqtt_port, "van-1").await;
    let van_fixes: Vec<Fix> = (0..=120)
        .map(|s| {
            let speed = match s {
                10..=40 => 15.0,
                41..=60 => 5.0,
                61..=90 => 15.0,
                _ => 3.0,
            };
            (base + s * 1000, 46.0, 7.0, Some(5.0), Some(speed))
        })
        .collect();
    drive(&mut van, &van_fixes).await;

    wait_stored_fixes(&server, "parked-1", 600).await;
    wait_stored_fixes(&server, "foggy-1", 5).await;
    wait_stored_fixes(&server, "late-1", 4).await;
    wait_stored_fixes(&server, "van-1", 121).await;
    let parked = kinds_of(&server, "parked-1").await;
    assert!(
        parked.len() <= 1,
        "at most one transition while parked: {parked:?}"
    );
    assert!(parked.iter().all(|(e, _)| e == "enter"), "{parked:?}");
    assert_eq!(
        kinds_of(&server, "foggy-1").await,
        [("enter".to_owned(), rfc3339(base))],
        "a 500 m-accuracy fix changes nothing"
    );
    assert_eq!(
        kinds_of(&server, "late-1").await,
        [("enter".to_owned(), rfc3339(base + 100_000))],
        "late fixes move no state"
    );
    let van = kinds_of(&server, "van-1").await;
    assert_eq!(
        van,
        [
            ("enter".to_owned(), rfc3339(base)),
            ("overspeed".to_owned(), rfc3339(base + 20_000)),
            ("dwell".to_owned(), rfc3339(base + 60_000)),
            ("overspeed".to_owned(), rfc3339(base + 71_000)),
        ]
    );
    // The device is inside now, since its first fix.
    let inside = server.get_ok("/api/devices/van-1/geofences").await;
    assert_eq!(inside[0]["name"], "school", "{inside}");
    assert_eq!(inside[0]["since"], rfc3339(base));
}

async fn a_restart_raises_no_second_enter_and_changed_or_deleted_fences_behave_as_documented(
    backend: Backend,
) {
    let dir = TempDir::new("geofence-restart");
    let db = database(backend, &dir, "geofence_restart").await;
    let mut server = Server::start(&dir, &db).await;
    let (lat, lon) = (50.0, 8.0);
    let depot = created(
        &server,
        "/api/geofences",
        square("depot", lat, lon, 400.0, json!({})),
    )
    .await;
    let wash = created(
        &server,
        "/api/geofences",
        square("wash", lat, lon, 100.0, json!({})),
    )
    .await;
    let (depot_id, wash_id) = (
        depot["id"].as_i64().expect("id"),
        wash["id"].as_i64().expect("id"),
    );
    let base = base_ms();
    let mut truck = Device::connect(server.mqtt_port, "truck-1").await;
    drive(&mut truck, &[at(base, 0, lat, lon), at(base, 1, lat, lon)]).await;
    wait_stored_fixes(&server, "truck-1", 2).await;
    assert_eq!(kinds_of(&server, "truck-1").await.len(), 2, "entered both");
    drop(truck);

    // Restarts, clean and crash, with the truck still inside: no second enter.
    server.stop();
    server = Server::start(&dir, &db).await;
    let mut truck = Device::connect(server.mqtt_port, "truck-1").await;
    drive(&mut truck, &[at(base, 2, lat, lon), at(base, 3, lat, lon)]).await;
    wait_stored_fixes(&server, "truck-1", 4).await;
    server.kill().await;
    server = Server::start(&dir, &db).await;
    let mut truck = Device::connect(server.mqtt_port, "truck-1").await;
    drive(&mut truck, &[at(base, 4, lat, lon), at(base, 5, lat, lon)]).await;
    wait_stored_fixes(&server, "truck-1", 6).await;
    assert_eq!(
        kinds_of(&server, "truck-1").await.len(),
        2,
        "no second enter after restarts"
    );
    let inside = server.get_ok("/api/devices/truck-1/geofences").await;
    assert_eq!(inside.as_array().map(Vec::len), Some(2), "{inside}");

    // Deleting a fence with the truck inside: no event; it is no longer listed.
    let (status, _) = server
        .request(
            reqwest::Method::DELETE,
            &format!("/api/geofences/{wash_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 204);
    // Moving a fence away from the truck: its next fixes judge the new shape, so it exits,
    // dated at its first fix outside the new shape.
    let moved = square("depot", north(lat, 5000.0), lon, 400.0, json!({}));
    let (status, reply) = server
        .request(
            reqwest::Method::PUT,
            &format!("/api/geofences/{depot_id}"),
            None,
            Some(moved),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    drive(&mut truck, &[at(base, 6, lat, lon), at(base, 7, lat, lon)]).await;
    wait_stored_fixes(&server, "truck-1", 8).await;
    let events = kinds_of(&server, "truck-1").await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2], ("exit".to_owned(), rfc3339(base + 6_000)));
    let inside = server.get_ok("/api/devices/truck-1/geofences").await;
    assert_eq!(inside, json!([]));
    let (status, _) = server
        .request(
            reqwest::Method::GET,
            &format!("/api/geofences/{wash_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);
}

async fn bad_geofences_are_refused_with_the_reason_and_nothing_is_stored(backend: Backend) {
    let dir = TempDir::new("geofence-bad");
    let db = database(backend, &dir, "geofence_bad").await;
    let server = Server::start(&dir, &db).await;
    let polygon = |ring: Value| json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}});
    let many: Vec<Value> = (0..=10_000)
        .map(|i| {
            let a = i as f64 / 10_001.0 * std::f64::consts::TAU;
            json!([a.cos(), a.sin()])
        })
        .chain(std::iter::once(json!([1.0, 0.0])))
        .collect();
    let good = square("fine", 1.0, 1.0, 100.0, json!({}));
    let cases = [
        (polygon(json!([[0, 0], [1, 0], [1, 1]])), "closed"),
        (
            polygon(json!([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]])),
            "intersect",
        ),
        (polygon(json!([[0, 0], [1, 0], [1, 91], [0, 0]])), "range"),
        (polygon(json!(many)), "10000"),
        (
            json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}, "properties": {}}),
            "radius_m",
        ),
        (
            json!({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "properties": {"width_m": -5}}),
            "width_m",
        ),
        (
            json!({"type": "Feature", "geometry": {"type": "Hexagon", "coordinates": []}, "properties": {}}),
            "Hexagon",
        ),
        (
            json!({"type": "FeatureCollection", "features": [good.clone(), polygon(json!([[0, 0], [1, 0], [1, 1]]))]}),
            "feature 1",
        ),
        (
            square("nobody", 1.0, 1.0, 100.0, json!({"devices": []})),
            "at least one",
        ),
    ];
    for (body, reason) in cases {
        let (status, reply) = post(&server, "/api/geofences", body).await;
        assert_eq!(status, 400, "{reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{error:?} should name {reason:?}");
    }
    // A 10 MB body.
    let huge = format!(
        "{{\"type\": \"Feature\", \"pad\": \"{}\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    // Its own client: the server answers before reading the whole body and then closes the
    // connection, which must not be pooled for the requests after it.
    let resp = reqwest::Client::new()
        .post(server.url("/api/geofences"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let reply: Value = resp.json().await.expect("json error");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("larger"),
        "{reply}"
    );
    let (status, reply) = post(&server, "/api/rules", json!({"name": "nothing"})).await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("condition"),
        "{reply}"
    );
    let (status, reply) = post(
        &server,
        "/api/webhooks",
        json!({"url": "ftp://example.com/x", "secret": "s"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap_or_default().contains("http"),
        "{reply}"
    );
    // Bad queries of what was built are refused with the reason too.
    for (path, reason) in [
        ("/api/events?kinds=location", "kinds"),
        (
            "/api/events?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
        ("/api/events?limit=0", "limit"),
        ("/api/events?format=gpx", "format"),
        ("/api/events?devices=not%20ok", "device id"),
        ("/api/devices/not%20ok/geofences", "device id"),
        ("/api/geofences/abc", "positive integer"),
        ("/api/stream?kinds=geofence,weather", "unknown kind"),
    ] {
        let (status, reply) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{path}: {error:?} should say {reason:?}"
        );
    }
    // Nothing was stored.
    assert_eq!(server.get_ok("/api/geofences").await["features"], json!([]));
    assert_eq!(server.get_ok("/api/rules").await, json!([]));
    assert_eq!(server.get_ok("/api/webhooks").await, json!([]));
    let (status, _) = server
        .request(reqwest::Method::PUT, "/api/geofences/999", None, Some(good))
        .await;
    assert_eq!(status, 404);
}
