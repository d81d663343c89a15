//! The hand-over from the broker to the pipeline.
//!
//! rumqttd's own consumer links lose data when the consumer falls behind (the commit log drops
//! its oldest segment). The tap avoids that path: it sees each publish as the connection parses
//! it, before the router writes the PUBACK, and passes it on through a queue bounded in bytes.
//! When the budget is spent the reading connection waits (the socket stops being read, which
//! slows the device through TCP) instead of anything being dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::presence::{device_of, Change, DisconnectReason, Presence, Will, LOG_TOPIC};
use crate::wal::Wal;

/// A log kept elsewhere (cluster mode's shared stream) that takes the place of the local
/// write-ahead log and of the hand-over: what it holds is read back from it, by whichever node
/// stores it, so nothing goes to this process' pipeline directly.
pub trait RemoteLog: Send + Sync {
    /// Resolves once the log holds every record, in order, or refuses them (it is closing,
    /// or could not take them in time). A record's `key` is the device it belongs to (what
    /// the log partitions by). The connection awaits it without holding a thread, so a log
    /// that stalls slows devices without starving the runtime.
    fn append<'a>(
        &'a self,
        records: &'a [RemoteRecord<'a>],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), TapClosed>> + Send + 'a>>;

    /// Settles presence changes this node decided against the other nodes before they are
    /// logged (a device may have moved to another node): returns those that stand, as
    /// they stand. Alone, every change stands.
    fn settle(&self, changes: Vec<Settling>) -> Vec<Settling> {
        changes
    }
}

/// A presence change on its way to a [`RemoteLog`]: when, whose, from which connection.
#[derive(Clone, Debug)]
pub struct Settling {
    pub received_ms: i64,
    pub device: Arc<str>,
    pub client_id: Arc<str>,
    pub connection: u64,
    pub change: Change,
}

/// One record for a [`RemoteLog`].
pub struct RemoteRecord<'a> {
    pub received_ms: i64,
    pub key: &'a str,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// One thing read from a device connection, in the order the connection produced it.
#[derive(Debug)]
pub struct Inbound {
    /// Client id given in the connection's CONNECT.
    pub client_id: Arc<str>,
    pub received_at: SystemTime,
    /// A publish's place in the write-ahead log, when there is one.
    pub position: Option<u64>,
    pub message: Message,
    /// Holds a publish's share of the hand-over budget until the pipeline drops it.
    _budget: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
pub enum Message {
    Publish {
        topic: Bytes,
        payload: Bytes,
    },
    /// A device came online or went offline, or a connection ended leaving a Last Will.
    Presence(Change),
}

/// Who is on one accepted connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// Unique for the life of the process, so a stale connection's end can be told apart
    /// from a newer connection of the same device.
    pub connection: u64,
    pub username: Option<Arc<str>>,
    /// Seconds, as the client asked in CONNECT.
    pub keep_alive: u16,
}

/// The broker-side end: cloned into every connection.
#[derive(Clone)]
pub struct Tap {
    /// Publishes go in batches (one per connection read), so the pipeline is woken once a
    /// batch, not once a publish.
    tx: mpsc::UnboundedSender<Vec<Inbound>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// `true` once closed. Senders hold the read lock while they send, so that when
    /// [`TapReceiver::close`] has the write lock, no send is half done.
    closed: Arc<RwLock<bool>>,
    publishes: metrics::Counter,
    log: Option<Logged>,
    /// Cluster mode: the shared log every publish goes to instead, and the queue presence
    /// changes go to it through.
    remote: Option<(Arc<dyn RemoteLog>, mpsc::UnboundedSender<Settling>)>,
    /// Who is online. Changes are decided and logged under this lock, so the log holds them
    /// in the order they were decided.
    presence: Arc<Mutex<Presence>>,
    online: metrics::Gauge,
}

