//! HTTPS on the API and dashboard: served with the configured certificate beside plain HTTP,
//! the certificate replaced on SIGHUP without dropping an open live stream, a broken
//! replacement refused (the old one stays), a client that does not speak TLS turned away,
//! HTTPS-only with HSTS, and clear start-up errors.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::raw_mqtt::make_certificates;
use support::{database, free_port, spawn_server, Backend, Device, Server, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that trusts only `ca` (and keeps no connections, so each call shakes hands).
fn client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"))
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// Reads the stream until `text` arrives in it.
async fn read_until(stream: &mut reqwest::Response, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {text:?} within 20 s; got {seen}"))
            .expect("the stream goes on")
            .expect("the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_and_swaps_its_certificate_without_dropping_streams() {
    let dir = TempDir::new("https");
    let first_ca = make_certificates(&dir.0);
    let db = database(Backend::Sqlite, &dir, "https").await;
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let server = Server::start_with(
        &dir,
        &db,
        &[
            "--https-listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
        ],
    )
    .await;
    let first = client(&first_ca);
    let devices = first
        .get(format!("{base}/api/devices"))
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(devices.status(), 200);
    assert!(
        devices.headers().get("strict-transport-security").is_none(),
        "no HSTS while plain HTTP is served too"
    );
    assert_eq!(
        server.get("/api/devices").await.0,
        200,
        "plain HTTP still served"
    );

    // A live stream over HTTPS, open across the certificate change.
    let mut stream = first
        .get(format!("{base}/api/stream?kinds=location"))
        .send()
        .await
        .expect("SSE over HTTPS");
    assert_eq!(stream.status(), 200);
    let van = Device::connect(server.mqtt_port, "van-1").await;
    van.publish(
        "devices/van-1/location",
        json!({"seq": 1, "lat": 52.5, "lon": 13.4}).to_string(),
    )
    .await;
    read_until(&mut stream, "\"seq\":1").await;

    // A new certificate from another CA, picked up on SIGHUP.
    let next = dir.0.join("next");
    std::fs::create_dir_all(&next).expect("dir");
    let second_ca = make_certificates(&next);
    for file in ["server.pem", "server.key"] {
        std::fs::copy(next.join(file), dir.0.join(file)).expect("copy");
    }
    server.signal("HUP");
    let second = client(&second_ca);
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        client(&first_ca)
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    // The stream opened before goes on.
    van.publish(
        "devices/van-1/location",
        json!({"seq": 2, "lat": 52.6, "lon": 13.5}).to_string(),
    )
    .await;
    read_until(&mut stream, "\"seq\":2").await;

    // A broken key is refused and the current certificate stays.
    std::fs::write(dir.0.join("server.key"), "not a key").expect("write");
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("HTTPS certificate not reloaded") {
        assert!(Instant::now() < deadline, "the broken key was not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still = second
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(still.status(), 200);

    // Plain HTTP on the HTTPS port: the connection is closed, nothing else is hurt.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plain HTTP must not be answered on the HTTPS port"
    );
    let still = second
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(still.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_sends_hsts_and_bad_settings_stop_start_up() {
    let dir = TempDir::new("https-only");
    let ca = make_certificates(&dir.0);
    let db = database(Backend::Sqlite, &dir, "https_only").await;
    let (mqtt, http, https) = (free_port(), free_port(), free_port());
    let log = dir.0.join("only.log");
    let https_listen = format!("127.0.0.1:{https}");
    let mut child = spawn_server(
        &dir,
        &db,
        mqtt,
        http,
        &log,
        &[
            "--https-only",
            "--https-listen",
            &https_listen,
            "--https-cert",
            "server.pem",
            "--https-key",
            "server.key",
        ],
    );
    let client = client(&ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Ok(response) = client
            .get(format!("https://127.0.0.1:{https}/readyz"))
            .send()
            .await
        {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "not ready over HTTPS: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready
            .headers()
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap_or("")),
        Some("max-age=31536000")
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .is_err(),
        "no plain HTTP listener"
    );
    support::kill(&mut child, &db).await;

    // Start-up errors name what is missing.
    for (args, reason) in [
        (vec!["--https-only"], "--https-only needs --https-listen"),
        (
            vec!["--https-listen", "127.0.0.1:1"],
            "HTTPS needs a certificate and its key",
        ),
        (
            vec![
                "--https-listen",
                &https_listen,
                "--tls-cert",
                "nope.pem",
                "--tls-key",
                "server.key",
            ],
            "nope.pem",
        ),
        (
            vec!["--tls-cert", "server.pem", "--tls-key", "server.key"],
            "neither is set",
        ),
    ] {
        let out = std::process::Command::new(support::binary())
            .current_dir(&dir.0)
            .args(["--database-url", &db])
            .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
            .args(&args)
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{args:?} must stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
