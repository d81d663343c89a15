//! Geofence scenarios. `geofence-setup` loads fences and rules over the HTTP API: one
//! 50-vertex polygon around each load-client device's start (see `load.rs`), so a load run
//! judges every fix against real fences. `geofences` parks devices on a fence boundary with
//! realistic GPS noise (tens of metres, varying `accuracy`) and drives others through fences
//! and a corridor, reading the geofence events back live to report how many arrived and how
//! long after the fix they did (publish to live event).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::connection::Broker;
use crate::latency::Histogram;
use crate::payload::{now_ms, parse_time};
use crate::random::Rng;

const M_PER_DEG: f64 = 111_195.08;

#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Fieldline's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// API token, when API authentication is on.
    #[arg(long, env = "FIELDLINE_TOKEN")]
    token: Option<String>,
}

impl ApiArgs {
    /// POSTs `body` to `path`; an error with Fieldline's answer unless it is a success.
    async fn create(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<()> {
        let resp = self
            .request(client, reqwest::Method::POST, path)
            .json(body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "POST {path}: {} {}",
            resp.status(),
            resp.text().await?
        );
        Ok(())
    }

    pub(crate) fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let r = client.request(method, format!("{}{path}", self.http));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Polygons to create, one around load device k's start for k = 0..N.
    #[arg(long, default_value_t = 10_000)]
    fences: usize,
    /// Vertices per polygon.
    #[arg(long, default_value_t = 50)]
    vertices: usize,
    /// Radius of each polygon, metres.
    #[arg(long, default_value_t = 1_000.0)]
    radius_m: f64,
    /// Threshold rules to create (on `temp_c`, for `load-*`).
    #[arg(long, default_value_t = 1_000)]
    rules: usize,
}

/// A ring of `n` vertices `radius_m` around (lat, lon), closed.
fn ring(lat: f64, lon: f64, radius_m: f64, n: usize) -> Vec<[f64; 2]> {
    let mut ring: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let a = i as f64 / n as f64 * std::f64::consts::TAU;
            let dlat = radius_m * a.sin() / M_PER_DEG;
            let dlon = radius_m * a.cos() / (M_PER_DEG * lat.to_radians().cos());
            [lon + dlon, lat + dlat]
        })
        .collect();
    ring.push(ring[0]);
    ring
}

