//! Which devices are connected: turns the broker's connection starts and ends into one online
//! and one offline per device, whatever order overlapping connections end in.
//!
//! A device that reconnects before its old connection has timed out has two connections for a
//! while (rumqttd closes the old one when the new one takes over its client id). Only the
//! newest connection counts: the end of an older one changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::document::is_valid_name;

#[derive(Default)]
pub struct Presence {
    /// Online devices and their newest connection.
    current: HashMap<Arc<str>, u64>,
}

impl Presence {
    /// Records a new connection; true when the device was offline until now. Connection ids
    /// grow in the order the broker accepted them, so an older one arriving late is ignored.
    pub fn connected(&mut self, device: &Arc<str>, connection: u64) -> bool {
        match self.current.get_mut(device) {
            Some(current) => {
                *current = (*current).max(connection);
                false
            }
            None => {
                self.current.insert(device.clone(), connection);
                true
            }
        }
    }

    /// Records the end of a connection; true when it was the device's current one, so the
    /// device is now offline.
    pub fn disconnected(&mut self, device: &str, connection: u64) -> bool {
        if self.current.get(device) == Some(&connection) {
            self.current.remove(device);
            true
        } else {
            false
        }
    }

    pub fn online_devices(&self) -> usize {
        self.current.len()
    }
}

/// The device a connection speaks for: its MQTT username when that is a valid device id (the
/// contract's rule once device authentication is on), otherwise its client id. `None` for a
/// connection that names no valid device; it has no presence.
pub fn device_of<'a>(username: Option<&'a str>, client_id: &'a str) -> Option<&'a str> {
    username
        .filter(|u| is_valid_name(u))
        .or(Some(client_id).filter(|c| is_valid_name(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_connection_takes_a_device_offline() {
        let mut presence = Presence::default();
        let truck: Arc<str> = Arc::from("truck-1");
        assert!(presence.connected(&truck, 1));
        // Reconnect before the old connection ends: still online, no second "online".
        assert!(!presence.connected(&truck, 2));
        assert!(
            !presence.disconnected("truck-1", 1),
            "a stale end changes nothing"
        );
        assert!(
            !presence.connected(&truck, 1),
            "an older connection reported late"
        );
        assert!(!presence.disconnected("truck-1", 1));
        assert_eq!(presence.online_devices(), 1);
        assert!(presence.disconnected("truck-1", 2));
        assert!(
            !presence.disconnected("truck-1", 2),
            "an end is counted once"
        );
        assert_eq!(presence.online_devices(), 0);
    }

    #[test]
    fn a_device_is_named_by_its_username_then_its_client_id() {
        assert_eq!(device_of(Some("pump-3"), "anything"), Some("pump-3"));
        assert_eq!(device_of(Some("not valid!"), "pump-4"), Some("pump-4"));
        assert_eq!(device_of(None, "pump-5"), Some("pump-5"));
        assert_eq!(device_of(None, ""), None);
        assert_eq!(device_of(None, "rumqtt/with/slashes"), None);
    }
}
