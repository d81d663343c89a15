//! A fence's shape from its GeoJSON geometry, checked as CONTRACT.md asks, and the two
//! questions the judge asks of it: is a point inside, and how far outside is it (metres on a
//! haversine sphere, never raw degrees).
//!
//! Shapes may cross the antimeridian. A ring whose consecutive longitudes jump by more than
//! 180° is taken the short way round: its western longitudes are shifted by +360°, so it is
//! one continuous ring, and points are tested both as given and shifted.

use geo::{
    BoundingRect, Contains, Coord, Distance, Haversine, HaversineClosestPoint, LineString,
    MultiPolygon, Point, Polygon, Rect, Validation,
};
use serde_json::Value;

/// Most vertices one fence may have.
pub const MAX_VERTICES: usize = 10_000;

#[derive(Clone, Debug)]
pub enum Shape {
    /// Polygons, holes excluded; longitudes possibly shifted past 180 (see the module doc).
    /// With whether it is small enough to be measured on a flat projection first (see
    /// [`Shape::locate_near`]), decided once when it is read.
    Area(MultiPolygon<f64>, bool),
    Circle {
        center: Point<f64>,
        radius_m: f64,
    },
    /// Within `half_width_m` of the line.
    Corridor {
        line: LineString<f64>,
        half_width_m: f64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct BadShape(pub String);

fn bad<T>(reason: impl Into<String>) -> Result<T, BadShape> {
    Err(BadShape(reason.into()))
}

impl Shape {
    /// Reads a GeoJSON `geometry` with the Feature's `properties` (for `radius_m` and
    /// `width_m`).
    pub fn from_geojson(geometry: &Value, properties: &Value) -> Result<Shape, BadShape> {
        Shape::read(geometry, properties, true)
    }

    /// As [`Shape::from_geojson`] for a shape that passed it when it was stored: the
    /// self-intersection test (quadratic in the vertices) is not run again.
    pub fn from_stored(geometry: &Value, properties: &Value) -> Result<Shape, BadShape> {
        Shape::read(geometry, properties, false)
    }

    fn read(geometry: &Value, properties: &Value, check: bool) -> Result<Shape, BadShape> {
        let kind = geometry["type"].as_str().unwrap_or("");
        let coordinates = &geometry["coordinates"];
        let positive = |name: &str| match properties.get(name) {
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok(x),
                _ => bad(format!("properties.{name} must be a number above 0")),
            },
            None => bad(format!("a {kind} fence needs properties.{name}")),
        };
        let shape = match kind {
            "Polygon" => Shape::area(MultiPolygon::new(vec![polygon(coordinates, check)?])),
            "MultiPolygon" => {
                let polygons = coordinates
                    .as_array()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| BadShape("MultiPolygon coordinates must be a non-empty array of polygons".into()))?;
                Shape::area(MultiPolygon::new(
                    polygons
                        .iter()
                        .map(|p| polygon(p, check))
                        .collect::<Result<_, _>>()?,
                ))
            }
            "Point" => Shape::Circle {
                center: Point::from(position(coordinates)?),
                radius_m: positive("radius_m")?,
            },
            "LineString" => {
                let coords = positions(coordinates)?;
                if coords.len() < 2 {
                    return bad("a LineString needs at least 2 positions");
                }
                let mut lines = [coords];
                unwrap_antimeridian(&mut lines);
                let [coords] = lines;
                Shape::Corridor {
                    line: LineString::new(coords),
                    half_width_m: positive("width_m")? / 2.0,
                }
            }
            "" => return bad("geometry.type is missing"),
            other => return bad(format!("geometry type {other} is not a fence shape (Polygon, MultiPolygon, Point with radius_m, LineString with width_m)")),
        };
        if shape.vertices() > MAX_VERTICES {
            return bad(format!("more than {MAX_VERTICES} vertices"));
        }
        Ok(shape)
    }

    fn vertices(&self) -> usize {
        match self {
            Shape::Area(m, _) => m
                .0
                .iter()
                .map(|p| {
                    p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>()
                })
                .sum(),
            Shape::Circle { .. } => 1,
            Shape::Corridor { line, .. } => line.0.len(),
        }
    }

    fn area(polygons: MultiPolygon<f64>) -> Shape {
        let small = polygons
            .bounding_rect()
            .is_some_and(|r| r.width() < SMALL_DEG && r.height() < SMALL_DEG);
        Shape::Area(polygons, small)
    }