/// The write-ahead log a tap appends to, and how much of it may wait for storage.
#[derive(Clone)]
struct Logged {
    wal: Arc<Wal>,
    spool_max_bytes: u64,
    /// Connections waiting for the log to take appends again.
    parked: Arc<AtomicUsize>,
}

/// Connections that may wait for the log at once (each holds a thread while it waits).
const MAX_PARKED: usize = 256;

/// The pipeline-side end.
pub struct TapReceiver {
    rx: mpsc::UnboundedReceiver<Vec<Inbound>>,
    /// The rest of the batch being read.
    pending: std::vec::IntoIter<Inbound>,
    closed: Arc<RwLock<bool>>,
}

/// Returned to a connection once the tap is closed, or when the log cannot take the publish:
/// the publish is not acknowledged, so the device keeps it.
#[derive(Debug, thiserror::Error)]
#[error("the broker is shutting down or cannot write its log")]
pub struct TapClosed;

/// Creates a tap whose queued publishes may hold at most `budget_bytes` of topic and payload.
/// With a `wal`, each publish is appended to it before it is handed over; while more than
/// `spool_max_bytes` of the log wait for storage, publishing connections wait too.
pub fn tap(budget_bytes: usize, wal: Option<(Arc<Wal>, u64)>) -> (Tap, TapReceiver) {
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
            log: wal.map(|(wal, spool_max_bytes)| Logged {
                wal,
                spool_max_bytes,
                parked: Arc::new(AtomicUsize::new(0)),
            }),
            remote: None,
            presence: Arc::new(Mutex::new(Presence::default())),
            online: metrics::gauge!("fieldline_devices_online"),
        },
        TapReceiver {
            rx,
            pending: Vec::new().into_iter(),
            closed,
        },
    )
}

