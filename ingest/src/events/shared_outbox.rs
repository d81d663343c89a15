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
/// How often the outbox is read when it is quiet; reads that fail wait longer, up to
/// [`MOST_WAIT`], so an outage of storage is not met with ten failing queries a second.
const POLL: Duration = Duration::from_millis(100);
const MOST_WAIT: Duration = Duration::from_secs(5);

/// Hands `feed` every event stored after seq `after`, as they are committed, until
/// `shutdown`. (Events this node commits go to `feed` at once too; the feed takes each seq
/// once.)
pub async fn follow(
    store: Arc<dyn Store>,
    feed: Arc<dyn EventFeed>,
    mut after: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = POLL;
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
                if wait > POLL {
                    tracing::info!("reading the shared outbox again");
                    wait = POLL;
                }
                let full = events.len() as u32 == PAGE;
                if let Some(last) = events.last() {
                    after = after.max(last.seq);
                    let events: Vec<_> = events.into_iter().map(Arc::new).collect();
                    feed.committed(&events);
                }
                full
            }
            Err(e) => {
                if wait == POLL {
                    tracing::warn!(error = %e, "cannot read the shared outbox; trying again, less often while it fails");
                }
                wait = (wait * 2).min(MOST_WAIT);
                false
            }
        };
        if full {
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
