//! Live-view clients for load runs: N SSE or WebSocket clients with a mix of filters, each
//! timing every location event from publish to receipt and checking it got every one.
//!
//! The mix, by client index i: every 50th client (i = 0, 50, …) takes the whole stream; odd
//! clients follow 3 devices; the rest watch a bounding box around 3 neighbouring devices.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::latency::Histogram;
use crate::payload::Encoding;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Transport {
    Sse,
    Ws,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Read the events back as live-view clients over this transport.
    #[arg(long, value_enum)]
    pub watch: Option<Transport>,
    /// Live-view clients.
    #[arg(long, default_value_t = 1)]
    pub watchers: usize,
    /// Fieldline's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// WebSocket frames as JSON or MessagePack.
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    pub watch_encoding: Encoding,
    /// The server's process id, to report its memory before and after the clients connect.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// When each document was published: nanoseconds since the run started, per device and seq.
pub struct SentTimes {
    start: Instant,
    per_device: Vec<Vec<AtomicU64>>,
    /// The newest seq each device has published.
    pub last_seq: Vec<AtomicU64>,
}

impl SentTimes {
    pub fn new(start: Instant, devices: usize, per_device: usize) -> Self {
        Self {
            start,
            per_device: (0..devices)
                .map(|_| (0..per_device).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            last_seq: (0..devices).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, device: usize, seq: u64) {
        let at = self.start.elapsed().as_nanos() as u64 + 1;
        if let Some(slot) = self.per_device[device].get(seq as usize) {
            slot.store(at, Ordering::Relaxed);
        }
        self.last_seq[device].store(seq, Ordering::Release);
    }

    fn latency_us(&self, device: usize, seq: u64) -> Option<u64> {
        let sent = self
            .per_device
            .get(device)?
            .get(seq as usize)?
            .load(Ordering::Relaxed);
        let now = self.start.elapsed().as_nanos() as u64 + 1;
        (sent > 0).then(|| now.saturating_sub(sent) / 1000)
    }
}

/// What one client asks for, and which devices' events that covers.
struct Plan {
    query: String,
    subscribe: serde_json::Value,
    devices: Vec<usize>,
}

/// Where the load client puts device `d` (see `load.rs`).
pub fn start_position(d: usize) -> (f64, f64) {
    (-60.0 + (d % 120) as f64, -170.0 + (d % 340) as f64)
}

fn plan(i: usize, devices: usize, prefix: &str) -> Plan {
    if i.is_multiple_of(50) {
        return Plan {
            query: String::new(),
            subscribe: serde_json::json!({"type": "subscribe"}),
            devices: (0..devices).collect(),
        };
    }
    if i % 2 == 1 {
        let mut chosen: Vec<usize> = (0..3).map(|k| (i * 7 + k * 13) % devices).collect();
        chosen.sort_unstable();
        chosen.dedup();
        let names: Vec<String> = chosen.iter().map(|d| format!("{prefix}-{d}")).collect();
        return Plan {
            query: format!("kinds=location&devices={}", names.join(",")),
            subscribe: serde_json::json!({"type": "subscribe", "kinds": ["location"], "devices": names}),
            devices: chosen,
        };
    }
    let span = devices.min(120);
    let a = (i * 11) % span.saturating_sub(2).max(1);
    let (south, west) = start_position(a);
    let bbox = [west - 0.5, south - 0.5, west + 2.5, south + 2.5];
    let inside = (0..devices)
        .filter(|&d| {
            let (lat, lon) = start_position(d);
            lat >= bbox[1] && lat <= bbox[3] && lon >= bbox[0] && lon <= bbox[2]
        })
        .collect();
    Plan {
        query: format!(
            "kinds=location&bbox={},{},{},{}",
            bbox[0], bbox[1], bbox[2], bbox[3]
        ),
        subscribe: serde_json::json!({"type": "subscribe", "kinds": ["location"], "bbox": bbox}),
        devices: inside,
    }
}

#[derive(Default)]
pub struct Stats {
    pub latency: Histogram,
    pub events: u64,
    pub gaps: u64,
    pub skipped: u64,
    pub duplicates: u64,
    pub resets: u64,
    last_seq: HashMap<usize, u64>,
    pub error: Option<String>,
}

#[derive(Deserialize)]
/// The fields the watcher needs, borrowed from the frame: parsing hundreds of thousands of
/// events a second must not allocate for each.
struct Ev<'a> {
    #[serde(rename = "type", borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    device: Option<Cow<'a, str>>,
    seq: Option<u64>,
    skipped: Option<u64>,
}

struct Watcher {
    prefix: String,
    sent: Arc<SentTimes>,
    stats: Arc<Mutex<Stats>>,
    devices: HashSet<usize>,
}

impl Watcher {
    fn event(&self, stats: &mut Stats, ev: Ev<'_>) {
        if ev.message.as_deref() == Some("reset") {
            stats.resets += 1;
            return;
        }
        if ev.kind.as_deref() != Some("location") {
            return;
        }
        let (Some(device), Some(seq)) = (ev.device, ev.seq) else {
            return;
        };
        let Some(d) = device
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return;
        };
        stats.events += 1;
        if let Some(us) = self.sent.latency_us(d, seq) {
            stats.latency.record(us);
        }
        let skipped = ev.skipped.unwrap_or(0);
        stats.skipped += skipped;
        let last = stats.last_seq.entry(d).or_insert(0);
        if seq <= *last {
            stats.duplicates += 1;
        } else {
            stats.gaps += (seq - *last - 1).saturating_sub(skipped);
            *last = seq;
        }
    }

    /// Whether this client has seen every device it follows up to its newest seq.
    fn caught_up(&self, stats: &Stats) -> bool {
        self.devices.iter().all(|d| {
            stats.last_seq.get(d).copied().unwrap_or(0)
                >= self.sent.last_seq[*d].load(Ordering::Acquire)
        })
    }

    fn missing(&self, stats: &Stats) -> u64 {
        self.devices
            .iter()
            .map(|d| {
                self.sent.last_seq[*d]
                    .load(Ordering::Acquire)
                    .saturating_sub(stats.last_seq.get(d).copied().unwrap_or(0))
            })
            .sum()
    }
}

pub struct Watchers {
    watchers: Vec<Arc<Watcher>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub transport: Transport,
    pub rss_before_kb: Option<u64>,
    pub rss_idle_kb: Option<u64>,
}

pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Watchers {
    /// Connects every client and returns once all are subscribed.
    pub async fn connect(
        args: &WatchArgs,
        transport: Transport,
        devices: usize,
        prefix: &str,
        sent: Arc<SentTimes>,
    ) -> anyhow::Result<Watchers> {
        let rss_before_kb = args.server_pid.and_then(rss_kb);
        let mut watchers = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..args.watchers {
            let plan = plan(i, devices, prefix);
            let watcher = Arc::new(Watcher {
                prefix: prefix.to_string(),
                sent: sent.clone(),
                stats: Arc::new(Mutex::new(Stats::default())),
                devices: plan.devices.iter().copied().collect(),
            });
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let w = watcher.clone();
            let http = args.http.clone();
            let msgpack = args.watch_encoding == Encoding::Msgpack;
            tasks.push(tokio::spawn(async move {
                let result = match transport {
                    Transport::Sse => read_sse(&w, &http, &plan.query, ready_tx).await,
                    Transport::Ws => read_ws(&w, &http, &plan.subscribe, msgpack, ready_tx).await,
                };
                if let Err(e) = result {
                    w.stats
                        .lock()
                        .map(|mut s| s.error = Some(e.to_string()))
                        .ok();
                }
            }));
            tokio::time::timeout(Duration::from_secs(30), ready_rx)
                .await
                .map_err(|_| anyhow::anyhow!("watcher {i} did not connect within 30 s"))?
                .map_err(|_| anyhow::anyhow!("watcher {i} failed to connect"))?;
            watchers.push(watcher);
        }
        // Let the server settle before measuring what the idle clients cost.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle_kb = args.server_pid.and_then(rss_kb);
        Ok(Watchers {
            watchers,
            tasks,
            transport,
            rss_before_kb,
            rss_idle_kb,
        })
    }

    /// Waits (up to `limit`) until every client has every event it follows, then reports.
    pub async fn finish(self, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let done = self.watchers.iter().all(|w| {
                w.stats
                    .lock()
                    .map(|s| w.caught_up(&s) || s.error.is_some())
                    .unwrap_or(true)
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        let mut latency = Histogram::default();
        let (mut events, mut gaps, mut skipped, mut duplicates, mut resets, mut missing) =
            (0, 0, 0, 0, 0, 0);
        let mut errors = Vec::new();
        let mut complete = 0;
        for w in &self.watchers {
            let Ok(s) = w.stats.lock() else { continue };
            latency.merge(&s.latency);
            events += s.events;
            gaps += s.gaps;
            skipped += s.skipped;
            duplicates += s.duplicates;
            resets += s.resets;
            let m = w.missing(&s);
            missing += m;
            if m == 0 && s.gaps == 0 && s.skipped == 0 && s.error.is_none() {
                complete += 1;
            }
            if let Some(e) = &s.error {
                errors.push(e.clone());
            }
        }
        errors.truncate(5);
        serde_json::json!({
            "transport": format!("{:?}", self.transport).to_lowercase(),
            "clients": self.watchers.len(),
            "clients_with_every_event": complete,
            "events": events,
            "latency_us": {
                "p50": latency.quantile(0.5),
                "p99": latency.quantile(0.99),
                "p99_9": latency.quantile(0.999),
                "max": latency.max(),
                "samples": latency.count(),
            },
            "gaps": gaps,
            "skipped": skipped,
            "duplicates": duplicates,
            "resets": resets,
            "missing_at_end": missing,
            "errors": errors,
            "server_rss_kb_before_clients": self.rss_before_kb,
            "server_rss_kb_clients_idle": self.rss_idle_kb,
        })
    }

    pub fn per_client_kb(&self) -> Option<f64> {
        let (before, idle) = (self.rss_before_kb?, self.rss_idle_kb?);
        Some(idle.saturating_sub(before) as f64 / self.watchers.len().max(1) as f64)
    }
}

async fn read_sse(
    w: &Watcher,
    http: &str,
    query: &str,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut response = reqwest::Client::new()
        .get(format!("http://{http}/api/stream?{query}"))
        .send()
        .await?
        .error_for_status()?;
    let mut ready = Some(ready);
    let mut reader = SseReader::default();
    while let Some(chunk) = response.chunk().await? {
        let Ok(mut stats) = w.stats.lock() else {
            anyhow::bail!("stats lock poisoned");
        };
        reader.feed(&chunk, |event| {
            if event.comment.is_some_and(|c| c.trim_ascii() == b"ready") {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            match event.event {
                Some(b"reset") => stats.resets += 1,
                Some(_) => {
                    if let Ok(ev) = serde_json::from_slice::<Ev>(&event.data) {
                        w.event(&mut stats, ev);
                    }
                }
                None => {}
            }
        });
    }
    anyhow::bail!("the server ended the stream")
}

/// One Server-Sent Event, its fields borrowed from the stream.
pub struct SseEvent<'a> {
    pub id: Option<&'a [u8]>,
    /// The `event:` field; `None` for a frame that has none (a comment, or a plain message).
    pub event: Option<&'a [u8]>,
    /// The `data:` lines joined by newlines (copied only when there are several).
    pub data: Cow<'a, [u8]>,
    /// The first comment line, without its `:`.
    pub comment: Option<&'a [u8]>,
}

/// Splits a Server-Sent Events byte stream into events, whatever the chunking: feed it each
/// chunk as it arrives. Lines end in LF or CRLF; a blank line ends an event.
#[derive(Default)]
pub struct SseReader {
    buffer: Vec<u8>,
    /// Where the first line not yet looked at starts, so a long event is not rescanned.
    scanned: usize,
}

impl SseReader {
    /// Appends `chunk` and calls `each` for every event it completes, in order.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(SseEvent<'_>)) {
        self.buffer.extend_from_slice(chunk);
        let mut frame_start = 0;
        let mut line_start = self.scanned;
        while let Some(len) = self.buffer[line_start..].iter().position(|&b| b == b'\n') {
            let line = &self.buffer[line_start..line_start + len];
            let next = line_start + len + 1;
            if line.is_empty() || line == b"\r" {
                let frame = &self.buffer[frame_start..line_start];
                if !frame.is_empty() {
                    each(parse_sse_frame(frame));
                }
                frame_start = next;
            }
            line_start = next;
        }
        self.buffer.drain(..frame_start);
        self.scanned = line_start - frame_start;
    }
}

fn parse_sse_frame(frame: &[u8]) -> SseEvent<'_> {
    let mut event = SseEvent {
        id: None,
        event: None,
        data: Cow::Borrowed(&[]),
        comment: None,
    };
    let mut data_lines = 0;
    for line in frame.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(comment) = line.strip_prefix(b":") {
            event.comment = event.comment.or(Some(comment));
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        match field {
            b"id" => event.id = Some(value),
            b"event" => event.event = Some(value),
            b"data" => {
                data_lines += 1;
                if data_lines == 1 {
                    event.data = Cow::Borrowed(value);
                } else {
                    let data = event.data.to_mut();
                    data.push(b'\n');
                    data.extend_from_slice(value);
                }
            }
            _ => {}
        }
    }
    event
}

async fn read_ws(
    w: &Watcher,
    http: &str,
    subscribe: &serde_json::Value,
    msgpack: bool,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let protocol = if msgpack {
        "fieldline.msgpack"
    } else {
        "fieldline.json"
    };
    let mut request = format!("ws://{http}/api/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let message = if msgpack {
        Message::Binary(rmp_serde::to_vec_named(subscribe)?.into())
    } else {
        Message::Text(subscribe.to_string().into())
    };
    socket.send(message).await?;
    let mut ready = Some(ready);
    while let Some(message) = socket.next().await {
        let message = message?;
        let evs: Vec<Ev> = match &message {
            Message::Text(t) if t.starts_with('[') => serde_json::from_str(t)?,
            Message::Text(t) => vec![serde_json::from_str(t)?],
            Message::Binary(b) if matches!(b.first(), Some(0x90..=0x9f | 0xdc | 0xdd)) => {
                rmp_serde::from_slice(b)?
            }
            Message::Binary(b) => vec![rmp_serde::from_slice(b)?],
            Message::Close(frame) => anyhow::bail!("closed by the server: {frame:?}"),
            _ => continue,
        };
        let Ok(mut stats) = w.stats.lock() else {
            anyhow::bail!("stats lock poisoned");
        };
        for ev in evs {
            if ev.message.as_deref() == Some("subscribed") {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                continue;
            }
            w.event(&mut stats, ev);
        }
    }
    anyhow::bail!("the server closed the socket")
}

/// Samples the server's memory once a second; the peak when stopped.
pub fn sample_peak_rss(pid: Option<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(kb) = pid.and_then(rss_kb) {
                peak = peak.max(kb);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        peak
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in chunks of `size` bytes; (event, id, data) of each event.
    fn events(stream: &[u8], size: usize) -> Vec<(String, String, String)> {
        let mut reader = SseReader::default();
        let mut out = Vec::new();
        for chunk in stream.chunks(size) {
            reader.feed(chunk, |e| {
                let text =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or(b"-")).into_owned();
                out.push((text(e.event), text(e.id), text(Some(&e.data))));
            });
        }
        out
    }

    #[test]
    fn sse_events_whatever_the_chunking() {
        let stream = b": ready\n\nevent: replay\ndata: {\"a\":1}\n\n:keep-alive\n\n\
            id: 7\r\nevent: location\r\ndata: x\r\ndata: y\r\n\r\nevent: end\ndata:\n\n";
        let expected = vec![
            ("-".to_string(), "-".to_string(), String::new()),
            ("replay".into(), "-".into(), "{\"a\":1}".into()),
            ("-".into(), "-".into(), String::new()),
            ("location".into(), "7".into(), "x\ny".into()),
            ("end".into(), "-".into(), String::new()),
        ];
        for size in [1, 2, 3, 7, stream.len()] {
            assert_eq!(events(stream, size), expected, "chunks of {size}");
        }
    }

    #[test]
    fn an_unfinished_event_waits_for_its_blank_line() {
        assert!(events(b"event: end\ndata: {}\n", 4).is_empty());
    }
}
