//! `idle`: a connect storm of idle MQTT connections, then holding them, to measure what each
//! connection costs a broker in memory and how fast it accepts them. Raw TCP with
//! hand-encoded packets instead of rumqttc: one small task per connection, so the client
//! itself holds 20,000 of them without becoming what is measured.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::MissedTickBehavior;

use crate::latency::Histogram;

/// Longest a TCP connect, and then the CONNECT-to-CONNACK exchange, may take. Longer than a
/// dropped SYN's retransmissions (1, 3 and 7 s after the first), so a full accept queue
/// shows up as slow connects in the figures rather than as failures.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// MQTT PINGREQ (both versions).
const PINGREQ: [u8; 2] = [0xC0, 0x00];

// Usage is in the subcommand's help (main.rs).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Spread the client side over source addresses 127.0.0.2 … 127.0.0.(1+K) (each has its
    /// own ephemeral ports); only when the broker is on an IPv4 loopback address. 0: the
    /// kernel's choice.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u8).range(0..=254))]
    source_addresses: u8,
    /// Handshakes (TCP connect to CONNACK) in flight at once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Seconds to hold every connection once all are answered; 0: until stdin closes or
    /// Ctrl-C.
    #[arg(long, default_value_t = 0)]
    hold_seconds: u64,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    protocol: u8,
    /// Keep-alive in the CONNECT, seconds; held connections send a PINGREQ every half of it
    /// (0: none).
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
    /// Client ids are PREFIX-0 … PREFIX-(N-1).
    #[arg(long, default_value = "idle")]
    client_prefix: String,
}

/// What every connection needs to open itself.
struct Plan {
    target: SocketAddr,
    /// 0: no explicit source address.
    source_addresses: u8,
    protocol: u8,
    keep_alive: u16,
    prefix: String,
}

/// How one connection's handshake ended.
enum Outcome {
    /// Accepted: when its TCP connect began and when the CONNACK was read.
    Connected { began: Instant, acked: Instant },
    /// Not connected, and why (a short key for the report's `failures`).
    Failed(String),
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0, "connections must be positive");
    // Client ids stay far below MQTT's 65,535-byte string limit (and the cast below).
    anyhow::ensure!(
        args.client_prefix.len() <= 200,
        "client prefix must be at most 200 bytes"
    );
    let target = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot resolve {}", args.host))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.host))?;
    let source_addresses = match target {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => args.source_addresses,
        _ => {
            if args.source_addresses > 0 {
                eprintln!("{target} is not an IPv4 loopback address: source addresses are left to the kernel");
            }
            0
        }
    };
    // Every connection is a descriptor; running out shows up as failures, so say why first.
    if let Some(limit) = open_file_limit() {
        if limit < args.connections as u64 + 32 {
            eprintln!(
                "warning: the open-file limit is {limit}, too low for {} connections: raise it with `ulimit -n`",
                args.connections
            );
        }
    }
    let plan = Arc::new(Plan {
        target,
        source_addresses,
        protocol: args.protocol,
        keep_alive: args.keep_alive,
        prefix: args.client_prefix.clone(),
    });
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let closed = Arc::new(AtomicU64::new(0));
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();

    let started = Instant::now();
    for i in 0..args.connections {
        tokio::spawn(connection(
            i,
            plan.clone(),
            slots.clone(),
            outcomes_tx.clone(),
            closed.clone(),
        ));
    }
    drop(outcomes_tx);

    let mut connected = 0u64;
    let mut failed = 0u64;
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_connack = started;
    let mut latency = Histogram::default();
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    while connected + failed < args.connections as u64 {
        tokio::select! {
            outcome = outcomes.recv() => match outcome {
                Some(Outcome::Connected { began, acked }) => {
                    connected += 1;
                    last_connack = last_connack.max(acked);
                    latency.record(acked.duration_since(began).as_micros() as u64);
                }
                Some(Outcome::Failed(reason)) => {
                    failed += 1;
                    *failures.entry(reason).or_default() += 1;
                }
                // Every task has reported or gone (a panic): nothing more will come.
                None => break,
            },
            _ = progress.tick() => eprintln!(
                "t={:>3}s connected={connected} failed={failed}",
                started.elapsed().as_secs()
            ),
        }
    }
    let connect_seconds = last_connack.duration_since(started).as_secs_f64();
    let per_second = if connect_seconds > 0.0 {
        connected as f64 / connect_seconds
    } else {
        0.0
    };
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    let summary = serde_json::json!({
        "connections": args.connections,
        "connected": connected,
        "failed": failed,
        "failures": failures,
        "connect_seconds": round(connect_seconds, 3),
        "connects_per_second": round(per_second, 1),
        "connect_latency_ms": (latency.count() > 0).then(|| serde_json::json!({
            "p50": ms(latency.quantile(0.5)),
            "p99": ms(latency.quantile(0.99)),
            "max": ms(latency.max()),
        })),
        "protocol": args.protocol,
        "concurrency": args.concurrency,
        "source_addresses": source_addresses,
        "keep_alive": args.keep_alive,
    });
    // The summary goes out (flushed) before the hold: the bench script waits for it, then
    // samples the broker's memory with every connection open.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{summary}")?;
        out.flush()?;
    }
    anyhow::ensure!(connected > 0, "no connection was accepted");
    eprintln!("ready: {connected} connections open, {failed} failed");

    let held = Instant::now();
    if args.hold_seconds > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.hold_seconds)) => {}
            _ = interrupted() => {}
        }
    } else {
        let stdin_closed = stdin_closed()?;
        tokio::select! {
            _ = stdin_closed => {}
            _ = interrupted() => {}
        }
    }
    eprintln!(
        "held for {:.0} s: {} of {connected} connections closed by the broker meanwhile",
        held.elapsed().as_secs_f64(),
        closed.load(Ordering::Relaxed),
    );
    // Returning drops the runtime, and with it every task and socket.
    Ok(())
}