/// A tap for cluster mode: every publish and presence change goes to `remote`, and is
/// acknowledged once it holds it. The receiver gets nothing but is kept for closing.
///
/// Presence changes are decided under a lock and must reach the log in that order, but a
/// connection must not wait for the log while it holds the lock (the runtime's threads would
/// all end up waiting on it). So they queue, in order, for one task that appends them.
pub fn remote_tap(remote: Arc<dyn RemoteLog>) -> (Tap, TapReceiver) {
    let (mut tap, rx) = tap(1, None);
    let (changes, mut queued) = mpsc::unbounded_channel::<Settling>();
    let log = remote.clone();
    tokio::spawn(async move {
        while let Some(first) = queued.recv().await {
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match queued.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            // Settling asks the other nodes and may wait: off the async threads.
            let settling = log.clone();
            let Ok(settled) = tokio::task::spawn_blocking(move || settling.settle(batch)).await
            else {
                continue;
            };
            let encoded: Vec<Vec<u8>> = settled.iter().map(|s| s.change.encode()).collect();
            let records: Vec<RemoteRecord<'_>> = settled
                .iter()
                .zip(&encoded)
                .map(|(s, record)| RemoteRecord {
                    received_ms: s.received_ms,
                    key: &s.device,
                    topic: LOG_TOPIC,
                    payload: record,
                })
                .collect();
            // A presence change lost would leave its device online (or offline) until it
            // connects again: offered until the log takes it, or the process ends.
            let mut warned = false;
            while log.append(&records).await.is_err() {
                if !warned {
                    tracing::warn!(
                        changes = records.len(),
                        "the shared log did not take presence changes; offering them again every second"
                    );
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    });
    tap.remote = Some((remote, changes));
    (tap, rx)
}

impl Tap {
    /// Hands one publish to the pipeline (see [`Tap::send_batch`]).
    pub fn send(
        &self,
        topic: Bytes,
        payload: Bytes,
        client_id: Arc<str>,
    ) -> Result<Option<u64>, TapClosed> {
        self.send_batch(vec![(topic, payload)], client_id)
    }

    /// Hands publishes one connection read together (`(topic, payload)`, in order) to the
    /// pipeline: one log append and one queue entry for all of them. Waits for budget if the
    /// pipeline is behind.
    ///
    /// Called from the connection's synchronous packet handling, so waiting uses
    /// `block_in_place`: it parks this connection's task and lets the runtime move other
    /// work to another thread. The broker therefore runs on a multi-threaded runtime.
    ///
    /// Returns the log position of the last one, which their acknowledgements must wait for
    /// ([`Tap::wait_durable`]).
    pub fn send_batch(
        &self,
        publishes: Vec<(Bytes, Bytes)>,
        client_id: Arc<str>,
    ) -> Result<Option<u64>, TapClosed> {
        let Some(last) = publishes.len().checked_sub(1) else {
            return Ok(None);
        };
        if self.remote.is_some() {
            // Cluster mode goes through `send_remote`, which the connection awaits.
            return Err(TapClosed);
        }
        refuse_log_topics(&publishes, &client_id)?;
        // Budget first, with no lock held: a sender parked here must never keep the closer
        // (and, behind a waiting writer, every other sender) off the lock. Taken for the
        // whole batch at once, then shared out, so that each publish gives its share back
        // when the pipeline is done with it. A batch larger than the whole budget takes the
        // whole budget.
        let costs: Vec<usize> = publishes
            .iter()
            .map(|(topic, payload)| (topic.len() + payload.len()).clamp(1, self.budget_bytes))
            .collect();
        let total = costs.iter().sum::<usize>().clamp(1, self.budget_bytes);
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        let mut permit = match self.budget.clone().try_acquire_many_owned(total) {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("fieldline_broker_backpressure_waits_total").increment(1);
                let budget = self.budget.clone();
                let acquired = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(budget.acquire_many_owned(total))
                });
                acquired.map_err(|_| TapClosed)?
            }
        };
        let received_at = SystemTime::now();
        let mut batch: Vec<Inbound> = publishes
            .iter()
            .zip(&costs)
            .map(|((topic, payload), cost)| Inbound {
                client_id: client_id.clone(),
                received_at,
                position: None,
                message: Message::Publish {
                    topic: topic.clone(),
                    payload: payload.clone(),
                },
                _budget: permit.split(*cost),
            })
            .collect();
        // What is left of the permit (a batch over the budget) goes with the last publish.
        if permit.num_permits() > 0 {
            if let Some(inbound) = batch.last_mut() {
                match inbound._budget.as_mut() {
                    Some(share) => share.merge(permit),
                    None => inbound._budget = Some(permit),
                }
            }
        }
        let mut batch = Some(batch);
        let Some(log) = &self.log else {
            let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
            if *closed {
                return Err(TapClosed);
            }
            return self.hand_over(batch.take()).map(|()| None);
        };
        let received_ms = crate::wal::now_ms_of(received_at);
        let records: Vec<(&[u8], &[u8])> = publishes
            .iter()
            .map(|(topic, payload)| (topic.as_ref(), payload.as_ref()))
            .collect();
        let mut waited = false;
        loop {
            self.wait_for_spool(log)?;
            {
                // Held only for the check, the append and the (non-blocking) send, so that
                // once `closer` has the write lock, no publish is half handed over. A
                // poisoned lock only means a sender panicked; the flag is still valid.
                let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
                if *closed {
                    return Err(TapClosed);
                }
                // Appended and queued under the log's lock: the pipeline sees publishes in
                // log order, so "stored up to N" means every record up to N.
                let appended = log.wal.append_batch(received_ms, &records, |first| {
                    let mut handed = batch.take();
                    for (position, inbound) in (first..).zip(handed.iter_mut().flatten()) {
                        inbound.position = Some(position);
                    }
                    (first + last as u64, self.hand_over(handed))
                });
                match appended {
                    Ok((position, handed)) => return handed.map(|()| Some(position)),
                    Err(e) if !waited => {
                        tracing::error!(error = %e, "cannot append to the write-ahead log (disk full?): devices are not read until it takes appends again; nothing unwritten is acknowledged");
                    }
                    Err(_) => {}
                }
            }
            // The log cannot take it (disk full, I/O error): this connection waits and
            // tries again, so TCP slows the device; the publish is not acknowledged meanwhile.
            waited = true;
            self.park(log, || false)?;
        }
    }

    /// Whether publishes go to a shared log ([`Tap::send_remote`]) instead.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Cluster mode: the publishes go to the shared log, keyed by the device their topic
    /// names (or, for other topics, the client). Resolves once it holds them.
    pub async fn send_remote(
        &self,
        publishes: &[(Bytes, Bytes)],
        client_id: &Arc<str>,
    ) -> Result<(), TapClosed> {
        let Some((remote, _)) = &self.remote else {
            return Err(TapClosed);
        };
        if *self.closed.read().unwrap_or_else(|e| e.into_inner()) {
            return Err(TapClosed);
        }
        refuse_log_topics(publishes, client_id)?;
        let received_ms = crate::wal::now_ms_of(SystemTime::now());
        let records: Vec<RemoteRecord<'_>> = publishes
            .iter()
            .map(|(topic, payload)| RemoteRecord {
                received_ms,
                key: device_of_topic(topic).unwrap_or(client_id),
                topic,
                payload,
            })
            .collect();
        remote.append(&records).await?;
        self.publishes.increment(records.len() as u64);
        Ok(())
    }

    /// Queues inbound messages for the pipeline, as one entry.
    fn hand_over(&self, batch: Option<Vec<Inbound>>) -> Result<(), TapClosed> {
        let count = batch.as_ref().map_or(0, Vec::len) as u64;
        let sent = batch.is_some_and(|batch| self.tx.send(batch).is_ok());
        if !sent {
            // The pipeline is gone; refusing here keeps the publish unacknowledged, so the
            // device keeps it. Counted because it means the service is failing.
            metrics::counter!("fieldline_broker_lost_messages_total").increment(count.max(1));
            return Err(TapClosed);
        }
        self.publishes.increment(count);
        Ok(())
    }

    /// While the log holds more unstored bytes than the spool allows (storage is down or
    /// slow), the publishing connection waits: TCP then slows the device, and nothing is
    /// acknowledged that the log could not keep.
    fn wait_for_spool(&self, log: &Logged) -> Result<(), TapClosed> {
        if log.wal.unstored_bytes() <= log.spool_max_bytes {
            return Ok(());
        }
        metrics::counter!("fieldline_wal_spool_full_waits_total").increment(1);
        while log.wal.unstored_bytes() > log.spool_max_bytes {
            self.park(log, || log.wal.unstored_bytes() <= log.spool_max_bytes)?;
        }
        Ok(())
    }

    /// Parks this connection (off the async threads) until `ready` holds or 100 ms passed.
    /// At most [`MAX_PARKED`] connections wait at once; beyond that a connection is closed
    /// instead (its publish unacknowledged), so waiting never takes every thread.
    fn park(&self, log: &Logged, ready: impl Fn() -> bool) -> Result<(), TapClosed> {
        if log.parked.fetch_add(1, Ordering::AcqRel) >= MAX_PARKED {
            log.parked.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("fieldline_wal_refused_publishes_total").increment(1);
            return Err(TapClosed);
        }
        let result = tokio::task::block_in_place(|| {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(100);
            while !ready() && std::time::Instant::now() < until {
                if *self.closed.read().unwrap_or_else(|e| e.into_inner()) {
                    return Err(TapClosed);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(())
        });
        log.parked.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Blocks until the publish at `position` is as durable as the log's mode promises:
    /// its PUBACK may be written then. A no-op without a log and in `process` mode.
    pub fn wait_durable(&self, position: u64) {
        if let Some(log) = &self.log {
            if !log.wal.is_durable(position) {
                tokio::task::block_in_place(|| log.wal.wait_durable(position));
            }
        }
    }

    /// The broker accepted a connection (its CONNACK was written).
    pub fn connected(&self, client_id: Arc<str>, session: &Session) {
        self.presence_changed(client_id, session, |presence, device| {
            presence.connected(device, session.connection)
        });
    }

    /// An accepted connection ended; `will` is its Last Will when it ended without a
    /// DISCONNECT.
    pub fn ended(
        &self,
        client_id: Arc<str>,
        session: &Session,
        reason: DisconnectReason,
        will: Option<Will>,
    ) {
        self.presence_changed(client_id, session, |presence, device| {
            presence.ended(device, session.connection, reason, will)
        });
    }

    /// Decides what a connection's start or end changes, then logs and hands over the change.
    /// Costs no budget (it is tiny and must not wait), and is dropped once the tap is closed:
    /// presence ends with the process.
    fn presence_changed(
        &self,
        client_id: Arc<str>,
        session: &Session,
        decide: impl FnOnce(&mut Presence, &Arc<str>) -> Option<Change>,
    ) {
        let Some(device) = device_of(session.username.as_deref(), &client_id) else {
            return;
        };
        let device: Arc<str> = Arc::from(device);
        let closed = self.closed.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return;
        }
        let mut presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let Some(change) = decide(&mut presence, &device) else {
            return;
        };
        self.online.set(presence.online_devices() as f64);
        let received_at = SystemTime::now();
        if let Some((_, changes)) = &self.remote {
            // Queued under the presence lock, so the shared log holds changes in the order
            // they were decided. A change the log refuses (the node is stopping) is lost with
            // the node, as presence is.
            let _ = changes.send(Settling {
                received_ms: crate::wal::now_ms_of(received_at),
                device,
                client_id,
                connection: session.connection,
                change,
            });
            return;
        }
        let record = self.log.as_ref().map(|_| change.encode());
        let mut inbound = Some(Inbound {
            client_id,
            received_at,
            position: None,
            message: Message::Presence(change),
            _budget: None,
        });
        if let (Some(log), Some(record)) = (&self.log, record) {
            let received_ms = crate::wal::now_ms_of(received_at);
            let appended = log.wal.append(received_ms, LOG_TOPIC, &record, |position| {
                if let Some(mut m) = inbound.take() {
                    m.position = Some(position);
                    let _ = self.tx.send(vec![m]);
                }
            });
            if let Err(e) = appended {
                // A presence change cannot wait for the disk like a publish: it goes on
                // without a log position (stored with the next batch, but not rebuilt into
                // the live history after a restart).
                tracing::warn!(error = %e, "cannot log a presence change");
            }
        }
        if let Some(inbound) = inbound {
            let _ = self.tx.send(vec![inbound]);
        }
    }

    /// Devices connected now.
    pub fn online_devices(&self) -> usize {
        self.presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .online_devices()
    }

    /// Bytes currently waiting between the broker and the pipeline.
    pub fn queued_bytes(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }
}

/// Refuses publishes to a topic that starts with the log's own first byte: not UTF-8, so not
/// an MQTT topic (the protocol says to close the connection), and the log keeps such topics
/// for records of its own.
fn refuse_log_topics(publishes: &[(Bytes, Bytes)], client_id: &str) -> Result<(), TapClosed> {
    if publishes
        .iter()
        .any(|(topic, _)| topic.first() == Some(&LOG_TOPIC[0]))
    {
        tracing::info!(client_id = %client_id, "publish to a topic that is not UTF-8; closing the connection");
        metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
        return Err(TapClosed);
    }
    Ok(())
}

/// The device a topic of the form `devices/{id}/...` names.
fn device_of_topic(topic: &[u8]) -> Option<&str> {
    let rest = topic.strip_prefix(b"devices/")?;
    let end = rest.iter().position(|b| *b == b'/')?;
    std::str::from_utf8(&rest[..end])
        .ok()
        .filter(|d| !d.is_empty())
}

impl TapReceiver {
    /// The next publish, or `None` once the tap is closed and drained.
    pub async fn recv(&mut self) -> Option<Inbound> {
        loop {
            if let Some(inbound) = self.pending.next() {
                return Some(inbound);
            }
            self.pending = self.rx.recv().await?.into_iter();
        }
    }

    /// Everything already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Inbound> {
        loop {
            if let Some(inbound) = self.pending.next() {
                return Some(inbound);
            }
            self.pending = self.rx.try_recv().ok()?.into_iter();
        }
    }

    /// Stops the hand-over: from the moment this returns, no connection can add a publish,
    /// and every publish handed over before it is in this receiver's queue. Connections that
    /// try to publish afterwards are closed without an acknowledgement.
    ///
    /// Waiting for the lock blocks until in-progress sends finish (they never wait while
    /// holding it), so call it from a blocking thread while the pipeline keeps reading.
    pub fn closer(&self) -> impl FnOnce() + Send + 'static {
        let closed = self.closed.clone();
        move || {
            let mut closed = closed.write().unwrap_or_else(|e| e.into_inner());
            *closed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(tap: &Tap, topic: &str, payload_len: usize) -> Result<(), TapClosed> {
        tap.send(
            Bytes::from(topic.to_owned()),
            Bytes::from(vec![b'x'; payload_len]),
            Arc::from("client"),
        )
        .map(|_| ())
    }

    fn topic(msg: Inbound) -> String {
        match msg.message {
            Message::Publish { topic, .. } => String::from_utf8_lossy(&topic).into_owned(),
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    // block_in_place needs the multi-threaded runtime, as in the service.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hands_over_in_order_and_refuses_once_closed() {
        let (tap, mut rx) = tap(1024, None);
        for i in 0..3 {
            send(&tap, &format!("t{i}"), 10).expect("an open tap takes publishes");
        }
        tokio::task::spawn_blocking(rx.closer())
            .await
            .expect("closer runs");
        assert!(
            send(&tap, "late", 10).is_err(),
            "nothing is taken after close"
        );
        let mut topics = Vec::new();
        while let Some(msg) = rx.try_recv() {
            topics.push(topic(msg));
        }
        assert_eq!(topics, ["t0", "t1", "t2"]);
        assert_eq!(
            tap.queued_bytes(),
            0,
            "consumed messages return their budget"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spent_budget_makes_the_sender_wait_instead_of_dropping() {
        let (tap, mut rx) = tap(100, None);
        let sender = {
            let tap = tap.clone();
            // Each message costs 62 bytes: one cannot start until the one before is consumed.
            tokio::spawn(async move {
                (0..5)
                    .map(|i| send(&tap, &format!("t{i}"), 60))
                    .collect::<Vec<_>>()
            })
        };
        let mut topics = Vec::new();
        for _ in 0..5 {
            let msg = rx.recv().await.expect("every message arrives");
            assert!(tap.queued_bytes() <= 100, "the budget bounds what waits");
            topics.push(topic(msg));
        }
        let results = sender.await.expect("sender finishes");
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(topics, ["t0", "t1", "t2", "t3", "t4"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_waits_for_a_sender_parked_on_the_budget() {
        let (tap, mut rx) = tap(100, None);
        send(&tap, "first", 90).expect("fits the budget");
        let parked = {
            let tap = tap.clone();
            tokio::spawn(async move { send(&tap, "second", 90) })
        };
        // Close while "second" may be waiting for budget; keep draining as the service does.
        let mut closer = tokio::task::spawn_blocking(rx.closer());
        let mut topics = Vec::new();
        loop {
            tokio::select! {
                _ = &mut closer => break,
                Some(msg) = rx.recv() => topics.push(topic(msg)),
            }
        }
        while let Some(msg) = rx.try_recv() {
            topics.push(topic(msg));
        }
        // Either it got in before the close and was drained, or it was refused (no PUBACK):
        // never taken and then lost.
        match parked.await.expect("parked sender finishes") {
            Ok(()) => assert_eq!(topics, ["first", "second"]),
            Err(TapClosed) => assert_eq!(topics, ["first"]),
        }
    }
}
