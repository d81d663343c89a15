//! Notification channels: alarm changes sent to people, by email over SMTP ([`email`]). Each
//! channel runs its own delivery ([`deliver`]) from its position in the events outbox, so
//! every change reaches it at least once, in order, after restarts too; quiet hours
//! ([`quiet`]) hold messages back, and a burst of changes goes out as one digest.

pub mod deliver;
pub mod email;
pub mod quiet;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use crate::delivery_tasks::DeliveryTasks;
use crate::events::EventFeed;
use crate::webhook::DeliverySettings;
use fieldline_store::alarms::SEVERITIES;
use fieldline_store::derived::{Event, EventKind};
use fieldline_store::{ChannelRecord, Store, StoreError};
/// An email address with an optional name, as `--smtp-from` and recipients give it.
pub use lettre::message::Mailbox;
pub use quiet::{QuietHours, QuietSpec};

/// The only kind so far.
pub const EMAIL: &str = "email";
const MAX_RECIPIENTS: usize = 50;
const MAX_URL: usize = 2_048;
/// Digest size by default: more changes than this in a minute go out as one message.
pub const DEFAULT_DIGEST_OVER: u32 = 10;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct BadChannel(pub String);

/// A channel's settings as stored and shown (CONTRACT.md, "Alarms").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailSettings {
    /// Recipients, each an address or `Name <address>`.
    pub to: Vec<String>,
    /// The least severe alarm it sends: `critical`, `major`, `minor` or `warning` (all).
    pub severity: String,
    /// Quiet hours: messages wait until they end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet: Option<QuietSpec>,
    /// More alarm changes than this in a minute go out as one digest message.
    pub digest_over: u32,
    /// This channel's own SMTP server; without it, the server's `--smtp-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
}

/// A channel ready to deliver: its settings checked and parsed.
#[derive(Clone, Debug)]
pub struct Channel {
    pub id: i64,
    pub settings: EmailSettings,
    pub to: Vec<Mailbox>,
    /// Index in [`SEVERITIES`]: it takes alarms at this index or before.
    pub severity_rank: usize,
    pub quiet: Option<QuietHours>,
    pub delivered_seq: u64,
    pub created_at_ms: i64,
}

impl Channel {
    /// The `Message-ID` of the message whose newest change is event `seq`: the same when it
    /// is sent again after a crash, and unlike any other installation's (a mail server drops
    /// a message whose id it has seen), as the channel's creation time makes it.
    pub fn message_id(&self, seq: u64, from: &Mailbox) -> String {
        format!(
            "<event-{seq}.channel-{}.{}@{}>",
            self.id,
            self.created_at_ms,
            from.email.domain()
        )
    }

    /// Whether this channel sends `event`.
    pub fn wants(&self, event: &Event) -> bool {
        event.kind == EventKind::Alarm
            && event
                .fields
                .get("severity")
                .and_then(Value::as_str)
                .and_then(|s| SEVERITIES.iter().position(|known| *known == s))
                .is_some_and(|rank| rank <= self.severity_rank)
    }

    /// Reads a stored channel back, checked as when it was added.
    pub fn from_record(record: &ChannelRecord) -> Result<Channel, BadChannel> {
        let mut body: Value = serde_json::from_str(&record.settings)
            .map_err(|e| BadChannel(format!("stored settings are not JSON: {e}")))?;
        if let Some(fields) = body.as_object_mut() {
            fields.insert("kind".into(), Value::String(record.kind.clone()));
        }
        let mut channel = from_json(&body, true)?;
        channel.id = record.id;
        channel.delivered_seq = record.delivered_seq;
        channel.created_at_ms = record.created_at_ms;
        Ok(channel)
    }
}

