//! Email notification channels end to end, against a real SMTP server (aiosmtpd) on
//! loopback: each alarm change at or above the channel's severity reaches every recipient
//! once, in order, with a subject and body a person can act on, through a receiver that
//! refuses at first; quiet hours in a time zone hold messages until they end, and a burst
//! bigger than `digest_over` arrives as one digest; a change raised while the receiver is
//! down reaches it after a `kill -9` and a restart of Fieldline. Bad channels get 400.

#[macro_use]
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::geo::{base_ms, rfc3339};
use support::smtp::SmtpReceiver;
use support::{create_token, database, free_port, Backend, Device, Server, TempDir};

on_both_backends!(
    alarm_changes_are_emailed_once_each_in_order,
    a_change_made_while_the_receiver_is_down_is_emailed_after_a_kill_9,
);

async fn post(server: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    server
        .request(reqwest::Method::POST, path, token, Some(body))
        .await
}

fn reading(base: i64, s: i64, value: f64) -> String {
    json!({"ts": base + s * 1000, "metrics": {"temp_c": value}}).to_string()
}

fn subjects(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or(""))
        .collect()
}

/// Waits until the channel has sent everything it will send; returns its view.
async fn drained(server: &Server, channel: i64) -> Value {
    server
        .wait_for(&format!("/api/channels/{channel}"), |c| c["backlog"] == 0)
        .await
}

