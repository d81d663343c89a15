// How the console shows numbers and times to a person: speeds in km/h or mph (a setting kept
// in this browser), headings to the degree with a compass point, local times with how long
// ago, and coordinates to about a metre.

const UNIT_KEY = 'fieldline.speedUnit';
const UNITS = {
  kmh: { label: 'km/h', perMs: 3.6, distance: 'km', perM: 0.001 },
  mph: { label: 'mph', perMs: 2.236936, distance: 'mi', perM: 0.000621371 },
};
const COMPASS = ['N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'];

export function speedUnit() {
  return UNITS[localStorage.getItem(UNIT_KEY)] ? localStorage.getItem(UNIT_KEY) : 'kmh';
}

export function setSpeedUnit(unit) {
  if (UNITS[unit]) localStorage.setItem(UNIT_KEY, unit);
}

/** A speed in m/s as "43 km/h" (one decimal below 10). */
export function speed(ms) {
  const u = UNITS[speedUnit()];
  const v = ms * u.perMs;
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${u.label}`;
}

/** A distance in metres as "12.3 km" or "7.6 mi". */
export function distance(m) {
  const u = UNITS[speedUnit()];
  return `${(m * u.perM).toFixed(m * u.perM < 10 ? 2 : 1)} ${u.distance}`;
}

/** "165° SSE"-style: to the degree, with the nearest of eight compass points. */
export function heading(deg) {
  const d = ((Math.round(deg) % 360) + 360) % 360;
  return `${d}° ${COMPASS[Math.round(d / 45) % 8]}`;
}

/** Latitude and longitude to 5 decimals: about a metre. */
export function position(lat, lon) {
  return `${lat.toFixed(5)}, ${lon.toFixed(5)}`;
}

/** A time in this browser's zone, with how long ago: "14:03:21 (12 s ago)". */
export function when(ts, now = Date.now()) {
  const t = Date.parse(ts);
  if (Number.isNaN(t)) return String(ts);
  const today = new Date(t).toDateString() === new Date(now).toDateString();
  const local = new Date(t).toLocaleString([], today
    ? { hour: '2-digit', minute: '2-digit', second: '2-digit' }
    : { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  return `${local} (${ago(now - t)})`;
}

/** "12 s ago", "5 min ago", "3 h ago", "2 d ago"; "just now" for a clock a little ahead. */
export function ago(ms) {
  if (ms < 0) return 'just now';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
