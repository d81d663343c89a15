//! The command ledger: what was asked of a device, and what became of it.
//!
//! Every move of a command is one guarded `UPDATE` (a command never moves backwards, and two
//! callers racing for the same move make it once), and writes an event of kind `command`
//! into the outbox in the same transaction, so live streams, `GET /api/events` and webhooks
//! see exactly the ledger's history. Outbox seqs are taken under the same lock as a batch's
//! (PostgreSQL: an advisory lock; SQLite: an immediate transaction), so they stay in commit
//! order although the store writer and the ledger both add events.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::derived::{Event, EventKind};
use crate::time_format::format_ms;
use crate::StoreFuture;

/// Where a command stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandState {
    /// Stored; the device is offline or not subscribed.
    Queued,
    /// Published to the device's session.
    Sent,
    /// The device's PUBACK arrived.
    Delivered,
    /// The device answered with `ok` (or without saying).
    Replied,
    /// The device answered `"ok": false`.
    Failed,
    /// Not delivered before it expired.
    Expired,
    /// Cancelled before delivery.
    Cancelled,
}

impl CommandState {
    pub const ALL: [CommandState; 7] = [
        CommandState::Queued,
        CommandState::Sent,
        CommandState::Delivered,
        CommandState::Replied,
        CommandState::Failed,
        CommandState::Expired,
        CommandState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Delivered => "delivered",
            CommandState::Replied => "replied",
            CommandState::Failed => "failed",
            CommandState::Expired => "expired",
            CommandState::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<CommandState> {
        CommandState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Nothing will happen to it any more.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CommandState::Queued | CommandState::Sent | CommandState::Delivered
        )
    }
}

/// A command as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct CommandRecord {
    pub id: String,
    #[sqlx(rename = "device_id")]
    pub device: String,
    pub name: String,
    /// What the device receives as the command's `payload`: JSON text when `payload_is_json`,
    /// raw bytes otherwise.
    pub payload: Vec<u8>,
    pub payload_is_json: bool,
    pub qos: i32,
    #[sqlx(try_from = "String")]
    pub state: StateColumn,
    #[sqlx(rename = "created_at")]
    pub created_ms: i64,
    #[sqlx(rename = "expires_at")]
    pub expires_ms: i64,
    #[sqlx(rename = "updated_at")]
    pub updated_ms: i64,
    #[sqlx(rename = "sent_at")]
    pub sent_ms: Option<i64>,
    #[sqlx(rename = "delivered_at")]
    pub delivered_ms: Option<i64>,
    #[sqlx(rename = "replied_at")]
    pub replied_ms: Option<i64>,
    /// How often it was published to the device.
    pub attempts: i32,
    /// The device's reply body (JSON text).
    pub reply: Option<String>,
    /// The name of the API token that created it.
    pub created_by: Option<String>,
}

/// A state as read from its column (an unknown name reads as `queued`, which the ledger
/// never writes: only its own migrations' names are there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateColumn(pub CommandState);

impl TryFrom<String> for StateColumn {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        CommandState::parse(&text)
            .map(StateColumn)
            .ok_or_else(|| format!("unknown command state {text:?}"))
    }
}

impl CommandRecord {
    pub fn state(&self) -> CommandState {
        self.state.0
    }

    /// The reply as JSON (a reply that is not JSON is kept as a string).
    pub fn reply_json(&self) -> Option<Value> {
        let reply = self.reply.as_deref()?;
        Some(serde_json::from_str(reply).unwrap_or_else(|_| Value::String(reply.to_string())))
    }

    /// The payload as the API shows it: `("payload", JSON)` or `("payload_b64", text)`.
    pub fn payload_field(&self) -> (&'static str, Value) {
        if self.payload_is_json {
            let value = serde_json::from_slice(&self.payload).unwrap_or(Value::Null);
            ("payload", value)
        } else {
            ("payload_b64", Value::String(STANDARD.encode(&self.payload)))
        }
    }

