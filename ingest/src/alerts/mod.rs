//! Alert rules: a threshold on a metric (with hysteresis and a duration in device time), a
//! device offline too long, or a connected device silent about a metric (or its position) too
//! long; read and checked from their JSON form (CONTRACT.md, "Alert rules" and "Alarms"). Each
//! device's standing with a rule is judged in [`judge`].

pub mod judge;

use serde_json::Value;

use fieldline_store::alarms::{DEFAULT_SEVERITY, SEVERITIES};

use crate::document::is_valid_name;
use crate::events::devices::Devices;

const MAX_NAME: usize = 200;

#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// Raised once the value has been past `trip` for `for_ms`; cleared once it is past
    /// `clear` the other way.
    Threshold {
        metric: String,
        direction: Direction,
        trip: f64,
        /// `None`: cleared as soon as the trip condition no longer holds.
        clear: Option<f64>,
        for_ms: i64,
    },
    /// Raised once the device has been offline this long; cleared when it is back.
    Offline { after_ms: i64 },
    /// Raised once a connected device has sent no value of `metric` (`None`: no fix) for
    /// this long on the server's clock; cleared by the next one. A device that disconnects
    /// is the offline rule's business: its silence is not counted while it is away.
    Stale {
        metric: Option<String>,
        after_ms: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Above,
    Below,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    pub id: i64,
    pub name: String,
    pub devices: Devices,
    pub condition: Condition,
    /// The severity of the alarms it opens: `critical`, `major` (the default), `minor` or
    /// `warning`.
    pub severity: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct BadRule(pub String);

impl AlertRule {
    /// Reads and checks a rule's JSON body; the error says what is wrong.
    pub fn from_json(id: i64, body: &Value) -> Result<AlertRule, BadRule> {
        let bad = |m: &str| BadRule(m.to_owned());
        let Some(fields) = body.as_object() else {
            return Err(bad("a rule is a JSON object"));
        };
        let name = match fields.get("name") {
            Some(Value::String(n)) if !n.is_empty() && n.chars().count() <= MAX_NAME => n.clone(),
            _ => {
                return Err(BadRule(format!(
                    "name must be a string of 1 to {MAX_NAME} characters"
                )))
            }
        };
        let devices = Devices::from_json(fields.get("devices")).map_err(BadRule)?;
        let severity = match fields.get("severity") {
            None | Some(Value::Null) => DEFAULT_SEVERITY,
            Some(Value::String(s)) => SEVERITIES
                .into_iter()
                .find(|known| known == s)
                .ok_or_else(|| bad("severity must be critical, major, minor or warning"))?,
            Some(_) => return Err(bad("severity must be critical, major, minor or warning")),
        };
        let number = |key: &str| -> Result<Option<f64>, BadRule> {
            match fields.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| BadRule(format!("{key} must be a number"))),
            }
        };
        let seconds = |key: &str| -> Result<Option<i64>, BadRule> {
            match number(key)? {
                None => Ok(None),
                Some(s) if (0.0..=31_536_000.0).contains(&s) => Ok(Some((s * 1000.0) as i64)),
                Some(_) => Err(BadRule(format!("{key} must be from 0 to 31536000 seconds"))),
            }
        };
        let (above, below) = (number("above")?, number("below")?);
        let (clear_below, clear_above) = (number("clear_below")?, number("clear_above")?);
        let offline = seconds("offline_for_s")?;
        let stale = seconds("stale_for_s")?;
        let condition = if let Some(after_ms) = stale {
            if above.is_some() || below.is_some() || offline.is_some() {
                return Err(bad(
                    "a stale rule (stale_for_s) takes no above, below or offline_for_s",
                ));
            }
            if after_ms == 0 {
                return Err(bad("stale_for_s must be above 0"));
            }
            let metric = match fields.get("metric") {
                None | Some(Value::Null) => None,
                Some(Value::String(m)) if is_valid_name(m) => Some(m.clone()),
                Some(_) => {
                    return Err(bad(
                        "metric must be a metric name: 1 to 64 characters from [A-Za-z0-9_.-]",
                    ))
                }
            };
            Condition::Stale { metric, after_ms }
        } else {
            match (fields.get("metric"), above, below, offline) {
            (None, None, None, Some(after_ms)) => {
                if after_ms == 0 {
                    return Err(bad("offline_for_s must be above 0"));
                }
                Condition::Offline { after_ms }
            }
            (Some(_), _, _, Some(_)) | (_, Some(_), _, Some(_)) | (_, _, Some(_), Some(_)) => {
                return Err(bad("a rule is either a threshold (metric with above or below) or an offline rule (offline_for_s), not both"))
            }
            (None, None, None, None) => {
                return Err(bad("a rule needs a condition: metric with above or below, offline_for_s, or stale_for_s"))
            }
            (metric, above, below, None) => {
                let metric = match metric {
                    Some(Value::String(m)) if is_valid_name(m) => m.clone(),
                    Some(_) => return Err(bad("metric must be a metric name: 1 to 64 characters from [A-Za-z0-9_.-]")),
                    None => return Err(bad("a threshold rule needs metric")),
                };
                let (direction, trip, clear) = match (above, below) {
                    (Some(_), Some(_)) => return Err(bad("give above or below, not both")),
                    (None, None) => return Err(bad("a threshold rule needs above or below")),
                    (Some(a), None) => {
                        if clear_above.is_some() {
                            return Err(bad("clear_above goes with below; with above use clear_below"));
                        }
                        if clear_below.is_some_and(|c| c > a) {
                            return Err(bad("clear_below must not be above above"));
                        }
                        (Direction::Above, a, clear_below)
                    }
                    (None, Some(b)) => {
                        if clear_below.is_some() {
                            return Err(bad("clear_below goes with above; with below use clear_above"));
                        }
                        if clear_above.is_some_and(|c| c < b) {
                            return Err(bad("clear_above must not be below below"));
                        }
                        (Direction::Below, b, clear_above)
                    }
                };
                Condition::Threshold {
                    metric,
                    direction,
                    trip,
                    clear,
                    for_ms: seconds("for_s")?.unwrap_or(0),
                }
            }
            }
        };
        Ok(AlertRule {
            id,
            name,
            devices,
            condition,
            severity,
        })
    }
}

