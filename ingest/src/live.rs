//! Where accepted documents go live: the pipeline hands each one over as soon as it is
//! accepted, before it is stored, so live views never wait for the database.

use std::sync::Arc;

use crate::document::Document;

/// Where a document came from: its message's place in the write-ahead log, its place among
/// that message's documents, and when the broker received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `None` without a log (`--durability memory`), or for a presence change the log could
    /// not take.
    pub position: Option<u64>,
    /// The document's index in its payload as decoded, before duplicates are dropped, so a
    /// replay that judges one duplicate differently numbers every other document the same.
    /// A connection's offline status comes after its will's documents: [`Origin::LAST_INDEX`].
    pub index: u16,
    pub received_ms: i64,
}

impl Origin {
    pub const LAST_INDEX: u16 = u16::MAX;

    pub fn at(self, index: usize) -> Origin {
        Origin {
            index: u16::try_from(index).unwrap_or(Origin::LAST_INDEX - 1),
            ..self
        }
    }
}

/// A consumer of accepted documents, in acceptance order. Called on the pipeline's task for
/// every document, so it must return at once: no waiting on clients, sockets or storage.
///
/// Replaying the log from any record gives the same documents in the same order with the
/// same origins, so a feed can number them by origin and rebuild its history after a restart.
pub trait LiveFeed: Send + Sync {
    fn publish(&self, document: Arc<Document>, origin: Origin);

    /// The log's replay at start-up is over: what comes next is new.
    fn replayed(&self) {}

    /// The oldest write-ahead log record the feed still holds documents of (for clients
    /// that resume): the log keeps it, and what follows, to rebuild them after a restart.
    /// `None`: it holds none.
    fn oldest_held_record(&self) -> Option<u64> {
        None
    }
}

/// For a pipeline nobody watches live (tools, tests of storage alone).
pub struct NoLiveFeed;

impl LiveFeed for NoLiveFeed {
    fn publish(&self, _document: Arc<Document>, _origin: Origin) {}
}
