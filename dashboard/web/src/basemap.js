// The built-in base map: land and borders from Natural Earth (world-atlas), drawn by MapLibre
// with no tile server. It is fetched as its own asset after the map is up, so the first frame
// does not wait for it.

import rewind from '@mapbox/geojson-rewind';
import { feature, mesh } from 'topojson-client';
import countriesUrl from 'world-atlas/countries-50m.json?url';
import landUrl from 'world-atlas/land-50m.json?url';

export const SEA = '#dbe6ef';

/** A style with nothing but the sea: the land is added by `addLand` once it is fetched. */
export function emptyStyle() {
  return {
    version: 8,
    sources: {},
    layers: [{ id: 'sea', type: 'background', paint: { 'background-color': SEA } }],
  };
}

/** Fetches the world and adds land and borders under the device layers. */
export async function addLand(map) {
  const [world, landTopology] = await Promise.all([countriesUrl, landUrl].map(async (url) => {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`base map: ${response.status}`);
    return response.json();
  }));
  const countries = world.objects.countries;
  // Land is every country filled (merging them leaves seams at the antimeridian); borders
  // are the lines two countries share, so coasts get no outline of cut edges. world-atlas
  // winds rings the spherical way (d3's); MapLibre tells holes by winding, so they are
  // rewound to GeoJSON's (outer rings counter-clockwise) or islands come out as holes.
  const land = unwrap(rewind(feature(landTopology, landTopology.objects.land), false));
  const borders = unwrap(mesh(world, countries, (a, b) => a !== b));
  // Right above the sea, under everything the page has added meanwhile (fences, tracks, devices).
  const layers = map.getStyle().layers;
  const before = layers.length > 1 ? layers[1].id : undefined;
  map.addSource('land', { type: 'geojson', data: land });
  map.addSource('borders', { type: 'geojson', data: borders });
  map.addLayer({ id: 'land', type: 'fill', source: 'land', paint: { 'fill-color': '#f4f1ea' } }, before);
  map.addLayer(
    {
      id: 'borders',
      type: 'line',
      source: 'borders',
      paint: { 'line-color': '#b9b2a5', 'line-width': ['interpolate', ['linear'], ['zoom'], 1, 0.5, 8, 1.2] },
    },
    before,
  );
}

/** Rings and lines that cross the antimeridian (Chukotka, Fiji) jump from 180 to -180, which
 * on a flat map is a band around the world; their longitudes are made continuous instead
 * (MapLibre wraps beyond 180). A ring around a pole (Antarctica) keeps its cut form. */
function unwrap(geojson) {
  const line = (points, closed) => {
    const out = [points[0]];
    let shift = 0;
    for (let i = 1; i < points.length; i++) {
      const step = points[i][0] - points[i - 1][0];
      if (step > 180) shift -= 360;
      else if (step < -180) shift += 360;
      out.push([points[i][0] + shift, points[i][1]]);
    }
    return closed && shift !== 0 ? points : out;
  };
  const geometry = (g) => {
    switch (g.type) {
      case 'Polygon':
        return { ...g, coordinates: g.coordinates.map((r) => line(r, true)) };
      case 'MultiPolygon':
        return { ...g, coordinates: g.coordinates.map((p) => p.map((r) => line(r, true))) };
      case 'LineString':
        return { ...g, coordinates: line(g.coordinates, false) };
      case 'MultiLineString':
        return { ...g, coordinates: g.coordinates.map((l) => line(l, false)) };
      default:
        return g;
    }
  };
  if (geojson.type === 'FeatureCollection') return { ...geojson, features: geojson.features.map(unwrap) };
  if (geojson.type === 'Feature') return { ...geojson, geometry: geometry(geojson.geometry) };
  return geometry(geojson);
}
