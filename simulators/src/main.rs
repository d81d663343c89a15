//! `fieldline-sim`: devices that publish to Fieldline (or any MQTT broker), for demos, manual
//! testing and every performance figure in BENCHMARKS.md.

mod backfill;
mod command_bench;
mod commands;
mod connection;
mod fleet;
mod geofences;
mod idle;
mod latency;
mod load;
mod payload;
mod random;
mod replay_watch;
mod sensors;
mod watch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Device simulators and load client for Fieldline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Vehicles moving along plausible routes, publishing GPS fixes.
    Fleet(fleet::Args),
    /// Soil and weather sensors publishing readings.
    Sensors(sensors::Args),
    /// N devices at a total rate; waits for every PUBACK and reports the acknowledged rate.
    Load(load::Args),
    /// Loads fences (one polygon around each load device's start) and rules over the API.
    GeofenceSetup(geofences::SetupArgs),
    /// Devices parked on a fence boundary with GPS noise and others driving through fences,
    /// with the geofence events read back live (count and latency).
    Geofences(geofences::ScenarioArgs),
    /// Days of past history (vehicle trips and stops, sensor readings) over MQTT as fast as
    /// the broker acknowledges it, to build benchmark datasets.
    ///
    /// Example: `fieldline-sim backfill --days 30 --vehicles 10 --sensors 100 --end
    /// 2026-01-01T00:00:00Z --port 1883`. Time walks from `end - days` to `end` for all
    /// devices together (the pending batch that starts earliest goes next), so storage gets
    /// the history in time order to within one batch's span. Every document has `ts` and a
    /// per-device `seq` (its index in the range: a rerun with the same `--end` and `--seed` is
    /// stored once). Publishes are QoS 1 with at most `--inflight` unacknowledged per
    /// connection; the run ends when every one is acknowledged, and fails with the reason if
    /// the broker disconnects. Progress goes to stderr, the summary (fixes, telemetry
    /// documents and rows, seconds, documents/s and rows/s, where a reading of k metrics is k
    /// rows and a fix 1) to stdout. `--wait-stored` also waits until Fieldline has moved
    /// everything from its log into storage (from its `/metrics` at `--http`). History older
    /// than the server's `--retention-days` is deleted by it.
    Backfill(backfill::Args),
    /// Reads one replay stream (`GET /api/replay`) to its end and reports its pacing.
    ///
    /// Example: `fieldline-sim replay-watch --device-prefix bf-vehicle --device-count 1
    /// --from 2026-01-01T00:00:00Z --to 2026-01-01T01:00:00Z --speed 60 --pid $(pidof
    /// fieldline)`. With t0 the arrival of the `replay` event, each event is due at t0 + (its
    /// ts - from) / speed; the report (JSON on stdout) has the signed error (arrival - due,
    /// positive = late) at p50 and p99 and its magnitude at p50, p99 and max, events by kind,
    /// events/s, wall seconds, the first and last ts and how often ts went backwards,
    /// whether `end` arrived, and with `--pid` the server's VmRSS at the start and its peak.
    /// Exits non-zero on an HTTP error (with its status and body) or a stream that ends
    /// without `end`.
    ReplayWatch(replay_watch::Args),
    /// Idle connections: a connect storm, then every connection held open, for the memory a
    /// connection costs the broker and how fast it accepts them.
    ///
    /// Example: `fieldline-sim idle --connections 18000 --hold-seconds 15 --port 1883`. Each
    /// connection is raw TCP with a hand-encoded CONNECT (MQTT 3.1.1, or 5 with `--protocol
    /// 5`; clean session, client id `PREFIX-i`, no username), at most `--concurrency`
    /// handshakes in flight, its source address one of 127.0.0.2 … 127.0.0.(1+K) on
    /// loopback. When every CONNECT is answered, one JSON line goes to stdout: connected,
    /// failed by reason, seconds from the first connect to the last CONNACK, connects/s and
    /// the handshake latency (p50, p99, max); then `ready` on stderr, and the connections
    /// are held (a PINGREQ every half keep-alive) for `--hold-seconds`, or with 0 until stdin
    /// closes or Ctrl-C. Exits non-zero when no connection was accepted.
    Idle(idle::Args),
    /// A backlog of queued commands drained to reconnecting devices.
    ///
    /// Example: `fieldline-sim commands-drain --devices 1000 --commands 10000 --port 1883
    /// --api http://127.0.0.1:8080`. Each device publishes one fix (so Fieldline knows it) and
    /// leaves; the commands are queued over the API (`--concurrency` calls at a time); then
    /// every device connects and subscribes to its commands. One JSON line: the time to queue
    /// (and API commands/s), to connect, to drain (first connect to the last command
    /// received, and commands/s), and until the ledger shows every command delivered.
    CommandsDrain(command_bench::DrainArgs),
    /// API-to-device latency of commands at a steady rate to connected devices.
    ///
    /// Example: `fieldline-sim commands-latency --devices 100 --rate 100 --seconds 30`. Each
    /// command's time from the start of its `POST` to its arrival at the device: p50, p99 and
    /// max as one JSON line. Run a `fleet --no-commands` beside it for load.
    CommandsLatency(command_bench::LatencyArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Fleet(args) => fleet::run(args).await,
            Command::Sensors(args) => sensors::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::GeofenceSetup(args) => geofences::setup(args).await,
            Command::Geofences(args) => geofences::scenario(args).await,
            Command::Backfill(args) => backfill::run(args).await,
            Command::ReplayWatch(args) => replay_watch::run(args).await,
            Command::Idle(args) => idle::run(args).await,
            Command::CommandsDrain(args) => command_bench::drain(args).await,
            Command::CommandsLatency(args) => command_bench::latency(args).await,
        }
    })
}
