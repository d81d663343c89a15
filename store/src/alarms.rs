//! Alarms: what a dispatcher works on. An alert rule's `raised` opens one per (rule, device),
//! and a repeat while it is open updates it (`count`, newest value), in the transaction of the
//! batch that stores the alert; the rule's `cleared` clears it there too. People acknowledge,
//! assign, annotate and clear it, each recorded with who and when. Every change is an outbox
//! event of kind `alarm`, so live views and webhooks see exactly the alarms' history.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::derived::{Event, EventKind};
use crate::time_format::format_ms;
use crate::StoreFuture;

/// What taking an action gives: the alarm as it is after, and the event of the change (none
/// when it changed nothing); or why it was not taken.
pub type ActFuture<'a> = Pin<
    Box<dyn Future<Output = Result<(AlarmRecord, Option<Arc<Event>>), AlarmRefused>> + Send + 'a>,
>;

/// Where an alarm stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmState {
    /// Raised, nobody has said they saw it.
    Active,
    /// Someone is on it.
    Acknowledged,
    /// Over: by its rule, or by a person.
    Cleared,
}

impl AlarmState {
    pub const ALL: [AlarmState; 3] = [
        AlarmState::Active,
        AlarmState::Acknowledged,
        AlarmState::Cleared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Active => "active",
            AlarmState::Acknowledged => "acknowledged",
            AlarmState::Cleared => "cleared",
        }
    }

    pub fn parse(name: &str) -> Option<AlarmState> {
        AlarmState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Severities, most urgent first; a rule without one gives `major`.
pub const SEVERITIES: [&str; 4] = ["critical", "major", "minor", "warning"];
pub const DEFAULT_SEVERITY: &str = "major";

/// An alarm as storage keeps it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct AlarmRecord {
    pub id: i64,
    #[sqlx(rename = "rule_id")]
    pub rule: i64,
    #[sqlx(rename = "device_id")]
    pub device: String,
    pub name: String,
    pub severity: String,
    pub state: String,
    #[sqlx(rename = "raised_at")]
    pub raised_ms: i64,
    #[sqlx(rename = "updated_at")]
    pub updated_ms: i64,
    pub count: i32,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub acknowledged_by: Option<String>,
    #[sqlx(rename = "acknowledged_at")]
    pub acknowledged_ms: Option<i64>,
    pub cleared_by: Option<String>,
    #[sqlx(rename = "cleared_at")]
    pub cleared_ms: Option<i64>,
    pub assignee: Option<String>,
    /// A JSON list of `{"by", "ts", "text"}`.
    pub notes: String,
}

pub(crate) const ALARM_COLUMNS: &str = "id, rule_id, device_id, name, severity, state, raised_at, updated_at, count, metric, value, acknowledged_by, acknowledged_at, cleared_by, cleared_at, assignee, notes";

impl AlarmRecord {
    fn notes_json(&self) -> Value {
        serde_json::from_str(&self.notes).unwrap_or_else(|_| json!([]))
    }

    /// The event of a change to it: `change` says what happened (`raised`, `repeated`,
    /// `acknowledged`, `assigned`, `noted`, `cleared`), `by` who did it (none: the rule).
    pub fn event(&self, change: &str, by: Option<&str>, ts_ms: i64) -> Event {
        let mut fields = Map::new();
        fields.insert("alarm".into(), json!(self.id));
        fields.insert("rule".into(), json!(self.rule));
        fields.insert("name".into(), json!(self.name));
        fields.insert("severity".into(), json!(self.severity));
        fields.insert("state".into(), json!(self.state));
        fields.insert("change".into(), json!(change));
        fields.insert("count".into(), json!(self.count));
        if let Some(metric) = &self.metric {
            fields.insert("metric".into(), json!(metric));
        }
        if let Some(value) = self.value {
            fields.insert("value".into(), json!(value));
        }
        if let Some(by) = by {
            fields.insert("by".into(), json!(by));
        }
        if let Some(assignee) = &self.assignee {
            fields.insert("assignee".into(), json!(assignee));
        }
        Event {
            seq: 0,
            kind: EventKind::Alarm,
            device: self.device.as_str().into(),
            ts_ms,
            log_position: None,
            fields,
            stored_ms: crate::time_format::now_ms(),
        }
    }
}

