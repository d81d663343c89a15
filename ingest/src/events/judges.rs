//! The judges: every stored document, in log order, against the fences and alert rules that
//! concern its device. What they decide (events, and each changed state) goes into the batch
//! that stores the document, so a crash either keeps both or neither, and replaying the log
//! from what storage holds decides the same again.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::catalog::Catalog;
use crate::alerts::judge::{Change, RuleState};
use crate::alerts::{AlertRule, AlertRules, Condition};
use crate::document::{Body, Document};
use crate::geofence::judge::{FenceState, Fix, Seen};
use crate::geofence::Fences;

use fieldline_store::derived::{Derived, Event, EventKind, JudgeSeed, StoredState, Subject};

#[derive(Default)]
struct DeviceStates {
    newest_fix_ms: i64,
    /// The newest reading judged against rules: an older one is late.
    newest_reading_ms: i64,
    fences: HashMap<i64, FenceState>,
    rules: HashMap<i64, RuleState>,
    /// Connected, as its presence says: only a connected device's silence counts.
    connected: bool,
    /// Per stale rule, when its value was last heard while connected. Kept in memory only:
    /// a restart ends every connection, and each starts the clock again.
    heard: HashMap<i64, Heard>,
}

/// When a stale rule's value (or the connection) was last heard of.
#[derive(Clone, Copy)]
struct Heard {
    /// The server's clock: silence is measured on it, since a silent device dates nothing.
    server_ms: i64,
    /// The value's own time, to date the alert in device time where there is one.
    device_ms: Option<i64>,
}

/// Handles looked up once, for the per-fix path.
struct Counters {
    checks: metrics::Counter,
    late: metrics::Counter,
}

pub struct Judges {
    fence_catalog: Arc<Catalog<Fences>>,
    rule_catalog: Arc<Catalog<AlertRules>>,
    fences: Arc<Fences>,
    fences_version: u64,
    rules: Arc<AlertRules>,
    rules_version: u64,
    /// Any rule is a stale rule: only then does every document go past them.
    stale_rules: bool,
    devices: HashMap<Arc<str>, DeviceStates>,
    counters: Counters,
    /// When offline rules were last looked at: twice a second is often enough.
    last_tick_ms: i64,
}

impl Judges {
    pub fn new(
        fence_catalog: Arc<Catalog<Fences>>,
        rule_catalog: Arc<Catalog<AlertRules>>,
        seed: JudgeSeed,
    ) -> Judges {
        let (_, fences) = fence_catalog.snapshot();
        let (_, rules) = rule_catalog.snapshot();
        // Version 0 is never a catalog's: the first document checks the stored states against
        // the fences and rules in force, and forgets those that no longer apply.
        let (fences_version, rules_version) = (0, 0);
        let mut judges = Judges {
            fence_catalog,
            rule_catalog,
            fences,
            fences_version,
            stale_rules: has_stale(&rules),
            rules,
            rules_version,
            devices: HashMap::new(),
            counters: Counters {
                checks: metrics::counter!("fieldline_geofence_checks_total"),
                late: metrics::counter!("fieldline_geofence_late_fixes_total"),
            },
            last_tick_ms: 0,
        };
        for (device, ts) in seed.newest_fix_ms {
            judges.device(&Arc::from(device)).newest_fix_ms = ts;
        }
        for stored in seed.states {
            let device = judges.device(&stored.device);
            match stored.subject {
                Subject::Geofence(id) => {
                    if let Ok(state) = serde_json::from_str(&stored.state) {
                        device.fences.insert(id, state);
                    }
                }
                Subject::Rule(id) => {
                    if let Ok(state) = serde_json::from_str(&stored.state) {
                        device.rules.insert(id, state);
                    }
                }
            }
        }
        judges
    }

    fn device(&mut self, device: &Arc<str>) -> &mut DeviceStates {
        self.devices.entry(device.clone()).or_default()
    }