async fn alarm_changes_are_emailed_once_each_in_order(backend: Backend) {
    let dir = TempDir::new("channels");
    let db = database(backend, &dir, "channels").await;
    let admin = create_token(&db, "admin-1", "admin");
    let operator = create_token(&db, "ops-1", "operator");
    // It refuses the first two messages (451): the first change is retried, and sent once.
    let smtp = SmtpReceiver::start(&dir, free_port(), 2);
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let mut server = Server::start_with(
        &dir,
        &db,
        &[
            "--smtp-url",
            &smtp_url,
            "--smtp-from",
            "Fieldline <alarms@fieldline.test>",
        ],
    )
    .await;
    server.token = Some(admin.clone());

    for (body, reason) in [
        (
            json!({"kind": "email", "to": ["ops@example.com"], "smtp_url": "http://127.0.0.1:25"}),
            "smtp:// or smtps://",
        ),
        (
            json!({"kind": "email", "to": ["ops@example.com"],
                   "quiet": {"from": "22:00", "to": "06:00", "tz": "Europe/Atlantis"}}),
            "not a known time zone",
        ),
        (json!({"kind": "email", "to": []}), "no recipient"),
        (json!({"kind": "email"}), "no recipient"),
        (
            json!({"kind": "email", "to": ["nobody"]}),
            "not an email address",
        ),
        (json!({"kind": "pager", "to": ["ops@example.com"]}), "kind"),
        (
            json!({"kind": "email", "to": ["ops@example.com"], "severity": "urgent"}),
            "severity",
        ),
        (
            json!({"kind": "email", "to": ["ops@example.com"], "digest_over": 0}),
            "digest_over",
        ),
    ] {
        let (status, reply) = post(&server, "/api/channels", Some(&admin), body.clone()).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{body}: {error:?} should say {reason}"
        );
    }
    let channel_body = json!({"kind": "email", "to": ["ops@example.com", "Ana Ops <ana@example.com>"],
        "severity": "major"});
    let (status, _) = post(
        &server,
        "/api/channels",
        Some(&operator),
        channel_body.clone(),
    )
    .await;
    assert_eq!(status, 403, "adding a channel is an administrator's call");
    let (status, _) = server.get("/api/channels/9999").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/channels/x").await;
    assert_eq!(status, 400);

    let (status, channel) = post(&server, "/api/channels", Some(&admin), channel_body).await;
    assert_eq!(status, 201, "{channel}");
    let id = channel["id"].as_i64().expect("channel id");
    assert_eq!(
        channel["to"],
        json!(["ops@example.com", "Ana Ops <ana@example.com>"])
    );
    assert_eq!(channel["severity"], "major");
    assert_eq!(channel["digest_over"], 10);
    assert_eq!(channel["backlog"], 0);
    assert_eq!(channel.get("smtp_url"), None, "it uses the server's");
    assert_eq!(server.get_ok("/api/channels").await[0]["id"], id);

    for rule in [
        json!({"name": "Cold chain", "devices": ["fridge-*"], "metric": "temp_c", "above": 8.0,
               "clear_below": 7.5, "severity": "critical"}),
        json!({"name": "Warm room", "devices": ["room-*"], "metric": "temp_c", "above": 30.0,
               "severity": "minor"}),
    ] {
        let (status, reply) = post(&server, "/api/rules", Some(&admin), rule).await;
        assert_eq!(status, 201, "{reply}");
    }
    let base = base_ms();
    let mut room = Device::connect(server.mqtt_port, "room-1").await;
    room.publish("devices/room-1/telemetry", reading(base, 0, 31.0))
        .await;
    room.wait_acked(1).await;
    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    fridge
        .publish("devices/fridge-1/telemetry", reading(base, 0, 9.0))
        .await;
    fridge.wait_acked(1).await;
    let alarms = server
        .wait_for("/api/alarms?devices=fridge-1", |a| {
            a.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let alarm = alarms[0]["id"].as_i64().expect("alarm id");
    server
        .wait_for("/api/alarms?devices=room-1", |a| {
            a.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let act = |action: &str| format!("/api/alarms/{alarm}/{action}");
    let (status, _) = post(&server, &act("acknowledge"), Some(&operator), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &server,
        &act("notes"),
        Some(&operator),
        json!({"text": "door was open"}),
    )
    .await;
    assert_eq!(status, 200);
    fridge
        .publish("devices/fridge-1/telemetry", reading(base, 10, 7.0))
        .await;
    fridge.wait_acked(2).await;

    let messages = smtp.wait_for(4, Duration::from_secs(60)).await;
    let view = drained(&server, id).await;
    let messages_now = smtp.messages();
    assert_eq!(
        subjects(&messages_now),
        [
            "[Fieldline] CRITICAL Cold chain on fridge-1: raised",
            "[Fieldline] CRITICAL Cold chain on fridge-1: acknowledged by ops-1",
            "[Fieldline] CRITICAL Cold chain on fridge-1: given a note by ops-1",
            "[Fieldline] CRITICAL Cold chain on fridge-1: cleared",
        ],
        "each change once, in order, and nothing of the minor alarm"
    );
    assert_eq!(messages, messages_now);
    for message in &messages {
        assert_eq!(message["mail_from"], "alarms@fieldline.test");
        assert_eq!(
            message["rcpt_tos"],
            json!(["ops@example.com", "ana@example.com"])
        );
        let message_id = message["message_id"].as_str().unwrap_or_default();
        assert!(
            message_id.starts_with("<event-")
                && message_id.contains(&format!(".channel-{id}."))
                && message_id.ends_with("@fieldline.test>"),
            "{message_id}"
        );
    }
    let raised = messages[0]["body"].as_str().unwrap_or_default();
    for line in [
        format!("Alarm {alarm}, Cold chain on fridge-1, was raised."),
        "Severity: critical".to_owned(),
        "State:    active".to_owned(),
        "Reading:  temp_c = 9.0".to_owned(),
        format!(
            "Time:     {} UTC",
            rfc3339(base)
                .replace('T', " ")
                .trim_end_matches('Z')
                .trim_end_matches(".000")
        ),
    ] {
        assert!(raised.contains(&line), "{line:?} missing from:\n{raised}");
    }
    assert!(messages[3]["body"]
        .as_str()
        .is_some_and(|b| b.contains("State:    cleared")));
    // The refusals are on record, as a webhook's errors are.
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("451")),
        "{view}"
    );
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "fieldline_channel_failures_total{{channel=\"{id}\"}} 2"
        )),
        "{metrics}"
    );
    let (status, _) = server
        .request(
            reqwest::Method::DELETE,
            &format!("/api/channels/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(server.get_ok("/api/channels").await, json!([]));
}

async fn a_change_made_while_the_receiver_is_down_is_emailed_after_a_kill_9(backend: Backend) {
    let dir = TempDir::new("channels-down");
    let db = database(backend, &dir, "channels_down").await;
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let args = ["--smtp-url", smtp_url.as_str()];
    let mut server = Server::start_with(&dir, &db, &args).await;
    let (status, channel) = post(
        &server,
        "/api/channels",
        None,
        json!({"kind": "email", "to": ["night@example.com"]}),
    )
    .await;
    assert_eq!(status, 201, "{channel}");
    let id = channel["id"].as_i64().expect("channel id");
    let (status, _) = post(
        &server,
        "/api/rules",
        None,
        json!({"name": "Cold chain", "metric": "temp_c", "above": 8.0}),
    )
    .await;
    assert_eq!(status, 201);
    let base = base_ms();
    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    fridge
        .publish("devices/fridge-1/telemetry", reading(base, 0, 9.0))
        .await;
    fridge.wait_acked(1).await;
    // The receiver is down: the send fails and is on record, then the process dies.
    let path = format!("/api/channels/{id}");
    let failed = server
        .wait_for(&path, |c| c["last_error"].is_string() && c["backlog"] == 1)
        .await;
    server.kill().await;
    drop(fridge);

    // Back up while the receiver is still down: the change waits, then goes once it is up.
    let server = Server::start_with(&dir, &db, &args).await;
    let failed_again = server
        .wait_for(&path, |c| c["last_error_at"] != failed["last_error_at"])
        .await;
    assert_eq!(failed_again["backlog"], 1, "{failed_again}");
    let smtp = SmtpReceiver::start(&dir, port, 0);
    let messages = smtp.wait_for(1, Duration::from_secs(60)).await;
    drained(&server, id).await;
    assert_eq!(
        subjects(&smtp.messages()),
        ["[Fieldline] MAJOR Cold chain on fridge-1: raised"],
        "{messages:#?}"
    );
    assert_eq!(messages[0]["rcpt_tos"], json!(["night@example.com"]));
    let alarms = server.get_ok("/api/alarms").await;
    assert_eq!(alarms.as_array().map(Vec::len), Some(1), "{alarms}");
}

/// Quiet hours that end within a minute or two, in Asia/Kolkata (UTC+5:30, no DST): what is
/// raised meanwhile waits for their end, and five changes with `digest_over` 3 arrive as one
/// digest. PostgreSQL only: it waits for the clock, and the channel is the same on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_changes_until_they_end_and_a_burst_is_one_digest() {
    let dir = TempDir::new("channels-quiet");
    let db = database(Backend::Postgres, &dir, "channels_quiet").await;
    let smtp = SmtpReceiver::start(&dir, free_port(), 0);
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let server = Server::start_with(&dir, &db, &["--smtp-url", &smtp_url]).await;

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let minute = now_ms / 60_000;
    let local = (minute + 330).rem_euclid(1440);
    // At least 90 s of quiet left once the channel is in place: raising five alarms on a busy
    // machine must fit in it.
    let ahead = if (now_ms / 1000) % 60 < 30 { 2 } else { 3 };
    let hhmm = |m: i64| {
        format!(
            "{:02}:{:02}",
            m.rem_euclid(1440) / 60,
            m.rem_euclid(1440) % 60
        )
    };
    let end_ms = (minute + ahead) * 60_000;
    let (status, channel) = post(
        &server,
        "/api/channels",
        None,
        json!({"kind": "email", "to": ["night@example.com"], "digest_over": 3,
               "quiet": {"from": hhmm(local - 30), "to": hhmm(local + ahead), "tz": "Asia/Kolkata"}}),
    )
    .await;
    assert_eq!(status, 201, "{channel}");
    let id = channel["id"].as_i64().expect("channel id");
    assert_eq!(channel["quiet_until"], rfc3339(end_ms), "{channel}");
    let (status, _) = post(
        &server,
        "/api/rules",
        None,
        json!({"name": "Cold chain", "metric": "temp_c", "above": 8.0, "clear_below": 7.5}),
    )
    .await;
    assert_eq!(status, 201);

    let base = base_ms();
    let mut fridges = Vec::new();
    for n in 1..=5 {
        let name = format!("fridge-{n}");
        let mut fridge = Device::connect(server.mqtt_port, &name).await;
        fridge
            .publish(&format!("devices/{name}/telemetry"), reading(base, n, 9.0))
            .await;
        fridge.wait_acked(1).await;
        fridges.push(fridge);
    }
    server
        .wait_for(&format!("/api/channels/{id}"), |c| c["backlog"] == 5)
        .await;
    let before_the_end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    assert!(
        before_the_end < end_ms,
        "the raises took longer than the quiet hours: the test proves nothing"
    );
    assert!(smtp.messages().is_empty(), "held during quiet hours");

    let messages = smtp.wait_for(1, Duration::from_secs(240)).await;
    assert!(
        messages[0]["received_ms"].as_i64().unwrap_or(0) >= end_ms,
        "sent after the quiet hours: {messages:#?}"
    );
    assert_eq!(subjects(&messages), ["[Fieldline] 5 alarm changes"]);
    let body = messages[0]["body"].as_str().unwrap_or_default();
    let lines: Vec<&str> = body.lines().filter(|l| l.contains("[event ")).collect();
    assert_eq!(lines.len(), 5, "{body}");
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            l.rsplit("[event ")
                .next()
                .and_then(|s| s.trim_end_matches(']').parse().ok())
                .expect("an event seq")
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {body}");
    for n in 1..=5 {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains(&format!("Cold chain on fridge-{n}: raised")))
                .count(),
            1,
            "{body}"
        );
    }
    assert!(body.contains("IST"), "times in the channel's zone: {body}");

    // One more change within the minute fits its allowance: a message of its own.
    fridges[0]
        .publish("devices/fridge-1/telemetry", reading(base, 60, 7.0))
        .await;
    fridges[0].wait_acked(2).await;
    let messages = smtp.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(
        subjects(&messages)[1],
        "[Fieldline] MAJOR Cold chain on fridge-1: cleared"
    );
    drained(&server, id).await;
    assert_eq!(smtp.messages().len(), 2);
}
