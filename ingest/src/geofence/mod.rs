//! Geofences: the fences a fix may concern, found through an R-tree of their bounding boxes,
//! then the exact test of each [`shape`] and the jitter-proof [`judge`] of each device's side.

pub mod feature;
pub mod judge;
pub mod shape;

use std::collections::HashMap;

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RTree, AABB};

pub use crate::events::devices::Devices;
use judge::Rules;
use shape::Shape;

/// Metres per degree of latitude on the haversine sphere (mean radius 6,371,008.8 m).
const M_PER_DEG: f64 = 111_195.08;

#[derive(Clone, Debug)]
pub struct Fence {
    pub id: i64,
    pub name: String,
    pub devices: Devices,
    pub rules: Rules,
    pub shape: Shape,
}

/// Every fence, indexed for the question "which fences could contain this point?".
#[derive(Default)]
pub struct Fences {
    fences: Vec<Fence>,
    by_id: HashMap<i64, usize>,
    tree: RTree<GeomWithData<Rectangle<[f64; 2]>, usize>>,
}

impl Fences {
    pub fn new(fences: Vec<Fence>) -> Fences {
        let boxes = fences
            .iter()
            .enumerate()
            .filter_map(|(i, fence)| {
                let bounds = fence.shape.bounds()?;
                let (min, max) = (bounds.min(), bounds.max());
                // A circle or corridor reaches beyond its vertices: widen the box by that
                // much, in degrees at the box's most poleward latitude.
                let reach = fence.shape.reach_m();
                let lat_pad = reach / M_PER_DEG;
                let pole = min.y.abs().max(max.y.abs()).min(89.0);
                let lon_pad = reach / (M_PER_DEG * pole.to_radians().cos());
                Some(GeomWithData::new(
                    Rectangle::from_corners(
                        [min.x - lon_pad, min.y - lat_pad],
                        [max.x + lon_pad, max.y + lat_pad],
                    ),
                    i,
                ))
            })
            .collect();
        let by_id = fences.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        Fences {
            fences,
            by_id,
            tree: RTree::bulk_load(boxes),
        }
    }

    pub fn len(&self) -> usize {
        self.fences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    pub fn get(&self, id: i64) -> Option<&Fence> {
        self.by_id.get(&id).map(|&i| &self.fences[i])
    }

    /// Fences whose box holds the point (as given, or shifted by +360° for shapes across the
    /// antimeridian) and that apply to `device`.
    pub fn candidates<'a>(
        &'a self,
        device: &'a str,
        lat: f64,
        lon: f64,
    ) -> impl Iterator<Item = &'a Fence> + 'a {
        // No box holds both a point and its shift (boxes are narrower than 360°), so the two
        // lookups never find a fence twice.
        let shifted = (lon < 0.0).then_some(lon + 360.0);
        std::iter::once(lon)
            .chain(shifted)
            .flat_map(move |x| {
                self.tree
                    .locate_in_envelope_intersecting(&AABB::from_point([x, lat]))
                    .map(|g| &self.fences[g.data])
            })
            .filter(move |f| f.devices.matches(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fence(
        id: i64,
        geometry: serde_json::Value,
        properties: serde_json::Value,
        devices: &[&str],
    ) -> Fence {
        Fence {
            id,
            name: format!("fence {id}"),
            devices: Devices::new(devices.iter().map(|d| d.to_string()).collect()),
            rules: Rules::default(),
            shape: Shape::from_geojson(&geometry, &properties).expect("valid"),
        }
    }

    #[test]
    fn the_index_finds_the_fences_a_point_may_be_in() {
        let mut fences = Vec::new();
        // A grid of 10,000 small squares, one circle and one corridor.
        for i in 0..100 {
            for j in 0..100 {
                let (x, y) = (i as f64 * 0.01, j as f64 * 0.01);
                fences.push(fence(
                    i * 100 + j,
                    json!({"type": "Polygon", "coordinates": [[[x, y], [x + 0.005, y], [x + 0.005, y + 0.005], [x, y + 0.005], [x, y]]]}),
                    json!({}),
                    &[],
                ));
            }
        }
        fences.push(fence(
            20_000,
            json!({"type": "Point", "coordinates": [5.0, 5.0]}),
            json!({"radius_m": 500.0}),
            &["truck-*"],
        ));
        fences.push(fence(
            20_001,
            json!({"type": "LineString", "coordinates": [[179.0, 10.0], [-179.0, 10.0]]}),
            json!({"width_m": 100.0}),
            &[],
        ));
        let index = Fences::new(fences);
        let ids = |device: &str, lat: f64, lon: f64| -> Vec<i64> {
            index.candidates(device, lat, lon).map(|f| f.id).collect()
        };
        assert_eq!(ids("x", 0.252, 0.372), [3725]);
        assert!(ids("x", 0.257, 0.377).is_empty(), "between squares");
        // 400 m north of the centre is inside the circle's box; only trucks get it.
        let north = 5.0 + 400.0 / M_PER_DEG;
        assert_eq!(ids("truck-1", north, 5.0), [20_000]);
        assert!(ids("van-1", north, 5.0).is_empty());
        assert_eq!(ids("x", 10.0, -179.5), [20_001], "across the antimeridian");
        assert_eq!(ids("x", 10.0, 179.5), [20_001]);
    }
}
