//! Start-up failures an operator must see clearly: a busy port or an unreachable database
//! stops the binary with an error naming the cause and a non-zero exit status.

mod support;

use std::net::TcpListener;
use std::process::Command;

use support::{binary, free_port, TempDir};

fn run(dir: &TempDir, args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .current_dir(&dir.0)
        .env_remove("DATABASE_URL")
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_busy_mqtt_port_is_a_clear_error() {
    let dir = TempDir::new("busy-mqtt");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = run(&dir, &["--mqtt-listen", &addr, "--http-listen", &http]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("cannot listen for MQTT on {addr}")),
        "{stderr}"
    );
}

#[test]
fn a_busy_http_port_is_a_clear_error() {
    let dir = TempDir::new("busy-http");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mqtt = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = run(&dir, &["--mqtt-listen", &mqtt, "--http-listen", &addr]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("cannot listen for HTTP on {addr}")),
        "{stderr}"
    );
}

#[test]
fn bad_storage_settings_are_clear_errors() {
    let dir = TempDir::new("bad-db");
    let mqtt = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let base = [
        "--mqtt-listen",
        mqtt.as_str(),
        "--http-listen",
        http.as_str(),
    ];

    let (code, stderr) = run(
        &dir,
        &[
            &base[..],
            &["--database-url", "postgres://fl:secret@127.0.0.1:1/fl"],
        ]
        .concat(),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("cannot open storage postgres://fl:***@127.0.0.1:1/fl"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password is never printed: {stderr}"
    );

    let (code, stderr) = run(
        &dir,
        &[&base[..], &["--database-url", "mysql://x"]].concat(),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("unsupported database URL"), "{stderr}");

    let config = dir.0.join("bad.toml");
    std::fs::write(&config, "mqtt_listen = 5\n").expect("write");
    let (code, stderr) = run(&dir, &["--config", config.to_str().expect("utf-8 path")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid config file"), "{stderr}");
}

/// Starts the service once per case, on free ports, with the case's flags: each must fail
/// and say what is wrong.
fn refuses_each(dir: &TempDir, cases: &[(&[&str], &str)]) {
    let mqtt = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let base = ["--mqtt-listen", &mqtt, "--http-listen", &http];
    for (flags, says) in cases {
        let (code, stderr) = run(dir, &[&base[..], flags].concat());
        assert_ne!(code, 0, "{flags:?}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}

#[test]
fn bad_broker_settings_are_clear_errors() {
    refuses_each(
        &TempDir::new("bad-broker"),
        &[
            (
                &["--mqtt-max-subscriber-bytes", "0"],
                "mqtt_max_subscriber_bytes must be at least 1",
            ),
            (
                &["--mqtt-max-subscriber-bytes", "lots"],
                "invalid value 'lots' for '--mqtt-max-subscriber-bytes",
            ),
        ],
    );
}

#[test]
fn bad_smtp_settings_are_clear_errors() {
    let dir = TempDir::new("bad-smtp");
    refuses_each(
        &dir,
        &[
            (
                &["--smtp-url", "http://mail.example.com"],
                "must start with smtp:// or smtps://",
            ),
            (&["--smtp-url", "mail.example.com"], "not a URL"),
            (
                &["--smtp-from", "not an address"],
                "smtp_from must be an email address",
            ),
        ],
    );
}

#[test]
fn bad_cluster_settings_are_clear_errors() {
    let dir = TempDir::new("bad-cluster");
    let pg = ["--database-url", "postgres://127.0.0.1:1/none"];
    refuses_each(
        &dir,
        &[
            (
                &["--cluster", "nats://127.0.0.1:4222"],
                "--cluster needs PostgreSQL or TimescaleDB",
            ),
            (
                &[&pg[..], &["--cluster", "http://127.0.0.1:4222"]].concat(),
                "--cluster takes nats:// or tls:// URLs",
            ),
            (
                &[&pg[..], &["--cluster", " , "]].concat(),
                "at least one NATS server URL",
            ),
            (
                &[
                    &pg[..],
                    &["--cluster", "nats://a:1", "--cluster-replicas", "7"],
                ]
                .concat(),
                "--cluster-replicas must be 1 to 5",
            ),
            (
                &[
                    &pg[..],
                    &["--cluster", "nats://a:1", "--cluster-partitions", "0"],
                ]
                .concat(),
                "--cluster-partitions must be 1 to 1024",
            ),
            (
                &[
                    &pg[..],
                    &["--cluster", "nats://a:1", "--cluster-node", "a.b"],
                ]
                .concat(),
                "--cluster-node may hold",
            ),
        ],
    );
}

#[test]
fn bad_durability_settings_are_clear_errors() {
    let dir = TempDir::new("bad-wal");
    refuses_each(
        &dir,
        &[
            (&["--durability", "sometimes"], "unknown durability"),
            (
                &["--spool-max-bytes", "1000"],
                "spool_max_bytes must be at least 1 MiB",
            ),
            (
                &["--wal-segment-bytes", "100"],
                "wal_segment_bytes must be between",
            ),
        ],
    );
    let mqtt = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let base = ["--mqtt-listen", &mqtt, "--http-listen", &http];
    let config = dir.0.join("wal.toml");
    std::fs::write(&config, "durability = \"power-safe\"\n").expect("write");
    let (code, stderr) = run(
        &dir,
        &[&base[..], &["--config", config.to_str().expect("utf-8")]].concat(),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown durability"), "{stderr}");

    // A log directory another Fieldline holds: the second refuses to start, naming it.
    let wal = dir.0.join("wal");
    std::fs::create_dir_all(&wal).expect("dir");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(wal.join("LOCK"))
        .expect("lock file");
    lock.try_lock().expect("lock");
    let wal_flag = wal.to_str().expect("utf-8").to_owned();
    let (code, stderr) = run(&dir, &[&base[..], &["--wal-dir", &wal_flag]].concat());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("another process is using the write-ahead log"),
        "{stderr}"
    );
}

#[test]
fn default_run_creates_the_sqlite_store_under_fieldline_data() {
    // The README's `cargo run --release` with no arguments: SQLite under ./fieldline-data/.
    // Default ports may be in use on a shared machine, so only the listen addresses are set.
    let dir = TempDir::new("default-store");
    let mqtt = format!("127.0.0.1:{}", free_port());
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let http = taken.local_addr().expect("addr").to_string();
    // With HTTP busy the binary stops after opening (and migrating) the store.
    let (code, _) = run(&dir, &["--mqtt-listen", &mqtt, "--http-listen", &http]);
    assert_ne!(code, 0);
    assert!(dir.0.join("fieldline-data/fieldline.db").exists());
}

#[test]
fn a_non_loopback_listener_without_authentication_is_refused() {
    let dir = TempDir::new("exposed");
    let local = |port: u16| format!("127.0.0.1:{port}");
    let everywhere = |port: u16| format!("0.0.0.0:{port}");
    for (mqtt, http, what) in [
        (everywhere(free_port()), local(free_port()), "MQTT"),
        (local(free_port()), everywhere(free_port()), "HTTP"),
    ] {
        let (code, stderr) = run(&dir, &["--mqtt-listen", &mqtt, "--http-listen", &http]);
        assert_ne!(code, 0, "{what} on all interfaces must be refused");
        assert!(
            stderr.contains(&format!("refusing to listen for {what}"))
                && stderr.contains("--allow-anonymous"),
            "{stderr}"
        );
    }
}

#[test]
fn allow_anonymous_overrides_the_refusal() {
    let dir = TempDir::new("exposed-allowed");
    let mqtt_port = free_port();
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(binary())
        .current_dir(&dir.0)
        .env_remove("DATABASE_URL")
        .args(["--mqtt-listen", &format!("0.0.0.0:{mqtt_port}")])
        .args(["--http-listen", &http, "--allow-anonymous"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Listening on every interface, so reachable on loopback too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt_port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("fieldline exited: {status}");
        }
        assert!(std::time::Instant::now() < deadline, "MQTT never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("exit");
    // Logs and errors both go to stderr; read both in case that changes.
    let log = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("without authentication"),
        "a warning says so: {log}"
    );
}

#[test]
fn configured_authentication_allows_non_loopback_listeners() {
    let dir = TempDir::new("exposed-auth");
    let db = format!("sqlite://{}", dir.0.join("fieldline.db").display());
    support::register_device(&db, "d1");
    let (mqtt, http) = (free_port(), free_port());
    let args = [
        "--database-url",
        &db,
        "--mqtt-listen",
        &format!("0.0.0.0:{mqtt}"),
        "--http-listen",
        &format!("0.0.0.0:{http}"),
    ];
    // Devices are registered, but the API has no token yet: HTTP is still refused.
    let (code, stderr) = run(&dir, &args);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("refusing to listen for HTTP") && stderr.contains("fieldline token add"),
        "{stderr}"
    );
    support::create_token(&db, "ops", "admin");
    let mut child = Command::new(binary())
        .current_dir(&dir.0)
        .env_remove("DATABASE_URL")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("fieldline exited although authentication is configured: {status}");
        }
        assert!(std::time::Instant::now() < deadline, "HTTP never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn registry_commands_reject_bad_input() {
    let dir = TempDir::new("cli-bad");
    let db = format!("sqlite://{}", dir.0.join("fieldline.db").display());
    for args in [
        &["device", "add", "bad id"][..],
        &["device", "add", ""],
        &["device", "disable", "nobody"],
        &["device", "rotate", "nobody"],
        &["token", "add", "x", "--role", "root"],
        &["token", "revoke", "nope"],
    ] {
        let (ok, stdout, stderr) = support::cli(&db, args);
        assert!(!ok, "{args:?} must fail");
        assert!(
            stdout.is_empty(),
            "no secret printed for {args:?}: {stdout}"
        );
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    support::register_device(&db, "d1");
    let (ok, _, stderr) = support::cli(&db, &["device", "add", "d1"]);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    let (ok, list, _) = support::cli(&db, &["device", "list"]);
    assert!(
        ok && list.contains("d1") && list.contains("enabled"),
        "{list}"
    );
    assert!(!list.contains("argon2"), "hashes are never shown: {list}");
}
