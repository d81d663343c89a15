// The detail panel of one device: its state, newest position and metric values, follow, and
// export links for its last 24 hours. Values shown are only what the API or the stream sent.

import { api, ApiError, describe, token } from './api.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';

export class DeviceDetail {
  constructor({ onClose, onFollow }) {
    this.panel = document.getElementById('detail');
    this.id = null;
    this.device = null;
    document.getElementById('detail-close').addEventListener('click', onClose);
    document.getElementById('follow').addEventListener('change', (e) => onFollow(e.target.checked));
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
      if (!response.ok) {
        let reason = '';
        try {
          reason = (await response.json()).error || '';
        } catch {
          // the status says enough
        }
        throw new ApiError(response.status, reason || response.statusText);
      }
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
    } catch (error) {
      if (this.id !== id) return;
      document.getElementById('detail-state').textContent = describe(error, `Loading ${id}`);
      notify(describe(error, `Loading ${id}`));
    }
  }

  hide() {
    this.id = null;
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
      this.device.metrics = this.device.metrics || {};
      for (const [name, value] of Object.entries(ev.metrics || {})) this.device.metrics[name] = { ts: ev.ts, value };
      this.device.last_seen = ev.ts;
    }
    this.render();
  }

  render() {
    const d = this.device;
    document.getElementById('detail-state').textContent = `${d.online ? 'online' : 'offline'} · last seen ${d.last_seen}`;
    const rows = [];
    const loc = d.location;
    if (loc) {
      rows.push(['position', `${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)}`]);
      if (loc.speed != null) rows.push(['speed', `${loc.speed} m/s`]);
      if (loc.heading != null) rows.push(['heading', `${loc.heading}°`]);
      if (loc.alt != null) rows.push(['altitude', `${loc.alt} m`]);
      rows.push(['fix time', loc.ts]);
    }
    for (const [name, m] of Object.entries(d.metrics || {})) rows.push([name, `${m.value}`]);
    document.getElementById('detail-values').innerHTML = rows
      .map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`)
      .join('');
  }
}
