//! PostgreSQL's binary COPY format, written by hand for the two row types we stream in, and
//! read by hand for the fixes we stream out.
//!
//! Binary COPY is the fastest way into PostgreSQL (see DESIGN.md: about 280k rows/s with the
//! index we keep, against 190k for UNNEST and 97k for multi-row VALUES), and out of it: a
//! fix read this way costs a fraction of one decoded row by row through sqlx.
//! Format: a signature and two zero words, then per row a 16-bit field count and, per field,
//! a 32-bit length (-1 for NULL) and the value in network byte order; then a -1 trailer.

use crate::batch::{PositionRow, TelemetryRow};
use crate::records::TrackRecord;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub(crate) struct CopyEncoder {
    buf: Vec<u8>,
}

impl CopyEncoder {
    pub(crate) fn new(rows: usize, row_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(SIGNATURE.len() + 8 + rows * row_bytes + 2);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self { buf }
    }

    fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn timestamptz_ms(&mut self, ms: i64) {
        let us = ms.saturating_mul(1000).saturating_sub(PG_EPOCH_OFFSET_US);
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&us.to_be_bytes());
    }

    fn text(&mut self, s: &str) {
        // Device ids and metric names are at most 64 bytes, validated upstream.
        let len = i32::try_from(s.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn int8(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.buf.extend_from_slice(&8i32.to_be_bytes());
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    fn float8(&mut self, v: Option<f64>) {
        match v {
            Some(v) => {
                self.buf.extend_from_slice(&8i32.to_be_bytes());
                self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
            }
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Columns: time, device_id, seq, lat, lon, speed, heading, alt, accuracy.
pub(crate) fn encode_positions(rows: &[PositionRow]) -> Vec<u8> {
    let mut enc = CopyEncoder::new(rows.len(), 120);
    for r in rows {
        enc.row(9);
        enc.timestamptz_ms(r.ts_ms);
        enc.text(&r.device);
        enc.int8(super::records::seq_to_db(r.seq));
        let l = &r.location;
        enc.float8(Some(l.lat));
        enc.float8(Some(l.lon));
        enc.float8(l.speed);
        enc.float8(l.heading);
        enc.float8(l.alt);
        enc.float8(l.accuracy);
    }
    enc.finish()
}

/// Columns: time, device_id, seq, metric, value.
pub(crate) fn encode_telemetry(rows: &[TelemetryRow]) -> Vec<u8> {
    let mut enc = CopyEncoder::new(rows.len(), 80);
    for r in rows {
        enc.row(5);
        enc.timestamptz_ms(r.ts_ms);
        enc.text(&r.device);
        enc.int8(super::records::seq_to_db(r.seq));
        enc.text(&r.metric);
        enc.float8(Some(r.value));
    }
    enc.finish()
}

/// Binary COPY output that does not parse as the columns asked for.
#[derive(Debug, thiserror::Error)]
#[error("unexpected binary COPY data from PostgreSQL at byte {0}")]
pub(crate) struct Malformed(usize);

/// Reads binary COPY output field by field.
struct CopyDecoder<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> CopyDecoder<'a> {
    /// Past the header; checks the signature.
    fn new(data: &'a [u8]) -> Result<Self, Malformed> {
        let mut d = Self { data, at: 0 };
        if d.take(SIGNATURE.len())? != SIGNATURE {
            return Err(Malformed(0));
        }
        d.take(4)?; // flags: no OIDs are asked for
        let extension = d.i32()?;
        d.take(usize::try_from(extension).map_err(|_| Malformed(d.at))?)?;
        Ok(d)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let bytes = self
            .data
            .get(self.at..self.at + n)
            .ok_or(Malformed(self.at))?;
        self.at += n;
        Ok(bytes)
    }

    fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next row's field count; `None` at the trailer.
    fn row(&mut self, fields: i16) -> Result<Option<()>, Malformed> {
        let b = self.take(2)?;
        match i16::from_be_bytes([b[0], b[1]]) {
            -1 => Ok(None),
            n if n == fields => Ok(Some(())),
            _ => Err(Malformed(self.at - 2)),
        }
    }

    /// An 8-byte field: int8, float8 and timestamptz alike; `None` for NULL.
    fn eight(&mut self) -> Result<Option<[u8; 8]>, Malformed> {
        match self.i32()? {
            -1 => Ok(None),
            8 => {
                let b = self.take(8)?;
                Ok(Some([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            _ => Err(Malformed(self.at - 4)),
        }
    }

    fn timestamptz_ms(&mut self) -> Result<i64, Malformed> {
        let us = i64::from_be_bytes(self.eight()?.ok_or(Malformed(self.at))?);
        Ok(us.saturating_add(PG_EPOCH_OFFSET_US).div_euclid(1000))
    }

    fn int8(&mut self) -> Result<Option<i64>, Malformed> {
        Ok(self.eight()?.map(i64::from_be_bytes))
    }

    fn float8(&mut self) -> Result<Option<f64>, Malformed> {
        Ok(self.eight()?.map(|b| f64::from_bits(u64::from_be_bytes(b))))
    }
}

/// Rows of `COPY (SELECT time, seq, lat, lon, speed, heading, alt, accuracy …) TO STDOUT
/// (FORMAT binary)`.
pub(crate) fn decode_track(data: &[u8]) -> Result<Vec<TrackRecord>, Malformed> {
    let mut d = CopyDecoder::new(data)?;
    let mut rows = Vec::with_capacity(data.len() / 100);
    while d.row(8)?.is_some() {
        let ts = d.timestamptz_ms()?;
        let seq = d.int8()?;
        let (Some(lat), Some(lon)) = (d.float8()?, d.float8()?) else {
            return Err(Malformed(d.at));
        };
        rows.push((
            ts,
            seq,
            lat,
            lon,
            d.float8()?,
            d.float8()?,
            d.float8()?,
            d.float8()?,
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn encodes_one_position_field_by_field() {
        let row = PositionRow {
            device: Arc::from("d"),
            ts_ms: 946_684_800_001, // 2000-01-01T00:00:00.001Z
            seq: None,
            location: crate::Location {
                lat: 1.0,
                lon: 2.0,
                speed: None,
                heading: None,
                alt: None,
                accuracy: Some(3.0),
            },
        };
        let bytes = encode_positions(&[row]);
        let mut expected = Vec::new();
        expected.extend_from_slice(SIGNATURE);
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&9i16.to_be_bytes());
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&1000i64.to_be_bytes());
        expected.extend_from_slice(&1i32.to_be_bytes());
        expected.push(b'd');
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        for v in [1.0f64, 2.0] {
            expected.extend_from_slice(&8i32.to_be_bytes());
            expected.extend_from_slice(&v.to_bits().to_be_bytes());
        }
        for _ in 0..3 {
            expected.extend_from_slice(&(-1i32).to_be_bytes());
        }
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&3.0f64.to_bits().to_be_bytes());
        expected.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(bytes, expected);
    }

    /// The encoder's own bytes, less the device column, read back.
    #[test]
    fn decodes_what_it_would_encode() {
        let mut enc = CopyEncoder::new(2, 100);
        for (ts, seq, speed) in [
            (946_684_800_001, None, None),
            (1_764_072_000_123, Some(7), Some(2.5)),
        ] {
            enc.row(8);
            enc.timestamptz_ms(ts);
            enc.int8(seq);
            enc.float8(Some(-33.5));
            enc.float8(Some(151.25));
            enc.float8(speed);
            enc.float8(None);
            enc.float8(None);
            enc.float8(Some(4.0));
        }
        let bytes = enc.finish();
        assert_eq!(
            decode_track(&bytes).unwrap(),
            vec![
                (
                    946_684_800_001,
                    None,
                    -33.5,
                    151.25,
                    None,
                    None,
                    None,
                    Some(4.0)
                ),
                (
                    1_764_072_000_123,
                    Some(7),
                    -33.5,
                    151.25,
                    Some(2.5),
                    None,
                    None,
                    Some(4.0)
                ),
            ]
        );
        // Cut anywhere, or a wrong field count: an error, never a panic.
        for cut in 0..bytes.len() - 1 {
            assert!(decode_track(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong = bytes.clone();
        wrong[SIGNATURE.len() + 8 + 1] = 9;
        assert!(decode_track(&wrong).is_err());
    }
}
