//! One device against one fence, judged in device time: which side it is on, proof against
//! GPS jitter, and the `enter`, `exit`, `dwell` and `overspeed` events that follow.
//!
//! A fix inside counts as inside; a fix counts as outside only when it lies more than the
//! buffer plus its own accuracy past the boundary; anything between is no evidence either way.
//! A change of side needs `confirm_fixes` fixes on the new side in a row and is dated at the
//! first of them, so a parked truck whose fixes wander across the fence line never flaps.

use serde::{Deserialize, Serialize};

/// How a fence judges fixes (CONTRACT.md's defaults in [`Rules::default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub buffer_m: f64,
    /// A fix less accurate than this changes nothing.
    pub max_accuracy_m: f64,
    pub confirm_fixes: u32,
    pub dwell_s: Option<f64>,
    /// m/s
    pub speed_limit: Option<f64>,
    pub overspeed_s: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            buffer_m: 10.0,
            max_accuracy_m: 100.0,
            confirm_fixes: 2,
            dwell_s: None,
            speed_limit: None,
            overspeed_s: 10.0,
        }
    }
}

/// What one fix shows about the side it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Inside,
    /// Past the boundary by more than the buffer and the fix's accuracy.
    Outside,
    /// Outside, but too close to the boundary to tell.
    Unsure,
}

impl Seen {
    /// `past_boundary_m`: the fix's distance outside the area (0 when inside).
    pub fn of(inside: bool, past_boundary_m: f64, accuracy_m: Option<f64>, rules: &Rules) -> Seen {
        if inside {
            Seen::Inside
        } else if past_boundary_m > rules.buffer_m + accuracy_m.unwrap_or(0.0) {
            Seen::Outside
        } else {
            Seen::Unsure
        }
    }
}

/// The parts of a fix the judge needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fix {
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy: Option<f64>,
    pub speed: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Enter,
    Exit,
    Dwell,
    Overspeed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Enter => "enter",
            EventKind::Exit => "exit",
            EventKind::Dwell => "dwell",
            EventKind::Overspeed => "overspeed",
        }
    }
}

/// An event, dated and placed at the fix that it is about.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judged {
    pub kind: EventKind,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
}

/// A fix that started a change of side not yet confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    inside: bool,
    ts_ms: i64,
    lat: f64,
    lon: f64,
    fixes: u32,
}

/// One device's standing with one fence; small, and stored so a restart goes on from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FenceState {
    pub inside: bool,
    /// When the current side began (device time); 0 before the first judged fix.
    pub since_ms: i64,
    pending: Option<Pending>,
    dwell_sent: bool,
    /// Start of the current stretch above the speed limit.
    overspeed_from: Option<i64>,
    overspeed_sent: bool,
}

impl FenceState {
    /// Outside with nothing pending: a fresh state judges the same, so it need not be kept.
    pub fn is_idle(&self) -> bool {
        !self.inside && self.pending.is_none()
    }

