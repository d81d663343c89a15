//! Measuring commands: how fast a backlog of queued commands drains to reconnecting devices,
//! and how long a command takes from the API call to the device while others load the broker.
//!
//! Both talk to Fieldline as its users do: commands go in through `POST
//! /api/devices/{id}/commands`, devices are real MQTT clients that subscribe to their
//! commands and acknowledge them (QoS 1), and the ledger is read back over the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{Event, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::connection::Broker;
use crate::latency::Histogram;

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    broker: Broker,
    /// The HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    #[arg(long, default_value_t = 1_000)]
    devices: usize,
    /// Commands queued in all, spread evenly over the devices.
    #[arg(long, default_value_t = 10_000)]
    commands: usize,
    /// Concurrent API calls while queueing.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value = "drain")]
    prefix: String,
}

#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    broker: Broker,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Devices that take the commands (each subscribed, connected throughout).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Commands per second, round robin over the devices.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    #[arg(long, default_value = "latency")]
    prefix: String,
}

/// Command ids each device received, with when.
type Arrivals = mpsc::UnboundedSender<(String, Instant)>;

/// Connects `device` subscribed to its commands; every command's id goes to `arrivals`.
/// Resolves once the SUBACK is in.
async fn take_commands(broker: &Broker, device: &str, arrivals: Arrivals) -> anyhow::Result<()> {
    let (client, mut eventloop) = broker.connect(device, 1000);
    client
        .subscribe(format!("devices/{device}/commands/#"), QoS::AtLeastOnce)
        .await?;
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let _keep = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    let id = serde_json::from_slice::<Value>(&p.payload)
                        .ok()
                        .and_then(|b| b["id"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    if arrivals.send((id, at)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
    subscribed
        .await
        .with_context(|| format!("{device}: no SUBACK"))
}

/// Connects every device to take commands, 100 at a time.
async fn connect_all(
    broker: &Broker,
    devices: &[String],
    arrivals: &Arrivals,
) -> anyhow::Result<()> {
    for chunk in devices.chunks(100) {
        let connecting: Vec<_> = chunk
            .iter()
            .map(|d| take_commands(broker, d, arrivals.clone()))
            .collect();
        for result in futures_util::future::join_all(connecting).await {
            result?;
        }
    }
    Ok(())
}

/// Makes `device` known to Fieldline: one fix, acknowledged.
async fn announce(broker: &Broker, device: &str) -> anyhow::Result<()> {
    let (client, mut eventloop) = broker.connect(device, 10);
    client
        .publish(
            format!("devices/{device}/location"),
            QoS::AtLeastOnce,
            false,
            json!({"lat": 52.5, "lon": 13.4}).to_string(),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline.into(), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("{device}: {e}"),
            Err(_) => bail!("{device}: no PUBACK within 30 s"),
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}

async fn post(
    http: &reqwest::Client,
    api: &str,
    device: &str,
    body: &Value,
) -> anyhow::Result<String> {
    let response = http
        .post(format!("{api}/api/devices/{device}/commands"))
        .json(body)
        .send()
        .await?;
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST for {device}: {status} {value}");
    }
    Ok(value["id"].as_str().unwrap_or_default().to_string())
}

/// Sums the ledger's `delivered` commands over the devices (paging the API).
async fn delivered(
    http: &reqwest::Client,
    api: &str,
    devices: &[String],
    per: usize,
) -> anyhow::Result<usize> {
    let mut total = 0;
    for device in devices {
        let list: Value = http
            .get(format!(
                "{api}/api/devices/{device}/commands?state=delivered&limit={}",
                per.max(1)
            ))
            .send()
            .await?
            .json()
            .await?;
        total += list.as_array().map_or(0, Vec::len);
    }
    Ok(total)
}

/// `fieldline-sim commands-drain`.
pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let devices: Vec<String> = (0..args.devices)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    for chunk in devices.chunks(100) {
        let announced: Vec<_> = chunk.iter().map(|d| announce(&args.broker, d)).collect();
        for result in futures_util::future::join_all(announced).await {
            result?;
        }
    }
    let http = reqwest::Client::new();
    // Known once their fixes are stored.
    let known_by = Instant::now() + Duration::from_secs(60);
    for device in &devices {
        loop {
            let response = http
                .get(format!("{}/api/devices/{device}", args.api))
                .send()
                .await?;
            if response.status().is_success() {
                break;
            }
            if Instant::now() > known_by {
                bail!("{device} is not stored after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "{} devices known; queueing {} commands",
        devices.len(),
        args.commands
    );
    let queue_started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut posts = Vec::with_capacity(args.commands);
    for n in 0..args.commands {
        let device = devices[n % devices.len()].clone();
        let (http, api, semaphore) = (http.clone(), args.api.clone(), semaphore.clone());
        posts.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            post(
                &http,
                &api,
                &device,
                &json!({"name": "config", "payload": {"n": n}}),
            )
            .await
        }));
    }
    for p in posts {
        p.await??;
    }
    let queue_seconds = queue_started.elapsed().as_secs_f64();
    eprintln!("queued in {queue_seconds:.1} s; devices connect now");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    connect_all(&args.broker, &devices, &tx).await?;
    let connected_seconds = started.elapsed().as_secs_f64();
    let mut received = 0usize;
    let mut last = started;
    let deadline = started + Duration::from_secs(600);
    while received < args.commands {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((_, at))) => {
                received += 1;
                last = at;
            }
            _ => bail!(
                "only {received} of {} commands arrived within 600 s",
                args.commands
            ),
        }
    }
    let drain_seconds = last.duration_since(started).as_secs_f64();
    // The ledger says so too (every PUBACK recorded).
    let per_device = args.commands.div_ceil(devices.len());
    let ledger_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = delivered(&http, &args.api, &devices, per_device).await?;
        if n >= args.commands {
            break;
        }
        if Instant::now() > ledger_deadline {
            bail!(
                "the ledger shows {n} of {} delivered after 120 s",
                args.commands
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let recorded_seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "devices": devices.len(),
            "commands": args.commands,
            "queue_seconds": round(queue_seconds),
            "api_commands_per_second": round(args.commands as f64 / queue_seconds),
            "connect_seconds": round(connected_seconds),
            "drain_seconds": round(drain_seconds),
            "drain_commands_per_second": round(args.commands as f64 / drain_seconds),
            "all_delivered_in_ledger_seconds": round(recorded_seconds),
        })
    );
    Ok(())
}