pub async fn setup(args: SetupArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let features: Vec<Value> = (0..args.fences)
        .map(|k| {
            let (lat, lon) = crate::watch::start_position(k);
            json!({"type": "Feature",
                   "geometry": {"type": "Polygon", "coordinates": [ring(lat, lon, args.radius_m, args.vertices.max(3))]},
                   "properties": {"name": format!("zone-{k}"), "dwell_s": 600, "speed_limit": 30}})
        })
        .collect();
    for chunk in features.chunks(1_000) {
        let collection = json!({"type": "FeatureCollection", "features": chunk});
        args.api
            .create(&client, "/api/geofences", &collection)
            .await?;
    }
    for r in 0..args.rules {
        let rule = json!({"name": format!("hot-{r}"), "devices": [format!("load-{}*", r % 10)],
                          "metric": "temp_c", "above": 40.0 + r as f64 * 0.01, "clear_below": 35.0, "for_s": 60});
        args.api.create(&client, "/api/rules", &rule).await?;
    }
    println!(
        "{}",
        json!({"fences": args.fences, "vertices": args.vertices, "rules": args.rules,
               "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ScenarioArgs {
    #[command(flatten)]
    broker: Broker,
    #[command(flatten)]
    api: ApiArgs,
    /// Devices parked on the boundary of the depot fence.
    #[arg(long, default_value_t = 20)]
    parked: usize,
    /// Devices driving in and out of the depot and along the corridor.
    #[arg(long, default_value_t = 20)]
    drivers: usize,
    /// Metres of GPS error around each parked device's spot (uniform over a disc).
    #[arg(long, default_value_t = 20.0)]
    noise_m: f64,
    /// Milliseconds between one device's fixes.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Centre of the depot, "lat,lon".
    #[arg(long, default_value = "52.52,13.405", value_parser = crate::fleet::parse_point)]
    center: (f64, f64),
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub async fn scenario(args: ScenarioArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let (lat, lon) = args.center;
    let east = move |m: f64| m / (M_PER_DEG * lat.to_radians().cos());
    // A 400 m depot and a 4 km corridor leading east from it.
    let depot = json!({"type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring(lat, lon, 200.0, 64)]},
        "properties": {"name": "depot", "dwell_s": 300, "speed_limit": 8.3}});
    let corridor = json!({"type": "Feature",
        "geometry": {"type": "LineString", "coordinates": [[lon, lat], [lon + east(4000.0), lat]]},
        "properties": {"name": "route", "width_m": 60}});
    let fences = json!({"type": "FeatureCollection", "features": [depot, corridor]});
    args.api.create(&client, "/api/geofences", &fences).await?;

    let events = Arc::new(AtomicU64::new(0));
    let parked_events = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::default()));
    let stream = args
        .api
        .request(&client, reqwest::Method::GET, "/api/stream?kinds=geofence")
        .send()
        .await?;
    anyhow::ensure!(
        stream.status().is_success(),
        "live stream: {}",
        stream.status()
    );
    let reader = {
        let (events, parked_events, latency) =
            (events.clone(), parked_events.clone(), latency.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = stream.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(event) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    if event["kind"] != "geofence" {
                        continue;
                    }
                    events.fetch_add(1, Ordering::Relaxed);
                    if event["device"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("parked-"))
                    {
                        // A parked device's change of side waits for its confirming fix
                        // through any number of unsure ones: that delay is the judge's, not
                        // the pipeline's, so it is counted but not timed.
                        parked_events.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Fixes are dated when sent, so the event's ts is the send time of the
                    // fix it is dated at (for enter and exit, the first on the new side).
                    if let Some(ts) = event["ts"].as_str().and_then(|s| parse_time(s).ok()) {
                        let us = (now_ms() - ts).max(0) as u64 * 1000;
                        latency.lock().map(|mut h| h.record(us)).ok();
                    }
                }
            }
        })
    };

    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for i in 0..args.parked + args.drivers {
        let parked = i < args.parked;
        let id = if parked {
            format!("parked-{i}")
        } else {
            format!("driver-{i}")
        };
        let client = args.broker.publisher(&id);
        let topic = format!("devices/{id}/location");
        let qos = args.broker.qos();
        let mut rng = Rng::new(args.seed.wrapping_add(i as u64));
        let (noise, interval, sent) = (
            args.noise_m,
            Duration::from_millis(args.interval_ms.max(10)),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Parked: a spot on the depot's boundary. Driving: out east along the corridor
            // and back, through the depot, at 15 m/s.
            let a = rng.unit() * std::f64::consts::TAU;
            let spot = (lat + 200.0 * a.sin() / M_PER_DEG, lon + east(200.0 * a.cos()));
            let mut x_m = -400.0 + rng.unit() * 4400.0;
            let mut dir = 1.0;
            let mut tick = tokio::time::interval(interval);
            while Instant::now() < deadline {
                tick.tick().await;
                let (fix_lat, fix_lon, accuracy, speed) = if parked {
                    // Reported accuracy about 20 m (15 to 30), errors within ±noise.
                    let accuracy = rng.range(15.0, 30.0);
                    // An error of up to `noise` metres in any direction.
                    let (r, t) = (noise * rng.unit().sqrt(), rng.unit() * std::f64::consts::TAU);
                    (spot.0 + r * t.sin() / M_PER_DEG, spot.1 + east(r * t.cos()), accuracy, rng.range(0.0, 0.5))
                } else {
                    x_m += dir * 15.0 * interval.as_secs_f64();
                    if !(-400.0..=4400.0).contains(&x_m) {
                        dir = -dir;
                    }
                    (lat + rng.range(-5.0, 5.0) / M_PER_DEG, lon + east(x_m), rng.range(3.0, 10.0), 15.0)
                };
                let doc = json!({"ts": now_ms(), "lat": fix_lat, "lon": fix_lon, "accuracy": accuracy, "speed": speed});
                if client.publish(&topic, qos, false, doc.to_string()).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
    let h = latency.lock().map(|h| h.clone()).unwrap_or_default();
    let ms = |q: f64| h.quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({"fixes_sent": sent.load(Ordering::Relaxed), "parked": args.parked, "drivers": args.drivers,
               "geofence_events": events.load(Ordering::Relaxed),
               "parked_events": parked_events.load(Ordering::Relaxed),
               "driver_event_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": h.max() as f64 / 1000.0, "count": h.count()}})
    );
    Ok(())
}
