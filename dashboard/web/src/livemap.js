// The live map: every device as a dot of a WebGL layer of our own (dots.js), coloured by
// state. Events are queued as they arrive and applied once per animation frame: a moved
// device rewrites its slot in the dot buffer, never a full setData per event (at 10,000
// devices a GeoJSON source re-tiles everything on each change; `?full-setdata` keeps that
// way for the benchmark to compare). The devices in view once zoomed in, and the selected
// one, also go to a small GeoJSON source as diffs, for heading arrows, the selection ring
// and trails of their last minutes.

import { LngLatBounds, Marker, MercatorCoordinate } from 'maplibre-gl';
import { DeviceDots } from './dots.js';

/** Seconds without a fix after which an online device is drawn as stale. */
const STALE_MS = 60_000;
/** How much of each device's recent path the trail shows. */
const TRAIL_MS = 5 * 60_000;
/** Fixes kept for the trail of a device that is not near (out of view or zoomed out). */
const FAR_TRAIL_POINTS = 30;
/** From this zoom on, devices in view get heading arrows and trails; below it only the selected one. */
const NEAR_ZOOM = 12;
/** Labels are DOM elements: only this many, and only when zoomed in. */
const LABEL_ZOOM = 14;
const MAX_LABELS = 200;
/** Live changes redraw the map at most this often (ms). A device reports about once a second,
 * so ten redraws a second show every move within a tenth of a second, and a map rendered in
 * software (no GPU, as in a VM or headless) keeps its frames for panning and zooming.
 * `?redraw-ms=` changes it (the benchmark compares). */
const REDRAW_MS = 100;
/** A click within this many pixels of a dot selects it. */
const PICK_PX = 10;

const COLORS = { online: '#16a34a', stale: '#d97706', offline: '#6b7280' };

export class LiveMap {
  constructor(map, { onSelect }) {
    this.map = map;
    this.onSelect = onSelect;
    /** id -> { num (from 1: the dot slot and feature id), lon, lat, heading, online, lastMs, state, trail: [[lon, lat, ms]] } */
    this.devices = new Map();
    this.byNum = [];
    this.pending = new Set();
    this.frame = 0;
    this.selected = null;
    this.follow = false;
    this.labels = new Map();
    /** Where devices are "near" (arrows, trails); null when zoomed out: only the selected one. */
    this.nearBounds = null;
    /** For the benchmark: applying each event with a full GeoJSON setData instead. */
    const params = new URLSearchParams(location.search);
    this.fullSetData = params.has('full-setdata');
    this.redrawMs = params.has('redraw-ms') ? Number(params.get('redraw-ms')) || 0 : REDRAW_MS;
    /** For the benchmark: drawing changes in the next frame (`triggerRepaint`) instead of this one. */
    this.nextFrame = params.has('next-frame');
    /** For the benchmark: the dots drawn inside the map (`?in-map`), which a live change then
     * renders whole, instead of in their own canvas above it. */
    this.overlay = !params.has('in-map');
    this.lastFlush = 0;
    /** With `?measure` (the benchmark): frames, events applied, publish-to-render latency. */
    this.measure = params.has('measure') ? {} : null;
    if (this.measure) {
      this.measureReset();
      const frame = () => {
        this.measure.frames++;
        requestAnimationFrame(frame);
      };
      requestAnimationFrame(frame);
      map.on('render', () => this.measure.renders++);
    }
    this.addLayers();
    setInterval(() => this.sweepStale(), 5_000);
  }

