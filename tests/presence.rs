//! Presence end to end: connections of real MQTT clients (rumqttc, `mosquitto_sub` processes,
//! a raw socket) make devices online and offline, live and in `/api/devices`, with the reason
//! each connection ended, on both storage back ends.

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::live::Sse;
use support::raw_mqtt::{Endpoint, RawMqtt};
use support::{database, Backend, Device, Server, TempDir};

on_both_backends!(
    every_way_a_connection_ends_makes_its_device_offline,
    a_device_cannot_forge_a_presence_record
);

/// `mosquitto_sub` as a device process that stays connected until killed.
fn mosquitto_device(port: u16, id: &str, extra: &[&str]) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-i",
            id,
            "-k",
            "60",
        ])
        .args(["-t", &format!("devices/{id}/commands/#")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub is installed (scripts/test.sh installs mosquitto-clients)")
}

/// The next status event, checked to be about `device`.
async fn status(sse: &mut Sse, device: &str) -> Value {
    let event = sse.event().await.json();
    assert_eq!(event["kind"], "status", "{event}");
    assert_eq!(event["device"], device, "{event}");
    event
}

/// A CONNECT with a 1 s keep-alive, written by hand, after which the client says nothing more
/// while keeping its socket open.
fn silent_client(port: u16, id: &str) -> std::net::TcpStream {
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut packet = vec![0x10, (12 + id.len()) as u8, 0, 4];
    packet.extend_from_slice(b"MQTT");
    packet.extend_from_slice(&[4, 0x02, 0, 1, 0, id.len() as u8]);
    packet.extend_from_slice(id.as_bytes());
    socket.write_all(&packet).expect("CONNECT sent");
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "connection accepted");
    socket
}

async fn every_way_a_connection_ends_makes_its_device_offline(backend: Backend) {
    let dir = TempDir::new("presence");
    let url = database(backend, &dir, "presence").await;
    let mut server = Server::start(&dir, &url).await;
    let mut sse = Sse::open(&server, "kinds=status", None).await;

    // A clean DISCONNECT.
    let device = Device::connect(server.mqtt_port, "clean-1").await;
    assert_eq!(status(&mut sse, "clean-1").await["online"], true);
    server
        .wait_for("/api/devices/clean-1", |d| d["online"] == true)
        .await;
    device.client.disconnect().await.expect("disconnect queued");
    let offline = status(&mut sse, "clean-1").await;
    assert_eq!(offline["online"], false);
    assert_eq!(offline["reason"], "disconnect");

    // A device process killed outright: the socket closes under the broker.
    let mut killed = mosquitto_device(server.mqtt_port, "killed-2", &[]);
    assert_eq!(status(&mut sse, "killed-2").await["online"], true);
    killed.kill().expect("SIGKILL");
    let _ = killed.wait();
    let offline = status(&mut sse, "killed-2").await;
    assert_eq!(
        (offline["online"].clone(), offline["reason"].clone()),
        (false.into(), "dropped".into())
    );

    // Killed with a Last Will on its status topic: the will is the offline status.
    let mut willing = mosquitto_device(
        server.mqtt_port,
        "will-3",
        &[
            "--will-topic",
            "devices/will-3/status",
            "--will-payload",
            r#"{"online": false, "seq": 7}"#,
        ],
    );
    assert_eq!(status(&mut sse, "will-3").await["online"], true);
    willing.kill().expect("SIGKILL");
    let _ = willing.wait();
    let offline = status(&mut sse, "will-3").await;
    assert_eq!(offline["online"], false);
    assert_eq!(offline["reason"], "will");
    assert_eq!(offline["seq"], 7, "the will's own fields are kept");

    // Silence past the keep-alive: the broker's timer (1.5 × 1 s) ends the connection.
    let silent = silent_client(server.mqtt_port, "silent-4");
    assert_eq!(status(&mut sse, "silent-4").await["online"], true);
    let went_silent = Instant::now();
    let offline = status(&mut sse, "silent-4").await;
    let after = went_silent.elapsed();
    assert_eq!(offline["reason"], "keepalive", "{offline}");
    // Not a timing assertion: a bound that only a missing timer would break.
    assert!(
        after < Duration::from_secs(15),
        "offline {after:?} after going silent"
    );
    drop(silent);

    // A second CONNECT on the same connection is a protocol error: the connection is closed,
    // and the device it first named goes offline.
    let mut twice = silent_client(server.mqtt_port, "twice-6");
    assert_eq!(status(&mut sse, "twice-6").await["online"], true);
    let mut packet = vec![0x10, 12 + 5, 0, 4];
    packet.extend_from_slice(b"MQTT");
    packet.extend_from_slice(&[4, 0x02, 0, 60, 0, 5]);
    packet.extend_from_slice(b"other");
    twice.write_all(&packet).expect("second CONNECT sent");
    let offline = status(&mut sse, "twice-6").await;
    assert_eq!(offline["online"], false);
    assert_eq!(offline["reason"], "dropped");

    // The summary and the stored history agree with what went live.
    for id in ["clean-1", "killed-2", "will-3", "silent-4"] {
        let device = server
            .wait_for(&format!("/api/devices/{id}"), |d| d["online"] == false)
            .await;
        assert!(device["last_seen"].is_string(), "{device}");
    }
    let reasons = server.status_reasons("clean-1", 2).await;
    assert_eq!(reasons, ["connect", "disconnect"]);

    // A device still connected when the server stops is offline once it is back.
    let _stays = Device::connect(server.mqtt_port, "stays-5").await;
    assert_eq!(status(&mut sse, "stays-5").await["online"], true);
    server
        .wait_for("/api/devices/stays-5", |d| d["online"] == true)
        .await;
    drop(sse);
    assert!(server.stop().success());
    let server = Server::start(&dir, &url).await;
    let device = server.get_ok("/api/devices/stays-5").await;
    assert_eq!(device["online"], false, "{device}");
    let history = server.get_ok("/api/devices/stays-5/status").await;
    let last = history
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["reason"], "dropped", "{history}");
}

