//! Cluster mode's shared ground on NATS JetStream: the stream that is the log behind every
//! PUBACK ([`log`]), readers of it in its one order ([`read`]), the leases that give each
//! partition of devices one writer at a time ([`leases`]), and the registry of live nodes
//! ([`nodes`]). Nothing here knows MQTT or storage: the broker, the pipeline and the binary
//! build on it.

pub mod leases;
pub mod log;
pub mod nodes;
pub mod partition;
pub mod presence;
pub mod read;
pub mod record;
mod setup;

pub use leases::{Lease, Leases};
pub use log::StreamLog;
pub use nodes::{NodeInfo, Nodes};
pub use partition::partition_of;
pub use presence::{Holder, Presences};
pub use read::StreamReader;
pub use record::StreamRecord;
pub use setup::{Cluster, ClusterSettings};

/// Why the cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {servers}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot read the NATS credentials file {path}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("JetStream is not usable ({what}): {detail}")]
    JetStream { what: &'static str, detail: String },
    #[error("the stream FIELDLINE was created with {existing} partitions, this node asks for {asked}: start every node with the same --cluster-partitions")]
    Partitions { existing: u16, asked: u16 },
    #[error("a record read from the stream does not decode: {0}")]
    Record(String),
}

impl ClusterError {
    pub(crate) fn jetstream(what: &'static str, detail: impl std::fmt::Display) -> Self {
        ClusterError::JetStream {
            what,
            detail: detail.to_string(),
        }
    }
}
