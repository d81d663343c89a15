//! `fieldline check`: reports what a start would do without starting (nothing created, no
//! migration run), and fails, naming the cause, on what would stop a start: a busy port, an
//! unreachable database, a log directory of another database, an unreadable TLS file, a bad
//! configuration.

mod support;

use std::process::Command;

use support::{binary, database, free_port, Backend, Server, TempDir};

/// Runs `fieldline check` in `dir`: exit code, stdout, stderr.
fn check(dir: &TempDir, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .current_dir(&dir.0)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .args(args)
        .arg("check")
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_fresh_setup_a_running_one_and_a_stopped_one() {
    let dir = TempDir::new("check");
    let (mqtt, http) = (free_port(), free_port());
    let mqtt_listen = format!("127.0.0.1:{mqtt}");
    let http_listen = format!("127.0.0.1:{http}");
    let listen = ["--mqtt-listen", &mqtt_listen, "--http-listen", &http_listen];

    // A fresh directory with the defaults: ready; nothing is created by looking.
    let (code, out, err) = check(&dir, &listen);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ready to start"), "{out}");
    assert!(out.contains("created at start"), "{out}");
    assert!(
        !dir.0.join("fieldline-data").exists(),
        "check created files"
    );

    // Running on those ports: both are in use.
    let url = format!(
        "sqlite://{}",
        dir.0.join("fieldline-data/fieldline.db").display()
    );
    let mut server = Server::start(&dir, &url).await;
    let busy = [
        "--mqtt-listen",
        &format!("127.0.0.1:{}", server.mqtt_port),
        "--http-listen",
        &format!("127.0.0.1:{}", server.http_port),
    ]
    .map(|s| s.to_string());
    let busy: Vec<&str> = busy.iter().map(String::as_str).collect();
    let (code, out, err) = check(&dir, &busy);
    assert_ne!(code, 0);
    assert_eq!(out.matches("is in use").count(), 2, "{out}");
    assert!(err.contains("2 problems"), "{err}");
    assert!(server.stop().success());

    // Stopped: its database is migrated and follows its own log, which holds segments.
    let (code, out, err) = check(&dir, &listen);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("migrations       all applied"), "{out}");
    assert!(out.contains("SQLite 3."), "{out}");
    assert!(out.contains("fieldline-data/wal-"), "{out}");
    assert!(out.contains("segment(s)"), "{out}");

    // The same log directory named for another database: a start would refuse it.
    let other = format!("sqlite://{}", dir.0.join("other.db").display());
    let wal = support::wal_dir(&dir);
    let wal = wal.to_string_lossy().into_owned();
    let mut args = listen.to_vec();
    args.extend(["--database-url", &other, "--wal-dir", &wal]);
    // A database that never had a log, pointed at a log with records: refused.
    let (code, out, _) = check(&dir, &args);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("belongs to another database"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_would_stop_a_start() {
    let dir = TempDir::new("check-bad");
    let (mqtt, http) = (free_port(), free_port());
    let mqtt_listen = format!("127.0.0.1:{mqtt}");
    let http_listen = format!("127.0.0.1:{http}");
    let listen = ["--mqtt-listen", &mqtt_listen, "--http-listen", &http_listen];

    // PostgreSQL reached and read, not migrated: every migration is still to apply.
    let pg = database(Backend::Postgres, &dir, "check_pg").await;
    let mut args = listen.to_vec();
    args.extend(["--database-url", &pg]);
    let (code, out, err) = check(&dir, &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PostgreSQL"), "{out}");
    assert!(out.contains("0001 schema"), "{out}");
    let (code, out, err) = check(&dir, &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("0001 schema"),
        "checking twice still migrates nothing: {out}"
    );

    // Nobody listens there.
    let closed = format!("postgres://postgres@127.0.0.1:{}/nothing", free_port());
    let mut args = listen.to_vec();
    args.extend(["--database-url", &closed]);
    let (code, out, _) = check(&dir, &args);
    assert_ne!(code, 0);
    assert!(out.contains("PROBLEM  storage"), "{out}");

    // TLS files that are not there.
    let mqtts = format!("127.0.0.1:{}", free_port());
    let mut args = listen.to_vec();
    args.extend([
        "--mqtts-listen",
        &mqtts,
        "--tls-cert",
        "missing.pem",
        "--tls-key",
        "missing.key",
    ]);
    let (code, out, _) = check(&dir, &args);
    assert_ne!(code, 0);
    assert!(out.contains("cannot read missing.pem"), "{out}");

    // A configuration that does not load is the first thing said.
    let (code, _, err) = check(&dir, &["--config", "no-such.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such.toml"), "{err}");
}
