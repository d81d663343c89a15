//! Properties of the per-device access rules on generated ids and topics: a device never
//! reaches another device's topics, whatever the suffix or wildcard.

use fieldline_broker::acl::{may_publish, may_subscribe};
use proptest::prelude::*;

fn device_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_device_reaches_another(a in device_id(), b in device_id(), rest in "[a-z0-9/+#]{0,40}") {
        prop_assume!(a != b);
        let theirs = format!("devices/{b}/{rest}");
        prop_assert!(!may_publish(&a, &theirs));
        prop_assert!(!may_subscribe(&a, &theirs));
    }

    #[test]
    fn a_device_publishes_anywhere_under_its_own_id(a in device_id(), rest in "[a-z0-9_]{1,20}(/[a-z0-9_]{1,20}){0,3}") {
        let topic = format!("devices/{a}/{rest}");
        prop_assert!(may_publish(&a, &topic));
    }

    #[test]
    fn subscriptions_stay_under_commands(a in device_id(), filter in "[a-z0-9/+#]{0,40}") {
        let filter = format!("devices/{a}/{filter}");
        if may_subscribe(&a, &filter) {
            let commands = format!("devices/{a}/commands");
            let below = format!("{commands}/");
            prop_assert!(filter == commands || filter.starts_with(&below));
        }
    }
}
