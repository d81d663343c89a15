//! Storage of what the judges need and make: geofence and alert rule definitions, each
//! device's state with them, the outbox of events, and the webhooks that deliver it.
//!
//! The SQL is the same on SQLite and PostgreSQL (`$N` binds on both), so one macro implements
//! [`EventStore`] for both back ends, and another writes a batch's derived rows inside the
//! batch's own transaction.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::StoreFuture;
use crate::derived::{Derived, JudgeSeed, StoredState, Subject};
use crate::derived::{Event, EventKind};

/// Geofences and alert rules are stored the same way: an id, a name and their JSON form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Definitions {
    Geofences,
    AlertRules,
}

impl Definitions {
    pub(super) fn table(self) -> &'static str {
        match self {
            Definitions::Geofences => "geofences",
            Definitions::AlertRules => "alert_rules",
        }
    }

    pub(super) fn column(self) -> &'static str {
        match self {
            Definitions::Geofences => "feature",
            Definitions::AlertRules => "rule",
        }
    }

    /// Its name in errors and in stored states: `geofence`, `rule`.
    pub fn subject(self) -> &'static str {
        match self {
            Definitions::Geofences => "geofence",
            Definitions::AlertRules => "rule",
        }
    }
}

/// One stored geofence or rule: its JSON form as it was given (with its id).
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    pub id: i64,
    pub name: String,
    pub body: String,
}

/// `GET /api/events`: oldest first, after `after_seq`, in `[from_ms, to_ms)`.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub devices: Vec<String>,
    pub kinds: Vec<EventKind>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub after_seq: u64,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WebhookRecord {
    pub id: i64,
    pub url: String,
    /// JSON arrays as given.
    pub kinds: Vec<String>,
    pub devices: Vec<String>,
    pub secret: String,
    pub delivered_seq: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

pub trait EventStore: Send + Sync {
    fn definitions(&self, what: Definitions) -> StoreFuture<'_, Vec<Definition>>;
    /// Stores every one (name, JSON form) in one transaction, or none; returns their ids.
    fn add_definitions<'a>(
        &'a self,
        what: Definitions,
        items: &'a [(String, Value)],
        now_ms: i64,
    ) -> StoreFuture<'a, Vec<i64>>;
    fn replace_definition<'a>(
        &'a self,
        what: Definitions,
        id: i64,
        name: &'a str,
        body: &'a Value,
        now_ms: i64,
    ) -> StoreFuture<'a, ()>;
    /// Deletes it with every device's state about it.
    fn delete_definition(&self, what: Definitions, id: i64) -> StoreFuture<'_, ()>;
    fn judge_seed(&self) -> StoreFuture<'_, JudgeSeed>;
    /// One device's stored states about geofences or rules.
    fn device_states<'a>(
        &'a self,
        device: &'a str,
        what: Definitions,
    ) -> StoreFuture<'a, Vec<StoredState>>;
    fn events<'a>(&'a self, query: &'a EventQuery) -> StoreFuture<'a, Vec<Event>>;
    /// The newest event's seq (0 before the first).
    fn last_event_seq(&self) -> StoreFuture<'_, u64>;
    fn webhooks(&self) -> StoreFuture<'_, Vec<WebhookRecord>>;
    /// Adds a webhook that starts after the newest event stored; returns it.
    fn add_webhook<'a>(&'a self, hook: &'a WebhookRecord) -> StoreFuture<'a, WebhookRecord>;
    fn delete_webhook(&self, id: i64) -> StoreFuture<'_, ()>;
    /// Records how far a webhook has delivered and, when given, its newest error (an earlier
    /// error stays shown until a newer one replaces it).
    fn webhook_progress<'a>(
        &'a self,
        id: i64,
        delivered_seq: u64,
        error: Option<&'a str>,
        now_ms: i64,
    ) -> StoreFuture<'a, ()>;
}

pub(super) type EventRow = (i64, String, String, i64, Option<i64>, String, i64);
pub(super) type StateRow = (String, String, i64, bool, i64, String);
pub(super) type WebhookRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    i64,
);

