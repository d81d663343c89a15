//! Hands events on in outbox order although two writers commit them: the store writer
//! (derived events) and the command ledger. Seqs are taken under one lock in commit order,
//! but the two hand their events on independently; live views place an event by its seq and
//! skip one older than what they have, so a later seq must wait for the earlier ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use fieldline_store::derived::Event;

use super::EventFeed;

pub struct InOrder {
    inner: Arc<dyn EventFeed>,
    state: Mutex<State>,
}

struct State {
    /// The next seq to hand on.
    next: u64,
    waiting: BTreeMap<u64, Arc<Event>>,
}

impl InOrder {
    /// `last_stored` is the newest seq storage held at start-up: the next one goes first.
    pub fn new(inner: Arc<dyn EventFeed>, last_stored: u64) -> InOrder {
        InOrder {
            inner,
            state: Mutex::new(State {
                next: last_stored + 1,
                waiting: BTreeMap::new(),
            }),
        }
    }
}

impl EventFeed for InOrder {
    fn committed(&self, events: &[Arc<Event>]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            if event.seq >= state.next {
                state.waiting.insert(event.seq, event.clone());
            }
        }
        let mut ready = Vec::new();
        loop {
            let next = state.next;
            let Some(event) = state.waiting.remove(&next) else {
                break;
            };
            ready.push(event);
            state.next += 1;
        }
        metrics::gauge!("fieldline_outbox_waiting_events").set(state.waiting.len() as f64);
        // Handed on under the lock, so two callers cannot swap their turns.
        if !ready.is_empty() {
            self.inner.committed(&ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_store::derived::EventKind;

    struct Seen(Mutex<Vec<u64>>);

    impl EventFeed for Seen {
        fn committed(&self, events: &[Arc<Event>]) {
            self.0.lock().unwrap().extend(events.iter().map(|e| e.seq));
        }
    }

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            kind: EventKind::Command,
            device: Arc::from("d1"),
            ts_ms: 0,
            log_position: None,
            fields: Default::default(),
            stored_ms: 0,
        })
    }

    #[test]
    fn a_later_seq_waits_for_the_earlier_ones() {
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        let feed = InOrder::new(seen.clone(), 10);
        feed.committed(&[event(12), event(13)]);
        assert!(seen.0.lock().unwrap().is_empty());
        feed.committed(&[event(11)]);
        feed.committed(&[event(9), event(14)]);
        assert_eq!(*seen.0.lock().unwrap(), vec![11, 12, 13, 14]);
    }
}
