//! Security end to end: device identity and per-device access rules over MQTT (plain TCP, TLS
//! and WebSocket), API tokens with roles and revocation, and hostile clients (idle sockets on
//! every listener, a flooding device). Real clients throughout: rumqttc, `mosquitto_pub`, a
//! raw MQTT client over tokio, rustls and tungstenite, reqwest.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::live::{Sse, Ws};
use support::raw_mqtt::{
    connect_packet, publish_packet, publish_qos0_packet, subscribe_packet, with_keep_alive,
    Endpoint, RawMqtt,
};
use support::{
    cli, create_token, database, free_port, mosquitto_pub, mosquitto_pub_status, register_device,
    Backend, Device, Server, TempDir,
};
use tokio_tungstenite::tungstenite::Message;

on_both_backends!(devices_speak_only_for_themselves, api_tokens_and_roles);

const CLOSE_WAIT: Duration = Duration::from_secs(10);

fn fix(seq: u64) -> Vec<u8> {
    format!(r#"{{"seq": {seq}, "lat": 52.5, "lon": 13.4}}"#).into_bytes()
}

/// The seqs of a device's stored fixes, once there are `n` of them.
async fn stored_seqs(server: &Server, device: &str, n: usize) -> Vec<u64> {
    let path = format!("/api/devices/{device}/track");
    let track = server
        .wait_for(&path, |b| b.as_array().is_some_and(|a| a.len() == n))
        .await;
    track
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["seq"].as_u64()).collect())
        .unwrap_or_default()
}

/// Waits until `check` holds, for registry changes made by another process (the server polls
/// the registry every 2 s).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects `device` and checks that the broker closes the connection after `packet`,
/// without acknowledging anything.
async fn refused_after(
    endpoint: &Endpoint,
    device: &str,
    secret: &str,
    client: &str,
    packet: Vec<u8>,
) {
    let mut conn = RawMqtt::connect(endpoint, client, Some((device, secret)))
        .await
        .expect("a valid device connects");
    conn.send(&packet).await.expect("packet sent");
    let seen = conn
        .closed_within(CLOSE_WAIT)
        .await
        .unwrap_or_else(|seen| panic!("connection left open after a refused packet; saw {seen:?}"));
    assert!(
        seen.iter().all(|(h, _)| *h != 0x40 && *h != 0x90),
        "nothing acknowledged: {seen:?}"
    );
}

