//! Any payload on any data topic: decoding never panics, and what it accepts obeys the
//! contract's rules.
#![no_main]

use std::sync::Arc;

use fieldline_ingest::decode::{decode, Limits};
use fieldline_ingest::document::{is_valid_name, Body, Kind};
use libfuzzer_sys::fuzz_target;

const NOW_MS: i64 = 1_764_072_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let kind = match selector % 3 {
        0 => Kind::Telemetry,
        1 => Kind::Location,
        _ => Kind::Status,
    };
    let device: Arc<str> = Arc::from("fuzz-device");
    let decoded = decode(&device, kind, payload, NOW_MS, &Limits::default());
    assert!(
        decoded.documents.len() <= 1_000,
        "a batch holds at most 1,000 documents"
    );
    for doc in &decoded.documents {
        assert!(doc.ts_ms <= NOW_MS + fieldline_ingest::decode::MAX_FUTURE_MS);
        match &doc.body {
            Body::Location(l) => {
                assert!((-90.0..=90.0).contains(&l.lat) && (-180.0..=180.0).contains(&l.lon));
            }
            Body::Telemetry(t) => {
                assert!(!t.metrics.is_empty() && t.metrics.len() <= 256);
                assert!(t.metrics.iter().all(|m| m.value.is_finite()));
                assert!(t.metrics.iter().all(|m| is_valid_name(&m.name)));
            }
            Body::Status(_) => {}
        }
    }
});
