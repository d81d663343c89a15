//! Topic names: which device sent what.

use crate::document::{is_valid_name, Kind};
use crate::rejection::{Reason, Rejection};

/// What a topic means for ingest.
#[derive(Debug, PartialEq)]
pub enum Route<'a> {
    /// A document stream of a device.
    Data { device: &'a str, kind: Kind },
    /// `devices/{id}/commands/...`: server-to-device traffic, forwarded by the broker and not
    /// ingested.
    Command,
    /// `devices/{id}/replies/{command id}`: a device's answer to a command.
    Reply { device: &'a str, command: &'a str },
}

/// Parses `devices/{device}/{telemetry|location|status}` and replies to commands (and
/// recognises commands).
pub fn route(topic: &str) -> Result<Route<'_>, Rejection> {
    let mut parts = topic.split('/');
    let (Some("devices"), Some(device), Some(leaf)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(unknown(topic));
    };
    let rest = parts.next();
    if !is_valid_name(device) {
        return Err(Rejection::new(
            Reason::InvalidDeviceId,
            "device id must be 1 to 64 characters from [A-Za-z0-9_.-]",
        ));
    }
    let kind = match (leaf, rest) {
        ("commands", _) => return Ok(Route::Command),
        ("replies", Some(command)) if is_valid_name(command) && parts.next().is_none() => {
            return Ok(Route::Reply { device, command });
        }
        ("telemetry", None) => Kind::Telemetry,
        ("location", None) => Kind::Location,
        ("status", None) => Kind::Status,
        _ => return Err(unknown(topic)),
    };
    Ok(Route::Data { device, kind })
}

fn unknown(topic: &str) -> Rejection {
    let _ = topic;
    Rejection::new(
        Reason::UnknownTopic,
        "expected devices/{device}/telemetry, /location, /status or /replies/{command}",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_three_data_topics() {
        assert_eq!(
            route("devices/truck-7/location"),
            Ok(Route::Data {
                device: "truck-7",
                kind: Kind::Location
            })
        );
        assert_eq!(
            route("devices/a.b_c/telemetry"),
            Ok(Route::Data {
                device: "a.b_c",
                kind: Kind::Telemetry
            })
        );
        assert_eq!(
            route("devices/x/status"),
            Ok(Route::Data {
                device: "x",
                kind: Kind::Status
            })
        );
        assert_eq!(route("devices/x/commands/reboot"), Ok(Route::Command));
        assert_eq!(
            route("devices/x/replies/c1"),
            Ok(Route::Reply {
                device: "x",
                command: "c1"
            })
        );
    }

    #[test]
    fn rejects_unknown_topics_and_bad_device_ids() {
        for topic in [
            "",
            "devices",
            "devices/x",
            "devices/x/speed",
            "devices/x/location/extra",
            "devices/x/replies",
            "devices/x/replies/a/b",
            "devices/x/replies/a b",
            "other/x/location",
            "/devices/x/location",
        ] {
            assert_eq!(
                route(topic).map_err(|r| r.reason),
                Err(Reason::UnknownTopic),
                "{topic}"
            );
        }
        let long = format!("devices/{}/location", "a".repeat(65));
        for topic in [
            "devices//location",
            "devices/a b/location",
            "devices/é/location",
            long.as_str(),
            "devices/a+b/location",
        ] {
            assert_eq!(
                route(topic).map_err(|r| r.reason),
                Err(Reason::InvalidDeviceId),
                "{topic}"
            );
        }
    }
}
