//! A position fix as a device reports it: one type from decoding, through the rows storage
//! writes, to the track points history reads return.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    /// m/s.
    pub speed: Option<f64>,
    /// Degrees clockwise from north.
    pub heading: Option<f64>,
    /// Metres.
    pub alt: Option<f64>,
    /// Metres: the radius the fix is within.
    pub accuracy: Option<f64>,
}
