//! Drops redelivered documents: the same (device, kind, seq) is stored once.
//!
//! QoS 1 redelivers after a lost PUBACK and devices resend after reconnects, so duplicates
//! arrive close to the original. Each stream keeps a sliding window of the last
//! [`WINDOW`] sequence numbers below the highest one seen (the anti-replay window of IPsec).
//! A number far below the window is taken as a device that restarted its counter, not as a
//! duplicate. After a restart of the service each stream starts from the highest seq in
//! storage, with everything at or below it counted as seen.

use std::collections::HashMap;
use std::sync::Arc;

use crate::document::Kind;

/// Sequence numbers remembered below the highest one, per stream.
pub const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

/// The window of one (device, kind) stream.
#[derive(Clone)]
struct SeqWindow {
    /// Highest seq accepted.
    high: u64,
    /// Bit `i` set: `high - i` was seen.
    seen: Box<[u64; WORDS]>,
}

impl SeqWindow {
    fn starting_at(high: u64, all_below_seen: bool) -> Self {
        let fill = if all_below_seen { u64::MAX } else { 0 };
        let mut seen = Box::new([fill; WORDS]);
        seen[0] |= 1;
        Self { high, seen }
    }

    fn bit(&self, age: u64) -> bool {
        self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0
    }

    fn set(&mut self, age: u64) {
        self.seen[(age / 64) as usize] |= 1 << (age % 64);
    }

    /// Shifts the window up by `by` positions.
    fn advance(&mut self, by: u64) {
        if by >= WINDOW {
            *self.seen = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = by % 64;
        for i in (0..WORDS).rev() {
            let src = i.checked_sub(words);
            let lo = src.map_or(0, |s| self.seen[s]);
            let carry = match src.and_then(|s| s.checked_sub(1)) {
                Some(s) if bits > 0 => self.seen[s] >> (64 - bits),
                _ => 0,
            };
            self.seen[i] = (lo << bits) | carry;
        }
    }

    /// Records `seq`; `false` when it was already seen.
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.high {
            self.advance(seq - self.high);
            self.high = seq;
            self.set(0);
            return true;
        }
        let age = self.high - seq;
        if age >= WINDOW {
            // Far below anything remembered: the device restarted its counter.
            *self = Self::starting_at(seq, false);
            return true;
        }
        if self.bit(age) {
            return false;
        }
        self.set(age);
        true
    }
}

/// Windows for every stream seen since start.
#[derive(Default)]
pub struct Dedupe {
    streams: HashMap<(Arc<str>, Kind), SeqWindow>,
}

impl Dedupe {
    /// Starts a stream from the highest seq storage holds for it.
    pub fn seed(&mut self, device: Arc<str>, kind: Kind, last_seq: u64) {
        self.streams
            .insert((device, kind), SeqWindow::starting_at(last_seq, true));
    }

    /// `true` when this (device, kind, seq) is new and should be stored.
    pub fn accept(&mut self, device: &Arc<str>, kind: Kind, seq: u64) -> bool {
        match self.streams.get_mut(&(device.clone(), kind)) {
            Some(window) => window.accept(seq),
            None => {
                self.streams
                    .insert((device.clone(), kind), SeqWindow::starting_at(seq, false));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Arc<str> {
        Arc::from("d")
    }

    #[test]
    fn stores_each_seq_once_in_any_order() {
        let mut d = Dedupe::default();
        let order = [5u64, 1, 2, 5, 3, 100, 2, 99, 100, 4, 1];
        let accepted: Vec<_> = order
            .iter()
            .map(|&s| d.accept(&dev(), Kind::Location, s))
            .collect();
        assert_eq!(
            accepted,
            vec![true, true, true, false, true, true, false, true, false, true, false]
        );
        // Streams of another kind or device are separate.
        assert!(d.accept(&dev(), Kind::Telemetry, 5));
        assert!(d.accept(&Arc::from("e"), Kind::Location, 5));
    }

    #[test]
    fn remembers_a_whole_window_across_word_boundaries() {
        let mut d = Dedupe::default();
        for s in 0..10_000u64 {
            assert!(d.accept(&dev(), Kind::Location, s));
        }
        for s in (10_000 - WINDOW)..10_000 {
            assert!(!d.accept(&dev(), Kind::Location, s), "seq {s} seen twice");
        }
        // Jumps of odd sizes keep earlier bits in the right place.
        let mut d = Dedupe::default();
        for s in [0u64, 63, 64, 65, 200, 1000, 1001, 4000] {
            assert!(d.accept(&dev(), Kind::Status, s));
        }
        for s in [0u64, 63, 64, 65, 200, 1000, 1001, 4000] {
            assert!(!d.accept(&dev(), Kind::Status, s), "{s}");
        }
        assert!(d.accept(&dev(), Kind::Status, 66));
    }

    #[test]
    fn a_counter_reset_starts_over_and_a_seed_covers_what_was_stored() {
        let mut d = Dedupe::default();
        assert!(d.accept(&dev(), Kind::Location, 1_000_000));
        assert!(d.accept(&dev(), Kind::Location, 0));
        assert!(d.accept(&dev(), Kind::Location, 1));
        assert!(!d.accept(&dev(), Kind::Location, 0));

        let mut d = Dedupe::default();
        d.seed(dev(), Kind::Location, 500);
        assert!(!d.accept(&dev(), Kind::Location, 500));
        assert!(!d.accept(&dev(), Kind::Location, 499));
        assert!(d.accept(&dev(), Kind::Location, 501));
    }
}
