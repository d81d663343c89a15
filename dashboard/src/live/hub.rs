//! The hub: numbers events, keeps the resume history, and fans events out to client queues.
//!
//! With a write-ahead log, an event's offset comes from its message's place in the log
//! (position × 65,536 + its document's index in the payload), and the epoch belongs to the
//! log. Replaying the log at start-up then gives every event the id it had before the
//! restart, so a client resumes across restarts with exactly what it missed. Without a log
//! (`--durability memory`) offsets simply count, and the epoch is new at every start.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldline_ingest::document::{Body, Document};
use fieldline_ingest::events::EventFeed;
use fieldline_ingest::{LiveFeed, Origin};
use fieldline_store::derived::Event;
use fieldline_store::time_format::now_ms;
use tokio::sync::Notify;

use super::event::{LiveEvent, Payload};
use super::filter::Filter;
use super::position::Position;
use super::queue::{ClientQueue, Pushed};

#[derive(Clone, Debug)]
pub struct HubSettings {
    /// Events kept for resume, at most ...
    pub history_events: usize,
    /// ... and for at most this long.
    pub history_age: Duration,
    /// Events one client may have waiting before its streams are conflated.
    pub client_queue: usize,
    /// A client whose queue is full and who has taken nothing for this long is cut off.
    pub stall_limit: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            history_events: 100_000,
            history_age: Duration::from_secs(600),
            client_queue: 4_096,
            stall_limit: Duration::from_secs(30),
        }
    }
}

/// Events handed to a client's writer.
pub enum Outgoing {
    Event {
        event: Arc<LiveEvent>,
        skipped: u64,
    },
    /// The client cannot get every event it asked for: it should reload from the REST API.
    /// Events after `position` follow.
    Reset {
        reason: &'static str,
        position: Position,
    },
    /// The hub stopped serving this client; say why and close.
    Closed {
        reason: &'static str,
    },
}

struct Client {
    id: u64,
    filter: Filter,
    queue: Mutex<ClientQueue>,
    wake: Notify,
}

/// Offsets per log record: a payload holds at most 1,000 documents, and a connection's
/// offline status takes the record's last index.
const EVENTS_PER_RECORD: u64 = 1 << 16;

struct State {
    /// The newest document event's offset. Offsets start above 0, so `{epoch}-0` means "from
    /// the start"; they grow with every event, not always by one.
    last_offset: u64,
    /// The newest derived event's seq (the outbox cursor).
    last_outbox: u64,
    /// The position of the newest event no longer held: a client resuming from before it
    /// gets a reset.
    evicted_through: Position,
    /// Stored derived events to rebuild the history with at start-up, oldest first: each
    /// goes in after the documents of the log record that caused it.
    rebuilding: VecDeque<Arc<Event>>,
    history: VecDeque<Arc<LiveEvent>>,
    /// Each device's newest position, for bounding-box filters on its other events.
    positions: HashMap<Arc<str>, (f64, f64)>,
    /// Clients without a device filter see every event (then filter on kind and box) ...
    everyone: Vec<Arc<Client>>,
    /// ... and those with one are found through the event's device.
    by_device: HashMap<Arc<str>, Vec<Arc<Client>>>,
}

pub struct Hub {
    epoch: u64,
    /// Offsets are numbered from log positions.
    follows_log: bool,
    settings: HubSettings,
    state: Mutex<State>,
    next_client: AtomicU64,
    published: metrics::Counter,
    conflated: metrics::Counter,
    history_len: metrics::Gauge,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a hub lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub without a log: a new epoch at every start, and offsets that count events.
    pub fn new(settings: HubSettings) -> Arc<Self> {
        // Microseconds since 1970: a new epoch at every start, and ids sort by start.
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self::build(settings, epoch, false, 0)
    }