/// The public form (CONTRACT.md, "Alarms").
impl Serialize for AlarmRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("rule", &self.rule)?;
        map.serialize_entry("device", &self.device)?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("severity", &self.severity)?;
        map.serialize_entry("state", &self.state)?;
        map.serialize_entry("raised", &format_ms(self.raised_ms))?;
        map.serialize_entry("updated", &format_ms(self.updated_ms))?;
        map.serialize_entry("count", &self.count)?;
        map.serialize_entry("metric", &self.metric)?;
        map.serialize_entry("value", &self.value)?;
        let acknowledged = self
            .acknowledged_ms
            .map(|at| json!({"by": self.acknowledged_by, "ts": format_ms(at)}));
        map.serialize_entry("acknowledged", &acknowledged)?;
        let cleared = self
            .cleared_ms
            .map(|at| json!({"by": self.cleared_by, "ts": format_ms(at)}));
        map.serialize_entry("cleared", &cleared)?;
        map.serialize_entry("assignee", &self.assignee)?;
        map.serialize_entry("notes", &self.notes_json())?;
        map.end()
    }
}

/// What a person does to an alarm.
#[derive(Clone, Debug, PartialEq)]
pub enum AlarmAction {
    Acknowledge,
    Clear,
    Assign(String),
    Note(String),
}

impl AlarmAction {
    /// The `change` its event names.
    pub fn change(&self) -> &'static str {
        match self {
            AlarmAction::Acknowledge => "acknowledged",
            AlarmAction::Clear => "cleared",
            AlarmAction::Assign(_) => "assigned",
            AlarmAction::Note(_) => "noted",
        }
    }
}

/// Why an action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AlarmRefused {
    #[error("no such alarm")]
    NotFound,
    #[error("the alarm is cleared")]
    Cleared,
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// `GET /api/alarms`.
#[derive(Clone, Debug, Default)]
pub struct AlarmQuery {
    pub state: Option<AlarmState>,
    pub devices: Vec<String>,
    pub severity: Option<String>,
    pub limit: u32,
}

pub trait AlarmStore: Send + Sync {
    /// Newest first.
    fn alarms<'a>(&'a self, query: &'a AlarmQuery) -> StoreFuture<'a, Vec<AlarmRecord>>;
    fn alarm(&self, id: i64) -> StoreFuture<'_, Option<AlarmRecord>>;
    /// Takes `action` by `by` at `now_ms`, with its event, in one transaction. An action that
    /// changes nothing (acknowledging an acknowledged alarm) stores nothing and has no event.
    fn act<'a>(
        &'a self,
        id: i64,
        action: &'a AlarmAction,
        by: &'a str,
        now_ms: i64,
    ) -> ActFuture<'a>;
}

/// The statement an action runs: `$1` id, `$2` now, and `$3` who (acknowledge, clear), the
/// assignee (assign) or the notes with the new one (note). Guarded: it changes an alarm only
/// where the action applies.
pub(crate) fn action_sql(action: &AlarmAction) -> &'static str {
    match action {
        AlarmAction::Acknowledge => {
            "UPDATE alarms SET state = 'acknowledged', acknowledged_by = $3, acknowledged_at = $2,
                 updated_at = $2
             WHERE id = $1 AND state = 'active'"
        }
        AlarmAction::Clear => {
            "UPDATE alarms SET state = 'cleared', cleared_by = $3, cleared_at = $2, updated_at = $2
             WHERE id = $1 AND state <> 'cleared'"
        }
        AlarmAction::Assign(_) => {
            "UPDATE alarms SET assignee = $3, updated_at = $2 WHERE id = $1 AND state <> 'cleared'"
        }
        AlarmAction::Note(_) => "UPDATE alarms SET notes = $3, updated_at = $2 WHERE id = $1",
    }
}

