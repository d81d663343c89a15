//! Configuration: command-line flags beat environment variables, which beat the TOML file
//! given with `--config`, which beats the built-in defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fieldline_broker::wal::Durability;
use fieldline_broker::TlsListener;
use fieldline_dashboard::live::HubSettings;
use fieldline_store::retention::sweep::Retention;
use serde::Deserialize;

const DEFAULT_DATABASE_URL: &str = "sqlite://fieldline-data/fieldline.db";
/// Publishes per second one connection may keep up. A device sends a few a second and a
/// gateway for hundreds of sensors a few hundred, batched; 10,000/s is met only by a
/// runaway or hostile client, which would otherwise take the whole pipeline for itself.
const DEFAULT_PUBLISH_RATE: f64 = 10_000.0;

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "memory" => Ok(Durability::Memory),
        "process" => Ok(Durability::Process),
        "fsync" => Ok(Durability::Fsync),
        other => Err(format!(
            "unknown durability {other:?}: use process, fsync or memory"
        )),
    }
}

fn durability_from_file<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Durability>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|t| parse_durability(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// Fieldline: MQTT telemetry broker, ingest pipeline and live dashboards in one binary.
///
/// Without a command it runs the service. `device` and `token` manage the access registry
/// in the configured database (the running service picks changes up within seconds);
/// `command` sends commands to devices through a running service.
#[derive(Parser, Debug, Default)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<crate::Tool>,
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "FIELDLINE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// MQTT over TCP (3.1.1 and 5) [default: 127.0.0.1:1883]
    #[arg(long, env = "FIELDLINE_MQTT_LISTEN")]
    pub mqtt_listen: Option<SocketAddr>,
    /// HTTP API and dashboard [default: 127.0.0.1:8080]
    #[arg(long, env = "FIELDLINE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// MQTT over TLS (needs --tls-cert and --tls-key) [default: off]
    #[arg(long, env = "FIELDLINE_MQTTS_LISTEN")]
    pub mqtts_listen: Option<SocketAddr>,
    /// PEM file with the TLS certificate chain, server certificate first
    #[arg(long, env = "FIELDLINE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the TLS private key (PKCS#8, PKCS#1 or SEC1)
    #[arg(long, env = "FIELDLINE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// MQTT over WebSocket (3.1.1 and 5, subprotocol "mqtt") [default: off]
    #[arg(long, env = "FIELDLINE_MQTT_WS_LISTEN")]
    pub mqtt_ws_listen: Option<SocketAddr>,
    /// HTTPS for the API and dashboard (with --https-cert and --https-key, or --tls-cert and
    /// --tls-key); the certificate is reloaded on SIGHUP or when its files change [default: off]
    #[arg(long, env = "FIELDLINE_HTTPS_LISTEN")]
    pub https_listen: Option<SocketAddr>,
    /// PEM certificate chain for HTTPS [default: --tls-cert]
    #[arg(long, env = "FIELDLINE_HTTPS_CERT")]
    pub https_cert: Option<PathBuf>,
    /// PEM private key for HTTPS [default: --tls-key]
    #[arg(long, env = "FIELDLINE_HTTPS_KEY")]
    pub https_key: Option<PathBuf>,
    /// Serve the API and dashboard over HTTPS only (no plain HTTP listener), with HSTS
    #[arg(long, env = "FIELDLINE_HTTPS_ONLY")]
    pub https_only: bool,
    /// sqlite://PATH or postgres://USER:PASS@HOST/DB [default: sqlite://fieldline-data/fieldline.db]
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Largest payload stored; larger ones are rejected with a reason [default: 262144]
    #[arg(long, env = "FIELDLINE_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// MQTT connections accepted at once [default: 10000]
    #[arg(long, env = "FIELDLINE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Bytes the broker holds for MQTT subscribers (kept sessions' queues, retained
    /// messages); past it, publishes are stored but not routed to subscribers [default: 268435456]
    #[arg(long, env = "FIELDLINE_MQTT_MAX_SUBSCRIBER_BYTES")]
    pub mqtt_max_subscriber_bytes: Option<u64>,
    /// Publishes per second one MQTT connection may keep up; faster ones wait [default: 10000]
    #[arg(long, env = "FIELDLINE_DEVICE_PUBLISH_RATE")]
    pub device_publish_rate: Option<f64>,
    /// Publishes one MQTT connection may send at once above its rate [default: 20000]
    #[arg(long, env = "FIELDLINE_DEVICE_PUBLISH_BURST")]
    pub device_publish_burst: Option<f64>,
    /// HTTP connections open at once; more are closed at accept [default: 20000]
    #[arg(long, env = "FIELDLINE_MAX_HTTP_CONNECTIONS")]
    pub max_http_connections: Option<usize>,
    /// Seconds a new HTTP connection gets to send its first request's headers [default: 10]
    #[arg(long, env = "FIELDLINE_HTTP_HEADER_TIMEOUT_SECONDS")]
    pub http_header_timeout_seconds: Option<u64>,
    /// Live streams (SSE and WebSocket) open at once; more get 503 [default: 10000]
    #[arg(long, env = "FIELDLINE_MAX_LIVE_CLIENTS")]
    pub max_live_clients: Option<usize>,
    /// Cluster mode: NATS servers, comma-separated (`nats://host:4222,nats://…`). Needs
    /// PostgreSQL; every node points at the same servers and database
    #[arg(long, env = "FIELDLINE_CLUSTER")]
    pub cluster: Option<String>,
    /// Cluster mode: a NATS credentials (.creds) file
    #[arg(long, env = "FIELDLINE_CLUSTER_CREDENTIALS")]
    pub cluster_credentials: Option<PathBuf>,
    /// Cluster mode: a CA certificate (PEM) for the NATS servers' TLS; TLS is then required
    #[arg(long, env = "FIELDLINE_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// Cluster mode: copies of the stream (1 to 5) [default: 3]
    #[arg(long, env = "FIELDLINE_CLUSTER_REPLICAS")]
    pub cluster_replicas: Option<usize>,
    /// Cluster mode: partitions of devices, fixed when the stream is first created [default: 12]
    #[arg(long, env = "FIELDLINE_CLUSTER_PARTITIONS")]
    pub cluster_partitions: Option<u16>,
    /// Cluster mode: seconds a stopped node keeps its partitions before others take them [default: 5]
    #[arg(long, env = "FIELDLINE_CLUSTER_LEASE_SECONDS")]
    pub cluster_lease_seconds: Option<u64>,
    /// Cluster mode: this node's name [default: the host name]
    #[arg(long, env = "FIELDLINE_CLUSTER_NODE")]
    pub cluster_node: Option<String>,
    /// Cluster mode: bytes the stream may hold; past it, publishes are not acknowledged [default: 10 GiB]
    #[arg(long, env = "FIELDLINE_CLUSTER_MAX_BYTES")]
    pub cluster_max_bytes: Option<i64>,
    /// Seconds a webhook receiver gets to answer one request before it is retried [default: 10]
    #[arg(long, env = "FIELDLINE_WEBHOOK_TIMEOUT_SECONDS")]
    pub webhook_timeout_seconds: Option<u64>,
    /// Rows per storage write [default: 5000]
    #[arg(long, env = "FIELDLINE_BATCH_ROWS")]
    pub batch_rows: Option<usize>,
    /// Longest a row waits before its batch is written, in ms [default: 200]
    #[arg(long, env = "FIELDLINE_BATCH_AGE_MS")]
    pub batch_age_ms: Option<u64>,
    /// Live events kept for clients resuming after a disconnect [default: 100000]
    #[arg(long, env = "FIELDLINE_LIVE_HISTORY_EVENTS")]
    pub live_history_events: Option<usize>,
    /// Longest a live event is kept for resume, in seconds [default: 600]
    #[arg(long, env = "FIELDLINE_LIVE_HISTORY_SECONDS")]
    pub live_history_seconds: Option<u64>,
    /// Events one live client may have waiting before its streams are conflated [default: 4096]
    #[arg(long, env = "FIELDLINE_LIVE_CLIENT_QUEUE")]
    pub live_client_queue: Option<usize>,
    /// A live client that reads nothing for this long while its queue is full is cut off, in seconds [default: 30]
    #[arg(long, env = "FIELDLINE_LIVE_STALL_SECONDS")]
    pub live_stall_seconds: Option<u64>,
    /// How far a publish has got when its PUBACK goes out: process (in the write-ahead log,
    /// survives a crash of Fieldline), fsync (on disk, survives a power loss; one sync
    /// serves many publishes), memory (nothing beyond a clean shutdown) [default: process]
    #[arg(long, env = "FIELDLINE_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Directory of the write-ahead log [default: fieldline-data/wal-<log id>, one per
    /// database]
    #[arg(long, env = "FIELDLINE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Bytes of the log that may wait for storage (a database outage); beyond it devices
    /// are slowed instead [default: 4294967296]
    #[arg(long, env = "FIELDLINE_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// Size of one write-ahead log segment; stored segments are deleted whole [default: 67108864]
    #[arg(long, env = "FIELDLINE_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// Days of raw history (positions, telemetry, statuses) to keep; older rows are removed
    /// (PostgreSQL drops whole days) [default: keep forever]
    #[arg(long, env = "FIELDLINE_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Days of telemetry roll-ups (1 minute, 1 hour) to keep [default: keep forever]
    #[arg(long, env = "FIELDLINE_ROLLUP_RETENTION_DAYS")]
    pub rollup_retention_days: Option<u32>,
    /// Keep no telemetry roll-ups: bucketed charts then read raw rows. For measuring what
    /// roll-up maintenance costs; not for production.
    #[arg(long, env = "FIELDLINE_NO_ROLLUPS")]
    pub no_rollups: bool,
    /// A MapLibre style URL for the web dashboard's map (real tiles) [default: the built-in
    /// base map of land and borders, no tile server]
    #[arg(long, env = "FIELDLINE_MAP_STYLE")]
    pub map_style: Option<String>,
    /// The SMTP server that email notification channels send through:
    /// smtp://user:pass@host:port (STARTTLS when offered; ?tls=required insists) or smtps://
    #[arg(long, env = "FIELDLINE_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The sender of notification emails [default: Fieldline <fieldline@localhost>]
    #[arg(long, env = "FIELDLINE_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// Accept MQTT clients without a username, and listen on non-loopback addresses although
    /// no device or API authentication is configured: anyone who reaches them can publish as
    /// any device and read everything.
    #[arg(long, env = "FIELDLINE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

/// The same settings, as read from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileConfig {
    mqtt_listen: Option<SocketAddr>,
    mqtts_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    mqtt_ws_listen: Option<SocketAddr>,
    https_listen: Option<SocketAddr>,
    https_cert: Option<PathBuf>,
    https_key: Option<PathBuf>,
    https_only: Option<bool>,
    device_publish_rate: Option<f64>,
    device_publish_burst: Option<f64>,
    max_live_clients: Option<usize>,
    webhook_timeout_seconds: Option<u64>,
    cluster: Option<String>,
    cluster_credentials: Option<PathBuf>,
    cluster_ca: Option<PathBuf>,
    cluster_replicas: Option<usize>,
    cluster_partitions: Option<u16>,
    cluster_lease_seconds: Option<u64>,
    cluster_node: Option<String>,
    cluster_max_bytes: Option<i64>,
    max_http_connections: Option<usize>,
    http_header_timeout_seconds: Option<u64>,
    http_listen: Option<SocketAddr>,
    database_url: Option<String>,
    max_payload_bytes: Option<usize>,
    max_connections: Option<usize>,
    mqtt_max_subscriber_bytes: Option<u64>,
    batch_rows: Option<usize>,
    batch_age_ms: Option<u64>,
    live_history_events: Option<usize>,
    live_history_seconds: Option<u64>,
    live_client_queue: Option<usize>,
    live_stall_seconds: Option<u64>,
    #[serde(default, deserialize_with = "durability_from_file")]
    durability: Option<Durability>,
    wal_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
    wal_segment_bytes: Option<u64>,
    allow_anonymous: Option<bool>,
    retention_days: Option<u32>,
    rollup_retention_days: Option<u32>,
    no_rollups: Option<bool>,
    map_style: Option<String>,
    smtp_url: Option<String>,
    smtp_from: Option<String>,
}

