//! What a device receives for a command: the topic, the JSON envelope, and (MQTT 5) where
//! to reply.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use fieldline_broker::CommandToDevice;
use fieldline_store::commands::CommandRecord;
use fieldline_store::time_format::format_ms;
use serde_json::{Map, Value};

/// `{"id", "name", "payload" | "payload_b64", "expires"}` as bytes.
pub(crate) fn envelope(
    id: &str,
    name: &str,
    payload: &[u8],
    payload_is_json: bool,
    expires_ms: i64,
) -> Vec<u8> {
    let mut body = Map::new();
    body.insert("id".into(), Value::String(id.to_string()));
    body.insert("name".into(), Value::String(name.to_string()));
    if payload_is_json {
        let payload = serde_json::from_slice(payload).unwrap_or(Value::Null);
        body.insert("payload".into(), payload);
    } else {
        body.insert(
            "payload_b64".into(),
            Value::String(STANDARD.encode(payload)),
        );
    }
    body.insert("expires".into(), Value::String(format_ms(expires_ms)));
    Value::Object(body).to_string().into_bytes()
}

pub(crate) fn command_topic(device: &str, name: &str) -> String {
    format!("devices/{device}/commands/{name}")
}

pub(crate) fn reply_topic(device: &str, id: &str) -> String {
    format!("devices/{device}/replies/{id}")
}

/// Bytes of the PUBLISH that carries `payload` on `topic` at QoS 1 to an MQTT 5 client
/// (fixed header, topic, packet id, properties with the response topic and correlation data):
/// what a device's Maximum Packet Size is compared with.
pub(crate) fn packet_size(topic: &str, reply_topic: &str, id: &str, payload: usize) -> usize {
    let properties = 1 + 2 + reply_topic.len() + 1 + 2 + id.len();
    let remaining = 2 + topic.len() + 2 + 4 + properties + payload;
    1 + 4 + remaining
}

/// The command as the broker publishes it.
pub(crate) fn to_device(command: &CommandRecord) -> CommandToDevice {
    let payload = envelope(
        &command.id,
        &command.name,
        &command.payload,
        command.payload_is_json,
        command.expires_ms,
    );
    CommandToDevice {
        id: Arc::from(command.id.as_str()),
        topic: command_topic(&command.device, &command.name),
        payload: Bytes::from(payload),
        qos: u8::try_from(command.qos).unwrap_or(1),
        response_topic: reply_topic(&command.device, &command.id),
        again: command.attempts > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_carries_json_as_json_and_bytes_as_base64() {
        let json = envelope("c1", "set_interval", br#"{"s":5}"#, true, 0);
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["id"], "c1");
        assert_eq!(value["name"], "set_interval");
        assert_eq!(value["payload"]["s"], 5);
        assert!(value["expires"]
            .as_str()
            .unwrap()
            .starts_with("1970-01-01T00:00:00"));
        let raw = envelope("c2", "blob", &[0xff, 0x00], false, 0);
        let value: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(value["payload_b64"], "/wA=");
        assert!(value.get("payload").is_none());
    }
}