    /// Judges one stored document; `position` is its log record, `received_ms` when the
    /// broker took it.
    pub fn document(
        &mut self,
        doc: &Document,
        position: Option<u64>,
        received_ms: i64,
        out: &mut Derived,
    ) {
        self.refresh(out);
        if self.stale_rules {
            self.hear(doc, position, received_ms, out);
        }
        match &doc.body {
            Body::Location(l) if !self.fences.is_empty() || self.has_states(&doc.device) => {
                let fix = Fix {
                    ts_ms: doc.ts_ms,
                    lat: l.lat,
                    lon: l.lon,
                    accuracy: l.accuracy,
                    speed: l.speed,
                };
                self.fix(&doc.device, &fix, position, out);
            }
            Body::Telemetry(t) if !self.rules.is_empty() => {
                let device = self.device(&doc.device);
                if doc.ts_ms < device.newest_reading_ms {
                    return;
                }
                device.newest_reading_ms = doc.ts_ms;
                let rules = self.rules.clone();
                for rule in rules.0.iter().filter(|r| r.devices.matches(&doc.device)) {
                    let Condition::Threshold {
                        metric,
                        direction,
                        trip,
                        clear,
                        for_ms,
                    } = &rule.condition
                    else {
                        continue;
                    };
                    let Some(m) = t.metrics.iter().find(|m| &m.name == metric) else {
                        continue;
                    };
                    let extra = [("metric", json!(metric)), ("value", json!(m.value))];
                    self.step_rule(&doc.device, rule, position, &extra, out, |state| {
                        state.reading(m.value, doc.ts_ms, *direction, *trip, *clear, *for_ms)
                    });
                }
            }
            Body::Status(s) if s.is_presence() && !self.rules.is_empty() => {
                let rules = self.rules.clone();
                for rule in rules.0.iter().filter(|r| r.devices.matches(&doc.device)) {
                    if !matches!(rule.condition, Condition::Offline { .. }) {
                        continue;
                    }
                    self.step_rule(&doc.device, rule, position, &[], out, |state| {
                        state.presence(s.online, doc.ts_ms)
                    });
                }
            }
            _ => {}
        }
    }

    /// What a document means to the stale rules of its device: a connection starts their
    /// clocks, a disconnection stops them, and a value they watch restarts its clock and
    /// clears the rule if it was raised.
    fn hear(&mut self, doc: &Document, position: Option<u64>, received_ms: i64, out: &mut Derived) {
        let rules = self.rules.clone();
        let stale = rules.0.iter().filter_map(|r| match &r.condition {
            Condition::Stale { metric, .. } if r.devices.matches(&doc.device) => Some((r, metric)),
            _ => None,
        });
        match &doc.body {
            Body::Status(s) if s.is_presence() => {
                let device = self.device(&doc.device);
                device.connected = s.online;
                device.heard.clear();
                if s.online {
                    for (rule, _) in stale {
                        let since = Heard {
                            server_ms: received_ms,
                            device_ms: None,
                        };
                        device.heard.insert(rule.id, since);
                    }
                }
            }
            Body::Location(_) | Body::Telemetry(_) => {
                for (rule, metric) in stale {
                    let watched = match (metric, &doc.body) {
                        (None, Body::Location(_)) => true,
                        (Some(name), Body::Telemetry(t)) => {
                            t.metrics.iter().any(|m| &m.name == name)
                        }
                        _ => false,
                    };
                    if !watched {
                        continue;
                    }
                    let device = self.device(&doc.device);
                    // A value proves a connection, whatever presence said before a restart.
                    device.connected = true;
                    let heard = Heard {
                        server_ms: received_ms,
                        device_ms: Some(doc.ts_ms),
                    };
                    device.heard.insert(rule.id, heard);
                    let extra: Vec<(&str, Value)> =
                        metric.iter().map(|m| ("metric", json!(m))).collect();
                    self.step_rule(&doc.device, rule, position, &extra, out, |state| {
                        state.heard(doc.ts_ms)
                    });
                }
            }
            _ => {}
        }
    }

