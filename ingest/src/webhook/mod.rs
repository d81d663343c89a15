//! Webhooks: stored events POSTed to receivers over HTTP, each webhook on its own task
//! ([`deliver`]), at least once and in order, signed ([`sign`]), resumed from the position
//! kept in storage after a restart. A slow or dead receiver only delays its own webhook: the
//! deliveries read the outbox from storage, never from the ingest path.

pub mod deliver;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use crate::delivery_tasks::DeliveryTasks;
use crate::events::devices::Devices;
use crate::events::EventFeed;
use fieldline_store::derived::{Event, EventKind};
use fieldline_store::{Store, StoreError, WebhookRecord};

const MAX_URL: usize = 2_048;
const MAX_SECRET: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct BadWebhook(pub String);

/// Reads and checks a webhook's JSON body into a record to store (id and position unset).
pub fn from_json(body: &Value, now_ms: i64) -> Result<WebhookRecord, BadWebhook> {
    let bad = |m: &str| BadWebhook(m.to_owned());
    let Some(fields) = body.as_object() else {
        return Err(bad("a webhook is a JSON object"));
    };
    let url = fields
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("url is required"))?;
    let parsed =
        reqwest::Url::parse(url).map_err(|e| BadWebhook(format!("url is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none()
        || url.len() > MAX_URL
    {
        return Err(bad("url must be an http:// or https:// URL with a host"));
    }
    let kinds = match fields.get("kinds") {
        None | Some(Value::Null) => EventKind::ALL
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|k| match k.as_str().and_then(EventKind::parse) {
                Some(kind) => Ok(kind.as_str().to_owned()),
                None => Err(bad("kinds must list geofence, alert, alarm and/or command")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad("kinds must list geofence, alert, alarm and/or command")),
    };
    let devices = Devices::from_json(fields.get("devices")).map_err(BadWebhook)?;
    let secret = match fields.get("secret") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SECRET => s.clone(),
        _ => {
            return Err(BadWebhook(format!(
                "secret must be a string of 1 to {MAX_SECRET} bytes (it signs every request)"
            )))
        }
    };
    Ok(WebhookRecord {
        id: 0,
        url: url.to_owned(),
        kinds,
        devices: devices.patterns().to_vec(),
        secret,
        delivered_seq: 0,
        last_error: None,
        last_error_at_ms: None,
        created_at_ms: now_ms,
    })
}

/// Whether a webhook wants an event.
pub fn wants(hook: &WebhookRecord, event: &Event) -> bool {
    hook.kinds.iter().any(|k| k == event.kind.as_str())
        && Devices::new(hook.devices.clone()).matches(&event.device)
}

#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// How long one request may take before it counts as failed.
    pub request_timeout: Duration,
    /// First retry delay; it doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long one event is retried before it is given up (and recorded as the last error).
    pub give_up_after: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// The running deliveries, one task per stored webhook. As an [`EventFeed`] it wakes them
/// when new events are committed.
pub struct Webhooks {
    store: Arc<dyn Store>,
    settings: DeliverySettings,
    client: reqwest::Client,
    wake: Arc<Notify>,
    tasks: DeliveryTasks,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        settings: DeliverySettings,
    ) -> Result<Arc<Webhooks>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fieldline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Webhooks {
            store,
            settings,
            client,
            wake: Arc::new(Notify::new()),
            tasks: DeliveryTasks::default(),
        }))
    }

    /// Starts a task for every stored webhook without one, and stops those of deleted ones.
    /// Cluster mode: whether this node delivers (it holds the cluster's duties); starts or
    /// stops every delivery accordingly. Each goes on from its stored position.
    pub async fn deliver_here(&self, here: bool) -> Result<(), StoreError> {
        self.tasks.run_here(here);
        self.sync().await
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        let hooks = self.store.webhooks().await?;
        let ids: Vec<i64> = hooks.iter().map(|h| h.id).collect();
        for id in self.tasks.retain(&ids) {
            let Some(hook) = hooks.iter().find(|h| h.id == id) else {
                continue;
            };
            self.tasks.start(
                id,
                deliver::run(
                    hook.clone(),
                    self.store.clone(),
                    self.client.clone(),
                    self.settings.clone(),
                    self.wake.clone(),
                ),
            );
        }
        metrics::gauge!("fieldline_webhooks").set(self.tasks.len() as f64);
        Ok(())
    }

    pub fn stop(&self) {
        self.tasks.stop_all();
    }
}

impl EventFeed for Webhooks {
    fn committed(&self, _events: &[Arc<Event>]) {
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_what_cannot_be_delivered() {
        assert!(from_json(&json!({"url": "https://example.com/h", "secret": "s"}), 0).is_ok());
        for (body, reason) in [
            (json!({"url": "ftp://example.com/h", "secret": "s"}), "http"),
            (json!({"url": "not a url", "secret": "s"}), "URL"),
            (json!({"secret": "s"}), "url is required"),
            (json!({"url": "http://x/", "secret": ""}), "secret"),
            (
                json!({"url": "http://x/", "secret": "s", "kinds": ["location"]}),
                "kinds",
            ),
            (
                json!({"url": "http://x/", "secret": "s", "devices": ["a b"]}),
                "devices",
            ),
        ] {
            let e = from_json(&body, 0).expect_err("invalid");
            assert!(e.0.contains(reason), "{e} should say {reason}");
        }
    }
}
