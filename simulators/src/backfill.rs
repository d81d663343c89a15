//! `backfill`: days of plausible history with past timestamps, published over MQTT as fast as
//! the broker acknowledges it, to build benchmark datasets.
//!
//! Vehicles drive trips and stop between them; sensors report smooth readings that follow the
//! day. Time walks forward from `end - days` to `end` for every device together: the next
//! payload is always the pending batch that starts earliest, so storage receives the history
//! in time order to within one batch's span, as when a real backlog drains. Each document's
//! `seq` is its index in the range, so a rerun with the same `--end` and `--seed` sends the
//! same documents and Fieldline stores them once.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use serde::Serialize;

use crate::connection::Broker;
use crate::fleet::{advance, parse_point, steer};
use crate::geofences::ApiArgs;
use crate::payload::{encode, format_time, now_ms, parse_time, Encoding, Fix, Reading};
use crate::random::Rng;

const DAY_MS: f64 = 86_400_000.0;
const M_PER_DEG: f64 = 111_195.08;

// Usage is in the subcommand's help (main.rs).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    broker: Broker,
    /// Days of history, ending at `--end` (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    days: f64,
    /// Vehicles, publishing GPS fixes to devices/{id}/location.
    #[arg(long, default_value_t = 1)]
    vehicles: usize,
    /// Milliseconds between fixes of one vehicle.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    fix_interval_ms: u64,
    /// Sensors, publishing readings to devices/{id}/telemetry.
    #[arg(long, default_value_t = 100)]
    sensors: usize,
    /// Metrics in each reading: temp_c, humidity, moisture, battery_v, pump_on, soil_temp_c,
    /// pressure_hpa, light_lux, rssi_dbm, then aux_9, aux_10, …
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    metrics: u16,
    /// Milliseconds between readings of one sensor.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    reading_interval_ms: u64,
    /// Where the history ends: epoch milliseconds or RFC 3339 [default: now].
    #[arg(long, value_parser = parse_time)]
    end: Option<i64>,
    /// Documents per MQTT payload (a JSON or MessagePack array; one device, one kind).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// Vehicle ids are PREFIX-0 … PREFIX-(N-1).
    #[arg(long, default_value = "bf-vehicle")]
    prefix_vehicle: String,
    /// Sensor ids are PREFIX-0 … PREFIX-(N-1).
    #[arg(long, default_value = "bf-sensor")]
    prefix_sensor: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the vehicles' depot is, "lat,lon"; they drive within about 15 km of it.
    #[arg(long, default_value = "52.52,13.405", value_parser = parse_point)]
    center: (f64, f64),
    /// MQTT connections sharing the devices (device i on connection i mod N, each named after
    /// its first device). With `--credentials` every device has its own, as the broker then
    /// lets a connection publish only under its own device id.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    connections: u64,
    /// Largest payload to send, bytes (Fieldline's default limit): a batch that encodes
    /// larger is split.
    #[arg(long, default_value_t = 256 * 1024)]
    max_payload: usize,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    progress_s: u64,
    /// After the last PUBACK, wait until Fieldline's log holds nothing unstored (its
    /// `/metrics` at `--http`) and report the rows it wrote and rejected meanwhile.
    #[arg(long)]
    wait_stored: bool,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What one publish carries, counted when its PUBACK arrives.
#[derive(Clone, Copy, Default)]
struct Load {
    fixes: u64,
    readings: u64,
    rows: u64,
}

#[derive(Default)]
struct Acked {
    publishes: AtomicU64,
    fixes: AtomicU64,
    readings: AtomicU64,
    rows: AtomicU64,
}

impl Acked {
    fn add(&self, load: Load) {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        self.fixes.fetch_add(load.fixes, Ordering::Relaxed);
        self.readings.fetch_add(load.readings, Ordering::Relaxed);
        self.rows.fetch_add(load.rows, Ordering::Relaxed);
    }

    fn load(&self) -> (u64, u64, u64, u64) {
        (
            self.publishes.load(Ordering::Relaxed),
            self.fixes.load(Ordering::Relaxed),
            self.readings.load(Ordering::Relaxed),
            self.rows.load(Ordering::Relaxed),
        )
    }
}

/// The first error of any connection: the run stops on it.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    message: Mutex<Option<String>>,
}

impl Failure {
    fn set(&self, message: String) {
        if let Ok(mut m) = self.message.lock() {
            m.get_or_insert(message);
        }
        self.failed.store(true, Ordering::Release);
    }