pub(super) fn event_from_row(row: EventRow) -> Option<Event> {
    let (seq, kind, device, ts_ms, log_position, fields, stored_ms) = row;
    let fields: Map<String, Value> = serde_json::from_str(&fields).ok()?;
    Some(Event {
        seq: u64::try_from(seq).ok()?,
        kind: EventKind::parse(&kind)?,
        device: Arc::from(device),
        ts_ms,
        log_position: log_position.and_then(|p| u64::try_from(p).ok()),
        fields,
        stored_ms,
    })
}

pub(super) fn state_from_row(row: StateRow) -> Option<StoredState> {
    let (device, subject, id, active, since_ms, state) = row;
    Some(StoredState {
        device: Arc::from(device),
        subject: Subject::from_parts(&subject, id)?,
        active,
        since_ms,
        state,
    })
}

pub(super) fn webhook_from_row(row: WebhookRow) -> WebhookRecord {
    let (id, url, kinds, devices, secret, delivered, last_error, last_error_at_ms, created_at_ms) =
        row;
    let list = |text: &str| serde_json::from_str::<Vec<String>>(text).unwrap_or_default();
    WebhookRecord {
        id,
        url,
        kinds: list(&kinds),
        devices: list(&devices),
        secret,
        delivered_seq: u64::try_from(delivered).unwrap_or(0),
        last_error,
        last_error_at_ms,
        created_at_ms,
    }
}

pub(super) fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) const STATE_COLUMNS: &str = "device_id, subject, subject_id, active, since, state";
pub(super) const WEBHOOK_COLUMNS: &str =
    "id, url, kinds, devices, secret, delivered_seq, last_error, last_error_at, created_at";

/// The states of a batch to write (upserted, while their fence or rule exists) and to
/// delete, as columns, for the back ends' bulk statements.
#[derive(Default)]
pub(super) struct StateColumns {
    pub devices: Vec<String>,
    pub subjects: Vec<&'static str>,
    pub ids: Vec<i64>,
    pub active: Vec<bool>,
    pub since: Vec<i64>,
    pub states: Vec<String>,
}

/// Splits a batch's changed states into those to write and those to delete.
pub(super) fn state_columns(derived: &Derived) -> (StateColumns, StateColumns) {
    let (mut upserts, mut deletes) = (StateColumns::default(), StateColumns::default());
    for ((device, subject), state) in &derived.states {
        let out = if state.is_some() {
            &mut upserts
        } else {
            &mut deletes
        };
        out.devices.push(device.to_string());
        out.subjects.push(subject.kind());
        out.ids.push(subject.id());
        if let Some(s) = state {
            out.active.push(s.active);
            out.since.push(s.since_ms);
            out.states.push(s.state.clone());
        }
    }
    (upserts, deletes)
}

/// The newest event's seq, read in the batch's transaction: the writer is the only one that
/// adds events, so the batch's events take the seqs after it.
pub(super) const LAST_EVENT_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM events";

/// Upserts keep only states whose fence or rule still exists: one deleted since the fix was
/// judged is not brought back.
pub(super) const STATE_STILL_APPLIES: &str =
    "(s = 'geofence' AND EXISTS (SELECT 1 FROM geofences g WHERE g.id = i))
     OR (s = 'rule' AND EXISTS (SELECT 1 FROM alert_rules r WHERE r.id = i))";

pub(super) const STATE_UPSERT_TAIL: &str = " ON CONFLICT (device_id, subject, subject_id)
     DO UPDATE SET active = excluded.active, since = excluded.since, state = excluded.state";