    /// A hub whose events are numbered by their place in the write-ahead log, under the
    /// log's `epoch`. Its history is rebuilt by replaying the log from `first_position`, the
    /// oldest record the log still has: events before it are not held.
    pub fn following_log(settings: HubSettings, epoch: u64, first_position: u64) -> Arc<Self> {
        let floor = first_position
            .saturating_mul(EVENTS_PER_RECORD)
            .saturating_sub(1);
        Self::build(settings, epoch, true, floor)
    }

    fn build(settings: HubSettings, epoch: u64, follows_log: bool, floor: u64) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            follows_log,
            settings,
            state: Mutex::new(State {
                last_offset: floor,
                last_outbox: 0,
                evicted_through: Position {
                    epoch,
                    offset: floor,
                    outbox: 0,
                },
                rebuilding: VecDeque::new(),
                history: VecDeque::new(),
                positions: HashMap::new(),
                everyone: Vec::new(),
                by_device: HashMap::new(),
            }),
            next_client: AtomicU64::new(1),
            published: metrics::counter!("fieldline_live_events_total"),
            conflated: metrics::counter!("fieldline_live_conflated_events_total"),
            history_len: metrics::gauge!("fieldline_live_history_events"),
        })
    }

    /// The position of the newest event (offset 0 before the first).
    pub fn head(&self) -> Position {
        let state = lock(&self.state);
        Position {
            epoch: self.epoch,
            offset: state.last_offset,
            outbox: state.last_outbox,
        }
    }

    /// Sets where derived events start: `floor` is the newest stored event the history does
    /// not hold, and `rebuild` the stored events after it, which go back into the history as
    /// the log replay reaches the records that caused them ([`LiveFeed::replayed`] places the
    /// rest). Call before the replay.
    pub fn start_outbox(&self, floor: u64, rebuild: Vec<Arc<Event>>) {
        let mut state = lock(&self.state);
        state.last_outbox = floor;
        state.evicted_through.outbox = floor;
        state.rebuilding = rebuild.into();
    }

    /// Gives devices their newest stored position before the history is rebuilt, so that
    /// bounding-box filters place the rebuilt events of a device whose last fix is older than
    /// the log (as live delivery placed them; a device whose newest stored fix is among the
    /// rebuilt ones is placed by that fix until the rebuild reaches it).
    pub fn seed_positions(&self, positions: impl IntoIterator<Item = (String, f64, f64)>) {
        let mut state = lock(&self.state);
        for (device, lat, lon) in positions {
            state.positions.insert(Arc::from(device), (lat, lon));
        }
    }

    /// Registers a client. With `since`, the events after it that the history still holds are
    /// replayed first; when they are not all held (or `since` is from another epoch), the
    /// subscription starts with a reset.
    pub fn subscribe(self: &Arc<Self>, filter: Filter, since: Option<Position>) -> Subscription {
        let client = Arc::new(Client {
            id: self.next_client.fetch_add(1, Ordering::Relaxed),
            filter,
            queue: Mutex::new(ClientQueue::new(self.settings.client_queue)),
            wake: Notify::new(),
        });
        let mut state = lock(&self.state);
        match client.filter.devices() {
            Some(devices) => {
                for device in devices {
                    state
                        .by_device
                        .entry(device.clone())
                        .or_default()
                        .push(client.clone());
                }
            }
            None => state.everyone.push(client.clone()),
        }
        let head = Position {
            epoch: self.epoch,
            offset: state.last_offset,
            outbox: state.last_outbox,
        };
        let (replay, reset) = match since {
            None => (None, None),
            Some(p) if p.epoch != self.epoch => (
                None,
                Some("the server restarted or lost its history since that position"),
            ),
            Some(p) if !head.covers(&p) => {
                (None, Some("that position is not one of this stream's"))
            }
            Some(p) if !p.covers(&state.evicted_through) => {
                (None, Some("events after that position are no longer held"))
            }
            Some(p) if p == head => (None, None),
            Some(p) => (
                Some(Replay {
                    since: p,
                    scanned: p,
                    sent: p,
                    end: head,
                }),
                None,
            ),
        };
        drop(state);
        if let Some(reason) = reset {
            metrics::counter!("fieldline_live_resets_total", "reason" => "resume").increment(1);
            tracing::debug!(reason, "live client resumes with a reset");
        }
        Subscription {
            hub: self.clone(),
            client,
            replay,
            reset,
            live_from: head,
        }
    }

    fn unsubscribe(&self, client: &Client) {
        let mut state = lock(&self.state);
        match client.filter.devices() {
            Some(devices) => {
                for device in devices {
                    if let Some(list) = state.by_device.get_mut(device) {
                        list.retain(|c| c.id != client.id);
                        if list.is_empty() {
                            state.by_device.remove(device);
                        }
                    }
                }
            }
            None => state.everyone.retain(|c| c.id != client.id),
        }
    }

    /// Up to `max` events of the replay that `filter` matches and the client has not seen,
    /// from the history; `Err` when events it has not seen have left the history.
    fn replay_chunk(
        &self,
        replay: &mut Replay,
        filter: &Filter,
        max: usize,
    ) -> Result<Vec<Arc<LiveEvent>>, ()> {
        let state = lock(&self.state);
        if !replay.scanned.covers(&state.evicted_through) {
            return Err(());
        }
        let mut out = Vec::new();
        // Positions grow along the history, so the first event not yet scanned is found by
        // bisection.
        let from = state
            .history
            .partition_point(|e| replay.scanned.covers(&e.position));
        for event in state.history.range(from..) {
            if !replay.end.covers(&event.position) || out.len() >= max {
                break;
            }
            replay.scanned = event.position;
            if event.seen_at(&replay.since) || !filter.matches(event) {
                continue;
            }
            // A history rebuilt after a restart may interleave documents and derived events
            // otherwise than the client saw them: its id must keep both of its cursors.
            let id = replay.sent.furthest(&event.position);
            replay.sent = id;
            out.push(if id == event.position {
                event.clone()
            } else {
                Arc::new(event.at(id))
            });
        }
        if out.len() < max {
            replay.scanned = replay.end;
        }
        Ok(out)
    }

    /// Ends every subscription with `reason` (at shutdown), so streams close instead of
    /// holding the HTTP server open.
    pub fn close_all(&self, reason: &'static str) {
        let state = lock(&self.state);
        for client in state
            .everyone
            .iter()
            .chain(state.by_device.values().flatten())
        {
            lock(&client.queue).closed = Some(reason);
            client.wake.notify_one();
        }
    }

    /// Queue depths across clients: (clients, events waiting in all queues, deepest queue).
    pub fn queue_depths(&self) -> (usize, usize, usize) {
        let state = lock(&self.state);
        let mut seen = std::collections::HashSet::new();
        let (mut total, mut deepest) = (0, 0);
        let clients = state
            .everyone
            .iter()
            .chain(state.by_device.values().flatten());
        for client in clients {
            if seen.insert(client.id) {
                let len = lock(&client.queue).len();
                total += len;
                deepest = deepest.max(len);
            }
        }
        (seen.len(), total, deepest)
    }

    fn deliver(&self, client: &Client, event: &Arc<LiveEvent>) -> bool {
        let mut queue = lock(&client.queue);
        let was_empty = queue.is_empty();
        let outcome = queue.push(event.clone(), self.settings.stall_limit);
        drop(queue);
        let cut_off = match outcome {
            Pushed::Queued => false,
            Pushed::Conflated { dropped } => {
                self.conflated.increment(dropped);
                false
            }
            Pushed::Overflowed => {
                metrics::counter!("fieldline_live_resets_total", "reason" => "overflow")
                    .increment(1);
                false
            }
            Pushed::Stalled => {
                metrics::counter!("fieldline_live_disconnects_total", "reason" => "stalled")
                    .increment(1);
                tracing::info!(
                    client = client.id,
                    "live client stopped reading; cutting it off"
                );
                true
            }
        };
        if was_empty || cut_off {
            client.wake.notify_one();
        }
        cut_off
    }
}

