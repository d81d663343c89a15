//! What a stored track says beyond its fixes: a thinned line for drawing ([`simplify`]) and
//! its trips and stops ([`trips`]).

pub mod simplify;
pub mod trips;

use geo::{Distance, Haversine, Point};

/// Great-circle metres between two `(lat, lon)` positions.
pub fn metres_between(a: (f64, f64), b: (f64, f64)) -> f64 {
    Haversine.distance(Point::new(a.1, a.0), Point::new(b.1, b.0))
}
