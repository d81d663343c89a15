//! One channel's delivery loop. It reads the events after its stored position, holds them
//! while quiet hours last, and sends the alarm changes it wants: one message each while they
//! fit in the minute's allowance (`digest_over`), else all that are waiting as one digest,
//! at once when the minute still has room for a message, at the minute's end when not. A
//! failed send is retried with backoff; the position is stored after each message sent, so
//! a restart, even a `kill -9`, resends at most the message in flight (at least once).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::email::{self, Mail, SmtpServer};
use super::{Channel, ChannelSettings};
use fieldline_store::derived::Event;
use fieldline_store::time_format::now_ms;
use fieldline_store::{EventQuery, Store};

/// Events read from storage per round; a digest carries at most this many changes.
const READ_CHUNK: u32 = 500;
/// How often an idle loop looks for events anyway (the wake-up is only a shortcut).
const IDLE_POLL: Duration = Duration::from_secs(1);
const MINUTE_MS: i64 = 60_000;

/// The messages sent in the current minute, which `digest_over` bounds.
struct Allowance {
    started_ms: i64,
    sent: u32,
}

impl Allowance {
    fn room(&mut self, limit: u32, now_ms: i64) -> u32 {
        if now_ms >= self.started_ms + MINUTE_MS {
            self.started_ms = now_ms;
            self.sent = 0;
        }
        limit.saturating_sub(self.sent)
    }
}

struct Metrics {
    backlog: metrics::Gauge,
    held: metrics::Gauge,
    messages: metrics::Counter,
    digests: metrics::Counter,
    failures: metrics::Counter,
    given_up: metrics::Counter,
}

pub(super) async fn run(
    channel: Channel,
    server: SmtpServer,
    settings: ChannelSettings,
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
) {
    let id = channel.id.to_string();
    let metrics = Metrics {
        backlog: metrics::gauge!("fieldline_channel_backlog_events", "channel" => id.clone()),
        held: metrics::gauge!("fieldline_channel_quiet_hours", "channel" => id.clone()),
        messages: metrics::counter!("fieldline_channel_messages_total", "channel" => id.clone()),
        digests: metrics::counter!("fieldline_channel_digests_total", "channel" => id.clone()),
        failures: metrics::counter!("fieldline_channel_failures_total", "channel" => id.clone()),
        given_up: metrics::counter!("fieldline_channel_given_up_total", "channel" => id),
    };
    let sender = Sender {
        channel: &channel,
        server: &server,
        settings: &settings,
        store: &store,
        metrics: &metrics,
    };
    let mut position = channel.delivered_seq;
    let mut allowance = Allowance {
        started_ms: i64::MIN / 2,
        sent: 0,
    };
    loop {
        let notified = wake.notified();
        if let Some(end_ms) = channel.quiet.as_ref().and_then(|q| q.ends_after(now_ms())) {
            metrics.held.set(1.0);
            let wait = u64::try_from(end_ms.saturating_sub(now_ms())).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait).min(Duration::from_secs(60))).await;
            continue;
        }
        metrics.held.set(0.0);
        let events = match store
            .events(&EventQuery {
                after_seq: position,
                from_ms: i64::MIN,
                to_ms: i64::MAX,
                limit: READ_CHUNK,
                ..EventQuery::default()
            })
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(channel = channel.id, error = %e, "cannot read events for a channel; retrying");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        };
        if let Ok(last) = store.last_event_seq().await {
            metrics.backlog.set(last.saturating_sub(position) as f64);
        }
        let Some(last_read) = events.last().map(|e| e.seq) else {
            let _ = tokio::time::timeout(IDLE_POLL, notified).await;
            continue;
        };
        let wanted: Vec<Event> = events.into_iter().filter(|e| channel.wants(e)).collect();
        if wanted.is_empty() {
            sender.save(last_read, None).await;
            position = last_read;
            continue;
        }
        let room = allowance.room(channel.settings.digest_over, now_ms());
        let tz = channel.quiet.as_ref().map(|q| q.time_zone());
        if wanted.len() as u64 <= u64::from(room) {
            let mut held = false;
            for event in &wanted {
                let mail = email::one(event, tz);
                if sender.send_until_delivered(&mail, event, position).await == Sent::Held {
                    held = true;
                    break;
                }
                allowance.sent += 1;
                position = event.seq;
            }
            // Events after the last wanted one are skipped; storing that saves rereading them.
            if !held && position != last_read {
                sender.save(last_read, None).await;
                position = last_read;
            }
        } else if room > 0 {
            let newest = &wanted[wanted.len() - 1];
            let mail = email::digest(&wanted, tz);
            if sender.send_until_delivered(&mail, newest, position).await != Sent::Held {
                metrics.digests.increment(1);
                allowance.sent += 1;
                sender.save(last_read, None).await;
                position = last_read;
            }
        } else {
            // The minute's allowance is spent: what waits goes as one digest when it ends.
            let wait = allowance.started_ms + MINUTE_MS - now_ms();
            tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
        }
    }
}

