//! Commands to devices: the desk that takes them (validated, stored in the ledger before
//! anyone is told they exist), the dispatcher that hands them to the broker and records what
//! the broker reports, and the replies devices send back through the pipeline.

mod dispatch;
mod envelope;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use fieldline_broker::{Commands, Guard};
use fieldline_store::commands::{CommandQuery, CommandRecord, CommandState, Move, NewCommand};
use fieldline_store::time_format::now_ms;
use fieldline_store::{Store, StoreError};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::document::is_valid_name;
use crate::events::EventFeed;
use crate::rejection::{Reason, Rejection};
use dispatch::Wake;

/// Shortest and longest a command may wait for its device.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// `POST /api/devices/{id}/commands` (and `fieldline command send`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// `[A-Za-z0-9_.-]{1,64}`: the last level of the topic the device receives it on.
    pub name: String,
    /// Any JSON value.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Bytes that are not JSON, base64; instead of `payload`.
    #[serde(default)]
    pub payload_b64: Option<String>,
    /// How long it may wait for the device: 1 s to 30 days (default 3600).
    #[serde(default)]
    pub ttl_s: Option<f64>,
    /// 0 or 1 (default 1).
    #[serde(default)]
    pub qos: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request is wrong; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    #[error("no such command")]
    NotFound,
    /// The command is past the point where that can be done.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the pipeline hands replies to: devices answer on `devices/{id}/replies/{command}`.
pub trait Replies: Send + Sync {
    /// Takes a reply; a body that is not JSON is refused.
    fn reply(&self, device: &str, command: &str, body: &[u8]) -> Result<(), Rejection>;
}

/// Takes commands and replies; the dispatcher does the rest.
pub struct CommandDesk {
    store: Arc<dyn Store>,
    broker: Arc<Commands>,
    guard: Arc<Guard>,
    feed: Arc<dyn EventFeed>,
    wake: mpsc::UnboundedSender<Wake>,
    max_payload_bytes: usize,
    /// Cluster mode: tells the other nodes of each new command (`device`, `id`), so the one
    /// holding the device sends it at once.
    announce: std::sync::OnceLock<Announce>,
}

/// How a new command is made known to the other nodes.
pub type Announce = Box<dyn Fn(&str, &str) + Send + Sync>;

impl CommandDesk {
    /// Starts the dispatcher over the broker's mailboxes and reports.
    pub fn start(
        store: Arc<dyn Store>,
        broker: Arc<Commands>,
        reports: mpsc::UnboundedReceiver<fieldline_broker::Report>,
        guard: Arc<Guard>,
        feed: Arc<dyn EventFeed>,
        max_payload_bytes: usize,
    ) -> (Arc<CommandDesk>, JoinHandle<()>) {
        let (wake, wakes) = mpsc::unbounded_channel();
        let dispatcher = dispatch::Dispatcher::new(store.clone(), broker.clone(), feed.clone());
        let task = tokio::spawn(dispatcher.run(reports, wakes));
        let desk = CommandDesk {
            store,
            broker,
            guard,
            feed,
            wake,
            max_payload_bytes,
            announce: std::sync::OnceLock::new(),
        };
        (Arc::new(desk), task)
    }