    fn check(&self) -> anyhow::Result<()> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let message = self.message.lock().ok().and_then(|m| m.clone());
        anyhow::bail!(message.unwrap_or_else(|| "an MQTT connection failed".into()))
    }
}

struct Connection {
    client: AsyncClient,
    /// Publishes handed to the client and not yet written, in order: rumqttc writes them in
    /// that order and names each only then, by its packet id.
    queued: Arc<Mutex<VecDeque<Load>>>,
    poller: tokio::task::JoinHandle<()>,
}

impl Connection {
    fn start(
        name: String,
        client: AsyncClient,
        eventloop: EventLoop,
        acked: Arc<Acked>,
        failure: Arc<Failure>,
    ) -> Self {
        let queued = Arc::new(Mutex::new(VecDeque::new()));
        let poller = tokio::spawn(poll(name, eventloop, queued.clone(), acked, failure));
        Self {
            client,
            queued,
            poller,
        }
    }

    /// Waits for room in the client's queue (so publishes in flight stay bounded) and queues
    /// the publish; an error once the connection is gone.
    async fn send(
        &self,
        topic: &str,
        payload: Vec<u8>,
        load: Load,
        failure: &Failure,
    ) -> anyhow::Result<()> {
        failure.check()?;
        if let Ok(mut q) = self.queued.lock() {
            q.push_back(load);
        }
        if self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            failure.check()?;
            anyhow::bail!("the MQTT client stopped");
        }
        Ok(())
    }
}

/// Runs a connection's event loop: counts each PUBACK with what its publish carried, and
/// reports the first error as the run's failure (the run never reconnects: a lost connection
/// could have lost publishes it cannot name).
async fn poll(
    name: String,
    mut eventloop: EventLoop,
    queued: Arc<Mutex<VecDeque<Load>>>,
    acked: Arc<Acked>,
    failure: Arc<Failure>,
) {
    let mut written: HashMap<u16, Load> = HashMap::new();
    let mut closing = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let load = queued.lock().ok().and_then(|mut q| q.pop_front());
                written.insert(pkid, load.unwrap_or_default());
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(load) = written.remove(&ack.pkid) {
                    acked.add(load);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => closing = true,
            Ok(Event::Incoming(Packet::Disconnect)) if !closing => {
                failure.set(format!("{name}: the broker disconnected"));
                return;
            }
            Ok(_) => {}
            Err(_) if closing => return,
            Err(e) => {
                failure.set(format!("{name}: connection to the broker lost: {e}"));
                return;
            }
        }
    }
}

/// A vehicle: driving a trip, or stopped between trips.
struct Vehicle {
    /// Where it really is (reported fixes add GPS noise).
    at: Fix,
    home: (f64, f64),
    driving: bool,
    /// Seconds left of the current trip or stop.
    left_s: f64,
    target_speed: f64,
    /// Seconds until the driver settles on another speed.
    retarget_s: f64,
    accuracy: f64,
}

/// Trips stay within about this distance of home: beyond it the driver heads back.
const HOME_RADIUS_M: f64 = 15_000.0;
/// Acceleration and braking, m/s².
const ACCEL: f64 = 1.0;
const BRAKE: f64 = 2.0;

impl Vehicle {
    fn new(home: (f64, f64), rng: &mut Rng) -> Self {
        Self {
            at: Fix {
                ts: 0,
                seq: 0,
                lat: home.0 + rng.range(-0.05, 0.05),
                lon: home.1 + rng.range(-0.08, 0.08),
                speed: 0.0,
                heading: rng.range(0.0, 360.0),
                accuracy: None,
            },
            home,
            driving: false,
            left_s: rng.range(0.0, 3600.0),
            target_speed: 0.0,
            retarget_s: 0.0,
            accuracy: rng.range(3.0, 8.0),
        }
    }

    /// Bearing (degrees clockwise from north) and distance (metres) to home, on a local
    /// flat map: good enough within the fleet's few tens of kilometres.
    fn toward_home(&self) -> (f64, f64) {
        let north = (self.home.0 - self.at.lat) * M_PER_DEG;
        let east = (self.home.1 - self.at.lon) * M_PER_DEG * self.at.lat.to_radians().cos();
        (
            (east.atan2(north).to_degrees() + 360.0) % 360.0,
            north.hypot(east),
        )
    }

