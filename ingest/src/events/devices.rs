//! Which devices a fence, rule or webhook applies to: exact ids and `prefix*` patterns.

use serde_json::Value;

use crate::document::is_valid_name;

/// Empty means every device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Devices(Vec<String>);

impl Devices {
    pub fn new(patterns: Vec<String>) -> Devices {
        Devices(patterns)
    }

    /// From a JSON `devices` value: absent or null for all, else an array of ids and
    /// `prefix*` patterns, each a valid device id once the `*` is taken off.
    pub fn from_json(value: Option<&Value>) -> Result<Devices, String> {
        let items = match value {
            None | Some(Value::Null) => return Ok(Devices::default()),
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(Value::Array(_)) => {
                return Err(
                    "devices must list at least one id or prefix*; leave it out for every device"
                        .into(),
                )
            }
            Some(_) => {
                return Err("devices must be an array of device ids and prefix* patterns".into())
            }
        };
        let mut patterns = Vec::with_capacity(items.len());
        for item in items {
            let Some(text) = item.as_str() else {
                return Err("devices must be an array of strings".into());
            };
            let id = text.strip_suffix('*').unwrap_or(text);
            if !(is_valid_name(id) || text == "*") {
                return Err(format!(
                    "devices entry {:?} is neither a device id nor a prefix ending in *",
                    text.chars().take(64).collect::<String>()
                ));
            }
            patterns.push(text.to_owned());
        }
        Ok(Devices(patterns))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    pub fn matches(&self, device: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => device.starts_with(prefix),
                None => p == device,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns() {
        let d = Devices::new(vec!["truck-*".into(), "van-3".into()]);
        assert!(d.matches("truck-17") && d.matches("van-3"));
        assert!(!d.matches("van-31") && !d.matches("trucks"));
        assert!(Devices::default().matches("anything"));
        assert!(Devices::from_json(Some(&json!(["a", "b-*"]))).is_ok());
        assert!(Devices::from_json(Some(&json!(["no spaces"]))).is_err());
        assert!(Devices::from_json(Some(&json!("a"))).is_err());
        assert!(Devices::from_json(Some(&json!([1]))).is_err());
        assert!(
            Devices::from_json(Some(&json!([]))).is_err(),
            "an empty list is not \"all\""
        );
    }
}
