//! What waits in the write-ahead log when storage cannot take it: a long PostgreSQL outage
//! under steady load keeps memory flat while the log grows; a full spool and a full disk
//! slow devices down without acknowledging anything unwritten; a damaged log is cut to its
//! valid prefix or refused with the file named.

#[macro_use]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;
use support::{
    assert_stored_once, bring_postgres_back, database, free_port, spawn_server, stored_counts,
    take_postgres_away, wait_for_log, AckedPublisher, Backend, Server, TempDir,
};

fn rss_kb(server: &Server) -> u64 {
    let pid = server.child.as_ref().expect("running").id();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn ready_field(server: &Server, field: &str) -> bool {
    let (_, body) = server.get("/readyz").await;
    body[field].as_bool().unwrap_or(false)
}

async fn wait_ready_field(server: &Server, field: &str, value: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready_field(server, field).await != value {
        assert!(
            Instant::now() < deadline,
            "/readyz {field} never became {value}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_all(publishers: Vec<(String, AckedPublisher)>) -> Vec<(String, u64)> {
    let mut acked = Vec::new();
    for (device, publisher) in publishers {
        let (numbers, _) = publisher.stop().await;
        acked.extend(numbers.into_iter().map(|n| (device.clone(), n)));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_postgresql_down_keeps_memory_flat_while_the_log_grows() {
    let dir = TempDir::new("long-outage");
    let url = database(Backend::Postgres, &dir, "long_outage").await;
    // Small batches, so storage counts as behind soon; a small live history, so the hub's
    // own (bounded) memory does not hide what the outage costs.
    let server = Server::start_with(
        &dir,
        &url,
        &["--batch-rows", "1000", "--live-history-events", "1000"],
    )
    .await;
    let publishers: Vec<(String, AckedPublisher)> = (0..4)
        .map(|d| {
            let device = format!("steady-{d}");
            let p = AckedPublisher::start(server.mqtt_port, &device, 1, 1_000);
            (device, p)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = Instant::now();
    take_postgres_away(&url).await;
    wait_ready_field(&server, "storage_behind", true).await;
    // Settled into the spill: from here on nothing may pile up in memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_start, log_start) = (rss_kb(&server), unstored(&server).await);
    let mut rss_peak = rss_start;
    while outage.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kb(&server));
    }
    let log_end = unstored(&server).await;
    let acked_during: usize = publishers.iter().map(|(_, p)| p.acked()).sum();
    println!(
        "outage: log {log_start} -> {log_end} bytes unstored; RSS {rss_start} -> peak {rss_peak} kB; {acked_during} acknowledged so far"
    );
    assert!(
        log_end >= log_start + 8 * 1024 * 1024,
        "the log grows while storage is away"
    );
    // Flat: growth well under a tenth of what the log took on.
    assert!(
        (rss_peak - rss_start) * 1024 < (log_end - log_start) / 10,
        "memory grew {} kB while the log grew {} bytes",
        rss_peak - rss_start,
        log_end - log_start
    );
    bring_postgres_back(&url).await;
    wait_ready_field(&server, "storage_behind", false).await;
    let acked = stop_all(publishers).await;
    wait_ready_field(&server, "storage_behind", false).await;
    server
        .wait_for_metrics(|m| server.metric(m, "fieldline_wal_unstored_bytes") == 0.0)
        .await;
    assert_stored_once(&url, &acked).await;
}

async fn unstored(server: &Server) -> u64 {
    // The gauge is refreshed every second.
    let text = server.metrics_text().await;
    server.metric(&text, "fieldline_wal_unstored_bytes") as u64
}

/// While the log cannot take a publish, the device gets no PUBACK for it: its count of
/// acknowledgements stands still.
async fn assert_acks_stand_still(publisher: &AckedPublisher) {
    let before = publisher.acked();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        publisher.acked(),
        before,
        "publishes were acknowledged while the log could not take them"
    );
}

/// Once the log takes appends again, the device's publishes are acknowledged again.
async fn assert_acks_resume(server: &Server, publisher: &AckedPublisher) {
    let resumed = publisher.acked();
    let deadline = Instant::now() + Duration::from_secs(30);
    while publisher.acked() < resumed + 1_000 {
        assert!(
            Instant::now() < deadline,
            "publishing did not resume:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_slows_devices_and_acknowledges_nothing_unwritten() {
    let dir = TempDir::new("spool");
    let url = database(Backend::Postgres, &dir, "spool").await;
    let server = Server::start_with(
        &dir,
        &url,
        &["--spool-max-bytes", "1048576", "--batch-rows", "100"],
    )
    .await;
    let device = "spooled".to_string();
    let publisher = AckedPublisher::start(server.mqtt_port, &device, 1, 2_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    take_postgres_away(&url).await;
    wait_ready_field(&server, "log_full", true).await;
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, 503, "a full log is not ready for more devices");
    assert_acks_stand_still(&publisher).await;
    let text = server.metrics_text().await;
    assert!(server.metric(&text, "fieldline_wal_spool_full_waits_total") > 0.0);
    assert_eq!(
        server.metric(&text, "fieldline_broker_lost_messages_total"),
        0.0
    );
    // Storage back: the log drains, devices are read again.
    bring_postgres_back(&url).await;
    wait_ready_field(&server, "log_full", false).await;
    assert_acks_resume(&server, &publisher).await;
    let acked = stop_all(vec![(device, publisher)]).await;
    server
        .wait_for_metrics(|m| server.metric(m, "fieldline_wal_unstored_bytes") == 0.0)
        .await;
    assert_stored_once(&url, &acked).await;
}

/// A small file system of its own for the log, so the test can fill it.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a small tmpfs at {} (the full-disk test needs root, as ./scripts/test.sh has)",
            path.display()
        );
        SmallDisk(path.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_slows_devices_and_loses_nothing() {
    let dir = TempDir::new("full-disk");
    let url = database(Backend::Postgres, &dir, "full_disk").await;
    let wal_dir = dir.0.join("small-disk");
    let _disk = SmallDisk::mount(&wal_dir, 2 * 1024 * 1024);
    let wal_flag = wal_dir.display().to_string();
    let server =
        Server::start_with(&dir, &url, &["--wal-dir", &wal_flag, "--batch-rows", "100"]).await;
    let device = "disk-full".to_string();
    let publisher = AckedPublisher::start(server.mqtt_port, &device, 1, 2_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    take_postgres_away(&url).await;
    // 2 MiB of log fill the disk in a few seconds.
    server
        .wait_for_metrics(|m| server.metric(m, "fieldline_wal_append_errors_total") > 0.0)
        .await;
    wait_ready_field(&server, "log_full", true).await;
    assert_acks_stand_still(&publisher).await;
    assert!(server.log_text().contains("disk full?"));
    bring_postgres_back(&url).await;
    // Storage takes the whole log; the segment starts over and frees the disk.
    wait_ready_field(&server, "log_full", false).await;
    assert_acks_resume(&server, &publisher).await;
    let acked = stop_all(vec![(device, publisher)]).await;
    server
        .wait_for_metrics(|m| server.metric(m, "fieldline_wal_unstored_bytes") == 0.0)
        .await;
    assert_stored_once(&url, &acked).await;
    let text = server.metrics_text().await;
    assert_eq!(
        server.metric(&text, "fieldline_broker_lost_messages_total"),
        0.0
    );
}

/// Leaves a log of several small segments that storage does not have: SQLite's write lock is
/// held while a device publishes, then the server is killed. Returns what was acknowledged.
async fn unstored_log(dir: &TempDir, url: &str) -> Vec<(String, u64)> {
    let (mqtt, http) = (free_port(), free_port());
    let log = dir.0.join("first.log");
    let mut child = spawn_server(
        dir,
        url,
        mqtt,
        http,
        &log,
        &["--wal-segment-bytes", "65536"],
    );
    wait_for_log(&log, "fieldline is ready", &mut child).await;
    let mut lock = sqlx::SqliteConnection::connect(url).await.expect("connect");
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .expect("take the write lock");
    let device = "damaged".to_string();
    let publisher = AckedPublisher::start(mqtt, &device, 1, 2_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while publisher.acked() < 3_000 {
        assert!(Instant::now() < deadline, "too few acknowledgements");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let (numbers, _) = publisher.finish().await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release");
    numbers.into_iter().map(|n| (device.clone(), n)).collect()
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_is_cut_at_a_torn_tail_and_refused_elsewhere() {
    let dir = TempDir::new("damaged");
    let url = database(Backend::Sqlite, &dir, "damaged").await;
    let acked = unstored_log(&dir, &url).await;
    let wal_dir = support::wal_dir(&dir);
    let files = segments(&wal_dir);
    assert!(files.len() >= 3, "several segments: {files:?}");

    // A flipped byte in an earlier segment: start-up stops, naming the file.
    let earlier = &files[1];
    let original = std::fs::read(earlier).expect("segment");
    let mut damaged = original.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x10;
    std::fs::write(earlier, &damaged).expect("damage");
    let (mqtt, http) = (free_port(), free_port());
    let log = dir.0.join("refused.log");
    let mut child = spawn_server(
        &dir,
        &url,
        mqtt,
        http,
        &log,
        &["--wal-segment-bytes", "65536"],
    );
    let status = child.wait().expect("exits");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "start-up must stop:\n{text}");
    let name = earlier.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(text.contains(name) && text.contains("damaged"), "{text}");
    assert_eq!(
        stored_counts(&url).await.len(),
        0,
        "nothing was stored from a damaged log"
    );

    // Repaired, but with the newest segment's last record cut in half (a torn write): the
    // valid prefix is stored, and start-up goes on.
    std::fs::write(earlier, &original).expect("repair");
    let newest = files.last().expect("segments");
    let len = std::fs::metadata(newest).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .and_then(|f| f.set_len(len - 7))
        .expect("cut");
    let mut server = Server::start_with(&dir, &url, &["--wal-segment-bytes", "65536"]).await;
    assert!(
        server.log_text().contains("cut short"),
        "{}",
        server.log_text()
    );
    assert!(server.stop().success());
    let stored = stored_counts(&url).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|(d, n)| !stored.contains_key(&(d.clone(), *n)))
        .collect();
    // Only the record that was cut can be missing: it stands for a write the crash tore.
    assert!(lost.len() <= 1, "lost {lost:?}");
    assert!(stored.values().all(|&c| c == 1), "stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_left_from_another_database_stops_start_up() {
    let dir = TempDir::new("foreign-log");
    let first = format!("sqlite://{}", dir.0.join("first.db").display());
    let second = format!("sqlite://{}", dir.0.join("second.db").display());
    // One log directory named for both: the second database must not take the first's log.
    let shared = ["--wal-dir", "shared-wal"];
    let mut server = Server::start_with(&dir, &first, &shared).await;
    let publisher = AckedPublisher::start(server.mqtt_port, "foreign", 1, 1_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while publisher.acked() < 200 {
        assert!(Instant::now() < deadline, "too few acknowledgements");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (acked, _) = publisher.stop().await;
    assert!(server.stop().success());

    // Another database beside the same log: refused, and nothing of the log stored in it.
    let (mqtt, http) = (free_port(), free_port());
    let log = dir.0.join("foreign.log");
    let mut child = spawn_server(&dir, &second, mqtt, http, &log, &shared);
    let status = child.wait().expect("exits");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "start-up must stop:\n{text}");
    assert!(text.contains("belongs to another database"), "{text}");
    assert!(stored_counts(&second).await.is_empty());

    // The first database still starts with its own log and has everything.
    let mut server = Server::start_with(&dir, &first, &shared).await;
    assert!(server.stop().success());
    let acked: Vec<(String, u64)> = acked
        .into_iter()
        .map(|n| ("foreign".to_string(), n))
        .collect();
    assert_stored_once(&first, &acked).await;
    // Removing the log lets the other database start afresh.
    std::fs::remove_dir_all(dir.0.join("shared-wal")).expect("remove the log");
    let mut server = Server::start_with(&dir, &second, &shared).await;
    assert!(server.stop().success());
}

/// Without `--wal-dir` each database keeps its log in a directory of its own: switching from
/// SQLite to PostgreSQL and back in one working directory just works, with nothing lost; an
/// installation with the old single directory keeps using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_databases_in_one_directory_gives_each_its_own_log() {
    let dir = TempDir::new("switch-db");
    let sqlite = format!(
        "sqlite://{}",
        dir.0.join("fieldline-data/fieldline.db").display()
    );
    let postgres = database(Backend::Postgres, &dir, "switch_db").await;
    let mut acked_by = Vec::new();
    for (round, url) in [&sqlite, &postgres, &sqlite].into_iter().enumerate() {
        let mut server = Server::start(&dir, url).await;
        let device = format!("switch-{round}");
        let publisher = AckedPublisher::start(server.mqtt_port, &device, 1, 500);
        let deadline = Instant::now() + Duration::from_secs(30);
        while publisher.acked() < 100 {
            assert!(Instant::now() < deadline, "too few acknowledgements");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (acked, _) = publisher.stop().await;
        assert!(server.stop().success(), "{}", server.log_text());
        acked_by.push((url.clone(), device, acked));
    }
    let dirs = support::wal_dirs(&dir);
    assert_eq!(dirs.len(), 2, "one log per database: {dirs:?}");
    for (url, device, acked) in acked_by {
        let acked: Vec<(String, u64)> = acked.into_iter().map(|n| (device.clone(), n)).collect();
        assert_stored_once(&url, &acked).await;
    }

    // The directory of earlier versions, with this database's log in it, is used as it is.
    let legacy = TempDir::new("legacy-wal");
    let url = format!(
        "sqlite://{}",
        legacy.0.join("fieldline-data/fieldline.db").display()
    );
    let mut server = Server::start_with(&legacy, &url, &["--wal-dir", "fieldline-data/wal"]).await;
    assert!(server.stop().success());
    let mut server = Server::start(&legacy, &url).await;
    assert!(server.stop().success());
    assert_eq!(
        support::wal_dirs(&legacy),
        vec![legacy.0.join("fieldline-data/wal")],
        "no second directory"
    );
    assert!(
        server.log_text().contains("dir=fieldline-data/wal "),
        "{}",
        server.log_text()
    );
}
