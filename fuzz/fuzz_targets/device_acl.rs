//! Any device id and topic or filter: what the access rules allow stays inside the device's
//! own subtree.
#![no_main]

use fieldline_broker::acl::{may_publish, may_subscribe};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((device, topic)) = text.split_once('\n') else {
        return;
    };
    if !fieldline_ingest::document::is_valid_name(device) {
        return;
    }
    let own = format!("devices/{device}/");
    if may_publish(device, topic) {
        assert!(topic.starts_with(&own) && topic.len() > own.len());
        assert!(!topic.contains(['+', '#']));
    }
    if may_subscribe(device, topic) {
        assert!(topic == format!("{own}commands") || topic.starts_with(&format!("{own}commands/")));
    }
});