/// Implements [`EventStore`] for a back end `$store` (with a `pool` field) over database `$db`.
macro_rules! impl_event_store {
    ($store:ty, $db:ty) => {
        impl $crate::events::EventStore for $store {
            fn definitions(
                &self,
                what: $crate::events::Definitions,
            ) -> $crate::StoreFuture<'_, Vec<$crate::events::Definition>> {
                Box::pin(async move {
                    let sql = format!("SELECT id, name, {} FROM {} ORDER BY id", what.column(), what.table());
                    let rows: Vec<(i64, String, String)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
                    Ok(rows
                        .into_iter()
                        .map(|(id, name, body)| $crate::events::Definition { id, name, body })
                        .collect())
                })
            }

            fn add_definitions<'a>(
                &'a self,
                what: $crate::events::Definitions,
                items: &'a [(String, serde_json::Value)],
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, Vec<i64>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let sql = format!(
                        "INSERT INTO {} (name, {}, updated_at) VALUES ($1, $2, $3) RETURNING id",
                        what.table(),
                        what.column()
                    );
                    let mut ids = Vec::with_capacity(items.len());
                    for (name, body) in items {
                        let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                            .bind(name)
                            .bind(body.to_string())
                            .bind(now_ms)
                            .fetch_one(&mut *tx)
                            .await?;
                        ids.push(id);
                    }
                    tx.commit().await?;
                    Ok(ids)
                })
            }

            fn replace_definition<'a>(
                &'a self,
                what: $crate::events::Definitions,
                id: i64,
                name: &'a str,
                body: &'a serde_json::Value,
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, ()> {
                Box::pin(async move {
                    let sql = format!(
                        "UPDATE {} SET name = $2, {} = $3, updated_at = $4 WHERE id = $1",
                        what.table(),
                        what.column()
                    );
                    let changed = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .bind(name)
                        .bind(body.to_string())
                        .bind(now_ms)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    if changed == 0 {
                        return Err($crate::StoreError::NotFound(format!("{} {id}", what.subject())));
                    }
                    Ok(())
                })
            }

            fn delete_definition(
                &self,
                what: $crate::events::Definitions,
                id: i64,
            ) -> $crate::StoreFuture<'_, ()> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let sql = format!("DELETE FROM {} WHERE id = $1", what.table());
                    let changed = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).execute(&mut *tx).await?.rows_affected();
                    if changed == 0 {
                        return Err($crate::StoreError::NotFound(format!("{} {id}", what.subject())));
                    }
                    sqlx::query("DELETE FROM judge_state WHERE subject = $1 AND subject_id = $2")
                        .bind(what.subject())
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn judge_seed(&self) -> $crate::StoreFuture<'_, $crate::derived::JudgeSeed> {
                Box::pin(async move {
                    let sql = format!("SELECT {} FROM judge_state", $crate::events::STATE_COLUMNS);
                    let rows: Vec<$crate::events::StateRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
                    let newest_fix_ms: Vec<(String, i64)> = sqlx::query_as(
                        "SELECT device_id, last_fix_ms FROM devices WHERE last_fix_ms IS NOT NULL",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    Ok($crate::derived::JudgeSeed {
                        states: rows.into_iter().filter_map($crate::events::state_from_row).collect(),
                        newest_fix_ms,
                    })
                })
            }

            fn device_states<'a>(
                &'a self,
                device: &'a str,
                what: $crate::events::Definitions,
            ) -> $crate::StoreFuture<'a, Vec<$crate::derived::StoredState>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM judge_state WHERE device_id = $1 AND subject = $2 ORDER BY subject_id",
                        $crate::events::STATE_COLUMNS
                    );
                    let rows: Vec<$crate::events::StateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(device)
                        .bind(what.subject())
                        .fetch_all(&self.pool)
                        .await?;
                    Ok(rows.into_iter().filter_map($crate::events::state_from_row).collect())
                })
            }

            fn events<'a>(
                &'a self,
                query: &'a $crate::events::EventQuery,
            ) -> $crate::StoreFuture<'a, Vec<$crate::derived::Event>> {
                Box::pin(async move {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT seq, kind, device_id, ts, log_position, fields, stored_at FROM events WHERE seq > ",
                    );
                    q.push_bind($crate::events::to_db(query.after_seq));
                    q.push(" AND ts >= ").push_bind(query.from_ms);
                    q.push(" AND ts < ").push_bind(query.to_ms);
                    if !query.devices.is_empty() {
                        q.push(" AND device_id IN (");
                        let mut list = q.separated(", ");
                        for d in &query.devices {
                            list.push_bind(d.clone());
                        }
                        q.push(")");
                    }
                    if !query.kinds.is_empty() {
                        q.push(" AND kind IN (");
                        let mut list = q.separated(", ");
                        for k in &query.kinds {
                            list.push_bind(k.as_str());
                        }
                        q.push(")");
                    }
                    q.push(" ORDER BY seq LIMIT ").push_bind(i64::from(query.limit));
                    let rows: Vec<$crate::events::EventRow> =
                        q.build_query_as().fetch_all(&self.pool).await?;
                    Ok(rows.into_iter().filter_map($crate::events::event_from_row).collect())
                })
            }

            fn last_event_seq(&self) -> $crate::StoreFuture<'_, u64> {
                Box::pin(async move {
                    let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(u64::try_from(last).unwrap_or(0))
                })
            }

            fn webhooks(&self) -> $crate::StoreFuture<'_, Vec<$crate::events::WebhookRecord>> {
                Box::pin(async move {
                    let sql = format!("SELECT {} FROM webhooks ORDER BY id", $crate::events::WEBHOOK_COLUMNS);
                    let rows: Vec<$crate::events::WebhookRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
                    Ok(rows.into_iter().map($crate::events::webhook_from_row).collect())
                })
            }

            fn add_webhook<'a>(
                &'a self,
                hook: &'a $crate::events::WebhookRecord,
            ) -> $crate::StoreFuture<'a, $crate::events::WebhookRecord> {
                Box::pin(async move {
                    let sql = format!(
                        "INSERT INTO webhooks (url, kinds, devices, secret, delivered_seq, created_at)
                         VALUES ($1, $2, $3, $4, (SELECT COALESCE(MAX(seq), 0) FROM events), $5)
                         RETURNING {}",
                        $crate::events::WEBHOOK_COLUMNS
                    );
                    let row: $crate::events::WebhookRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(&hook.url)
                        .bind(serde_json::to_string(&hook.kinds).unwrap_or_default())
                        .bind(serde_json::to_string(&hook.devices).unwrap_or_default())
                        .bind(&hook.secret)
                        .bind(hook.created_at_ms)
                        .fetch_one(&self.pool)
                        .await?;
                    Ok($crate::events::webhook_from_row(row))
                })
            }

            $crate::events::delivery_position!(delete_webhook, webhook_progress, "webhooks", "webhook");
        }
    };
}

