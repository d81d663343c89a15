//! A fence from its GeoJSON Feature: the shape, and from `properties` its name, the devices
//! it applies to and how it judges fixes (CONTRACT.md, "Geofences").

use serde_json::Value;

use super::judge::Rules;
use super::shape::{BadShape, Shape};
use super::{Devices, Fence};

/// Longest fence name.
const MAX_NAME: usize = 200;

impl Fence {
    /// Reads and checks one Feature; the error names what is wrong with it.
    pub fn from_feature(id: i64, feature: &Value) -> Result<Fence, BadShape> {
        Fence::read(id, feature, true)
    }

    /// Reads a Feature that passed [`Fence::from_feature`] when it was stored, without the
    /// costly self-intersection test.
    pub fn from_stored(id: i64, feature: &Value) -> Result<Fence, BadShape> {
        Fence::read(id, feature, false)
    }

    fn read(id: i64, feature: &Value, check: bool) -> Result<Fence, BadShape> {
        let bad = |reason: String| BadShape(reason);
        if feature.get("type").and_then(Value::as_str) != Some("Feature") {
            return Err(bad("a geofence is a GeoJSON Feature: {\"type\": \"Feature\", \"geometry\": …, \"properties\": …}".into()));
        }
        let geometry = feature
            .get("geometry")
            .filter(|g| g.is_object())
            .ok_or_else(|| bad("the Feature has no geometry object".into()))?;
        let empty = Value::Object(Default::default());
        let properties = match feature.get("properties") {
            None | Some(Value::Null) => &empty,
            Some(p @ Value::Object(_)) => p,
            Some(_) => return Err(bad("properties must be an object".into())),
        };
        let name = match properties.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(n)) if n.chars().count() <= MAX_NAME => n.clone(),
            Some(_) => {
                return Err(bad(format!(
                    "properties.name must be a string of at most {MAX_NAME} characters"
                )))
            }
        };
        let devices = Devices::from_json(properties.get("devices"))
            .map_err(|e| bad(format!("properties.{e}")))?;
        let shape = if check {
            Shape::from_geojson(geometry, properties)?
        } else {
            Shape::from_stored(geometry, properties)?
        };
        let defaults = Rules::default();
        let number = |key: &str, min: f64, default: f64| -> Result<f64, BadShape> {
            match properties.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && x >= min => Ok(x),
                    _ => Err(bad(format!(
                        "properties.{key} must be a number of at least {min}"
                    ))),
                },
            }
        };
        let optional = |key: &str| -> Result<Option<f64>, BadShape> {
            match properties.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => number(key, 0.0, 0.0).map(Some),
            }
        };
        let confirm = number("confirm_fixes", 1.0, f64::from(defaults.confirm_fixes))?;
        if confirm.fract() != 0.0 || confirm > 100.0 {
            return Err(bad(
                "properties.confirm_fixes must be a whole number from 1 to 100".into(),
            ));
        }
        let rules = Rules {
            buffer_m: number("buffer_m", 0.0, defaults.buffer_m)?,
            max_accuracy_m: number("max_accuracy_m", 0.0, defaults.max_accuracy_m)?,
            confirm_fixes: confirm as u32,
            dwell_s: optional("dwell_s")?,
            speed_limit: optional("speed_limit")?,
            overspeed_s: number("overspeed_s", 0.0, defaults.overspeed_s)?,
        };
        Ok(Fence {
            id,
            name,
            devices,
            rules,
            shape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_contract_example_and_refuses_bad_properties() {
        let fence = Fence::from_feature(
            7,
            &json!({"type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[13.37, 52.51], [13.39, 52.51], [13.39, 52.52], [13.37, 52.51]]]},
                "properties": {"name": "Depot", "devices": ["truck-*", "van-3"], "speed_limit": 8.3,
                               "dwell_s": 600, "buffer_m": 15}}),
        )
        .expect("valid");
        assert_eq!(fence.name, "Depot");
        assert_eq!(fence.rules.buffer_m, 15.0);
        assert_eq!(fence.rules.speed_limit, Some(8.3));
        assert!(fence.devices.matches("truck-9") && !fence.devices.matches("van-4"));
        let point = json!({"type": "Point", "coordinates": [0.0, 0.0]});
        for (properties, reason) in [
            (json!({"radius_m": 10, "buffer_m": -1}), "buffer_m"),
            (json!({"radius_m": 10, "devices": "all"}), "devices"),
            (
                json!({"radius_m": 10, "confirm_fixes": 0.5}),
                "confirm_fixes",
            ),
            (json!({"radius_m": 10, "name": 5}), "name"),
            (json!({}), "radius_m"),
        ] {
            let e = Fence::from_feature(
                1,
                &json!({"type": "Feature", "geometry": point, "properties": properties}),
            )
            .expect_err("invalid");
            assert!(e.0.contains(reason), "{e} should name {reason}");
        }
        assert!(Fence::from_feature(1, &json!({"type": "Point"})).is_err());
    }
}
