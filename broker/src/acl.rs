//! The per-device access rules: a device publishes only under `devices/{its id}/` and
//! subscribes only to its own commands, `devices/{its id}/commands/#` or anything below it.
//!
//! Device ids cannot contain `/`, `+` or `#` (they are `[A-Za-z0-9_.-]`), so a prefix test is
//! exact: no id is a prefix of another's topic level, and no wildcard can reach past the
//! device's own subtree.

/// Whether `device` may publish to `topic` (also the rule for its Last Will).
pub fn may_publish(device: &str, topic: &str) -> bool {
    // Publish topics never carry wildcards; rumqttd rejects them too, but the rule stands alone.
    strip_device(device, topic).is_some_and(|rest| !rest.is_empty())
        && !topic.contains(['+', '#', '\0'])
}

/// Whether `device` may subscribe to `filter`.
pub fn may_subscribe(device: &str, filter: &str) -> bool {
    let Some(rest) = strip_device(device, filter) else {
        return false;
    };
    let Some(below) = rest.strip_prefix("commands") else {
        return false;
    };
    if filter.contains('\0') {
        return false;
    }
    // `commands` itself, or `commands/...` with wildcards only as whole levels.
    below.is_empty()
        || below.strip_prefix('/').is_some_and(|levels| {
            levels.split('/').enumerate().all(|(i, level)| match level {
                "#" => i == levels.split('/').count() - 1,
                "+" => true,
                other => !other.contains(['+', '#']),
            })
        })
}

/// `devices/{device}/rest` → `rest`.
fn strip_device<'a>(device: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix("devices/")?
        .strip_prefix(device)?
        .strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_publishes_under_its_own_id_only() {
        assert!(may_publish("truck-7", "devices/truck-7/location"));
        assert!(may_publish("truck-7", "devices/truck-7/telemetry"));
        assert!(may_publish("truck-7", "devices/truck-7/status"));
        assert!(!may_publish("truck-7", "devices/truck-8/location"));
        assert!(!may_publish("truck-7", "devices/truck-77/location"));
        assert!(!may_publish("truck-77", "devices/truck-7/location"));
        assert!(!may_publish("truck-7", "devices/truck-7"));
        assert!(!may_publish("truck-7", "devices/truck-7/"));
        assert!(!may_publish("truck-7", "other/truck-7/location"));
        assert!(!may_publish("truck-7", "/devices/truck-7/location"));
        assert!(!may_publish("truck-7", "devices/truck-7/#"));
        assert!(!may_publish("truck-7", ""));
    }

    #[test]
    fn a_device_subscribes_to_its_own_commands_only() {
        for ok in [
            "devices/d1/commands/#",
            "devices/d1/commands",
            "devices/d1/commands/+",
            "devices/d1/commands/reboot",
            "devices/d1/commands/+/ack",
        ] {
            assert!(may_subscribe("d1", ok), "{ok}");
        }
        for refused in [
            "#",
            "+/+/+",
            "devices/#",
            "devices/+/commands/#",
            "devices/d1/#",
            "devices/d1/+",
            "devices/d1/+/#",
            "devices/d1/telemetry",
            "devices/d2/commands/#",
            "devices/d1x/commands/#",
            "devices/d1/commandsx",
            "devices/d1/commands/#/x",
            "devices/d1/commands/a#",
            "devices/d1/commands/a+",
            "$share/g/devices/d1/commands/#",
            "$SYS/#",
        ] {
            assert!(!may_subscribe("d1", refused), "{refused}");
        }
    }
}