    /// Validates and stores a command for `device`; the dispatcher sends it when it can.
    /// Returns the command and whether it was created now (not found by its idempotency key).
    pub async fn send(
        &self,
        device: &str,
        request: CommandRequest,
        created_by: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<(CommandRecord, bool), CommandError> {
        let invalid = |why: String| Err(CommandError::Invalid(why));
        if !is_valid_name(&request.name) {
            return invalid("name must be 1 to 64 characters from [A-Za-z0-9_.-]".into());
        }
        if idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
        {
            return invalid(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
            ));
        }
        let (payload, payload_is_json) = match (&request.payload, &request.payload_b64) {
            (Some(_), Some(_)) => return invalid("give payload or payload_b64, not both".into()),
            (Some(value), None) => (value.to_string().into_bytes(), true),
            (None, Some(text)) => match STANDARD.decode(text) {
                Ok(bytes) => (bytes, false),
                Err(e) => return invalid(format!("payload_b64 is not base64: {e}")),
            },
            (None, None) => (b"{}".to_vec(), true),
        };
        let ttl = match request.ttl_s {
            None => DEFAULT_TTL,
            Some(s)
                if s.is_finite() && s >= MIN_TTL.as_secs_f64() && s <= MAX_TTL.as_secs_f64() =>
            {
                Duration::from_secs_f64(s)
            }
            Some(_) => return invalid("ttl_s must be between 1 s and 30 days".into()),
        };
        let qos = match request.qos {
            None => 1,
            Some(q @ (0 | 1)) => q,
            Some(_) => return invalid("qos must be 0 or 1".into()),
        };
        if !is_valid_name(device) {
            return invalid(format!("unknown device {device:?}"));
        }
        let known = self.guard.is_registered(device)
            || self.broker.connected(device)
            || self.store.device(device).await?.is_some()
            || self.has_commands(device).await?;
        if !known {
            return invalid(format!("unknown device {device:?}"));
        }
        let id = fieldline_broker::credentials::new_secret()[..16].to_string();
        let created_ms = now_ms();
        let expires_ms = created_ms.saturating_add(ttl.as_millis() as i64);
        let body = envelope::envelope(&id, &request.name, &payload, payload_is_json, expires_ms);
        if body.len() > self.max_payload_bytes {
            return invalid(format!(
                "the command is {} bytes, more than the {} a payload may have (--max-payload-bytes)",
                body.len(),
                self.max_payload_bytes
            ));
        }
        if let Some(max) = self.broker.max_packet_size(device) {
            let size = envelope::packet_size(
                &envelope::command_topic(device, &request.name),
                &envelope::reply_topic(device, &id),
                &id,
                body.len(),
            );
            if size > max {
                return invalid(format!(
                    "the command is {size} bytes on the wire, more than the {max} the device's connection accepts (its MQTT Maximum Packet Size)"
                ));
            }
        }
        let new = NewCommand {
            id,
            device: device.to_string(),
            name: request.name,
            payload,
            payload_is_json,
            qos,
            created_ms,
            expires_ms,
            created_by,
            idempotency_key,
        };
        let (command, created, event) = self.store.create_command(&new).await?;
        if let Some(event) = event {
            self.feed.committed(&[event]);
        }
        if created {
            metrics::counter!("fieldline_commands_created_total").increment(1);
            let _ = self.wake.send(Wake::Created {
                device: command.device.clone(),
                id: command.id.clone(),
            });
            if let Some(announce) = self.announce.get() {
                announce(&command.device, &command.id);
            }
        }
        Ok((command, created))
    }

    /// Cluster mode: `announce` tells the other nodes of every command created here.
    pub fn announce_with(&self, announce: Announce) {
        let _ = self.announce.set(announce);
    }

    /// Cluster mode: another node created command `id` for `device`; it is sent from here if
    /// the device is connected here.
    pub fn created_elsewhere(&self, device: &str, id: &str) {
        let _ = self.wake.send(Wake::Created {
            device: device.to_owned(),
            id: id.to_owned(),
        });
    }

    /// Whether the ledger has any command for `device` (it took commands before).
    async fn has_commands(&self, device: &str) -> Result<bool, StoreError> {
        let query = CommandQuery {
            device: device.to_string(),
            state: None,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            limit: 1,
        };
        Ok(!self.store.commands(&query).await?.is_empty())
    }

    /// Cancels a command that has not been delivered.
    pub async fn cancel(&self, id: &str) -> Result<CommandRecord, CommandError> {
        let moves = [Move::Cancel { id: id.to_string() }];
        let moved = self.store.move_commands(&moves, now_ms()).await?;
        if let Some(moved) = moved.into_iter().next() {
            if let Some(event) = moved.event {
                self.feed.committed(&[event]);
            }
            return Ok(moved.command);
        }
        match self.store.command(id).await? {
            Some(command) => Err(CommandError::Conflict(format!(
                "the command is {} already and cannot be cancelled",
                command.state().as_str()
            ))),
            None => Err(CommandError::NotFound),
        }
    }

    pub async fn get(&self, id: &str) -> Result<CommandRecord, CommandError> {
        self.store.command(id).await?.ok_or(CommandError::NotFound)
    }

    pub async fn list(&self, query: &CommandQuery) -> Result<Vec<CommandRecord>, CommandError> {
        Ok(self.store.commands(query).await?)
    }
}

impl Replies for CommandDesk {
    fn reply(&self, device: &str, command: &str, body: &[u8]) -> Result<(), Rejection> {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            metrics::counter!("fieldline_command_replies_refused_total", "reason" => "invalid_reply")
                .increment(1);
            return Err(Rejection::new(
                Reason::InvalidReply,
                "a reply must be a JSON document",
            ));
        };
        let ok = value.get("ok").and_then(Value::as_bool) != Some(false);
        let _ = self.wake.send(Wake::Reply {
            device: device.to_string(),
            id: command.to_string(),
            ok,
            body: value.to_string(),
        });
        Ok(())
    }
}

/// Commands by state, for `--metrics`.
pub(crate) fn record_counts(counts: &[(CommandState, i64)]) {
    for state in CommandState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("fieldline_commands", "state" => state.as_str()).set(n as f64);
    }
}
