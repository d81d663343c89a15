//! Sessions by client id: which connection holds each, and which ended ones are kept and until
//! when.
//!
//! MQTT gives a client id one session at a time. A new connection with the id of a live one
//! takes it over (the old connection is closed first, so the router never sees two links of
//! one client). When a connection ends, its session is kept for its Session Expiry Interval
//! (MQTT 5; for 3.1.1, a clean session of 0 means "keep", up to the broker's maximum) and then
//! dropped with whatever the router queued for it. The number of kept sessions is bounded: past
//! the bound, the one closest to expiry goes first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::delivery::Subscriptions;
use crate::interest::Interest;
use crate::router::{purge, Router};

/// A live connection's handle in the table: how a newer connection closes it.
pub(crate) struct Holder {
    pub(crate) connection: u64,
    kick: Notify,
    ended: Notify,
    done: AtomicBool,
}

impl Holder {
    /// Resolves when a newer connection takes the session over.
    pub(crate) async fn kicked(&self) {
        self.kick.notified().await;
    }
}

/// What a session that outlived its connection keeps.
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) expires_at: Instant,
    /// The router holds state for it (it subscribed, or resumed a session the router kept).
    pub(crate) in_router: bool,
    pub(crate) subscriptions: Subscriptions,
    /// QoS 2 publishes it received and acknowledged with PUBREC whose PUBREL had not come:
    /// a resent PUBLISH of one after reconnecting is not forwarded again (MQTT §4.3.3).
    pub(crate) awaiting_release: Vec<u16>,
}

/// A table slot is as large as its largest variant, so a kept session is boxed.
enum Entry {
    Live(Arc<Holder>),
    Kept(Box<Kept>),
}

pub(crate) struct Sessions {
    table: Mutex<HashMap<Arc<str>, Entry>>,
    router: Arc<Router>,
    interest: Arc<Interest>,
    max_kept: usize,
    /// Kept sessions in the table (counted here so the bound costs nothing to check).
    kept_count: std::sync::atomic::AtomicUsize,
    kept: metrics::Gauge,
}

/// The outcome of claiming a client id.
pub(crate) struct Claim {
    pub(crate) holder: Arc<Holder>,
    /// The session it left behind, if one was kept.
    pub(crate) kept: Option<Kept>,
}

