// The geofence editor: stored fences drawn on the map, and polygons, circles and corridors
// drawn or reshaped with terra-draw, their properties set in a form, saved over the REST API
// (which judges every shape and says what is wrong), deleted, or imported from a GeoJSON file.

import { LngLatBounds } from 'maplibre-gl';
import { api, describe, idList } from './api.js';
import { confirmed } from './confirm.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';

const EMPTY = { type: 'FeatureCollection', features: [] };
/** Metres per pixel at zoom 0 on the equator (512-pixel tiles): corridors are drawn this wide. */
const METRES_PER_PX_Z0 = 40_075_016.686 / 512;
const EARTH_M = 6_371_008.8;
/** The form's number fields, as stored in properties. */
const NUMBERS = ['speed_limit', 'dwell_s', 'buffer_m'];

const HINTS = {
  polygon: 'Click the corners; click the first one again (or press Enter) to close.',
  circle: 'Click the centre, move out to the radius, click again.',
  corridor: 'Click along the route; press Enter or click the last point again to finish.',
};

export class GeofenceEditor {
  constructor(map) {
    this.map = map;
    this.fences = [];
    this.editing = null;
    this.form = document.getElementById('fence-form');
    this.addLayers();
    /** terra-draw, loaded on the first drawing or edit: the first map does not wait for it. */
    this.draw = null;
    this.drawLoading = null;

    for (const button of document.querySelectorAll('[data-draw]')) {
      button.addEventListener('click', () => this.startDrawing(button.dataset.draw));
    }
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.save();
    });
    document.getElementById('fence-cancel').addEventListener('click', () => this.cancel());
    document.getElementById('fence-delete').addEventListener('click', (e) => this.remove(e.currentTarget));
    document.getElementById('fence-import').addEventListener('change', (e) => this.importFile(e.target));
    document.getElementById('fence-list').addEventListener('click', (e) => {
      const item = e.target.closest('[data-fence]');
      if (item) this.edit(this.fences.find((f) => String(f.id) === item.dataset.fence));
    });
  }

  /** The drawing tools, loaded and started once. */
  drawing() {
    if (!this.drawLoading) {
      this.drawLoading = Promise.all([import('terra-draw'), import('terra-draw-maplibre-gl-adapter')]).then(([td, adapter]) => {
        let next = 0;
        const draw = new td.TerraDraw({
          adapter: new adapter.TerraDrawMapLibreGLAdapter({ map: this.map, coordinatePrecision: 7 }),
          tracked: false,
          // Our own ids: the default (random UUIDs) needs a secure context, and a dashboard on
          // plain http to a LAN address is not one.
          idStrategy: { isValidId: (id) => typeof id === 'string' && id.startsWith('draw-'), getId: () => `draw-${++next}` },
          modes: [
            new td.TerraDrawPolygonMode(),
            new td.TerraDrawCircleMode(),
            new td.TerraDrawLineStringMode(),
            new td.TerraDrawSelectMode({
              flags: {
                polygon: { feature: { draggable: true, coordinates: { midpoints: true, draggable: true, deletable: true } } },
                linestring: { feature: { draggable: true, coordinates: { midpoints: true, draggable: true, deletable: true } } },
                circle: { feature: { draggable: true, coordinates: { resizable: 'center' } } },
              },
            }),
          ],
        });
        draw.start();
        draw.setMode('static');
        draw.on('finish', (id, context) => this.finished(id, context));
        this.draw = draw;
        return draw;
      }).catch((error) => {
        // The server went away before the chunk came, say: the next click tries again.
        this.drawLoading = null;
        notify(`The drawing tools did not load: ${error.message}`);
        return null;
      });
    }
    return this.drawLoading;
  }

  addLayers() {
    const map = this.map;
    map.addSource('geofences', { type: 'geojson', data: EMPTY });
    const below = 'trails';
    map.addLayer({ id: 'geofence-fill', type: 'fill', source: 'geofences', filter: ['==', ['geometry-type'], 'Polygon'], paint: { 'fill-color': '#0ea5e9', 'fill-opacity': 0.15 } }, below);
    map.addLayer({ id: 'geofence-outline', type: 'line', source: 'geofences', filter: ['==', ['geometry-type'], 'Polygon'], paint: { 'line-color': '#0369a1', 'line-width': 1.5 } }, below);
    // A corridor is its centre line drawn `width_m` wide at every zoom (the width doubles
    // with each zoom step, as the ground it covers does).
    map.addLayer({
      id: 'geofence-corridor',
      type: 'line',
      source: 'geofences',
      filter: ['==', ['geometry-type'], 'LineString'],
      layout: { 'line-cap': 'round', 'line-join': 'round' },
      paint: {
        'line-color': '#0ea5e9',
        'line-opacity': 0.3,
        'line-width': ['interpolate', ['exponential', 2], ['zoom'], 0, ['get', 'px0'], 24, ['*', ['get', 'px0'], 2 ** 24]],
      },
    }, below);
  }

  async load() {
    try {
      const collection = await api('/api/geofences');
      this.fences = collection.features;
    } catch (error) {
      notify(describe(error, 'Loading geofences'));
      return;
    }
    this.render();
  }

  render() {
    const shown = this.fences.filter((f) => !this.editing || f.id !== this.editing.id);
    this.map.getSource('geofences').setData({ type: 'FeatureCollection', features: shown.flatMap(displayFeatures) });
    const list = document.getElementById('fence-list');
    list.innerHTML = this.fences.length
      ? this.fences
          .map((f) => `<li><button type="button" data-fence="${escapeHtml(String(f.id))}">${escapeHtml(f.properties.name || `#${f.id}`)} <span class="kind">${kindOf(f)}</span></button></li>`)
          .join('')
      : '<li class="note">No geofences yet: draw one, or import a GeoJSON file.</li>';
  }

  async startDrawing(kind) {
    const draw = await this.drawing();
    if (!draw) return;
    this.cancel();
    draw.setMode(kind === 'corridor' ? 'linestring' : kind);
    this.editing = { id: null, kind, drawId: null, original: null, drawing: true };
    document.getElementById('draw-hint').textContent = HINTS[kind];
  }

  finished(drawId, context) {
    if (!this.editing) return;
    if (this.editing.drawing && context.action === 'draw') {
      this.editing.drawing = false;
      this.editing.drawId = drawId;
      this.draw.setMode('select');
      this.draw.selectFeature(drawId);
      document.getElementById('draw-hint').textContent = 'Drag the shape or its points to adjust it, then save.';
      this.openForm({}, 'New geofence');
    }
    if (this.editing.kind === 'circle' && this.editing.drawId === drawId) {
      const f = this.draw.getSnapshotFeature(drawId);
      if (f && f.properties.radiusKilometers) this.form.elements.radius_m.value = Math.round(f.properties.radiusKilometers * 1000);
    }
  }

  /** A stored fence into the form, and its outline into terra-draw to be reshaped. */
  async edit(fence) {
    if (!fence || !(await this.drawing())) return;
    this.cancel();
    const kind = kindOf(fence);
    this.editing = { id: fence.id, kind, drawId: null, original: fence, drawing: false };
    const drawable = toDrawable(fence, kind);
    if (drawable) {
      const [result] = this.draw.addFeatures([drawable]);
      if (result && result.valid) {
        this.editing.drawId = result.id;
        this.draw.setMode('select');
        this.draw.selectFeature(result.id);
      }
    }
    document.getElementById('draw-hint').textContent = this.editing.drawId
      ? 'Drag the shape or its points to reshape it, or change its properties.'
      : 'This shape cannot be reshaped here; its properties can be changed.';
    this.openForm(fence.properties, `Edit ${fence.properties.name || `#${fence.id}`}`);
    this.render();
    const bounds = boundsOf(displayFeatures(fence));
    if (bounds) this.map.fitBounds(bounds, { padding: 80, maxZoom: 17, duration: 0 });
  }

  openForm(properties, title) {
    const f = this.form.elements;
    document.getElementById('fence-form-title').textContent = title;
    f.name.value = properties.name || '';
    f.devices.value = (properties.devices || []).join(', ');
    for (const n of [...NUMBERS, 'radius_m', 'width_m']) f[n].value = properties[n] ?? '';
    if (this.editing.kind === 'circle' && !f.radius_m.value && this.editing.drawId) {
      const d = this.draw.getSnapshotFeature(this.editing.drawId);
      if (d) f.radius_m.value = Math.round(d.properties.radiusKilometers * 1000);
    }
    if (this.editing.kind === 'corridor' && !f.width_m.value) f.width_m.value = 50;
    for (const label of this.form.querySelectorAll('[data-for]')) label.hidden = label.dataset.for !== this.editing.kind;
    document.getElementById('fence-delete').hidden = this.editing.id === null;
    document.getElementById('fence-error').textContent = '';
    this.form.hidden = false;
    f.name.focus();
  }

  /** The Feature the form and the drawing describe, as the API takes it. */
  feature() {
    const e = this.editing;
    const f = this.form.elements;
    const properties = { ...(e.original ? e.original.properties : {}) };
    properties.name = f.name.value.trim();
    const devices = idList(f.devices.value);
    if (devices.length) properties.devices = devices;
    else delete properties.devices;
    for (const n of NUMBERS) setNumber(properties, n, f[n].value);
    delete properties.radius_m;
    delete properties.width_m;
    let geometry = e.original ? e.original.geometry : null;
    const drawn = e.drawId && this.draw.getSnapshotFeature(e.drawId);
    if (e.kind === 'circle') {
      setNumber(properties, 'radius_m', f.radius_m.value);
      if (drawn) geometry = { type: 'Point', coordinates: centreOf(drawn.geometry.coordinates[0]) };
    } else if (e.kind === 'corridor') {
      setNumber(properties, 'width_m', f.width_m.value);
      if (drawn) geometry = { type: 'LineString', coordinates: drawn.geometry.coordinates };
    } else if (drawn) {
      geometry = { type: 'Polygon', coordinates: drawn.geometry.coordinates };
    }
    return { type: 'Feature', geometry, properties };
  }

  async save() {
    const e = this.editing;
    if (!e || e.drawing) return;
    const error = document.getElementById('fence-error');
    error.textContent = '';
    const body = JSON.stringify(this.feature());
    try {
      const saved = e.id === null
        ? await api('/api/geofences', { method: 'POST', body, headers: { 'Content-Type': 'application/json' } })
        : await api(`/api/geofences/${e.id}`, { method: 'PUT', body, headers: { 'Content-Type': 'application/json' } });
      notify(`Geofence "${saved.properties ? saved.properties.name : ''}" saved.`, 'info', 3000);
      this.cancel();
      await this.load();
    } catch (err) {
      error.textContent = describe(err, 'Saving the geofence');
    }
  }

  async remove(button) {
    const e = this.editing;
    if (!e || e.id === null) return;
    if (!confirmed(button)) return;
    try {
      await api(`/api/geofences/${e.id}`, { method: 'DELETE' });
      notify('Geofence deleted.', 'info', 3000);
      this.cancel();
      await this.load();
    } catch (err) {
      document.getElementById('fence-error').textContent = describe(err, 'Deleting the geofence');
    }
  }

  async importFile(input) {
    const file = input.files && input.files[0];
    input.value = '';
    if (!file) return;
    let body;
    try {
      body = JSON.parse(await file.text());
    } catch (err) {
      notify(`Importing ${file.name} failed: it is not JSON (${err.message}).`);
      return;
    }
    try {
      const saved = await api('/api/geofences', { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } });
      const n = saved.type === 'FeatureCollection' ? saved.features.length : 1;
      notify(`Imported ${n} geofence${n === 1 ? '' : 's'} from ${file.name}.`, 'info', 4000);
      await this.load();
    } catch (err) {
      notify(describe(err, `Importing ${file.name}`), 'error', 12_000);
    }
  }

  cancel() {
    if (this.draw) {
      this.draw.clear();
      this.draw.setMode('static');
    }
    this.editing = null;
    this.form.hidden = true;
    document.getElementById('draw-hint').textContent = '';
    if (this.fences.length) this.render();
  }
}