/// Every rule, as the judges use them.
#[derive(Default)]
pub struct AlertRules(pub Vec<AlertRule>);

impl AlertRules {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, id: i64) -> Option<&AlertRule> {
        self.0.iter().find(|r| r.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_kinds_and_refuses_what_is_incomplete() {
        let cold = AlertRule::from_json(
            1,
            &json!({"name": "Cold chain", "devices": ["fridge-*"], "metric": "temp_c", "above": 8.0, "clear_below": 7.5, "for_s": 120}),
        )
        .expect("valid");
        assert_eq!(
            cold.condition,
            Condition::Threshold {
                metric: "temp_c".into(),
                direction: Direction::Above,
                trip: 8.0,
                clear: Some(7.5),
                for_ms: 120_000
            }
        );
        let silent = AlertRule::from_json(2, &json!({"name": "Silent", "offline_for_s": 900}))
            .expect("valid");
        assert_eq!(silent.condition, Condition::Offline { after_ms: 900_000 });
        let quiet = AlertRule::from_json(
            3,
            &json!({"name": "Quiet fridge", "metric": "temp_c", "stale_for_s": 300}),
        )
        .expect("valid");
        assert_eq!(
            quiet.condition,
            Condition::Stale {
                metric: Some("temp_c".into()),
                after_ms: 300_000
            }
        );
        let lost =
            AlertRule::from_json(4, &json!({"name": "No fix", "stale_for_s": 60})).expect("valid");
        assert_eq!(
            lost.condition,
            Condition::Stale {
                metric: None,
                after_ms: 60_000
            }
        );
        for (body, reason) in [
            (json!({"name": "x"}), "needs a condition"),
            (json!({"name": "x", "metric": "t"}), "above or below"),
            (json!({"name": "x", "above": 1}), "needs metric"),
            (
                json!({"name": "x", "metric": "t", "above": 1, "below": 0}),
                "not both",
            ),
            (
                json!({"name": "x", "metric": "t", "above": 1, "clear_below": 2}),
                "clear_below",
            ),
            (
                json!({"name": "x", "metric": "t", "above": "hot"}),
                "above must be a number",
            ),
            (json!({"metric": "t", "above": 1}), "name"),
            (json!({"name": "x", "offline_for_s": -5}), "offline_for_s"),
            (
                json!({"name": "x", "stale_for_s": 0}),
                "stale_for_s must be above 0",
            ),
            (
                json!({"name": "x", "offline_for_s": 5, "severity": "urgent"}),
                "severity must be",
            ),
            (
                json!({"name": "x", "stale_for_s": "5"}),
                "stale_for_s must be a number",
            ),
            (
                json!({"name": "x", "metric": "t", "above": 1, "stale_for_s": 5}),
                "takes no above",
            ),
            (
                json!({"name": "x", "metric": "bad metric", "stale_for_s": 5}),
                "metric must be",
            ),
            (json!([]), "object"),
        ] {
            let e = AlertRule::from_json(1, &body).expect_err("invalid");
            assert!(e.0.contains(reason), "{e} should say {reason}");
        }
    }
}