impl LiveFeed for Hub {
    /// The stored events the replay did not reach go into the history now.
    fn replayed(&self) {
        let mut guard = lock(&self.state);
        let pending: Vec<_> = guard.rebuilding.drain(..).collect();
        let mut cut_off = Vec::new();
        for event in pending {
            self.place_derived(&mut guard, event, &mut cut_off);
        }
        drop(guard);
        self.unsubscribe_all(cut_off);
    }

    /// The oldest log position the history still holds events of; `None` without a log,
    /// or with nothing held.
    fn oldest_held_record(&self) -> Option<u64> {
        if !self.follows_log {
            return None;
        }
        let state = lock(&self.state);
        state
            .history
            .front()
            .map(|e| e.position.offset / EVENTS_PER_RECORD)
    }

    fn publish(&self, document: Arc<Document>, origin: Origin) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let mut cut_off = Vec::new();
        // Rebuilding: the stored events caused by earlier records go in first.
        while let (Some(front), Some(position)) = (state.rebuilding.front(), origin.position) {
            if front
                .log_position
                .is_some_and(|caused_by| caused_by >= position)
            {
                break;
            }
            if let Some(event) = state.rebuilding.pop_front() {
                self.place_derived(state, event, &mut cut_off);
            }
        }
        // The first event of a log record takes the record's slot; the record's further
        // events (and any event without a log position) the offsets after it.
        let numbered = origin
            .position
            .filter(|_| self.follows_log)
            .and_then(|p| p.checked_mul(EVENTS_PER_RECORD))
            .map(|slot| slot + u64::from(origin.index));
        state.last_offset = match numbered {
            Some(offset) if offset > state.last_offset => offset,
            _ => state.last_offset + 1,
        };
        let position = Position {
            epoch: self.epoch,
            offset: state.last_offset,
            outbox: state.last_outbox,
        };
        let device_position = match &document.body {
            Body::Location(l) => {
                match state.positions.get_mut(&*document.device) {
                    Some(p) => *p = (l.lat, l.lon),
                    None => {
                        state
                            .positions
                            .insert(document.device.clone(), (l.lat, l.lon));
                    }
                }
                Some((l.lat, l.lon))
            }
            _ => state.positions.get(&*document.device).copied(),
        };
        let event = Arc::new(LiveEvent::new(
            position,
            Payload::Document(document),
            device_position,
            origin.received_ms,
        ));
        self.append(state, event, &mut cut_off);
        drop(guard);
        self.unsubscribe_all(cut_off);
    }
}