  addLayers() {
    const map = this.map;
    const empty = { type: 'FeatureCollection', features: [] };
    map.addSource('trails', { type: 'geojson', data: empty });
    map.addSource('near', { type: 'geojson', data: empty });
    map.addImage('arrow', arrowImage(), { pixelRatio: 2 });
    map.addLayer({
      id: 'trails',
      type: 'line',
      source: 'trails',
      paint: { 'line-color': '#2563eb', 'line-opacity': 0.45, 'line-width': 2 },
    });
    if (this.fullSetData) {
      map.addSource('all', { type: 'geojson', data: empty });
      map.addLayer({
        id: 'devices',
        type: 'circle',
        source: 'all',
        paint: {
          'circle-radius': ['interpolate', ['linear'], ['zoom'], 2, 2.5, 10, 5, 16, 7],
          'circle-color': ['match', ['get', 'state'], 'online', COLORS.online, 'stale', COLORS.stale, COLORS.offline],
          'circle-stroke-color': '#ffffff',
          'circle-stroke-width': ['interpolate', ['linear'], ['zoom'], 2, 0, 8, 1],
        },
      });
    } else {
      this.dots = new DeviceDots('devices', { overlay: this.overlay });
      map.addLayer(this.dots);
    }
    map.addLayer({
      id: 'selected',
      type: 'circle',
      source: 'near',
      filter: ['==', ['get', 'device'], ''],
      paint: { 'circle-radius': 11, 'circle-color': 'rgba(0,0,0,0)', 'circle-stroke-color': '#111827', 'circle-stroke-width': 2 },
    });
    map.addLayer({
      id: 'heading',
      type: 'symbol',
      source: 'near',
      minzoom: 11,
      filter: ['has', 'heading'],
      layout: {
        'icon-image': 'arrow',
        'icon-rotate': ['get', 'heading'],
        'icon-rotation-alignment': 'map',
        'icon-allow-overlap': true,
        'icon-ignore-placement': true,
        'icon-offset': [0, -14],
      },
    });
    map.on('click', (e) => {
      const num = this.pickAt(e.point);
      if (num) this.onSelect(this.byNum[num - 1].id);
    });
    map.on('moveend', () => {
      this.updateLabels();
      this.updateNear();
      this.reanchor();
    });
  }

  pickAt(point) {
    if (this.dots) return this.dots.pick(point, PICK_PX);
    const f = this.map.queryRenderedFeatures(point, { layers: ['devices'] })[0];
    return f ? this.devices.get(f.properties.device).num : 0;
  }

  /** Where each device is drawn now: `{id: [lon, lat]}` of those in view (tests, tools). */
  drawn() {
    const out = {};
    const b = this.map.getBounds();
    for (const e of this.byNum) {
      const at = this.dots ? this.dots.drawnAt(e.num) : e.lon !== undefined && [e.lon, e.lat];
      if (at && b.contains(at)) out[e.id] = at;
    }
    return out;
  }

  /** Zoomed in far from where the dot offsets are anchored: anchor them at the view. */
  reanchor() {
    if (!this.dots || !this.dots.anchor || this.map.getZoom() < 8) return;
    const c = MercatorCoordinate.fromLngLat(this.map.getCenter());
    const [x, y] = this.dots.anchor;
    if (Math.abs(c.x - x) + Math.abs(c.y - y) > 1e-3) {
      this.dots.reanchor(c.x, c.y);
      this.map.triggerRepaint();
    }
  }

  /** The near set (arrows, ring, trails) anew for this view: only ever a few hundred. */
  updateNear() {
    this.nearBounds = this.map.getZoom() >= NEAR_ZOOM ? this.map.getBounds() : null;
    const now = Date.now();
    const near = [];
    const trails = [];
    for (const e of this.byNum) {
      const want = this.nearWanted(e);
      if (want) {
        near.push(deviceFeature(e));
        pruneTrail(e, now);
        const t = trailFeature(e);
        if (t) trails.push(t);
        e.trailShown = !!t;
      } else e.trailShown = false;
      e.nearShown = want;
    }
    return [
      this.map.getSource('near').setData({ type: 'FeatureCollection', features: near }),
      this.map.getSource('trails').setData({ type: 'FeatureCollection', features: trails }),
    ];
  }

  nearWanted(e) {
    if (e.lon === undefined) return false;
    if (e.id === this.selected) return true;
    return !!this.nearBounds && this.nearBounds.contains([e.lon, e.lat]);
  }

