//! Vehicles that take commands, as a tracker does: each subscribes to its own commands topic
//! (again after every reconnect: its sessions are clean) and answers on its replies topic.
//! `set_interval` changes how often it reports; `ping` answers at once; anything else is
//! answered `"ok": false`.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::connection::Broker;

/// A command as the vehicle received it.
pub struct Received {
    pub id: String,
    pub name: String,
    pub payload: Value,
}

/// What a vehicle does about one command: the new fix interval, if it changes, and the
/// reply to send.
pub fn answer(command: &Received, interval: Duration) -> (Option<Duration>, Value) {
    match command.name.as_str() {
        "set_interval" => {
            let ms = command.payload["interval_ms"]
                .as_f64()
                .or_else(|| command.payload["seconds"].as_f64().map(|s| s * 1000.0));
            match ms {
                Some(ms) if (10.0..=86_400_000.0).contains(&ms) => {
                    let new = Duration::from_millis(ms as u64);
                    (
                        Some(new),
                        json!({"ok": true, "interval_ms": new.as_millis() as u64}),
                    )
                }
                _ => (
                    None,
                    json!({"ok": false, "error": "set_interval needs interval_ms (10 ms to 1 day) or seconds"}),
                ),
            }
        }
        "ping" => (
            None,
            json!({"ok": true, "pong": crate::payload::now_ms(), "interval_ms": interval.as_millis() as u64}),
        ),
        other => (
            None,
            json!({"ok": false, "error": format!("unknown command {other:?}")}),
        ),
    }
}

/// Connects `device`, subscribed to its commands; commands arrive on the receiver.
pub fn commanded(
    broker: &Broker,
    device: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<Received>) {
    let (client, mut eventloop) = broker.connect(device, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let filter = format!("devices/{device}/commands/#");
    let subscriber = client.clone();
    let spread = device
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // A clean session forgets its subscriptions: subscribe at every connect.
                    let subscriber = subscriber.clone();
                    let filter = filter.clone();
                    tokio::spawn(async move {
                        let _ = subscriber.subscribe(filter, QoS::AtLeastOnce).await;
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(body) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    let received = Received {
                        id: body["id"].as_str().unwrap_or_default().to_string(),
                        name: body["name"].as_str().unwrap_or_default().to_string(),
                        payload: body.get("payload").cloned().unwrap_or(Value::Null),
                    };
                    if tx.send(received).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(1_000 + spread % 4_000)).await,
            }
        }
    });
    (client, rx)
}

/// Sends the reply to a command.
pub async fn reply(client: &AsyncClient, device: &str, command: &Received, body: &Value) {
    let topic = format!("devices/{device}/replies/{}", command.id);
    let _ = client
        .publish(topic, QoS::AtLeastOnce, false, body.to_string())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(name: &str, payload: Value) -> Received {
        Received {
            id: "c1".into(),
            name: name.into(),
            payload,
        }
    }

    #[test]
    fn set_interval_changes_the_pace_and_bad_values_are_refused() {
        let now = Duration::from_secs(1);
        let (new, reply) = answer(&command("set_interval", json!({"seconds": 5})), now);
        assert_eq!(new, Some(Duration::from_secs(5)));
        assert_eq!(reply["ok"], true);
        let (new, reply) = answer(&command("set_interval", json!({"interval_ms": 1})), now);
        assert_eq!(new, None);
        assert_eq!(reply["ok"], false);
        let (_, reply) = answer(&command("ping", Value::Null), now);
        assert_eq!(reply["interval_ms"], 1000);
        let (_, reply) = answer(&command("fly", Value::Null), now);
        assert_eq!(reply["ok"], false);
    }
}
