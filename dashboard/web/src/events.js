// Geofence, alert and command events: the live ones as a list (newest first) and a brief
// notice for each geofence and alert event, and stored ones read back with filters (devices,
// kinds, range) from `/api/events`.

import { api, describe, idList } from './api.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';

/** Live events kept in the list; older ones are a history query away. */
const MAX_LIVE = 500;

export class EventList {
  constructor({ onSelect, isOpen }) {
    this.onSelect = onSelect;
    this.isOpen = isOpen;
    this.live = [];
    this.mode = 'live';
    this.unseen = 0;
    this.list = document.getElementById('event-list');
    this.form = document.getElementById('events-form');
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.history();
    });
    document.getElementById('events-live').addEventListener('click', () => this.showLive());
    this.list.addEventListener('click', (e) => {
      const item = e.target.closest('[data-device]');
      if (item) this.onSelect(item.dataset.device, item.dataset.lon && [Number(item.dataset.lon), Number(item.dataset.lat)]);
    });
    this.showLive();
  }

  /** One live event of kind `geofence`, `alert` or `command`. */
  event(ev) {
    this.live.unshift(ev);
    if (this.live.length > MAX_LIVE) this.live.length = MAX_LIVE;
    // A command moves through several states: the device's detail says how it went.
    if (ev.kind !== 'command') {
      notify(`${ev.device}: ${summary(ev)}`, ev.kind === 'alert' && ev.state === 'raised' ? 'alert' : 'info', 5000);
    }
    if (this.mode === 'live') this.render(this.live);
    if (!this.isOpen()) {
      this.unseen++;
      const badge = document.getElementById('events-new');
      badge.textContent = String(this.unseen);
      badge.hidden = false;
    }
  }

  opened() {
    this.unseen = 0;
    document.getElementById('events-new').hidden = true;
  }

  showLive() {
    this.mode = 'live';
    document.getElementById('events-note').textContent = 'Live: newest first.';
    this.render(this.live);
  }

  async history() {
    const f = this.form.elements;
    const q = new URLSearchParams({ limit: '1000' });
    const devices = idList(f.devices.value);
    if (devices.length) q.set('devices', devices.join(','));
    if (f.kinds.value) q.set('kinds', f.kinds.value);
    for (const name of ['from', 'to']) {
      if (!f[name].value) continue;
      const t = new Date(f[name].value);
      if (Number.isNaN(t.getTime())) {
        document.getElementById('events-note').textContent = `${name} is not a time.`;
        return;
      }
      q.set(name, t.toISOString());
    }
    const note = document.getElementById('events-note');
    note.textContent = 'loading…';
    try {
      const rows = await api(`/api/events?${q}`);
      this.mode = 'history';
      note.textContent = `${rows.length} stored event${rows.length === 1 ? '' : 's'}, oldest first${rows.length === 1000 ? ' (the first 1,000: narrow the range for more)' : ''}.`;
      this.render(rows);
    } catch (error) {
      note.textContent = describe(error, 'Loading events');
    }
  }

  render(rows) {
    this.list.innerHTML = rows.length
      ? rows
          .map((ev) => {
            const at = Number.isFinite(ev.lon) ? ` data-lon="${ev.lon}" data-lat="${ev.lat}"` : '';
            return `<li><button type="button" class="event ${escapeHtml(ev.kind)}" data-device="${escapeHtml(ev.device)}"${at}>` +
              `<span class="when">${escapeHtml(clock(ev.ts))}</span> <b>${escapeHtml(ev.device)}</b> ${escapeHtml(summary(ev))}</button></li>`;
          })
          .join('')
      : `<li class="note">${this.mode === 'live' ? 'No geofence, alert or command events since this page opened.' : 'No stored events match.'}</li>`;
  }
}

/** "entered Depot", "alert Cold chain raised: temp_c 9.1", "command reboot delivered". */
export function summary(ev) {
  if (ev.kind === 'command') return `command ${ev.name} ${ev.state}`;
  if (ev.kind === 'geofence') {
    const verb = { enter: 'entered', exit: 'left', dwell: 'dwelling in', overspeed: 'over the speed limit in' }[ev.event] || ev.event;
    return `${verb} ${ev.name || `geofence ${ev.geofence}`}`;
  }
  const value = ev.metric && ev.value !== undefined && ev.value !== null ? `: ${ev.metric} ${ev.value}` : '';
  return `alert ${ev.name || `rule ${ev.rule}`} ${ev.state}${value}`;
}

function clock(ts) {
  const t = new Date(ts);
  return Number.isNaN(t.getTime()) ? String(ts) : t.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}
