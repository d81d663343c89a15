//! One client's bounded queue of events waiting to be sent, and how it sheds load.
//!
//! While the client keeps up the queue is a plain FIFO. When it is full, location and
//! telemetry events are conflated: each device's stream keeps only its newest event, which
//! carries how many were skipped. Status events (and, later, geofence and alert events) are
//! never conflated; when they alone fill the queue, it is cleared and the client is told to
//! `reset` (reload from the REST API) instead of silently missing them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::LiveEvent;
use super::position::Position;

/// An event on its way to one client.
#[derive(Clone)]
pub struct Queued {
    pub event: Arc<LiveEvent>,
    /// Earlier events of the same device and kind this client will not get.
    pub skipped: u64,
}

/// What pushing an event did to the queue.
#[derive(Debug, PartialEq)]
pub enum Pushed {
    Queued,
    /// The queue was full and was conflated; `dropped` events were folded into newer ones.
    Conflated {
        dropped: u64,
    },
    /// Conflation could not make room: the queue was cleared and a reset is pending.
    Overflowed,
    /// The client has not taken anything for longer than the stall limit: cut it off.
    Stalled,
}

pub struct ClientQueue {
    events: VecDeque<Queued>,
    capacity: usize,
    /// A reset to send before any further event, and the position the stream goes on after.
    pub reset: Option<(&'static str, Position)>,
    /// Set once the hub gave up on this client; the reason is sent if it can be.
    pub closed: Option<&'static str>,
    /// When the client last took its events.
    last_taken: Instant,
}

impl ClientQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity: capacity.max(2),
            reset: None,
            closed: None,
            last_taken: Instant::now(),
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.reset.is_none() && self.closed.is_none()
    }

    pub fn push(&mut self, event: Arc<LiveEvent>, stall_limit: Duration) -> Pushed {
        if self.closed.is_some() {
            return Pushed::Queued;
        }
        let mut outcome = Pushed::Queued;
        if self.events.len() >= self.capacity {
            if self.last_taken.elapsed() > stall_limit {
                self.events = VecDeque::new();
                self.reset = None;
                self.closed = Some("too slow: stopped reading");
                return Pushed::Stalled;
            }
            let dropped = self.conflate();
            // Conflating must free a real share of the queue, or it would run on every push.
            if self.events.len() > self.capacity * 3 / 4 {
                self.events = VecDeque::new();
                self.reset = Some(("too slow: queue overflowed", event.position_before()));
                outcome = Pushed::Overflowed;
            } else {
                outcome = Pushed::Conflated { dropped };
            }
        }
        self.events.push_back(Queued { event, skipped: 0 });
        outcome
    }

    /// Keeps each location/telemetry stream's newest event (in its place) and every other
    /// event; returns how many events were dropped.
    fn conflate(&mut self) -> u64 {
        let before = self.events.len();
        // Newest first, so the first event seen of a stream is the one kept.
        let mut kept: HashMap<(&str, &str), usize> = HashMap::new();
        let mut out: Vec<Queued> = Vec::with_capacity(before);
        for q in self.events.iter().rev() {
            if !q.event.conflatable() {
                out.push(q.clone());
                continue;
            }
            match kept.get(&(q.event.device(), q.event.kind())) {
                Some(&at) => out[at].skipped += 1 + q.skipped,
                None => {
                    kept.insert((q.event.device(), q.event.kind()), out.len());
                    out.push(q.clone());
                }
            }
        }
        out.reverse();
        self.events = VecDeque::from(out);
        (before - self.events.len()) as u64
    }

    /// Counts as the client reading, without taking anything.
    pub fn touch(&mut self) {
        self.last_taken = Instant::now();
    }

    /// Everything waiting, oldest first.
    pub fn take(&mut self) -> VecDeque<Queued> {
        self.last_taken = Instant::now();
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::event::Payload;
    use fieldline_ingest::document::{Body, Document, Location, Status};

    fn event(offset: u64, device: &str, status: bool) -> Arc<LiveEvent> {
        let body = if status {
            Body::Status(Status {
                online: true,
                reason: None,
            })
        } else {
            Body::Location(Location {
                lat: 1.0,
                lon: 2.0,
                speed: None,
                heading: None,
                alt: None,
                accuracy: None,
            })
        };
        Arc::new(LiveEvent::new(
            Position {
                epoch: 1,
                offset,
                outbox: 0,
            },
            Payload::Document(Arc::new(Document {
                device: Arc::from(device),
                ts_ms: 0,
                device_ts: false,
                seq: Some(offset),
                body,
            })),
            None,
            0,
        ))
    }

    const NO_STALL: Duration = Duration::from_secs(3600);

    #[test]
    fn a_full_queue_keeps_the_newest_of_each_stream_and_every_status() {
        let mut q = ClientQueue::new(8);
        for i in 1..=8 {
            let device = if i % 2 == 0 { "a" } else { "b" };
            assert_eq!(q.push(event(i, device, i == 3), NO_STALL), Pushed::Queued);
        }
        // a: 2,4,6,8  b: 1,5,7  status(b): 3
        assert_eq!(
            q.push(event(9, "c", false), NO_STALL),
            Pushed::Conflated { dropped: 5 }
        );
        let got: Vec<(u64, u64)> = q
            .take()
            .iter()
            .map(|x| (x.event.position.offset, x.skipped))
            .collect();
        assert_eq!(got, [(3, 0), (7, 2), (8, 3), (9, 0)]);
    }

    #[test]
    fn statuses_that_cannot_be_conflated_overflow_into_a_reset() {
        let mut q = ClientQueue::new(4);
        for i in 1..=4 {
            q.push(event(i, "a", true), NO_STALL);
        }
        assert_eq!(q.push(event(5, "a", true), NO_STALL), Pushed::Overflowed);
        assert!(q.reset.is_some());
        let got: Vec<u64> = q.take().iter().map(|x| x.event.position.offset).collect();
        assert_eq!(
            got,
            [5],
            "after the reset, the stream goes on from the newest"
        );
    }

    #[test]
    fn a_client_that_never_takes_is_cut_off() {
        let mut q = ClientQueue::new(2);
        q.push(event(1, "a", false), Duration::ZERO);
        q.push(event(2, "a", false), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            q.push(event(3, "a", false), Duration::ZERO),
            Pushed::Stalled
        );
        assert!(q.closed.is_some());
        assert_eq!(q.len(), 0, "a cut-off client holds no events");
    }
}
