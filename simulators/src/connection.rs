//! MQTT connection settings shared by every simulator, chosen deliberately: rumqttc's defaults
//! (10 KiB packets, Nagle on, no reconnect backoff) suit none of them.

use std::time::Duration;

use clap::Args;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};

#[derive(Args, Clone, Debug)]
pub struct Broker {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// QoS of publishes: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Unacknowledged publishes per connection.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// File of `DEVICE SECRET` lines (from `fieldline device add`): a client whose id is a
    /// listed device logs in as it.
    #[arg(long, value_parser = read_credentials)]
    pub credentials: Option<Credentials>,
}

/// Device secrets by device id.
pub type Credentials = std::collections::HashMap<String, String>;

fn read_credentials(path: &str) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (device, secret) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("{path}: expected `DEVICE SECRET` lines, got {line:?}"))?;
            Ok((device.to_string(), secret.trim().to_string()))
        })
        .collect()
}

impl Broker {
    pub fn qos(&self) -> QoS {
        if self.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    pub fn connect(&self, client_id: &str, queue: usize) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        if let Some(secret) = self.credentials.as_ref().and_then(|c| c.get(client_id)) {
            options.set_credentials(client_id, secret);
        }
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        options.set_inflight(self.inflight);
        options.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, queue);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        (client, eventloop)
    }

    /// A device that only publishes: its event loop runs in the background and, as a real
    /// device does, connects again after a pause when the connection fails (thousands of
    /// devices connecting at once make some time out; a pause spread by id keeps them from
    /// retrying in step).
    pub fn publisher(&self, client_id: &str) -> AsyncClient {
        let (client, mut eventloop) = self.connect(client_id, 100);
        let spread = client_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(1_000 + spread % 4_000)).await;
                }
            }
        });
        client
    }
}
