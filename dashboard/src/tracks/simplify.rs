//! Douglas-Peucker in metres: keeps the fixes that a line through the kept ones would miss by
//! more than the tolerance, and always the first and the last.

/// Mean Earth radius (IUGG), as the haversine distances use.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Indices of the points to keep, ascending. Points are `(lat, lon)`.
pub fn keep(points: &[(f64, f64)], tolerance_m: f64) -> Vec<usize> {
    let n = points.len();
    if n <= 2 {
        return (0..n).collect();
    }
    let mut kept = vec![false; n];
    kept[0] = true;
    kept[n - 1] = true;
    // An explicit stack: a day of 1 Hz fixes would recurse too deep.
    let mut stack = vec![(0, n - 1)];
    while let Some((first, last)) = stack.pop() {
        if last <= first + 1 {
            continue;
        }
        let (mut farthest, mut distance) = (first, -1.0);
        for (i, p) in points.iter().enumerate().take(last).skip(first + 1) {
            let d = off_segment_m(*p, points[first], points[last]);
            if d > distance {
                (farthest, distance) = (i, d);
            }
        }
        if distance > tolerance_m {
            kept[farthest] = true;
            stack.push((first, farthest));
            stack.push((farthest, last));
        }
    }
    (0..n).filter(|&i| kept[i]).collect()
}

/// Metres from `p` to the segment `a`–`b`, on a plane tangent at `a`: exact to well under a
/// metre for the segment lengths a track has, and far cheaper than spherical cross-track.
fn off_segment_m(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let to_plane = |q: (f64, f64)| {
        let mut dlon = q.1 - a.1;
        // Across the antimeridian the short way round.
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        (
            dlon.to_radians() * a.0.to_radians().cos() * EARTH_RADIUS_M,
            (q.0 - a.0).to_radians() * EARTH_RADIUS_M,
        )
    };
    let (px, py) = to_plane(p);
    let (bx, by) = to_plane(b);
    let length2 = bx * bx + by * by;
    let t = if length2 == 0.0 {
        0.0
    } else {
        ((px * bx + py * by) / length2).clamp(0.0, 1.0)
    };
    let (dx, dy) = (px - t * bx, py - t * by);
    (dx * dx + dy * dy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_ends_and_drops_points_on_the_line() {
        let line: Vec<_> = (0..100).map(|i| (52.0 + i as f64 * 1e-4, 13.0)).collect();
        assert_eq!(keep(&line, 1.0), vec![0, 99]);
    }

    #[test]
    fn keeps_a_corner_beyond_the_tolerance_only() {
        // A right angle: north 1.1 km, then east.
        let mut track: Vec<_> = (0..=10).map(|i| (52.0 + i as f64 * 1e-3, 13.0)).collect();
        track.extend((1..=10).map(|i| (52.01, 13.0 + i as f64 * 1e-3)));
        assert_eq!(keep(&track, 5.0), vec![0, 10, 20]);
        assert_eq!(keep(&track, 5_000.0), vec![0, 20]);
    }

    #[test]
    fn short_tracks_are_kept_whole() {
        assert_eq!(keep(&[], 10.0), Vec::<usize>::new());
        assert_eq!(keep(&[(1.0, 1.0)], 10.0), vec![0]);
        assert_eq!(keep(&[(1.0, 1.0), (1.0, 1.0)], 10.0), vec![0, 1]);
    }
}