    /// Whether the point is inside, and if not, how far outside it lies in metres.
    pub fn locate(&self, lat: f64, lon: f64) -> (bool, f64) {
        // The point as given, and shifted like a ring across the antimeridian would be.
        let as_given = Point::new(lon, lat);
        let shifted = (lon < 0.0).then(|| Point::new(lon + 360.0, lat));
        match self {
            Shape::Circle { center, radius_m } => {
                let d = Haversine.distance(*center, as_given);
                (d <= *radius_m, (d - radius_m).max(0.0))
            }
            Shape::Corridor { line, half_width_m } => {
                let d = [Some(as_given), shifted]
                    .into_iter()
                    .flatten()
                    .map(|p| distance_to(line, p))
                    .fold(f64::INFINITY, f64::min);
                (d <= *half_width_m, (d - half_width_m).max(0.0))
            }
            Shape::Area(area, _) => {
                let points = [Some(as_given), shifted];
                if holds(area, &points) {
                    (true, 0.0)
                } else {
                    (false, ring_distance(area, &points, distance_to))
                }
            }
        }
    }

    /// As [`Shape::locate`] for a judge that only asks whether the point lies more than
    /// `within_m` outside: an area's distance is first estimated on a local flat projection
    /// (no trigonometry per vertex), and measured exactly only when that estimate is within
    /// twice `within_m` of the boundary. A farther point gets the estimate, which is then
    /// beyond `within_m` either way.
    pub fn locate_near(&self, lat: f64, lon: f64, within_m: f64) -> (bool, f64) {
        let Shape::Area(area, true) = self else {
            return self.locate(lat, lon);
        };
        let points = [
            Some(Point::new(lon, lat)),
            (lon < 0.0).then(|| Point::new(lon + 360.0, lat)),
        ];
        if holds(area, &points) {
            return (true, 0.0);
        }
        let estimate = ring_distance(area, &points, flat_distance);
        if estimate > 2.0 * within_m + 1.0 {
            (false, estimate)
        } else {
            (false, ring_distance(area, &points, distance_to))
        }
    }

    /// The box a point must be in (or near) for the shape to concern it, in degrees, before
    /// any antimeridian shift is undone: the R-tree's key.
    pub fn bounds(&self) -> Option<Rect<f64>> {
        match self {
            Shape::Area(area, _) => area.bounding_rect(),
            Shape::Corridor { line, .. } => line.bounding_rect(),
            Shape::Circle { center, .. } => Some(Rect::new(center.0, center.0)),
        }
    }

    /// Metres the shape reaches beyond [`Shape::bounds`] (a circle's radius, a corridor's
    /// half width).
    pub fn reach_m(&self) -> f64 {
        match self {
            Shape::Area(..) => 0.0,
            Shape::Circle { radius_m, .. } => *radius_m,
            Shape::Corridor { half_width_m, .. } => *half_width_m,
        }
    }
}

/// Whether the area holds the point, as given or shifted across the antimeridian.
fn holds(area: &MultiPolygon<f64>, points: &[Option<Point<f64>>; 2]) -> bool {
    points.iter().flatten().any(|p| area.contains(p))
}

/// Metres from the nearer of the points to the nearest ring (exterior or hole), as `measure`
/// measures them.
fn ring_distance(
    area: &MultiPolygon<f64>,
    points: &[Option<Point<f64>>; 2],
    measure: fn(&LineString<f64>, Point<f64>) -> f64,
) -> f64 {
    points
        .iter()
        .flatten()
        .flat_map(|&p| {
            area.0.iter().flat_map(move |polygon| {
                std::iter::once(polygon.exterior())
                    .chain(polygon.interiors())
                    .map(move |ring| measure(ring, p))
            })
        })
        .fold(f64::INFINITY, f64::min)
}

/// Shapes smaller than this (degrees each way) may be measured on a flat projection first:
/// over a few hundred kilometres it is within a few percent of the haversine distance.
const SMALL_DEG: f64 = 5.0;