/// A raise opens the rule's alarm for the device, or updates the open one: `$1` rule, `$2`
/// device, `$3` name, `$4` severity, `$5` ts, `$6` metric, `$7` value, `$8` now.
pub(crate) const RAISE_SQL: &str = "INSERT INTO alarms AS a (rule_id, device_id, name, severity,
         state, raised_at, updated_at, count, metric, value)
     VALUES ($1, $2, $3, $4, 'active', $5, $8, 1, $6, $7)
     ON CONFLICT (rule_id, device_id) WHERE state <> 'cleared'
     DO UPDATE SET count = a.count + 1, value = excluded.value, name = excluded.name,
         severity = excluded.severity, updated_at = excluded.updated_at";

/// The rule's clear ends the open alarm: `$1` rule, `$2` device, `$3` ts, `$4` now.
pub(crate) const CLEAR_SQL: &str =
    "UPDATE alarms SET state = 'cleared', cleared_at = $3, updated_at = $4
     WHERE rule_id = $1 AND device_id = $2 AND state <> 'cleared'";

/// Implements [`AlarmStore`] for `$store` over `$db` (`$begin` as for `impl_command_store!`,
/// whose `append_events` it uses), and `open_alarms`, which the batch writer runs in its
/// transaction.
macro_rules! impl_alarm_store {
    ($store:ty, $db:ty, $begin:literal) => {
        impl $store {
            /// Opens, updates and clears the alarms of the batch's alert events (already
            /// written), and writes their events after them; returns those, numbered (none
            /// without alerts).
            pub(crate) async fn open_alarms(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[$crate::derived::Event],
            ) -> Result<Vec<$crate::derived::Event>, $crate::StoreError> {
                let now = $crate::time_format::now_ms();
                let mut changed = Vec::new();
                for alert in events.iter().filter(|e| e.kind == $crate::derived::EventKind::Alert) {
                    let Some(rule) = alert.fields.get("rule").and_then(serde_json::Value::as_i64)
                    else {
                        continue;
                    };
                    let text = |key: &str| {
                        alert
                            .fields
                            .get(key)
                            .and_then(serde_json::Value::as_str)
                            .map(str::to_owned)
                    };
                    let columns = $crate::alarms::ALARM_COLUMNS;
                    let (row, change): (Option<$crate::alarms::AlarmRecord>, &str) =
                        match text("state").as_deref() {
                            Some("raised") => {
                                let sql = format!("{} RETURNING {columns}", $crate::alarms::RAISE_SQL);
                                let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                                    .bind(rule)
                                    .bind(alert.device.to_string())
                                    .bind(text("name").unwrap_or_default())
                                    .bind(text("severity").unwrap_or_else(|| {
                                        $crate::alarms::DEFAULT_SEVERITY.into()
                                    }))
                                    .bind(alert.ts_ms)
                                    .bind(text("metric"))
                                    .bind(alert.fields.get("value").and_then(serde_json::Value::as_f64))
                                    .bind(now)
                                    .fetch_optional(&mut **tx)
                                    .await?;
                                (row, "raised")
                            }
                            Some("cleared") => {
                                let sql = format!("{} RETURNING {columns}", $crate::alarms::CLEAR_SQL);
                                let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                                    .bind(rule)
                                    .bind(alert.device.to_string())
                                    .bind(alert.ts_ms)
                                    .bind(now)
                                    .fetch_optional(&mut **tx)
                                    .await?;
                                (row, "cleared")
                            }
                            _ => continue,
                        };
                    if let Some(alarm) = row {
                        let change = if change == "raised" && alarm.count > 1 {
                            "repeated"
                        } else {
                            change
                        };
                        changed.push(alarm.event(change, None, alert.ts_ms));
                    }
                }
                // After the batch's own events (on PostgreSQL this transaction holds the seq
                // lock already; taking it again is a no-op).
                let first = Self::append_events(tx, &changed).await?;
                for (seq, e) in (first..).zip(changed.iter_mut()) {
                    e.seq = seq;
                }
                Ok(changed)
            }
        }

        impl $crate::alarms::AlarmStore for $store {
            fn alarms<'a>(
                &'a self,
                q: &'a $crate::alarms::AlarmQuery,
            ) -> $crate::StoreFuture<'a, Vec<$crate::alarms::AlarmRecord>> {
                Box::pin(async move {
                    let mut sql = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM alarms WHERE true",
                        $crate::alarms::ALARM_COLUMNS
                    ));
                    if let Some(state) = q.state {
                        sql.push(" AND state = ").push_bind(state.as_str());
                    }
                    if let Some(severity) = &q.severity {
                        sql.push(" AND severity = ").push_bind(severity.clone());
                    }
                    if !q.devices.is_empty() {
                        sql.push(" AND device_id IN (");
                        let mut list = sql.separated(", ");
                        for device in &q.devices {
                            list.push_bind(device.clone());
                        }
                        sql.push(")");
                    }
                    sql.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(q.limit));
                    Ok(sql
                        .build_query_as::<$crate::alarms::AlarmRecord>()
                        .fetch_all(&self.pool)
                        .await?)
                })
            }

            fn alarm(
                &self,
                id: i64,
            ) -> $crate::StoreFuture<'_, Option<$crate::alarms::AlarmRecord>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM alarms WHERE id = $1",
                        $crate::alarms::ALARM_COLUMNS
                    );
                    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?)
                })
            }

            fn act<'a>(
                &'a self,
                id: i64,
                action: &'a $crate::alarms::AlarmAction,
                by: &'a str,
                now_ms: i64,
            ) -> $crate::alarms::ActFuture<'a> {
                use $crate::alarms::{AlarmAction, AlarmRefused};
                Box::pin(async move {
                    let attempt = async {
                        let mut tx = self.pool.begin_with($begin).await?;
                        let columns = $crate::alarms::ALARM_COLUMNS;
                        let current: Option<$crate::alarms::AlarmRecord> = sqlx::query_as(
                            sqlx::AssertSqlSafe(format!("SELECT {columns} FROM alarms WHERE id = $1")),
                        )
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(current) = current else {
                            return Ok(Err(AlarmRefused::NotFound));
                        };
                        let text = match action {
                            AlarmAction::Assign(to) => to.clone(),
                            AlarmAction::Note(note) => {
                                let mut notes: Vec<serde_json::Value> =
                                    serde_json::from_str(&current.notes).unwrap_or_default();
                                notes.push(serde_json::json!({
                                    "by": by,
                                    "ts": $crate::time_format::format_ms(now_ms),
                                    "text": note,
                                }));
                                serde_json::Value::Array(notes).to_string()
                            }
                            AlarmAction::Acknowledge | AlarmAction::Clear => by.to_owned(),
                        };
                        let sql = format!(
                            "{} RETURNING {columns}",
                            $crate::alarms::action_sql(action)
                        );
                        let changed: Option<$crate::alarms::AlarmRecord> =
                            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                                .bind(id)
                                .bind(now_ms)
                                .bind(&text)
                                .fetch_optional(&mut *tx)
                                .await?;
                        let Some(changed) = changed else {
                            // Nothing applied: acknowledged already, or cleared.
                            return Ok(match (action, current.state.as_str()) {
                                (AlarmAction::Acknowledge, "acknowledged") => Ok((current, None)),
                                _ => Err(AlarmRefused::Cleared),
                            });
                        };
                        let event = changed.event(action.change(), Some(by), now_ms);
                        let first = Self::append_events(&mut tx, std::slice::from_ref(&event))
                            .await?;
                        tx.commit().await?;
                        let mut event = event;
                        event.seq = first;
                        Ok::<_, $crate::StoreError>(Ok((changed, Some(std::sync::Arc::new(event)))))
                    };
                    match attempt.await {
                        Ok(answer) => answer,
                        Err(e) => Err(AlarmRefused::Store(e)),
                    }
                })
            }
        }
    };
}
pub(crate) use impl_alarm_store;
