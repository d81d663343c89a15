//! Field sensors: soil moisture drying out and jumping back after irrigation, air temperature
//! following the day, a battery slowly draining, and a pump switching on when the soil is dry.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::connection::Broker;
use crate::payload::{now_ms, publish, Encoding, Reading};
use crate::random::Rng;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    broker: Broker,
    /// Sensors, one MQTT connection each.
    #[arg(long, default_value_t = 20)]
    sensors: usize,
    /// Milliseconds between readings of one sensor.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Seconds to run; 0 runs until interrupted.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    #[arg(long, default_value = "sensor")]
    prefix: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    for s in 0..args.sensors {
        let client = args.broker.publisher(&format!("{}-{s}", args.prefix));
        let mut rng = Rng::new(args.seed.wrapping_add(1000 + s as u64));
        let topic = format!("devices/{}-{s}/telemetry", args.prefix);
        let qos = args.broker.qos();
        let (interval, encoding) = (
            Duration::from_millis(args.interval_ms.max(10)),
            args.encoding,
        );
        let mut moisture = rng.range(0.2, 0.4);
        let mut battery = rng.range(3.7, 4.2);
        let mut pump_on = false;
        let offset = rng.range(-2.0, 2.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut seq = 0u64;
            loop {
                tick.tick().await;
                let ts = now_ms();
                let hour = (ts as f64 / 3_600_000.0) % 24.0;
                let temp = 15.0
                    + offset
                    + 8.0 * ((hour - 9.0) / 24.0 * std::f64::consts::TAU).sin()
                    + rng.range(-0.3, 0.3);
                moisture += if pump_on { 0.01 } else { -0.001 } + rng.range(-0.0005, 0.0005);
                moisture = moisture.clamp(0.05, 0.6);
                pump_on = if pump_on {
                    moisture < 0.35
                } else {
                    moisture < 0.15
                };
                battery = (battery - 0.00005).max(3.3);
                seq += 1;
                let reading = Reading {
                    ts,
                    seq,
                    metrics: BTreeMap::from([
                        ("temp_c", (temp * 100.0).round() / 100.0),
                        ("moisture", (moisture * 1000.0).round() / 1000.0),
                        ("battery_v", (battery * 1000.0).round() / 1000.0),
                        ("pump_on", f64::from(u8::from(pump_on))),
                    ]),
                };
                if !publish(
                    &client,
                    &topic,
                    qos,
                    std::slice::from_ref(&reading),
                    encoding,
                )
                .await
                {
                    return;
                }
            }
        });
    }
    println!(
        "{} sensors publishing every {} ms to {}:{}",
        args.sensors, args.interval_ms, args.broker.host, args.broker.port
    );
    crate::fleet::wait(args.duration).await;
    Ok(())
}
