//! Commands on their way to devices: each device's mailbox in its current connection, and
//! what connections report back about them.
//!
//! rumqttd's local links publish at QoS 0 and never see a PUBACK, so commands do not go
//! through the router. A connection whose device subscribes to its own commands opens a
//! mailbox (a resumed session that had subscribed does too); whoever sends commands hands
//! each to the mailbox of the device's current connection, which publishes it under the
//! subscription's rules and reports when it is written and when the device acknowledges it.
//! The device ACL already limits a device to its own commands topic, so nothing here widens
//! what a client may see.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::delivery::{Outbound, Step, Subscriptions};

/// Packet ids of commands start here: the router's own forwards use 1 to 100 (rumqttd's
/// fixed in-flight window), so the two never collide on one connection.
pub(crate) const FIRST_COMMAND_PKID: u16 = 1_001;

/// A command for one device, ready to publish.
#[derive(Clone, Debug)]
pub struct CommandToDevice {
    /// The ledger's id, reported back with every step.
    pub id: Arc<str>,
    /// `devices/{id}/commands/{name}`.
    pub topic: String,
    /// What the device receives.
    pub payload: Bytes,
    /// 0 or 1; the device receives it at the lower of this and its subscription's QoS.
    pub qos: u8,
    /// MQTT 5 Response Topic (`devices/{id}/replies/{command id}`); the command id is the
    /// Correlation Data.
    pub response_topic: String,
    /// Sent before: the device may have it already (MQTT's DUP flag).
    pub again: bool,
}

/// What connections tell the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// A connection of `device` takes commands now (it subscribed, or resumed a session that
    /// had): what is pending may be handed to it.
    Ready { device: Arc<str> },
    /// Written to the device's connection.
    Sent { device: Arc<str>, id: Arc<str> },
    /// The device acknowledged it (PUBACK); a QoS 0 command is never reported so.
    Delivered { device: Arc<str>, id: Arc<str> },
    /// The connection cannot publish it: no subscription of the device matches its topic, or
    /// it is larger than the device accepts. It stays pending.
    Refused { device: Arc<str>, id: Arc<str> },
}

/// A device's current mailbox.
struct Mailbox {
    connection: u64,
    tx: mpsc::UnboundedSender<CommandToDevice>,
    /// The Maximum Packet Size the device's connection advertised (MQTT 5), if any.
    max_packet_size: Option<usize>,
}

/// The mailboxes of every device that takes commands now.
pub struct Commands {
    mailboxes: Mutex<HashMap<Arc<str>, Mailbox>>,
    reports: mpsc::UnboundedSender<Report>,
}

/// The device has no connection that takes commands; the command comes back.
#[derive(Debug)]
pub struct NotConnected(pub CommandToDevice);

impl Commands {
    /// Mailboxes, and the receiver of what connections report.
    pub fn new() -> (Arc<Commands>, mpsc::UnboundedReceiver<Report>) {
        let (reports, rx) = mpsc::unbounded_channel();
        let commands = Commands {
            mailboxes: Mutex::new(HashMap::new()),
            reports,
        };
        (Arc::new(commands), rx)
    }

    /// Hands `command` to the device's current connection.
    pub fn deliver(&self, device: &str, command: CommandToDevice) -> Result<(), NotConnected> {
        let mailboxes = self
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match mailboxes.get(device) {
            Some(mailbox) => mailbox
                .tx
                .send(command)
                .map_err(|mpsc::error::SendError(c)| NotConnected(c)),
            None => Err(NotConnected(command)),
        }
    }

    /// Whether a connection of `device` takes commands now.
    pub fn connected(&self, device: &str) -> bool {
        let mailboxes = self
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        mailboxes.get(device).is_some_and(|m| !m.tx.is_closed())
    }

    /// The largest packet the device's current connection takes, when it said (MQTT 5).
    pub fn max_packet_size(&self, device: &str) -> Option<usize> {
        let mailboxes = self
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        mailboxes.get(device).and_then(|m| m.max_packet_size)
    }

    /// Opens the mailbox of `device` in `connection`, replacing an older connection's.
    pub(crate) fn open(
        &self,
        device: Arc<str>,
        connection: u64,
        max_packet_size: Option<usize>,
    ) -> mpsc::UnboundedReceiver<CommandToDevice> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mailbox = Mailbox {
            connection,
            tx,
            max_packet_size,
        };
        let mut mailboxes = self
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        mailboxes.insert(device.clone(), mailbox);
        metrics::gauge!("fieldline_command_mailboxes").set(mailboxes.len() as f64);
        drop(mailboxes);
        self.report(Report::Ready { device });
        rx
    }

    /// Closes the mailbox of `device` if `connection` still holds it.
    pub(crate) fn close(&self, device: &str, connection: u64) {
        let mut mailboxes = self
            .mailboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if mailboxes
            .get(device)
            .is_some_and(|m| m.connection == connection)
        {
            mailboxes.remove(device);
        }
        metrics::gauge!("fieldline_command_mailboxes").set(mailboxes.len() as f64);
    }

    pub(crate) fn report(&self, report: Report) {
        // The sender ends only when the process does.
        let _ = self.reports.send(report);
    }
}

/// A connection's end of its device's mailbox: commands waiting for a Receive Maximum slot,
/// and those published at QoS 1 awaiting their PUBACK.
pub(crate) struct Inbox {
    device: Arc<str>,
    connection: u64,
    rx: mpsc::UnboundedReceiver<CommandToDevice>,
    /// A newer connection took the mailbox.
    closed: bool,
    waiting: VecDeque<CommandToDevice>,
    /// Packet id → command id, for QoS 1 commands the device has not acknowledged.
    inflight: HashMap<u16, Arc<str>>,
    next_pkid: u16,
}

