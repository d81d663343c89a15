//! Alarms end to end, on both back ends, under API authentication: a threshold rule's raise
//! opens an alarm with the rule's severity; an operator acknowledges, assigns and annotates it
//! (each recorded with the token's name), a viewer may only read; a raise while it is open
//! updates it instead of opening another; the rule's clear clears it; a cleared alarm refuses
//! more work; a person can clear one by hand; every change is an `alarm` event, live and
//! stored, in order; bad input gets 400 with the reason. And a `kill -9` right after the
//! raising reading was acknowledged loses neither the alert nor its alarm, nor doubles them.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::geo::{base_ms, rfc3339};
use support::live::Sse;
use support::{create_token, database, Backend, Device, Server, TempDir};

on_both_backends!(
    an_alarm_is_opened_worked_updated_and_cleared,
    an_alarm_raised_just_before_a_kill_9_is_there_once_after,
);

/// A POST with `token`; the status and reply.
async fn post(server: &Server, path: &str, token: &str, body: Value) -> (u16, Value) {
    server
        .request(reqwest::Method::POST, path, Some(token), Some(body))
        .await
}

/// The `change` of each stored alarm event, oldest first.
async fn changes(server: &Server) -> Vec<String> {
    server
        .get_ok("/api/events?kinds=alarm")
        .await
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["change"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn an_alarm_is_opened_worked_updated_and_cleared(backend: Backend) {
    let dir = TempDir::new("alarms");
    let db = database(backend, &dir, "alarms").await;
    let admin = create_token(&db, "admin-1", "admin");
    let operator = create_token(&db, "ops-1", "operator");
    let viewer = create_token(&db, "view-1", "viewer");
    let mut server = Server::start(&dir, &db).await;
    server.token = Some(admin.clone());

    let rule_body = json!({"name": "Cold chain", "devices": ["fridge-*"], "metric": "temp_c",
        "above": 8.0, "clear_below": 7.5, "severity": "critical"});
    let (status, rule) = post(&server, "/api/rules", &admin, rule_body.clone()).await;
    assert_eq!(status, 201, "{rule}");
    let rule_id = rule["id"].as_i64().expect("rule id");
    let (status, reply) = post(
        &server,
        "/api/rules",
        &admin,
        json!({"name": "x", "metric": "t", "above": 1, "severity": "urgent"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("severity")),
        "{reply}"
    );

    let mut live = Sse::open_at(
        &server,
        &format!("/api/stream?kinds=alarm&access_token={viewer}"),
        None,
    )
    .await;
    let ready = live.frame().await;
    assert_eq!(ready.comment.as_deref(), Some("ready"));

    let base = base_ms();
    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    let mut sent = 0;
    let mut reading = |s: i64, v: f64| {
        sent += 1;
        (
            json!({"ts": base + s * 1000, "metrics": {"temp_c": v}}).to_string(),
            sent,
        )
    };
    let (doc, n) = reading(0, 9.0);
    fridge.publish("devices/fridge-1/telemetry", doc).await;
    fridge.wait_acked(n).await;
    let alarms = server
        .wait_for("/api/alarms", |a| {
            a.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let alarm = &alarms[0];
    let id = alarm["id"].as_i64().expect("alarm id");
    assert_eq!(alarm["rule"], rule_id);
    assert_eq!(alarm["device"], "fridge-1");
    assert_eq!(alarm["name"], "Cold chain");
    assert_eq!(alarm["severity"], "critical");
    assert_eq!(alarm["state"], "active");
    assert_eq!(alarm["count"], 1);
    assert_eq!(alarm["value"], 9.0);
    assert_eq!(alarm["raised"], rfc3339(base));
    assert_eq!(alarm["acknowledged"], Value::Null);
    assert_eq!(alarm["notes"], json!([]));
    let opened = live.event().await;
    assert_eq!(opened.event.as_deref(), Some("alarm"));
    assert_eq!(opened.json()["change"], "raised");
    assert_eq!(opened.json()["alarm"], id);

    // A viewer reads but may not work it.
    let path = |action: &str| format!("/api/alarms/{id}/{action}");
    let (status, _) = post(&server, &path("acknowledge"), &viewer, json!({})).await;
    assert_eq!(status, 403);
    let (status, one) = server
        .request(
            reqwest::Method::GET,
            &format!("/api/alarms/{id}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, 200, "{one}");

    // The operator acknowledges (twice: no second change), assigns and notes.
    let (status, acked) = post(&server, &path("acknowledge"), &operator, json!({})).await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "ops-1");
    assert!(acked["acknowledged"]["ts"].is_string());
    let (status, again) = post(&server, &path("acknowledge"), &operator, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(again["acknowledged"], acked["acknowledged"]);
    let (status, assigned) =
        post(&server, &path("assign"), &operator, json!({"to": "alice"})).await;
    assert_eq!(status, 200, "{assigned}");
    assert_eq!(assigned["assignee"], "alice");
    let (status, noted) = post(
        &server,
        &path("notes"),
        &admin,
        json!({"text": "driver called, door open"}),
    )
    .await;
    assert_eq!(status, 200, "{noted}");
    assert_eq!(noted["notes"][0]["by"], "admin-1");
    assert_eq!(noted["notes"][0]["text"], "driver called, door open");
    assert!(noted["notes"][0]["ts"].is_string());

    // Bad input.
    for (action, body, why) in [
        ("assign", json!({"to": ""}), "to must be"),
        ("assign", json!({}), "to"),
        ("notes", json!({"text": "x".repeat(2001)}), "text must be"),
        ("notes", json!({"text": "a\u{7}b"}), "control"),
    ] {
        let (status, reply) = post(&server, &path(action), &operator, body).await;
        assert_eq!(status, 400, "{action}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| e.contains(why)),
            "{reply}"
        );
    }
    let (status, _) = post(
        &server,
        "/api/alarms/999999/acknowledge",
        &operator,
        json!({}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(&server, "/api/alarms/abc/acknowledge", &operator, json!({})).await;
    assert_eq!(status, 400);
    let (status, reply) = server.get("/api/alarms?state=open").await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = server.get("/api/alarms?severity=urgent").await;
    assert_eq!(status, 400, "{reply}");

    // A raise while it is open updates it: the rule's state is forgotten when the rule stops
    // applying to the device, and raises again once it applies again.
    let mut elsewhere = rule_body.clone();
    elsewhere["devices"] = json!(["freezer-*"]);
    for body in [elsewhere, rule_body] {
        let (status, reply) = server
            .request(
                reqwest::Method::PUT,
                &format!("/api/rules/{rule_id}"),
                Some(&admin),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        // A reading after each change, so the judges take it up before the next.
        let (doc, n) = reading(10, 7.0);
        fridge.publish("devices/fridge-1/telemetry", doc).await;
        fridge.wait_acked(n).await;
    }
    let (doc, n) = reading(20, 9.5);
    fridge.publish("devices/fridge-1/telemetry", doc).await;
    fridge.wait_acked(n).await;
    let updated = server
        .wait_for(&format!("/api/alarms/{id}"), |a| a["count"] == 2)
        .await;
    assert_eq!(updated["value"], 9.5);
    assert_eq!(
        updated["state"], "acknowledged",
        "a repeat keeps the work done"
    );
    assert_eq!(
        server.get_ok("/api/alarms").await.as_array().map(Vec::len),
        Some(1),
        "no second alarm"
    );

    // The rule clears it; then nothing more can be done but notes.
    let (doc, n) = reading(30, 7.0);
    fridge.publish("devices/fridge-1/telemetry", doc).await;
    fridge.wait_acked(n).await;
    let cleared = server
        .wait_for(&format!("/api/alarms/{id}"), |a| a["state"] == "cleared")
        .await;
    assert_eq!(cleared["cleared"]["by"], Value::Null, "the rule cleared it");
    assert_eq!(cleared["cleared"]["ts"], rfc3339(base + 30_000));
    let (status, reply) = post(&server, &path("acknowledge"), &operator, json!({})).await;
    assert_eq!(status, 409, "{reply}");
    let (status, _) = post(&server, &path("assign"), &operator, json!({"to": "bob"})).await;
    assert_eq!(status, 409);

    // A new raise opens a new alarm, which a person clears by hand.
    let (doc, n) = reading(40, 9.0);
    fridge.publish("devices/fridge-1/telemetry", doc).await;
    fridge.wait_acked(n).await;
    let active = server
        .wait_for("/api/alarms?state=active", |a| {
            a.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let second = active[0]["id"].as_i64().expect("id");
    assert_ne!(second, id);
    let (status, by_hand) = post(
        &server,
        &format!("/api/alarms/{second}/clear"),
        &operator,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{by_hand}");
    assert_eq!(by_hand["cleared"]["by"], "ops-1");
    let filtered = server
        .get_ok("/api/alarms?state=cleared&devices=fridge-1&severity=critical")
        .await;
    assert_eq!(filtered.as_array().map(Vec::len), Some(2), "{filtered}");
    assert_eq!(
        server.get_ok("/api/alarms?devices=fridge-2").await,
        json!([])
    );

    // Every change is a stored event, in order, and went live.
    let expected = [
        "raised",
        "acknowledged",
        "assigned",
        "noted",
        "repeated",
        "cleared",
        "raised",
        "cleared",
    ];
    let stored = server
        .wait_for("/api/events?kinds=alarm", |e| {
            e.as_array().is_some_and(|a| a.len() >= expected.len())
        })
        .await;
    assert_eq!(changes(&server).await, expected, "{stored}");
    assert_eq!(stored[1]["by"], "ops-1");
    assert_eq!(stored[7]["by"], "ops-1");
    assert_eq!(stored[5].get("by"), None, "the rule's clear has no person");
    let mut live_changes = vec![opened.json()["change"].as_str().unwrap_or("?").to_owned()];
    for _ in 1..expected.len() {
        live_changes.push(
            live.event().await.json()["change"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        );
    }
    assert_eq!(live_changes, expected);

    // Webhooks take alarm events.
    let (status, hook) = post(
        &server,
        "/api/webhooks",
        &admin,
        json!({"url": "http://127.0.0.1:9/alarms", "kinds": ["alarm"], "secret": "s"}),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["kinds"], json!(["alarm"]));
}

/// The changes of the stored events of `kind`, oldest first: `state` for alerts, `change`
/// for alarms.
async fn stored(server: &Server, kind: &str, field: &str) -> Vec<String> {
    server
        .get_ok(&format!("/api/events?kinds={kind}"))
        .await
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e[field].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn an_alarm_raised_just_before_a_kill_9_is_there_once_after(backend: Backend) {
    let dir = TempDir::new("alarms-kill");
    let db = database(backend, &dir, "alarms_kill").await;
    let mut server = Server::start(&dir, &db).await;
    let (status, rule) = server
        .request(
            reqwest::Method::POST,
            "/api/rules",
            None,
            Some(json!({"name": "Cold chain", "metric": "temp_c", "above": 8.0})),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let base = base_ms();
    let reading =
        |s: i64, v: f64| json!({"ts": base + s * 1000, "metrics": {"temp_c": v}}).to_string();
    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    fridge
        .publish("devices/fridge-1/telemetry", reading(0, 9.0))
        .await;
    fridge.wait_acked(1).await;
    // Killed as soon as the PUBACK came: the batch with the alert and its alarm may or may
    // not be stored yet; the write-ahead log has the reading either way.
    server.kill().await;
    drop(fridge);

    let server = Server::start(&dir, &db).await;
    let alarms = server
        .wait_for("/api/alarms", |a| {
            a.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert_eq!(alarms.as_array().map(Vec::len), Some(1), "{alarms}");
    assert_eq!(alarms[0]["count"], 1);
    assert_eq!(alarms[0]["severity"], "major", "the default severity");
    // Cleared once by the rule, after the restart.
    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    fridge
        .publish("devices/fridge-1/telemetry", reading(10, 9.5))
        .await;
    fridge
        .publish("devices/fridge-1/telemetry", reading(20, 7.0))
        .await;
    fridge.wait_acked(2).await;
    server
        .wait_for("/api/alarms?state=cleared", |a| {
            a.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    assert_eq!(
        stored(&server, "alert", "state").await,
        ["raised", "cleared"]
    );
    assert_eq!(
        stored(&server, "alarm", "change").await,
        ["raised", "cleared"]
    );
}
