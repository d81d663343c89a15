// The device list: virtualised (only the rows in view exist in the DOM, so 10,000 devices
// scroll as lightly as ten), with search, an online/offline filter with counts, and sorting.

const ROW = 30;
const OVERSCAN = 8;

export class DeviceList {
  constructor(root, { devices, onSelect }) {
    this.root = root;
    this.devices = devices; // the LiveMap's id -> entry map
    this.onSelect = onSelect;
    this.filter = 'all';
    this.query = '';
    this.sort = 'last_seen';
    this.rows = [];
    this.selected = null;
    /** Device id -> the severity of its worst open alarm. */
    this.alarms = new Map();
    this.dirty = true;
    this.spacer = document.createElement('div');
    this.spacer.className = 'spacer';
    root.appendChild(this.spacer);
    root.addEventListener('scroll', () => this.render());
    root.addEventListener('keydown', (e) => this.key(e));
    root.addEventListener('click', (e) => {
      const row = e.target.closest('[data-id]');
      if (row) this.onSelect(row.dataset.id);
    });
    // Re-filtering, sorting and repainting 10,000 entries per event would be waste: once a
    // second, the resolution of "last seen" (search, filter and sort apply at once).
    setInterval(() => this.dirty && this.refresh(), 1000);
  }

  changed() {
    this.dirty = true;
  }

  setFilter(filter) {
    this.filter = filter;
    this.refresh();
  }

  setQuery(query) {
    this.query = query.trim().toLowerCase();
    this.refresh();
  }

  setAlarms(alarms) {
    this.alarms = alarms;
    this.render();
  }

  setSort(sort) {
    this.sort = sort;
    this.refresh();
  }

  refresh() {
    this.dirty = false;
    const rows = [];
    for (const e of this.devices.values()) {
      if (this.filter === 'online' && !e.online) continue;
      if (this.filter === 'offline' && e.online) continue;
      if (this.query && !e.id.toLowerCase().includes(this.query)) continue;
      rows.push(e);
    }
    if (this.sort === 'id') rows.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    else rows.sort((a, b) => b.lastMs - a.lastMs || (a.id < b.id ? -1 : 1));
    this.rows = rows;
    this.spacer.style.height = `${rows.length * ROW}px`;
    this.render();
  }

  render() {
    const top = this.root.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + this.root.clientHeight) / ROW) + OVERSCAN);
    const now = Date.now();
    const html = [];
    for (let i = first; i < last; i++) {
      const e = this.rows[i];
      const sel = e.id === this.selected;
      const alarm = this.alarms.get(e.id);
      const tag = alarm ? `<span class="alarm-tag ${escapeHtml(alarm)}" title="open ${escapeHtml(alarm)} alarm">${escapeHtml(alarm)}</span>` : '';
      html.push(
        `<div class="row${sel ? ' selected' : ''}" role="option" aria-selected="${sel}" data-id="${escapeHtml(e.id)}" style="top:${i * ROW}px">` +
          `<span class="dot ${e.state}"></span><span class="id">${escapeHtml(e.id)}</span>${tag}` +
          `<span class="ago">${e.lastMs ? ago(now - e.lastMs) : ''}</span></div>`,
      );
    }
    this.spacer.innerHTML = html.join('');
  }

  select(id) {
    this.selected = id;
    const i = this.rows.findIndex((e) => e.id === id);
    if (i >= 0) {
      const top = i * ROW;
      if (top < this.root.scrollTop || top + ROW > this.root.scrollTop + this.root.clientHeight) this.root.scrollTop = top - ROW * 3;
    }
    this.render();
  }

  key(e) {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp' && e.key !== 'Enter') return;
    e.preventDefault();
    let i = this.rows.findIndex((r) => r.id === this.selected);
    if (e.key === 'ArrowDown') i = Math.min(this.rows.length - 1, i + 1);
    if (e.key === 'ArrowUp') i = Math.max(0, i - 1);
    if (i >= 0 && this.rows[i]) this.onSelect(this.rows[i].id);
  }
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.round(s / 60)}m`;
  if (s < 86400) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}
