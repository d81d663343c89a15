//! One record of the log on disk: `length | crc32c | position | payload`, little-endian.
//!
//! The checksum covers the position and the payload, so a frame copied to the wrong place, a
//! torn write and a flipped bit all fail it. The payload of a publish is
//! `received_ms | topic length | topic | MQTT payload`.

use bytes::Bytes;

/// Bytes before the payload: length (4), checksum (4), position (8).
pub(crate) const HEADER: usize = 16;
/// Largest payload a frame may carry. Far above the broker's largest packet, far below
/// anything a flipped bit in a length could make plausible.
pub(crate) const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// One publish as the log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its place in the log: 1, 2, 3, … with no gaps, across segments and restarts.
    pub position: u64,
    pub received_ms: i64,
    pub topic: Bytes,
    pub payload: Bytes,
}

/// Appends the frame of one publish to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    position: u64,
    received_ms: i64,
    topic: &[u8],
    payload: &[u8],
) {
    // MQTT topics are at most 65,535 bytes, so the length always fits.
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let topic = &topic[..usize::from(topic_len)];
    let len = 8 + 2 + topic.len() + payload.len();
    let start = out.len();
    out.reserve(HEADER + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&received_ms.to_le_bytes());
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Invalid {
    /// Fewer bytes left than the frame needs: what a write cut short by a crash leaves.
    Short,
    Length(usize),
    Checksum,
    /// A valid frame, but not the position that had to come next.
    Position {
        expected: u64,
        found: u64,
    },
    Layout,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Short => write!(f, "the record is cut short"),
            Invalid::Length(len) => write!(f, "implausible record length {len}"),
            Invalid::Checksum => write!(f, "checksum mismatch"),
            Invalid::Position { expected, found } => {
                write!(f, "record {found} where record {expected} was due")
            }
            Invalid::Layout => write!(f, "the record's fields do not fit its length"),
        }
    }
}

/// Reads the frame at the start of `bytes`; on success, the record and the frame's size.
pub(crate) fn decode(bytes: &Bytes, expected: u64) -> Result<(Record, usize), Invalid> {
    let (record, size) = decode_any(bytes)?;
    if record.position != expected {
        return Err(Invalid::Position {
            expected,
            found: record.position,
        });
    }
    Ok((record, size))
}

/// Reads a frame at the start of `bytes`, whatever its position.
pub(crate) fn decode_any(bytes: &Bytes) -> Result<(Record, usize), Invalid> {
    if bytes.len() < HEADER {
        return Err(Invalid::Short);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if !(10..=MAX_PAYLOAD).contains(&len) {
        return Err(Invalid::Length(len));
    }
    if bytes.len() < HEADER + len {
        return Err(Invalid::Short);
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if crc32c::crc32c(&bytes[8..HEADER + len]) != crc {
        return Err(Invalid::Checksum);
    }
    let word = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        b
    };
    let position = u64::from_le_bytes(word(8));
    let received_ms = i64::from_le_bytes(word(16));
    let topic_len = usize::from(u16::from_le_bytes([bytes[24], bytes[25]]));
    let topic_start = HEADER + 10;
    if 10 + topic_len > len {
        return Err(Invalid::Layout);
    }
    let record = Record {
        position,
        received_ms,
        topic: bytes.slice(topic_start..topic_start + topic_len),
        payload: bytes.slice(topic_start + topic_len..HEADER + len),
    };
    Ok((record, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_every_single_flipped_bit() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            7,
            1_764_072_000_123,
            b"devices/a/location",
            b"{\"lat\":1}",
        );
        let bytes = Bytes::from(buf.clone());
        let (record, size) = decode(&bytes, 7).expect("valid frame");
        assert_eq!(size, buf.len());
        assert_eq!(record.received_ms, 1_764_072_000_123);
        assert_eq!(&record.topic[..], b"devices/a/location");
        assert_eq!(&record.payload[..], b"{\"lat\":1}");
        assert_eq!(
            decode(&bytes, 8).map(|_| ()),
            Err(Invalid::Position {
                expected: 8,
                found: 7
            })
        );
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&Bytes::from(bad), 7).is_err(),
                "bit {bit} went unnoticed"
            );
        }
        for cut in 0..buf.len() {
            assert!(decode(&Bytes::copy_from_slice(&buf[..cut]), 7).is_err());
        }
    }
}
