//! Cluster mode end to end: three `nats-server`s in one JetStream cluster, three Fieldline
//! nodes on one PostgreSQL database, QoS 1 publishers that record every acknowledged number,
//! and a node killed with SIGKILL mid-load. Every acknowledged message is stored exactly once.

mod support;

use std::time::{Duration, Instant};

use sqlx::Connection;
use support::nats::NatsCluster;
use support::*;

/// Three nodes on one database and one NATS cluster.
async fn start_nodes(dir: &TempDir, nats: &NatsCluster, db: &str) -> Vec<Server> {
    let urls = nats.urls();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("node{i}");
        let server = Server::start_with(
            dir,
            db,
            &[
                "--cluster",
                &urls,
                "--cluster-replicas",
                "3",
                "--cluster-partitions",
                "6",
                "--cluster-lease-seconds",
                "2",
                "--cluster-node",
                &name,
            ],
        )
        .await;
        nodes.push(server);
    }
    nodes
}

/// Waits until `node` says every partition has an owner among `alive` nodes' names.
async fn wait_partitions_owned(node: &Server, alive: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, state) = node.get("/api/cluster").await;
        let owned = state["partitions"].as_array().is_some_and(|parts| {
            !parts.is_empty()
                && parts.iter().all(|p| {
                    p["owner"]
                        .as_str()
                        .is_some_and(|o| alive.iter().any(|a| o.starts_with(&format!("{a}-"))))
                })
        });
        if owned {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not all owned by {alive:?} after 60 s: {state}\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each acknowledged `n` of `device`, as stored: waits (up to 60 s) until all are there,
/// and fails on any stored twice.
async fn assert_stored_once(db: &str, device: &str, acked: &[u64]) {
    let mut conn = sqlx::PgConnection::connect(db).await.expect("database");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(f64, i64)> = sqlx::query_as(
            "SELECT value, count(*) FROM telemetry WHERE device_id = $1 AND metric = 'n' GROUP BY value",
        )
        .bind(device)
        .fetch_all(&mut conn)
        .await
        .expect("telemetry query");
        let doubled: Vec<_> = rows.iter().filter(|(_, c)| *c > 1).collect();
        assert!(doubled.is_empty(), "{device}: stored twice: {doubled:?}");
        let stored: std::collections::HashSet<u64> = rows.iter().map(|(v, _)| *v as u64).collect();
        let missing: Vec<_> = acked.iter().filter(|n| !stored.contains(n)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{device}: {} acknowledged messages never stored, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_loses_nothing_acknowledged_and_stores_nothing_twice() {
    let dir = TempDir::new("cluster-kill");
    let nats = NatsCluster::start(&dir);
    let db = database(Backend::Postgres, &dir, "cluster_kill").await;
    let mut nodes = start_nodes(&dir, &nats, &db).await;
    let state = wait_partitions_owned(&nodes[0], &["node0", "node1", "node2"]).await;
    assert_eq!(state["mode"], "cluster");
    assert_eq!(state["partitions"].as_array().map(Vec::len), Some(6));

    // Two devices on each node, publishing QoS 1 and recording what was acknowledged.
    let mut publishers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for k in 0..2 {
            let device = format!("truck-{i}-{k}");
            publishers.push((
                i,
                device.clone(),
                AckedPublisher::start(node.mqtt_port, &device, 1, 200),
            ));
        }
    }
    let wait_acked = |publishers: &Vec<(usize, String, AckedPublisher)>, at_least: usize| {
        publishers.iter().all(|(_, _, p)| p.acked() >= at_least)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wait_acked(&publishers, 300) {
        assert!(
            Instant::now() < deadline,
            "publishes not acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL node 2 mid-load: its publishers' connections die with it.
    let mut killed = nodes.remove(2);
    if let Some(mut child) = killed.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut results = Vec::new();
    let (survivors, dead): (Vec<_>, Vec<_>) = publishers.into_iter().partition(|(i, _, _)| *i < 2);
    for (_, device, publisher) in dead {
        let (acked, _) = publisher.finish().await;
        results.push((device, acked));
    }
    // The survivors go on; the dead node's partitions pass to the others.
    wait_partitions_owned(&nodes[0], &["node0", "node1"]).await;
    let more: Vec<usize> = survivors.iter().map(|(_, _, p)| p.acked() + 300).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !survivors
        .iter()
        .zip(&more)
        .all(|((_, _, p), m)| p.acked() >= *m)
    {
        assert!(
            Instant::now() < deadline,
            "publishes not acknowledged after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, device, publisher) in survivors {
        let (acked, _) = publisher.stop().await;
        results.push((device, acked));
    }
    for (device, acked) in &results {
        assert!(
            acked.len() >= 300,
            "{device}: only {} acknowledged",
            acked.len()
        );
        assert_stored_once(&db, device, acked).await;
    }

    // Both remaining nodes answer history alike, and say the same about the cluster.
    let (_, a) = nodes[0].get("/api/devices/truck-2-0").await;
    let (_, b) = nodes[1].get("/api/devices/truck-2-0").await;
    assert_eq!(a["id"], b["id"]);
    let state = nodes[1].get_ok("/api/cluster").await;
    assert_eq!(state["nodes"].as_array().map(Vec::len), Some(2), "{state}");
    let metrics = nodes[0].metrics_text().await;
    assert!(
        metrics.contains("fieldline_cluster_publish_seconds"),
        "{metrics}"
    );
}
