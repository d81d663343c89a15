//! The load client: N devices publishing location fixes at a total rate for a duration, each
//! counting its PUBACKs and timing each (publish written to PUBACK read), then a report of
//! what was sent and acknowledged. With `--subscribe`
//! it also counts what one subscriber receives (to measure a plain broker such as Mosquitto).
//! With `--watch sse|ws` it reads the fixes back through Fieldline's live streams with
//! `--watchers` clients, reporting publish-to-receive latency and anything missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Event, Outgoing, Packet, QoS};

use crate::connection::Broker;
use crate::latency::Histogram;
use crate::payload::{now_ms, publish, Encoding, Fix};
use crate::watch::{sample_peak_rss, SentTimes, WatchArgs, Watchers};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    broker: Broker,
    /// Devices, one MQTT connection each.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Total publishes per second across all devices.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Documents per publish (1 = single documents, more = JSON/MessagePack arrays).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    encoding: Encoding,
    /// Device ids are PREFIX-0 … PREFIX-(N-1).
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Also subscribe one client to this filter (QoS 1) and count what it receives.
    #[arg(long)]
    subscribe: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    watch: WatchArgs,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    disconnects: AtomicU64,
}

/// Connects one client per id (each with a request queue of `queue` publishes), a few
/// hundred at a time, each retried until its CONNACK (for at most two minutes in all).
pub(crate) async fn connect_all(
    broker: &Broker,
    client_ids: &[String],
    queue: usize,
) -> anyhow::Result<Vec<(rumqttc::AsyncClient, rumqttc::EventLoop)>> {
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut connected = Vec::with_capacity(client_ids.len());
    for chunk in client_ids.chunks(500) {
        let pending: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (client, mut eventloop) = broker.connect(id, queue);
                tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                return Some((client, eventloop))
                            }
                            Ok(_) => {}
                            Err(_) if Instant::now() < give_up => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(_) => return None,
                        }
                    }
                })
            })
            .collect();
        for p in pending {
            match p.await? {
                Some(c) => connected.push(c),
                None => anyhow::bail!("a device could not connect within 120 s"),
            }
        }
    }
    Ok(connected)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.devices > 0 && args.rate > 0,
        "devices and rate must be positive"
    );
    let counters = Arc::new(Counters::default());
    let qos = args.broker.qos();

    let subscriber = match &args.subscribe {
        Some(filter) => Some(subscribe(&args.broker, filter, counters.clone()).await?),
        None => None,
    };

    let per_device = args.rate as f64 / args.devices as f64;
    let docs_per_device =
        (per_device * args.duration as f64 * f64::from(args.batch) * 1.2) as usize + 1000;
    let sent_times = Arc::new(SentTimes::new(
        Instant::now(),
        args.devices,
        docs_per_device,
    ));
    let watchers = match args.watch.watch {
        Some(transport) => Some(
            Watchers::connect(
                &args.watch,
                transport,
                args.devices,
                &args.prefix,
                sent_times.clone(),
            )
            .await?,
        ),
        None => None,
    };
    // Every device is connected before the clock starts: the figures are of sustained load,
    // not of a connection storm (thousands of CONNECTs at once take the broker seconds).
    let ids: Vec<String> = (0..args.devices)
        .map(|d| format!("{}-{d}", args.prefix))
        .collect();
    let connections = connect_all(&args.broker, &ids, 1000).await?;
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak_rss = sample_peak_rss(args.watch.server_pid, stop_sampling.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut tasks = Vec::with_capacity(args.devices);
    let mut ack_latencies = Vec::with_capacity(args.devices);
    for (d, (client, mut eventloop)) in connections.into_iter().enumerate() {
        let c = counters.clone();
        // PUBACK latency: from the moment rumqttc writes a publish to its PUBACK, per
        // connection (packet ids are per connection).
        let latency = Arc::new(std::sync::Mutex::new(Histogram::default()));
        ack_latencies.push(latency.clone());
        let poller = tokio::spawn(async move {
            let mut written: HashMap<u16, Instant> = HashMap::new();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                        written.insert(pkid, Instant::now());
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        c.acked.fetch_add(1, Ordering::Relaxed);
                        if let Some(at) = written.remove(&ack.pkid) {
                            if let Ok(mut h) = latency.lock() {
                                h.record(at.elapsed().as_micros() as u64);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        c.disconnects.fetch_add(1, Ordering::Relaxed);
                        eprintln!("connection lost: {e}");
                        return;
                    }
                }
            }
        });
        let c = counters.clone();
        let topic = format!("devices/{}-{d}/location", args.prefix);
        let (batch, encoding) = (usize::from(args.batch), args.encoding);
        let sent_times = sent_times.clone();
        let devices = args.devices;
        let publisher = tokio::spawn(async move {
            // Spread devices around the world so fixes differ; each moves a little per fix.
            let mut fix = Fix {
                ts: 0,
                seq: 0,
                lat: -60.0 + (d % 120) as f64,
                lon: -170.0 + (d % 340) as f64,
                speed: 10.0,
                heading: 90.0,
                accuracy: None,
            };
            let mut published = 0u64;
            // One tick per publish (1 to 10 ms apart), each device at its own phase, so the
            // fleet's publishes are spread out as real devices' are, not sent in bursts.
            let period = Duration::from_secs_f64(1.0 / per_device)
                .clamp(Duration::from_millis(1), Duration::from_millis(10));
            let phase = period.mul_f64(d as f64 / devices as f64);
            let mut tick = tokio::time::interval_at((started + phase).into(), period);
            while Instant::now() < deadline {
                tick.tick().await;
                // Catch up to where this device should be, so pacing does not drift.
                let due = (started.elapsed().as_secs_f64() * per_device) as u64;
                while published < due && Instant::now() < deadline {
                    let mut docs = Vec::with_capacity(batch);
                    for _ in 0..batch {
                        fix.seq += 1;
                        fix.ts = now_ms();
                        fix.lon = (fix.lon + 0.0001).min(179.0);
                        sent_times.record(d, fix.seq);
                        docs.push(fix.clone());
                    }
                    if !publish(&client, &topic, qos, &docs, encoding).await {
                        return;
                    }
                    published += 1;
                    c.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Keep the client (and so the connection) until every ack is in.
            let _ = client;
        });
        tasks.push((publisher, poller));
    }

    let mut last = (Instant::now(), 0u64);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = counters.acked.load(Ordering::Relaxed);
        let now = Instant::now();
        eprintln!(
            "t={:>3}s acked/s={:>8.0} sent={} acked={} received={}",
            started.elapsed().as_secs(),
            (acked - last.1) as f64 / (now - last.0).as_secs_f64(),
            counters.sent.load(Ordering::Relaxed),
            acked,
            counters.received.load(Ordering::Relaxed),
        );
        last = (now, acked);
    }
    for (publisher, _) in &mut tasks {
        let _ = publisher.await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let sent = counters.sent.load(Ordering::Relaxed);
    // Wait for every acknowledgement (QoS 1) and, when subscribed, every forwarded message.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < drain_deadline {
        let acked_all = qos == QoS::AtMostOnce || counters.acked.load(Ordering::Relaxed) >= sent;
        let received_all =
            subscriber.is_none() || counters.received.load(Ordering::Relaxed) >= sent;
        if acked_all && received_all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    let acked = counters.acked.load(Ordering::Relaxed);
    let received = counters.received.load(Ordering::Relaxed);
    let docs = acked * u64::from(args.batch);
    for (_, poller) in &tasks {
        poller.abort();
    }
    let mut puback = Histogram::default();
    for latency in &ack_latencies {
        if let Ok(h) = latency.lock() {
            puback.merge(&h);
        }
    }
    let per_client_kb = watchers.as_ref().and_then(Watchers::per_client_kb);
    let watched = match watchers {
        Some(w) => Some(w.finish(Duration::from_secs(30)).await),
        None => None,
    };
    stop_sampling.store(true, Ordering::Relaxed);
    let peak_rss_kb = peak_rss.await.ok().filter(|&kb| kb > 0);
    let report = serde_json::json!({
        "watch": watched,
        "server_rss_kb_per_idle_client": per_client_kb,
        "server_rss_kb_peak": peak_rss_kb,
        "devices": args.devices,
        "target_rate": args.rate,
        "duration_s": args.duration,
        "qos": args.broker.qos,
        "encoding": format!("{:?}", args.encoding).to_lowercase(),
        "batch": args.batch,
        "sent": sent,
        "acked": acked,
        "unacked": sent.saturating_sub(acked),
        "received_by_subscriber": subscriber.as_ref().map(|_| received),
        "disconnects": counters.disconnects.load(Ordering::Relaxed),
        "acked_per_s": acked as f64 / total_secs,
        "puback_latency_us": (puback.count() > 0).then(|| serde_json::json!({
            "p50": puback.quantile(0.5),
            "p99": puback.quantile(0.99),
            "max": puback.max(),
        })),
        "sent_per_s": sent as f64 / publish_secs,
        "documents_acked": docs,
        "elapsed_s": total_secs,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "sent {sent} publishes in {publish_secs:.1} s ({:.0}/s); acked {acked} ({:.0}/s over {total_secs:.1} s incl. drain); \
             unacked {}; documents {docs}; disconnects {}{}",
            sent as f64 / publish_secs,
            acked as f64 / total_secs,
            sent.saturating_sub(acked),
            counters.disconnects.load(Ordering::Relaxed),
            subscriber.map(|_| format!("; subscriber received {received}")).unwrap_or_default(),
        );
        if let Some(w) = &report["watch"].as_object() {
            println!("live clients: {}", serde_json::to_string_pretty(w)?);
        }
    }
    anyhow::ensure!(
        qos == QoS::AtMostOnce || acked == sent,
        "{} publishes were never acknowledged",
        sent.saturating_sub(acked)
    );
    Ok(())
}

/// Connects a subscriber and returns once its SUBACK is in.
async fn subscribe(
    broker: &Broker,
    filter: &str,
    counters: Arc<Counters>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (client, mut eventloop) = broker.connect("load-subscriber", 1000);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber lost: {e}");
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx).await??;
    Ok(task)
}
