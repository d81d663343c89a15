//! The stored kinds of several devices merged into one time-ordered run of events.
//!
//! Each device's locations, telemetry and statuses are read by its own keyset cursor a chunk
//! at a time, and geofence and alert events of all the devices by time windows; a heap picks
//! the next item across them. Memory is one chunk per cursor, whatever the range.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use fieldline_ingest::document::{Body, Document, Metric, Status, Telemetry};
use fieldline_store::derived::{Event, EventKind};
use fieldline_store::{EventQuery, StatusPoint, TelemetryPoint, TrackPoint};
use fieldline_store::{Store, StoreError};

use super::ReplayKind;
use crate::live::Payload;
use crate::paging::TimePager;

/// Rows per read of one device's kind (at most): 100 devices of three kinds hold 225,000 at
/// most (a chunk and a half each, with read-ahead).
const CHUNK_ROWS: u32 = 500;
/// A cursor with fewer buffered than this is read ahead while the player waits, so that the
/// devices' chunks, which run out together, are not all read at once on the hot path.
const READ_AHEAD_BELOW: usize = CHUNK_ROWS as usize / 2;
/// Events per read of a window; a window that held more than this is halved next time.
const EVENT_PAGE: u32 = 2_000;
/// Event windows start at an hour, grow over quiet stretches, and stay within these.
const MIN_WINDOW_MS: i64 = 1_000;
const MAX_WINDOW_MS: i64 = 366 * 86_400_000;

/// The order of items: time, then kind, then device (by name), then the cursor's own order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub ts_ms: i64,
    pub kind: ReplayKind,
    pub device: u32,
}

pub struct Item {
    pub key: Key,
    pub payload: Payload,
}

enum Reader {
    Track(TimePager<TrackPoint>),
    Telemetry(TimePager<TelemetryPoint>),
    Status(TimePager<StatusPoint>),
    Events(EventWindows),
}

struct Cursor {
    reader: Reader,
    /// The device's place among the replay's devices, and its id (shared by its documents).
    device: u32,
    name: Arc<str>,
    buffer: VecDeque<Item>,
    done: bool,
}

pub struct Source {
    cursors: Vec<Cursor>,
    /// The head of every cursor that has buffered items.
    heap: BinaryHeap<Reverse<(Key, usize)>>,
    /// Cursors with nothing buffered that may still have rows: read before the next pick.
    hungry: Vec<usize>,
}

impl Source {
    /// Everything of `kinds` for `devices` (sorted) in `[from_ms, to_ms)`.
    pub fn new(
        store: &Arc<dyn Store>,
        devices: &[String],
        kinds: &[ReplayKind],
        from_ms: i64,
        to_ms: i64,
    ) -> Source {
        let mut cursors = Vec::new();
        for (i, device) in devices.iter().enumerate() {
            // Chunk sizes differ a little between devices, so devices reporting at the same
            // rate do not all run low, and get read, at the same moment.
            let rows = CHUNK_ROWS - (i as u32 * 37) % (CHUNK_ROWS / 2);
            for kind in kinds {
                let reader = match kind {
                    ReplayKind::Location => Reader::Track(
                        TimePager::new(store.clone(), device, from_ms, to_ms).page_rows(rows),
                    ),
                    ReplayKind::Telemetry => Reader::Telemetry(
                        TimePager::new(store.clone(), device, from_ms, to_ms).page_rows(rows),
                    ),
                    ReplayKind::Status => Reader::Status(
                        TimePager::new(store.clone(), device, from_ms, to_ms).page_rows(rows),
                    ),
                    ReplayKind::Geofence | ReplayKind::Alert => continue,
                };
                cursors.push(Cursor::new(reader, i as u32, device));
            }
        }
        let event_kinds: Vec<EventKind> = kinds
            .iter()
            .filter_map(|k| match k {
                ReplayKind::Geofence => Some(EventKind::Geofence),
                ReplayKind::Alert => Some(EventKind::Alert),
                _ => None,
            })
            .collect();
        if !event_kinds.is_empty() {
            let windows = EventWindows {
                store: store.clone(),
                devices: devices.to_vec(),
                kinds: event_kinds,
                from_ms,
                to_ms,
                window_ms: 3_600_000,
            };
            cursors.push(Cursor::new(Reader::Events(windows), 0, ""));
        }
        Source {
            hungry: (0..cursors.len()).collect(),
            cursors,
            heap: BinaryHeap::new(),
        }
    }