    /// Judges one fix (already known not to be late for its device); returns the events it
    /// causes, in order.
    pub fn judge(&mut self, seen: Seen, fix: &Fix, rules: &Rules) -> Vec<Judged> {
        let mut events = Vec::new();
        if fix.accuracy.is_some_and(|a| a > rules.max_accuracy_m) {
            return events;
        }
        let observed = match seen {
            Seen::Inside => Some(true),
            Seen::Outside => Some(false),
            Seen::Unsure => None,
        };
        match observed {
            Some(side) if side == self.inside => self.pending = None,
            Some(side) => {
                let pending = match self.pending.as_mut() {
                    Some(p) if p.inside == side => {
                        p.fixes += 1;
                        *p
                    }
                    _ => *self.pending.insert(Pending {
                        inside: side,
                        ts_ms: fix.ts_ms,
                        lat: fix.lat,
                        lon: fix.lon,
                        fixes: 1,
                    }),
                };
                if pending.fixes >= rules.confirm_fixes.max(1) {
                    self.pending = None;
                    self.inside = side;
                    self.since_ms = pending.ts_ms;
                    self.dwell_sent = false;
                    self.overspeed_from = None;
                    self.overspeed_sent = false;
                    events.push(Judged {
                        kind: if side {
                            EventKind::Enter
                        } else {
                            EventKind::Exit
                        },
                        ts_ms: pending.ts_ms,
                        lat: pending.lat,
                        lon: pending.lon,
                    });
                }
            }
            None => {}
        }
        if !self.inside {
            return events;
        }
        let at = |kind| Judged {
            kind,
            ts_ms: fix.ts_ms,
            lat: fix.lat,
            lon: fix.lon,
        };
        if let Some(dwell_s) = rules.dwell_s {
            let inside_ms = fix.ts_ms - self.since_ms;
            if !self.dwell_sent && inside_ms as f64 >= dwell_s * 1000.0 {
                self.dwell_sent = true;
                events.push(at(EventKind::Dwell));
            }
        }
        if let (Some(limit), Some(speed)) = (rules.speed_limit, fix.speed) {
            if speed > limit {
                let from = *self.overspeed_from.get_or_insert(fix.ts_ms);
                if !self.overspeed_sent && (fix.ts_ms - from) as f64 >= rules.overspeed_s * 1000.0 {
                    self.overspeed_sent = true;
                    events.push(at(EventKind::Overspeed));
                }
            } else {
                // The stretch is over: the next one may raise its own event.
                self.overspeed_from = None;
                self.overspeed_sent = false;
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts_s: i64, accuracy: Option<f64>, speed: Option<f64>) -> Fix {
        Fix {
            ts_ms: ts_s * 1000,
            lat: 52.5,
            lon: 13.4,
            accuracy,
            speed,
        }
    }

    fn kinds(events: &[Judged]) -> Vec<(EventKind, i64)> {
        events.iter().map(|e| (e.kind, e.ts_ms / 1000)).collect()
    }

    #[test]
    fn a_change_of_side_is_confirmed_by_the_next_fix_and_dated_at_the_first() {
        let rules = Rules::default();
        let mut state = FenceState::default();
        assert!(state
            .judge(Seen::Inside, &fix(10, None, None), &rules)
            .is_empty());
        let entered = state.judge(Seen::Inside, &fix(20, None, None), &rules);
        assert_eq!(kinds(&entered), [(EventKind::Enter, 10)]);
        assert!(state.inside);
        // One fix out, then back in: nothing.
        assert!(state
            .judge(Seen::Outside, &fix(30, None, None), &rules)
            .is_empty());
        assert!(state
            .judge(Seen::Inside, &fix(40, None, None), &rules)
            .is_empty());
        // Out twice (with an unsure fix between): exit at the first.
        assert!(state
            .judge(Seen::Outside, &fix(50, None, None), &rules)
            .is_empty());
        assert!(state
            .judge(Seen::Unsure, &fix(55, None, None), &rules)
            .is_empty());
        let left = state.judge(Seen::Outside, &fix(60, None, None), &rules);
        assert_eq!(kinds(&left), [(EventKind::Exit, 50)]);
    }

    #[test]
    fn jitter_on_the_line_and_inaccurate_fixes_change_nothing() {
        let rules = Rules::default();
        let mut state = FenceState::default();
        let mut events = Vec::new();
        // A parked device alternating inside and "just outside" within the buffer.
        for i in 0..600 {
            let seen = if i % 2 == 0 {
                Seen::Inside
            } else {
                Seen::Unsure
            };
            events.extend(state.judge(seen, &fix(i, Some(20.0), None), &rules));
        }
        assert_eq!(
            kinds(&events),
            [(EventKind::Enter, 0)],
            "one enter, no flapping"
        );
        // A 500 m fix far outside, twice: still inside.
        for ts in [700, 701] {
            assert!(state
                .judge(Seen::Outside, &fix(ts, Some(500.0), None), &rules)
                .is_empty());
        }
        assert!(state.inside);
    }

    #[test]
    fn dwell_once_and_overspeed_once_per_stretch() {
        let rules = Rules {
            confirm_fixes: 1,
            dwell_s: Some(60.0),
            speed_limit: Some(10.0),
            ..Rules::default()
        };
        let mut state = FenceState::default();
        let mut events = Vec::new();
        let speeds = [5.0, 12.0, 12.0, 12.0, 5.0, 15.0, 15.0, 15.0, 15.0];
        for (i, speed) in speeds.iter().enumerate() {
            let ts = i as i64 * 5;
            events.extend(state.judge(Seen::Inside, &fix(ts, None, Some(*speed)), &rules));
        }
        for ts in [60, 70, 80] {
            events.extend(state.judge(Seen::Inside, &fix(ts, None, Some(5.0)), &rules));
        }
        assert_eq!(
            kinds(&events),
            [
                (EventKind::Enter, 0),
                (EventKind::Overspeed, 15),
                (EventKind::Overspeed, 35),
                (EventKind::Dwell, 60)
            ]
        );
    }

    #[test]
    fn the_state_survives_a_round_trip_through_storage() {
        let rules = Rules::default();
        let mut state = FenceState::default();
        state.judge(Seen::Inside, &fix(1, None, None), &rules);
        let stored = serde_json::to_string(&state).expect("serializes");
        let mut restored: FenceState = serde_json::from_str(&stored).expect("deserializes");
        assert_eq!(restored, state);
        let events = restored.judge(Seen::Inside, &fix(2, None, None), &rules);
        assert_eq!(
            kinds(&events),
            [(EventKind::Enter, 1)],
            "the pending fix is kept"
        );
    }
}
