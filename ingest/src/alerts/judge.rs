//! One device against one alert rule, in device time: a threshold must hold for the rule's
//! duration before it is raised, and it clears only past the clear level (hysteresis), so a
//! reading that hovers at the threshold raises once. An offline rule counts from when the
//! device went offline; a stale rule is raised by the judges' clock and cleared by a value.

use serde::{Deserialize, Serialize};

use super::Direction;

/// A change of a rule's state for one device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    pub raised: bool,
    pub ts_ms: i64,
}

/// Small and stored, so a restart goes on from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub raised: bool,
    /// When the trip condition (or the device's offline spell) began.
    pub since_ms: Option<i64>,
    /// The newest reading judged: an older one changes nothing.
    newest_ms: i64,
}

impl RuleState {
    /// Nothing worth keeping: a fresh state judges the same.
    pub fn is_idle(&self) -> bool {
        !self.raised && self.since_ms.is_none()
    }

    pub fn reading(
        &mut self,
        value: f64,
        ts_ms: i64,
        direction: Direction,
        trip: f64,
        clear: Option<f64>,
        for_ms: i64,
    ) -> Option<Change> {
        if ts_ms < self.newest_ms {
            return None;
        }
        self.newest_ms = ts_ms;
        let past = |level: f64| match direction {
            Direction::Above => value > level,
            Direction::Below => value < level,
        };
        if self.raised {
            let cleared = match clear {
                Some(level) => match direction {
                    Direction::Above => value < level,
                    Direction::Below => value > level,
                },
                None => !past(trip),
            };
            if cleared {
                self.raised = false;
                self.since_ms = None;
                return Some(Change {
                    raised: false,
                    ts_ms,
                });
            }
            return None;
        }
        if !past(trip) {
            self.since_ms = None;
            return None;
        }
        let since = *self.since_ms.get_or_insert(ts_ms);
        if ts_ms - since >= for_ms {
            self.raised = true;
            return Some(Change {
                raised: true,
                ts_ms,
            });
        }
        None
    }

    /// The device went offline (`online` false) or came back, at `ts_ms`.
    pub fn presence(&mut self, online: bool, ts_ms: i64) -> Option<Change> {
        if online {
            self.since_ms = None;
            if self.raised {
                self.raised = false;
                return Some(Change {
                    raised: false,
                    ts_ms,
                });
            }
        } else if self.since_ms.is_none() {
            self.since_ms = Some(ts_ms);
        }
        None
    }

    /// A stale rule's silence ran out: raised, dated `ts_ms` (once).
    pub fn silent(&mut self, ts_ms: i64) -> Option<Change> {
        if self.raised {
            return None;
        }
        self.raised = true;
        self.since_ms = Some(ts_ms);
        Some(Change {
            raised: true,
            ts_ms,
        })
    }

    /// A stale rule's value came: cleared if it was raised.
    pub fn heard(&mut self, ts_ms: i64) -> Option<Change> {
        self.since_ms = None;
        if !self.raised {
            return None;
        }
        self.raised = false;
        Some(Change {
            raised: false,
            ts_ms,
        })
    }

    /// Raises an offline rule whose time has come by `now_ms`; dated when it came.
    pub fn overdue(&mut self, now_ms: i64, after_ms: i64) -> Option<Change> {
        let since = self.since_ms?;
        if self.raised || now_ms - since < after_ms {
            return None;
        }
        self.raised = true;
        Some(Change {
            raised: true,
            ts_ms: since + after_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_with_hysteresis_and_duration() {
        let mut s = RuleState::default();
        let mut feed =
            |v: f64, t: i64| s.reading(v, t * 1000, Direction::Above, 8.0, Some(7.5), 120_000);
        assert_eq!(feed(9.0, 0), None, "not for 120 s yet");
        assert_eq!(
            feed(7.9, 60),
            None,
            "dropped below: the duration starts again"
        );
        assert_eq!(feed(8.5, 100), None);
        assert_eq!(feed(8.6, 219), None);
        assert_eq!(
            feed(8.7, 220),
            Some(Change {
                raised: true,
                ts_ms: 220_000
            })
        );
        assert_eq!(feed(7.8, 230), None, "between the levels: still raised");
        assert_eq!(feed(9.0, 240), None, "raised once");
        assert_eq!(feed(5.0, 200), None, "a late reading changes nothing");
        assert_eq!(
            feed(7.4, 250),
            Some(Change {
                raised: false,
                ts_ms: 250_000
            })
        );
    }

    #[test]
    fn offline_raised_when_due_and_cleared_on_return() {
        let mut s = RuleState::default();
        assert_eq!(s.presence(false, 1_000), None);
        assert_eq!(s.overdue(500_000, 900_000), None);
        assert_eq!(
            s.overdue(901_000, 900_000),
            Some(Change {
                raised: true,
                ts_ms: 901_000
            })
        );
        assert_eq!(s.overdue(999_000, 900_000), None, "once");
        assert_eq!(
            s.presence(true, 1_000_000),
            Some(Change {
                raised: false,
                ts_ms: 1_000_000
            })
        );
        assert!(s.is_idle());
    }
}