  measureReset() {
    Object.assign(this.measure, { frames: 0, renders: 0, applied: 0, latencies: [], arrivals: [], since: performance.now() });
  }

  /** Once the map has drawn what was just handed to it: each fix's age since its publish.
   * `drawnAt`: the map was drawn already, synchronously, then (no source update pending). */
  measured(updates, stamps, drawnAt) {
    if (!this.measure) return;
    this.measure.applied += stamps.length;
    if (drawnAt && !updates.length) {
      const l = this.measure.latencies;
      for (const t of stamps) sample(l, drawnAt - t);
      return;
    }
    Promise.all(updates).then(() =>
      this.map.once('render', () => {
        const now = Date.now();
        const l = this.measure.latencies;
        for (const t of stamps) sample(l, now - t);
      }),
    );
  }

  /** Everything anew from the REST API's device list (start, reset, a wider viewport). */
  load(list) {
    this.devices.clear();
    this.byNum = [];
    this.pending.clear();
    for (const d of list) {
      const loc = d.location;
      const entry = this.entry(d.id);
      entry.online = d.online;
      entry.lastMs = Date.parse(d.last_seen) || 0;
      if (loc && Number.isFinite(loc.lat) && Number.isFinite(loc.lon)) {
        entry.lon = loc.lon;
        entry.lat = loc.lat;
        entry.heading = Number.isFinite(loc.heading) ? loc.heading : undefined;
        entry.trail = [[loc.lon, loc.lat, Date.parse(loc.ts) || entry.lastMs]];
      }
      entry.state = stateOf(entry);
    }
    this.setAll();
  }

  entry(id) {
    let e = this.devices.get(id);
    if (!e) {
      e = { id, num: this.byNum.length + 1, online: false, lastMs: 0, state: 'offline', trail: [], nearShown: false, trailShown: false };
      this.devices.set(id, e);
      this.byNum.push(e);
    }
    return e;
  }

  location(ev) {
    if (!Number.isFinite(ev.lat) || !Number.isFinite(ev.lon)) return;
    const e = this.entry(ev.device);
    const ms = Date.parse(ev.ts) || Date.now();
    e.lon = ev.lon;
    e.lat = ev.lat;
    e.heading = Number.isFinite(ev.heading) ? ev.heading : undefined;
    // Online is the broker's word (status events), not implied by a fix.
    e.lastMs = Math.max(e.lastMs, Date.now());
    e.trail.push([ev.lon, ev.lat, ms]);
    // Five minutes of path for 10,000 devices would be millions of points held for nothing:
    // a device out of view keeps a short tail, which grows once it is near.
    if (!e.nearShown && e.trail.length > FAR_TRAIL_POINTS) e.trail.splice(0, e.trail.length - FAR_TRAIL_POINTS);
    e.fixMs = ms;
    // For the benchmark: publish to this script having the fix (the server, the network, and
    // any wait behind this page's own work), the part of the latency before applying it.
    if (this.measure) sample(this.measure.arrivals, Date.now() - ms);
    this.touch(e);
  }

  status(ev) {
    const e = this.entry(ev.device);
    e.online = !!ev.online;
    if (e.online) e.lastMs = Math.max(e.lastMs, Date.now());
    this.touch(e);
  }

