//! PostgreSQL goes away while devices keep publishing, then comes back: every acknowledged
//! publish is stored once it is back, and the outage is visible to an operator meanwhile.

mod support;

use serde_json::Value;
use support::{
    bring_postgres_back, database, take_postgres_away, Backend, Device, Server, TempDir,
};

async fn stored_seqs(server: &Server, n: usize) -> Vec<u64> {
    let body = server
        .wait_for("/api/devices/o1/track?from=0&limit=100000", |b| {
            b.as_array().is_some_and(|a| a.len() >= n)
        })
        .await;
    body.as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["seq"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_waits_for_postgresql_to_come_back() {
    let dir = TempDir::new("outage");
    let url = database(Backend::Postgres, &dir, "outage").await;
    let server = Server::start(&dir, &url).await;
    let mut dev = Device::connect(server.mqtt_port, "outage").await;
    let publish = |dev: &Device, seq: u64| {
        let payload = format!(r#"{{"seq":{seq},"lat":1,"lon":2}}"#);
        let client = dev.client.clone();
        async move {
            client
                .publish(
                    "devices/o1/location",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .expect("publish queued")
        }
    };
    for seq in 1..=100 {
        publish(&dev, seq).await;
    }
    dev.wait_acked(100).await;
    assert_eq!(stored_seqs(&server, 100).await.len(), 100);

    // Take the database away: refuse new connections and end the open ones.
    take_postgres_away(&url).await;
    for seq in 101..=1100 {
        publish(&dev, seq).await;
    }
    // Devices are still acknowledged: the pipeline holds what it accepted.
    dev.wait_acked(1100).await;
    let metrics = server
        .wait_for("/metrics", |m| {
            let text = m.as_str().unwrap_or_default();
            server.metric(text, "fieldline_storage_write_errors_total") >= 1.0
        })
        .await;
    assert!(matches!(metrics, Value::String(_)));
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["storage"], false);

    bring_postgres_back(&url).await;
    let seqs = stored_seqs(&server, 1100).await;
    assert_eq!(
        seqs,
        (1..=1100).collect::<Vec<u64>>(),
        "every acknowledged fix, once, in order"
    );
    let text = server.metrics_text().await;
    assert_eq!(
        server.metric(&text, "fieldline_broker_lost_messages_total"),
        0.0
    );
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, 200);
}
