//! Joining the cluster: the NATS connection (servers, credentials, TLS), and the stream and
//! buckets every node shares, created by whichever node comes first.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::ServerAddr;

use crate::ClusterError;

/// The stream every node's log goes to.
pub const STREAM: &str = "FIELDLINE";
/// Subjects of the stream: `fl.in.{partition}`.
pub const SUBJECT_PREFIX: &str = "fl.in.";
const LEASES: &str = "fieldline_leases";
const NODES: &str = "fieldline_nodes";
const PRESENCE: &str = "fieldline_presence";

#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `nats://host:port` URLs of the NATS servers (any of them will do to start).
    pub servers: Vec<String>,
    /// A NATS credentials (`.creds`) file.
    pub credentials: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the servers with; TLS is then required.
    pub tls_ca: Option<PathBuf>,
    /// Copies of the stream and buckets (1 to 5; 3 in production).
    pub replicas: usize,
    /// Partitions of devices, fixed when the stream is created.
    pub partitions: u16,
    /// How long a partition stays with a node that stopped renewing it.
    pub lease: Duration,
    /// Bytes the stream may hold before publishes are refused (and so not acknowledged).
    pub max_bytes: i64,
    /// This node's name in `/api/cluster`.
    pub node_name: String,
}

/// A node's handle on the cluster.
#[derive(Clone)]
pub struct Cluster {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub settings: ClusterSettings,
    /// Unique to this process.
    pub node_id: String,
    /// When the stream was created (µs since 1970): the same on every node, so it numbers
    /// live events alike everywhere.
    pub stream_epoch: u64,
    pub(crate) leases: kv::Store,
    pub(crate) nodes: kv::Store,
    pub(crate) presence: kv::Store,
    /// False while the last publish or renewal could not reach a quorum.
    pub(crate) quorum: Arc<AtomicBool>,
    /// True while the stream refuses publishes for want of room (`--cluster-max-bytes`).
    pub(crate) stream_full: Arc<AtomicBool>,
}