/// Reads and checks a new channel's JSON body (`POST /api/channels`). `default_smtp`: whether
/// the server has `--smtp-url`, without which a channel must bring its own.
pub fn from_json(body: &Value, default_smtp: bool) -> Result<Channel, BadChannel> {
    let bad = |m: String| BadChannel(m);
    let Some(fields) = body.as_object() else {
        return Err(bad("a channel is a JSON object".into()));
    };
    for key in fields.keys() {
        if !matches!(
            key.as_str(),
            "kind" | "to" | "severity" | "quiet" | "digest_over" | "smtp_url"
        ) {
            return Err(bad(format!(
                "unknown field {key:?}: a channel has kind, to, severity, quiet, digest_over and smtp_url"
            )));
        }
    }
    match fields.get("kind").and_then(Value::as_str) {
        Some(EMAIL) => {}
        _ => return Err(bad("kind must be \"email\"".into())),
    }
    let recipients = match fields.get("to") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_RECIPIENTS => items,
        _ => {
            return Err(bad(format!(
                "to must list 1 to {MAX_RECIPIENTS} recipients: a channel with no recipient sends to nobody"
            )))
        }
    };
    let mut to = Vec::with_capacity(recipients.len());
    let mut to_text = Vec::with_capacity(recipients.len());
    for item in recipients {
        let text = item.as_str().unwrap_or_default();
        let mailbox: Mailbox = text
            .parse()
            .map_err(|_| bad(format!("to: {item} is not an email address")))?;
        // Servers without SMTPUTF8 refuse other addresses at every try: refused here instead.
        if !mailbox.email.to_string().is_ascii() {
            return Err(bad(format!(
                "to: {item} is not an ASCII address (write an international domain in its xn-- form)"
            )));
        }
        to.push(mailbox);
        to_text.push(text.to_owned());
    }
    let severity = match fields.get("severity") {
        None | Some(Value::Null) => SEVERITIES[SEVERITIES.len() - 1],
        Some(v) => v
            .as_str()
            .and_then(|s| SEVERITIES.iter().copied().find(|known| *known == s))
            .ok_or_else(|| bad(format!("severity must be one of {}", SEVERITIES.join(", "))))?,
    };
    let severity_rank = SEVERITIES
        .iter()
        .position(|s| *s == severity)
        .unwrap_or(SEVERITIES.len() - 1);
    let quiet_spec = match fields.get("quiet") {
        None | Some(Value::Null) => None,
        Some(v) => Some(QuietSpec::deserialize(v).map_err(|_| {
            bad(
                "quiet must be {\"from\": \"HH:MM\", \"to\": \"HH:MM\", \"tz\": \"Area/City\"}"
                    .into(),
            )
        })?),
    };
    let quiet = quiet_spec
        .as_ref()
        .map(QuietHours::parse)
        .transpose()
        .map_err(bad)?;
    let digest_over = match fields.get("digest_over") {
        None | Some(Value::Null) => DEFAULT_DIGEST_OVER,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=1_000).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| bad("digest_over must be a whole number from 1 to 1000".into()))?,
    };
    let smtp_url = match fields.get("smtp_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.len() <= MAX_URL => {
            email::smtp_server(url, Duration::from_secs(1)).map_err(bad)?;
            Some(url.clone())
        }
        Some(_) => return Err(bad("smtp_url must be an smtp:// or smtps:// URL".into())),
    };
    if smtp_url.is_none() && !default_smtp {
        return Err(bad(
            "this server has no --smtp-url: give the channel its own smtp_url".into(),
        ));
    }
    Ok(Channel {
        id: 0,
        settings: EmailSettings {
            to: to_text,
            severity: severity.to_owned(),
            quiet: quiet_spec,
            digest_over,
            smtp_url,
        },
        to,
        severity_rank,
        quiet,
        delivered_seq: 0,
        created_at_ms: 0,
    })
}

/// What every channel's delivery shares: the default SMTP server, the sender, and timing.
#[derive(Clone)]
pub struct ChannelSettings {
    /// `--smtp-url`.
    pub smtp_url: Option<String>,
    /// `--smtp-from`.
    pub from: Mailbox,
    pub delivery: DeliverySettings,
}

/// The running channels, one delivery task each. As an [`EventFeed`] it wakes them when new
/// events are committed.
pub struct Channels {
    store: Arc<dyn Store>,
    settings: ChannelSettings,
    wake: Arc<Notify>,
    tasks: DeliveryTasks,
}

impl Channels {
    /// `settings.smtp_url` is checked already (the binary's configuration refuses a bad
    /// `--smtp-url` with `email::smtp_server`'s reason before anything starts).
    pub fn new(store: Arc<dyn Store>, settings: ChannelSettings) -> Arc<Channels> {
        Arc::new(Channels {
            store,
            settings,
            wake: Arc::new(Notify::new()),
            tasks: DeliveryTasks::default(),
        })
    }

    /// Whether channels may go without their own SMTP server.
    pub fn has_default_smtp(&self) -> bool {
        self.settings.smtp_url.is_some()
    }

