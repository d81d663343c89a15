// The detail panel of one device: its state, newest position and metric values, follow, a
// chart of one metric (live, or a chosen range through `points=`), its track for a range with
// trips and stops, and export links. Values shown are only what the API or the stream sent.

import { distance, heading, position, setSpeedUnit, speed, speedUnit, when } from './units.js';
import { api, ApiError, describe, failure, token } from './api.js';
import { fromBuckets, TimeChart } from './chart.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';

/** The live chart's window, in seconds. */
const LIVE_S = 15 * 60;
/** Chart points asked of the API for a range: about one per two pixels of the panel. */
const POINTS = 150;

export class DeviceDetail {
  constructor({ onClose, onFollow, track }) {
    this.panel = document.getElementById('detail');
    this.id = null;
    this.device = null;
    this.track = track;
    this.chart = new TimeChart(document.getElementById('chart'));
    this.chartAsk = 0;
    document.getElementById('detail-close').addEventListener('click', onClose);
    document.getElementById('follow').addEventListener('change', (e) => onFollow(e.target.checked));
    const unit = document.getElementById('speed-unit');
    unit.value = speedUnit();
    unit.addEventListener('change', () => {
      setSpeedUnit(unit.value);
      this.render();
    });
    // "x s ago" moves while the panel is open.
    setInterval(() => !this.panel.hidden && this.render(), 5000);
    document.getElementById('chart-metric').addEventListener('change', () => this.loadChart());
    document.getElementById('chart-range').addEventListener('change', () => this.loadChart());
    document.getElementById('track-show').addEventListener('click', () => this.showTrack());
    document.getElementById('track-clear').addEventListener('click', () => {
      this.track.clear();
      document.getElementById('trips').innerHTML = '';
    });
    for (const format of ['csv', 'gpx', 'geojson']) {
      document.getElementById(`export-${format}`).addEventListener('click', (e) => this.download(e, format));
    }
  }