    /// Moves on by `dt` seconds; the fix it reports then.
    fn step(&mut self, dt: f64, rng: &mut Rng) -> Fix {
        self.left_s -= dt;
        if self.driving {
            self.drive(dt, rng);
        }
        if self.left_s <= 0.0 {
            self.driving = !self.driving;
            if self.driving {
                self.left_s = rng.range(15.0 * 60.0, 45.0 * 60.0);
                self.target_speed = rng.range(5.0, 25.0);
                self.retarget_s = rng.range(30.0, 180.0);
                let (bearing, distance) = self.toward_home();
                if distance > HOME_RADIUS_M / 2.0 {
                    self.at.heading = (bearing + rng.range(-45.0, 45.0) + 360.0) % 360.0;
                }
            } else {
                self.left_s = rng.range(5.0 * 60.0, 60.0 * 60.0);
                self.at.speed = 0.0;
            }
        }
        self.accuracy = (self.accuracy + rng.range(-0.5, 0.5)).clamp(3.0, 8.0);
        let mut fix = self.at.clone();
        if !self.driving {
            // Standing still, GPS wanders a couple of metres around the real spot.
            let mut noise = fix.clone();
            noise.heading = rng.range(0.0, 360.0);
            advance(&mut noise, (rng.unit() + rng.unit()) * 1.5);
            (fix.lat, fix.lon) = (noise.lat, noise.lon);
        }
        fix.lat = round(fix.lat, 7);
        fix.lon = round(fix.lon, 7);
        fix.speed = round(fix.speed, 2);
        // Rounding 359.96 up would leave the contract's [0, 360).
        fix.heading = round(fix.heading, 1) % 360.0;
        fix.accuracy = Some(round(self.accuracy, 1));
        fix
    }

    fn drive(&mut self, dt: f64, rng: &mut Rng) {
        self.retarget_s -= dt;
        if self.retarget_s <= 0.0 {
            self.target_speed = rng.range(5.0, 25.0);
            self.retarget_s = rng.range(30.0, 180.0);
        }
        let speed = self.at.speed;
        // Brake in time to be standing when the trip ends.
        let braking = self.left_s < speed / BRAKE + dt;
        let goal = if braking { 0.0 } else { self.target_speed };
        let change = (goal - speed).clamp(-BRAKE * dt, ACCEL * dt) + rng.range(-0.3, 0.3);
        // Once cruising, the speed stays in 5–25 m/s; below 5 only when starting or stopping.
        let floor = if braking || speed < 5.0 { 0.0 } else { 5.0 };
        self.at.speed = (speed + change).clamp(floor, 25.0);
        steer(&mut self.at, rng, dt);
        let (bearing, distance) = self.toward_home();
        if distance > HOME_RADIUS_M {
            // Past the edge of its area the driver turns back, a couple of degrees a second.
            let off = (bearing - self.at.heading + 540.0) % 360.0 - 180.0;
            self.at.heading = (self.at.heading + off.clamp(-2.0 * dt, 2.0 * dt) + 360.0) % 360.0;
        }
        let distance = (speed + self.at.speed) / 2.0 * dt;
        advance(&mut self.at, distance);
    }
}

/// A field sensor: weather that drifts over days on top of the daily cycle, soil drying and
/// irrigated, a battery running down.
struct Sensor {
    /// Site offset from the mean temperature, °C.
    offset: f64,
    /// Slow weather anomaly, °C (a mean-reverting walk over about two days).
    weather: f64,
    humidity_noise: f64,
    moisture: f64,
    pump_on: bool,
    battery: f64,
    drain_per_day: f64,
    rssi: f64,
    /// Base, amplitude, period (hours) and phase of each metric past the named ones.
    aux: Vec<(f64, f64, f64, f64)>,
}

/// The names of the first metrics; more are `aux_{i}`.
const METRICS: [&str; 9] = [
    "temp_c",
    "humidity",
    "moisture",
    "battery_v",
    "pump_on",
    "soil_temp_c",
    "pressure_hpa",
    "light_lux",
    "rssi_dbm",
];

fn metric_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            METRICS
                .get(i)
                .map_or_else(|| format!("aux_{i}"), |m| m.to_string())
        })
        .collect()
}

impl Sensor {
    fn new(metrics: usize, rng: &mut Rng) -> Self {
        Self {
            offset: rng.range(-3.0, 3.0),
            weather: rng.normal() * 2.0,
            humidity_noise: 0.0,
            moisture: rng.range(0.18, 0.4),
            pump_on: false,
            battery: rng.range(3.9, 4.2),
            drain_per_day: rng.range(0.004, 0.008),
            rssi: rng.range(-85.0, -60.0),
            aux: (METRICS.len()..metrics.max(METRICS.len()))
                .map(|_| {
                    (
                        rng.range(0.0, 100.0),
                        rng.range(1.0, 10.0),
                        rng.range(2.0, 48.0),
                        rng.range(0.0, std::f64::consts::TAU),
                    )
                })
                .collect(),
        }
    }

