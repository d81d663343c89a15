//! Commands to devices end to end, on both back ends, with real clients (rumqttc 3.1.1 and 5,
//! `mosquitto_sub`): delivery and replies, queueing for offline devices, expiry, redelivery
//! after a lost PUBACK and after `kill -9`, idempotent creation, bad input and roles.

#[macro_use]
mod support;

use std::process::Command;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::commanded::Commanded;
use support::{
    create_token, database, mosquitto_pub, register_device, webhook_receiver, Backend, Server,
    TempDir,
};

on_both_backends!(
    a_command_reaches_an_online_device_and_its_reply_is_recorded,
    a_queued_command_waits_for_its_device_and_an_expired_one_never_goes,
    what_the_device_did_not_acknowledge_it_gets_again_also_after_kill_9,
    bad_commands_are_refused_with_the_reason_and_roles_apply,
);

async fn send(server: &Server, device: &str, body: Value) -> Value {
    let (status, reply) = server
        .request(
            Method::POST,
            &format!("/api/devices/{device}/commands"),
            server.token.as_deref(),
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["state"], "queued");
    reply
}

async fn wait_state(server: &Server, id: &str, state: &str) -> Value {
    server
        .wait_for(&format!("/api/commands/{id}"), |c| c["state"] == state)
        .await
}

