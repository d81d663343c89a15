//! What a PUBACK promises: the real binary under QoS 1 load is killed with SIGKILL again and
//! again (once while the database is unavailable, once while it is replaying its log), and
//! afterwards every acknowledged publish is stored exactly once. The documents carry no
//! `seq`, so de-duplication cannot hide a record stored twice: only the log position stored
//! with each batch can prevent it.

#[macro_use]
mod support;

use std::time::Duration;

use sqlx::Connection;
use support::{
    assert_stored_once, database, free_port, kill, spawn_server, wait_for_log, AckedPublisher,
    Backend, Server, TempDir,
};

on_both_backends!(acknowledged_publishes_survive_sigkill_exactly_once);

const DEVICES: usize = 6;
const CYCLES: usize = 10;
/// The cycle whose kill comes while the database refuses writes.
const OUTAGE_CYCLE: usize = 3;
/// The cycle that starts by replaying that backlog, and is killed before it finishes.
const RECOVERY_CYCLE: usize = OUTAGE_CYCLE + 1;

/// A small deterministic generator, so a failing run can be repeated from its printed seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Makes storage refuse (block) writes until the returned guard is released.
enum Outage {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Outage {
    async fn begin(url: &str) -> Outage {
        if url.starts_with("postgres") {
            // A row lock on the log position: every batch ends by raising it, so every write
            // waits, while start-up (which only reads it) goes on.
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::raw_sql("BEGIN; SELECT * FROM ingest_log FOR UPDATE")
                .execute(&mut conn)
                .await
                .expect("lock the log position");
            Outage::Postgres(conn)
        } else {
            let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .expect("take SQLite's write lock");
            Outage::Sqlite(conn)
        }
    }

    async fn end(self) {
        match self {
            Outage::Postgres(mut c) => sqlx::raw_sql("ROLLBACK").execute(&mut c).await.map(|_| ()),
            Outage::Sqlite(mut c) => sqlx::raw_sql("ROLLBACK").execute(&mut c).await.map(|_| ()),
        }
        .expect("release the lock");
    }
}

async fn acknowledged_publishes_survive_sigkill_exactly_once(backend: Backend) {
    let dir = TempDir::new("crash");
    let url = database(backend, &dir, "crash").await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    println!("{backend:?}: seed {seed}");
    let mut rng = Lcg(seed);
    let devices: Vec<String> = (0..DEVICES).map(|d| format!("crash-{d}")).collect();
    let mut next: Vec<u64> = vec![1; DEVICES];
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut outage: Option<Outage> = None;
    let mut killed_in_recovery = false;

    for cycle in 0..CYCLES {
        let (mqtt, http) = (free_port(), free_port());
        let log = dir.0.join(format!("cycle-{cycle}.log"));
        let mut child = spawn_server(&dir, &url, mqtt, http, &log, &[]);
        if cycle == RECOVERY_CYCLE {
            // The backlog of the outage is replayed now; storage is made to refuse again
            // as soon as the log is open, so the kill lands inside the replay.
            wait_for_log(&log, "write-ahead log open", &mut child).await;
            if backend_is_sqlite(&url) {
                outage = Some(Outage::begin(&url).await);
            }
            tokio::time::sleep(Duration::from_millis(300 + rng.below(300))).await;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            killed_in_recovery = text.contains("replaying the write-ahead log")
                && !text.contains("write-ahead log replayed")
                && !text.contains("fieldline is ready");
            kill(&mut child, &url).await;
            if let Some(o) = outage.take() {
                o.end().await;
            }
            println!("cycle {cycle}: killed during recovery: {killed_in_recovery}");
            continue;
        }
        wait_for_log(&log, "fieldline is ready", &mut child).await;
        let publishers: Vec<AckedPublisher> = devices
            .iter()
            .zip(&next)
            .map(|(d, &first)| AckedPublisher::start(mqtt, d, first, 2_000))
            .collect();
        let run_ms = 200 + rng.below(1_200);
        if cycle == OUTAGE_CYCLE {
            tokio::time::sleep(Duration::from_millis(run_ms / 2)).await;
            outage = Some(Outage::begin(&url).await);
            // Long enough for a backlog that takes several batches to replay.
            tokio::time::sleep(Duration::from_millis(run_ms / 2 + 2_000)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(run_ms)).await;
        }
        kill(&mut child, &url).await;
        if cycle == OUTAGE_CYCLE && backend_is_sqlite(&url) {
            // SQLite's lock is released at once; PostgreSQL's stays for the recovery cycle.
            if let Some(o) = outage.take() {
                o.end().await;
            }
        }
        let mut cycle_acked = 0;
        for (i, publisher) in publishers.into_iter().enumerate() {
            let (numbers, following) = publisher.finish().await;
            cycle_acked += numbers.len();
            acked.extend(numbers.into_iter().map(|n| (devices[i].clone(), n)));
            next[i] = following.max(next[i]);
        }
        println!("cycle {cycle}: ran {run_ms} ms, {cycle_acked} acknowledged");
        assert!(
            cycle_acked > 0,
            "cycle {cycle} published nothing:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    if let Some(o) = outage.take() {
        o.end().await;
    }
    assert!(
        killed_in_recovery,
        "the recovery cycle's kill came after recovery had finished"
    );

    // A last start stores whatever the log still holds; then a clean stop.
    let mut server = Server::start(&dir, &url).await;
    assert!(server.stop().success());
    println!("{backend:?}: after {CYCLES} SIGKILLs:");
    assert_stored_once(&url, &acked).await;
}

fn backend_is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite")
}