    /// Moves on by `dt` seconds to `ts`; the first `out.len()` metrics' values then.
    fn step(&mut self, ts: i64, dt: f64, lon: f64, rng: &mut Rng, out: &mut [f64]) {
        use std::f64::consts::{PI, TAU};
        let days = dt / 86_400.0;
        // Mean-reverting walks: the variance stays put whatever the reading interval.
        let walk = |x: f64, tau_days: f64, sigma: f64, rng: &mut Rng| {
            let keep = (-days / tau_days).exp();
            x * keep + sigma * (1.0 - keep * keep).sqrt() * rng.normal()
        };
        self.weather = walk(self.weather, 2.0, 3.0, rng);
        self.humidity_noise = walk(self.humidity_noise, 0.5, 5.0, rng);
        self.rssi = walk(self.rssi + 72.0, 0.2, 4.0, rng) - 72.0;
        // Local solar time, so the day follows the sun wherever the sensors are.
        let hour = (ts as f64 / 3_600_000.0 + lon / 15.0).rem_euclid(24.0);
        let daily = ((hour - 9.0) / 24.0 * TAU).sin();
        let sun = if (6.0..18.0).contains(&hour) {
            ((hour - 6.0) / 12.0 * PI).sin()
        } else {
            0.0
        };
        let mean = 14.0 + self.offset;
        let temp = mean + 7.0 * daily + self.weather + 0.1 * rng.normal();
        let humidity = (65.0 - 2.5 * (temp - mean) + self.humidity_noise).clamp(10.0, 100.0);
        // Soil dries faster in the afternoon heat; the pump fills it back within hours.
        self.moisture -= 0.02 * days * (1.0 + sun);
        if self.pump_on {
            self.moisture += 0.25 * dt / 3600.0;
        }
        self.moisture = self.moisture.clamp(0.05, 0.6);
        self.pump_on = if self.pump_on {
            self.moisture < 0.35
        } else {
            self.moisture < 0.15
        };
        self.battery = (self.battery - self.drain_per_day * days).max(3.3);
        let battery = self.battery + 0.002 * rng.normal();
        let hours = ts as f64 / 3_600_000.0;
        for (i, v) in out.iter_mut().enumerate() {
            *v = match i {
                0 => round(temp, 2),
                1 => round(humidity, 1),
                2 => round(self.moisture + 0.002 * rng.normal(), 3),
                3 => round(battery, 3),
                4 => f64::from(u8::from(self.pump_on)),
                5 => round(
                    mean - 2.0 + 3.0 * ((hour - 12.0) / 24.0 * TAU).sin() + 0.5 * self.weather,
                    2,
                ),
                6 => round(1013.0 - 1.5 * self.weather + 0.2 * rng.normal(), 1),
                7 => (60_000.0 * sun * (0.6 - self.weather / 15.0).clamp(0.2, 1.0)).round(),
                8 => self.rssi.round(),
                _ => {
                    let (base, amp, period, phase) = self.aux[i - METRICS.len()];
                    round(
                        base + amp * (hours / period * TAU + phase).sin() + 0.01 * rng.normal(),
                        3,
                    )
                }
            };
        }
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

enum Model {
    Vehicle(Vehicle),
    Sensor(Sensor),
}

struct Device {
    topic: String,
    connection: usize,
    clock: Clock,
    model: Model,
}

/// When a device's documents are due and stamped, and its randomness.
struct Clock {
    interval_ms: i64,
    /// Nominal time of document 0; document k is due at `first_ms + k * interval_ms`.
    first_ms: i64,
    /// Index of the next document.
    next: u64,
    /// When the previous document was stamped.
    last_ts: i64,
    rng: Rng,
}

impl Clock {
    fn due(&self) -> i64 {
        self.first_ms + self.next as i64 * self.interval_ms
    }

    /// The next document's time: its due time plus up to a tenth of an interval of the
    /// device's own lateness, never past `end`.
    fn stamp(&mut self, end: i64) -> i64 {
        let late = self.rng.range(0.0, self.interval_ms as f64 / 10.0) as i64;
        (self.due() + late).min(end)
    }
}

/// Encodes `docs` into payloads of at most `max` bytes, halving a batch that does not fit.
fn payloads<T: Serialize>(
    docs: &[T],
    encoding: Encoding,
    max: usize,
    out: &mut Vec<(Vec<u8>, u64)>,
) -> anyhow::Result<()> {
    let bytes = encode(docs, encoding)?;
    if bytes.len() <= max {
        out.push((bytes, docs.len() as u64));
        return Ok(());
    }
    anyhow::ensure!(
        docs.len() > 1,
        "one document encodes to {} bytes, more than --max-payload {max}",
        bytes.len()
    );
    let (a, b) = docs.split_at(docs.len() / 2);
    payloads(a, encoding, max, out)?;
    payloads(b, encoding, max, out)
}

fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The whole fleet's history, batch by batch, the earliest-due device's next.
struct History {
    devices: Vec<Device>,
    /// (due time of its next document, device); ties by device index, so runs repeat exactly.
    due: BinaryHeap<Reverse<(i64, usize)>>,
    end: i64,
    batch: usize,
    metric_names: Vec<String>,
    /// Longitude for the sensors' local solar time.
    lon: f64,
    encoding: Encoding,
    max_payload: usize,
}

impl History {
    fn new(args: &Args, ids: &[String], begin: i64, end: i64, connections: usize) -> Self {
        let metrics = usize::from(args.metrics);
        let devices: Vec<Device> = ids
            .iter()
            .enumerate()
            .map(|(d, id)| {
                let mut rng = Rng::new(args.seed.wrapping_mul(1_000_003).wrapping_add(d as u64));
                let vehicle = d < args.vehicles;
                let (interval_ms, model, kind) = if vehicle {
                    let model = Model::Vehicle(Vehicle::new(args.center, &mut rng));
                    (args.fix_interval_ms, model, "location")
                } else {
                    let model = Model::Sensor(Sensor::new(metrics, &mut rng));
                    (args.reading_interval_ms, model, "telemetry")
                };
                let interval_ms = interval_ms as i64;
                // Devices start at their own phase, as real ones are not in step.
                let first_ms = begin + rng.range(0.0, interval_ms as f64) as i64;
                Device {
                    topic: format!("devices/{id}/{kind}"),
                    connection: d % connections,
                    clock: Clock {
                        interval_ms,
                        first_ms,
                        next: 0,
                        last_ts: first_ms - interval_ms,
                        rng,
                    },
                    model,
                }
            })
            .collect();
        let due = devices
            .iter()
            .enumerate()
            .filter(|(_, dev)| dev.clock.due() < end)
            .map(|(d, dev)| Reverse((dev.clock.due(), d)))
            .collect();
        Self {
            devices,
            due,
            end,
            batch: usize::from(args.batch),
            metric_names: metric_names(metrics),
            lon: args.center.1,
            encoding: args.encoding,
            max_payload: args.max_payload,
        }
    }

    /// The next batch into `out` as payloads, each with what it carries; the device and the
    /// time the batch starts at, or `None` when the history is complete.
    fn next(&mut self, out: &mut Vec<(Vec<u8>, Load)>) -> anyhow::Result<Option<(usize, i64)>> {
        let Some(Reverse((at, d))) = self.due.pop() else {
            return Ok(None);
        };
        let (end, batch) = (self.end, self.batch);
        let Device { clock, model, .. } = &mut self.devices[d];
        let mut encoded = Vec::new();
        match model {
            Model::Vehicle(vehicle) => {
                let mut fixes = Vec::with_capacity(batch);
                while fixes.len() < batch && clock.due() < end {
                    let ts = clock.stamp(end);
                    let dt = (ts - clock.last_ts) as f64 / 1000.0;
                    let mut fix = vehicle.step(dt, &mut clock.rng);
                    clock.next += 1;
                    (fix.ts, fix.seq, clock.last_ts) = (ts, clock.next, ts);
                    fixes.push(fix);
                }
                payloads(&fixes, self.encoding, self.max_payload, &mut encoded)?;
                out.extend(encoded.into_iter().map(|(payload, docs)| {
                    let load = Load {
                        fixes: docs,
                        readings: 0,
                        rows: docs,
                    };
                    (payload, load)
                }));
            }
            Model::Sensor(sensor) => {
                let names = &self.metric_names;
                let mut values = vec![0.0; names.len()];
                let mut readings = Vec::with_capacity(batch);
                while readings.len() < batch && clock.due() < end {
                    let ts = clock.stamp(end);
                    let dt = (ts - clock.last_ts) as f64 / 1000.0;
                    sensor.step(ts, dt, self.lon, &mut clock.rng, &mut values);
                    clock.next += 1;
                    clock.last_ts = ts;
                    readings.push(Reading {
                        ts,
                        seq: clock.next,
                        metrics: names
                            .iter()
                            .map(String::as_str)
                            .zip(values.iter().copied())
                            .collect::<BTreeMap<_, _>>(),
                    });
                }
                payloads(&readings, self.encoding, self.max_payload, &mut encoded)?;
                let k = names.len() as u64;
                out.extend(encoded.into_iter().map(|(payload, docs)| {
                    let load = Load {
                        fixes: 0,
                        readings: docs,
                        rows: docs * k,
                    };
                    (payload, load)
                }));
            }
        }
        if clock.due() < end {
            self.due.push(Reverse((clock.due(), d)));
        }
        Ok(Some((d, at)))
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.broker.qos == 1,
        "backfill publishes at QoS 1 only: it ends when every publish is acknowledged"
    );
    anyhow::ensure!(
        args.days.is_finite() && args.days > 0.0,
        "--days must be positive"
    );
    anyhow::ensure!(
        args.vehicles + args.sensors > 0,
        "nothing to do: --vehicles and --sensors are both 0"
    );
    let end = args.end.unwrap_or_else(now_ms);
    anyhow::ensure!(
        end <= now_ms() + 4 * 60_000,
        "--end {} is in the future: Fieldline rejects documents more than 5 minutes ahead",
        format_time(end)
    );
    let begin = end - (args.days * DAY_MS) as i64;
    let mut ids: Vec<String> = (0..args.vehicles)
        .map(|v| format!("{}-{v}", args.prefix_vehicle))
        .collect();
    ids.extend((0..args.sensors).map(|s| format!("{}-{s}", args.prefix_sensor)));
    if let Some(bad) = ids.iter().find(|id| !valid_device_id(id)) {
        anyhow::bail!("device id {bad:?} is not 1 to 64 characters of [A-Za-z0-9_.-]");
    }
    let connections = if args.broker.credentials.is_some() {
        ids.len()
    } else {
        ids.len()
            .min(usize::try_from(args.connections).unwrap_or(usize::MAX))
    };
    let mut history = History::new(&args, &ids, begin, end, connections);

    let acked = Arc::new(Acked::default());
    let failure = Arc::new(Failure::default());
    // Room for a few publishes beyond rumqttc's in-flight window, so the connection always
    // has the next one ready while the total held back stays bounded.
    let queue = 8;
    let connected = crate::load::connect_all(&args.broker, &ids[..connections], queue).await?;
    let conns: Vec<Connection> = connected
        .into_iter()
        .zip(&ids)
        .map(|((client, eventloop), id)| {
            let (acked, failure) = (acked.clone(), failure.clone());
            Connection::start(id.clone(), client, eventloop, acked, failure)
        })
        .collect();
    let http = reqwest::Client::new();
    let stored_before = if args.wait_stored {
        Some(Stored::read(&args.api, &http).await?)
    } else {
        None
    };

    eprintln!(
        "backfill {} to {}: {} vehicles every {} ms, {} sensors × {} metrics every {} ms, \
         batches of {}, {connections} connections to {}:{}",
        format_time(begin),
        format_time(end),
        args.vehicles,
        args.fix_interval_ms,
        args.sensors,
        args.metrics,
        args.reading_interval_ms,
        args.batch,
        args.broker.host,
        args.broker.port
    );
    let started = Instant::now();
    let position = Arc::new(AtomicI64::new(begin));
    let progress = tokio::spawn(report_progress(
        acked.clone(),
        position.clone(),
        (begin, end),
        Duration::from_secs(args.progress_s),
    ));
    let mut sent = Load::default();
    let mut publishes = 0;
    let mut batch = Vec::new();
    while let Some((d, at)) = history.next(&mut batch)? {
        position.store(at, Ordering::Relaxed);
        let device = &history.devices[d];
        for (payload, load) in batch.drain(..) {
            conns[device.connection]
                .send(&device.topic, payload, load, &failure)
                .await?;
            publishes += 1;
            sent.fixes += load.fixes;
            sent.readings += load.readings;
            sent.rows += load.rows;
        }
    }
    position.store(end, Ordering::Relaxed);
    let generated_s = started.elapsed().as_secs_f64();
    wait_acked(&acked, &failure, publishes).await?;
    let acked_s = started.elapsed().as_secs_f64();
    progress.abort();
    for conn in &conns {
        let _ = conn.client.disconnect().await;
    }
    for conn in conns {
        if tokio::time::timeout(Duration::from_secs(5), conn.poller)
            .await
            .is_err()
        {
            eprintln!("a connection did not close within 5 s");
        }
    }
    let stored = match stored_before {
        Some(before) => Some(wait_stored(&args.api, &http, &before, started).await?),
        None => None,
    };

    let (publishes, fixes, readings, rows) = acked.load();
    anyhow::ensure!(
        (fixes, readings) == (sent.fixes, sent.readings),
        "acknowledged {fixes} fixes and {readings} readings of {} and {} sent",
        sent.fixes,
        sent.readings
    );
    let docs = fixes + readings;
    let metrics = u64::from(args.metrics);
    let report = serde_json::json!({
        "from": format_time(begin),
        "to": format_time(end),
        "vehicles": args.vehicles,
        "sensors": args.sensors,
        "metrics": metrics,
        "encoding": format!("{:?}", args.encoding).to_lowercase(),
        "batch": args.batch,
        "connections": connections,
        "publishes": publishes,
        "fixes": fixes,
        "telemetry_documents": readings,
        "telemetry_rows": readings * metrics,
        "documents": docs,
        "rows": rows,
        "generated_s": generated_s,
        "wall_s": acked_s,
        "documents_per_s": docs as f64 / acked_s,
        "rows_per_s": rows as f64 / acked_s,
        "stored": stored,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} to {}: {fixes} fixes, {readings} telemetry documents ({} rows), {publishes} \
             publishes, all acknowledged in {acked_s:.1} s: {:.0} documents/s, {:.0} rows/s \
             (a fix is 1 row, a reading of {metrics} metrics {metrics})",
            format_time(begin),
            format_time(end),
            readings * metrics,
            docs as f64 / acked_s,
            rows as f64 / acked_s,
        );
        if let Some(s) = report["stored"].as_object() {
            println!("stored: {}", serde_json::to_string(s)?);
        }
    }
    Ok(())
}

/// Returns once `sent` publishes are acknowledged (a PUBACK is Fieldline's promise that the
/// documents are in its log); an error on a connection's failure or two minutes without one.
async fn wait_acked(acked: &Acked, failure: &Failure, sent: u64) -> anyhow::Result<()> {
    let mut last = (acked.load().0, Instant::now());
    while last.0 < sent {
        failure.check()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = acked.load().0;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "{} publishes still unacknowledged after 120 s without progress",
                sent - now
            );
        }
    }
    Ok(())
}