/// Settings after merging every source.
#[derive(Debug, Clone)]
pub struct Config {
    pub mqtt_listen: SocketAddr,
    pub mqtts: Option<TlsListener>,
    /// HTTPS for the API and dashboard.
    pub https: Option<TlsListener>,
    /// No plain HTTP listener (HSTS on every answer).
    pub https_only: bool,
    pub mqtt_ws_listen: Option<SocketAddr>,
    pub device_publish_rate: f64,
    pub device_publish_burst: f64,
    pub max_live_clients: usize,
    pub webhook_timeout: Duration,
    /// Cluster mode (`None`: one node alone).
    pub cluster: Option<fieldline_cluster::ClusterSettings>,
    pub max_http_connections: usize,
    pub http_header_timeout: Duration,
    pub http_listen: SocketAddr,
    pub database_url: String,
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    pub mqtt_max_subscriber_bytes: u64,
    pub batch_rows: usize,
    pub batch_age: Duration,
    pub live: HubSettings,
    pub durability: Durability,
    /// `--wal-dir`; without it each database's log has a directory of its own.
    pub wal_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub wal_segment_bytes: u64,
    pub allow_anonymous: bool,
    pub retention: Retention,
    pub rollups: bool,
    /// The web dashboard's map style URL; `None`: the built-in base map.
    pub map_style: Option<String>,
    /// Where email notification channels send by default; `None`: each brings its own.
    pub smtp_url: Option<String>,
    pub smtp_from: fieldline_ingest::channels::Mailbox,
}

