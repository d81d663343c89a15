//! The MQTT codec each connection uses: rumqttd's V4 or V5 chosen from the CONNECT packet, with
//! every parsed publish handed to the [`Tap`].
//!
//! rumqttd clones the protocol value once per accepted connection, so this wrapper lives
//! exactly as long as one connection and sees every packet it reads, before the router acts
//! on it (and so before any PUBACK is written).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{self, v4::V4, v5::V5, Packet, Protocol};

use crate::tap::Tap;

/// MQTT protocol level of the connection, known once its CONNECT header is buffered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Version {
    Unknown,
    V4,
    V5,
}

#[derive(Clone)]
pub(crate) struct TappedProtocol {
    tap: Tap,
    version: Version,
    /// A CONNECT was read; rumqttd closes connections whose first packet is anything else.
    connected: bool,
    client_id: Arc<str>,
    /// MQTT 5 topic aliases this connection has set up, so aliased publishes carry their topic.
    topic_aliases: HashMap<u16, Bytes>,
}

impl TappedProtocol {
    pub(crate) fn new(tap: Tap) -> Self {
        Self {
            tap,
            version: Version::Unknown,
            connected: false,
            client_id: Arc::from(""),
            topic_aliases: HashMap::new(),
        }
    }

    fn tap_publish(
        &mut self,
        publish: &protocol::Publish,
        alias: Option<u16>,
    ) -> Result<(), protocol::Error> {
        let topic = match alias {
            Some(alias) if publish.topic.is_empty() => match self.topic_aliases.get(&alias) {
                Some(topic) => topic.clone(),
                // rumqttd rejects the unknown alias itself; nothing to hand over.
                None => return Ok(()),
            },
            Some(alias) => {
                self.topic_aliases.insert(alias, publish.topic.clone());
                publish.topic.clone()
            }
            None => publish.topic.clone(),
        };
        self.tap
            .send(topic, publish.payload.clone(), self.client_id.clone())
            // Ends the connection before the router sees the publish, so it is never acked.
            .map_err(|_| protocol::Error::InvalidProtocol)
    }
}

/// Reads the protocol level from a buffered CONNECT packet.
///
/// Layout: fixed header byte, remaining length (1–4 bytes, 7 bits each), protocol name as a
/// 2-byte length and its bytes ("MQTT" or, for 3.1, "MQIsdp"), then the level byte.
/// Returns the number of further bytes needed when the header is not all there yet.
fn connect_level(stream: &[u8]) -> Result<u8, usize> {
    let mut pos = 1;
    loop {
        let Some(byte) = stream.get(pos) else {
            return Err(pos + 1 - stream.len());
        };
        pos += 1;
        if byte & 0x80 == 0 || pos >= 5 {
            break;
        }
    }
    let name_len = match stream.get(pos..pos + 2) {
        Some(len) => usize::from(u16::from_be_bytes([len[0], len[1]])),
        None => return Err(pos + 2 - stream.len()),
    };
    let level_at = pos + 2 + name_len;
    stream
        .get(level_at)
        .copied()
        .ok_or(level_at + 1 - stream.len())
}

impl Protocol for TappedProtocol {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        if self.version == Version::Unknown {
            // A first packet that is not a CONNECT goes to V4, which rejects it.
            self.version = if stream.first() == Some(&0x10) {
                match connect_level(stream) {
                    Ok(5) => Version::V5,
                    Ok(_) => Version::V4,
                    Err(more) => return Err(protocol::Error::InsufficientBytes(more)),
                }
            } else if stream.is_empty() {
                return Err(protocol::Error::InsufficientBytes(2));
            } else {
                Version::V4
            };
        }
        let packet = match self.version {
            Version::V5 => V5.read_mut(stream, max_size),
            _ => V4.read_mut(stream, max_size),
        };
        let packet = match packet {
            Ok(packet) => packet,
            Err(protocol::Error::InsufficientBytes(n)) => {
                return Err(protocol::Error::InsufficientBytes(n))
            }
            Err(e) => {
                tracing::debug!(client_id = %self.client_id, error = %e, "malformed MQTT packet, closing connection");
                metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
                return Err(e);
            }
        };
        match &packet {
            Packet::Connect(connect, ..) => {
                self.client_id = Arc::from(connect.client_id.as_str());
                self.connected = true;
                metrics::counter!("fieldline_broker_connects_total").increment(1);
            }
            // Before CONNECT, rumqttd refuses the connection; nothing of it is data.
            Packet::Publish(..) if !self.connected => {}
            Packet::Publish(publish, properties) => {
                let alias = properties.as_ref().and_then(|p| p.topic_alias);
                self.tap_publish(publish, alias)?;
            }
            _ => {}
        }
        Ok(packet)
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, protocol::Error> {
        match self.version {
            Version::V5 => V5.write(packet, write),
            _ => V4.write(packet, write),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::connect_level;

    #[test]
    fn reads_the_level_of_mqtt_311_and_5_connects() {
        // CONNECT, remaining length 12, "MQTT", level
        let v4 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
        let v5 = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0];
        assert_eq!(connect_level(&v4), Ok(4));
        assert_eq!(connect_level(&v5), Ok(5));
    }

    #[test]
    fn asks_for_more_bytes_when_the_header_is_cut() {
        let full = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4];
        for cut in 1..full.len() {
            let need = connect_level(&full[..cut]).expect_err("header is incomplete");
            assert!(
                need >= 1 && cut + need <= full.len(),
                "cut {cut} asked for {need}"
            );
        }
    }

    #[test]
    fn stops_reading_the_remaining_length_after_four_bytes() {
        // Continuation bits on every length byte must not run past four bytes; the name
        // length is then read from what follows.
        let hostile = [0x10, 0xff, 0xff, 0xff, 0xff, 0, 1, b'x', 5];
        assert_eq!(connect_level(&hostile), Ok(5));
        assert_eq!(connect_level(&[0x10]), Err(1));
    }
}
