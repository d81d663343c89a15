//! Where accepted documents go live: the pipeline hands each one over as soon as it is
//! accepted, before it is stored, so live views never wait for the database.

use std::sync::Arc;

use crate::document::Document;

/// A consumer of accepted documents, in acceptance order. Called on the pipeline's task for
/// every document, so it must return at once: no waiting on clients, sockets or storage.
pub trait LiveFeed: Send + Sync {
    fn publish(&self, document: Arc<Document>);
}

/// For a pipeline nobody watches live (tools, tests of storage alone).
pub struct NoLiveFeed;

impl LiveFeed for NoLiveFeed {
    fn publish(&self, _document: Arc<Document>) {}
}
