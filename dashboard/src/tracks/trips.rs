//! Trips and stops of a track, found in one pass over its fixes (oldest first), so a month of
//! fixes never has to sit in memory.
//!
//! A stop is a stretch of at least `min_stop_ms` in which every fix is slow: below
//! `stop_speed` when it reports a speed, within [`STILL_RADIUS_M`] of the stretch's first fix
//! when it does not. A trip is what lies between stops: from the last fix of one stop (or the
//! track's first fix) to the first fix of the next (or the track's last).

use serde::Serialize;

use super::metres_between;
use fieldline_store::time_format::format_ms;

/// Fixes without a speed count as stopped while they stay this close to where the stop began.
pub const STILL_RADIUS_M: f64 = 50.0;

#[derive(Debug, Clone, Copy)]
pub struct Fix {
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Trip {
    pub start: String,
    pub end: String,
    pub from: LatLon,
    pub to: LatLon,
    pub distance_m: f64,
    pub duration_s: f64,
    /// Metres per second: the fastest reported speed, or between fixes when none reports one.
    pub max_speed: f64,
    pub avg_speed: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Stop {
    pub start: String,
    pub end: String,
    /// The mean position of its fixes.
    pub lat: f64,
    pub lon: f64,
    pub duration_s: f64,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct TripsAndStops {
    pub trips: Vec<Trip>,
    pub stops: Vec<Stop>,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub min_stop_ms: i64,
    pub stop_speed: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_stop_ms: 300_000,
            stop_speed: 1.0,
        }
    }
}

/// A trip being followed: enough to report it, never its fixes.
#[derive(Debug, Clone, Copy)]
struct Leg {
    first: Fix,
    last: Fix,
    distance_m: f64,
    max_speed: f64,
}

impl Leg {
    fn new(fix: Fix) -> Self {
        Self {
            first: fix,
            last: fix,
            distance_m: 0.0,
            max_speed: fix.speed.unwrap_or(0.0),
        }
    }

    fn extend(&mut self, fix: Fix) {
        let step = metres_between((self.last.lat, self.last.lon), (fix.lat, fix.lon));
        let speed = match fix.speed {
            Some(s) => s,
            None if fix.ts_ms > self.last.ts_ms => {
                step * 1000.0 / (fix.ts_ms - self.last.ts_ms) as f64
            }
            None => 0.0,
        };
        self.distance_m += step;
        self.max_speed = self.max_speed.max(speed);
        self.last = fix;
    }