/// How sending one message ended.
#[derive(Debug, PartialEq)]
enum Sent {
    /// The server took it (or it was given up on): the position moved past it.
    Done,
    /// Quiet hours began while it was being retried: it waits for their end, unsent.
    Held,
}

/// What sending one message needs.
struct Sender<'a> {
    channel: &'a Channel,
    server: &'a SmtpServer,
    settings: &'a ChannelSettings,
    store: &'a Arc<dyn Store>,
    metrics: &'a Metrics,
}

impl Sender<'_> {
    async fn save(&self, position: u64, error: Option<&str>) {
        while let Err(e) = self
            .store
            .channel_progress(self.channel.id, position, error, now_ms())
            .await
        {
            tracing::warn!(channel = self.channel.id, error = %e, "cannot store a channel's position; retrying");
            tokio::time::sleep(IDLE_POLL).await;
        }
    }

    /// Sends `mail`, whose newest change is `newest`, until the server takes it, then stores
    /// `newest` as delivered; gives up (recording why) once the retry window, counted from
    /// when that change was stored, has passed. Until then the position stays at `before`.
    async fn send_until_delivered(&self, mail: &Mail, newest: &Event, before: u64) -> Sent {
        let delivery = &self.settings.delivery;
        let give_up_at_ms = newest
            .stored_ms
            .saturating_add(i64::try_from(delivery.give_up_after.as_millis()).unwrap_or(i64::MAX));
        let message_id = self.channel.message_id(newest.seq, &self.settings.from);
        let mut backoff = delivery.first_backoff;
        loop {
            // Quiet hours hold back a message whose retries run into them, and the rest of
            // a batch sent one by one.
            if self
                .channel
                .quiet
                .as_ref()
                .is_some_and(|q| q.ends_after(now_ms()).is_some())
            {
                return Sent::Held;
            }
            let sent = email::send(
                self.server,
                &self.settings.from,
                &self.channel.to,
                mail,
                message_id.clone(),
            )
            .await;
            let error = match sent {
                Ok(()) => {
                    self.metrics.messages.increment(1);
                    self.save(newest.seq, None).await;
                    return Sent::Done;
                }
                Err(error) => error,
            };
            self.metrics.failures.increment(1);
            tracing::debug!(
                channel = self.channel.id,
                seq = newest.seq,
                error,
                "email failed; retrying"
            );
            if now_ms() >= give_up_at_ms {
                self.metrics.given_up.increment(1);
                tracing::error!(channel = self.channel.id, seq = newest.seq, error = %error,
                    "channel gave up on a message 24 h after its change was stored");
                let error = format!("gave up on event {}: {error}", newest.seq);
                self.save(newest.seq, Some(&error)).await;
                return Sent::Done;
            }
            self.save(before, Some(&error)).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(delivery.max_backoff);
        }
    }
}