    /// The live event of its current state.
    fn event(&self, now_ms: i64) -> Event {
        let mut fields = Map::new();
        fields.insert("command".into(), Value::String(self.id.clone()));
        fields.insert("name".into(), Value::String(self.name.clone()));
        fields.insert("state".into(), Value::String(self.state().as_str().into()));
        if let Some(reply) = self.reply_json() {
            fields.insert("reply".into(), reply);
        }
        Event {
            seq: 0,
            kind: EventKind::Command,
            device: Arc::from(self.device.as_str()),
            ts_ms: now_ms,
            log_position: None,
            fields,
            stored_ms: now_ms,
        }
    }
}

/// The public form: `id`, `device`, `name`, the payload, `qos`, `state`, the times, the reply.
impl Serialize for CommandRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("device", &self.device)?;
        map.serialize_entry("name", &self.name)?;
        let (key, payload) = self.payload_field();
        map.serialize_entry(key, &payload)?;
        map.serialize_entry("qos", &self.qos)?;
        map.serialize_entry("state", self.state().as_str())?;
        map.serialize_entry("created", &format_ms(self.created_ms))?;
        map.serialize_entry("expires", &format_ms(self.expires_ms))?;
        map.serialize_entry("updated", &format_ms(self.updated_ms))?;
        for (key, at) in [
            ("sent", self.sent_ms),
            ("delivered", self.delivered_ms),
            ("replied", self.replied_ms),
        ] {
            if let Some(at) = at {
                map.serialize_entry(key, &format_ms(at))?;
            }
        }
        map.serialize_entry("attempts", &self.attempts)?;
        if let Some(reply) = self.reply_json() {
            map.serialize_entry("reply", &reply)?;
        }
        if let Some(by) = &self.created_by {
            map.serialize_entry("created_by", by)?;
        }
        map.end()
    }
}

/// A command to store.
#[derive(Clone, Debug)]
pub struct NewCommand {
    pub id: String,
    pub device: String,
    pub name: String,
    pub payload: Vec<u8>,
    pub payload_is_json: bool,
    pub qos: u8,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub created_by: Option<String>,
    pub idempotency_key: Option<String>,
}

/// One move in the ledger.
#[derive(Clone, Debug)]
pub enum Move {
    /// Published to the device's session (again, if it was sent before).
    Sent { id: String },
    /// The device's PUBACK arrived.
    Delivered { id: String },
    /// The device answered; only a command of that device moves.
    Replied {
        id: String,
        device: String,
        ok: bool,
        body: String,
    },
    /// `DELETE` before delivery.
    Cancel { id: String },
}

/// `GET /api/devices/{id}/commands`: newest first, created in `[from_ms, to_ms)`.
#[derive(Clone, Debug)]
pub struct CommandQuery {
    pub device: String,
    pub state: Option<CommandState>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: u32,
}

/// What a move did: the command as it is now, and its event when its state changed.
#[derive(Clone, Debug)]
pub struct Moved {
    pub command: CommandRecord,
    pub event: Option<Arc<Event>>,
}

pub trait CommandStore: Send + Sync {
    /// Stores a new command, queued, with its event; a command with the same idempotency key
    /// for the device is returned instead (`false`: not created now).
    fn create_command<'a>(
        &'a self,
        command: &'a NewCommand,
    ) -> StoreFuture<'a, (CommandRecord, bool, Option<Arc<Event>>)>;
    fn command<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<CommandRecord>>;
    fn commands<'a>(&'a self, query: &'a CommandQuery) -> StoreFuture<'a, Vec<CommandRecord>>;
    /// What `device` still has to get, oldest first: queued commands, and QoS 1 commands sent
    /// but not acknowledged, that have not expired.
    fn pending_commands<'a>(
        &'a self,
        device: &'a str,
        now_ms: i64,
        limit: u32,
    ) -> StoreFuture<'a, Vec<CommandRecord>>;
    /// Devices with pending commands.
    fn devices_with_pending_commands(&self, now_ms: i64) -> StoreFuture<'_, Vec<String>>;
    /// Makes each move that still applies, in one transaction; the ones that did not apply
    /// (unknown, final, or another device's) are left out of the answer.
    fn move_commands<'a>(&'a self, moves: &'a [Move], now_ms: i64) -> StoreFuture<'a, Vec<Moved>>;
    /// Expires what was not delivered in time (a QoS 0 command once sent is done, not expired).
    fn expire_commands(&self, now_ms: i64) -> StoreFuture<'_, Vec<Moved>>;
    /// Commands per state, for metrics.
    fn command_counts(&self) -> StoreFuture<'_, Vec<(CommandState, i64)>>;
}