impl Config {
    pub fn load(args: Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let tls_cert = args.tls_cert.or(file.tls_cert);
        let tls_key = args.tls_key.or(file.tls_key);
        let https_listen = args.https_listen.or(file.https_listen);
        let mqtts = match (args.mqtts_listen.or(file.mqtts_listen), &tls_cert, &tls_key) {
            (None, _, _) => None,
            (Some(listen), Some(cert), Some(key)) => Some(TlsListener {
                listen,
                cert: cert.clone(),
                key: key.clone(),
            }),
            (Some(_), _, _) => anyhow::bail!("MQTT over TLS needs --tls-cert and --tls-key"),
        };
        if mqtts.is_none() && https_listen.is_none() && (tls_cert.is_some() || tls_key.is_some()) {
            anyhow::bail!(
                "--tls-cert and --tls-key are for --mqtts-listen or --https-listen; neither is set"
            );
        }
        let https = match https_listen {
            None => None,
            Some(listen) => match (
                args.https_cert.or(file.https_cert).or(tls_cert),
                args.https_key.or(file.https_key).or(tls_key),
            ) {
                (Some(cert), Some(key)) => Some(TlsListener { listen, cert, key }),
                _ => anyhow::bail!(
                    "HTTPS needs a certificate and its key: --https-cert and --https-key, or --tls-cert and --tls-key"
                ),
            },
        };
        let https_only = args.https_only || file.https_only.unwrap_or(false);
        if https_only && https.is_none() {
            anyhow::bail!("--https-only needs --https-listen");
        }
        let config = Config {
            mqtts,
            https,
            https_only,
            mqtt_ws_listen: args.mqtt_ws_listen.or(file.mqtt_ws_listen),
            device_publish_rate: args
                .device_publish_rate
                .or(file.device_publish_rate)
                .unwrap_or(DEFAULT_PUBLISH_RATE),
            device_publish_burst: args
                .device_publish_burst
                .or(file.device_publish_burst)
                .unwrap_or(2.0 * DEFAULT_PUBLISH_RATE),
            max_live_clients: args
                .max_live_clients
                .or(file.max_live_clients)
                .unwrap_or(10_000),
            webhook_timeout: Duration::from_secs(
                args.webhook_timeout_seconds
                    .or(file.webhook_timeout_seconds)
                    .unwrap_or(10)
                    .max(1),
            ),
            cluster: match args.cluster.or(file.cluster) {
                None => None,
                Some(servers) => Some(fieldline_cluster::ClusterSettings {
                    servers: servers
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    credentials: args.cluster_credentials.or(file.cluster_credentials),
                    tls_ca: args.cluster_ca.or(file.cluster_ca),
                    replicas: args.cluster_replicas.or(file.cluster_replicas).unwrap_or(3),
                    partitions: args
                        .cluster_partitions
                        .or(file.cluster_partitions)
                        .unwrap_or(12),
                    lease: Duration::from_secs(
                        args.cluster_lease_seconds
                            .or(file.cluster_lease_seconds)
                            .unwrap_or(5),
                    ),
                    max_bytes: args
                        .cluster_max_bytes
                        .or(file.cluster_max_bytes)
                        .unwrap_or(10 << 30),
                    node_name: args
                        .cluster_node
                        .or(file.cluster_node)
                        .unwrap_or_else(host_name),
                }),
            },
            max_http_connections: args
                .max_http_connections
                .or(file.max_http_connections)
                .unwrap_or(20_000),
            http_header_timeout: Duration::from_secs(
                args.http_header_timeout_seconds
                    .or(file.http_header_timeout_seconds)
                    .unwrap_or(10)
                    .max(1),
            ),
            mqtt_listen: args
                .mqtt_listen
                .or(file.mqtt_listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1883))),
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            database_url: args
                .database_url
                .or(file.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string()),
            max_payload_bytes: args
                .max_payload_bytes
                .or(file.max_payload_bytes)
                .unwrap_or(256 * 1024),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            mqtt_max_subscriber_bytes: args
                .mqtt_max_subscriber_bytes
                .or(file.mqtt_max_subscriber_bytes)
                .unwrap_or(256 * 1024 * 1024),
            batch_rows: args.batch_rows.or(file.batch_rows).unwrap_or(5_000),
            batch_age: Duration::from_millis(
                args.batch_age_ms.or(file.batch_age_ms).unwrap_or(200),
            ),
            live: HubSettings {
                history_events: args
                    .live_history_events
                    .or(file.live_history_events)
                    .unwrap_or(100_000),
                history_age: Duration::from_secs(
                    args.live_history_seconds
                        .or(file.live_history_seconds)
                        .unwrap_or(600),
                ),
                client_queue: args
                    .live_client_queue
                    .or(file.live_client_queue)
                    .unwrap_or(4_096),
                stall_limit: Duration::from_secs(
                    args.live_stall_seconds
                        .or(file.live_stall_seconds)
                        .unwrap_or(30),
                ),
            },
            durability: args
                .durability
                .or(file.durability)
                .unwrap_or(Durability::Process),
            wal_dir: args.wal_dir.or(file.wal_dir),
            spool_max_bytes: args
                .spool_max_bytes
                .or(file.spool_max_bytes)
                .unwrap_or(4 * 1024 * 1024 * 1024),
            wal_segment_bytes: args
                .wal_segment_bytes
                .or(file.wal_segment_bytes)
                .unwrap_or(64 * 1024 * 1024),
            allow_anonymous: args.allow_anonymous || file.allow_anonymous.unwrap_or(false),
            retention: Retention {
                raw_days: args.retention_days.or(file.retention_days),
                rollup_days: args.rollup_retention_days.or(file.rollup_retention_days),
            },
            rollups: !(args.no_rollups || file.no_rollups.unwrap_or(false)),
            map_style: args.map_style.or(file.map_style),
            smtp_url: args.smtp_url.or(file.smtp_url),
            smtp_from: {
                let from = args.smtp_from.or(file.smtp_from);
                let text = from.as_deref().unwrap_or("Fieldline <fieldline@localhost>");
                text.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "smtp_from must be an email address or Name <address>, not {text:?}"
                    )
                })?
            },
        };
        if let Some(cluster) = &config.cluster {
            check_cluster(cluster, &config.database_url)?;
        }
        if let Some(url) = &config.smtp_url {
            fieldline_ingest::channels::email::smtp_server(url, config.webhook_timeout)
                .map_err(|e| anyhow::anyhow!("smtp_url: {e}"))?;
        }
        if let Some(style) = &config.map_style {
            if !(style.starts_with("https://") || style.starts_with("http://")) {
                anyhow::bail!("map_style must be an http:// or https:// URL of a MapLibre style, not {style:?}");
            }
        }
        if config.retention.raw_days == Some(0) || config.retention.rollup_days == Some(0) {
            anyhow::bail!("retention_days and rollup_retention_days must be at least 1 (leave them out to keep history forever)");
        }
        let rate_ok = config.device_publish_rate.is_finite() && config.device_publish_rate >= 0.001;
        let burst_ok =
            config.device_publish_burst.is_finite() && config.device_publish_burst >= 1.0;
        if !(rate_ok && burst_ok) {
            anyhow::bail!(
                "device_publish_rate must be at least 0.001 and device_publish_burst at least 1"
            );
        }
        if config.max_live_clients == 0 {
            anyhow::bail!("max_live_clients must be at least 1");
        }
        if config.live.client_queue < 16 || config.live.client_queue > 1_000_000 {
            anyhow::bail!("live_client_queue must be between 16 and 1,000,000 events");
        }
        if config.live.history_events > 10_000_000 {
            anyhow::bail!("live_history_events must be at most 10,000,000");
        }
        if config.max_payload_bytes == 0 || config.max_payload_bytes > 16 * 1024 * 1024 {
            anyhow::bail!("max_payload_bytes must be between 1 and 16 MiB");
        }
        if config.mqtt_max_subscriber_bytes == 0 {
            anyhow::bail!("mqtt_max_subscriber_bytes must be at least 1 (it bounds what MQTT subscribers are held; 0 would route them nothing)");
        }
        if config.spool_max_bytes < 1024 * 1024 {
            anyhow::bail!("spool_max_bytes must be at least 1 MiB (1048576)");
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&config.wal_segment_bytes) {
            anyhow::bail!("wal_segment_bytes must be between 64 KiB and 1 GiB");
        }
        if config.batch_rows == 0 {
            anyhow::bail!("batch_rows must be at least 1");
        }
        Ok(config)
    }

    /// The contract's secure default: a listener on a non-loopback address needs
    /// authentication configured (devices in the registry for MQTT, API tokens for HTTP),
    /// unless the operator accepts the risk with `--allow-anonymous`.
    pub fn check_exposure(&self, mqtt_auth: bool, api_auth: bool) -> anyhow::Result<()> {
        let mqtt = [
            Some(self.mqtt_listen),
            self.mqtts.as_ref().map(|t| t.listen),
            self.mqtt_ws_listen,
        ];
        let exposed = mqtt
            .into_iter()
            .flatten()
            .map(|addr| ("MQTT", addr, mqtt_auth))
            .chain(
                (!self.https_only)
                    .then_some(("HTTP", self.http_listen, api_auth))
                    .into_iter()
                    .chain(self.https.as_ref().map(|h| ("HTTPS", h.listen, api_auth))),
            );
        for (what, addr, authenticated) in exposed {
            if addr.ip().is_loopback() || authenticated {
                continue;
            }
            if !self.allow_anonymous {
                let how = if what == "MQTT" {
                    "register a device (fieldline device add ID)"
                } else {
                    "create an API token (fieldline token add NAME --role admin)"
                };
                anyhow::bail!(
                    "refusing to listen for {what} on {addr} without authentication: anyone who \
                     can reach it could publish as any device and read every reading. Listen on \
                     a loopback address (127.0.0.1 or ::1), {how} to turn authentication on, or \
                     pass --allow-anonymous to accept that on a network you trust"
                );
            }
            tracing::warn!(%addr, "listening for {what} on a non-loopback address without authentication (--allow-anonymous)");
        }
        Ok(())
    }

    /// The database URL with any password hidden, for logs and errors.
    pub fn database_url_redacted(&self) -> String {
        match (self.database_url.find("://"), self.database_url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &self.database_url[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!(
                    "{}{user}:***{}",
                    &self.database_url[..scheme + 3],
                    &self.database_url[at..]
                )
            }
            _ => self.database_url.clone(),
        }
    }
}