    /// Raises the offline rules that have come due by `now_ms` (server time: a device that
    /// is offline sends nothing to date it by), and the stale rules of connected devices
    /// that stayed silent too long.
    pub fn tick(&mut self, now_ms: i64, out: &mut Derived) {
        if now_ms - self.last_tick_ms < 500 {
            return;
        }
        self.last_tick_ms = now_ms;
        self.refresh(out);
        if self.rules.is_empty() {
            return;
        }
        let rules = self.rules.clone();
        for (device, states) in &mut self.devices {
            for (id, state) in &mut states.rules {
                let Some(rule) = rules.get(*id) else { continue };
                let Condition::Offline { after_ms } = rule.condition else {
                    continue;
                };
                if let Some(change) = state.overdue(now_ms, after_ms) {
                    note_rule(out, device, *id, state);
                    out.events.push(alert(device, rule, change, None, &[]));
                }
            }
            if !states.connected {
                continue;
            }
            for (id, heard) in &states.heard {
                let Some(rule) = rules.get(*id) else { continue };
                let Condition::Stale { metric, after_ms } = &rule.condition else {
                    continue;
                };
                if now_ms - heard.server_ms < *after_ms {
                    continue;
                }
                let state = states.rules.entry(*id).or_default();
                // Dated in device time when a value was heard: its time plus the silence.
                let ts_ms = heard.device_ms.unwrap_or(heard.server_ms) + after_ms;
                if let Some(change) = state.silent(ts_ms) {
                    note_rule(out, device, *id, state);
                    let extra: Vec<(&str, Value)> =
                        metric.iter().map(|m| ("metric", json!(m))).collect();
                    out.events.push(alert(device, rule, change, None, &extra));
                }
            }
        }
    }

    /// One step of a device's state with `rule`: the state is kept when it changed (and
    /// dropped when idle), and a change raises or clears an alert with `extra` fields.
    fn step_rule(
        &mut self,
        device: &Arc<str>,
        rule: &AlertRule,
        position: Option<u64>,
        extra: &[(&str, Value)],
        out: &mut Derived,
        step: impl FnOnce(&mut RuleState) -> Option<Change>,
    ) {
        let states = &mut self.device(device).rules;
        let state = states.entry(rule.id).or_default();
        let before = state.clone();
        let change = step(state);
        // Idle before and after: nothing stored either way.
        if *state != before && !(before.is_idle() && state.is_idle()) {
            note_rule(out, device, rule.id, state);
        }
        if state.is_idle() {
            states.remove(&rule.id);
        }
        if let Some(change) = change {
            out.events
                .push(alert(device, rule, change, position, extra));
        }
    }

    fn has_states(&self, device: &str) -> bool {
        self.devices
            .get(device)
            .is_some_and(|d| !d.fences.is_empty())
    }