/// Every few seconds until aborted: how far the history has got and the acknowledged rates
/// since the last line.
async fn report_progress(
    acked: Arc<Acked>,
    position: Arc<AtomicI64>,
    (begin, end): (i64, i64),
    every: Duration,
) {
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
    loop {
        tick.tick().await;
        let (_, fixes, readings, rows) = acked.load();
        let now = Instant::now();
        let secs = (now - last.0).as_secs_f64();
        let at = position.load(Ordering::Relaxed);
        eprintln!(
            "t={:>5.0}s day {:>6.2}/{:.2} ({}) documents/s={:>8.0} rows/s={:>9.0} acked: {fixes} fixes, {readings} readings",
            started.elapsed().as_secs_f64(),
            (at - begin) as f64 / DAY_MS,
            (end - begin) as f64 / DAY_MS,
            format_time(at),
            (fixes + readings - last.1) as f64 / secs,
            (rows - last.2) as f64 / secs,
        );
        last = (now, fixes + readings, rows);
    }
}

/// What Fieldline's `/metrics` says about storage.
#[derive(Debug)]
struct Stored {
    unstored_bytes: f64,
    positions: f64,
    telemetry: f64,
    rejected: f64,
}

impl Stored {
    async fn read(api: &ApiArgs, http: &reqwest::Client) -> anyhow::Result<Stored> {
        let response = api
            .request(http, reqwest::Method::GET, "/metrics")
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "GET /metrics: {status} {text}");
        let unstored_bytes = sample(&text, "fieldline_wal_unstored_bytes", None)
            .ok_or_else(|| anyhow::anyhow!("/metrics has no fieldline_wal_unstored_bytes"))?;
        let rows = |table| sample(&text, "fieldline_storage_rows_written_total", Some(table));
        Ok(Stored {
            unstored_bytes,
            positions: rows("positions").unwrap_or(0.0),
            telemetry: rows("telemetry").unwrap_or(0.0),
            rejected: sample(&text, "fieldline_rejected_messages_total", None).unwrap_or(0.0),
        })
    }
}

