//! Where the pipeline's input comes from: the broker's hand-over as connections read
//! publishes ([`tap`]), and the write-ahead log the broker keeps of them ([`log`]): replayed
//! at start before any device is accepted, released as storage catches up, and read back
//! when storage falls behind; in cluster mode, the shared stream ([`stream`]).

mod handover;
mod log;
mod restart;
pub mod stream;
pub mod tap;

use std::sync::Arc;

use fieldline_broker::wal::{Wal, WalError};
use fieldline_store::{Store, StoreError};
use tokio::sync::watch;

use crate::live::LiveFeed;
use crate::Pipeline;

pub use log::{follow_storage, LogBacklog};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot replay the write-ahead log: {0}")]
    Replay(#[from] WalError),
    #[error("the write-ahead log reader failed: {0}")]
    Reader(#[from] tokio::task::JoinError),
    #[error("the store writer stopped during recovery")]
    WriterStopped,
    #[error("cannot read which devices were online at the last stop: {0}")]
    Presence(#[from] StoreError),
}

/// Brings storage and live views to where the last run left them, before any device is
/// accepted: replays the log (records storage holds rebuild the live history, the rest is
/// stored, and this returns once it is), then sends offline the devices storage still has
/// online. Returns how many devices that was.
pub async fn recover(
    pipeline: &mut Pipeline,
    store: &dyn Store,
    live: &dyn LiveFeed,
    wal: Option<&Arc<Wal>>,
    stored_position: u64,
    stored: watch::Receiver<u64>,
) -> Result<usize, SourceError> {
    if let Some(wal) = wal {
        log::replay(pipeline, wal.clone(), stored_position, stored).await?;
    }
    live.replayed();
    Ok(restart::end_presence_left_by_restart(pipeline, store, wal).await?)
}