function setNumber(properties, name, text) {
  if (text === '' || text === null || text === undefined) delete properties[name];
  else properties[name] = Number(text);
}

function kindOf(fence) {
  const type = fence.geometry && fence.geometry.type;
  if (type === 'Point') return 'circle';
  if (type === 'LineString') return 'corridor';
  return 'polygon';
}

/** What the map draws for a fence: polygons as they are, a circle as a ring of points, a
 * corridor as its line with its width in pixels at zoom 0. */
function displayFeatures(fence) {
  const g = fence.geometry;
  const properties = { id: fence.id, name: fence.properties.name || '' };
  if (!g) return [];
  if (g.type === 'Point') {
    const r = Number(fence.properties.radius_m);
    if (!(r > 0)) return [];
    return [{ type: 'Feature', geometry: { type: 'Polygon', coordinates: [circleRing(g.coordinates, r)] }, properties }];
  }
  if (g.type === 'LineString') {
    const lat = g.coordinates.length ? g.coordinates[0][1] : 0;
    const px0 = Number(fence.properties.width_m || 0) / (METRES_PER_PX_Z0 * Math.cos((lat * Math.PI) / 180));
    return [{ type: 'Feature', geometry: g, properties: { ...properties, px0 } }];
  }
  if (g.type === 'MultiPolygon') {
    return g.coordinates.map((coordinates) => ({ type: 'Feature', geometry: { type: 'Polygon', coordinates }, properties }));
  }
  return [{ type: 'Feature', geometry: g, properties }];
}

