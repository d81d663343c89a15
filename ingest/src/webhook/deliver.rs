//! One webhook's delivery loop: read the events after its stored position, POST each one it
//! wants, retry a failure with backoff until it succeeds or `give_up_after` passes, and store
//! the new position after each event, so a restart resumes exactly there.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{sign, wants, DeliverySettings};
use fieldline_store::derived::Event;
use fieldline_store::time_format::now_ms;
use fieldline_store::{EventQuery, Store, WebhookRecord};

/// Events read from storage per round.
const READ_CHUNK: u32 = 256;
/// How often an idle loop looks for events anyway (the wake-up is only a shortcut).
const IDLE_POLL: Duration = Duration::from_secs(1);

pub(super) async fn run(
    hook: WebhookRecord,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    settings: DeliverySettings,
    wake: Arc<Notify>,
) {
    let id = hook.id.to_string();
    let backlog = metrics::gauge!("fieldline_webhook_backlog_events", "webhook" => id.clone());
    let failures = metrics::counter!("fieldline_webhook_failures_total", "webhook" => id.clone());
    let delivered =
        metrics::counter!("fieldline_webhook_deliveries_total", "webhook" => id.clone());
    let given_up = metrics::counter!("fieldline_webhook_given_up_total", "webhook" => id);
    let mut position = hook.delivered_seq;
    loop {
        let notified = wake.notified();
        let query = EventQuery {
            after_seq: position,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            limit: READ_CHUNK,
            ..EventQuery::default()
        };
        let events = match store.events(&query).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(webhook = hook.id, error = %e, "cannot read events for a webhook; retrying");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        };
        if let Ok(last) = store.last_event_seq().await {
            backlog.set(last.saturating_sub(position) as f64);
        }
        if events.is_empty() {
            let _ = tokio::time::timeout(IDLE_POLL, notified).await;
            continue;
        }
        // The position is stored after each event sent, and once per chunk for the events
        // this webhook skips: until it is, a restart sends again (at least once).
        let mut unsaved = false;
        for event in events {
            position = event.seq;
            if !wants(&hook, &event) {
                unsaved = true;
                continue;
            }
            let error =
                match post_until_delivered(&hook, &client, &settings, &event, &failures, &store)
                    .await
                {
                    Ok(()) => {
                        delivered.increment(1);
                        None
                    }
                    Err(last_error) => {
                        given_up.increment(1);
                        tracing::error!(webhook = hook.id, seq = event.seq, error = %last_error,
                        "webhook gave up on an event 24 h after it was stored");
                        Some(format!("gave up on event {}: {last_error}", event.seq))
                    }
                };
            save(&store, hook.id, position, error.as_deref()).await;
            unsaved = false;
        }
        if unsaved {
            save(&store, hook.id, position, None).await;
        }
    }
}

async fn save(store: &Arc<dyn Store>, hook: i64, position: u64, error: Option<&str>) {
    while let Err(e) = store
        .webhook_progress(hook, position, error, now_ms())
        .await
    {
        tracing::warn!(webhook = hook, error = %e, "cannot store a webhook's position; retrying");
        tokio::time::sleep(IDLE_POLL).await;
    }
}

/// POSTs one event until the receiver answers 2xx; `Err` with the last error once the retry
/// window, counted from when the event was stored, has passed (so a restart does not renew
/// it, and a backlog older than the window is given up at once after one more try).
async fn post_until_delivered(
    hook: &WebhookRecord,
    client: &reqwest::Client,
    settings: &DeliverySettings,
    event: &Event,
    failures: &metrics::Counter,
    store: &Arc<dyn Store>,
) -> Result<(), String> {
    let body = serde_json::to_vec(event).unwrap_or_default();
    let signature = sign::signature(&hook.secret, &body);
    let give_up_at_ms = event
        .stored_ms
        .saturating_add(i64::try_from(settings.give_up_after.as_millis()).unwrap_or(i64::MAX));
    let mut backoff = settings.first_backoff;
    loop {
        let sent = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::HEADER, &signature)
            .header("Fieldline-Event-Seq", event.seq.to_string())
            .body(body.clone())
            .send()
            .await;
        let error = match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("the receiver answered {}", response.status()),
            Err(e) if e.is_timeout() => format!(
                "no answer within {} s",
                settings.request_timeout.as_secs_f64()
            ),
            Err(e) => format!("cannot reach the receiver: {e}"),
        };
        failures.increment(1);
        tracing::debug!(
            webhook = hook.id,
            seq = event.seq,
            error,
            "webhook delivery failed; retrying"
        );
        let _ = store
            .webhook_progress(hook.id, event.seq.saturating_sub(1), Some(&error), now_ms())
            .await;
        if now_ms() >= give_up_at_ms {
            return Err(error);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}