    fn trip(&self) -> Option<Trip> {
        let duration_ms = self.last.ts_ms - self.first.ts_ms;
        if duration_ms <= 0 || self.distance_m <= 0.0 {
            return None;
        }
        let duration_s = duration_ms as f64 / 1000.0;
        Some(Trip {
            start: format_ms(self.first.ts_ms),
            end: format_ms(self.last.ts_ms),
            from: LatLon {
                lat: self.first.lat,
                lon: self.first.lon,
            },
            to: LatLon {
                lat: self.last.lat,
                lon: self.last.lon,
            },
            distance_m: self.distance_m,
            duration_s,
            max_speed: self.max_speed,
            avg_speed: self.distance_m / duration_s,
        })
    }
}

/// A stretch of slow fixes that may turn out to be a stop.
#[derive(Debug, Clone, Copy)]
struct Still {
    first: Fix,
    last: Fix,
    lat_sum: f64,
    lon_sum: f64,
    fixes: u32,
    /// The trip as it stood at `first`: what it is if this becomes a stop.
    leg_before: Leg,
}

impl Still {
    fn stop(&self) -> Stop {
        Stop {
            start: format_ms(self.first.ts_ms),
            end: format_ms(self.last.ts_ms),
            lat: self.lat_sum / f64::from(self.fixes),
            lon: self.lon_sum / f64::from(self.fixes),
            duration_s: (self.last.ts_ms - self.first.ts_ms) as f64 / 1000.0,
        }
    }
}

pub struct Detector {
    settings: Settings,
    leg: Option<Leg>,
    still: Option<Still>,
    found: TripsAndStops,
}

impl Detector {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            leg: None,
            still: None,
            found: TripsAndStops::default(),
        }
    }

    fn slow(&self, fix: &Fix, anchor: Option<&Fix>) -> bool {
        match (fix.speed, anchor) {
            (Some(speed), _) => speed < self.settings.stop_speed,
            (None, Some(a)) => metres_between((a.lat, a.lon), (fix.lat, fix.lon)) <= STILL_RADIUS_M,
            // Without a speed, the first fix of a stretch is where a stop would begin.
            (None, None) => true,
        }
    }

    fn long_enough(&self, still: &Still) -> bool {
        still.last.ts_ms - still.first.ts_ms >= self.settings.min_stop_ms
    }

    pub fn push(&mut self, fix: Fix) {
        let leg = match self.leg.as_mut() {
            Some(leg) => {
                leg.extend(fix);
                *leg
            }
            None => *self.leg.insert(Leg::new(fix)),
        };
        let anchor = self.still.as_ref().map(|s| s.first);
        if self.slow(&fix, anchor.as_ref()) {
            match self.still.as_mut() {
                Some(still) => {
                    still.last = fix;
                    still.lat_sum += fix.lat;
                    still.lon_sum += fix.lon;
                    still.fixes += 1;
                }
                None => self.start_still(fix, leg),
            }
            return;
        }
        if let Some(still) = self.still.take() {
            if self.long_enough(&still) {
                self.found.trips.extend(still.leg_before.trip());
                self.found.stops.push(still.stop());
                // The trip that ends the stop starts at its last fix.
                let mut next = Leg::new(still.last);
                next.extend(fix);
                self.leg = Some(next);
            }
            // A fix without a speed that left the stretch may begin the next one.
            if fix.speed.is_none() {
                if let Some(leg) = self.leg {
                    self.start_still(fix, leg);
                }
            }
        }
    }

    /// A stretch beginning at `fix`; `leg` is the trip up to and including it.
    fn start_still(&mut self, fix: Fix, leg: Leg) {
        self.still = Some(Still {
            first: fix,
            last: fix,
            lat_sum: fix.lat,
            lon_sum: fix.lon,
            fixes: 1,
            leg_before: leg,
        });
    }

    pub fn finish(mut self) -> TripsAndStops {
        match self.still.take() {
            Some(still) if self.long_enough(&still) => {
                self.found.trips.extend(still.leg_before.trip());
                self.found.stops.push(still.stop());
            }
            _ => {
                if let Some(leg) = self.leg {
                    self.found.trips.extend(leg.trip());
                }
            }
        }
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives east at `speed` m/s for `secs` seconds from `(lat, lon)` at 1 Hz.
    fn drive(fixes: &mut Vec<Fix>, secs: i64, speed: f64, with_speed: bool) {
        let last = *fixes.last().unwrap_or(&Fix {
            ts_ms: 0,
            lat: 52.0,
            lon: 13.0,
            speed: Some(0.0),
        });
        let metres_per_degree = 111_195.0 * 52f64.to_radians().cos();
        for i in 1..=secs {
            fixes.push(Fix {
                ts_ms: last.ts_ms + i * 1000,
                lat: last.lat,
                lon: last.lon + speed * i as f64 / metres_per_degree,
                speed: with_speed.then_some(speed),
            });
        }
    }

    fn run(fixes: &[Fix]) -> TripsAndStops {
        let mut d = Detector::new(Settings::default());
        for f in fixes {
            d.push(*f);
        }
        d.finish()
    }

    #[test]
    fn stops_and_trips_of_a_known_track() {
        for with_speed in [true, false] {
            let mut fixes = vec![Fix {
                ts_ms: 0,
                lat: 52.0,
                lon: 13.0,
                speed: with_speed.then_some(10.0),
            }];
            drive(&mut fixes, 600, 10.0, with_speed); // 6 km
            drive(&mut fixes, 900, 0.0, with_speed); // 15 min stop
            drive(&mut fixes, 300, 20.0, with_speed); // 6 km
            drive(&mut fixes, 120, 0.0, with_speed); // too short for a stop
            drive(&mut fixes, 300, 10.0, with_speed); // 3 km
            drive(&mut fixes, 400, 0.0, with_speed); // a stop at the end
            let found = run(&fixes);
            assert_eq!(found.stops.len(), 2, "{with_speed}: {:?}", found.stops);
            assert_eq!(found.trips.len(), 2, "{with_speed}: {:?}", found.trips);
            if with_speed {
                // From the first fix at 0 m/s to the last.
                assert_eq!(found.stops[0].duration_s, 899.0);
                assert_eq!(found.stops[1].duration_s, 399.0);
            } else {
                // Without speeds a stop begins at the first fix within 50 m of the others:
                // up to 5 s of driving at 10 m/s before the vehicle stood still.
                for (stop, still) in found.stops.iter().zip([899.0, 399.0]) {
                    assert!((still..=still + 6.0).contains(&stop.duration_s), "{stop:?}");
                }
            }
            let first = &found.trips[0];
            assert!((first.distance_m - 6_000.0).abs() < 60.0, "{first:?}");
            let second = &found.trips[1];
            assert!((second.distance_m - 9_000.0).abs() < 90.0, "{second:?}");
            assert!((second.max_speed - 20.0).abs() < 0.2, "{second:?}");
        }
    }

    #[test]
    fn a_track_without_stops_is_one_trip() {
        let mut fixes = Vec::new();
        drive(&mut fixes, 100, 15.0, true);
        let found = run(&fixes);
        assert!(found.stops.is_empty());
        assert_eq!(found.trips.len(), 1);
        assert_eq!(found.trips[0].duration_s, 99.0);
    }

    #[test]
    fn nothing_from_no_fixes() {
        let found = run(&[]);
        assert!(found.trips.is_empty() && found.stops.is_empty());
    }
}