    /// Whether every cursor that may have more has some buffered: the head is then the next
    /// item of the whole replay.
    pub fn ready(&self) -> bool {
        self.hungry.is_empty()
    }

    /// Reads a chunk for each cursor that needs one. Safe to cancel: a cursor changes only
    /// when its read has finished.
    pub async fn fill(&mut self) -> Result<(), StoreError> {
        while let Some(&i) = self.hungry.last() {
            let cursor = &mut self.cursors[i];
            cursor.fill().await?;
            self.hungry.pop();
            if let Some(head) = cursor.buffer.front() {
                self.heap.push(Reverse((head.key, i)));
            }
        }
        Ok(())
    }

    /// Whether some cursor is running low and could be read ahead.
    pub fn wants_read_ahead(&self) -> bool {
        self.low_cursor().is_some()
    }

    fn low_cursor(&self) -> Option<usize> {
        self.cursors
            .iter()
            .position(|c| !c.done && !c.buffer.is_empty() && c.buffer.len() < READ_AHEAD_BELOW)
    }

    /// Reads the next chunk of one low cursor onto the end of its buffer (its head, and so
    /// the heap, stay as they are). Safe to cancel, like `fill`.
    pub async fn read_ahead(&mut self) -> Result<(), StoreError> {
        if let Some(i) = self.low_cursor() {
            self.cursors[i].read_more().await?;
        }
        Ok(())
    }

    /// The next item, when `ready`; `None` at the end.
    pub fn head(&self) -> Option<&Key> {
        self.heap.peek().map(|Reverse((key, _))| key)
    }

    pub fn pop(&mut self) -> Option<Item> {
        let Reverse((_, i)) = self.heap.pop()?;
        let cursor = &mut self.cursors[i];
        let item = cursor.buffer.pop_front()?;
        match cursor.buffer.front() {
            Some(head) => self.heap.push(Reverse((head.key, i))),
            None if !cursor.done => self.hungry.push(i),
            None => {}
        }
        Some(item)
    }
}

impl Cursor {
    fn new(reader: Reader, device: u32, name: &str) -> Cursor {
        Cursor {
            reader,
            device,
            name: Arc::from(name),
            buffer: VecDeque::new(),
            done: false,
        }
    }

    /// Reads until something is buffered or the cursor is at its end.
    async fn fill(&mut self) -> Result<(), StoreError> {
        while self.buffer.is_empty() && !self.done {
            self.read_more().await?;
        }
        Ok(())
    }

    /// Reads one more chunk onto the buffer (none at the end: then `done`).
    async fn read_more(&mut self) -> Result<(), StoreError> {
        {
            let key = |ts_ms, kind| Key {
                ts_ms,
                kind,
                device: self.device,
            };
            let items: Option<Vec<Item>> = match &mut self.reader {
                Reader::Track(pager) => pager.next().await?.map(|rows| {
                    rows.into_iter()
                        .map(|p| Item {
                            key: key(p.ts_ms, ReplayKind::Location),
                            payload: location(&self.name, p),
                        })
                        .collect()
                }),
                Reader::Telemetry(pager) => pager.next().await?.map(|rows| {
                    telemetry(&self.name, rows)
                        .into_iter()
                        .map(|(ts_ms, payload)| Item {
                            key: key(ts_ms, ReplayKind::Telemetry),
                            payload,
                        })
                        .collect()
                }),
                Reader::Status(pager) => pager.next().await?.map(|rows| {
                    rows.into_iter()
                        .map(|p| Item {
                            key: key(p.ts_ms, ReplayKind::Status),
                            payload: status(&self.name, p),
                        })
                        .collect()
                }),
                Reader::Events(windows) => windows.next().await?,
            };
            match items {
                Some(items) => self.buffer.extend(items),
                None => self.done = true,
            }
        }
        Ok(())
    }
}

fn document(device: &Arc<str>, ts_ms: i64, seq: Option<u64>, body: Body) -> Payload {
    Payload::Document(Arc::new(Document {
        device: device.clone(),
        ts_ms,
        device_ts: true,
        seq,
        body,
    }))
}