impl Cluster {
    /// Connects and makes sure the stream and the buckets exist.
    pub async fn connect(settings: ClusterSettings) -> Result<Cluster, ClusterError> {
        let servers = settings.servers.join(",");
        let addrs = settings
            .servers
            .iter()
            .map(|s| s.parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClusterError::Connect {
                servers: servers.clone(),
                source: e.into(),
            })?;
        // The name plus a per-process suffix: a restarted node is a new node to the others.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let node_id = format!(
            "{}-{:06x}",
            settings.node_name,
            (started ^ u64::from(std::process::id())) & 0xff_ffff
        );
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("fieldline {node_id}"))
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS connection");
            });
        if let Some(path) = &settings.credentials {
            options = options.credentials_file(path).await.map_err(|source| {
                ClusterError::Credentials {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        if let Some(ca) = &settings.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|source| ClusterError::Connect { servers, source })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            // Past this many acks outstanding a publish fails at once and is offered again
            // after a pause, instead of waiting for a permit while holding others.
            .max_ack_inflight(65_536)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let replicas = settings.replicas.clamp(1, 5);
        let mut stream = jetstream
            .get_or_create_stream(stream::Config {
                name: STREAM.to_owned(),
                description: Some(describe(settings.partitions)),
                subjects: vec![format!("{SUBJECT_PREFIX}*")],
                num_replicas: replicas,
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_secs(120),
                max_bytes: settings.max_bytes,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::jetstream("create the stream FIELDLINE", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::jetstream("read the stream FIELDLINE", e))?;
        let existing = info
            .config
            .description
            .as_deref()
            .and_then(|d| d.strip_prefix("fieldline partitions="))
            .and_then(|p| p.parse::<u16>().ok());
        if existing != Some(settings.partitions) {
            return Err(ClusterError::Partitions {
                existing: existing.unwrap_or(0),
                asked: settings.partitions,
            });
        }
        let stream_epoch = (info.created.unix_timestamp_nanos() / 1_000).max(1) as u64;
        let bucket = |name: &str| kv::Config {
            bucket: name.to_owned(),
            history: 1,
            max_age: settings.lease,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let leases = key_value(&jetstream, bucket(LEASES)).await?;
        let nodes = key_value(&jetstream, bucket(NODES)).await?;
        // Presence lasts as long as the connection: no expiry (dead nodes' are reaped).
        let presence = key_value(
            &jetstream,
            kv::Config {
                max_age: Duration::ZERO,
                ..bucket(PRESENCE)
            },
        )
        .await?;
        tracing::info!(node = %node_id, servers = %settings.servers.join(","), replicas, partitions = settings.partitions, "joined the cluster");
        Ok(Cluster {
            client,
            jetstream,
            settings,
            node_id,
            stream_epoch,
            leases,
            nodes,
            presence,
            quorum: Arc::new(AtomicBool::new(true)),
            stream_full: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether this node reached a quorum the last time it tried.
    pub fn has_quorum(&self) -> bool {
        self.quorum.load(Ordering::Relaxed)
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The stream's first and last sequence now.
    pub async fn stream_bounds(&self) -> Result<(u64, u64), ClusterError> {
        let mut stream = self
            .jetstream
            .get_stream(STREAM)
            .await
            .map_err(|e| ClusterError::jetstream("open the stream FIELDLINE", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::jetstream("read the stream FIELDLINE", e))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// The first record of `partition` at or after `seq`, or `None` when it has none there
    /// (an idle partition holds nothing back).
    pub async fn next_in_partition(
        &self,
        partition: u16,
        seq: u64,
    ) -> Result<Option<u64>, ClusterError> {
        let stream = self
            .jetstream
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| ClusterError::jetstream("open the stream FIELDLINE", e))?;
        match stream
            .get_first_raw_message_by_subject(format!("{SUBJECT_PREFIX}{partition}"), seq)
            .await
        {
            Ok(message) => Ok(Some(message.sequence)),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(ClusterError::jetstream("read the stream FIELDLINE", e)),
        }
    }

    /// Drops the stream's records before `seq`: every partition has stored them and no live
    /// view asks for them any more.
    pub async fn purge_before(&self, seq: u64) -> Result<u64, ClusterError> {
        let stream = self
            .jetstream
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| ClusterError::jetstream("open the stream FIELDLINE", e))?;
        let purged = stream
            .purge()
            .sequence(seq)
            .await
            .map_err(|e| ClusterError::jetstream("purge the stream FIELDLINE", e))?;
        Ok(purged.purged)
    }

    /// Whether the stream refused this node's last publish for want of room.
    pub fn is_stream_full(&self) -> bool {
        self.stream_full.load(Ordering::Relaxed)
    }

    pub(crate) fn note_stream_full(&self, full: bool) {
        if self.stream_full.swap(full, Ordering::Relaxed) != full {
            metrics::gauge!("fieldline_cluster_stream_full").set(if full { 1.0 } else { 0.0 });
            if full {
                tracing::warn!(
                    max_bytes = self.settings.max_bytes,
                    "the stream FIELDLINE is full: publishes are not acknowledged until storage \
                     catches up and stored records are trimmed"
                );
            } else {
                tracing::info!("the stream FIELDLINE takes publishes again");
            }
        }
    }

    pub(crate) fn note_quorum(&self, reached: bool) {
        if self.quorum.swap(reached, Ordering::Relaxed) != reached {
            if reached {
                tracing::info!("JetStream quorum reached again");
            } else {
                tracing::warn!(
                    "JetStream has no quorum: publishes are not acknowledged until it is back"
                );
            }
        }
    }
}

fn describe(partitions: u16) -> String {
    format!("fieldline partitions={partitions}")
}

async fn key_value(
    jetstream: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = jetstream.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    // The bucket's stream as the key-value convention has it, made by hand: the client's own
    // `create_key_value` first asks for account details in a form 2.9 does not answer.
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{}", config.bucket),
            subjects: vec![format!("$KV.{}.>", config.bucket)],
            max_messages_per_subject: config.history,
            max_age: config.max_age,
            storage: config.storage,
            num_replicas: config.num_replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::jetstream("create a key-value bucket", e))?;
    jetstream
        .get_key_value(config.bucket)
        .await
        .map_err(|e| ClusterError::jetstream("open a key-value bucket", e))
}
