//! Any topic: routing never panics, and a data route names a valid device and round-trips.
#![no_main]

use fieldline_ingest::document::is_valid_name;
use fieldline_ingest::topic::{route, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(topic) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Route::Data { device, kind }) = route(topic) {
        assert!(is_valid_name(device));
        assert_eq!(topic, format!("devices/{device}/{}", kind.as_str()));
    }
});
