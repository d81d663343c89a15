//! Cluster mode: events other nodes commit reach this node's live views (and, on the node
//! with the duties, webhooks and channels) by following the shared outbox in storage. Event
//! seqs are taken under one lock in commit order, so reading past the last seq seen never
//! misses one that commits later.

use std::sync::Arc;
use std::time::Duration;

use fieldline_store::{EventQuery, Store};
use tokio::sync::watch;

use super::EventFeed;

/// Events read per query.
const PAGE: u32 = 1000;

/// Hands `feed` every event stored after seq `after`, as they are committed, until
/// `shutdown`. (Events this node commits go to `feed` at once too; the feed takes each seq
/// once.)
pub async fn follow(
    store: Arc<dyn Store>,
    feed: Arc<dyn EventFeed>,
    mut after: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let read = store
            .events(&EventQuery {
                after_seq: after,
                from_ms: i64::MIN,
                to_ms: i64::MAX,
                limit: PAGE,
                ..EventQuery::default()
            })
            .await;
        let full = match read {
            Ok(events) => {
                let full = events.len() as u32 == PAGE;
                if let Some(last) = events.last() {
                    after = after.max(last.seq);
                    let events: Vec<_> = events.into_iter().map(Arc::new).collect();
                    feed.committed(&events);
                }
                full
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shared outbox; trying again");
                false
            }
        };
        if full {
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