/// Cluster mode's settings, checked before anything starts.
fn check_cluster(
    cluster: &fieldline_cluster::ClusterSettings,
    database_url: &str,
) -> anyhow::Result<()> {
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        anyhow::bail!("--cluster needs PostgreSQL or TimescaleDB (--database-url postgres://…): every node stores into one shared database, and a SQLite file belongs to one machine");
    }
    if cluster.servers.is_empty() {
        anyhow::bail!("--cluster needs at least one NATS server URL (nats://host:4222)");
    }
    if let Some(bad) = cluster
        .servers
        .iter()
        .find(|s| !(s.starts_with("nats://") || s.starts_with("tls://")))
    {
        anyhow::bail!("--cluster takes nats:// or tls:// URLs, not {bad:?}");
    }
    if !(1..=5).contains(&cluster.replicas) {
        anyhow::bail!("--cluster-replicas must be 1 to 5 (3 in production)");
    }
    if !(1..=1024).contains(&cluster.partitions) {
        anyhow::bail!("--cluster-partitions must be 1 to 1024");
    }
    if !(2..=300).contains(&cluster.lease.as_secs()) {
        anyhow::bail!("--cluster-lease-seconds must be 2 to 300");
    }
    if cluster.max_bytes < 1 << 20 {
        anyhow::bail!("--cluster-max-bytes must be at least 1 MiB");
    }
    if cluster
        .node_name
        .contains(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        anyhow::bail!("--cluster-node may hold letters, digits, - and _ only");
    }
    Ok(())
}