fn location(device: &Arc<str>, p: TrackPoint) -> Payload {
    let body = Body::Location(p.location);
    document(device, p.ts_ms, p.seq, body)
}

/// Rows of one metric each back into documents: those with the same time and seq were one.
/// A page holds whole runs of one time (see `TimePager`), so no document is split.
fn telemetry(device: &Arc<str>, rows: Vec<TelemetryPoint>) -> Vec<(i64, Payload)> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while let Some(first) = rows.next() {
        let ts_ms = first.ts_ms;
        let mut by_seq: BTreeMap<Option<u64>, Vec<Metric>> = BTreeMap::new();
        let mut add = |p: TelemetryPoint| {
            by_seq.entry(p.seq).or_default().push(Metric {
                name: p.metric,
                value: p.value,
            });
        };
        add(first);
        while let Some(p) = rows.next_if(|p| p.ts_ms == ts_ms) {
            add(p);
        }
        for (seq, metrics) in by_seq {
            let body = Body::Telemetry(Telemetry { metrics });
            out.push((ts_ms, document(device, ts_ms, seq, body)));
        }
    }
    out
}

/// Reasons are stored as text; the live event carries the broker's own names.
const REASONS: [&str; 6] = [
    "connect",
    "disconnect",
    "dropped",
    "keepalive",
    "will",
    "kicked",
];

fn status(device: &Arc<str>, p: StatusPoint) -> Payload {
    let reason = p
        .reason
        .as_deref()
        .and_then(|r| REASONS.into_iter().find(|known| *known == r));
    let body = Body::Status(Status {
        online: p.online,
        reason,
    });
    document(device, p.ts_ms, p.seq, body)
}

/// Geofence and alert events of the replay's devices, a time window at a time: the events
/// table is ordered by commit, so each window is read whole and sorted by time. Windows widen
/// over quiet stretches and narrow where events are dense, so one never holds many.
struct EventWindows {
    store: Arc<dyn Store>,
    devices: Vec<String>,
    kinds: Vec<EventKind>,
    from_ms: i64,
    to_ms: i64,
    window_ms: i64,
}

impl EventWindows {
    /// The next window's events (maybe none); `None` past the end.
    async fn next(&mut self) -> Result<Option<Vec<Item>>, StoreError> {
        if self.from_ms >= self.to_ms {
            return Ok(None);
        }
        let end = self.from_ms.saturating_add(self.window_ms).min(self.to_ms);
        let mut query = EventQuery {
            devices: self.devices.clone(),
            kinds: self.kinds.clone(),
            from_ms: self.from_ms,
            to_ms: end,
            after_seq: 0,
            limit: EVENT_PAGE,
        };
        let mut events: Vec<Event> = Vec::new();
        loop {
            let page = self.store.events(&query).await?;
            let full = page.len() == EVENT_PAGE as usize;
            if let Some(last) = page.last() {
                query.after_seq = last.seq;
            }
            events.extend(page);
            if !full {
                break;
            }
        }
        self.window_ms = if events.is_empty() {
            self.window_ms.saturating_mul(4).min(MAX_WINDOW_MS)
        } else if events.len() > EVENT_PAGE as usize {
            (self.window_ms / 2).max(MIN_WINDOW_MS)
        } else {
            self.window_ms
        };
        self.from_ms = end;
        let mut items: Vec<(u64, Item)> = events
            .into_iter()
            .filter_map(|e| {
                let device = self
                    .devices
                    .binary_search_by(|d| (**d).cmp(&*e.device))
                    .ok()?;
                let kind = match e.kind {
                    EventKind::Geofence => ReplayKind::Geofence,
                    EventKind::Alert => ReplayKind::Alert,
                    // What was asked of a device is not part of what it did.
                    EventKind::Command | EventKind::Alarm => return None,
                };
                let key = Key {
                    ts_ms: e.ts_ms,
                    kind,
                    device: device as u32,
                };
                Some((
                    e.seq,
                    Item {
                        key,
                        payload: Payload::Derived(Arc::new(e)),
                    },
                ))
            })
            .collect();
        items.sort_by_key(|(seq, item)| (item.key, *seq));
        Ok(Some(items.into_iter().map(|(_, item)| item).collect()))
    }
}
