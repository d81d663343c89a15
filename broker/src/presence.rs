//! Which devices are connected: turns connection starts and ends into one online and one
//! offline per device, and writes each change to the log as a fact.
//!
//! A device that reconnects before its old connection has timed out has two connections for a
//! while (the broker closes the old one when the new one takes over its client id). Only the
//! newest connection counts: the end of an older one changes nothing.
//!
//! Deciding here, in the order the log records changes, makes each presence record a fact
//! ("truck-1 went offline") rather than an input that needs every earlier record to judge.
//! So storage and the live history can be rebuilt from any part of the log.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::wal::{Wal, WalError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The client said nothing for 1.5 × its keep-alive.
    KeepAlive,
    /// The socket closed or failed, or the broker closed the connection for a protocol error.
    Dropped,
    /// The broker cut the connection off: it broke the access rules or its publish rate, or
    /// its device was disabled or given a new secret.
    Kicked,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Disconnect => "disconnect",
            DisconnectReason::KeepAlive => "keepalive",
            DisconnectReason::Dropped => "dropped",
            DisconnectReason::Kicked => "kicked",
        }
    }

    /// Its byte in a presence record of the log.
    pub(crate) fn code(self) -> u8 {
        match self {
            DisconnectReason::Disconnect => 1,
            DisconnectReason::KeepAlive => 2,
            DisconnectReason::Dropped => 3,
            DisconnectReason::Kicked => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        [
            DisconnectReason::Disconnect,
            DisconnectReason::KeepAlive,
            DisconnectReason::Dropped,
            DisconnectReason::Kicked,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
}

/// The log topic of presence records. No device can publish it: `0xFF` never occurs in
/// UTF-8, and the tap refuses device topics that start with it.
pub const LOG_TOPIC: &[u8] = b"\xFFpresence";

/// One change of a device's presence, or the end of a connection that left a Last Will.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The device was offline and has connected.
    Online { device: Arc<str> },
    /// One of the device's connections ended.
    Ended {
        device: Arc<str>,
        /// It was the device's newest connection: the device is offline now.
        offline: bool,
        reason: DisconnectReason,
        /// The connection's Last Will, when it ended without a DISCONNECT.
        will: Option<Will>,
    },
}

#[derive(Default)]
pub struct Presence {
    /// Online devices and their newest connection.
    current: HashMap<Arc<str>, u64>,
}

impl Presence {
    /// Records a new connection; the change when the device was offline until now.
    /// Connection ids grow in the order the broker accepted them, so an older one arriving
    /// late is ignored.
    pub fn connected(&mut self, device: &Arc<str>, connection: u64) -> Option<Change> {
        match self.current.get_mut(device) {
            Some(current) => {
                *current = (*current).max(connection);
                None
            }
            None => {
                self.current.insert(device.clone(), connection);
                Some(Change::Online {
                    device: device.clone(),
                })
            }
        }
    }

    /// Records the end of a connection: a change when the device goes offline, or when the
    /// connection left a will (which is data whether or not the device is still online).
    pub fn ended(
        &mut self,
        device: &Arc<str>,
        connection: u64,
        reason: DisconnectReason,
        will: Option<Will>,
    ) -> Option<Change> {
        let offline = self.current.get(device) == Some(&connection);
        if offline {
            self.current.remove(device);
        }
        (offline || will.is_some()).then(|| Change::Ended {
            device: device.clone(),
            offline,
            reason,
            will,
        })
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
        .filter(|u| is_device_id(u))
        .or(Some(client_id).filter(|c| is_device_id(c)))
}

/// CONTRACT.md's device ids: 1 to 64 characters from `[A-Za-z0-9_.-]`.
fn is_device_id(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A presence record whose bytes do not decode: written by another version, or a bug.
#[derive(Debug, thiserror::Error)]
#[error("presence record {0}")]
pub struct BadPresenceRecord(&'static str);

const VERSION: u8 = 1;
const ONLINE: u8 = 1;
const ENDED: u8 = 2;

impl Change {
    pub fn device(&self) -> &Arc<str> {
        match self {
            Change::Online { device } | Change::Ended { device, .. } => device,
        }
    }

    /// Appends the change to the log as a presence record; returns its position.
    pub fn append_to(&self, wal: &Wal, received_ms: i64) -> Result<u64, WalError> {
        wal.append(received_ms, LOG_TOPIC, &self.encode(), |position| position)
    }

    /// The record's payload: `version | kind | device length | device`, then for an end
    /// `offline | reason | will? | will topic length (u16) | will topic | will payload`.
    pub fn encode(&self) -> Vec<u8> {
        let device = self.device().as_bytes();
        // Device ids are at most 64 bytes (`device_of`).
        let mut out = vec![VERSION, 0, device.len() as u8];
        out.extend_from_slice(device);
        match self {
            Change::Online { .. } => out[1] = ONLINE,
            Change::Ended {
                offline,
                reason,
                will,
                ..
            } => {
                out[1] = ENDED;
                out.extend_from_slice(&[
                    u8::from(*offline),
                    reason.code(),
                    u8::from(will.is_some()),
                ]);
                if let Some(will) = will {
                    // MQTT topics are at most 65,535 bytes.
                    let topic_len = u16::try_from(will.topic.len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&topic_len.to_le_bytes());
                    out.extend_from_slice(&will.topic[..usize::from(topic_len)]);
                    out.extend_from_slice(&will.payload);
                }
            }
        }
        out
    }

    pub fn decode(payload: &Bytes) -> Result<Change, BadPresenceRecord> {
        let short = BadPresenceRecord("is cut short");
        let [version, kind, device_len, rest @ ..] = &payload[..] else {
            return Err(short);
        };
        if *version != VERSION {
            return Err(BadPresenceRecord("has an unknown version"));
        }
        let device_len = usize::from(*device_len);
        let device = rest.get(..device_len).ok_or(short)?;
        let device: Arc<str> = std::str::from_utf8(device)
            .ok()
            .filter(|d| is_device_id(d))
            .ok_or(BadPresenceRecord("names no valid device"))?
            .into();
        let rest = &rest[device_len..];
        match *kind {
            ONLINE => Ok(Change::Online { device }),
            ENDED => {
                let [offline, reason, has_will, will @ ..] = rest else {
                    return Err(BadPresenceRecord("is cut short"));
                };
                let reason = DisconnectReason::from_code(*reason)
                    .ok_or(BadPresenceRecord("has an unknown reason"))?;
                let will = match has_will {
                    0 => None,
                    _ => {
                        let [a, b, will @ ..] = will else {
                            return Err(BadPresenceRecord("is cut short"));
                        };
                        let topic_len = usize::from(u16::from_le_bytes([*a, *b]));
                        let start = payload.len() - will.len();
                        if will.len() < topic_len {
                            return Err(BadPresenceRecord("is cut short"));
                        }
                        Some(Will {
                            topic: payload.slice(start..start + topic_len),
                            payload: payload.slice(start + topic_len..),
                        })
                    }
                };
                Ok(Change::Ended {
                    device,
                    offline: *offline != 0,
                    reason,
                    will,
                })
            }
            _ => Err(BadPresenceRecord("has an unknown kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_connection_takes_a_device_offline() {
        let mut presence = Presence::default();
        let truck: Arc<str> = Arc::from("truck-1");
        let dropped = DisconnectReason::Dropped;
        assert!(presence.connected(&truck, 1).is_some());
        // Reconnect before the old connection ends: still online, no second "online".
        assert!(presence.connected(&truck, 2).is_none());
        assert!(
            presence.ended(&truck, 1, dropped, None).is_none(),
            "a stale end changes nothing"
        );
        assert!(
            presence.connected(&truck, 1).is_none(),
            "an older connection reported late"
        );
        assert_eq!(presence.online_devices(), 1);
        assert!(matches!(
            presence.ended(&truck, 2, dropped, None),
            Some(Change::Ended { offline: true, .. })
        ));
        assert!(
            presence.ended(&truck, 2, dropped, None).is_none(),
            "an end is counted once"
        );
        assert_eq!(presence.online_devices(), 0);
    }

    #[test]
    fn a_stale_connection_with_a_will_still_hands_the_will_over() {
        let mut presence = Presence::default();
        let truck: Arc<str> = Arc::from("truck-1");
        presence.connected(&truck, 1);
        presence.connected(&truck, 2);
        let will = Will {
            topic: Bytes::from_static(b"devices/truck-1/status"),
            payload: Bytes::from_static(b"{\"online\":false}"),
        };
        let change = presence.ended(&truck, 1, DisconnectReason::KeepAlive, Some(will));
        assert!(matches!(
            change,
            Some(Change::Ended {
                offline: false,
                will: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn a_device_is_named_by_its_username_then_its_client_id() {
        assert_eq!(device_of(Some("pump-3"), "anything"), Some("pump-3"));
        assert_eq!(device_of(Some("not valid!"), "pump-4"), Some("pump-4"));
        assert_eq!(device_of(None, "pump-5"), Some("pump-5"));
        assert_eq!(device_of(None, ""), None);
        assert_eq!(device_of(None, "rumqtt/with/slashes"), None);
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let truck: Arc<str> = Arc::from("truck-1");
        let changes = [
            Change::Online {
                device: truck.clone(),
            },
            Change::Ended {
                device: truck.clone(),
                offline: true,
                reason: DisconnectReason::KeepAlive,
                will: None,
            },
            Change::Ended {
                device: truck,
                offline: false,
                reason: DisconnectReason::Kicked,
                will: Some(Will {
                    topic: Bytes::from_static(b"devices/truck-1/status"),
                    payload: Bytes::from_static(b"\x00\xff binary"),
                }),
            },
        ];
        for change in changes {
            let bytes = Bytes::from(change.encode());
            assert_eq!(Change::decode(&bytes).expect("decodes"), change);
            for cut in 0..bytes.len() {
                // Every prefix is refused or decodes to something shorter, never panics.
                let _ = Change::decode(&bytes.slice(..cut));
            }
        }
        for bad in [
            &b""[..],
            b"\x02\x01\x01a",
            b"\x01\x09\x01a",
            b"\x01\x01\x02a!",
            b"\x01\x02\x01a\x01\x09\x00",
        ] {
            assert!(
                Change::decode(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
