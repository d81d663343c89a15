//! History end to end on both back ends: bucketed telemetry (exact across bucket edges, from
//! roll-ups and raw rows, late data included), `points=`, trips and stops of a known track,
//! `simplify`, and exports read back by real CSV, GPX and GeoJSON parsers.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::geo::{east, rfc3339};
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(
    buckets_are_exact_and_late_data_corrects_them,
    trips_stops_and_simplify_of_a_known_track,
    exports_stream_every_row_to_real_parsers,
);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

/// An hour boundary at least 4 hours ago.
fn past_hour() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    (now - 4 * HOUR) / HOUR * HOUR
}

/// Publishes documents as JSON arrays of up to 500 on one topic and waits for the PUBACKs.
async fn publish_all(device: &mut Device, topic: &str, docs: &[Value]) {
    let before = device.acked();
    let chunks: Vec<_> = docs.chunks(500).collect();
    for chunk in &chunks {
        device
            .publish(topic, Value::Array(chunk.to_vec()).to_string())
            .await;
    }
    device.wait_acked(before + chunks.len()).await;
}

async fn get_text(server: &Server, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = server
        .http
        .get(server.url(path))
        .send()
        .await
        .expect("HTTP request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("HTTP body"))
}

/// (sum, min, max, count) per bucket, computed here from the values sent.
fn expected(
    values: &[(i64, f64)],
    from: i64,
    to: i64,
    bucket: i64,
) -> BTreeMap<i64, (f64, f64, f64, i64)> {
    let mut out: BTreeMap<i64, (f64, f64, f64, i64)> = BTreeMap::new();
    for &(ts, v) in values.iter().filter(|(ts, _)| (from..to).contains(ts)) {
        let e = out
            .entry(ts - ts % bucket)
            .or_insert((0.0, f64::INFINITY, f64::NEG_INFINITY, 0));
        e.0 += v;
        e.1 = e.1.min(v);
        e.2 = e.2.max(v);
        e.3 += 1;
    }
    out
}

fn assert_buckets(body: &Value, want: &BTreeMap<i64, (f64, f64, f64, i64)>, what: &str) {
    let rows = body.as_array().unwrap_or_else(|| panic!("{what}: {body}"));
    assert_eq!(rows.len(), want.len(), "{what}: {body}");
    for (row, (bucket, (sum, min, max, count))) in rows.iter().zip(want) {
        assert_eq!(row["ts"], json!(rfc3339(*bucket)), "{what}");
        assert_eq!(row["count"], json!(count), "{what} at {bucket}");
        assert_eq!(row["min"].as_f64(), Some(*min), "{what} at {bucket}");
        assert_eq!(row["max"].as_f64(), Some(*max), "{what} at {bucket}");
        // Halves sum exactly in binary floating point, in any order.
        assert_eq!(
            row["avg"].as_f64(),
            Some(sum / *count as f64),
            "{what} at {bucket}"
        );
    }
}

async fn wait_rolled_up(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = server.metrics_text().await;
        if text.contains("fieldline_rollup_minutes_total")
            && server.metric(&text, "fieldline_rollup_pending_minutes") == 0.0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "roll-ups never caught up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn buckets_are_exact_and_late_data_corrects_them(backend: Backend) {
    let dir = TempDir::new("history-buckets");
    let db = database(backend, &dir, "history_buckets").await;
    let server = Server::start(&dir, &db).await;
    let mut sensor = Device::connect(server.mqtt_port, "probe-1").await;
    let h0 = past_hour();
    // Three hours of one reading every 7 s, values in halves from -10 to +10.
    let values: Vec<(i64, f64)> = (0..(3 * 3600 / 7))
        .map(|i| (h0 + i * 7_000 + 250, ((i * 13) % 41 - 20) as f64 / 2.0))
        .collect();
    let docs: Vec<Value> = values
        .iter()
        .map(|(ts, v)| json!({"ts": ts, "metrics": {"temp_c": v, "other": 1}}))
        .collect();
    publish_all(&mut sensor, "devices/probe-1/telemetry", &docs).await;
    let (from, to) = (h0 + 30_500, h0 + 3 * HOUR - 10_000);
    let query = |bucket: &str| {
        format!("/api/devices/probe-1/telemetry?metric=temp_c&from={from}&to={to}&bucket={bucket}")
    };
    server
        .wait_for(&query("1h"), |b| {
            b.as_array().is_some_and(|a| {
                a.iter()
                    .map(|r| r["count"].as_i64().unwrap_or(0))
                    .sum::<i64>()
                    > 1500
            })
        })
        .await;
    let sizes = [
        ("90s", 90_000),
        ("1m", MINUTE),
        ("5m", 5 * MINUTE),
        ("1h", HOUR),
        ("1d", 24 * HOUR),
    ];
    // Before the roll-ups and after them: the same exact answers.
    for stage in ["raw", "rolled up"] {
        if stage == "rolled up" {
            wait_rolled_up(&server).await;
        }
        for (name, ms) in sizes {
            let body = server.get_ok(&query(name)).await;
            assert_buckets(
                &body,
                &expected(&values, from, to, ms),
                &format!("{stage} {name}"),
            );
        }
    }
    // A late reading in a rolled-up minute and hour counts at once and after its roll-up.
    let late = (h0 + HOUR + 5 * MINUTE + 1_234, 123.5);
    publish_all(
        &mut sensor,
        "devices/probe-1/telemetry",
        &[json!({"ts": late.0, "metrics": {"temp_c": late.1}})],
    )
    .await;
    let mut with_late = values.clone();
    with_late.push(late);
    server
        .wait_for(&query("1h"), |b| b.to_string().contains("123.5"))
        .await;
    for stage in ["marked", "rolled up again"] {
        if stage != "marked" {
            wait_rolled_up(&server).await;
        }
        for (name, ms) in sizes {
            let body = server.get_ok(&query(name)).await;
            assert_buckets(
                &body,
                &expected(&with_late, from, to, ms),
                &format!("late, {stage}, {name}"),
            );
        }
    }
    // points= picks the smallest standard bucket with at most that many rows, and names it.
    for (points, name, ms) in [
        (200, "1m", MINUTE),
        (100, "5m", 5 * MINUTE),
        (3, "1h", HOUR),
        (2, "6h", 6 * HOUR),
    ] {
        let path = format!(
            "/api/devices/probe-1/telemetry?metric=temp_c&from={from}&to={to}&points={points}"
        );
        let (status, headers, text) = get_text(&server, &path).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(headers["fieldline-bucket"], name, "points={points}");
        let body: Value = serde_json::from_str(&text).expect("JSON");
        assert_buckets(
            &body,
            &expected(&with_late, from, to, ms),
            &format!("points={points}"),
        );
    }
    // The same in CSV.
    let (status, headers, text) = get_text(&server, &format!("{}&format=csv", query("1h"))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["fieldline-bucket"], "1h");
    let mut csv = csv::Reader::from_reader(text.as_bytes());
    let counts: Vec<i64> = csv
        .records()
        .map(|r| r.expect("CSV row")[4].parse().expect("count"))
        .collect();
    let want: Vec<i64> = expected(&with_late, from, to, HOUR)
        .values()
        .map(|v| v.3)
        .collect();
    assert_eq!(counts, want);
    // Bad input: each a 400 with its reason.
    for (path, reason) in [
        (query("7x"), "bucket must be"),
        (query("0m"), "bucket must be"),
        (
            query("1s").replace("from=", "from=0&x="),
            "more than 100000",
        ),
        (format!("{}&points=10", query("1m")), "not both"),
        (
            "/api/devices/probe-1/telemetry?bucket=1m".to_owned(),
            "metric",
        ),
        (
            "/api/devices/probe-1/telemetry?metric=temp_c&points=0".to_owned(),
            "points must be",
        ),
        (
            "/api/devices/probe-1/telemetry?metric=temp_c&points=abc".to_owned(),
            "",
        ),
        (format!("{}&format=xml", query("1m")), "format must be"),
        (
            format!("/api/devices/probe-1/telemetry?metric=temp_c&bucket=1m&from={to}&to={from}"),
            "from must not be after to",
        ),
    ] {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{path}: {body}"
        );
    }
    let (status, _) = server
        .get("/api/devices/nobody/telemetry?metric=temp_c&bucket=1m")
        .await;
    assert_eq!(status, 404);
}

