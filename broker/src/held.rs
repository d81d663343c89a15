//! What the router holds for subscribers, and the broker-wide bound on it.
//!
//! rumqttd keeps one commit log per subscribed filter (kept sessions read it when they come
//! back) and one retained message per topic. A log drops its oldest segment once it is full,
//! so each filter holds at most one log's capacity; but filters and retained topics have no
//! bound of their own, so without one here a broker with many subscribers could be made to
//! hold gigabytes. Every publish the router gets passes [`Held::admit`] first: it estimates
//! what the router's logs would grow by (topic and payload bytes, per matching filter up to a
//! log's capacity, and the retained copy) and refuses the publish to subscribers when that
//! growth would pass the bound. Devices are not affected: their publishes are stored either
//! way. Logs never shrink in rumqttd, so neither does the estimate, except when a retained
//! message is cleared.

use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) struct Held {
    state: Mutex<State>,
    /// Bytes the router may hold for subscribers, all filters and retained messages together.
    max_bytes: u64,
    /// Bytes one filter's commit log holds at most before it drops its oldest segment.
    per_filter: u64,
    held: metrics::Gauge,
    refused: metrics::Counter,
}

#[derive(Default)]
struct State {
    filters: HashMap<Box<str>, u64>,
    retained: HashMap<Box<[u8]>, u64>,
    total: u64,
}

impl Held {
    pub(crate) fn new(max_bytes: u64, per_filter: u64) -> Self {
        Self {
            state: Mutex::default(),
            max_bytes,
            per_filter,
            held: metrics::gauge!("fieldline_broker_subscriber_held_bytes"),
            refused: metrics::counter!("fieldline_broker_subscriber_refused_total", "reason" => "held_bytes"),
        }
    }

    /// Counts a publish of `topic` and `payload_len` into the logs of `filters` (the
    /// subscriptions it matches) and, when `retain`, as the topic's retained message.
    /// Returns false, and counts nothing, when that would take the router past the bound.
    pub(crate) fn admit(
        &self,
        filters: &[String],
        topic: &[u8],
        payload_len: usize,
        retain: bool,
    ) -> bool {
        let size = (topic.len() + payload_len) as u64;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut growth: i128 = 0;
        for filter in filters {
            let now = state.filters.get(filter.as_str()).copied().unwrap_or(0);
            growth += i128::from((now + size).min(self.per_filter) - now);
        }
        let retained_before = state.retained.get(topic).copied().unwrap_or(0);
        if retain {
            // An empty retained payload clears the topic's retained message (MQTT §3.3.1.3).
            let after = if payload_len == 0 { 0 } else { size };
            growth += i128::from(after) - i128::from(retained_before);
        }
        if growth > 0 && i128::from(state.total) + growth > i128::from(self.max_bytes) {
            drop(state);
            self.refused.increment(1);
            return false;
        }
        for filter in filters {
            let held = state.filters.entry(filter.as_str().into()).or_insert(0);
            *held = (*held + size).min(self.per_filter);
        }
        if retain {
            if payload_len == 0 {
                state.retained.remove(topic);
            } else {
                state.retained.insert(topic.into(), size);
            }
        }
        state.total = u64::try_from(i128::from(state.total) + growth).unwrap_or(0);
        self.held.set(state.total as f64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    fn filters(list: &[&str]) -> Vec<String> {
        list.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn refuses_growth_past_the_bound() {
        let held = Held::new(100, 1_000);
        // 10 bytes (topic 3 + payload 7) into two filters: 20 held.
        assert!(held.admit(&filters(&["a/#", "+/b"]), b"a/b", 7, false));
        for _ in 0..4 {
            assert!(held.admit(&filters(&["a/#", "+/b"]), b"a/b", 7, false));
        }
        // 100 held: one more byte anywhere is refused.
        assert!(!held.admit(&filters(&["a/#"]), b"a/b", 7, false));
        assert!(!held.admit(&[], b"r", 1, true));
    }

    #[test]
    fn a_full_log_drops_its_oldest_so_it_does_not_grow() {
        let held = Held::new(100, 50);
        for _ in 0..20 {
            assert!(
                held.admit(&filters(&["x"]), b"x", 9, false),
                "x's log stays at 50"
            );
        }
        assert!(
            held.admit(&filters(&["y"]), b"y", 9, false),
            "room for 50 more"
        );
        for _ in 0..4 {
            assert!(held.admit(&filters(&["y"]), b"y", 9, false));
        }
        assert!(!held.admit(&filters(&["z"]), b"z", 9, false), "100 held");
        assert!(
            held.admit(&filters(&["x", "y"]), b"x", 9, false),
            "full logs only roll"
        );
    }

    #[test]
    fn retained_messages_count_once_per_topic_and_clearing_frees() {
        let held = Held::new(30, 1_000);
        assert!(held.admit(&[], b"t", 19, true));
        assert!(
            held.admit(&[], b"t", 19, true),
            "a replacement holds the same"
        );
        assert!(
            !held.admit(&[], b"u", 19, true),
            "a second topic does not fit"
        );
        assert!(held.admit(&[], b"t", 0, true), "clearing");
        assert!(held.admit(&[], b"u", 19, true), "fits once t is cleared");
    }
}