    /// Starts a delivery for every stored channel without one, and stops those of deleted
    /// ones. A stored channel this server cannot send through (its SMTP URL came from
    /// `--smtp-url`, which is gone) is logged and left until it can.
    /// Cluster mode: whether this node delivers (it holds the cluster's duties); starts or
    /// stops every delivery accordingly. Each goes on from its stored position.
    pub async fn deliver_here(&self, here: bool) -> Result<(), StoreError> {
        self.tasks.run_here(here);
        self.sync().await
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        let records = self.store.channels().await?;
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        for id in self.tasks.retain(&ids) {
            let Some(record) = records.iter().find(|r| r.id == id) else {
                continue;
            };
            let channel = match Channel::from_record(record) {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::error!(channel = id, error = %e, "cannot read a stored channel");
                    continue;
                }
            };
            let url = channel
                .settings
                .smtp_url
                .clone()
                .or_else(|| self.settings.smtp_url.clone());
            let Some(server) = url
                .and_then(|u| email::smtp_server(&u, self.settings.delivery.request_timeout).ok())
            else {
                tracing::error!(
                    channel = id,
                    "channel has no SMTP server: start with --smtp-url or give it smtp_url"
                );
                continue;
            };
            self.tasks.start(
                id,
                deliver::run(
                    channel,
                    server,
                    self.settings.clone(),
                    self.store.clone(),
                    self.wake.clone(),
                ),
            );
        }
        metrics::gauge!("fieldline_channels").set(self.tasks.len() as f64);
        Ok(())
    }

    pub fn stop(&self) {
        self.tasks.stop_all();
    }
}

impl EventFeed for Channels {
    fn committed(&self, _events: &[Arc<Event>]) {
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_channels_that_cannot_reach_anyone() {
        let ok = from_json(
            &json!({"kind": "email", "to": ["ops@example.com", "Ana <ana@example.com>"],
                    "severity": "major", "quiet": {"from": "22:00", "to": "06:00", "tz": "Europe/Berlin"}}),
            true,
        )
        .expect("valid");
        assert_eq!(ok.severity_rank, 1);
        assert_eq!(ok.settings.digest_over, DEFAULT_DIGEST_OVER);
        for (body, default_smtp, reason) in [
            (json!({"kind": "sms", "to": ["a@b.c"]}), true, "kind"),
            (json!({"kind": "email"}), true, "no recipient"),
            (json!({"kind": "email", "to": []}), true, "no recipient"),
            (
                json!({"kind": "email", "to": vec!["a@b.c"; 51]}),
                true,
                "1 to 50 recipients",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"], "smtp_url": format!("smtp://{}.example", "x".repeat(2100))}),
                true,
                "smtp_url must be",
            ),
            (
                json!({"kind": "email", "to": ["not an address"]}),
                true,
                "not an email address",
            ),
            (
                json!({"kind": "email", "to": ["ops@exämple.com"]}),
                true,
                "ASCII",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"], "severity": "high"}),
                true,
                "severity",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"], "quiet": {"from": "22:00", "to": "06:00", "tz": "Mars/Olympus"}}),
                true,
                "time zone",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"], "quiet": "nights"}),
                true,
                "quiet must be",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"], "digest_over": 0}),
                true,
                "digest_over",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"], "smtp_url": "http://mail"}),
                true,
                "smtp://",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"]}),
                false,
                "--smtp-url",
            ),
            (
                json!({"kind": "email", "to": ["a@b.c"], "cc": ["x@y.z"]}),
                true,
                "unknown field",
            ),
        ] {
            let e = from_json(&body, default_smtp).expect_err("invalid");
            assert!(e.0.contains(reason), "{e} should say {reason}");
        }
    }

    #[test]
    fn a_channel_takes_alarms_at_its_severity_or_worse() {
        let channel = from_json(
            &json!({"kind": "email", "to": ["a@b.c"], "severity": "major"}),
            true,
        )
        .expect("valid");
        let alarm = |severity: &str| Event {
            seq: 1,
            kind: EventKind::Alarm,
            device: "d".into(),
            ts_ms: 0,
            log_position: None,
            fields: json!({"severity": severity})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            stored_ms: 0,
        };
        assert!(channel.wants(&alarm("critical")));
        assert!(channel.wants(&alarm("major")));
        assert!(!channel.wants(&alarm("minor")));
        let mut alert = alarm("critical");
        alert.kind = EventKind::Alert;
        assert!(!channel.wants(&alert));
    }
}