    fn fix(&mut self, device: &Arc<str>, fix: &Fix, position: Option<u64>, out: &mut Derived) {
        let fences = self.fences.clone();
        let states = self.devices.entry(device.clone()).or_default();
        if fix.ts_ms < states.newest_fix_ms {
            self.counters.late.increment(1);
            return;
        }
        states.newest_fix_ms = fix.ts_ms;
        // The fences whose box holds the fix, and those the device stands in (or may be
        // entering or leaving), which a fix far outside must still reach.
        let mut ids: Vec<i64> = fences
            .candidates(device, fix.lat, fix.lon)
            .map(|f| f.id)
            .collect();
        for id in states.fences.keys() {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        for id in ids {
            let Some(fence) = fences.get(id) else {
                continue;
            };
            self.counters.checks.increment(1);
            let within = fence.rules.buffer_m + fix.accuracy.unwrap_or(0.0);
            let (inside, past_m) = fence.shape.locate_near(fix.lat, fix.lon, within);
            let seen = Seen::of(inside, past_m, fix.accuracy, &fence.rules);
            let state = states.fences.entry(id).or_default();
            let before = state.clone();
            let judged = state.judge(seen, fix, &fence.rules);
            if *state != before {
                out.states.insert(
                    (device.clone(), Subject::Geofence(id)),
                    (!state.is_idle()).then(|| StoredState {
                        device: device.clone(),
                        subject: Subject::Geofence(id),
                        active: state.inside,
                        since_ms: state.since_ms,
                        state: serde_json::to_string(state).unwrap_or_default(),
                    }),
                );
            }
            if state.is_idle() {
                states.fences.remove(&id);
            }
            for j in judged {
                let mut fields = Map::new();
                fields.insert("geofence".into(), json!(id));
                fields.insert("name".into(), json!(fence.name));
                fields.insert("event".into(), json!(j.kind.as_str()));
                fields.insert("lat".into(), json!(j.lat));
                fields.insert("lon".into(), json!(j.lon));
                out.events.push(Event {
                    seq: 0,
                    kind: EventKind::Geofence,
                    device: device.clone(),
                    ts_ms: j.ts_ms,
                    log_position: position,
                    fields,
                    stored_ms: 0,
                });
            }
        }
    }

    /// Takes up changed fences or rules. A device's state with a fence or rule that is gone,
    /// or no longer applies to it, ends without an event (README, "Geofences").
    fn refresh(&mut self, out: &mut Derived) {
        if self.fence_catalog.version() != self.fences_version {
            (self.fences_version, self.fences) = self.fence_catalog.snapshot();
            let fences = self.fences.clone();
            for (device, states) in &mut self.devices {
                let applies = |id| fences.get(id).is_some_and(|f| f.devices.matches(device));
                forget_unless(device, &mut states.fences, applies, Subject::Geofence, out);
            }
        }
        if self.rule_catalog.version() != self.rules_version {
            (self.rules_version, self.rules) = self.rule_catalog.snapshot();
            self.stale_rules = has_stale(&self.rules);
            let rules = self.rules.clone();
            for (device, states) in &mut self.devices {
                let applies = |id| rules.get(id).is_some_and(|r| r.devices.matches(device));
                forget_unless(device, &mut states.rules, applies, Subject::Rule, out);
                states.heard.retain(|id, _| applies(*id));
            }
        }
    }
}

fn has_stale(rules: &AlertRules) -> bool {
    rules
        .0
        .iter()
        .any(|r| matches!(r.condition, Condition::Stale { .. }))
}

/// Drops a device's states whose fence or rule no longer `applies`, deleting them from storage
/// with the batch.
fn forget_unless<S>(
    device: &Arc<str>,
    states: &mut HashMap<i64, S>,
    applies: impl Fn(i64) -> bool,
    subject: fn(i64) -> Subject,
    out: &mut Derived,
) {
    states.retain(|id, _| {
        let keep = applies(*id);
        if !keep {
            out.states.insert((device.clone(), subject(*id)), None);
        }
        keep
    });
}

fn note_rule(out: &mut Derived, device: &Arc<str>, id: i64, state: &RuleState) {
    out.states.insert(
        (device.clone(), Subject::Rule(id)),
        (!state.is_idle()).then(|| StoredState {
            device: device.clone(),
            subject: Subject::Rule(id),
            active: state.raised,
            since_ms: state.since_ms.unwrap_or(0),
            state: serde_json::to_string(state).unwrap_or_default(),
        }),
    );
}

fn alert(
    device: &Arc<str>,
    rule: &AlertRule,
    change: Change,
    position: Option<u64>,
    extra: &[(&str, Value)],
) -> Event {
    let mut fields = Map::new();
    fields.insert("rule".into(), json!(rule.id));
    fields.insert("name".into(), json!(rule.name));
    fields.insert("severity".into(), json!(rule.severity));
    fields.insert(
        "state".into(),
        json!(if change.raised { "raised" } else { "cleared" }),
    );
    for (k, v) in extra {
        fields.insert((*k).into(), v.clone());
    }
    Event {
        seq: 0,
        kind: EventKind::Alert,
        device: device.clone(),
        ts_ms: change.ts_ms,
        log_position: position,
        fields,
        stored_ms: 0,
    }
}
