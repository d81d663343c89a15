//! `replay-watch`: reads one replay stream (`GET /api/replay`) to its end and measures how the
//! server paces it: each event's arrival against when its `ts` was due at that speed, with
//! counts by kind, order of the times, and the server's memory meanwhile.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::geofences::ApiArgs;
use crate::latency::Histogram;
use crate::payload::{format_time, parse_time};
use crate::watch::{rss_kb, sample_peak_rss, SseEvent, SseReader};

// Usage is in the subcommand's help (main.rs).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    /// Devices to replay, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "device_prefix",
        conflicts_with = "device_prefix"
    )]
    devices: Vec<String>,
    /// Devices PREFIX-0 … PREFIX-(N-1), as `load` and `backfill` name them.
    #[arg(long, requires = "device_count")]
    device_prefix: Option<String>,
    /// How many devices `--device-prefix` names.
    #[arg(long, requires = "device_prefix")]
    device_count: Option<usize>,
    /// Start of the range: epoch milliseconds or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    /// End of the range: epoch milliseconds or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    to: Option<i64>,
    /// Replay speed: a factor (Fieldline takes 0.1 to 1000) or `max`.
    #[arg(long, default_value = "1", value_parser = parse_speed)]
    speed: Speed,
    /// Only these kinds, comma-separated (location, telemetry, status, geofence, alert).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Skip quiet stretches longer than this many seconds (Fieldline's `skip_gaps`).
    #[arg(long)]
    skip_gaps: Option<f64>,
    /// The server's process id: its memory (VmRSS) is sampled once a second.
    #[arg(long)]
    pid: Option<u32>,
    /// Give up when the stream is silent this long, seconds (keep-alives count).
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug)]
enum Speed {
    Max,
    Times(f64),
}

fn parse_speed(s: &str) -> Result<Speed, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Speed::Max);
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(Speed::Times(x)),
        _ => Err(format!("{s:?} is neither a positive number nor `max`")),
    }
}

impl Speed {
    fn query(self) -> String {
        match self {
            Speed::Max => "max".into(),
            Speed::Times(x) => x.to_string(),
        }
    }

    /// The speed the server announced in its `replay` event, when it said one.
    fn from_json(v: &serde_json::Value) -> Option<Speed> {
        match v {
            serde_json::Value::String(s) => parse_speed(s).ok(),
            v => v.as_f64().and_then(|x| parse_speed(&x.to_string()).ok()),
        }
    }
}

/// The fields of a data event the measurement needs, borrowed from the frame.
#[derive(Deserialize)]
struct Ev<'a> {
    #[serde(borrow)]
    ts: Option<Ts<'a>>,
    skipped: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ts<'a> {
    Ms(i64),
    Text(#[serde(borrow)] Cow<'a, str>),
}

impl Ts<'_> {
    fn ms(&self) -> Option<i64> {
        match self {
            Ts::Ms(ms) => Some(*ms),
            Ts::Text(s) => parse_time(s).ok(),
        }
    }
}

/// Signed errors in microseconds: negatives and positives kept apart, so quantiles of the
/// signed value come from two histograms of magnitudes.
#[derive(Default)]
struct Signed {
    early: Histogram,
    late: Histogram,
}

impl Signed {
    fn record(&mut self, us: i64) {
        if us < 0 {
            self.early.record(us.unsigned_abs());
        } else {
            self.late.record(us.unsigned_abs());
        }
    }

    fn count(&self) -> u64 {
        self.early.count() + self.late.count()
    }

    /// The signed value at quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let early = self.early.count();
        let us = if rank <= early {
            // The smallest signed values are the largest early ones.
            -(self.early.nth(early - rank + 1) as f64)
        } else {
            self.late.nth(rank - early) as f64
        };
        us / 1000.0
    }

    fn magnitudes(&self) -> Histogram {
        let mut all = self.early.clone();
        all.merge(&self.late);
        all
    }
}

#[derive(Default)]
struct State {
    /// When the `replay` event arrived, and what it said.
    t0: Option<Instant>,
    header: Option<serde_json::Value>,
    from_ms: Option<i64>,
    speed: Option<Speed>,
    by_kind: BTreeMap<String, u64>,
    events: u64,
    before_header: u64,
    clocks: u64,
    comments: u64,
    missing_ids: u64,
    unreadable: u64,
    skipped: u64,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    order_violations: u64,
    error: Signed,
    end: Option<(Instant, serde_json::Value)>,
}

