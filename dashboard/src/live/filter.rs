//! What a client wants to see: kinds, devices and a bounding box, as the contract defines them.

use std::collections::HashSet;
use std::sync::Arc;

use fieldline_ingest::document::{is_valid_name, Body, Kind};
use fieldline_store::derived::EventKind;

use super::event::LiveEvent;

/// The most devices one filter may name.
const MAX_DEVICES: usize = 10_000;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// `None`: every kind.
    kinds: Option<Vec<&'static str>>,
    /// `None`: every device.
    devices: Option<HashSet<Arc<str>>>,
    bbox: Option<BoundingBox>,
}

/// west, south, east, north in degrees; a box whose west is greater than its east crosses the
/// antimeridian.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundingBox {
    pub west: f64,
    pub south: f64,
    pub east: f64,
    pub north: f64,
}

impl BoundingBox {
    fn contains(&self, lat: f64, lon: f64) -> bool {
        let in_lon = if self.west <= self.east {
            (self.west..=self.east).contains(&lon)
        } else {
            lon >= self.west || lon <= self.east
        };
        in_lon && (self.south..=self.north).contains(&lat)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error(
        "unknown kind {0:?}: use location, telemetry, status, geofence, alert, alarm or command"
    )]
    UnknownKind(String),
    #[error("device id {0:?} is not valid: 1 to 64 characters from [A-Za-z0-9_.-]")]
    BadDevice(String),
    #[error("at most {MAX_DEVICES} devices per filter")]
    TooManyDevices,
    #[error("bbox must be four numbers west,south,east,north with south <= north, latitudes in [-90, 90] and longitudes in [-180, 180]")]
    BadBbox,
}

impl Filter {
    /// From the query parameters of `/api/stream`: comma-separated lists.
    pub fn from_query(
        kinds: Option<&str>,
        devices: Option<&str>,
        bbox: Option<&str>,
    ) -> Result<Self, FilterError> {
        let list = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let bbox = bbox
            .map(|b| {
                list(b)
                    .iter()
                    .map(|n| n.parse::<f64>().map_err(|_| FilterError::BadBbox))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Self::from_lists(kinds.map(list), devices.map(list), bbox)
    }

    /// From the fields of a WebSocket subscribe message.
    pub fn from_lists(
        kinds: Option<Vec<String>>,
        devices: Option<Vec<String>>,
        bbox: Option<Vec<f64>>,
    ) -> Result<Self, FilterError> {
        let kinds = kinds
            .filter(|k| !k.is_empty())
            .map(|names| {
                names
                    .iter()
                    .map(|name| {
                        Kind::ALL
                            .into_iter()
                            .map(Kind::as_str)
                            .chain(EventKind::ALL.into_iter().map(EventKind::as_str))
                            .find(|k| k == name)
                            .ok_or_else(|| {
                                FilterError::UnknownKind(name.chars().take(64).collect())
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let devices = devices
            .filter(|d| !d.is_empty())
            .map(|ids| {
                if ids.len() > MAX_DEVICES {
                    return Err(FilterError::TooManyDevices);
                }
                ids.into_iter()
                    .map(|id| {
                        if is_valid_name(&id) {
                            Ok(Arc::from(id))
                        } else {
                            Err(FilterError::BadDevice(id.chars().take(64).collect()))
                        }
                    })
                    .collect::<Result<HashSet<_>, _>>()
            })
            .transpose()?;
        let bbox = bbox.map(|b| match b[..] {
            [west, south, east, north]
                if (-180.0..=180.0).contains(&west)
                    && (-180.0..=180.0).contains(&east)
                    && (-90.0..=90.0).contains(&south)
                    && (-90.0..=90.0).contains(&north)
                    && south <= north =>
            {
                Ok(BoundingBox {
                    west,
                    south,
                    east,
                    north,
                })
            }
            _ => Err(FilterError::BadBbox),
        });
        Ok(Self {
            kinds,
            devices,
            bbox: bbox.transpose()?,
        })
    }

    /// The devices this filter is limited to, for the hub's index.
    pub(crate) fn devices(&self) -> Option<&HashSet<Arc<str>>> {
        self.devices.as_ref()
    }

    /// The bounding box rule: location events inside the box, and every other kind of a
    /// device whose newest position (when the event was published) is inside it.
    pub(crate) fn matches(&self, event: &LiveEvent) -> bool {
        if let Some(kinds) = &self.kinds {
            if !kinds.contains(&event.kind()) {
                return false;
            }
        }
        if let Some(devices) = &self.devices {
            if !devices.contains(event.device()) {
                return false;
            }
        }
        match (&self.bbox, event.document().map(|d| &d.body)) {
            (None, _) => true,
            (Some(bbox), Some(Body::Location(l))) => bbox.contains(l.lat, l.lon),
            (Some(bbox), _) => event
                .device_position
                .is_some_and(|(lat, lon)| bbox.contains(lat, lon)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_query_forms() {
        let f = Filter::from_query(Some("location,status"), Some("a,b"), Some("-75,40,-73,41"))
            .expect("valid filter");
        assert_eq!(f.kinds, Some(vec!["location", "status"]));
        assert_eq!(f.devices.as_ref().map(HashSet::len), Some(2));
        assert!(f.bbox.is_some_and(|b| b.contains(40.5, -74.0)));
        assert_eq!(
            Filter::from_query(None, None, None),
            Ok(Filter::default()),
            "no parameters: everything"
        );
    }

    #[test]
    fn refuses_bad_filters_with_reasons() {
        assert_eq!(
            Filter::from_query(Some("location,weather"), None, None),
            Err(FilterError::UnknownKind("weather".into()))
        );
        assert!(matches!(
            Filter::from_query(None, Some("ok,not ok"), None),
            Err(FilterError::BadDevice(_))
        ));
        for bbox in [
            "1,2,3",
            "1,2,3,4,5",
            "a,b,c,d",
            "0,50,10,40",
            "0,-91,10,40",
            "-181,0,0,1",
            "NaN,0,1,1",
            "inf,0,1,1",
        ] {
            assert_eq!(
                Filter::from_query(None, None, Some(bbox)),
                Err(FilterError::BadBbox),
                "{bbox}"
            );
        }
    }

    #[test]
    fn a_box_across_the_antimeridian() {
        let b = BoundingBox {
            west: 170.0,
            south: -10.0,
            east: -170.0,
            north: 10.0,
        };
        assert!(b.contains(0.0, 175.0));
        assert!(b.contains(0.0, -175.0));
        assert!(!b.contains(0.0, 0.0));
    }
}
