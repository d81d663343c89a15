//! Bookkeeping for one connected live-stream client: the connected-clients gauge and the
//! counters of what was sent and why clients were let go.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ApiError;

pub(crate) struct LiveClient {
    transport: &'static str,
    sent: metrics::Counter,
    _slot: OwnedSemaphorePermit,
}

impl LiveClient {
    /// Takes one of the live-stream slots, or refuses when they are all in use.
    pub(crate) fn admit(transport: &'static str, slots: &Arc<Semaphore>) -> Result<Self, ApiError> {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("fieldline_live_refused_total", "transport" => transport)
                .increment(1);
            return Err(ApiError::unavailable(
                "too many live clients; try again later",
            ));
        };
        metrics::gauge!("fieldline_live_clients", "transport" => transport).increment(1.0);
        Ok(Self {
            transport,
            sent: metrics::counter!("fieldline_live_sent_events_total", "transport" => transport),
            _slot: slot,
        })
    }

    pub(crate) fn sent(&self, events: u64) {
        self.sent.increment(events);
    }

    /// The server ended this client's stream.
    pub(crate) fn closed(&self, reason: &'static str) {
        tracing::info!(transport = self.transport, reason, "closing a live client");
    }
}

impl Drop for LiveClient {
    fn drop(&mut self) {
        metrics::gauge!("fieldline_live_clients", "transport" => self.transport).decrement(1.0);
    }
}