/** A circle on the sphere as a closed ring of 64 points. */
function circleRing([lon, lat], radiusM, steps = 64) {
  const d = radiusM / EARTH_M;
  const phi = (lat * Math.PI) / 180;
  const lambda = (lon * Math.PI) / 180;
  const ring = [];
  for (let i = 0; i < steps; i++) {
    const theta = (2 * Math.PI * i) / steps;
    const phi2 = Math.asin(Math.sin(phi) * Math.cos(d) + Math.cos(phi) * Math.sin(d) * Math.cos(theta));
    const lambda2 = lambda + Math.atan2(Math.sin(theta) * Math.sin(d) * Math.cos(phi), Math.cos(d) - Math.sin(phi) * Math.sin(phi2));
    ring.push([round7((lambda2 * 180) / Math.PI), round7((phi2 * 180) / Math.PI)]);
  }
  ring.push(ring[0]);
  return ring;
}

function round7(v) {
  return Math.round(v * 1e7) / 1e7;
}

/** The centre of a drawn circle: the mean of its ring's points (without the closing one). */
function centreOf(ring) {
  const points = ring.slice(0, -1);
  const lon = points.reduce((s, p) => s + p[0], 0) / points.length;
  const lat = points.reduce((s, p) => s + p[1], 0) / points.length;
  return [round7(lon), round7(lat)];
}

function toDrawable(fence, kind) {
  const g = fence.geometry;
  if (kind === 'circle') {
    const r = Number(fence.properties.radius_m);
    if (!(r > 0)) return null;
    return { type: 'Feature', geometry: { type: 'Polygon', coordinates: [circleRing(g.coordinates, r)] }, properties: { mode: 'circle', radiusKilometers: r / 1000 } };
  }
  if (kind === 'corridor') return { type: 'Feature', geometry: g, properties: { mode: 'linestring' } };
  // terra-draw reshapes a single ring: a polygon with holes or several parts keeps its shape.
  if (g.type !== 'Polygon' || g.coordinates.length !== 1) return null;
  return { type: 'Feature', geometry: g, properties: { mode: 'polygon' } };
}

function boundsOf(features) {
  const positions = features.flatMap((f) => positionsOf(f.geometry.coordinates));
  if (!positions.length) return null;
  return positions.reduce((b, p) => b.extend(p), new LngLatBounds(positions[0], positions[0]));
}

/** Every `[lon, lat]` of a GeoJSON coordinates array, however deeply nested. */
function positionsOf(c) {
  return typeof c[0] === 'number' ? [c] : c.flatMap(positionsOf);
}