pub(crate) const COMMAND_COLUMNS: &str = "id, device_id, name, payload, payload_is_json, qos, state, created_at, expires_at, updated_at, sent_at, delivered_at, replied_at, attempts, reply, created_by";

/// Each move as one guarded statement: `$1` id, `$2` now, and for a reply `$3` device,
/// `$4` state, `$5` body.
pub(crate) fn move_sql(step: &Move) -> &'static str {
    match step {
        Move::Sent { .. } => {
            "UPDATE commands SET state = 'sent', attempts = attempts + 1, sent_at = $2, updated_at = $2
             WHERE id = $1 AND state IN ('queued', 'sent') AND expires_at > $2"
        }
        Move::Delivered { .. } => {
            "UPDATE commands SET state = 'delivered', delivered_at = $2, updated_at = $2
             WHERE id = $1 AND state IN ('queued', 'sent')"
        }
        Move::Replied { .. } => {
            "UPDATE commands SET state = $4, reply = $5, replied_at = $2, updated_at = $2,
                 delivered_at = COALESCE(delivered_at, $2)
             WHERE id = $1 AND device_id = $3 AND state IN ('queued', 'sent', 'delivered')"
        }
        Move::Cancel { .. } => {
            "UPDATE commands SET state = 'cancelled', updated_at = $2
             WHERE id = $1 AND state IN ('queued', 'sent')"
        }
    }
}

pub(crate) fn move_id(step: &Move) -> &str {
    match step {
        Move::Sent { id } | Move::Delivered { id } | Move::Cancel { id } => id,
        Move::Replied { id, .. } => id,
    }
}

/// Events for the moved commands whose state changed.
pub(crate) fn events_of(changed: &[(CommandRecord, bool)], now_ms: i64) -> Vec<Event> {
    changed
        .iter()
        .filter(|(_, visible)| *visible)
        .map(|(c, _)| c.event(now_ms))
        .collect()
}

/// Puts the seqs storage gave back onto the moves.
pub(crate) fn numbered(
    changed: Vec<(CommandRecord, bool)>,
    events: Vec<Event>,
    first_seq: u64,
) -> Vec<Moved> {
    let mut events = events.into_iter().zip(first_seq..).map(|(mut e, seq)| {
        e.seq = seq;
        Arc::new(e)
    });
    changed
        .into_iter()
        .map(|(command, visible)| Moved {
            event: if visible { events.next() } else { None },
            command,
        })
        .collect()
}

