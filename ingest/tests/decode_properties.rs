//! Properties of what devices control, checked on generated input in every test run (the
//! fuzz targets in `fuzz/` search the same ground for longer): decoding and topic routing
//! never panic on any input, and valid documents survive either encoding unchanged.

use std::sync::Arc;

use fieldline_ingest::decode::{decode, Limits};
use fieldline_ingest::document::{Body, Kind};
use fieldline_ingest::topic::{route, Route};
use proptest::prelude::*;

const NOW_MS: i64 = 1_764_072_000_000;

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Telemetry),
        Just(Kind::Location),
        Just(Kind::Status)
    ]
}

fn device_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_without_panicking(kind in kind(), payload in proptest::collection::vec(any::<u8>(), 0..2_048)) {
        let device: Arc<str> = Arc::from("d1");
        let decoded = decode(&device, kind, &payload, NOW_MS, &Limits::default());
        prop_assert!(decoded.documents.len() <= 1_000);
        prop_assert!(!decoded.documents.is_empty() || !decoded.rejections.is_empty());
    }

    #[test]
    fn json_shaped_garbage_decodes_without_panicking(text in r#"[\[\{][ -~]{0,200}"#, kind in kind()) {
        let device: Arc<str> = Arc::from("d1");
        let _ = decode(&device, kind, text.as_bytes(), NOW_MS, &Limits::default());
    }

    #[test]
    fn valid_fixes_decode_the_same_from_json_and_messagepack(
        lat in -90.0f64..=90.0,
        lon in -180.0f64..=180.0,
        speed in proptest::option::of(0.0f64..500.0),
        seq in any::<u64>(),
        ts in (NOW_MS - 86_400_000)..NOW_MS,
    ) {
        let doc = serde_json::json!({"ts": ts, "seq": seq, "lat": lat, "lon": lon, "speed": speed});
        let device: Arc<str> = Arc::from("d1");
        let from_json = decode(&device, Kind::Location, doc.to_string().as_bytes(), NOW_MS, &Limits::default());
        let packed = rmp_serde::to_vec_named(&doc).expect("encodes");
        let from_msgpack = decode(&device, Kind::Location, &packed, NOW_MS, &Limits::default());
        prop_assert!(from_json.rejections.is_empty(), "{:?}", from_json.rejections);
        prop_assert_eq!(&from_json.documents, &from_msgpack.documents);
        let [fix] = &from_json.documents[..] else { panic!("one document") };
        prop_assert_eq!(fix.seq, Some(seq));
        prop_assert_eq!(fix.ts_ms, ts);
        let Body::Location(l) = &fix.body else { panic!("a location") };
        prop_assert_eq!((l.lat, l.lon, l.speed), (lat, lon, speed));
    }

    #[test]
    fn any_topic_routes_without_panicking(topic in "\\PC{0,80}") {
        if let Ok(Route::Data { device, kind }) = route(&topic) {
            let expected = format!("devices/{device}/{}", kind.as_str());
            prop_assert_eq!(topic.clone(), expected);
        }
    }

    #[test]
    fn data_topics_route_to_their_device(device in device_id(), kind in kind()) {
        let topic = format!("devices/{device}/{}", kind.as_str());
        prop_assert_eq!(route(&topic).ok(), Some(Route::Data { device: &device, kind }));
    }
}
