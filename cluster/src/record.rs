//! One record of the stream as bytes: when the broker received it, its MQTT topic (or the
//! log's own topic for a presence change) and its payload, exactly as the local
//! write-ahead log keeps them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ClusterError;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 2;

/// A record as read back, with its place in the stream.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// The stream sequence: one order across the cluster, 1, 2, 3, …
    pub seq: u64,
    pub received_ms: i64,
    pub topic: Bytes,
    pub payload: Bytes,
}

pub fn encode(received_ms: i64, topic: &[u8], payload: &[u8]) -> Bytes {
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let mut out = BytesMut::with_capacity(HEADER + topic.len() + payload.len());
    out.put_u8(VERSION);
    out.put_i64(received_ms);
    out.put_u16(topic_len);
    out.put_slice(&topic[..usize::from(topic_len)]);
    out.put_slice(payload);
    out.freeze()
}

pub fn decode(seq: u64, bytes: Bytes) -> Result<StreamRecord, ClusterError> {
    if bytes.len() < HEADER || bytes[0] != VERSION {
        return Err(ClusterError::Record(format!(
            "record {seq}: {} bytes, version {:?}",
            bytes.len(),
            bytes.first()
        )));
    }
    let received_ms = i64::from_be_bytes(bytes[1..9].try_into().unwrap_or_default());
    let topic_len = usize::from(u16::from_be_bytes([bytes[9], bytes[10]]));
    if bytes.len() < HEADER + topic_len {
        return Err(ClusterError::Record(format!(
            "record {seq}: topic of {topic_len} bytes past its end"
        )));
    }
    Ok(StreamRecord {
        seq,
        received_ms,
        topic: bytes.slice(HEADER..HEADER + topic_len),
        payload: bytes.slice(HEADER + topic_len..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let bytes = encode(1_700_000_000_123, b"devices/a/location", b"{\"lat\":1}");
        let record = decode(7, bytes).expect("decodes");
        assert_eq!(record.seq, 7);
        assert_eq!(record.received_ms, 1_700_000_000_123);
        assert_eq!(&record.topic[..], b"devices/a/location");
        assert_eq!(&record.payload[..], b"{\"lat\":1}");
        assert!(decode(1, Bytes::from_static(b"xx")).is_err());
        assert!(decode(1, Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9])).is_err());
        assert!(decode(1, Bytes::from_static(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])).is_err());
    }
}