/// One connection: waits for a handshake slot, opens, reports, then holds until the broker
/// closes it or the process ends.
async fn connection(
    i: usize,
    plan: Arc<Plan>,
    slots: Arc<Semaphore>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    closed: Arc<AtomicU64>,
) {
    // The semaphore is never closed; were it, there would be nothing to do.
    let Ok(slot) = slots.acquire_owned().await else {
        return;
    };
    let began = Instant::now();
    let opened = open(i, &plan).await;
    drop(slot);
    let mut stream = match opened {
        Ok(stream) => {
            let _ = outcomes.send(Outcome::Connected {
                began,
                acked: Instant::now(),
            });
            stream
        }
        Err(reason) => {
            let _ = outcomes.send(Outcome::Failed(reason));
            return;
        }
    };
    // Only handshakes report: with every sender gone once the last one has, a task that
    // panicked cannot leave `run` waiting for an outcome that will never come.
    drop(outcomes);
    if !hold(&mut stream, plan.keep_alive).await {
        closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// TCP connect, CONNECT, CONNACK. The error is the failure's reason.
async fn open(i: usize, plan: &Plan) -> Result<TcpStream, String> {
    let socket = match plan.target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let socket = socket.map_err(|e| io_reason("socket", &e))?;
    if plan.source_addresses > 0 {
        // 127.0.0.2, .3, …: each address has its own ephemeral ports, so tens of thousands of
        // connections to one broker port do not run one address out of them. All of 127/8
        // is local on Linux; no setup needed.
        let last_octet = 2 + (i % usize::from(plan.source_addresses)) as u8;
        socket
            .bind(SocketAddr::from(([127, 0, 0, last_octet], 0)))
            .map_err(|e| io_reason("bind", &e))?;
    }
    let mut stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.connect(plan.target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(io_reason("tcp", &e)),
            Err(_) => return Err("tcp_timeout".to_string()),
        };
    stream.set_nodelay(true).map_err(|e| io_reason("tcp", &e))?;
    let packet = connect_packet(
        &format!("{}-{i}", plan.prefix),
        plan.protocol,
        plan.keep_alive,
    );
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, &packet)).await {
        Ok(Ok(0)) => Ok(stream),
        Ok(Ok(code)) => Err(connack_reason(plan.protocol, code)),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err("mqtt_timeout".to_string()),
    }
}

