//! A device that takes commands: a real MQTT client (rumqttc 3.1.1 or 5) subscribed to its
//! own commands topic, handing the test each command it receives and acknowledging it only
//! when told (or at once).

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient as AsyncClient5, Event as Event5, MqttOptions as MqttOptions5};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

/// One command as the device received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub body: Value,
    pub pkid: u16,
    pub qos: u8,
    /// MQTT 5 only.
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
}

enum Client {
    V4(AsyncClient),
    V5(AsyncClient5),
}

pub struct Commanded {
    pub device: String,
    client: Client,
    received: mpsc::UnboundedReceiver<Received>,
    /// Published to the test instead of acknowledged, when manual.
    raw4: Option<mpsc::UnboundedReceiver<rumqttc::Publish>>,
    task: tokio::task::JoinHandle<()>,
}

impl Commanded {
    /// Connects as `device` (client id = device id) over MQTT `version` (4 or 5), with a clean
    /// session, subscribes to `devices/{device}/commands/#` at QoS 1 and waits for the SUBACK.
    /// With `manual_acks`, nothing is acknowledged until [`Commanded::ack`].
    pub async fn connect(
        port: u16,
        device: &str,
        version: u8,
        manual_acks: bool,
        max_packet: Option<u32>,
    ) -> Commanded {
        Self::connect_with(port, device, version, manual_acks, max_packet, None).await
    }

    /// A registered device over MQTT 5, logging in with its secret.
    pub async fn connect_as(
        port: u16,
        device: &str,
        secret: &str,
        max_packet: Option<u32>,
    ) -> Commanded {
        Self::connect_with(port, device, 5, false, max_packet, Some(secret)).await
    }

    async fn connect_with(
        port: u16,
        device: &str,
        version: u8,
        manual_acks: bool,
        max_packet: Option<u32>,
        secret: Option<&str>,
    ) -> Commanded {
        let (tx, received) = mpsc::unbounded_channel();
        let (suback_tx, mut suback) = mpsc::unbounded_channel::<()>();
        let filter = format!("devices/{device}/commands/#");
        let (client, raw4, task) = if version == 5 {
            let mut options = MqttOptions5::new(device, "127.0.0.1", port);
            options.set_keep_alive(Duration::from_secs(30));
            options.set_manual_acks(manual_acks);
            if let Some(secret) = secret {
                options.set_credentials(device, secret);
            }
            if let Some(max) = max_packet {
                options.set_max_packet_size(Some(max));
            }
            let (client, mut eventloop) = AsyncClient5::new(options, 100);
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event5::Incoming(Packet5::Publish(p))) => {
                            let props = p.properties.clone();
                            let _ = tx.send(Received {
                                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                body: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                                pkid: p.pkid,
                                qos: p.qos as u8,
                                response_topic: props
                                    .as_ref()
                                    .and_then(|p| p.response_topic.clone()),
                                correlation: props.and_then(|p| p.correlation_data),
                            });
                        }
                        Ok(Event5::Incoming(Packet5::SubAck(_))) => {
                            let _ = suback_tx.send(());
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
            client
                .subscribe(filter, QoS5::AtLeastOnce)
                .await
                .expect("subscribe queued");
            (Client::V5(client), None, task)
        } else {
            let mut options = MqttOptions::new(device, "127.0.0.1", port);
            options.set_keep_alive(Duration::from_secs(30));
            options.set_manual_acks(manual_acks);
            if let Some(secret) = secret {
                options.set_credentials(device, secret);
            }
            let (client, mut eventloop) = AsyncClient::new(options, 100);
            let (raw_tx, raw) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = tx.send(Received {
                                topic: p.topic.clone(),
                                body: serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                                pkid: p.pkid,
                                qos: p.qos as u8,
                                response_topic: None,
                                correlation: None,
                            });
                            let _ = raw_tx.send(p);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = suback_tx.send(());
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .expect("subscribe queued");
            (Client::V4(client), Some(raw), task)
        };
        tokio::time::timeout(Duration::from_secs(10), suback.recv())
            .await
            .expect("SUBACK within 10 s");
        Commanded {
            device: device.to_string(),
            client,
            received,
            raw4,
            task,
        }
    }

    /// The next command received (within 20 s).
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.received.recv())
            .await
            .expect("a command within 20 s")
            .expect("the connection is up")
    }

    /// Nothing more arrives within `wait`.
    pub async fn nothing_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .is_err()
    }

    /// Acknowledges the oldest unacknowledged publish (3.1.1 manual acks).
    pub async fn ack_next(&mut self) {
        let raw = self.raw4.as_mut().expect("3.1.1 client");
        let publish = raw.recv().await.expect("a publish to acknowledge");
        if let Client::V4(client) = &self.client {
            client.ack(&publish).await.expect("ack queued");
        }
    }

    /// Publishes `body` to `topic` at QoS 1.
    pub async fn publish(&self, topic: &str, body: &[u8]) {
        match &self.client {
            Client::V4(c) => c
                .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
                .await
                .expect("publish queued"),
            Client::V5(c) => c
                .publish(topic, QoS5::AtLeastOnce, false, body.to_vec())
                .await
                .expect("publish queued"),
        }
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        !self.task.is_finished()
    }

    /// Drops the connection without DISCONNECT.
    pub fn drop_connection(self) {
        self.task.abort();
    }
}

impl Drop for Commanded {
    fn drop(&mut self) {
        self.task.abort();
    }
}
