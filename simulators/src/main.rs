//! `fieldline-sim`: devices that publish to Fieldline (or any MQTT broker), for demos, manual
//! testing and every performance figure in BENCHMARKS.md.

mod connection;
mod fleet;
mod geofences;
mod latency;
mod load;
mod payload;
mod random;
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
        }
    })
}