  /** Without a token a plain link streams the file; with one (headers only, never in a URL
   * that ends up in logs) it is fetched and handed over as a file. */
  async download(event, format) {
    const link = event.currentTarget;
    if (!token()) return;
    event.preventDefault();
    try {
      const response = await fetch(link.href, { headers: { Authorization: `Bearer ${token()}` } });
      if (!response.ok) throw await failure(response);
      const name = /filename="([^"]+)"/.exec(response.headers.get('Content-Disposition') || '');
      const url = URL.createObjectURL(await response.blob());
      const a = document.createElement('a');
      a.href = url;
      a.download = name ? name[1] : `${this.id}.${format}`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (error) {
      notify(describe(error instanceof ApiError ? error : new ApiError(0, error.message), `Exporting ${format.toUpperCase()}`));
    }
  }

  async show(id) {
    this.id = id;
    this.device = null;
    this.panel.hidden = false;
    document.getElementById('detail-title').textContent = id;
    document.getElementById('detail-state').textContent = 'loading…';
    document.getElementById('detail-values').innerHTML = '';
    const from = new Date(Date.now() - 86_400_000).toISOString();
    for (const format of ['csv', 'gpx', 'geojson']) {
      const link = document.getElementById(`export-${format}`);
      link.href = `/api/devices/${encodeURIComponent(id)}/track?format=${format}&from=${from}`;
    }
    try {
      const device = await api(`/api/devices/${encodeURIComponent(id)}`);
      if (this.id !== id) return;
      this.device = device;
      this.render();
      this.fillMetrics();
    } catch (error) {
      if (this.id !== id) return;
      document.getElementById('detail-state').textContent = describe(error, `Loading ${id}`);
      notify(describe(error, `Loading ${id}`));
    }
  }

  /** The metric choice: the device's metrics by name, keeping the one chosen before. */
  fillMetrics() {
    const select = document.getElementById('chart-metric');
    const names = Object.keys(this.device.metrics || {}).sort();
    const before = select.value;
    select.innerHTML = names.map((n) => `<option>${escapeHtml(n)}</option>`).join('');
    if (names.includes(before)) select.value = before;
    document.getElementById('chart-box').hidden = names.length === 0;
    if (names.length) this.loadChart();
    else this.chart.destroy();
  }

  async loadChart() {
    const id = this.id;
    const metric = document.getElementById('chart-metric').value;
    const range = document.getElementById('chart-range').value;
    const note = document.getElementById('chart-note');
    const span = range === 'live' ? LIVE_S : Number(range);
    const to = Date.now();
    const q = new URLSearchParams({ metric, from: new Date(to - span * 1000).toISOString(), to: new Date(to).toISOString(), points: String(POINTS) });
    const ask = ++this.chartAsk;
    note.textContent = 'loading…';
    try {
      const rows = await api(`/api/devices/${encodeURIComponent(id)}/telemetry?${q}`);
      if (ask !== this.chartAsk) return;
      this.chart.set(metric, fromBuckets(rows));
      note.textContent = rows.length ? (range === 'live' ? 'live' : `${rows.length} points`) : `no ${metric} in this range`;
    } catch (error) {
      if (ask !== this.chartAsk) return;
      this.chart.destroy();
      note.textContent = describe(error, 'Loading the chart');
    }
  }

  async showTrack() {
    const id = this.id;
    const span = Number(document.getElementById('track-range').value);
    const to = new Date();
    const from = new Date(to - span * 1000);
    const q = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
    const list = document.getElementById('trips');
    list.innerHTML = '<li>loading…</li>';
    try {
      const base = `/api/devices/${encodeURIComponent(id)}`;
      const [track, trips] = await Promise.all([
        api(`${base}/track?format=geojson&simplify=5&${q}`),
        api(`${base}/trips?${q}`),
      ]);
      if (id !== this.id) return;
      const fixes = this.track.show(track, trips.stops);
      const items = [
        ...trips.trips.map((t) => ({ at: t.start, text: `trip ${time(t.start)}–${time(t.end)}: ${distance(t.distance_m)}, max ${speed(t.max_speed)}` })),
        ...trips.stops.map((s) => ({ at: s.start, text: `stop ${time(s.start)}–${time(s.end)}: ${Math.round(s.duration_s / 60)} min` })),
      ].sort((a, b) => a.at.localeCompare(b.at));
      list.innerHTML = fixes
        ? items.map((i) => `<li>${escapeHtml(i.text)}</li>`).join('') || '<li>no trips or stops</li>'
        : '<li>no fixes in this range</li>';
    } catch (error) {
      list.innerHTML = '';
      notify(describe(error, 'Loading the track'));
    }
  }

  hide() {
    this.id = null;
    this.chart.destroy();
    this.chartAsk++;
    this.panel.hidden = true;
    document.getElementById('follow').checked = false;
  }

  /** A live event of the shown device. */
  event(kind, ev) {
    if (!this.device || ev.device !== this.id) return;
    if (kind === 'location') {
      this.device.location = ev;
      this.device.last_seen = ev.ts;
    } else if (kind === 'status') {
      this.device.online = !!ev.online;
    } else if (kind === 'telemetry') {
      const known = Object.keys(this.device.metrics || {}).length;
      this.device.metrics = this.device.metrics || {};
      for (const [name, value] of Object.entries(ev.metrics || {})) this.device.metrics[name] = { ts: ev.ts, value };
      this.device.last_seen = ev.ts;
      const metric = document.getElementById('chart-metric').value;
      const value = ev.metrics && ev.metrics[metric];
      if (document.getElementById('chart-range').value === 'live' && value !== undefined && this.chart.plot) {
        this.chart.push(Date.parse(ev.ts) / 1000, Number(value), LIVE_S);
        document.getElementById('chart-note').textContent = 'live';
      }
      if (Object.keys(this.device.metrics).length !== known) this.fillMetrics();
    }
    this.render();
  }

  render() {
    const d = this.device;
    if (!d) return;
    document.getElementById('detail-state').textContent = `${d.online ? 'online' : 'offline'} · last seen ${when(d.last_seen)}`;
    const rows = [];
    const loc = d.location;
    if (loc) {
      rows.push(['position', position(loc.lat, loc.lon)]);
      if (loc.speed != null) rows.push(['speed', speed(loc.speed)]);
      if (loc.heading != null) rows.push(['heading', heading(loc.heading)]);
      if (loc.alt != null) rows.push(['altitude', `${Math.round(loc.alt)} m`]);
      if (loc.accuracy != null) rows.push(['accuracy', `±${Math.round(loc.accuracy)} m`]);
      rows.push(['fix time', when(loc.ts)]);
    }
    for (const [name, m] of Object.entries(d.metrics || {})) rows.push([name, `${roundValue(m.value)}`]);
    document.getElementById('detail-values').innerHTML = rows
      .map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`)
      .join('');
  }
}

/** A reading to at most 3 decimals: 21.456789 reads 21.457. */
function roundValue(v) {
  return typeof v === 'number' ? Number(v.toFixed(3)) : v;
}

function time(iso) {
  return new Date(iso).toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}