/// The MQTT-level checks every listener must pass: own topics work; other devices' topics,
/// wildcards and foreign wills close the connection; bad credentials never connect.
async fn check_listener(endpoint: &Endpoint, secret: &str, seq: u64) {
    let mut d1 = RawMqtt::connect(endpoint, "d1-main", Some(("d1", secret)))
        .await
        .expect("d1 connects with its secret");
    d1.publish("devices/d1/location", &fix(seq))
        .await
        .expect("d1 may publish its own fix");
    assert_eq!(
        d1.subscribe("devices/d1/commands/#").await,
        Ok(1),
        "d1 may subscribe to its own commands"
    );
    for topic in [
        "devices/d2/location",
        "devices/d2/commands/reboot",
        "devices/d1x/telemetry",
        "devices/d1",
        "elsewhere/d1/location",
    ] {
        refused_after(
            endpoint,
            "d1",
            secret,
            "d1-pub",
            publish_packet(topic, &fix(900), 9),
        )
        .await;
    }
    for filter in [
        "#",
        "devices/+/location",
        "devices/d2/commands/#",
        "devices/d1/#",
        "$SYS/#",
    ] {
        refused_after(
            endpoint,
            "d1",
            secret,
            "d1-sub",
            subscribe_packet(filter, 3),
        )
        .await;
    }
    // A Last Will on another device's topic is refused at CONNECT: no CONNACK.
    let mut will = RawMqtt::open(endpoint).await.expect("socket");
    will.send(&connect_packet(
        "d1-will",
        Some(("d1", secret)),
        Some(("devices/d2/status", br#"{"online": false}"#)),
    ))
    .await
    .expect("CONNECT sent");
    let seen = will
        .closed_within(CLOSE_WAIT)
        .await
        .expect("a foreign will closes the connection");
    assert!(seen.is_empty(), "no CONNACK: {seen:?}");

    for (user, pass) in [("d1", "wrong"), ("d9", secret), ("", ""), ("d1", "")] {
        let login = (!user.is_empty()).then_some((user, pass));
        assert!(
            RawMqtt::connect(endpoint, "intruder", login).await.is_err(),
            "{user:?}/{pass:?} must not connect"
        );
    }
    // Keep-alive 0 (no keep-alive at all) is accepted on every listener, and the connection
    // stays through a silence that would end a short keep-alive.
    let mut quiet = RawMqtt::open(endpoint).await.expect("socket");
    quiet
        .send(&with_keep_alive(
            connect_packet("d1-quiet", Some(("d1", secret)), None),
            0,
        ))
        .await
        .expect("CONNECT sent");
    assert!(
        matches!(quiet.next(Duration::from_secs(10)).await, Ok(Some((0x20, ref body))) if body.get(1) == Some(&0)),
        "keep-alive 0 gets a successful CONNACK"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    quiet.send(&[0xC0, 0]).await.expect("PINGREQ sent");
    assert_eq!(
        quiet.next(Duration::from_secs(5)).await,
        Ok(Some((0xD0, Vec::new()))),
        "still connected: PINGRESP"
    );
    // d1's first connection never saw anything of the refused attempts.
    assert_eq!(d1.next(Duration::from_millis(300)).await, Ok(None));
}

async fn devices_speak_only_for_themselves(backend: Backend) {
    let dir = TempDir::new("acl");
    let db = database(backend, &dir, "acl").await;
    let s1 = register_device(&db, "d1");
    let s2 = register_device(&db, "d2");
    let s3 = register_device(&db, "d3");
    let server = Server::start(&dir, &db).await;
    let port = server.mqtt_port;
    let endpoint = Endpoint::Tcp(port);

    // d2 listens on its commands throughout: nothing d1 tries may reach it.
    let mut d2 = RawMqtt::connect(&endpoint, "d2", Some(("d2", &s2)))
        .await
        .expect("d2 connects");
    assert_eq!(d2.subscribe("devices/d2/commands/#").await, Ok(1));

    check_listener(&endpoint, &s1, 1).await;
    assert_eq!(
        d2.next(Duration::from_millis(300)).await,
        Ok(None),
        "nothing was forwarded to d2"
    );

    // A third-party client with credentials.
    mosquitto_pub(
        port,
        "devices/d3/telemetry",
        br#"{"seq": 1, "metrics": {"temp_c": 20.5}}"#,
        &["-u", "d3", "-P", &s3, "-i", "d3-pub"],
    );
    for bad in [vec!["-u", "d3", "-P", "nope"], vec!["-u", "d3"], vec![]] {
        let mut args = bad.clone();
        args.extend(["-i", "d3-bad"]);
        let status = mosquitto_pub_status(
            port,
            "devices/d3/telemetry",
            br#"{"seq": 2, "metrics": {"x": 1}}"#,
            &args,
        );
        assert!(!status.success(), "mosquitto_pub {bad:?} must fail");
    }

    // Disabled (by the CLI, another process): the open connection is cut off at its next
    // packet, and the device cannot connect again until enabled.
    let d3 = Device::try_connect(port, "d3", Some(("d3", &s3)))
        .await
        .expect("d3 connects");
    let (ok, _, stderr) = cli(&db, &["device", "disable", "d3"]);
    assert!(ok, "{stderr}");
    eventually("d3 cut off", async || {
        let _ = d3
            .client
            .publish(
                "devices/d3/telemetry",
                rumqttc::QoS::AtLeastOnce,
                false,
                br#"{"metrics": {"x": 1}}"#.to_vec(),
            )
            .await;
        !d3.is_connected()
    })
    .await;
    assert!(Device::try_connect(port, "d3", Some(("d3", &s3)))
        .await
        .is_err());
    assert!(cli(&db, &["device", "enable", "d3"]).0);
    eventually("d3 enabled", async || {
        Device::try_connect(port, "d3", Some(("d3", &s3)))
            .await
            .is_ok()
    })
    .await;

    // Rotation: the old secret stops working, the new one works.
    let (ok, s1_new, stderr) = cli(&db, &["device", "rotate", "d1"]);
    assert!(ok, "{stderr}");
    eventually("the old secret refused", async || {
        RawMqtt::connect(&endpoint, "d1-old", Some(("d1", &s1)))
            .await
            .is_err()
    })
    .await;
    let mut d1 = RawMqtt::connect(&endpoint, "d1-new", Some(("d1", &s1_new)))
        .await
        .expect("the new secret works");
    d1.publish("devices/d1/location", &fix(2))
        .await
        .expect("acked");

    // Storage holds exactly what was allowed.
    assert_eq!(stored_seqs(&server, "d1", 2).await, vec![1, 2]);
    let (status, body) = server.get("/api/devices/d2/track").await;
    assert!(
        status == 404 || body.as_array().is_some_and(|a| a.is_empty()),
        "nothing stored for d2: {status} {body}"
    );
    let rejected = server.get_ok("/api/rejected").await;
    assert!(
        rejected.as_array().is_some_and(|a| a.is_empty()),
        "refused packets never reach the pipeline: {rejected}"
    );
    let statuses = server
        .wait_for("/api/devices/d3/status", |b| {
            b.as_array()
                .is_some_and(|a| a.iter().any(|s| s["reason"] == "kicked"))
        })
        .await;
    assert!(statuses.is_array());

    let metrics = server.metrics_text().await;
    for (name, at_least) in [
        ("fieldline_broker_acl_denied_total{action=\"publish\"}", 5.0),
        (
            "fieldline_broker_acl_denied_total{action=\"subscribe\"}",
            5.0,
        ),
        ("fieldline_broker_acl_denied_total{action=\"will\"}", 1.0),
        ("fieldline_broker_auth_total{result=\"bad_password\"}", 1.0),
        (
            "fieldline_broker_auth_total{result=\"unknown_device\"}",
            1.0,
        ),
        ("fieldline_broker_auth_total{result=\"disabled\"}", 1.0),
    ] {
        assert!(
            server.metric(&metrics, name) >= at_least,
            "{name} below {at_least}:\n{metrics}"
        );
    }
    let log = server.log_text();
    assert!(
        log.contains("refused: outside the device's own topics") && log.contains("device=d1"),
        "refusals are logged with the device id"
    );
}

/// The server with MQTT over TLS (certificates from `make_certificates` in `dir`) and over
/// WebSocket; returns it with the TLS and WebSocket ports.
async fn start_with_tls_and_websocket(dir: &TempDir, db: &str) -> (Server, u16, u16) {
    let (tls_port, ws_port) = (free_port(), free_port());
    let server = Server::start_with(
        dir,
        db,
        &[
            "--mqtts-listen",
            &format!("127.0.0.1:{tls_port}"),
            "--tls-cert",
            &dir.0.join("server.pem").display().to_string(),
            "--tls-key",
            &dir.0.join("server.key").display().to_string(),
            "--mqtt-ws-listen",
            &format!("127.0.0.1:{ws_port}"),
        ],
    )
    .await;
    (server, tls_port, ws_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_websocket_listeners_apply_the_same_rules() {
    let dir = TempDir::new("tls-ws");
    let ca = support::raw_mqtt::make_certificates(&dir.0);
    let db = database(Backend::Sqlite, &dir, "tls").await;
    let s1 = register_device(&db, "d1");
    let (server, tls_port, ws_port) = start_with_tls_and_websocket(&dir, &db).await;
    check_listener(
        &Endpoint::Tls {
            port: tls_port,
            ca_pem: ca.clone(),
        },
        &s1,
        1,
    )
    .await;
    check_listener(&Endpoint::WebSocket(ws_port), &s1, 2).await;

    // A third-party client over TLS, verifying the server against the CA.
    let cafile = dir.0.join("ca.pem").display().to_string();
    mosquitto_pub(
        tls_port,
        "devices/d1/location",
        &fix(3),
        &["-u", "d1", "-P", &s1, "-i", "d1-mosq", "--cafile", &cafile],
    );
    assert!(
        !mosquitto_pub_status(
            tls_port,
            "devices/d1/location",
            &fix(4),
            &["-u", "d1", "-P", "bad", "--cafile", &cafile]
        )
        .success(),
        "a wrong password fails over TLS too"
    );
    // A client that does not trust the certificate gets no connection at all.
    let stranger = support::raw_mqtt::tls_connector(&support::raw_mqtt::make_certificates(
        &TempDir::new("other-ca").0,
    ));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .expect("tcp");
    assert!(stranger
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .is_err());

    assert_eq!(stored_seqs(&server, "d1", 3).await, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_start_up_with_the_path() {
    let dir = TempDir::new("tls-bad");
    std::fs::write(dir.0.join("empty.pem"), "").expect("write");
    let db = format!("sqlite://{}", dir.0.join("f.db").display());
    let out = std::process::Command::new(support::binary())
        .current_dir(&dir.0)
        .args(["--database-url", &db])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--mqtts-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-cert", "empty.pem", "--tls-key", "missing.key"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("empty.pem"), "{stderr}");

    let out = std::process::Command::new(support::binary())
        .current_dir(&dir.0)
        .args(["--database-url", &db])
        .args(["--mqtts-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"));
}

async fn api_tokens_and_roles(backend: Backend) {
    let dir = TempDir::new("tokens");
    let db = database(backend, &dir, "tokens").await;
    let admin = create_token(&db, "ops", "admin");
    let server = Server::start(&dir, &db).await;
    let get = |path: &'static str, token: Option<String>| {
        let server = &server;
        async move {
            server
                .request(Method::GET, path, token.as_deref(), None)
                .await
                .0
        }
    };

    // Probes stay open; everything else needs a token.
    assert_eq!(get("/healthz", None).await, 200);
    assert_eq!(get("/readyz", None).await, 200);
    for path in [
        "/api/devices",
        "/api/rejected",
        "/metrics",
        "/api/admin/devices",
        "/api/stream",
    ] {
        assert_eq!(get(path, None).await, 401, "{path} without a token");
        assert_eq!(
            get(path, Some("fl_garbage".into())).await,
            401,
            "{path} with garbage"
        );
    }
    let resp = server
        .http
        .get(server.url("/api/devices"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"fieldline\""
    );
    assert_eq!(get("/api/devices", Some(admin.clone())).await, 200);

    // The admin makes a viewer token over the API.
    let request = |method: Method, path: String, token: &str, body: Option<Value>| {
        let server = &server;
        let token = token.to_string();
        async move { server.request(method, &path, Some(&token), body).await }
    };
    let (status, made) = request(
        Method::POST,
        "/api/admin/tokens".into(),
        &admin,
        Some(json!({"name": "wall", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let viewer = made["token"].as_str().expect("token").to_string();
    assert_eq!(get("/api/devices", Some(viewer.clone())).await, 200);
    assert_eq!(get("/metrics", Some(viewer.clone())).await, 200);
    assert_eq!(get("/api/admin/devices", Some(viewer.clone())).await, 403);
    assert_eq!(get("/api/admin/tokens", Some(viewer.clone())).await, 403);
    let (status, _) = request(
        Method::POST,
        "/api/admin/devices".into(),
        &viewer,
        Some(json!({"id": "x"})),
    )
    .await;
    assert_eq!(status, 403);
    // A query token is for live streams only (URLs end up in logs).
    assert_eq!(get("/api/devices", None).await, 401);
    let (status, _) = server
        .request(
            Method::GET,
            &format!("/api/devices?access_token={viewer}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);

    // Bad input on the admin endpoints.
    for (method, path, body, expected) in [
        (
            Method::POST,
            "/api/admin/tokens",
            json!({"name": "x", "role": "root"}),
            400,
        ),
        (
            Method::POST,
            "/api/admin/tokens",
            json!({"name": "", "role": "viewer"}),
            400,
        ),
        (
            Method::POST,
            "/api/admin/tokens",
            json!({"role": "viewer"}),
            400,
        ),
        (
            Method::POST,
            "/api/admin/devices",
            json!({"id": "bad id"}),
            400,
        ),
        (Method::POST, "/api/admin/devices", json!({"id": 7}), 400),
        (
            Method::PATCH,
            "/api/admin/devices/nope",
            json!({"enabled": false}),
            404,
        ),
        (
            Method::PATCH,
            "/api/admin/devices/nope",
            json!({"enabled": "no"}),
            400,
        ),
        (
            Method::POST,
            "/api/admin/devices/nope/secret",
            json!({}),
            404,
        ),
        (Method::DELETE, "/api/admin/tokens/nope", json!({}), 404),
    ] {
        let (status, reply) =
            request(method.clone(), path.into(), &admin, Some(body.clone())).await;
        assert_eq!(status, expected, "{method} {path} {body}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
    }
    let resp = server
        .http
        .post(server.url("/api/admin/devices"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);

    // A device made over the API can connect at once; a duplicate is a conflict.
    let (status, dev) = request(
        Method::POST,
        "/api/admin/devices".into(),
        &admin,
        Some(json!({"id": "pump-1"})),
    )
    .await;
    assert_eq!(status, 201, "{dev}");
    let secret = dev["secret"].as_str().expect("secret").to_string();
    let (status, _) = request(
        Method::POST,
        "/api/admin/devices".into(),
        &admin,
        Some(json!({"id": "pump-1"})),
    )
    .await;
    assert_eq!(status, 409);
    let mut pump = Device::try_connect(server.mqtt_port, "pump-1", Some(("pump-1", &secret)))
        .await
        .expect("the new device connects");
    pump.publish(
        "devices/pump-1/telemetry",
        br#"{"seq": 1, "metrics": {"flow": 3.5}}"#.to_vec(),
    )
    .await;
    pump.wait_acked(1).await;
    let listed = request(Method::GET, "/api/admin/devices".into(), &admin, None)
        .await
        .1;
    assert_eq!(listed[0]["id"], "pump-1", "{listed}");
    assert!(listed[0].get("secret").is_none() && !listed.to_string().contains(&secret));
    let (status, rotated) = request(
        Method::POST,
        "/api/admin/devices/pump-1/secret".into(),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(rotated["secret"], dev["secret"]);
    assert!(
        Device::try_connect(server.mqtt_port, "pump-1", Some(("pump-1", &secret)))
            .await
            .is_err()
    );
    let (status, _) = request(
        Method::PATCH,
        "/api/admin/devices/pump-1".into(),
        &admin,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200);
    let new_secret = rotated["secret"].as_str().expect("secret");
    assert!(
        Device::try_connect(server.mqtt_port, "pump-1", Some(("pump-1", new_secret)))
            .await
            .is_err()
    );

    // Live streams with the viewer token in the query; revoking the token ends them.
    let mut sse = Sse::open(&server, &format!("access_token={viewer}"), None).await;
    let mut ws =
        Ws::open_with_query(&server, "fieldline.json", &format!("access_token={viewer}")).await;
    ws.subscribe(json!({"type": "subscribe"})).await;
    let id = made["id"].as_str().expect("id");
    let (status, _) = request(
        Method::DELETE,
        format!("/api/admin/tokens/{id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let frames = sse.until_end().await;
    assert!(
        frames.iter().any(|f| f.event.as_deref() == Some("error")
            && f.data.as_deref().is_some_and(|d| d.contains("revoked"))),
        "{frames:?}"
    );
    match ws.frame().await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert!(frame.reason.contains("revoked"));
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(get("/api/devices", Some(viewer.clone())).await, 401);

    // A token revoked by the CLI (another process) ends its open stream within the poll.
    let watcher = create_token(&db, "kiosk", "viewer");
    eventually("the CLI token is known", async || {
        get("/api/devices", Some(watcher.clone())).await == 200
    })
    .await;
    let mut sse = Sse::open(&server, &format!("access_token={watcher}"), None).await;
    let listed = request(Method::GET, "/api/admin/tokens".into(), &admin, None)
        .await
        .1;
    let kiosk = listed
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "kiosk"))
        .expect("listed")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        !listed.to_string().contains(&watcher),
        "tokens are never listed"
    );
    assert!(cli(&db, &["token", "revoke", &kiosk]).0);
    let frames = sse.until_end().await;
    assert!(
        frames.iter().any(|f| f.event.as_deref() == Some("error")),
        "{frames:?}"
    );
    assert_eq!(get("/api/devices", Some(watcher)).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_client_limit_answers_503() {
    let dir = TempDir::new("live-limit");
    let db = database(Backend::Sqlite, &dir, "limit").await;
    let server = Server::start_with(&dir, &db, &["--max-live-clients", "2"]).await;
    let _a = Sse::open(&server, "", None).await;
    let _b = Ws::open(&server, "fieldline.json").await;
    let (status, body) = server.get("/api/stream").await;
    assert_eq!(status, 503, "{body}");
    let url = format!("ws://127.0.0.1:{}/api/ws", server.http_port);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    drop(_a);
    let text = server
        .wait_for_metrics(|m| m.contains("fieldline_live_refused_total"))
        .await;
    assert!(text.contains("transport=\"sse\""));
}

/// Opens `n` TCP connections to `port` that never send a byte.
fn idle_sockets(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("idle socket"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_every_listener_delay_no_one() {
    let dir = TempDir::new("hostile");
    let ca = support::raw_mqtt::make_certificates(&dir.0);
    let db = database(Backend::Sqlite, &dir, "hostile").await;
    let secret = register_device(&db, "d1");
    let token = create_token(&db, "ops", "viewer");
    let (mut server, tls_port, ws_port) = start_with_tls_and_websocket(&dir, &db).await;
    server.token = Some(token);
    let mut idle = Vec::new();
    for port in [server.mqtt_port, tls_port, ws_port, server.http_port] {
        idle.extend(idle_sockets(port, 200));
    }
    // A TLS client that sends half a ClientHello and stops, too.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", tls_port)).expect("socket");
    std::io::Write::write_all(&mut half, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).expect("write");

    let endpoints = [
        Endpoint::Tcp(server.mqtt_port),
        Endpoint::Tls {
            port: tls_port,
            ca_pem: ca,
        },
        Endpoint::WebSocket(ws_port),
    ];
    for (seq, endpoint) in (1..).zip(endpoints.iter()) {
        let mut client = RawMqtt::connect(endpoint, &format!("d1-{seq}"), Some(("d1", &secret)))
            .await
            .expect("a normal client connects past 200 idle sockets");
        client
            .publish("devices/d1/location", &fix(seq))
            .await
            .expect("acked");
    }
    // Read back over HTTP, past 200 idle HTTP sockets.
    let track = server
        .wait_for("/api/devices/d1/track", |b| {
            b.as_array().is_some_and(|a| a.len() == 3)
        })
        .await;
    assert_eq!(track[2]["seq"], 3);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_rate_limited_alone() {
    let dir = TempDir::new("flood");
    let db = database(Backend::Sqlite, &dir, "flood").await;
    let flood_secret = register_device(&db, "flood");
    let quiet_secret = register_device(&db, "quiet");
    let server = Server::start_with(
        &dir,
        &db,
        &[
            "--device-publish-rate",
            "100",
            "--device-publish-burst",
            "100",
        ],
    )
    .await;
    let endpoint = Endpoint::Tcp(server.mqtt_port);
    let mut flood = RawMqtt::connect(&endpoint, "flood", Some(("flood", &flood_secret)))
        .await
        .expect("connects");
    const FLOOD: u64 = 2_000;
    let started = Instant::now();
    let flooding = tokio::spawn(async move {
        // QoS 0, as fast as the socket takes them.
        for seq in 1..=FLOOD {
            let payload = format!(r#"{{"seq": {seq}, "metrics": {{"x": 1}}}}"#);
            let packet = publish_qos0_packet("devices/flood/telemetry", payload.as_bytes());
            if flood.send(&packet).await.is_err() {
                break;
            }
        }
        flood
    });
    let mut quiet = Device::try_connect(server.mqtt_port, "quiet", Some(("quiet", &quiet_secret)))
        .await
        .expect("connects");
    for seq in 1..=50 {
        quiet
            .publish(
                "devices/quiet/telemetry",
                format!(r#"{{"seq": {seq}, "metrics": {{"x": 1}}}}"#),
            )
            .await;
    }
    quiet.wait_acked(50).await;
    server
        .wait_for("/api/devices/quiet/telemetry?metric=x", |b| {
            b.as_array().is_some_and(|a| a.len() == 50)
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let stored = server
        .get_ok("/api/devices/flood/telemetry?metric=x&limit=10000")
        .await
        .as_array()
        .map_or(0, Vec::len) as f64;
    // The flood gets its burst plus its rate, and no more (a margin for batches in flight).
    assert!(
        stored <= 100.0 + 100.0 * (elapsed + 1.0),
        "{stored} flood messages stored in {elapsed:.1} s at 100/s"
    );
    let metrics = server.metrics_text().await;
    assert!(
        server.metric(&metrics, "fieldline_broker_rate_limited_total") >= 1.0,
        "{metrics}"
    );
    flooding.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_anonymous_admits_clients_without_a_username_only() {
    let dir = TempDir::new("anon");
    let db = database(Backend::Sqlite, &dir, "anon").await;
    let secret = register_device(&db, "d1");
    let server = Server::start_with(&dir, &db, &["--allow-anonymous"]).await;
    let endpoint = Endpoint::Tcp(server.mqtt_port);
    let mut anonymous = RawMqtt::connect(&endpoint, "bridge", None)
        .await
        .expect("no username: admitted");
    anonymous
        .publish("devices/legacy-1/location", &fix(1))
        .await
        .expect("acked");
    // A username is a claim to be that device, and is checked.
    assert!(RawMqtt::connect(&endpoint, "x", Some(("d1", "wrong")))
        .await
        .is_err());
    refused_after(
        &endpoint,
        "d1",
        &secret,
        "d1-a",
        publish_packet("devices/legacy-1/location", &fix(2), 1),
    )
    .await;
    server
        .wait_for("/api/devices/legacy-1/track", |b| {
            b.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_and_the_others_go_on() {
    let dir = TempDir::new("max-conn");
    let db = database(Backend::Sqlite, &dir, "maxconn").await;
    let server = Server::start_with(&dir, &db, &["--max-connections", "2"]).await;
    let endpoint = Endpoint::Tcp(server.mqtt_port);
    let mut first = RawMqtt::connect(&endpoint, "c1", None)
        .await
        .expect("first");
    let mut second = RawMqtt::connect(&endpoint, "c2", None)
        .await
        .expect("second");
    assert!(
        RawMqtt::connect(&endpoint, "c3", None).await.is_err(),
        "a third connection is over the limit"
    );
    first
        .publish("devices/c1/location", &fix(1))
        .await
        .expect("acked");
    second
        .publish("devices/c2/location", &fix(1))
        .await
        .expect("acked");
    drop(first);
    // A freed slot is usable again (the router notices the disconnect first).
    eventually("a slot frees up", async || {
        RawMqtt::connect(&endpoint, "c4", None).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_authentication_on_ends_anonymous_sessions_and_devices_have_a_connection_cap() {
    let dir = TempDir::new("auth-on");
    let db = database(Backend::Sqlite, &dir, "authon").await;
    let server = Server::start(&dir, &db).await;
    let endpoint = Endpoint::Tcp(server.mqtt_port);
    let mut anonymous = RawMqtt::connect(&endpoint, "early", None)
        .await
        .expect("empty registry, loopback: anonymous is fine");
    anonymous
        .publish("devices/early/location", &fix(1))
        .await
        .expect("acked");
    let secret = register_device(&db, "d1");
    // The server picks the registration up and cuts the anonymous session at its next packet.
    let mut seq = 2;
    eventually("the anonymous session ends", async || {
        seq += 1;
        anonymous
            .publish("devices/early/location", &fix(seq))
            .await
            .is_err()
    })
    .await;
    assert!(RawMqtt::connect(&endpoint, "late", None).await.is_err());

    let mut open = Vec::new();
    for n in 0..16 {
        open.push(
            RawMqtt::connect(&endpoint, &format!("session-{n}"), Some(("d1", &secret)))
                .await
                .expect("within the cap"),
        );
    }
    assert!(
        RawMqtt::connect(&endpoint, "session-16", Some(("d1", &secret)))
            .await
            .is_err(),
        "a 17th connection of one device is refused"
    );
    open.pop();
    eventually("a connection slot frees up", async || {
        RawMqtt::connect(&endpoint, "session-again", Some(("d1", &secret)))
            .await
            .is_ok()
    })
    .await;
    let metrics = server.metrics_text().await;
    assert!(
        server.metric(
            &metrics,
            "fieldline_broker_auth_total{result=\"too_many_connections\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_http_client_is_closed_and_live_streams_are_not() {
    let dir = TempDir::new("slowloris");
    let db = database(Backend::Sqlite, &dir, "slow").await;
    let server = Server::start_with(&dir, &db, &["--http-header-timeout-seconds", "1"]).await;
    let mut sse = Sse::open(&server, "kinds=location", None).await;
    // Headers that never end, one byte at a time.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", server.http_port))
        .await
        .expect("socket");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"GET /api/devices HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a client that never finishes its headers is closed"
    );
    // The live stream opened before is still served, long past the header deadline.
    let mut device = Device::connect(server.mqtt_port, "late-1").await;
    device.publish("devices/late-1/location", fix(1)).await;
    device.wait_acked(1).await;
    let event = sse.event().await.json();
    assert_eq!(event["device"], "late-1", "{event}");
    let metrics = server.metrics_text().await;
    assert!(
        server.metric(
            &metrics,
            "fieldline_http_refused_connections_total{reason=\"header_timeout\"}"
        ) >= 1.0,
        "{metrics}"
    );
}
