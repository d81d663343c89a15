//! Helpers for geofence and alert tests: fixes in device time, positions metres apart, and
//! reading stored events back.

use std::time::Duration;

use serde_json::{json, Value};

use super::{Device, Server};

/// Metres per degree of latitude (haversine sphere).
pub const M_PER_DEG: f64 = 111_195.08;

/// A device-time base two hours ago, whole seconds: device clocks may lag, never lead.
pub fn base_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    (now - 2 * 3600 * 1000) / 1000 * 1000
}

/// `lat` moved `north_m` metres north.
pub fn north(lat: f64, north_m: f64) -> f64 {
    lat + north_m / M_PER_DEG
}

/// `lon` moved `east_m` metres east at latitude `lat`.
pub fn east(lat: f64, lon: f64, east_m: f64) -> f64 {
    lon + east_m / (M_PER_DEG * lat.to_radians().cos())
}

pub fn fix(ts_ms: i64, lat: f64, lon: f64, accuracy: Option<f64>, speed: Option<f64>) -> Vec<u8> {
    let mut v = json!({"ts": ts_ms, "lat": lat, "lon": lon});
    if let Some(a) = accuracy {
        v["accuracy"] = json!(a);
    }
    if let Some(s) = speed {
        v["speed"] = json!(s);
    }
    v.to_string().into_bytes()
}

/// A fix to send: (ts, lat, lon, accuracy, speed).
pub type Fix = (i64, f64, f64, Option<f64>, Option<f64>);

/// Publishes each fix and waits for the PUBACKs.
pub async fn drive(device: &mut Device, fixes: &[Fix]) {
    let already = device.acked();
    let topic = format!("devices/{}/location", device.client_id);
    for (ts, lat, lon, accuracy, speed) in fixes {
        device
            .publish(&topic, fix(*ts, *lat, *lon, *accuracy, *speed))
            .await;
    }
    device.wait_acked(already + fixes.len()).await;
}

pub async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    server
        .request(
            reqwest::Method::POST,
            path,
            server.token.as_deref(),
            Some(body),
        )
        .await
}

/// POSTs and asserts 201; the reply.
pub async fn created(server: &Server, path: &str, body: Value) -> Value {
    let (status, reply) = post(server, path, body).await;
    assert_eq!(status, 201, "POST {path}: {reply}");
    reply
}

/// A square fence of `side_m` metres centred on (lat, lon).
pub fn square(name: &str, lat: f64, lon: f64, side_m: f64, properties: Value) -> Value {
    let h = side_m / 2.0;
    let (s, n) = (north(lat, -h), north(lat, h));
    let (w, e) = (east(lat, lon, -h), east(lat, lon, h));
    let mut props = properties;
    props["name"] = json!(name);
    json!({"type": "Feature",
           "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
           "properties": props})
}

/// The stored events of `device`, oldest first.
pub async fn events_of(server: &Server, device: &str) -> Vec<Value> {
    let body = server
        .get_ok(&format!(
            "/api/events?devices={device}&kinds=geofence,alert"
        ))
        .await;
    body.as_array().cloned().unwrap_or_default()
}

/// (event or state, ts) of each stored event of `device`, oldest first.
pub async fn kinds_of(server: &Server, device: &str) -> Vec<(String, String)> {
    events_of(server, device)
        .await
        .iter()
        .map(|e| {
            let what = e["event"].as_str().or(e["state"].as_str()).unwrap_or("?");
            (what.to_owned(), e["ts"].as_str().unwrap_or("?").to_owned())
        })
        .collect()
}

/// Waits until `device` has `n` positions stored: every fix sent has been judged by then.
pub async fn wait_stored_fixes(server: &Server, device: &str, n: usize) {
    server
        .wait_for(
            &format!("/api/devices/{device}/track?from=0&limit=100000"),
            |b| b.as_array().is_some_and(|a| a.len() >= n),
        )
        .await;
    // The events went in with those rows, in the same transaction.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

pub fn rfc3339(ms: i64) -> String {
    fieldline_store::time_format::format_ms(ms)
}
