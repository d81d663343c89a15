//! The dispatcher: hands commands to the broker's mailboxes and records in the ledger what
//! the broker reports (sent, delivered), the replies devices send, and what expires.
//!
//! One task owns all of it, so the ledger's moves for one command happen in the order they
//! were reported. Expiry is a sweep over the ledger once a second, never a timer per command.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fieldline_broker::{Commands, Report};
use fieldline_store::commands::{CommandRecord, CommandState, Move, Moved};
use fieldline_store::time_format::now_ms;
use fieldline_store::Store;
use tokio::sync::mpsc;

use super::envelope::to_device;
use super::record_counts;
use crate::events::EventFeed;

/// What the desk tells the dispatcher.
pub(crate) enum Wake {
    /// A command was stored: send it if its device is connected.
    Created { device: String, id: String },
    /// A device answered a command.
    Reply {
        device: String,
        id: String,
        ok: bool,
        body: String,
    },
}

/// Commands handed to one device's connection at most this many at a time: the rest go when
/// it has acknowledged those (or reconnects).
const PENDING_PER_DEVICE: u32 = 1_000;
/// How long moves the database refused are kept for another try.
const RETRY: Duration = Duration::from_secs(1);
/// How often the per-state gauges are refreshed.
const COUNT_EVERY: u32 = 10;

pub(crate) struct Dispatcher {
    store: Arc<dyn Store>,
    broker: Arc<Commands>,
    feed: Arc<dyn EventFeed>,
    /// Per device, the commands handed to its current connection (not to hand them twice).
    handed: HashMap<String, HashSet<String>>,
    /// Moves to record (kept across a failed write).
    moves: Vec<Move>,
}

impl Dispatcher {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        broker: Arc<Commands>,
        feed: Arc<dyn EventFeed>,
    ) -> Self {
        Dispatcher {
            store,
            broker,
            feed,
            handed: HashMap::new(),
            moves: Vec::new(),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut wakes: mpsc::UnboundedReceiver<Wake>,
    ) {
        let mut tick = tokio::time::interval(RETRY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        let mut reports_open = true;
        loop {
            let mut ready = Vec::new();
            tokio::select! {
                _ = tick.tick() => {
                    self.expire().await;
                    ticks = ticks.wrapping_add(1);
                    if ticks % COUNT_EVERY == 1 {
                        if let Ok(counts) = self.store.command_counts().await {
                            record_counts(&counts);
                        }
                    }
                }
                report = reports.recv(), if reports_open => {
                    let Some(report) = report else {
                        reports_open = false;
                        continue;
                    };
                    let mut batch = vec![report];
                    while let Ok(more) = reports.try_recv() {
                        batch.push(more);
                        if batch.len() >= 1_024 {
                            break;
                        }
                    }
                    for report in batch {
                        self.take_report(report, &mut ready);
                    }
                }
                wake = wakes.recv() => {
                    let Some(wake) = wake else {
                        return;
                    };
                    let mut batch = vec![wake];
                    while let Ok(more) = wakes.try_recv() {
                        batch.push(more);
                        if batch.len() >= 1_024 {
                            break;
                        }
                    }
                    for wake in batch {
                        self.take_wake(wake).await;
                    }
                }
            }
            self.record().await;
            for device in ready {
                self.send_pending(&device).await;
            }
        }
    }

    fn take_report(&mut self, report: Report, ready: &mut Vec<String>) {
        match report {
            Report::Ready { device } => {
                // A new connection: what the old one had is handed again.
                self.handed.remove(&*device);
                ready.push(device.to_string());
            }
            Report::Sent { id, .. } => self.moves.push(Move::Sent { id: id.to_string() }),
            Report::Delivered { device, id } => {
                if let Some(handed) = self.handed.get_mut(&*device) {
                    handed.remove(&*id);
                }
                self.moves.push(Move::Delivered { id: id.to_string() });
            }
            Report::Refused { device, id } => {
                tracing::warn!(%device, command = %id, "the device's connection cannot take this command (no matching subscription, or larger than it accepts); it stays pending");
                if let Some(handed) = self.handed.get_mut(&*device) {
                    handed.remove(&*id);
                }
            }
        }
    }

    async fn take_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Created { device, id } => {
                if !self.broker.connected(&device) {
                    return;
                }
                match self.store.command(&id).await {
                    Ok(Some(command)) => self.hand(&command),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, command = %id, "cannot read a new command; it goes out at the device's next connection");
                    }
                }
            }
            Wake::Reply {
                device,
                id,
                ok,
                body,
            } => self.moves.push(Move::Replied {
                id,
                device,
                ok,
                body,
            }),
        }
    }

    /// Hands `command` to its device's connection unless it has it already.
    fn hand(&mut self, command: &CommandRecord) {
        let handed = self.handed.entry(command.device.clone()).or_default();
        if handed.contains(&command.id) {
            return;
        }
        if self
            .broker
            .deliver(&command.device, to_device(command))
            .is_ok()
        {
            handed.insert(command.id.clone());
        }
    }

    /// Hands a device's connection everything pending for it, oldest first.
    async fn send_pending(&mut self, device: &str) {
        match self
            .store
            .pending_commands(device, now_ms(), PENDING_PER_DEVICE)
            .await
        {
            Ok(pending) => {
                for command in &pending {
                    self.hand(command);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, %device, "cannot read the device's pending commands; they go out at its next connection");
            }
        }
    }

    /// Records the moves gathered so far in one transaction; kept for the next round if the
    /// database refuses.
    async fn record(&mut self) {
        if self.moves.is_empty() {
            return;
        }
        let moves = std::mem::take(&mut self.moves);
        match self.store.move_commands(&moves, now_ms()).await {
            Ok(moved) => {
                for step in &moves {
                    let Move::Replied { id, device, .. } = step else {
                        continue;
                    };
                    if !moved.iter().any(|m| &m.command.id == id) {
                        metrics::counter!("fieldline_command_replies_refused_total", "reason" => "unknown_command").increment(1);
                        tracing::warn!(%device, command = %id, "reply refused: no such command of this device awaits a reply");
                    }
                }
                self.publish(&moved);
            }
            Err(e) => {
                metrics::counter!("fieldline_command_ledger_errors_total").increment(1);
                tracing::warn!(error = %e, moves = moves.len(), "cannot record command moves; retrying");
                self.moves = moves;
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    async fn expire(&mut self) {
        match self.store.expire_commands(now_ms()).await {
            Ok(expired) => {
                for moved in &expired {
                    if let Some(handed) = self.handed.get_mut(&moved.command.device) {
                        handed.remove(&moved.command.id);
                    }
                }
                if !expired.is_empty() {
                    metrics::counter!("fieldline_commands_expired_total")
                        .increment(expired.len() as u64);
                }
                self.publish(&expired);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot expire commands; trying again in a second")
            }
        }
    }

    fn publish(&self, moved: &[Moved]) {
        let events: Vec<_> = moved.iter().filter_map(|m| m.event.clone()).collect();
        // Creation to PUBACK, once per command: when its `delivered` event is made.
        for m in moved {
            if m.event.is_some() && m.command.state() == CommandState::Delivered {
                let delivered = m.command.delivered_ms.unwrap_or(m.command.updated_ms);
                let seconds = (delivered - m.command.created_ms).max(0) as f64 / 1000.0;
                metrics::histogram!("fieldline_command_delivery_seconds").record(seconds);
            }
        }
        if !events.is_empty() {
            self.feed.committed(&events);
        }
    }
}