/// Implements [`CommandStore`] for a back end `$store` (with a `pool` field) over database
/// `$db`. `$begin` opens a transaction that may write events; `$lock` (run before reading the
/// newest seq) serialises outbox seqs with the batch writer's.
macro_rules! impl_command_store {
    ($store:ty, $db:ty, $begin:literal, $lock:expr) => {
        impl $store {
            /// Writes `events` after the newest seq, in `tx`; returns the first seq.
            async fn append_events(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[$crate::derived::Event],
            ) -> Result<u64, $crate::StoreError> {
                if events.is_empty() {
                    return Ok(0);
                }
                let lock: &str = $lock;
                if !lock.is_empty() {
                    sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut **tx).await?;
                }
                let last: i64 = sqlx::query_scalar($crate::events::LAST_EVENT_SEQ)
                    .fetch_one(&mut **tx)
                    .await?;
                for (seq, e) in (last + 1..).zip(events) {
                    sqlx::query(
                        "INSERT INTO events (seq, kind, device_id, ts, log_position, fields, stored_at)
                         VALUES ($1, $2, $3, $4, NULL, $5, $6)",
                    )
                    .bind(seq)
                    .bind(e.kind.as_str())
                    .bind(e.device.to_string())
                    .bind(e.ts_ms)
                    .bind(e.fields_json())
                    .bind(e.stored_ms)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(u64::try_from(last + 1).unwrap_or(0))
            }
        }

        impl $crate::commands::CommandStore for $store {
            fn create_command<'a>(
                &'a self,
                c: &'a $crate::commands::NewCommand,
            ) -> $crate::StoreFuture<
                'a,
                (
                    $crate::commands::CommandRecord,
                    bool,
                    Option<std::sync::Arc<$crate::derived::Event>>,
                ),
            > {
                Box::pin(async move {
                    let mut tx = self.pool.begin_with($begin).await?;
                    let sql = format!(
                        "INSERT INTO commands (id, device_id, name, payload, payload_is_json, qos, state,
                             created_at, expires_at, updated_at, created_by, idempotency_key)
                         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $7, $9, $10)
                         ON CONFLICT (device_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                         DO NOTHING RETURNING {}",
                        $crate::commands::COMMAND_COLUMNS
                    );
                    let created: Option<$crate::commands::CommandRecord> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql))
                            .bind(&c.id)
                            .bind(&c.device)
                            .bind(&c.name)
                            .bind(&c.payload)
                            .bind(c.payload_is_json)
                            .bind(i32::from(c.qos))
                            .bind(c.created_ms)
                            .bind(c.expires_ms)
                            .bind(&c.created_by)
                            .bind(&c.idempotency_key)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some(created) = created else {
                        let sql = format!(
                            "SELECT {} FROM commands WHERE device_id = $1 AND idempotency_key = $2",
                            $crate::commands::COMMAND_COLUMNS
                        );
                        let existing: $crate::commands::CommandRecord =
                            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                                .bind(&c.device)
                                .bind(&c.idempotency_key)
                                .fetch_one(&mut *tx)
                                .await?;
                        tx.commit().await?;
                        return Ok((existing, false, None));
                    };
                    let changed = vec![(created, true)];
                    let events = $crate::commands::events_of(&changed, c.created_ms);
                    let first = Self::append_events(&mut tx, &events).await?;
                    // Delivery order: the creation event's seq, strict where times tie.
                    sqlx::query("UPDATE commands SET seq = $2 WHERE id = $1")
                        .bind(&c.id)
                        .bind(i64::try_from(first).unwrap_or(i64::MAX))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    let mut moved = $crate::commands::numbered(changed, events, first);
                    let moved = moved.remove(0);
                    Ok((moved.command, true, moved.event))
                })
            }

            fn command<'a>(
                &'a self,
                id: &'a str,
            ) -> $crate::StoreFuture<'a, Option<$crate::commands::CommandRecord>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM commands WHERE id = $1",
                        $crate::commands::COMMAND_COLUMNS
                    );
                    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?)
                })
            }

            fn commands<'a>(
                &'a self,
                q: &'a $crate::commands::CommandQuery,
            ) -> $crate::StoreFuture<'a, Vec<$crate::commands::CommandRecord>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM commands WHERE device_id = $1 AND created_at >= $2
                         AND created_at < $3 AND (CAST($4 AS TEXT) IS NULL OR state = $4)
                         ORDER BY created_at DESC, seq DESC LIMIT $5",
                        $crate::commands::COMMAND_COLUMNS
                    );
                    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(&q.device)
                        .bind(q.from_ms)
                        .bind(q.to_ms)
                        .bind(q.state.map(|s| s.as_str()))
                        .bind(i64::from(q.limit))
                        .fetch_all(&self.pool)
                        .await?)
                })
            }

            fn pending_commands<'a>(
                &'a self,
                device: &'a str,
                now_ms: i64,
                limit: u32,
            ) -> $crate::StoreFuture<'a, Vec<$crate::commands::CommandRecord>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM commands WHERE device_id = $1
                         AND (state = 'queued' OR (state = 'sent' AND qos > 0)) AND expires_at > $2
                         ORDER BY seq LIMIT $3",
                        $crate::commands::COMMAND_COLUMNS
                    );
                    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(device)
                        .bind(now_ms)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?)
                })
            }

            fn devices_with_pending_commands(
                &self,
                now_ms: i64,
            ) -> $crate::StoreFuture<'_, Vec<String>> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "SELECT DISTINCT device_id FROM commands
                         WHERE (state = 'queued' OR (state = 'sent' AND qos > 0)) AND expires_at > $1",
                    )
                    .bind(now_ms)
                    .fetch_all(&self.pool)
                    .await?)
                })
            }

            fn move_commands<'a>(
                &'a self,
                moves: &'a [$crate::commands::Move],
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, Vec<$crate::commands::Moved>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin_with($begin).await?;
                    let mut changed = Vec::new();
                    for step in moves {
                        let sql = $crate::commands::move_sql(step);
                        let id = $crate::commands::move_id(step);
                        let sql = format!("{sql} RETURNING {}", $crate::commands::COMMAND_COLUMNS);
                        let mut query = sqlx::query_as::<_, $crate::commands::CommandRecord>(
                            sqlx::AssertSqlSafe(sql),
                        )
                        .bind(id)
                        .bind(now_ms);
                        if let $crate::commands::Move::Replied { device, ok, body, .. } = step {
                            let state = if *ok { "replied" } else { "failed" };
                            query = query.bind(device).bind(state).bind(body);
                        }
                        if let Some(record) = query.fetch_optional(&mut *tx).await? {
                            // A resend moves nothing anyone sees: only the first send (the
                            // one that left `queued`) is an event.
                            let resent = matches!(step, $crate::commands::Move::Sent { .. })
                                && record.attempts > 1;
                            changed.push((record, !resent));
                        }
                    }
                    let events = $crate::commands::events_of(&changed, now_ms);
                    let first = Self::append_events(&mut tx, &events).await?;
                    tx.commit().await?;
                    Ok($crate::commands::numbered(changed, events, first))
                })
            }

            fn expire_commands(
                &self,
                now_ms: i64,
            ) -> $crate::StoreFuture<'_, Vec<$crate::commands::Moved>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin_with($begin).await?;
                    let sql = format!(
                        "UPDATE commands SET state = 'expired', updated_at = $1
                         WHERE (state = 'queued' OR (state = 'sent' AND qos > 0)) AND expires_at <= $1
                         RETURNING {}",
                        $crate::commands::COMMAND_COLUMNS
                    );
                    let expired: Vec<$crate::commands::CommandRecord> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql))
                            .bind(now_ms)
                            .fetch_all(&mut *tx)
                            .await?;
                    let changed: Vec<_> = expired.into_iter().map(|c| (c, true)).collect();
                    let events = $crate::commands::events_of(&changed, now_ms);
                    let first = Self::append_events(&mut tx, &events).await?;
                    tx.commit().await?;
                    Ok($crate::commands::numbered(changed, events, first))
                })
            }

            fn command_counts(
                &self,
            ) -> $crate::StoreFuture<'_, Vec<($crate::commands::CommandState, i64)>> {
                Box::pin(async move {
                    let rows: Vec<(String, i64)> =
                        sqlx::query_as("SELECT state, COUNT(*) FROM commands GROUP BY state")
                            .fetch_all(&self.pool)
                            .await?;
                    Ok(rows
                        .into_iter()
                        .filter_map(|(state, n)| {
                            $crate::commands::CommandState::parse(&state).map(|s| (s, n))
                        })
                        .collect())
                })
            }
        }
    };
}
pub(crate) use impl_command_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_know_which_are_final() {
        for state in CommandState::ALL {
            assert_eq!(CommandState::parse(state.as_str()), Some(state));
        }
        assert!(!CommandState::Delivered.is_final());
        assert!(CommandState::Replied.is_final());
        assert_eq!(CommandState::parse("lost"), None);
    }
}