/// The states a command went through, from the stored `command` events.
async fn event_states(server: &Server, id: &str) -> Vec<String> {
    let events = server.get_ok("/api/events?kinds=command").await;
    events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["command"] == id)
        .map(|e| e["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn a_command_reaches_an_online_device_and_its_reply_is_recorded(backend: Backend) {
    let dir = TempDir::new("cmd-online");
    let url = database(backend, &dir, "cmd_online").await;
    let server = Server::start(&dir, &url).await;
    // Command events go to webhooks that want them, like every stored event.
    let (hook_url, hooked) = webhook_receiver().await;
    let (status, hook) = server
        .request(
            Method::POST,
            "/api/webhooks",
            None,
            Some(json!({"url": hook_url, "kinds": ["command"], "secret": "s"})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");

    // MQTT 3.1.1: reply on devices/{id}/replies/{command id}.
    let mut v4 = Commanded::connect(server.mqtt_port, "truck-1", 4, false, None).await;
    let sent = send(
        &server,
        "truck-1",
        json!({"name": "set_interval", "payload": {"seconds": 5}}),
    )
    .await;
    let id = sent["id"].as_str().expect("id").to_string();
    let got = v4.next().await;
    assert_eq!(got.topic, "devices/truck-1/commands/set_interval");
    assert_eq!(got.qos, 1);
    assert_eq!(got.body["id"], id.as_str());
    assert_eq!(got.body["name"], "set_interval");
    assert_eq!(got.body["payload"], json!({"seconds": 5}));
    assert!(got.body["expires"].is_string());
    wait_state(&server, &id, "delivered").await;
    v4.publish(
        &format!("devices/truck-1/replies/{id}"),
        br#"{"ok": true, "interval": 5}"#,
    )
    .await;
    let replied = wait_state(&server, &id, "replied").await;
    assert_eq!(replied["reply"], json!({"ok": true, "interval": 5}));
    assert_eq!(replied["attempts"], 1);
    assert_eq!(
        event_states(&server, &id).await,
        ["queued", "sent", "delivered", "replied"]
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states: Vec<String> = hooked
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e["kind"] == "command" && e["command"] == id.as_str())
            .map(|e| e["state"].as_str().unwrap_or_default().to_string())
            .collect();
        if states.len() >= 4 {
            assert_eq!(
                states,
                ["queued", "sent", "delivered", "replied"],
                "webhook"
            );
            break;
        }
        assert!(Instant::now() < deadline, "webhook got {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A reply with ok false fails the command.
    let second = send(&server, "truck-1", json!({"name": "reboot"})).await;
    let second_id = second["id"].as_str().expect("id").to_string();
    assert_eq!(v4.next().await.body["id"], second_id.as_str());
    v4.publish(
        &format!("devices/truck-1/replies/{second_id}"),
        br#"{"ok": false, "error": "busy"}"#,
    )
    .await;
    let failed = wait_state(&server, &second_id, "failed").await;
    assert_eq!(failed["reply"]["error"], "busy");

    // MQTT 5: the Response Topic and Correlation Data lead the reply back.
    let mut v5 = Commanded::connect(server.mqtt_port, "truck-2", 5, false, None).await;
    let third = send(&server, "truck-2", json!({"name": "ping", "qos": 1})).await;
    let third_id = third["id"].as_str().expect("id").to_string();
    let got = v5.next().await;
    let response_topic = got.response_topic.clone().expect("a Response Topic");
    assert_eq!(
        response_topic,
        format!("devices/truck-2/replies/{third_id}")
    );
    assert_eq!(
        got.correlation.as_deref(),
        Some(third_id.as_bytes()),
        "Correlation Data is the command id"
    );
    v5.publish(&response_topic, br#"{"pong": true}"#).await;
    let replied = wait_state(&server, &third_id, "replied").await;
    assert_eq!(replied["reply"], json!({"pong": true}));

    // Replies to nothing, or that are not JSON, are refused and counted.
    v5.publish("devices/truck-2/replies/nosuchcommand", br#"{"ok": true}"#)
        .await;
    v5.publish(&format!("devices/truck-2/replies/{third_id}"), b"not json")
        .await;
    // A second answer to a command already answered is refused too.
    v4.publish(&format!("devices/truck-2/replies/{third_id}"), br#"{}"#)
        .await;
    server
        .wait_for_metrics(|m| {
            m.contains(r#"fieldline_command_replies_refused_total{reason="unknown_command"} 2"#)
                && m.contains(
                    r#"fieldline_command_replies_refused_total{reason="invalid_reply"} 1"#,
                )
        })
        .await;
    let rejected = server
        .wait_for("/api/rejected", |r| {
            r.as_array()
                .is_some_and(|a| a.iter().any(|x| x["reason"] == "invalid_reply"))
        })
        .await;
    assert!(rejected.to_string().contains("replies"));
    // The reply stays what it was.
    let after = server.get_ok(&format!("/api/commands/{third_id}")).await;
    assert_eq!(after["reply"], json!({"pong": true}));

    // The ledger lists newest first, by state too.
    let list = server.get_ok("/api/devices/truck-1/commands").await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, [second_id.as_str(), id.as_str()]);
    let failed_only = server
        .get_ok("/api/devices/truck-1/commands?state=failed")
        .await;
    assert_eq!(failed_only.as_array().map(Vec::len), Some(1));
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("fieldline_command_delivery_seconds"));
    // Commands by state, refreshed every 10 s from the ledger.
    server
        .wait_for_metrics(|m| m.contains(r#"fieldline_commands{state="failed"} 1"#))
        .await;
}

async fn a_queued_command_waits_for_its_device_and_an_expired_one_never_goes(backend: Backend) {
    let dir = TempDir::new("cmd-queued");
    let url = database(backend, &dir, "cmd_queued").await;
    let server = Server::start(&dir, &url).await;
    // The device is known from what it published; it is offline now.
    mosquitto_pub(
        server.mqtt_port,
        "devices/van-1/telemetry",
        br#"{"seq": 1, "metrics": {"fuel": 0.5}}"#,
        &["-i", "van-1"],
    );
    server
        .wait_for("/api/devices/van-1", |d| d["id"] == "van-1")
        .await;
    let short = send(&server, "van-1", json!({"name": "soon", "ttl_s": 1})).await;
    let first = send(
        &server,
        "van-1",
        json!({"name": "first", "payload": [1, 2]}),
    )
    .await;
    let second = send(
        &server,
        "van-1",
        json!({"name": "second", "payload_b64": "AAEC"}),
    )
    .await;
    let short_id = short["id"].as_str().expect("id");
    wait_state(&server, short_id, "expired").await;
    assert_eq!(event_states(&server, short_id).await, ["queued", "expired"]);
    let first_id = first["id"].as_str().expect("id");
    let second_id = second["id"].as_str().expect("id");
    let queued = server.get_ok(&format!("/api/commands/{first_id}")).await;
    assert_eq!(queued["state"], "queued");

    // mosquitto_sub, a third-party client, as the device: the queued ones arrive oldest
    // first, the expired one never.
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.mqtt_port.to_string(),
            "-i",
            "van-1",
            "-q",
            "1",
            "-t",
            "devices/van-1/commands/#",
            "-C",
            "2",
            "-W",
            "20",
            "-v",
        ])
        .output()
        .expect("mosquitto_sub runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("devices/van-1/commands/first "),
        "{text}"
    );
    assert!(
        lines[1].starts_with("devices/van-1/commands/second "),
        "{text}"
    );
    let body: Value =
        serde_json::from_str(lines[1].split_once(' ').expect("payload").1).expect("JSON");
    assert_eq!(body["payload_b64"], "AAEC");
    wait_state(&server, first_id, "delivered").await;
    wait_state(&server, second_id, "delivered").await;
    assert_eq!(
        server.get_ok(&format!("/api/commands/{short_id}")).await["state"],
        "expired"
    );

    // Cancelling: a queued command is cancelled; a delivered one cannot be.
    let later = send(&server, "van-1", json!({"name": "later"})).await;
    let later_id = later["id"].as_str().expect("id");
    let (status, body) = server
        .request(
            Method::DELETE,
            &format!("/api/commands/{later_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    let (status, body) = server
        .request(
            Method::DELETE,
            &format!("/api/commands/{first_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = server
        .request(Method::DELETE, "/api/commands/nosuch", None, None)
        .await;
    assert_eq!(status, 404);

    // A retried POST with the same Idempotency-Key makes one command.
    let key_request = || {
        server
            .http
            .post(server.url("/api/devices/van-1/commands"))
            .header("Idempotency-Key", "retry-1")
            .json(&json!({"name": "once"}))
            .send()
    };
    let a = key_request().await.expect("POST");
    assert_eq!(a.status().as_u16(), 201);
    let a: Value = a.json().await.expect("JSON");
    let b = key_request().await.expect("POST");
    assert_eq!(b.status().as_u16(), 200);
    let b: Value = b.json().await.expect("JSON");
    assert_eq!(a["id"], b["id"]);
    let once = server.get_ok("/api/devices/van-1/commands").await;
    let named_once = once
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["name"] == "once")
        .count();
    assert_eq!(named_once, 1);
}

async fn what_the_device_did_not_acknowledge_it_gets_again_also_after_kill_9(backend: Backend) {
    let dir = TempDir::new("cmd-again");
    let url = database(backend, &dir, "cmd_again").await;
    let mut server = Server::start(&dir, &url).await;

    // Received but never acknowledged: `sent`, and sent again at the next connection.
    let device = Commanded::connect(server.mqtt_port, "bus-1", 4, true, None).await;
    let mut device = device;
    let first = send(&server, "bus-1", json!({"name": "unlock"})).await;
    let first_id = first["id"].as_str().expect("id").to_string();
    assert_eq!(device.next().await.body["id"], first_id.as_str());
    wait_state(&server, &first_id, "sent").await;
    device.drop_connection();
    let mut device = Commanded::connect(server.mqtt_port, "bus-1", 4, true, None).await;
    assert_eq!(device.next().await.body["id"], first_id.as_str());
    device.ack_next().await;
    let delivered = wait_state(&server, &first_id, "delivered").await;
    assert_eq!(delivered["attempts"], 2);
    drop(device);

    // kill -9 with one command sent and not acknowledged, and two queued: none is lost.
    let mut device = Commanded::connect(server.mqtt_port, "bus-1", 4, true, None).await;
    let sent = send(&server, "bus-1", json!({"name": "a"})).await;
    let sent_id = sent["id"].as_str().expect("id").to_string();
    assert_eq!(device.next().await.body["id"], sent_id.as_str());
    wait_state(&server, &sent_id, "sent").await;
    device.drop_connection();
    let queued_b = send(&server, "bus-1", json!({"name": "b"})).await;
    let queued_c = send(&server, "bus-1", json!({"name": "c"})).await;
    server.kill().await;
    server = Server::start(&dir, &url).await;
    let mut device = Commanded::connect(server.mqtt_port, "bus-1", 4, false, None).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            device.next().await.body["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let want = [
        sent_id.clone(),
        queued_b["id"].as_str().unwrap_or_default().to_string(),
        queued_c["id"].as_str().unwrap_or_default().to_string(),
    ];
    assert_eq!(got, want, "oldest first, none lost");
    for id in &want {
        wait_state(&server, id, "delivered").await;
    }
    assert!(device.nothing_within(Duration::from_millis(500)).await);
}

async fn bad_commands_are_refused_with_the_reason_and_roles_apply(backend: Backend) {
    let dir = TempDir::new("cmd-bad");
    let url = database(backend, &dir, "cmd_bad").await;
    let d1_secret = register_device(&url, "d1");
    let d2_secret = register_device(&url, "d2");
    let admin = create_token(&url, "admin", "admin");
    let operator = create_token(&url, "dispatch", "operator");
    let viewer = create_token(&url, "wall", "viewer");
    let mut server = Server::start_with(&dir, &url, &["--max-payload-bytes", "4096"]).await;
    server.token = Some(admin.clone());

    let post = |token: &str, device: &str, body: Value| {
        let token = token.to_string();
        let path = format!("/api/devices/{device}/commands");
        let server = &server;
        async move {
            server
                .request(Method::POST, &path, Some(&token), Some(body))
                .await
        }
    };
    let big = "x".repeat(5000);
    let cases = [
        ("nosuch", json!({"name": "ping"}), "unknown device"),
        ("d1", json!({"name": "bad name"}), "name"),
        ("d1", json!({"name": ""}), "name"),
        (
            "d1",
            json!({"name": "p", "payload": big}),
            "--max-payload-bytes",
        ),
        ("d1", json!({"name": "p", "ttl_s": 0}), "ttl_s"),
        ("d1", json!({"name": "p", "ttl_s": 31 * 24 * 3600}), "ttl_s"),
        ("d1", json!({"name": "p", "qos": 2}), "qos"),
        (
            "d1",
            json!({"name": "p", "payload": 1, "payload_b64": "AA=="}),
            "not both",
        ),
        ("d1", json!({"name": "p", "payload_b64": "%%%"}), "base64"),
        ("d1", json!(["not", "an", "object"]), "object"),
        ("d1", json!({"name": "p", "colour": "red"}), "colour"),
    ];
    for (device, body, reason) in cases {
        let (status, reply) = post(&operator, device, body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{body}: {reply} should say {reason}"
        );
    }
    let stored = server.get_ok("/api/devices/d1/commands").await;
    assert_eq!(stored, json!([]), "nothing stored for refused commands");

    // Roles: a viewer may read but not send; an operator may send but not configure.
    let (status, _) = post(&viewer, "d1", json!({"name": "ping"})).await;
    assert_eq!(status, 403);
    let (status, _) = server
        .request(Method::GET, "/api/devices/d1/commands", Some(&viewer), None)
        .await;
    assert_eq!(status, 200);
    let (status, sent) = post(&operator, "d1", json!({"name": "ping"})).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["created_by"], "dispatch");
    let (status, _) = server
        .request(
            Method::POST,
            "/api/rules",
            Some(&operator),
            Some(json!({"name": "r", "devices": ["*"], "metric": "t", "above": 1})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .request(Method::GET, "/api/admin/devices", Some(&operator), None)
        .await;
    assert_eq!(status, 403);

    // A device whose MQTT 5 connection accepts small packets only: a larger command is
    // refused at the API.
    let _small =
        support::commanded::Commanded::connect_as(server.mqtt_port, "d2", &d2_secret, Some(300))
            .await;
    let (status, reply) = post(
        &operator,
        "d2",
        json!({"name": "p", "payload": "y".repeat(400)}),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"]
        .as_str()
        .unwrap_or_default()
        .contains("Maximum Packet Size"));
    let (status, reply) = post(&operator, "d2", json!({"name": "p", "payload": "y"})).await;
    assert_eq!(status, 201, "{reply}");

    // A registered device that publishes to another device's replies topic is cut off.
    let d1 = support::Device::try_connect(server.mqtt_port, "d1", Some(("d1", &d1_secret)))
        .await
        .expect("d1 connects");
    d1.publish("devices/d2/replies/anything", br#"{"ok": true}"#.to_vec())
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while d1.is_connected() {
        assert!(Instant::now() < deadline, "d1 was not cut off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop();
}

/// `fieldline command send --wait` prints the final state and the reply; `list` shows the
/// ledger; a viewer token is refused with the API's reason. Through the API, so one back end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_sends_waits_for_the_reply_and_lists() {
    let dir = TempDir::new("cmd-cli");
    let url = database(Backend::Sqlite, &dir, "cmd_cli").await;
    let operator = create_token(&url, "cli", "operator");
    let viewer = create_token(&url, "wall", "viewer");
    let server = Server::start(&dir, &url).await;
    let mut device = Commanded::connect(server.mqtt_port, "tractor-1", 4, false, None).await;
    let api = server.url("");
    let run = |args: Vec<String>, token: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(support::binary())
                .env("FIELDLINE_API_TOKEN", token)
                .env("RUST_LOG", "warn")
                .args(args)
                .output()
                .expect("fieldline runs")
        })
    };
    let args = |extra: &[&str]| -> Vec<String> {
        ["command"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .chain(["--api-url".to_string(), api.clone()])
            .collect()
    };
    let sending = run(
        args(&[
            "send",
            "tractor-1",
            "set_interval",
            "--payload",
            r#"{"seconds": 2}"#,
            "--ttl",
            "10m",
            "--wait",
        ]),
        operator.clone(),
    );
    let got = device.next().await;
    assert_eq!(got.body["payload"]["seconds"], 2);
    let id = got.body["id"].as_str().expect("id").to_string();
    device
        .publish(
            &format!("devices/tractor-1/replies/{id}"),
            br#"{"ok": true, "seconds": 2}"#,
        )
        .await;
    let out = sending.await.expect("joined");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("replied"));
    let reply: Value = serde_json::from_str(lines.next().expect("reply line")).expect("JSON");
    assert_eq!(reply, json!({"ok": true, "seconds": 2}));

    let out = run(args(&["list", "tractor-1"]), operator.clone())
        .await
        .expect("joined");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains(&id) && stdout.contains("replied"),
        "{stdout}"
    );

    let out = run(args(&["send", "tractor-1", "ping"]), viewer)
        .await
        .expect("joined");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("role"),
        "{stderr}"
    );
    let out = run(
        args(&["send", "tractor-1", "ping", "--ttl", "soon"]),
        operator,
    )
    .await
    .expect("joined");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}