/// Metres from `p` to the nearest segment of `line` on an equirectangular projection centred
/// on `p`.
fn flat_distance(line: &LineString<f64>, p: Point<f64>) -> f64 {
    const M_PER_DEG: f64 = 111_195.08;
    let kx = M_PER_DEG * p.y().to_radians().cos();
    let local = |c: &Coord<f64>| ((c.x - p.x()) * kx, (c.y - p.y()) * M_PER_DEG);
    line.0
        .windows(2)
        .map(|w| {
            let ((ax, ay), (bx, by)) = (local(&w[0]), local(&w[1]));
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            let t = if len2 > 0.0 {
                (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (x, y) = (ax + t * dx, ay + t * dy);
            (x * x + y * y).sqrt()
        })
        .fold(f64::INFINITY, f64::min)
}

fn distance_to(line: &LineString<f64>, p: Point<f64>) -> f64 {
    match line.haversine_closest_point(&p) {
        geo::Closest::Intersection(_) => 0.0,
        geo::Closest::SinglePoint(q) => Haversine.distance(p, q),
        // Only for degenerate lines; the vertices then are the line.
        geo::Closest::Indeterminate => line
            .points()
            .map(|q| Haversine.distance(p, q))
            .fold(f64::INFINITY, f64::min),
    }
}

fn position(v: &Value) -> Result<Coord<f64>, BadShape> {
    let pair = v
        .as_array()
        .filter(|a| a.len() >= 2)
        .ok_or_else(|| BadShape(format!("a position must be [lon, lat], got {v}")))?;
    let (lon, lat) = match (pair[0].as_f64(), pair[1].as_f64()) {
        (Some(lon), Some(lat)) => (lon, lat),
        _ => return bad(format!("a position must be [lon, lat], got {v}")),
    };
    if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
        return bad(format!(
            "position {v} is out of range (lon -180..180, lat -90..90)"
        ));
    }
    Ok(Coord { x: lon, y: lat })
}

fn positions(v: &Value) -> Result<Vec<Coord<f64>>, BadShape> {
    let list = v
        .as_array()
        .ok_or_else(|| BadShape("coordinates must be an array of positions".into()))?;
    if list.len() > MAX_VERTICES + 1 {
        return bad(format!("more than {MAX_VERTICES} vertices"));
    }
    list.iter().map(position).collect()
}

/// Shifts western longitudes by +360° when any of the lines crosses the antimeridian: one
/// shift for all of them, so a polygon's holes stay inside its outer ring.
fn unwrap_antimeridian(lines: &mut [Vec<Coord<f64>>]) {
    let crosses = lines
        .iter()
        .any(|l| l.windows(2).any(|w| (w[1].x - w[0].x).abs() > 180.0));
    if crosses {
        for c in lines.iter_mut().flatten() {
            if c.x < 0.0 {
                c.x += 360.0;
            }
        }
    }
}

fn polygon(v: &Value, check: bool) -> Result<Polygon<f64>, BadShape> {
    let rings = v
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| BadShape("a Polygon needs at least its outer ring".into()))?;
    let mut rings = rings
        .iter()
        .enumerate()
        .map(|(i, ring)| {
            let coords = positions(ring)?;
            let what = if i == 0 {
                "outer ring".to_string()
            } else {
                format!("hole {i}")
            };
            if coords.len() < 4 {
                return bad(format!(
                    "the {what} needs at least 4 positions (a closed triangle)"
                ));
            }
            if coords.first() != coords.last() {
                return bad(format!(
                    "the {what} is not closed (its last position must repeat its first)"
                ));
            }
            Ok(coords)
        })
        .collect::<Result<Vec<_>, _>>()?;
    unwrap_antimeridian(&mut rings);
    let mut rings = rings.into_iter().map(LineString::new);
    let exterior = rings.next().unwrap_or_else(|| LineString::new(Vec::new()));
    let polygon = Polygon::new(exterior, rings.collect());
    if check {
        if let Err(e) = polygon.check_validation() {
            return bad(format!("invalid polygon: {e}"));
        }
    }
    Ok(polygon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(geometry: Value, properties: Value) -> Shape {
        Shape::from_geojson(&geometry, &properties).expect("valid shape")
    }

    /// Metres per degree of latitude on the haversine sphere.
    const M_PER_DEG: f64 = 111_195.0;

    #[test]
    fn a_polygon_with_a_hole() {
        let square = shape(
            json!({"type": "Polygon", "coordinates": [
                [[0.0, 0.0], [0.01, 0.0], [0.01, 0.01], [0.0, 0.01], [0.0, 0.0]],
                [[0.004, 0.004], [0.006, 0.004], [0.006, 0.006], [0.004, 0.006], [0.004, 0.004]]
            ]}),
            json!({}),
        );
        assert!(square.locate(0.002, 0.002).0, "inside the ring");
        let (inside, past) = square.locate(0.005, 0.005);
        assert!(!inside, "the hole is outside");
        assert!(
            (past - 0.001 * M_PER_DEG).abs() < 2.0,
            "{past} m to the hole's edge"
        );
        let (inside, past) = square.locate(0.005, 0.011);
        assert!(!inside);
        assert!(
            (past - 0.001 * M_PER_DEG).abs() < 2.0,
            "{past} m east of the ring"
        );
    }

    #[test]
    fn circles_and_corridors_in_metres() {
        let circle = shape(
            json!({"type": "Point", "coordinates": [13.4, 52.5]}),
            json!({"radius_m": 100.0}),
        );
        assert!(circle.locate(52.5 + 90.0 / M_PER_DEG, 13.4).0);
        let (inside, past) = circle.locate(52.5 + 150.0 / M_PER_DEG, 13.4);
        assert!(!inside);
        assert!((past - 50.0).abs() < 0.5, "{past}");
        let corridor = shape(
            json!({"type": "LineString", "coordinates": [[0.0, 0.0], [0.0, 1.0]]}),
            json!({"width_m": 40.0}),
        );
        assert!(
            corridor.locate(0.5, 15.0 / M_PER_DEG).0,
            "15 m off a 40 m wide road"
        );
        let (inside, past) = corridor.locate(0.5, 50.0 / M_PER_DEG);
        assert!(!inside);
        assert!((past - 30.0).abs() < 0.5, "{past}");
    }

    #[test]
    fn the_flat_estimate_decides_only_far_points() {
        let square = shape(
            json!({"type": "Polygon", "coordinates": [[[10.0, 50.0], [10.01, 50.0], [10.01, 50.01], [10.0, 50.01], [10.0, 50.0]]]}),
            json!({}),
        );
        for metres in [5.0_f64, 30.0, 200.0, 5_000.0] {
            let lat: f64 = 50.005;
            let lon = 10.01 + metres / (111_195.08 * lat.to_radians().cos());
            let (inside, exact) = square.locate(lat, lon);
            let (near_inside, near) = square.locate_near(lat, lon, 30.0);
            assert!(!inside && !near_inside);
            assert!(
                (exact - metres).abs() < metres * 0.005 + 0.01,
                "{exact} vs {metres}"
            );
            // Near the threshold the answer is exact; far off, an estimate on the same side.
            if metres <= 61.0 {
                assert_eq!(near, exact);
            } else {
                assert!(
                    near > 30.0 && (near - exact).abs() < exact * 0.01,
                    "{near} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn a_fence_across_the_antimeridian() {
        let strait = shape(
            json!({"type": "Polygon", "coordinates": [
                [[179.9, 65.0], [-179.9, 65.0], [-179.9, 65.1], [179.9, 65.1], [179.9, 65.0]]
            ]}),
            json!({}),
        );
        assert!(strait.locate(65.05, 179.95).0, "west of the line");
        assert!(strait.locate(65.05, -179.95).0, "east of the line");
        let (inside, past) = strait.locate(65.05, 179.0);
        assert!(!inside);
        assert!(past < 50_000.0, "measured the short way: {past}");
        let circle = shape(
            json!({"type": "Point", "coordinates": [180.0, 0.0]}),
            json!({"radius_m": 1000.0}),
        );
        assert!(circle.locate(0.0, -179.995).0);
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        let cases = [
            (
                json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}),
                json!({}),
                "not closed",
            ),
            (
                json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}),
                json!({}),
                "invalid polygon",
            ),
            (
                json!({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [1, 1], [0, 0]]]}),
                json!({}),
                "out of range",
            ),
            (
                json!({"type": "Polygon", "coordinates": []}),
                json!({}),
                "outer ring",
            ),
            (
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"radius_m": 0}),
                "above 0",
            ),
            (
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({}),
                "radius_m",
            ),
            (
                json!({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
                json!({"width_m": -3}),
                "above 0",
            ),
            (
                json!({"type": "LineString", "coordinates": [[0, 0]]}),
                json!({"width_m": 3}),
                "at least 2",
            ),
            (
                json!({"type": "GeometryCollection", "geometries": []}),
                json!({}),
                "not a fence shape",
            ),
            (json!({"coordinates": []}), json!({}), "missing"),
            (
                json!({"type": "Point", "coordinates": ["a", 0]}),
                json!({"radius_m": 5}),
                "[lon, lat]",
            ),
        ];
        for (geometry, properties, reason) in cases {
            let err = Shape::from_geojson(&geometry, &properties).expect_err("refused");
            assert!(err.0.contains(reason), "{geometry}: {err}");
        }
        let ring: Vec<Value> = (0..=MAX_VERTICES + 1)
            .map(|i| {
                let a = i as f64 / (MAX_VERTICES + 1) as f64 * std::f64::consts::TAU;
                json!([a.cos(), a.sin()])
            })
            .chain(std::iter::once(json!([1.0, 0.0])))
            .collect();
        let err = Shape::from_geojson(
            &json!({"type": "Polygon", "coordinates": [ring]}),
            &json!({}),
        )
        .expect_err("too many vertices");
        assert!(err.0.contains("vertices"), "{err}");
    }
}
