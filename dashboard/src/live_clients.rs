//! Bookkeeping for one connected live-stream client: the connected-clients gauge and the
//! counters of what was sent and why clients were let go.

pub(crate) struct LiveClient {
    transport: &'static str,
    sent: metrics::Counter,
}

impl LiveClient {
    pub(crate) fn new(transport: &'static str) -> Self {
        metrics::gauge!("fieldline_live_clients", "transport" => transport).increment(1.0);
        Self {
            transport,
            sent: metrics::counter!("fieldline_live_sent_events_total", "transport" => transport),
        }
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