pub(super) use impl_event_store;

/// A delivery's (webhook's or channel's) `delete` and `progress` methods over its table: the
/// position it has delivered up to, and its newest error, which stays shown until a newer one.
macro_rules! delivery_position {
    ($delete:ident, $progress:ident, $table:literal, $noun:literal) => {
        fn $delete(&self, id: i64) -> $crate::StoreFuture<'_, ()> {
            Box::pin(async move {
                let changed = sqlx::query(concat!("DELETE FROM ", $table, " WHERE id = $1"))
                    .bind(id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                if changed == 0 {
                    return Err($crate::StoreError::NotFound(format!(
                        concat!($noun, " {}"),
                        id
                    )));
                }
                Ok(())
            })
        }

        fn $progress<'a>(
            &'a self,
            id: i64,
            delivered_seq: u64,
            error: Option<&'a str>,
            now_ms: i64,
        ) -> $crate::StoreFuture<'a, ()> {
            Box::pin(async move {
                sqlx::query(concat!(
                    "UPDATE ",
                    $table,
                    " SET delivered_seq = $2, last_error = COALESCE($3, last_error),
                        last_error_at = CASE WHEN $3 IS NULL THEN last_error_at ELSE $4 END
                     WHERE id = $1"
                ))
                .bind(id)
                .bind($crate::events::to_db(delivered_seq))
                .bind(error)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            })
        }
    };
}

pub(crate) use delivery_position;