impl EventFeed for Hub {
    fn committed(&self, events: &[Arc<Event>]) {
        let mut guard = lock(&self.state);
        let mut cut_off = Vec::new();
        // Stored before these: any not yet placed by the rebuild go first.
        let rebuilt: Vec<_> = guard.rebuilding.drain(..).collect();
        for event in rebuilt.into_iter().chain(events.iter().cloned()) {
            self.place_derived(&mut guard, event, &mut cut_off);
        }
        drop(guard);
        self.unsubscribe_all(cut_off);
    }
}

impl Hub {
    /// Appends a derived event after everything emitted so far.
    fn place_derived(&self, state: &mut State, event: Arc<Event>, cut_off: &mut Vec<Arc<Client>>) {
        if event.seq <= state.last_outbox {
            return; // placed already (rebuilt from storage)
        }
        state.last_outbox = event.seq;
        let position = Position {
            epoch: self.epoch,
            offset: state.last_offset,
            outbox: event.seq,
        };
        let device_position = state.positions.get(&*event.device).copied();
        let live = Arc::new(LiveEvent::new(
            position,
            Payload::Derived(event),
            device_position,
            now_ms(),
        ));
        self.append(state, live, cut_off);
    }

    /// Adds an event to the history and hands it to the clients that want it.
    fn append(&self, state: &mut State, event: Arc<LiveEvent>, cut_off: &mut Vec<Arc<Client>>) {
        state.history.push_back(event.clone());
        let oldest_kept = now_ms().saturating_sub(self.settings.history_age.as_millis() as i64);
        while state.history.len() > self.settings.history_events
            || state
                .history
                .front()
                .is_some_and(|e| e.received_ms < oldest_kept)
        {
            if let Some(evicted) = state.history.pop_front() {
                state.evicted_through = evicted.position;
            }
        }
        let targeted = state.by_device.get(event.device());
        for client in state.everyone.iter().chain(targeted.into_iter().flatten()) {
            if client.filter.matches(&event) && self.deliver(client, &event) {
                cut_off.push(client.clone());
            }
        }
        self.published.increment(1);
        self.history_len.set(state.history.len() as f64);
    }