/// The sum of a metric's samples in Prometheus text, only those with `table="…"` when given.
fn sample(text: &str, name: &str, table: Option<&str>) -> Option<f64> {
    let label = table.map(|t| format!("table=\"{t}\""));
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if label.as_ref().is_some_and(|l| !rest.contains(l.as_str())) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Waits until the log holds nothing unstored (giving up after two minutes without progress);
/// what storage wrote meanwhile.
async fn wait_stored(
    api: &ApiArgs,
    http: &reqwest::Client,
    before: &Stored,
    started: Instant,
) -> anyhow::Result<serde_json::Value> {
    let mut last = (f64::INFINITY, Instant::now());
    let now = loop {
        let now = Stored::read(api, http).await?;
        if now.unstored_bytes <= 0.0 {
            break now;
        }
        if now.unstored_bytes < last.0 {
            last = (now.unstored_bytes, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "Fieldline still has {} unstored log bytes after 120 s without progress",
                now.unstored_bytes
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let rows = (now.positions - before.positions) + (now.telemetry - before.telemetry);
    let rejected = now.rejected - before.rejected;
    if rejected > 0.0 {
        eprintln!("Fieldline rejected {rejected} messages meanwhile: see GET /api/rejected");
    }
    Ok(serde_json::json!({
        "stored_s": secs,
        "position_rows": now.positions - before.positions,
        "telemetry_rows": now.telemetry - before.telemetry,
        "rows_per_s": rows / secs,
        "rejected": rejected,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicles_make_trips_and_stops_within_their_area() {
        let mut rng = Rng::new(7);
        let home = (52.52, 13.405);
        let mut v = Vehicle::new(home, &mut rng);
        let (mut moving, mut still, mut max_speed, mut max_home_m) = (0, 0, 0.0f64, 0.0f64);
        let mut trips = 0;
        let mut was_moving = false;
        for _ in 0..(3 * 86_400) {
            let fix = v.step(1.0, &mut rng);
            assert!((0.0..360.0).contains(&fix.heading), "{}", fix.heading);
            assert!(fix.accuracy.is_some_and(|a| (3.0..=8.0).contains(&a)));
            max_speed = max_speed.max(fix.speed);
            max_home_m = max_home_m.max(v.toward_home().1);
            if fix.speed > 0.0 {
                moving += 1;
                trips += usize::from(!was_moving);
            } else {
                still += 1;
            }
            was_moving = fix.speed > 0.0;
        }
        assert!(max_speed <= 25.0);
        assert!(moving > 86_400 && still > 30_000, "{moving} {still}");
        // Trips of 15–45 min and stops of 5–60 min: about 50 of each in three days.
        assert!((30..90).contains(&trips), "{trips}");
        assert!(max_home_m < 40_000.0, "{max_home_m}");
    }

    #[test]
    fn sensor_values_stay_plausible() {
        let mut rng = Rng::new(3);
        let mut s = Sensor::new(12, &mut rng);
        let mut values = vec![0.0; 12];
        let start_battery = s.battery;
        for k in 0..(30 * 1440) {
            s.step(k * 60_000, 60.0, 13.4, &mut rng, &mut values);
            assert!((-30.0..50.0).contains(&values[0]), "temp {}", values[0]);
            assert!((10.0..=100.0).contains(&values[1]));
            assert!((0.0..0.7).contains(&values[2]));
            assert!(values.iter().all(|v| v.is_finite()));
        }
        assert!(s.battery < start_battery - 0.1);
        assert_eq!(metric_names(11)[10], "aux_10");
    }

    #[test]
    fn big_batches_are_split_to_fit() -> anyhow::Result<()> {
        let docs: Vec<u64> = (0..1000).collect();
        let mut out = Vec::new();
        payloads(&docs, Encoding::Json, 1000, &mut out)?;
        assert!(out.len() > 1 && out.iter().all(|(p, _)| p.len() <= 1000));
        assert_eq!(out.iter().map(|(_, n)| n).sum::<u64>(), 1000);
        Ok(())
    }

    #[test]
    fn prometheus_samples() {
        let text =
            "# TYPE x counter\nfieldline_storage_rows_written_total{table=\"positions\"} 12\n\
                    fieldline_storage_rows_written_total{table=\"telemetry\"} 30\n\
                    fieldline_wal_unstored_bytes 0\nfieldline_wal_unstored_bytes_other 5\n";
        assert_eq!(
            sample(
                text,
                "fieldline_storage_rows_written_total",
                Some("telemetry")
            ),
            Some(30.0)
        );
        assert_eq!(
            sample(text, "fieldline_wal_unstored_bytes", None),
            Some(0.0)
        );
        assert_eq!(
            sample(text, "fieldline_rejected_messages_total", None),
            None
        );
    }
}
