//! The hand-over from the broker to the pipeline.
//!
//! rumqttd's own consumer links lose data when the consumer falls behind (the commit log drops
//! its oldest segment). The tap avoids that path: it sees each publish as the connection parses
//! it, before the router writes the PUBACK, and passes it on through a queue bounded in bytes.
//! When the budget is spent the reading connection waits (the socket stops being read, which
//! slows the device through TCP) instead of anything being dropped.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// One publish as read from a device connection.
#[derive(Debug)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    /// Client id given in the connection's CONNECT.
    pub client_id: Arc<str>,
    pub received_at: SystemTime,
    /// Holds this message's share of the hand-over budget until the pipeline drops it.
    _budget: OwnedSemaphorePermit,
}

/// The broker-side end: cloned into every connection.
#[derive(Clone)]
pub struct Tap {
    tx: mpsc::UnboundedSender<Inbound>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// `true` once closed. Senders hold the read lock while they send, so that when
    /// [`TapReceiver::close`] has the write lock, no send is half done.
    closed: Arc<RwLock<bool>>,
    publishes: metrics::Counter,
}

/// The pipeline-side end.
pub struct TapReceiver {
    rx: mpsc::UnboundedReceiver<Inbound>,
    closed: Arc<RwLock<bool>>,
}

/// Returned to a connection once the tap is closed: the publish is not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("the broker is shutting down")]
pub struct TapClosed;

/// Creates a tap whose queued publishes may hold at most `budget_bytes` of topic and payload.
pub fn tap(budget_bytes: usize) -> (Tap, TapReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let closed = Arc::new(RwLock::new(false));
    let budget_bytes = budget_bytes.clamp(1, Semaphore::MAX_PERMITS);
    (
        Tap {
            tx,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            closed: closed.clone(),
            publishes: metrics::counter!("fieldline_broker_publishes_total"),
        },
        TapReceiver { rx, closed },
    )
}

impl Tap {
    /// Hands one publish to the pipeline, waiting for budget if the pipeline is behind.
    ///
    /// Called from rumqttd's synchronous packet parser, so waiting uses
    /// `block_in_place`: it parks this connection's task and lets the runtime move other
    /// work to another thread. The broker therefore runs on a multi-threaded runtime.
    pub fn send(&self, topic: Bytes, payload: Bytes, client_id: Arc<str>) -> Result<(), TapClosed> {
        // A poisoned lock only means a sender panicked mid-send; the flag is still valid.
        let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(TapClosed);
        }
        // A single message larger than the whole budget takes the whole budget.
        let cost = (topic.len() + payload.len()).clamp(1, self.budget_bytes);
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let permit = match self.budget.clone().try_acquire_many_owned(cost) {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("fieldline_broker_backpressure_waits_total").increment(1);
                let budget = self.budget.clone();
                let acquired = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(budget.acquire_many_owned(cost))
                });
                acquired.map_err(|_| TapClosed)?
            }
        };
        let inbound = Inbound {
            topic,
            payload,
            client_id,
            received_at: SystemTime::now(),
            _budget: permit,
        };
        if self.tx.send(inbound).is_err() {
            // The pipeline is gone; refusing here keeps the publish unacknowledged, so the
            // device keeps it. Counted because it means the service is failing.
            metrics::counter!("fieldline_broker_lost_messages_total").increment(1);
            return Err(TapClosed);
        }
        self.publishes.increment(1);
        Ok(())
    }

    /// Bytes currently waiting between the broker and the pipeline.
    pub fn queued_bytes(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }
}

impl TapReceiver {
    /// The next publish, or `None` once the tap is closed and drained.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.rx.recv().await
    }

    /// Everything already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Inbound> {
        self.rx.try_recv().ok()
    }

    /// Stops the hand-over: from the moment this returns, no connection can add a publish,
    /// and every publish handed over before it is in this receiver's queue. Connections that
    /// try to publish afterwards are closed without an acknowledgement.
    ///
    /// Waiting for the lock can block while a connection waits for budget, which only frees
    /// up as this receiver is drained; so call it from a blocking thread while the pipeline
    /// keeps reading.
    pub fn closer(&self) -> impl FnOnce() + Send + 'static {
        let closed = self.closed.clone();
        move || {
            let mut closed = closed.write().unwrap_or_else(|e| e.into_inner());
            *closed = true;
        }
    }
}