/// Fixes at 1 Hz driving east from (52.0, 13.0): (seconds, speed m/s) stretches.
fn known_track(start: i64, stretches: &[(i64, f64)]) -> Vec<Value> {
    let (mut t, mut metres) = (0i64, 0.0);
    let mut fixes = vec![json!({"ts": start, "lat": 52.0, "lon": 13.0, "speed": stretches[0].1})];
    for &(secs, speed) in stretches {
        for _ in 0..secs {
            t += 1;
            metres += speed;
            fixes.push(json!({"ts": start + t * 1000, "lat": 52.0, "lon": east(52.0, 13.0, metres), "speed": speed}));
        }
    }
    fixes
}

async fn trips_stops_and_simplify_of_a_known_track(backend: Backend) {
    let dir = TempDir::new("history-trips");
    let db = database(backend, &dir, "history_trips").await;
    let server = Server::start(&dir, &db).await;
    let mut van = Device::connect(server.mqtt_port, "van-1").await;
    let start = past_hour();
    // 10 min at 10 m/s, a 15 min stop, 5 min at 20 m/s, 2 min standing (too short for a
    // stop), 5 min at 10 m/s, a 6 min stop.
    let stretches = [
        (600, 10.0),
        (900, 0.0),
        (300, 20.0),
        (120, 0.0),
        (300, 10.0),
        (360, 0.0),
    ];
    let fixes = known_track(start, &stretches);
    publish_all(&mut van, "devices/van-1/location", &fixes).await;
    let range = format!("from={start}&to={}", start + 3 * HOUR);
    server
        .wait_for(
            &format!("/api/devices/van-1/track?{range}&limit=100000"),
            |b| b.as_array().is_some_and(|a| a.len() == fixes.len()),
        )
        .await;
    let found = server
        .get_ok(&format!("/api/devices/van-1/trips?{range}"))
        .await;
    let (trips, stops) = (
        found["trips"].as_array().unwrap(),
        found["stops"].as_array().unwrap(),
    );
    assert_eq!(stops.len(), 2, "{found}");
    assert_eq!(trips.len(), 2, "{found}");
    // A stop runs from its first fix below 1 m/s to its last.
    assert_eq!(stops[0]["start"], json!(rfc3339(start + 601_000)));
    assert_eq!(stops[0]["duration_s"], json!(899.0));
    assert_eq!(stops[1]["duration_s"], json!(359.0));
    assert!((stops[0]["lat"].as_f64().unwrap() - 52.0).abs() < 1e-9);
    // Trips: 6,000 m in 601 s, then 6,000 + 3,000 m.
    for (trip, metres, secs) in [(&trips[0], 6_000.0, 601.0), (&trips[1], 9_000.0, 721.0)] {
        let d = trip["distance_m"].as_f64().unwrap();
        assert!((d - metres).abs() / metres < 0.01, "{trip}");
        assert_eq!(trip["duration_s"], json!(secs), "{trip}");
        assert!(
            (trip["avg_speed"].as_f64().unwrap() - d / secs).abs() < 1e-6,
            "{trip}"
        );
    }
    assert_eq!(trips[1]["max_speed"], json!(20.0));
    assert_eq!(trips[0]["from"], json!({"lat": 52.0, "lon": 13.0}));
    // A shorter minimum stop finds the 2-minute standstill too.
    let found = server
        .get_ok(&format!("/api/devices/van-1/trips?{range}&min_stop_s=60"))
        .await;
    assert_eq!(found["stops"].as_array().map(Vec::len), Some(3), "{found}");
    // simplify: a straight line east keeps only its ends.
    let thin = server
        .get_ok(&format!(
            "/api/devices/van-1/track?{range}&limit=100000&simplify=2"
        ))
        .await;
    let thin = thin.as_array().unwrap();
    assert_eq!(thin.first().unwrap()["ts"], json!(rfc3339(start)));
    assert_eq!(
        thin.last().unwrap()["ts"],
        json!(rfc3339(start + 2_580_000))
    );
    assert!(thin.len() <= 3, "{thin:?}");
    // Bad input.
    for path in [
        format!("/api/devices/van-1/trips?{range}&min_stop_s=0"),
        format!("/api/devices/van-1/trips?{range}&stop_speed=-1"),
        format!("/api/devices/van-1/trips?{range}&stop_speed=abc"),
        format!("/api/devices/van-1/track?{range}&simplify=0"),
        format!("/api/devices/van-1/track?{range}&simplify=NaN"),
        format!("/api/devices/van-1/trips?from={}&to={start}", start + 1),
    ] {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, _) = server.get("/api/devices/nobody/trips").await;
    assert_eq!(status, 404);
}

