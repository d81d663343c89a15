//! A fleet of vehicles driving plausible routes: each keeps a heading, turns now and then like
//! at a junction, changes speed smoothly, and reports a GPS fix with speed and heading at a
//! set interval. Each takes commands (`set_interval`, `ping`) and replies, unless
//! `--no-commands`.

use std::time::Duration;

use crate::connection::Broker;
use crate::payload::{now_ms, publish, Encoding, Fix};
use crate::random::Rng;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    broker: Broker,
    /// Vehicles, one MQTT connection each.
    #[arg(long, default_value_t = 20)]
    vehicles: usize,
    /// Milliseconds between fixes of one vehicle.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Centre of the area the fleet drives in, "lat,lon".
    #[arg(long, default_value = "52.52,13.405", value_parser = parse_point)]
    center: (f64, f64),
    /// Seconds to run; 0 runs until interrupted.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    #[arg(long, default_value = "vehicle")]
    prefix: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Vehicles do not subscribe to their commands (a publish-only load).
    #[arg(long)]
    no_commands: bool,
    /// Every vehicle reports at the same instant of each interval, the whole fleet in one
    /// burst (the worst case for live views), instead of each at its own phase.
    #[arg(long)]
    in_step: bool,
}

/// `lat,lon` from the command line.
pub(crate) fn parse_point(s: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = s.split_once(',').ok_or("expected lat,lon")?;
    Ok((
        lat.trim().parse().map_err(|_| "bad lat")?,
        lon.trim().parse().map_err(|_| "bad lon")?,
    ))
}

pub(crate) const EARTH_RADIUS_M: f64 = 6_371_000.0;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    let started = tokio::time::Instant::now();
    for v in 0..args.vehicles {
        let device = format!("{}-{v}", args.prefix);
        let (client, mut commands) = if args.no_commands {
            (args.broker.publisher(&device), None)
        } else {
            let (client, commands) = crate::commands::commanded(&args.broker, &device);
            (client, Some(commands))
        };
        let mut rng = Rng::new(args.seed.wrapping_add(v as u64));
        let topic = format!("devices/{}-{v}/location", args.prefix);
        let qos = args.broker.qos();
        let (interval, encoding) = (
            Duration::from_millis(args.interval_ms.max(10)),
            args.encoding,
        );
        let mut fix = Fix {
            ts: 0,
            seq: 0,
            lat: args.center.0 + rng.range(-0.05, 0.05),
            lon: args.center.1 + rng.range(-0.08, 0.08),
            speed: rng.range(5.0, 15.0),
            heading: rng.range(0.0, 360.0),
            accuracy: None,
        };
        // Each vehicle at its own phase of the interval, as a real fleet is: without it every
        // vehicle's clock starts within the few ms of this loop, and the whole fleet reports
        // in one burst each interval.
        let phase = if args.in_step {
            Duration::ZERO
        } else {
            interval.mul_f64(v as f64 / args.vehicles.max(1) as f64)
        };
        tasks.push(tokio::spawn(async move {
            let mut interval = interval;
            let mut tick = tokio::time::interval_at(started + phase, interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(command) = next_command(&mut commands) => {
                        let (changed, reply) = crate::commands::answer(&command, interval);
                        if let Some(changed) = changed {
                            interval = changed;
                            tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                        }
                        crate::commands::reply(&client, &device, &command, &reply).await;
                        continue;
                    }
                }
                drive(&mut fix, &mut rng, interval.as_secs_f64());
                fix.seq += 1;
                fix.ts = now_ms();
                if !publish(&client, &topic, qos, std::slice::from_ref(&fix), encoding).await {
                    return;
                }
            }
        }));
    }
    println!(
        "{} vehicles publishing every {} ms to {}:{}",
        args.vehicles, args.interval_ms, args.broker.host, args.broker.port
    );
    wait(args.duration).await;
    Ok(())
}

/// The vehicle's next command; never, for a vehicle that takes none.
async fn next_command(
    commands: &mut Option<tokio::sync::mpsc::UnboundedReceiver<crate::commands::Received>>,
) -> Option<crate::commands::Received> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Advances a vehicle by `secs` of driving.
fn drive(fix: &mut Fix, rng: &mut Rng, secs: f64) {
    steer(fix, rng, secs);
    fix.speed = (fix.speed + rng.range(-1.0, 1.0)).clamp(0.0, 30.0);
    advance(fix, fix.speed * secs);
}

/// Changes the heading as over `secs` of road: a small wander, and now and then a junction.
pub(crate) fn steer(fix: &mut Fix, rng: &mut Rng, secs: f64) {
    if rng.unit() < 0.02 * secs {
        // A junction: turn left or right.
        fix.heading = (fix.heading + if rng.unit() < 0.5 { 90.0 } else { 270.0 }) % 360.0;
    }
    fix.heading = (fix.heading + rng.range(-3.0, 3.0) + 360.0) % 360.0;
}

/// Moves the fix `distance` metres along its heading (a local flat-earth step: fixes are
/// metres to a few hundred metres apart).
pub(crate) fn advance(fix: &mut Fix, distance: f64) {
    let heading = fix.heading.to_radians();
    fix.lat += (distance * heading.cos() / EARTH_RADIUS_M).to_degrees();
    fix.lon +=
        (distance * heading.sin() / (EARTH_RADIUS_M * fix.lat.to_radians().cos())).to_degrees();
    fix.lat = fix.lat.clamp(-89.0, 89.0);
    fix.lon = ((fix.lon + 540.0) % 360.0) - 180.0;
}

/// Runs for `duration` seconds, or until Ctrl-C when it is 0.
pub async fn wait(duration: u64) {
    if duration == 0 {
        let _ = tokio::signal::ctrl_c().await;
    } else {
        tokio::time::sleep(Duration::from_secs(duration)).await;
    }
}