    fn unsubscribe_all(&self, cut_off: Vec<Arc<Client>>) {
        for client in cut_off {
            // Its queue is closed and empty: stop spending anything on it.
            self.unsubscribe(&client);
        }
    }
}

/// One client's view of the hub: replayed history first, then live events. Dropping it
/// unregisters the client.
pub struct Subscription {
    hub: Arc<Hub>,
    client: Arc<Client>,
    replay: Option<Replay>,
    reset: Option<&'static str>,
    /// The newest event before this client's live queue began.
    live_from: Position,
}

/// A resumed client's way through the history.
struct Replay {
    /// Where the client resumed from: it has seen the events this covers.
    since: Position,
    /// The newest history position examined.
    scanned: Position,
    /// The id of the newest event sent.
    sent: Position,
    /// The head when it subscribed: its live queue has what comes after.
    end: Position,
}

/// Events per replay step, so a long replay never holds the hub for long.
const REPLAY_CHUNK: usize = 512;

impl Subscription {
    /// The next events to send, waiting until there is at least one.
    pub async fn next(&mut self) -> Vec<Outgoing> {
        if let Some(reason) = self.reset.take() {
            return vec![Outgoing::Reset {
                reason,
                position: self.live_from,
            }];
        }
        while let Some(replay) = &mut self.replay {
            // Replaying counts as reading: a client catching up is not stalled.
            lock(&self.client.queue).touch();
            match self
                .hub
                .replay_chunk(replay, &self.client.filter, REPLAY_CHUNK)
            {
                Ok(events) => {
                    if replay.scanned == replay.end {
                        self.replay = None;
                    }
                    if !events.is_empty() {
                        return events
                            .into_iter()
                            .map(|event| Outgoing::Event { event, skipped: 0 })
                            .collect();
                    }
                }
                Err(()) => {
                    self.replay = None;
                    metrics::counter!("fieldline_live_resets_total", "reason" => "resume")
                        .increment(1);
                    return vec![Outgoing::Reset {
                        reason: "events after that position left the history during the replay",
                        position: self.live_from,
                    }];
                }
            }
        }
        loop {
            {
                let mut queue = lock(&self.client.queue);
                if let Some(reason) = queue.closed {
                    return vec![Outgoing::Closed { reason }];
                }
                let mut out = Vec::new();
                if let Some((reason, position)) = queue.reset.take() {
                    out.push(Outgoing::Reset { reason, position });
                }
                out.extend(queue.take().into_iter().map(|q| Outgoing::Event {
                    event: q.event,
                    skipped: q.skipped,
                }));
                if !out.is_empty() {
                    return out;
                }
            }
            self.client.wake.notified().await;
        }
    }
}

impl Subscription {
    /// Where this client stands before its first event, when that is already known: the
    /// stream head for a fresh subscription. `None` while history is still to be replayed.
    pub fn start_position(&self) -> Option<Position> {
        (self.replay.is_none() && self.reset.is_none()).then_some(self.live_from)
    }

    /// Starts the stream with a reset, e.g. when the client's resume position was garbage.
    pub fn reset_first(&mut self, reason: &'static str) {
        self.replay = None;
        self.reset = Some(reason);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.client);
    }
}
