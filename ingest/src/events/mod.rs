//! Derived events: the geofence and alert facts that accepted documents cause, judged on the
//! storage path ([`judges`]), written in the same transaction as the batch that caused them
//! (a transactional outbox), and handed to live views and webhooks only after that commit
//! ([`EventFeed`]).

pub mod catalog;
pub mod devices;
pub mod in_order;
pub mod judges;
pub mod shared_outbox;

use std::sync::Arc;

use fieldline_store::derived::Event;

/// Where committed events go: called by the store writer after the commit that stored them,
/// in outbox order. Must return at once.
pub trait EventFeed: Send + Sync {
    fn committed(&self, events: &[Arc<Event>]);
}

/// Several feeds, each given every event (live views and webhooks).
pub struct EventFeeds(pub Vec<Arc<dyn EventFeed>>);

impl EventFeed for EventFeeds {
    fn committed(&self, events: &[Arc<Event>]) {
        for feed in &self.0 {
            feed.committed(events);
        }
    }
}