impl Inbox {
    pub(crate) fn open(
        commands: &Commands,
        device: Arc<str>,
        connection: u64,
        max_packet_size: Option<usize>,
    ) -> Inbox {
        let rx = commands.open(device.clone(), connection, max_packet_size);
        Inbox {
            device,
            connection,
            rx,
            closed: false,
            waiting: VecDeque::new(),
            inflight: HashMap::new(),
            next_pkid: FIRST_COMMAND_PKID,
        }
    }

    /// The next commands handed to this connection; never, once the mailbox is gone.
    pub(crate) async fn next(&mut self) -> Vec<CommandToDevice> {
        if self.closed {
            return std::future::pending().await;
        }
        let mut taken = Vec::new();
        if self.rx.recv_many(&mut taken, 64).await == 0 {
            self.closed = true;
        }
        taken
    }

    pub(crate) fn take(&mut self, commands: Vec<CommandToDevice>) {
        self.waiting.extend(commands);
    }

    /// Publishes what is waiting while the client has Receive Maximum slots, each at the
    /// lower of its QoS and the best matching subscription's. `publish` writes one with the
    /// QoS and packet id given and says whether it could (not when it is larger than the
    /// client accepts).
    pub(crate) fn pump(
        &mut self,
        commands: &Commands,
        subscriptions: &Subscriptions,
        outbound: &mut Outbound,
        steps: &mut Vec<Step>,
        mut publish: impl FnMut(&CommandToDevice, u8, u16) -> bool,
    ) {
        while let Some(command) = self.waiting.front() {
            let granted = subscriptions
                .all()
                .filter(|(_, s)| rumqttd::protocol::matches(&command.topic, &s.filter))
                .map(|(_, s)| s.qos)
                .max();
            let Some(granted) = granted else {
                if let Some(command) = self.waiting.pop_front() {
                    self.refused(commands, command.id);
                }
                continue;
            };
            let qos = command.qos.min(granted).min(1);
            if qos == 1 && !outbound.reserve() {
                return;
            }
            let Some(command) = self.waiting.pop_front() else {
                return;
            };
            let pkid = if qos == 1 { self.free_pkid() } else { 0 };
            if !publish(&command, qos, pkid) {
                if qos == 1 {
                    outbound.unreserve(steps);
                }
                self.refused(commands, command.id);
                continue;
            }
            if qos == 1 {
                self.inflight.insert(pkid, command.id.clone());
            }
            commands.report(Report::Sent {
                device: self.device.clone(),
                id: command.id,
            });
        }
    }

    /// A PUBACK from the device: `true` when it was for a command (its slot is free again).
    pub(crate) fn acknowledged(&mut self, commands: &Commands, pkid: u16) -> bool {
        let Some(id) = self.inflight.remove(&pkid) else {
            return false;
        };
        commands.report(Report::Delivered {
            device: self.device.clone(),
            id,
        });
        true
    }

    /// The connection ends: the mailbox closes (what was not acknowledged stays pending in
    /// the ledger and is sent again to the device's next connection).
    pub(crate) fn close(&self, commands: &Commands) {
        commands.close(&self.device, self.connection);
    }

    fn refused(&self, commands: &Commands, id: Arc<str>) {
        metrics::counter!("fieldline_commands_refused_by_connection_total").increment(1);
        commands.report(Report::Refused {
            device: self.device.clone(),
            id,
        });
    }

    fn free_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = if pkid == u16::MAX {
                FIRST_COMMAND_PKID
            } else {
                pkid + 1
            };
            if !self.inflight.contains_key(&pkid) {
                return pkid;
            }
        }
    }
}

/// Whether `filter` (already allowed by the ACL) is one of `device`'s command filters.
pub(crate) fn is_command_filter(device: &str, filter: &str) -> bool {
    filter
        .strip_prefix("devices/")
        .and_then(|rest| rest.strip_prefix(device))
        .and_then(|rest| rest.strip_prefix("/commands"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str) -> CommandToDevice {
        CommandToDevice {
            id: Arc::from(id),
            topic: "devices/d1/commands/ping".to_string(),
            payload: Bytes::from_static(b"{}"),
            qos: 1,
            response_topic: format!("devices/d1/replies/{id}"),
            again: false,
        }
    }

    #[test]
    fn a_newer_connection_takes_the_mailbox_and_the_older_ones_end_leaves_it() {
        let (commands, mut reports) = Commands::new();
        assert!(commands.deliver("d1", command("a")).is_err());
        let mut first = commands.open(Arc::from("d1"), 1, None);
        let mut second = commands.open(Arc::from("d1"), 2, Some(512));
        assert_eq!(
            reports.try_recv(),
            Ok(Report::Ready {
                device: Arc::from("d1")
            })
        );
        commands.close("d1", 1);
        assert!(commands.connected("d1"));
        assert_eq!(commands.max_packet_size("d1"), Some(512));
        commands.deliver("d1", command("b")).unwrap();
        assert_eq!(&*second.try_recv().unwrap().id, "b");
        assert!(first.try_recv().is_err());
        commands.close("d1", 2);
        assert!(!commands.connected("d1"));
        assert!(commands.deliver("d1", command("c")).is_err());
    }

    #[test]
    fn command_filters_are_the_devices_own_commands_subtree() {
        assert!(is_command_filter("d1", "devices/d1/commands/#"));
        assert!(is_command_filter("d1", "devices/d1/commands"));
        assert!(is_command_filter("d1", "devices/d1/commands/ping"));
        assert!(!is_command_filter("d1", "devices/d12/commands/#"));
        assert!(!is_command_filter("d1", "devices/d1/commandsx"));
        assert!(!is_command_filter("d1", "devices/d1/replies/#"));
    }
}