/// The machine's name as a node name: letters, digits, - and _ only.
fn host_name() -> String {
    let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "node".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "fieldline-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).expect("temp dir is writable");
        path
    }

    #[test]
    fn defaults_are_loopback_and_the_embedded_store() {
        let config = Config::load(Args::default()).expect("defaults are valid");
        assert_eq!(config.mqtt_listen.to_string(), "127.0.0.1:1883");
        assert_eq!(config.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url, "sqlite://fieldline-data/fieldline.db");
        assert_eq!(config.max_payload_bytes, 256 * 1024);
        assert_eq!(config.durability, Durability::Process);
        assert_eq!(config.wal_dir, None, "one directory per database");
        assert_eq!(config.device_publish_rate, 10_000.0);
    }

    #[test]
    fn durability_comes_from_the_file_too() {
        let args = Args {
            config: Some(file("durability = \"fsync\"\nspool_max_bytes = 2097152\n")),
            ..Args::default()
        };
        let config = Config::load(args).expect("valid config");
        assert_eq!(config.durability, Durability::Fsync);
        assert_eq!(config.spool_max_bytes, 2_097_152);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let path = file(
            "http_listen = \"127.0.0.1:9000\"\nmqtt_listen = \"127.0.0.1:9001\"\nbatch_rows = 7\n",
        );
        let args = Args {
            config: Some(path),
            http_listen: Some("127.0.0.1:9100".parse().expect("valid address")),
            ..Args::default()
        };
        let config = Config::load(args).expect("valid config");
        assert_eq!(config.http_listen.port(), 9100);
        assert_eq!(config.mqtt_listen.port(), 9001);
        assert_eq!(config.batch_rows, 7);
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
    }

    #[test]
    fn rejects_unknown_keys_and_hides_passwords() {
        let args = Args {
            config: Some(file("mqtt_lisen = \"x\"\n")),
            ..Args::default()
        };
        let err = Config::load(args).expect_err("typo must be an error");
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        let config = Config::load(Args {
            database_url: Some("postgres://app:s3cret@db:5432/fl".into()),
            ..Args::default()
        })
        .expect("valid config");
        assert_eq!(
            config.database_url_redacted(),
            "postgres://app:***@db:5432/fl"
        );
    }
}