/// `fieldline-sim commands-latency`.
pub async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let devices: Vec<String> = (0..args.devices)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    connect_all(&args.broker, &devices, &tx).await?;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let collector = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some((id, at)) = rx.recv().await {
                arrivals.lock().map(|mut a| a.insert(id, at)).ok();
            }
        })
    };
    let http = reqwest::Client::new();
    let total = (args.rate * args.seconds as f64) as usize;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    let mut posts = Vec::with_capacity(total);
    for n in 0..total {
        tick.tick().await;
        let device = devices[n % devices.len()].clone();
        let (http, api, sent_at) = (http.clone(), args.api.clone(), sent_at.clone());
        posts.push(tokio::spawn(async move {
            let start = Instant::now();
            let id = post(&http, &api, &device, &json!({"name": "ping"})).await?;
            sent_at.lock().map(|mut s| s.insert(id, start)).ok();
            anyhow::Ok(())
        }));
    }
    for p in posts {
        p.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().map(|a| a.len()).unwrap_or(0) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collector.abort();
    let mut histogram = Histogram::default();
    let (sent_at, arrivals) = (
        sent_at.lock().map(|s| s.clone()).unwrap_or_default(),
        arrivals.lock().map(|a| a.clone()).unwrap_or_default(),
    );
    for (id, start) in &sent_at {
        if let Some(at) = arrivals.get(id) {
            histogram.record(at.duration_since(*start).as_micros() as u64);
        }
    }
    let ms = |q: f64| round(histogram.quantile(q) as f64 / 1000.0);
    println!(
        "{}",
        json!({
            "devices": devices.len(),
            "rate": args.rate,
            "sent": sent_at.len(),
            "arrived": histogram.count(),
            "api_to_device_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": round(histogram.max() as f64 / 1000.0)},
        })
    );
    if (histogram.count() as usize) < total {
        bail!("{} of {total} commands arrived", histogram.count());
    }
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
