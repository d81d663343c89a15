//! Cluster mode end to end: three `nats-server`s in one JetStream cluster, three Fieldline
//! nodes on one PostgreSQL database, QoS 1 publishers that record every acknowledged number,
//! and a node killed with SIGKILL mid-load, then the stream's leading NATS server. Every
//! acknowledged message is stored exactly once, live ids are the same on every node, and a
//! live client of the killed node resumes on another with exactly what it missed. Also: a
//! stalled owner fenced off, presence across nodes, PostgreSQL away for 30 s, a full stream
//! holding acknowledgements back, judging equal to one node's, and joining over TLS with
//! credentials (and refused without them).

mod support;

use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use sqlx::Connection;
use support::commanded::Commanded;
use support::live::{Frame, Sse, Ws};
use support::nats::{NatsCluster, SecuredNats};
use support::smtp::SmtpReceiver;
use support::*;

/// A live client reading `query` from `node` in the background until its stream ends.
async fn watch(node: &Server, query: &str) -> Arc<Mutex<Vec<Frame>>> {
    let mut sse = Sse::open(node, query, None).await;
    let frames = Arc::new(Mutex::new(Vec::new()));
    let kept = frames.clone();
    tokio::spawn(async move {
        loop {
            // Panics (ending the task) when the node is killed: what it read is kept.
            let frame = sse.event().await;
            kept.lock().expect("frames").push(frame);
        }
    });
    frames
}

/// `(n, id)` of each telemetry event read.
fn numbered(frames: &Arc<Mutex<Vec<Frame>>>) -> Vec<(u64, String)> {
    frames
        .lock()
        .expect("frames")
        .iter()
        .filter(|f| f.event.as_deref() == Some("telemetry"))
        .map(|f| {
            let n = f.json()["metrics"]["n"].as_f64().expect("n") as u64;
            (n, f.id.clone().expect("id"))
        })
        .collect()
}