impl Sessions {
    pub(crate) fn new(
        router: Arc<Router>,
        interest: Arc<Interest>,
        max_kept: usize,
    ) -> Arc<Sessions> {
        let sessions = Arc::new(Sessions {
            table: Mutex::new(HashMap::new()),
            router,
            interest,
            kept_count: std::sync::atomic::AtomicUsize::new(0),
            max_kept: max_kept.max(1),
            kept: metrics::gauge!("fieldline_broker_sessions_kept"),
        });
        let sweeper = Arc::downgrade(&sessions);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(sessions) = sweeper.upgrade() else {
                    break;
                };
                sessions.expire(Instant::now());
            }
        });
        sessions
    }

    /// Closes the live connection of `client_id`, as a newer connection would (cluster mode:
    /// the device connected to another node). Returns whether there was one.
    pub(crate) fn kick(&self, client_id: &str) -> bool {
        match self.lock().get(client_id) {
            Some(Entry::Live(holder)) => {
                holder.kick.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Takes the session of `client_id` for connection `connection`, closing a live holder
    /// first and waiting (at most `wait`) until it has let go.
    pub(crate) async fn claim(
        &self,
        client_id: &Arc<str>,
        connection: u64,
        wait: Duration,
    ) -> Claim {
        let deadline = Instant::now() + wait;
        loop {
            let previous = {
                let mut table = self.lock();
                match table.remove(client_id) {
                    Some(Entry::Live(holder)) if Instant::now() < deadline => {
                        holder.kick.notify_one();
                        table.insert(client_id.clone(), Entry::Live(holder.clone()));
                        Some(holder)
                    }
                    other => {
                        let kept = match other {
                            Some(Entry::Kept(kept)) => {
                                self.count_kept(-1);
                                Some(*kept)
                            }
                            Some(Entry::Live(stuck)) => {
                                tracing::warn!(client_id = %client_id, connection = stuck.connection, "previous connection did not let go of its session in time; taking it over");
                                None
                            }
                            None => None,
                        };
                        let holder = Arc::new(Holder {
                            connection,
                            kick: Notify::new(),
                            ended: Notify::new(),
                            done: AtomicBool::new(false),
                        });
                        table.insert(client_id.clone(), Entry::Live(holder.clone()));
                        return Claim { holder, kept };
                    }
                }
            };
            if let Some(previous) = previous {
                let ended = previous.ended.notified();
                if !previous.done.load(Ordering::Acquire) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = tokio::time::timeout(left, ended).await;
                }
            }
        }
    }

    /// The connection holding `client_id` has ended (and let go of its router link): keep its
    /// session until `keep`'s expiry, or drop it now. `purge` asks for the router's part of a
    /// session that ends now to be dropped. A connection that was taken over in the meantime
    /// (it was too slow to let go) leaves the session to its successor and drops what it kept.
    pub(crate) fn release(
        &self,
        client_id: &Arc<str>,
        holder: &Holder,
        keep: Option<Kept>,
        purge_router: bool,
    ) {
        {
            let mut table = self.lock();
            let ours = matches!(table.get(client_id), Some(Entry::Live(h)) if h.connection == holder.connection);
            if ours {
                table.remove(client_id);
                match keep {
                    Some(kept) => {
                        table.insert(client_id.clone(), Entry::Kept(Box::new(kept)));
                        self.count_kept(1);
                    }
                    None if purge_router => purge(&self.router, client_id),
                    None => {}
                }
                let over = self
                    .kept_count
                    .load(Ordering::Relaxed)
                    .saturating_sub(self.max_kept);
                if over > 0 {
                    self.evict(&mut table, over);
                }
            } else if let Some(kept) = keep {
                for filter in kept.subscriptions.filters() {
                    self.interest.remove(filter);
                }
            }
        }
        holder.done.store(true, Ordering::Release);
        holder.ended.notify_waiters();
    }

    fn count_kept(&self, change: i64) {
        if change > 0 {
            self.kept_count.fetch_add(1, Ordering::Relaxed);
            self.kept.increment(1.0);
        } else {
            self.kept_count.fetch_sub(1, Ordering::Relaxed);
            self.kept.decrement(1.0);
        }
    }

    /// Drops the `count` kept sessions closest to expiry.
    fn evict(&self, table: &mut HashMap<Arc<str>, Entry>, count: usize) {
        let mut kept: Vec<(Instant, Arc<str>)> = table
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Kept(k) => Some((k.expires_at, id.clone())),
                Entry::Live(_) => None,
            })
            .collect();
        kept.sort();
        for (_, id) in kept.into_iter().take(count) {
            if let Some(Entry::Kept(k)) = table.remove(&id) {
                self.drop_kept(&id, &k);
                metrics::counter!("fieldline_broker_sessions_dropped_total", "reason" => "limit")
                    .increment(1);
            }
        }
    }

    /// Drops every kept session whose time is up.
    pub(crate) fn expire(&self, now: Instant) {
        if self.kept_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut table = self.lock();
        let expired: Vec<Arc<str>> = table
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Kept(k) if k.expires_at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(Entry::Kept(k)) = table.remove(&id) {
                self.drop_kept(&id, &k);
                metrics::counter!("fieldline_broker_sessions_dropped_total", "reason" => "expired")
                    .increment(1);
            }
        }
    }

    /// Forgets a kept session, with what the router queued for it. Runs under the table's
    /// lock so that no connection of the same client id can attach in between.
    fn drop_kept(&self, client_id: &str, kept: &Kept) {
        self.count_kept(-1);
        self.discard(client_id, kept);
    }

    /// Forgets a kept session that is no longer in the table (a clean start discards it).
    pub(crate) fn discard(&self, client_id: &str, kept: &Kept) {
        for filter in kept.subscriptions.filters() {
            self.interest.remove(filter);
        }
        if kept.in_router {
            purge(&self.router, client_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}