  touch(e) {
    if (this.fullSetData) {
      // The way not to do it, kept for the benchmark to compare: everything, every event.
      this.measured(this.setAll(), e.fixMs ? [e.fixMs] : []);
      e.fixMs = 0;
      return;
    }
    this.pending.add(e);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Once per frame: the devices that changed since the last one, into the dot buffer, and
   * those near (in view when zoomed in, or selected) as one diff per GeoJSON source. */
  flush() {
    this.frame = 0;
    if (!this.pending.size) return;
    const t = performance.now();
    if (t - this.lastFlush < this.redrawMs) {
      this.frame = requestAnimationFrame(() => this.flush());
      return;
    }
    this.lastFlush = t;
    const stamps = [];
    const now = Date.now();
    const near = { add: [], update: [], remove: [] };
    const trails = { add: [], update: [], remove: [] };
    for (const e of this.pending) {
      // Only fixes count, once: a state change alone is not a marker moved.
      if (e.fixMs) stamps.push(e.fixMs);
      e.fixMs = 0;
      e.state = stateOf(e, now);
      if (e.lon === undefined) continue;
      this.dots.set(e.num, e.lon, e.lat, e.state);
      const want = this.nearWanted(e);
      if (want) {
        const f = deviceFeature(e);
        if (e.nearShown) {
          const change = { id: e.num, newGeometry: f.geometry, addOrUpdateProperties: props(f) };
          if (e.heading === undefined) change.removeProperties = ['heading'];
          near.update.push(change);
        } else near.add.push(f);
      } else if (e.nearShown) near.remove.push(e.num);
      e.nearShown = want;
      pruneTrail(e, now);
      const t = want ? trailFeature(e) : null;
      if (t && e.trailShown) trails.update.push({ id: e.num, newGeometry: t.geometry });
      else if (t) trails.add.push(t);
      else if (e.trailShown) trails.remove.push(e.num);
      e.trailShown = !!t;
    }
    this.pending.clear();
    const updates = [];
    if (near.add.length || near.update.length || near.remove.length) updates.push(this.map.getSource('near').updateData(near));
    if (trails.add.length || trails.update.length || trails.remove.length) updates.push(this.map.getSource('trails').updateData(trails));
    // Drawn now, in this frame: `triggerRepaint` would ask for the next one, a frame later
    // (tens of ms on a software-rendered map). The sources above draw once their workers are
    // done, as before.
    if (this.nextFrame) {
      this.map.triggerRepaint();
      this.measured(updates, stamps);
    } else if (this.overlay) {
      this.dots.drawNow();
      if (this.measure) this.measure.renders++;
      this.measured(updates, stamps, Date.now());
    } else {
      this.map.redraw();
      this.measured(updates, stamps, Date.now());
    }
    this.followSelected();
    this.updateLabelPositions();
  }

  /** Every device anew: into the dots (or, for the benchmark's comparison, one GeoJSON setData). */
  setAll() {
    const now = Date.now();
    const done = [];
    if (this.dots) {
      this.dots.clear();
      for (const e of this.byNum) {
        e.state = stateOf(e, now);
        if (e.lon !== undefined) this.dots.set(e.num, e.lon, e.lat, e.state);
      }
      this.map.triggerRepaint();
    } else {
      const features = [];
      for (const e of this.byNum) {
        e.state = stateOf(e, now);
        if (e.lon !== undefined) features.push(deviceFeature(e));
      }
      done.push(this.map.getSource('all').setData({ type: 'FeatureCollection', features }));
    }
    done.push(...this.updateNear());
    this.updateLabels();
    return done;
  }

  /** Online devices that went quiet turn stale without an event: look every few seconds. */
  sweepStale() {
    const now = Date.now();
    for (const e of this.byNum) if (stateOf(e, now) !== e.state) this.touch(e);
  }

  select(id, follow) {
    this.selected = id;
    this.follow = follow;
    this.map.setFilter('selected', ['==', ['get', 'device'], id || '']);
    this.updateNear();
    const e = id && this.devices.get(id);
    if (e && e.lon !== undefined) this.map.easeTo({ center: [e.lon, e.lat], zoom: Math.max(this.map.getZoom(), 12) });
  }

  /** Fits the map to `entries` (devices with a position; all when none are given). */
  fit(entries = this.devices.values(), animate = true) {
    let bounds = null;
    for (const e of entries) {
      if (e.lon === undefined) continue;
      if (!bounds) bounds = new LngLatBounds([e.lon, e.lat], [e.lon, e.lat]);
      else bounds.extend([e.lon, e.lat]);
    }
    if (!bounds) return false;
    this.map.fitBounds(bounds, { padding: 60, maxZoom: 14, duration: animate ? 500 : 0 });
    return true;
  }

  followSelected() {
    if (!this.follow || !this.selected) return;
    const e = this.devices.get(this.selected);
    if (e && e.lon !== undefined) this.map.easeTo({ center: [e.lon, e.lat], duration: 300 });
  }

  /** `[west, south, east, north]` of what is in view with a margin, or null when zoomed out. */
  viewportBbox(minZoom) {
    if (this.map.getZoom() < minZoom) return null;
    const b = this.map.getBounds();
    const w = b.getEast() - b.getWest();
    const h = b.getNorth() - b.getSouth();
    const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
    return [
      clamp(b.getWest() - w * 0.25, -180, 180),
      clamp(b.getSouth() - h * 0.25, -90, 90),
      clamp(b.getEast() + w * 0.25, -180, 180),
      clamp(b.getNorth() + h * 0.25, -90, 90),
    ].map((v) => Math.round(v * 1e5) / 1e5);
  }

  /** Device ids as labels when zoomed in far enough that they do not pile up. */
  updateLabels() {
    const want = new Set();
    if (this.map.getZoom() >= LABEL_ZOOM) {
      const b = this.map.getBounds();
      for (const e of this.byNum) {
        if (want.size >= MAX_LABELS) break;
        if (e.lon !== undefined && b.contains([e.lon, e.lat])) want.add(e.id);
      }
    }
    for (const [id, marker] of this.labels) {
      if (!want.has(id)) {
        marker.remove();
        this.labels.delete(id);
      }
    }
    for (const id of want) {
      if (this.labels.has(id)) continue;
      const el = document.createElement('div');
      el.className = 'label';
      el.textContent = id;
      const e = this.devices.get(id);
      this.labels.set(id, new Marker({ element: el, anchor: 'left', offset: [9, 0] }).setLngLat([e.lon, e.lat]).addTo(this.map));
    }
  }

  updateLabelPositions() {
    for (const [id, marker] of this.labels) {
      const e = this.devices.get(id);
      if (e) marker.setLngLat([e.lon, e.lat]);
    }
  }

  counts() {
    let online = 0;
    for (const e of this.byNum) if (e.online) online++;
    return { all: this.byNum.length, online, offline: this.byNum.length - online };
  }
}

/** Adds a benchmark sample, up to a bound: a page left measuring must not grow forever. */
function sample(samples, ms) {
  if (samples.length < 500_000) samples.push(ms);
}

function stateOf(e, now = Date.now()) {
  if (!e.online) return 'offline';
  return now - e.lastMs > STALE_MS ? 'stale' : 'online';
}

function pruneTrail(e, now) {
  const cut = now - TRAIL_MS;
  let drop = 0;
  while (drop < e.trail.length - 1 && e.trail[drop][2] < cut) drop++;
  if (drop) e.trail.splice(0, drop);
}

function deviceFeature(e) {
  const properties = { device: e.id, state: e.state };
  if (e.heading !== undefined) properties.heading = e.heading;
  return { type: 'Feature', id: e.num, geometry: { type: 'Point', coordinates: [e.lon, e.lat] }, properties };
}

function props(f) {
  return Object.entries(f.properties).map(([key, value]) => ({ key, value }));
}

function trailFeature(e) {
  if (e.trail.length < 2) return null;
  return { type: 'Feature', id: e.num, geometry: { type: 'LineString', coordinates: e.trail.map((p) => [p[0], p[1]]) }, properties: {} };
}

/** A small arrow pointing up (north before rotation), drawn once on a canvas. */
function arrowImage() {
  const size = 32;
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#111827';
  ctx.beginPath();
  ctx.moveTo(size / 2, 4);
  ctx.lineTo(size - 8, size - 6);
  ctx.lineTo(size / 2, size - 12);
  ctx.lineTo(8, size - 6);
  ctx.closePath();
  ctx.fill();
  return ctx.getImageData(0, 0, size, size);
}
