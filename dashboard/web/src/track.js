// A device's stored track for a range on the map, with its stops as dots: what the detail
// panel shows when an analyst asks where a device went.

import { LngLatBounds } from 'maplibre-gl';

const EMPTY = { type: 'FeatureCollection', features: [] };

export class TrackView {
  constructor(map) {
    this.map = map;
    map.addSource('track', { type: 'geojson', data: EMPTY });
    map.addSource('stops', { type: 'geojson', data: EMPTY });
    // Under the live devices, above the land: the live markers stay on top.
    map.addLayer({ id: 'track', type: 'line', source: 'track', paint: { 'line-color': '#7c3aed', 'line-width': 3, 'line-opacity': 0.8 } }, 'devices');
    map.addLayer({
      id: 'stops',
      type: 'circle',
      source: 'stops',
      paint: { 'circle-radius': 6, 'circle-color': '#f59e0b', 'circle-stroke-color': '#78350f', 'circle-stroke-width': 1.5 },
    }, 'devices');
  }

  /** The track (a GeoJSON FeatureCollection from the API) and `stops` from `/trips`. */
  show(track, stops) {
    this.map.getSource('track').setData(track);
    this.map.getSource('stops').setData({
      type: 'FeatureCollection',
      features: stops.map((s, i) => ({ type: 'Feature', id: i + 1, geometry: { type: 'Point', coordinates: [s.lon, s.lat] }, properties: { start: s.start } })),
    });
    const coords = track.features.flatMap((f) => (f.geometry && f.geometry.coordinates) || []);
    if (coords.length) {
      const bounds = coords.reduce((b, c) => b.extend(c), new LngLatBounds(coords[0], coords[0]));
      this.map.fitBounds(bounds, { padding: 60, maxZoom: 16, duration: 0 });
    }
    return coords.length;
  }

  clear() {
    this.map.getSource('track').setData(EMPTY);
    this.map.getSource('stops').setData(EMPTY);
  }
}