/// Waits until each publisher has `more` acknowledgements than now.
async fn go_on(publishers: &[(usize, String, AckedPublisher)], more: usize) {
    let want: Vec<usize> = publishers
        .iter()
        .map(|(_, _, p)| p.acked() + more)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !publishers
        .iter()
        .zip(&want)
        .all(|((_, _, p), w)| p.acked() >= *w)
    {
        assert!(
            Instant::now() < deadline,
            "publishes not acknowledged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
                "3",
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
async fn wait_stored_once(db: &str, device: &str, acked: &[u64]) {
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
    let mut nats = NatsCluster::start(&dir).await;
    let db = database(Backend::Postgres, &dir, "cluster_kill").await;
    let mut nodes = start_nodes(&dir, &nats, &db).await;
    let state = wait_partitions_owned(&nodes[0], &["node0", "node1", "node2"]).await;
    assert_eq!(state["mode"], "cluster");
    assert_eq!(state["partitions"].as_array().map(Vec::len), Some(6));

    // Live clients of one device on node 0 and on node 2 (which will be killed).
    let query = "devices=truck-0-0&kinds=telemetry";
    let on_0 = watch(&nodes[0], query).await;
    let on_2 = watch(&nodes[2], query).await;

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
    go_on(&publishers, 300).await;

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
    go_on(&survivors, 300).await;

    // A live client of the killed node resumes on node 1 with the last id it had: exactly
    // what it missed, no reset.
    let (last_n, last_id) = numbered(&on_2)
        .last()
        .cloned()
        .expect("node 2's client read events");
    let mut resumed = Sse::open(&nodes[1], query, Some(&last_id)).await;
    let next = resumed.events(50).await;
    assert!(
        next.iter().all(|f| f.event.as_deref() == Some("telemetry")),
        "no reset: {next:?}"
    );
    let ns: Vec<u64> = next
        .iter()
        .map(|f| f.json()["metrics"]["n"].as_f64().expect("n") as u64)
        .collect();
    assert_eq!(ns, (last_n + 1..last_n + 51).collect::<Vec<_>>());
    // And a WebSocket client, resuming with the same id on node 0.
    let mut ws = Ws::open(&nodes[0], "fieldline.json").await;
    ws.subscribe(
        serde_json::json!({"type": "subscribe", "kinds": ["telemetry"],
        "devices": ["truck-0-0"], "since": last_id}),
    )
    .await;
    let mut ws_ns = Vec::new();
    while ws_ns.len() < 50 {
        let event = ws.next().await;
        assert_eq!(event["kind"], "telemetry", "no reset: {event}");
        ws_ns.push(event["metrics"]["n"].as_f64().expect("n") as u64);
    }
    assert_eq!(ws_ns, ns, "the same events as the SSE client");

    // Then the NATS server leading the stream dies: the stream goes on with two of three.
    let leader = nats.stream_leader().await;
    nats.kill(&leader);
    go_on(&survivors, 300).await;

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
        wait_stored_once(&db, device, acked).await;
    }

    // Every event both nodes sent has the same id on each.
    let ids_0: std::collections::HashMap<u64, String> = numbered(&on_0).into_iter().collect();
    let mut compared = 0;
    for (n, id) in numbered(&on_2) {
        if let Some(other) = ids_0.get(&n) {
            assert_eq!(&id, other, "n={n} has one id on node 0, another on node 2");
            compared += 1;
        }
    }
    assert!(compared >= 100, "only {compared} events seen on both nodes");

    // Both remaining nodes answer history alike, and say the same about the cluster.
    let (_, a) = nodes[0].get("/api/devices/truck-2-0").await;
    let (_, b) = nodes[1].get("/api/devices/truck-2-0").await;
    assert_eq!(a, b);
    nodes[1]
        .wait_for("/api/cluster", |state| {
            state["nodes"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    let metrics = nodes[0].metrics_text().await;
    assert!(
        metrics.contains("fieldline_cluster_publish_seconds"),
        "{metrics}"
    );

    // With a second NATS server gone there is no quorum: the nodes say they are not ready.
    let survivor = nats
        .servers
        .iter()
        .map(|s| s.name.clone())
        .find(|name| *name != leader)
        .expect("a second server");
    nats.kill(&survivor);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, ready) = nodes[0].get("/readyz").await;
        if status == 503 && ready["quorum"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without a quorum: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The flags of a node named `name` in a cluster of two partitions.
fn node_flags<'a>(urls: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "--cluster",
        urls,
        "--cluster-replicas",
        "3",
        "--cluster-partitions",
        "2",
        "--cluster-lease-seconds",
        "3",
        "--cluster-node",
        name,
    ]
}

/// Publishes `count` QoS 1 messages of `device` from `first` on through `node`; gives back the
/// acknowledged numbers and the next unused one.
async fn publish(node: &Server, device: &str, first: u64, count: usize) -> (Vec<u64>, u64) {
    let publisher = AckedPublisher::start(node.mqtt_port, device, first, 500);
    let deadline = Instant::now() + Duration::from_secs(60);
    while publisher.acked() < count {
        assert!(
            Instant::now() < deadline,
            "publishes not acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publisher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_owner_cannot_commit_once_its_partitions_moved() {
    let dir = TempDir::new("cluster-fence");
    let nats = NatsCluster::start(&dir).await;
    let urls = nats.urls();
    let db = database(Backend::Postgres, &dir, "cluster_fence").await;
    let hold = dir.0.join("hold-commits");
    let hold_path = hold.display().to_string();
    let mut a = Server::start_with_env(
        &dir,
        &db,
        &node_flags(&urls, "a"),
        &[("FIELDLINE_FAILPOINT_HOLD_COMMITS", &hold_path)],
    )
    .await;
    wait_partitions_owned(&a, &["a"]).await;

    // A's writers hold their commits; what A acknowledges waits in the stream.
    std::fs::write(&hold, b"").expect("hold file");
    let (first_acked, next) = publish(&a, "fence-1", 1, 200).await;
    let log = a.log.clone();
    wait_for_log(
        &log,
        "failpoint: holding a partition's commit",
        a.child.as_mut().expect("running"),
    )
    .await;

    // A stops (as a long GC pause or a frozen VM would) past its lease; B takes over and
    // stores everything A acknowledged.
    a.signal("STOP");
    let b = Server::start_with(&dir, &db, &node_flags(&urls, "b")).await;
    wait_partitions_owned(&b, &["b"]).await;
    wait_stored_once(&db, "fence-1", &first_acked).await;

    // A wakes with its batch still to commit: the fence refuses it.
    std::fs::remove_file(&hold).expect("hold file removed");
    a.signal("CONT");
    a.wait_for_metrics(|text| {
        text.lines().any(|line| {
            line.starts_with("fieldline_cluster_fenced_commits_total")
                && line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 1.0)
        })
    })
    .await;
    wait_stored_once(&db, "fence-1", &first_acked).await;

    // The two nodes share the partitions again and go on: still once each.
    wait_partitions_owned(&b, &["a", "b"]).await;
    let (more, next) = publish(&b, "fence-1", next, 200).await;
    let (last, _) = publish(&a, "fence-1", next, 200).await;
    let all: Vec<u64> = [first_acked, more, last].concat();
    wait_stored_once(&db, "fence-1", &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_that_moves_is_online_once_and_a_dead_nodes_devices_go_offline() {
    let dir = TempDir::new("cluster-presence");
    let nats = NatsCluster::start(&dir).await;
    let urls = nats.urls();
    let db = database(Backend::Postgres, &dir, "cluster_presence").await;
    let mut nodes = Vec::new();
    for name in ["p0", "p1", "p2"] {
        nodes.push(Server::start_with(&dir, &db, &node_flags(&urls, name)).await);
    }
    wait_partitions_owned(&nodes[0], &["p0", "p1", "p2"]).await;

    // A device on node 0 reconnects to node 1 while its first connection is still open: node
    // 0 cuts that one, and its end sends nothing offline.
    let first = Device::connect(nodes[0].mqtt_port, "mover").await;
    assert_eq!(nodes[0].status_reasons("mover", 1).await, ["connect"]);
    let mut second = Device::connect(nodes[1].mqtt_port, "mover").await;
    let log = nodes[0].log.clone();
    wait_for_log(
        &log,
        "the device connected to another node",
        nodes[0].child.as_mut().expect("running"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.is_connected() {
        assert!(Instant::now() < deadline, "node 0 kept the old connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second
        .publish("devices/mover/telemetry", r#"{"metrics":{"n":1}}"#)
        .await;
    second.wait_acked(1).await;
    second.client.disconnect().await.expect("disconnect sent");
    assert_eq!(
        nodes[2].status_reasons("mover", 2).await,
        ["connect", "disconnect"],
        "one online, and the offline of the connection that ended last"
    );

    // A command sent through node 0 reaches its device on node 1; its reply, read by the
    // partition's owner wherever that is, shows on node 2.
    let mut commanded = Commanded::connect(nodes[1].mqtt_port, "cmd-1", 4, false, None).await;
    assert_eq!(nodes[0].status_reasons("cmd-1", 1).await, ["connect"]);
    let (status, sent) = nodes[0]
        .request(
            reqwest::Method::POST,
            "/api/devices/cmd-1/commands",
            None,
            Some(serde_json::json!({"name": "ping"})),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let id = sent["id"].as_str().expect("id").to_owned();
    let got = commanded.next().await;
    assert_eq!(got.body["id"], id.as_str());
    commanded
        .publish(&format!("devices/cmd-1/replies/{id}"), br#"{"ok": true}"#)
        .await;
    nodes[2]
        .wait_for(&format!("/api/commands/{id}"), |c| c["state"] == "replied")
        .await;

    // A device of node 2, which dies: it goes offline with reason `dropped`.
    let stays = Device::connect(nodes[2].mqtt_port, "stays").await;
    assert_eq!(nodes[0].status_reasons("stays", 1).await, ["connect"]);
    let mut dead = nodes.remove(2);
    if let Some(mut child) = dead.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(stays);
    assert_eq!(
        nodes[0].status_reasons("stays", 2).await,
        ["connect", "dropped"]
    );
    // Nothing more came of the move meanwhile.
    let history = nodes[1].get_ok("/api/devices/mover/status").await;
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // PostgreSQL goes away for 30 s under load: the stream keeps acknowledging (it is the
    // spool), the writers retry, and once it is back everything acknowledged is stored once.
    let publishers: Vec<(usize, String, AckedPublisher)> = (0..2)
        .map(|i| {
            let device = format!("outage-{i}");
            let publisher = AckedPublisher::start(nodes[i].mqtt_port, &device, 1, 200);
            (i, device, publisher)
        })
        .collect();
    go_on(&publishers, 200).await;
    take_postgres_away(&db).await;
    let away = Instant::now();
    // The writer of some partition meets the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut errors = 0.0;
        for node in &nodes {
            let text = node.metrics_text().await;
            errors += node.metric(&text, "fieldline_storage_write_errors_total");
        }
        if errors >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no storage write failed while PostgreSQL was away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Devices are still acknowledged while it is away: 30 s at 200/s each.
    go_on(&publishers, 1_000).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(away.elapsed())).await;
    bring_postgres_back(&db).await;
    for (_, device, publisher) in publishers {
        let (acked, _) = publisher.stop().await;
        wait_stored_once(&db, &device, &acked).await;
    }
}

/// Waits until `delivered()` (event seqs in order of delivery, at least once) holds `want`
/// distinct ones; gives back those, repeats folded, and how many deliveries there were.
async fn delivered_once_each(
    what: &str,
    want: usize,
    delivered: impl Fn() -> Vec<u64>,
) -> (Vec<u64>, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seqs = delivered();
        let all = seqs.len();
        seqs.dedup();
        if seqs.len() >= want {
            return (seqs, all);
        }
        assert!(Instant::now() < deadline, "{} of {want} {what}", seqs.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One device's input: 40 fixes driving north through a fence and 40 readings rising
/// and falling through a rule's threshold, each with its seq and device time.
fn judged_input(base: i64) -> Vec<(&'static str, String)> {
    (0..40i64)
        .flat_map(|k| {
            let ts = base + k * 1000;
            let fix = serde_json::json!({"seq": k, "ts": ts, "lat": 10.0 + k as f64 * 0.001, "lon": 20.0});
            let temp = if k % 20 < 10 { k % 20 } else { 20 - k % 20 } as f64 * 2.0;
            let reading = serde_json::json!({"seq": k, "ts": ts, "metrics": {"temp_c": temp}});
            [("location", fix.to_string()), ("telemetry", reading.to_string())]
        })
        .collect()
}

/// Publishes `input` as `device` through the broker at `port`, QoS 1, every one acknowledged.
async fn feed(port: u16, device: &str, input: &[(&str, String)]) {
    let mut client = Device::connect(port, device).await;
    for (kind, payload) in input {
        client
            .publish(&format!("devices/{device}/{kind}"), payload.clone())
            .await;
    }
    client.wait_acked(input.len()).await;
}

/// The fence and the rule, made through `node`'s API.
async fn define(node: &Server) {
    let fence = serde_json::json!({"type": "Feature",
        "properties": {"name": "Yard"},
        "geometry": {"type": "Polygon", "coordinates": [[[19.99, 10.0105], [20.01, 10.0105], [20.01, 10.0305], [19.99, 10.0305], [19.99, 10.0105]]]}});
    let rule = serde_json::json!({"name": "Hot", "devices": ["judged-*"], "metric": "temp_c", "above": 15.0, "clear_below": 10.0});
    for (path, body) in [("/api/geofences", fence), ("/api/rules", rule)] {
        let (status, created) = node
            .request(reqwest::Method::POST, path, None, Some(body))
            .await;
        assert_eq!(status, 201, "{path}: {created}");
    }
}

/// Once every reading of the three devices is stored, their geofence and alert events as
/// (device, ts, kind, what happened): what must not depend on where they were judged.
async fn judged_events(node: &Server) -> Vec<(String, String, String, String)> {
    for i in 0..3 {
        node.wait_for(
            &format!("/api/devices/judged-{i}/track?from=0&limit=1000"),
            |t| t.as_array().map(Vec::len) == Some(40),
        )
        .await;
        node.wait_for(
            &format!("/api/devices/judged-{i}/telemetry?from=0&limit=1000"),
            |t| t.as_array().map(Vec::len) == Some(40),
        )
        .await;
    }
    let events = node
        .get_ok("/api/events?kinds=geofence,alert&limit=10000")
        .await;
    let mut judged: Vec<_> = events
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let what = e
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| {
                            !matches!(k.as_str(), "seq" | "id" | "stored" | "stored_at")
                        })
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            (
                e["device"].to_string(),
                e["ts"].to_string(),
                e["kind"].to_string(),
                what,
            )
        })
        .collect();
    judged.sort();
    judged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_that_loses_a_node_judges_as_one_node_does() {
    let dir = TempDir::new("cluster-judged");
    let base = support::geo::base_ms();
    let input = judged_input(base);

    // One node alone.
    let single_db = database(Backend::Postgres, &dir, "judged_single").await;
    let single = Server::start(&dir, &single_db).await;
    define(&single).await;
    for i in 0..3 {
        feed(single.mqtt_port, &format!("judged-{i}"), &input).await;
    }
    let alone = judged_events(&single).await;
    assert!(
        alone.iter().any(|e| e.2 == "\"geofence\"") && alone.iter().any(|e| e.2 == "\"alert\""),
        "the input crosses the fence and the threshold: {alone:?}"
    );
    drop(single);

    // Three nodes; the definitions made through the first before the others start.
    let nats = NatsCluster::start(&dir).await;
    let urls = nats.urls();
    let db = database(Backend::Postgres, &dir, "judged_cluster").await;
    let smtp = SmtpReceiver::start(&dir, free_port(), 0);
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let flags = |name: &'static str| {
        let mut flags = node_flags(&urls, name);
        flags.extend([
            "--smtp-url",
            &smtp_url,
            "--smtp-from",
            "alarms@fieldline.test",
        ]);
        flags
    };
    let mut nodes = vec![Server::start_with(&dir, &db, &flags("j0")).await];
    define(&nodes[0]).await;
    // The events go to a webhook too: delivered by one node (whichever holds the duties).
    let (hook_url, hooked) = webhook_receiver().await;
    let (status, hook) = nodes[0]
        .request(
            reqwest::Method::POST,
            "/api/webhooks",
            None,
            Some(
                serde_json::json!({"url": hook_url, "kinds": ["geofence", "alert"], "secret": "s"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    // And the alarms the rule opens and clears go to an email channel, from one node too.
    let (status, channel) = nodes[0]
        .request(
            reqwest::Method::POST,
            "/api/channels",
            None,
            Some(
                serde_json::json!({"kind": "email", "to": ["ops@example.com"],
                                    "severity": "warning", "digest_over": 1000}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{channel}");
    for name in ["j1", "j2"] {
        nodes.push(Server::start_with(&dir, &db, &flags(name)).await);
    }
    wait_partitions_owned(&nodes[0], &["j0", "j1", "j2"]).await;
    feed(nodes[0].mqtt_port, "judged-0", &input).await;
    feed(nodes[1].mqtt_port, "judged-1", &input).await;
    // The third device's first half through node 2, which then dies; the device sends all
    // of it again through node 0 (what was stored already is recognised by its seq).
    feed(nodes[2].mqtt_port, "judged-2", &input[..input.len() / 2]).await;
    let mut dead = nodes.remove(2);
    if let Some(mut child) = dead.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    feed(nodes[0].mqtt_port, "judged-2", &input).await;
    let clustered = judged_events(&nodes[1]).await;
    assert_eq!(clustered, alone);

    // Every event reached the webhook in order. Delivery is at least once: only the one in
    // flight when a node with the duties dies may come twice.
    let (seqs, all) = delivered_once_each("events to the webhook", clustered.len(), || {
        let bodies = hooked.lock().expect("bodies").clone();
        bodies.iter().filter_map(|b| b["seq"].as_u64()).collect()
    })
    .await;
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_eq!(seqs.len(), clustered.len());
    assert!(
        all - seqs.len() <= 1,
        "{} deliveries of {} events",
        all,
        seqs.len()
    );

    // Every alarm change was emailed, in order, as at-least-once allows.
    let alarms: Vec<u64> = nodes[1]
        .get_ok("/api/events?kinds=alarm&limit=10000")
        .await
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert!(
        alarms.len() >= 6,
        "the rule opens and clears alarms: {alarms:?}"
    );
    let (mailed, all) = delivered_once_each("alarm changes emailed", alarms.len(), || {
        smtp.messages()
            .iter()
            .filter_map(|m| {
                let id = m["message_id"].as_str()?;
                id.strip_prefix("<event-")?.split('.').next()?.parse().ok()
            })
            .collect()
    })
    .await;
    let mut expected = alarms.clone();
    expected.sort_unstable();
    assert_eq!(mailed, expected, "each alarm change, in order");
    assert!(
        all - mailed.len() <= 1,
        "{all} messages for {} changes",
        mailed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_over_tls_with_its_credentials_and_no_other_way() {
    let dir = TempDir::new("cluster-secured");
    let nats = SecuredNats::start(&dir).await;
    let url = nats.url();
    let db = database(Backend::Postgres, &dir, "cluster_secured").await;
    let (ca, creds, stranger) = (
        nats.ca.display().to_string(),
        nats.creds.display().to_string(),
        nats.stranger_creds.display().to_string(),
    );
    let missing = dir.0.join("missing.creds").display().to_string();
    let base = [
        "--cluster",
        url.as_str(),
        "--cluster-replicas",
        "1",
        "--cluster-node",
        "secured",
    ];
    for (extra, says) in [
        // The server's certificate is signed by a CA the node was not told to trust.
        (vec!["--cluster-credentials", creds.as_str()], "certificate"),
        // No credentials, or a user of an account the server does not know.
        (vec!["--cluster-ca", ca.as_str()], "authorization violation"),
        (
            vec![
                "--cluster-ca",
                ca.as_str(),
                "--cluster-credentials",
                stranger.as_str(),
            ],
            "authorization violation",
        ),
        (
            vec![
                "--cluster-ca",
                ca.as_str(),
                "--cluster-credentials",
                missing.as_str(),
            ],
            "cannot read the NATS credentials file",
        ),
    ] {
        let flags: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let log = Server::refused(&dir, &db, &flags).await;
        assert!(
            log.to_lowercase().contains(&says.to_lowercase()),
            "{extra:?} should say {says:?}:\n{log}"
        );
    }

    // With both, the node joins: acknowledged publishes are in the stream and stored.
    let flags: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--cluster-ca", &ca, "--cluster-credentials", &creds])
        .collect();
    let node = Server::start_with(&dir, &db, &flags).await;
    let (acked, _) = publish(&node, "secured-1", 1, 100).await;
    wait_stored_once(&db, "secured-1", &acked).await;
    let view = node.get_ok("/api/cluster").await;
    assert_eq!(view["mode"], "cluster", "{view}");
    assert_eq!(view["quorum"], true, "{view}");
    assert_eq!(view["nodes"][0]["name"], "secured", "{view}");
    assert!(
        view["stream_last_seq"].as_u64() >= Some(acked.len() as u64),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_stream_holds_acknowledgements_back_until_storage_drains_it() {
    let dir = TempDir::new("cluster-full");
    let nats = NatsCluster::start(&dir).await;
    let urls = nats.urls();
    let db = database(Backend::Postgres, &dir, "cluster_full").await;
    let mut flags = node_flags(&urls, "full");
    flags.extend([
        "--cluster-max-bytes",
        "1048576",
        "--live-history-events",
        "100",
    ]);
    let node = Server::start_with(&dir, &db, &flags).await;
    let publishers: Vec<(usize, String, AckedPublisher)> = (0..2)
        .map(|i| {
            let device = format!("full-{i}");
            let publisher = AckedPublisher::start(node.mqtt_port, &device, 1, 1_000);
            (0, device, publisher)
        })
        .collect();
    go_on(&publishers, 500).await;

    // Storage goes away: nothing stored can be trimmed, the stream fills up, and from then on
    // the node acknowledges nothing (TCP backpressure on the devices), saying why.
    take_postgres_away(&db).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = node.metrics_text().await;
        if node.metric(&text, "fieldline_cluster_publish_failures_total") >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the stream never filled up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held: Vec<usize> = publishers.iter().map(|(_, _, p)| p.acked()).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later: Vec<usize> = publishers.iter().map(|(_, _, p)| p.acked()).collect();
    assert_eq!(held, later, "acknowledged while the stream was full");
    let (status, ready) = node.get("/readyz").await;
    assert_eq!(status, 503, "ready while the stream takes nothing: {ready}");
    assert_eq!(ready["log_full"], true, "{ready}");
    assert_eq!(
        ready["quorum"], true,
        "a full stream is not a lost quorum: {ready}"
    );
    let text = node.metrics_text().await;
    assert_eq!(node.metric(&text, "fieldline_cluster_stream_full"), 1.0);

    // Storage is back: the writers drain the stream, the stored records are trimmed, and the
    // devices are acknowledged again; every acknowledged message is stored once.
    bring_postgres_back(&db).await;
    go_on(&publishers, 500).await;
    for (_, device, publisher) in publishers {
        let (acked, _) = publisher.stop().await;
        wait_stored_once(&db, &device, &acked).await;
    }
}