impl State {
    fn event(&mut self, ev: SseEvent<'_>, arrival: Instant) {
        let Some(name) = ev.event else {
            self.comments += u64::from(ev.comment.is_some());
            return;
        };
        match name {
            b"replay" => {
                let header: serde_json::Value =
                    serde_json::from_slice(&ev.data).unwrap_or(serde_json::Value::Null);
                self.t0 = Some(arrival);
                self.from_ms = header["from"]
                    .as_str()
                    .and_then(|s| parse_time(s).ok())
                    .or_else(|| header["from"].as_i64())
                    .or(self.from_ms);
                self.speed = Speed::from_json(&header["speed"]).or(self.speed);
                self.header = Some(header);
            }
            b"clock" => self.clocks += 1,
            b"end" => {
                let data = serde_json::from_slice(&ev.data).unwrap_or(serde_json::Value::Null);
                self.end = Some((arrival, data));
            }
            kind => {
                self.events += 1;
                match self.by_kind.get_mut(String::from_utf8_lossy(kind).as_ref()) {
                    Some(n) => *n += 1,
                    None => {
                        self.by_kind
                            .insert(String::from_utf8_lossy(kind).into_owned(), 1);
                    }
                }
                self.missing_ids += u64::from(ev.id.is_none_or(<[u8]>::is_empty));
                let Ok(data) = serde_json::from_slice::<Ev>(&ev.data) else {
                    self.unreadable += 1;
                    return;
                };
                self.skipped += data.skipped.unwrap_or(0);
                let Some(ts) = data.ts.as_ref().and_then(Ts::ms) else {
                    self.unreadable += 1;
                    return;
                };
                self.first_ts.get_or_insert(ts);
                if self.last_ts.is_some_and(|last| ts < last) {
                    self.order_violations += 1;
                }
                self.last_ts = Some(self.last_ts.map_or(ts, |last| last.max(ts)));
                let (Some(t0), Some(from)) = (self.t0, self.from_ms) else {
                    self.before_header += 1;
                    return;
                };
                if let Some(Speed::Times(speed)) = self.speed {
                    // Due at t0 + (ts − from) / speed; positive errors are late arrivals.
                    let due_us = (ts - from) as f64 * 1000.0 / speed;
                    let arrived_us = arrival.saturating_duration_since(t0).as_micros() as f64;
                    self.error.record((arrived_us - due_us) as i64);
                }
            }
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let devices = match (&args.device_prefix, args.device_count) {
        (Some(prefix), Some(n)) => (0..n).map(|i| format!("{prefix}-{i}")).collect(),
        _ => args.devices.clone(),
    };
    anyhow::ensure!(!devices.is_empty(), "no devices to replay");
    let mut query = vec![
        ("devices", devices.join(",")),
        ("speed", args.speed.query()),
    ];
    if let Some(from) = args.from {
        query.push(("from", format_time(from)));
    }
    if let Some(to) = args.to {
        query.push(("to", format_time(to)));
    }
    if !args.kinds.is_empty() {
        query.push(("kinds", args.kinds.join(",")));
    }
    if let Some(gaps) = args.skip_gaps {
        query.push(("skip_gaps", gaps.to_string()));
    }

    let rss_start_kb = args.pid.and_then(rss_kb);
    if args.pid.is_some() && rss_start_kb.is_none() {
        eprintln!("cannot read VmRSS of process {:?}", args.pid);
    }
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let peak_rss = sample_peak_rss(args.pid, stop_sampling.clone());

    let http = reqwest::Client::new();
    let requested = Instant::now();
    let mut response = args
        .api
        .request(&http, reqwest::Method::GET, "/api/replay")
        .query(&query)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await?;
    let status = response.status();
    let url = response.url().to_string();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("GET {url}: {status}: {body}");
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    anyhow::ensure!(
        content_type.starts_with("text/event-stream"),
        "GET {url}: {status} with content type {content_type:?}, not an event stream"
    );

    let mut state = State {
        from_ms: args.from,
        speed: Some(args.speed),
        ..State::default()
    };
    let mut reader = SseReader::default();
    let idle = Duration::from_secs(args.idle_timeout_s.max(1));
    let stream_error = loop {
        let chunk = match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => break Some(format!("the stream was silent for {} s", idle.as_secs())),
            Ok(Err(e)) => break Some(format!("reading the stream: {e}")),
            Ok(Ok(None)) => break None,
            Ok(Ok(Some(chunk))) => chunk,
        };
        let arrival = Instant::now();
        reader.feed(&chunk, |ev| state.event(ev, arrival));
        if state.end.is_some() {
            break None;
        }
    };
    let finished = state.end.as_ref().map_or_else(Instant::now, |(at, _)| *at);
    stop_sampling.store(true, Ordering::Relaxed);
    let rss_peak_kb = peak_rss.await.ok().filter(|&kb| kb > 0);

    let t0 = state.t0.unwrap_or(requested);
    let wall_s = finished.saturating_duration_since(t0).as_secs_f64();
    let paced = matches!(state.speed, Some(Speed::Times(_)));
    let magnitudes = state.error.magnitudes();
    let report = serde_json::json!({
        "url": url,
        "replay": state.header,
        "to_replay_event_ms": state.t0.map(|t| t.saturating_duration_since(requested).as_secs_f64() * 1000.0),
        "events": state.events,
        "by_kind": state.by_kind,
        "clock_events": state.clocks,
        "keepalives": state.comments,
        "wall_s": wall_s,
        "events_per_s": if wall_s > 0.0 { state.events as f64 / wall_s } else { 0.0 },
        "first_ts": state.first_ts.map(format_time),
        "last_ts": state.last_ts.map(format_time),
        "ts_non_decreasing": state.order_violations == 0,
        "ts_order_violations": state.order_violations,
        "events_without_id": state.missing_ids,
        "events_without_ts": state.unreadable,
        "events_before_replay_event": state.before_header,
        "skipped": state.skipped,
        "pacing_error_ms": (paced && state.error.count() > 0).then(|| serde_json::json!({
            "p50": state.error.quantile_ms(0.5),
            "p99": state.error.quantile_ms(0.99),
            "abs_p50": magnitudes.quantile(0.5) as f64 / 1000.0,
            "abs_p99": magnitudes.quantile(0.99) as f64 / 1000.0,
            "abs_max": magnitudes.max() as f64 / 1000.0,
            "samples": state.error.count(),
        })),
        "end": state.end.is_some(),
        "end_data": state.end.as_ref().map(|(_, data)| data.clone()),
        "stream_error": stream_error,
        "server_rss_kb": args.pid.map(|_| serde_json::json!({"start": rss_start_kb, "peak": rss_peak_kb})),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(e) = stream_error {
        anyhow::bail!("{e} before `end`");
    }
    anyhow::ensure!(
        state.end.is_some(),
        "the stream ended without an `end` event"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_quantiles() {
        let mut s = Signed::default();
        for us in -500..500 {
            s.record(us * 1000);
        }
        assert!(
            (s.quantile_ms(0.5) - -1.0).abs() < 1.0,
            "{}",
            s.quantile_ms(0.5)
        );
        assert!((s.quantile_ms(0.01) - -490.0).abs() < 5.0);
        assert!((s.quantile_ms(0.99) - 489.0).abs() < 5.0);
        assert_eq!(s.magnitudes().max(), 500_000);
    }

    #[test]
    fn events_are_timed_from_the_replay_event() {
        let mut state = State::default();
        let t0 = Instant::now();
        let frames = b"event: replay\ndata: {\"from\": \"2026-01-01T00:00:00Z\", \"speed\": 10}\n\n\
            id: a\nevent: location\ndata: {\"ts\": \"2026-01-01T00:00:10.000Z\", \"device\": \"x\"}\n\n\
            id: b\nevent: location\ndata: {\"ts\": \"2026-01-01T00:00:05.000Z\"}\n\n\
            event: clock\ndata: {\"ts\": \"2026-01-01T00:00:10Z\"}\n\n: keep-alive\n\n\
            event: end\ndata: {}\n\n";
        let mut reader = SseReader::default();
        reader.feed(frames, |ev| state.event(ev, t0));
        assert_eq!(state.events, 2);
        assert_eq!(state.by_kind.get("location"), Some(&2));
        assert_eq!(
            (state.clocks, state.comments, state.order_violations),
            (1, 1, 1)
        );
        assert!(state.end.is_some());
        // Due 1 s and 0.5 s after t0, arrived at t0: early.
        assert_eq!(state.error.count(), 2);
        assert!((state.error.quantile_ms(0.01) - -1000.0).abs() < 10.0);
    }
}