/// The log marks presence records with a topic that starts with byte 0xFF (never UTF-8). A
/// device that publishes to such a topic, with a payload shaped like a presence record, is
/// disconnected without a PUBACK, and nothing of it is stored or sent live.
async fn a_device_cannot_forge_a_presence_record(backend: Backend) {
    let dir = TempDir::new("presence-forge");
    let url = database(backend, &dir, "presence_forge").await;
    let server = Server::start(&dir, &url).await;
    let mut sse = Sse::open(&server, "devices=truck-9", None).await;
    let mut forger = RawMqtt::connect(&Endpoint::Tcp(server.mqtt_port), "forger-1", None)
        .await
        .expect("connects");
    // PUBLISH QoS 1, topic b"\xFFpresence", payload "truck-9 is online" in the log's layout.
    let topic = b"\xFFpresence";
    let record = b"\x01\x01\x07truck-9";
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(record);
    let mut packet = vec![0x32, body.len() as u8];
    packet.extend_from_slice(&body);
    forger.send(&packet).await.expect("sent");
    let seen = forger
        .closed_within(Duration::from_secs(10))
        .await
        .expect("the broker closes the connection");
    assert!(
        !seen.iter().any(|(kind, _)| *kind == 0x40),
        "no PUBACK: {seen:?}"
    );

    // The service goes on: a real device is stored and sent live; truck-9 never appeared.
    let mut truck = Device::connect(server.mqtt_port, "truck-9").await;
    truck
        .publish(
            "devices/truck-9/location",
            r#"{"seq": 1, "lat": 1.0, "lon": 2.0}"#,
        )
        .await;
    truck.wait_acked(1).await;
    let first = sse.event().await.json();
    assert_eq!(
        (&first["kind"], &first["online"]),
        (&"status".into(), &true.into())
    );
    assert_eq!(sse.event().await.json()["kind"], "location");
    let history = server
        .wait_for("/api/devices/truck-9/status", |h| {
            h.as_array().is_some_and(|h| !h.is_empty())
        })
        .await;
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(1),
        "only the real connect: {history}"
    );
    let forger_track = server.get_ok("/api/devices/forger-1").await;
    assert_eq!(
        forger_track["location"],
        Value::Null,
        "nothing of the forged publish is data"
    );
}
