//! Drops redelivered documents: the same (device, kind, seq) is stored once.
//!
//! QoS 1 redelivers after a lost PUBACK and devices resend after reconnects, so duplicates
//! arrive close to the original. Each stream keeps a sliding window of the last [`WINDOW`]
//! sequence numbers below the highest one seen (the anti-replay window of IPsec), and the
//! device time of that highest one.
//!
//! A device that restarts its counter sends low numbers again, but with a newer time: a seq at
//! or below the highest whose device `ts` is newer than the highest one's starts the window
//! over (a redelivery carries its original, older `ts`). A seq far below the window also
//! starts it over. Documents without a device `ts` rely on the window alone.
//!
//! After a restart of the service, each stream starts from its newest stored document, with
//! the window below it counted as seen: what a device resends after our restart is what it
//! had in flight, just below where it was.

use std::collections::HashMap;
use std::sync::Arc;

use crate::document::Kind;

/// Sequence numbers remembered below the highest one, per stream.
pub const WINDOW: u64 = 4096;
const WORDS: usize = (WINDOW / 64) as usize;

/// The window of one (device, kind) stream.
#[derive(Clone)]
struct SeqWindow {
    /// Highest seq accepted since the window (re)started.
    high: u64,
    /// Device time of `high`, when known.
    high_ts: Option<i64>,
    /// Bit `i` set: `high - i` was seen.
    seen: Box<[u64; WORDS]>,
}

impl SeqWindow {
    fn starting_at(high: u64, high_ts: Option<i64>, all_below_seen: bool) -> Self {
        let fill = if all_below_seen { u64::MAX } else { 0 };
        let mut seen = Box::new([fill; WORDS]);
        seen[0] |= 1;
        Self {
            high,
            high_ts,
            seen,
        }
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

    /// Records `seq` sent at device time `ts`; `false` when it was already seen.
    fn accept(&mut self, seq: u64, ts: Option<i64>) -> bool {
        if seq > self.high {
            self.advance(seq - self.high);
            self.high = seq;
            self.high_ts = ts;
            self.set(0);
            return true;
        }
        let restarted_counter =
            matches!((ts, self.high_ts), (Some(ts), Some(high_ts)) if ts > high_ts);
        let age = self.high - seq;
        if restarted_counter || age >= WINDOW {
            *self = Self::starting_at(seq, ts, false);
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
#[derive(Default, Clone)]
pub struct Dedupe {
    streams: HashMap<(Arc<str>, Kind), SeqWindow>,
}

impl Dedupe {
    /// Starts a stream from its newest stored document (`seq` at time `ts_ms`).
    pub fn seed(&mut self, device: Arc<str>, kind: Kind, seq: u64, ts_ms: i64) {
        self.streams.insert(
            (device, kind),
            SeqWindow::starting_at(seq, Some(ts_ms), true),
        );
    }

    /// `true` when this (device, kind, seq) is new and should be stored. `device_ts` is the
    /// document's own time, when the device sent one.
    pub fn accept(
        &mut self,
        device: &Arc<str>,
        kind: Kind,
        seq: u64,
        device_ts: Option<i64>,
    ) -> bool {
        match self.streams.get_mut(&(device.clone(), kind)) {
            Some(window) => window.accept(seq, device_ts),
            None => {
                self.streams.insert(
                    (device.clone(), kind),
                    SeqWindow::starting_at(seq, device_ts, false),
                );
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
            .map(|&s| d.accept(&dev(), Kind::Location, s, None))
            .collect();
        assert_eq!(
            accepted,
            vec![true, true, true, false, true, true, false, true, false, true, false]
        );
        // Streams of another kind or device are separate.
        assert!(d.accept(&dev(), Kind::Telemetry, 5, None));
        assert!(d.accept(&Arc::from("e"), Kind::Location, 5, None));
    }

    #[test]
    fn remembers_a_whole_window_across_word_boundaries() {
        let mut d = Dedupe::default();
        for s in 0..10_000u64 {
            assert!(d.accept(&dev(), Kind::Location, s, Some(s as i64)));
        }
        for s in (10_000 - WINDOW)..10_000 {
            // Redeliveries carry their original time.
            assert!(
                !d.accept(&dev(), Kind::Location, s, Some(s as i64)),
                "seq {s} seen twice"
            );
        }
        // Jumps of odd sizes keep earlier bits in the right place.
        let mut d = Dedupe::default();
        for s in [0u64, 63, 64, 65, 200, 1000, 1001, 4000] {
            assert!(d.accept(&dev(), Kind::Status, s, None));
        }
        for s in [0u64, 63, 64, 65, 200, 1000, 1001, 4000] {
            assert!(!d.accept(&dev(), Kind::Status, s, None), "{s}");
        }
        assert!(d.accept(&dev(), Kind::Status, 66, None));
    }

    #[test]
    fn a_restarted_counter_is_new_data_not_duplicates() {
        // The device reboots at 2,999 and counts from 0 again, with a later clock.
        let mut d = Dedupe::default();
        for s in 0..3_000u64 {
            assert!(d.accept(&dev(), Kind::Location, s, Some(1_000 + s as i64)));
        }
        for s in 0..3_000u64 {
            assert!(
                d.accept(&dev(), Kind::Location, s, Some(10_000 + s as i64)),
                "seq {s} after reboot"
            );
        }
        // ... and its redeliveries after the reboot are still caught.
        assert!(!d.accept(&dev(), Kind::Location, 1_500, Some(11_500)));
        // Far below the window counts as a restart even without a device clock.
        let mut d = Dedupe::default();
        assert!(d.accept(&dev(), Kind::Location, 1_000_000, None));
        assert!(d.accept(&dev(), Kind::Location, 0, None));
        assert!(!d.accept(&dev(), Kind::Location, 0, None));
    }

    #[test]
    fn a_seed_covers_what_was_in_flight_and_lets_a_restarted_counter_through() {
        let mut d = Dedupe::default();
        d.seed(dev(), Kind::Location, 500, 50_000);
        // Resent after our restart: original seq and time.
        assert!(!d.accept(&dev(), Kind::Location, 500, Some(50_000)));
        assert!(!d.accept(&dev(), Kind::Location, 499, Some(49_990)));
        assert!(d.accept(&dev(), Kind::Location, 501, Some(50_010)));
        // A device that restarted its counter meanwhile: low seq, newer time.
        let mut d = Dedupe::default();
        d.seed(dev(), Kind::Location, 500, 50_000);
        assert!(d.accept(&dev(), Kind::Location, 3, Some(60_000)));
    }
}