/// A zig-zag that simplify cannot drop: every point off the line by ~100 m.
async fn exports_stream_every_row_to_real_parsers(backend: Backend) {
    let dir = TempDir::new("history-exports");
    let db = database(backend, &dir, "history_exports").await;
    let server = Server::start(&dir, &db).await;
    let mut truck = Device::connect(server.mqtt_port, "truck-7").await;
    let start = past_hour();
    // 12,000 fixes: more than two pages; pairs of fixes share a time at page edges.
    let fixes: Vec<Value> = (0..12_000)
        .map(|i| {
            let ts = start + (i / 2) * 1_000;
            json!({"ts": ts, "seq": i, "lat": 40.0 + i as f64 * 1e-5, "lon": -74.0 - (i % 7) as f64 * 1e-4,
                   "alt": (i % 50) as f64, "speed": 3.5})
        })
        .collect();
    publish_all(&mut truck, "devices/truck-7/location", &fixes).await;
    let range = format!("from={start}&to={}", start + 2 * HOUR);
    let stored = server
        .wait_for(
            &format!("/api/devices/truck-7/track?{range}&limit=100000"),
            |b| b.as_array().is_some_and(|a| a.len() == fixes.len()),
        )
        .await;
    let stored = stored.as_array().unwrap();

    let (status, headers, text) = get_text(
        &server,
        &format!("/api/devices/truck-7/track?{range}&format=gpx"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/gpx+xml");
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains("filename=\"truck-7-track-"));
    let parsed = gpx::read(text.as_bytes()).expect("GPX parses");
    let points = &parsed.tracks[0].segments[0].points;
    assert_eq!(points.len(), stored.len());
    for (p, s) in points.iter().zip(stored) {
        assert_eq!(p.point().y(), s["lat"].as_f64().unwrap());
        assert_eq!(p.point().x(), s["lon"].as_f64().unwrap());
        assert_eq!(p.elevation, s["alt"].as_f64());
    }

    let (status, _, text) = get_text(
        &server,
        &format!("/api/devices/truck-7/track?{range}&format=geojson"),
    )
    .await;
    assert_eq!(status, 200);
    let parsed: geojson::GeoJson = text.parse().expect("GeoJSON parses");
    let geojson::GeoJson::FeatureCollection(fc) = parsed else {
        panic!("not a collection")
    };
    let feature = &fc.features[0];
    let Some(geojson::Value::LineString(line)) = feature.geometry.as_ref().map(|g| &g.value) else {
        panic!("not a line")
    };
    let times = feature.properties.as_ref().unwrap()["times"]
        .as_array()
        .unwrap();
    assert_eq!(line.len(), stored.len());
    assert_eq!(times.len(), stored.len());
    for ((c, t), s) in line.iter().zip(times).zip(stored) {
        assert_eq!(c[0], s["lon"].as_f64().unwrap());
        assert_eq!(c[1], s["lat"].as_f64().unwrap());
        assert_eq!(t, &s["ts"]);
    }

    let (status, _, text) = get_text(
        &server,
        &format!("/api/devices/truck-7/track?{range}&format=csv"),
    )
    .await;
    assert_eq!(status, 200);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["ts", "seq", "lat", "lon", "speed", "heading", "alt", "accuracy"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("CSV row")).collect();
    assert_eq!(rows.len(), stored.len());
    let mut seqs: Vec<u64> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..12_000).collect::<Vec<u64>>(), "every row once");
    for (r, s) in rows.iter().zip(stored) {
        assert_eq!(&r[0], s["ts"].as_str().unwrap());
        assert_eq!(r[2].parse::<f64>().unwrap(), s["lat"].as_f64().unwrap());
    }

    // Telemetry as CSV: two metrics per document.
    let mut sensor = Device::connect(server.mqtt_port, "probe-2").await;
    let docs: Vec<Value> = (0..6_000)
        .map(|i| json!({"ts": start + i * 500, "seq": i, "metrics": {"a": i, "b": -i}}))
        .collect();
    publish_all(&mut sensor, "devices/probe-2/telemetry", &docs).await;
    server
        .wait_for(
            &format!("/api/devices/probe-2/telemetry?{range}&limit=100000"),
            |b| b.as_array().is_some_and(|a| a.len() == 12_000),
        )
        .await;
    let (status, headers, text) = get_text(
        &server,
        &format!("/api/devices/probe-2/telemetry?{range}&format=csv"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .ends_with(".csv\""));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut seen = std::collections::BTreeSet::new();
    for r in reader.records() {
        let r = r.expect("CSV row");
        let (seq, metric, value): (i64, String, f64) = (
            r[1].parse().unwrap(),
            r[2].to_owned(),
            r[3].parse().unwrap(),
        );
        assert_eq!(
            value,
            if metric == "a" {
                seq as f64
            } else {
                -seq as f64
            }
        );
        assert!(seen.insert((seq, metric)), "a row twice");
    }
    assert_eq!(seen.len(), 12_000);
    let (status, _, _) = get_text(
        &server,
        &format!("/api/devices/probe-2/telemetry?{range}&format=gpx"),
    )
    .await;
    assert_eq!(status, 400);
}
