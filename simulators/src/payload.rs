//! Documents as devices send them, in JSON or MessagePack.

use clap::ValueEnum;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Encoding {
    Json,
    Msgpack,
}

#[derive(Serialize, Clone)]
pub struct Fix {
    pub ts: i64,
    pub seq: u64,
    pub lat: f64,
    pub lon: f64,
    pub speed: f64,
    pub heading: f64,
}

#[derive(Serialize, Clone)]
pub struct Reading {
    pub ts: i64,
    pub seq: u64,
    pub metrics: std::collections::BTreeMap<&'static str, f64>,
}

/// One document, or the batch as an array.
pub fn encode<T: Serialize>(docs: &[T], encoding: Encoding) -> anyhow::Result<Vec<u8>> {
    Ok(match (encoding, docs) {
        (Encoding::Json, [one]) => serde_json::to_vec(one)?,
        (Encoding::Json, many) => serde_json::to_vec(many)?,
        (Encoding::Msgpack, [one]) => rmp_serde::to_vec_named(one)?,
        (Encoding::Msgpack, many) => rmp_serde::to_vec_named(many)?,
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Encodes and publishes; `false` once the connection is gone (the simulator then stops).
pub async fn publish<T: Serialize>(
    client: &AsyncClient,
    topic: &str,
    qos: QoS,
    docs: &[T],
    encoding: Encoding,
) -> bool {
    match encode(docs, encoding) {
        Ok(payload) => client.publish(topic, qos, false, payload).await.is_ok(),
        Err(_) => false,
    }
}
