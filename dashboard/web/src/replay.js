// Replay: stored history of chosen devices played on the map on one clock, over the WebSocket
// replay (`{"type": "replay"}`, then pause, play, seek, speed). A seek slider marked with the
// range's geofence and alert events, follow, and a chart of the first device's first metric
// whose cursor moves with the clock. While a replay is open the live markers are hidden, so
// the map never mixes recorded and live positions.

import { api, describe, idList, socketUrl } from './api.js';
import { fromBuckets, TimeChart } from './chart.js';
import { escapeHtml } from './devicelist.js';
import { summary } from './events.js';
import { notify } from './notices.js';

const EMPTY = { type: 'FeatureCollection', features: [] };
const LIVE_LAYERS = ['trails', 'devices', 'selected', 'heading'];
/** Replayed path kept per device, in points. */
const TRAIL_POINTS = 600;

export class ReplayPlayer {
  constructor(map) {
    this.map = map;
    this.socket = null;
    this.request = null;
    this.devices = new Map();
    this.clockMs = 0;
    this.playing = false;
    this.ended = false;
    this.place = null;
    this.frame = 0;
    this.chart = new TimeChart(document.getElementById('replay-chart'), { height: 130 });
    this.seek = document.getElementById('replay-seek');
    this.addLayers();

    const form = document.getElementById('replay-form');
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.load();
    });
    document.getElementById('replay-play').addEventListener('click', () => this.toggle());
    document.getElementById('replay-stop').addEventListener('click', () => this.close());
    // Before a replay is loaded the speed is just remembered: Load sends it.
    document.getElementById('replay-speed').addEventListener('change', (e) => this.request && this.send({ type: 'speed', speed: e.target.value }));
    // Dragging shows where it would go; letting go seeks there.
    this.seek.addEventListener('input', () => this.showClock(Number(this.seek.value)));
    this.seek.addEventListener('change', () => this.seekTo(Number(this.seek.value)));
    document.getElementById('replay-marks').addEventListener('click', (e) => {
      const mark = e.target.closest('[data-ts]');
      if (mark) this.seekTo(Number(mark.dataset.ts));
    });
  }

  addLayers() {
    const map = this.map;
    map.addSource('replay-trails', { type: 'geojson', data: EMPTY });
    map.addSource('replay', { type: 'geojson', data: EMPTY });
    map.addLayer({ id: 'replay-trails', type: 'line', source: 'replay-trails', paint: { 'line-color': '#7c3aed', 'line-width': 2.5, 'line-opacity': 0.7 } });
    map.addLayer({
      id: 'replay',
      type: 'circle',
      source: 'replay',
      paint: { 'circle-radius': 7, 'circle-color': '#7c3aed', 'circle-stroke-color': '#fff', 'circle-stroke-width': 2 },
    });
  }

  /** The form's defaults: the device in view, the last hour. */
  prefill(device) {
    const f = document.getElementById('replay-form').elements;
    if (device && !f.devices.value) f.devices.value = device;
    if (!f.from.value) {
      const now = Date.now();
      f.from.value = localInput(now - 3_600_000);
      f.to.value = localInput(now);
    }
  }

  async load() {
    const f = document.getElementById('replay-form').elements;
    const devices = idList(f.devices.value);
    const fromMs = new Date(f.from.value).getTime();
    const toMs = new Date(f.to.value).getTime();
    const note = document.getElementById('replay-note');
    if (!devices.length || !Number.isFinite(fromMs) || !Number.isFinite(toMs)) {
      notify('Replay needs devices and a range.');
      return;
    }
    if (fromMs >= toMs) {
      notify('Replay: the range must end after it starts.');
      return;
    }
    this.close();
    this.request = { devices, fromMs, toMs };
    this.zoomedIn = false;
    this.clockMs = fromMs;
    this.seek.min = String(fromMs);
    this.seek.max = String(toMs);
    this.seek.step = '1000';
    this.seek.value = String(fromMs);
    document.getElementById('replay-player').hidden = false;
    note.textContent = '';
    for (const layer of LIVE_LAYERS) if (this.map.getLayer(layer)) this.map.setLayoutProperty(layer, 'visibility', 'none');
    this.showClock(fromMs);
    this.connect(null);
    this.marks(devices, fromMs, toMs);
    this.loadChart(devices[0], fromMs, toMs);
  }

  connect(since) {
    const { devices, fromMs, toMs } = this.request;
    const socket = new WebSocket(socketUrl('/api/ws'), 'fieldline.json');
    this.socket = socket;
    socket.onopen = () => {
      const speed = document.getElementById('replay-speed').value;
      const start = { type: 'replay', devices, from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString(), speed };
      if (since) start.since = since;
      socket.send(JSON.stringify(start));
      // Resumed while paused: stay paused.
      if (since && !this.playing) socket.send(JSON.stringify({ type: 'pause' }));
    };
    socket.onmessage = (m) => this.message(m.data);
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.ended) return;
      // Lost mid-replay (a restart, a network blip): go on from the last place we had.
      document.getElementById('replay-note').textContent = 'Connection lost; reconnecting…';
      setTimeout(() => this.request && !this.socket && this.connect(this.place), 2000);
    };
  }

  message(text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      return;
    }
    for (const item of Array.isArray(data) ? data : [data]) {
      if (item.kind) this.event(item);
      else this.control(item);
    }
  }

  control(c) {
    const note = document.getElementById('replay-note');
    switch (c.type) {
      case 'replay':
        this.speed = c.speed;
        this.ended = false;
        this.setPlaying(true);
        if (note.textContent.startsWith('Connection lost')) note.textContent = '';
        break;
      case 'replay_state':
        this.speed = c.speed;
        this.setPlaying(c.state === 'playing');
        this.clock(Date.parse(c.ts));
        break;
      case 'clock':
        this.clock(Date.parse(c.ts));
        break;
      case 'end':
        this.ended = true;
        this.setPlaying(false);
        this.clock(this.request.toMs);
        note.textContent = 'End of the range.';
        break;
      case 'error':
        note.textContent = `Replay: ${c.error}`;
        notify(`Replay: ${c.error}`);
        break;
      default:
    }
  }

  event(ev) {
    if (ev.id) this.place = ev.id;
    const ms = Date.parse(ev.ts);
    if (Number.isFinite(ms)) this.clock(ms);
    if (ev.kind === 'location' && Number.isFinite(ev.lat) && Number.isFinite(ev.lon)) {
      let d = this.devices.get(ev.device);
      if (!d) {
        d = { num: this.devices.size + 1, path: [] };
        this.devices.set(ev.device, d);
      }
      d.lon = ev.lon;
      d.lat = ev.lat;
      d.path.push([ev.lon, ev.lat]);
      if (d.path.length > TRAIL_POINTS) d.path.splice(0, d.path.length - TRAIL_POINTS);
    } else if (ev.kind === 'geofence' || ev.kind === 'alert') {
      document.getElementById('replay-note').textContent = `${ev.device}: ${summary(ev)}`;
    }
    this.schedule();
  }

  clock(ms) {
    if (!Number.isFinite(ms)) return;
    this.clockMs = ms;
    this.schedule();
  }

  /** Map, slider, clock text and chart cursor: once per frame, however many events came. */
  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      if (!this.request) return;
      const points = [];
      const trails = [];
      for (const [device, d] of this.devices) {
        points.push({ type: 'Feature', id: d.num, geometry: { type: 'Point', coordinates: [d.lon, d.lat] }, properties: { device } });
        if (d.path.length > 1) trails.push({ type: 'Feature', id: d.num, geometry: { type: 'LineString', coordinates: d.path }, properties: { device } });
      }
      this.map.getSource('replay').setData({ type: 'FeatureCollection', features: points });
      this.map.getSource('replay-trails').setData({ type: 'FeatureCollection', features: trails });
      if (document.activeElement !== this.seek) this.seek.value = String(this.clockMs);
      this.showClock(this.clockMs);
      this.chart.cursorAt(this.clockMs / 1000);
      const first = this.devices.get(this.request.devices[0]) || this.devices.values().next().value;
      if (first && document.getElementById('replay-follow').checked) {
        // Zoomed in on the first fix, then kept in the middle.
        const zoom = this.zoomedIn ? this.map.getZoom() : Math.max(this.map.getZoom(), 14);
        this.zoomedIn = true;
        this.map.easeTo({ center: [first.lon, first.lat], zoom, duration: 200 });
      }
    });
  }

  showClock(ms) {
    document.getElementById('replay-clock').textContent = new Date(ms).toLocaleString([], { dateStyle: 'medium', timeStyle: 'medium' });
    document.getElementById('replay-clock').dataset.ts = String(ms);
  }

  toggle() {
    if (this.ended) {
      // Played to the end: Play starts over.
      this.seekTo(this.request.fromMs);
      this.ended = false;
      this.send({ type: 'play' });
      return;
    }
    this.send({ type: this.playing ? 'pause' : 'play' });
  }

  seekTo(ms) {
    if (!this.request) return;
    for (const d of this.devices.values()) d.path = [];
    this.ended = false;
    this.clock(ms);
    this.send({ type: 'seek', ts: new Date(ms).toISOString() });
  }

  setPlaying(on) {
    this.playing = on;
    const button = document.getElementById('replay-play');
    button.textContent = on ? 'Pause' : 'Play';
    button.setAttribute('aria-pressed', String(on));
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
    else notify('Replay: not connected to the server.');
  }

  /** The range's geofence and alert events as marks along the slider. */
  async marks(devices, fromMs, toMs) {
    const box = document.getElementById('replay-marks');
    box.innerHTML = '';
    const q = new URLSearchParams({ devices: devices.join(','), from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString(), limit: '500' });
    try {
      const events = await api(`/api/events?${q}`);
      // Events at the same moment share one mark (stacked marks could not be told apart).
      const at = new Map();
      for (const ev of events) {
        const ms = Date.parse(ev.ts);
        if (!at.has(ms)) at.set(ms, []);
        at.get(ms).push(ev);
      }
      box.innerHTML = [...at]
        .map(([ms, evs]) => {
          const left = ((ms - fromMs) / (toMs - fromMs)) * 100;
          const kind = evs.some((ev) => ev.kind === 'alert') ? 'alert' : 'geofence';
          const text = evs.map((ev) => `${ev.device}: ${summary(ev)}`).join('; ');
          return `<button type="button" class="mark ${kind}" style="left:${left.toFixed(2)}%" data-ts="${ms}" title="${escapeHtml(text)}" aria-label="${escapeHtml(`Seek to ${text}`)}"></button>`;
        })
        .join('');
    } catch (error) {
      notify(describe(error, 'Loading the replay’s events'));
    }
  }

  async loadChart(device, fromMs, toMs) {
    const note = document.getElementById('replay-note');
    try {
      const d = await api(`/api/devices/${encodeURIComponent(device)}`);
      const metric = Object.keys(d.metrics || {}).sort()[0];
      if (!metric) {
        this.chart.destroy();
        return;
      }
      const q = new URLSearchParams({ metric, from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString(), points: '200' });
      const rows = await api(`/api/devices/${encodeURIComponent(device)}/telemetry?${q}`);
      if (!this.request) return;
      this.chart.set(`${device} ${metric}`, fromBuckets(rows));
    } catch (error) {
      note.textContent = describe(error, 'Loading the replay chart');
    }
  }

  close() {
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
    const was = !!this.request;
    this.request = null;
    this.place = null;
    this.ended = false;
    this.devices.clear();
    this.setPlaying(false);
    this.chart.destroy();
    this.map.getSource('replay').setData(EMPTY);
    this.map.getSource('replay-trails').setData(EMPTY);
    document.getElementById('replay-player').hidden = true;
    document.getElementById('replay-marks').innerHTML = '';
    if (was) for (const layer of LIVE_LAYERS) if (this.map.getLayer(layer)) this.map.setLayoutProperty(layer, 'visibility', 'visible');
  }
}

/** A time as a `datetime-local` input wants it: local, to the second. */
function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 19);
}