/// Writes the CONNECT and reads the CONNACK; its return code (3.1.1) or reason code (5).
async fn handshake(stream: &mut TcpStream, connect: &[u8]) -> Result<u8, String> {
    stream
        .write_all(connect)
        .await
        .map_err(|e| io_reason("mqtt", &e))?;
    // Fixed header (at most 5 bytes) and the first two bytes of the body fit with room to
    // spare; the rest of a long MQTT 5 CONNACK is read through the same buffer.
    let mut buf = [0u8; 64];
    let mut have = 0;
    let (header, body) = loop {
        if let Some(parsed) = connack_header(&buf[..have])? {
            break parsed;
        }
        have += read_some(stream, &mut buf[have..]).await?;
    };
    let code = buf[header + 1];
    // MQTT 5 properties: read and dropped, so the connection is left at a packet boundary.
    let mut left = (header + body).saturating_sub(have);
    while left > 0 {
        let chunk = left.min(buf.len());
        left -= read_some(stream, &mut buf[..chunk]).await?;
    }
    Ok(code)
}

/// Reads at least one byte; the broker closing first is a failure.
async fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
    match stream.read(buf).await {
        Ok(0) => Err("mqtt_closed".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(io_reason("mqtt", &e)),
    }
}

/// The CONNACK's fixed header length and remaining length once the header and the first two
/// body bytes (flags, code) are in `bytes`; None while more are needed.
fn connack_header(bytes: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let Some(&kind) = bytes.first() else {
        return Ok(None);
    };
    if kind != 0x20 {
        return Err("mqtt_bad_connack".to_string());
    }
    let mut length = 0usize;
    for i in 0..4 {
        let Some(&byte) = bytes.get(1 + i) else {
            return Ok(None);
        };
        length |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if length < 2 {
                return Err("mqtt_bad_connack".to_string());
            }
            let header = 2 + i;
            return Ok((bytes.len() >= header + 2).then_some((header, length)));
        }
    }
    Err("mqtt_bad_connack".to_string())
}

/// Holds an open connection: reads (and drops) whatever comes, which is only PINGRESPs, and
/// sends a PINGREQ every half keep-alive so the broker keeps it. False when the broker
/// closes it.
async fn hold(stream: &mut TcpStream, keep_alive: u16) -> bool {
    let (mut reader, mut writer) = stream.split();
    let mut buf = [0u8; 16];
    let period = Duration::from_secs(u64::from(keep_alive / 2).max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            },
            _ = ping.tick(), if keep_alive > 0 => {
                if writer.write_all(&PINGREQ).await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// A CONNECT: clean session, no username, no will; MQTT 5 adds an empty property list.
fn connect_packet(client_id: &str, protocol: u8, keep_alive: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let properties = usize::from(protocol == 5);
    // Protocol name (6), level (1), flags (1), keep-alive (2), properties, client id.
    let remaining = 10 + properties + 2 + id.len();
    let mut packet = Vec::with_capacity(remaining + 5);
    packet.push(0x10);
    let mut length = remaining;
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        if length == 0 {
            packet.push(byte);
            break;
        }
        packet.push(byte | 0x80);
    }
    // Flags 0x02: clean session (3.1.1), clean start (5).
    packet.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', protocol, 0x02]);
    packet.extend_from_slice(&keep_alive.to_be_bytes());
    if protocol == 5 {
        packet.push(0x00);
    }
    // At most 200 bytes of prefix and an index (checked in `run`).
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id);
    packet
}

/// A refusing CONNACK's code with its name from the spec of that version.
fn connack_reason(protocol: u8, code: u8) -> String {
    let name = match (protocol, code) {
        (4, 1) => "unacceptable_protocol_version",
        (4, 2) => "identifier_rejected",
        (4, 3) => "server_unavailable",
        (4, 4) => "bad_username_or_password",
        (4, 5) => "not_authorized",
        (5, 0x80) => "unspecified_error",
        (5, 0x81) => "malformed_packet",
        (5, 0x82) => "protocol_error",
        (5, 0x83) => "implementation_specific_error",
        (5, 0x84) => "unsupported_protocol_version",
        (5, 0x85) => "client_identifier_not_valid",
        (5, 0x86) => "bad_username_or_password",
        (5, 0x87) => "not_authorized",
        (5, 0x88) => "server_unavailable",
        (5, 0x89) => "server_busy",
        (5, 0x8A) => "banned",
        (5, 0x97) => "quota_exceeded",
        (5, 0x9F) => "connection_rate_exceeded",
        _ => "unknown",
    };
    format!("connack_{code:#04x}_{name}")
}

/// A short key for an I/O failure in `phase` (socket, bind, tcp, mqtt).
fn io_reason(phase: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    // EMFILE and ENFILE: the client's own limits, named so the fix (`ulimit -n`) is plain.
    match e.raw_os_error() {
        Some(24) => return "too_many_open_files".to_string(),
        Some(23) => return "system_file_table_full".to_string(),
        _ => {}
    }
    let what = match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset => "reset",
        ErrorKind::ConnectionAborted => "aborted",
        ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe => "closed",
        ErrorKind::AddrNotAvailable => "address_not_available",
        ErrorKind::AddrInUse => "address_in_use",
        ErrorKind::TimedOut => "timeout",
        _ => return format!("{phase}: {e}"),
    };
    format!("{phase}_{what}")
}

/// The soft limit on open files, from /proc (None where there is none, or it is unlimited).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Resolves on Ctrl-C; never, when the handler cannot be installed (the hold then ends
/// only by its other condition).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when stdin reaches its end. Read on a plain thread: tokio's stdin needs a
/// feature this crate does not build with, and a blocking-pool task would keep the runtime
/// from shutting down while stdin stays open.
fn stdin_closed() -> anyhow::Result<oneshot::Receiver<()>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("stdin".to_string())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut sink = [0u8; 256];
            loop {
                match stdin.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        })
        .context("cannot start the stdin reader")?;
    Ok(rx)
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packets_are_well_formed() {
        let v4 = connect_packet("idle-7", 4, 600);
        assert_eq!(
            v4,
            [
                &[0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58, 0, 6][..],
                b"idle-7"
            ]
            .concat()
        );
        let v5 = connect_packet("idle-7", 5, 600);
        assert_eq!(v5[1], 19);
        assert_eq!(&v5[8..13], &[5, 0x02, 0x02, 0x58, 0]);
        // A remaining length above 127 takes two bytes.
        let long = connect_packet(&"x".repeat(200), 4, 0);
        assert_eq!(&long[1..3], &[(212 % 128) as u8 | 0x80, 1]);
        assert_eq!(long.len(), 3 + 212);
    }

    #[test]
    fn connack_headers_parse_in_pieces() {
        let v4 = [0x20, 0x02, 0x00, 0x05];
        assert_eq!(connack_header(&v4[..1]), Ok(None));
        assert_eq!(connack_header(&v4[..3]), Ok(None));
        assert_eq!(connack_header(&v4), Ok(Some((2, 2))));
        // MQTT 5 with 3 bytes of properties: the first two body bytes are enough.
        let v5 = [0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x0A];
        assert_eq!(connack_header(&v5[..4]), Ok(Some((2, 6))));
        assert_eq!(
            connack_header(&[0x30, 0x02]),
            Err("mqtt_bad_connack".to_string())
        );
        assert_eq!(
            connack_header(&[0x20, 0x01, 0x00]),
            Err("mqtt_bad_connack".to_string())
        );
        assert_eq!(connack_reason(4, 5), "connack_0x05_not_authorized");
        assert_eq!(connack_reason(5, 0x89), "connack_0x89_server_busy");
    }
}
