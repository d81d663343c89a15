// The alarms panel: the open alarms (active and acknowledged), most severe first and then
// oldest, each with acknowledge, assign, note and clear; their count in the top bar; the
// device list marks devices with one open. A new critical alarm can flash the page title
// (off by default, remembered in this browser). Live `alarm` events keep it current; each
// change reloads that one alarm from `/api/alarms/{id}`.

import { api, describe } from './api.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';
import { ago } from './units.js';

const RANK = { critical: 0, major: 1, minor: 2, warning: 3 };
const FLASH_KEY = 'fieldline.alarmFlash';

export class AlarmPanel {
  constructor({ onSelect, onDevices }) {
    this.onSelect = onSelect;
    this.onDevices = onDevices;
    this.open = new Map(); // id -> alarm
    this.list = document.getElementById('alarm-list');
    this.count = document.getElementById('alarms-count');
    this.flash = document.getElementById('alarm-flash');
    this.flash.checked = localStorage.getItem(FLASH_KEY) === 'on';
    this.flash.addEventListener('change', () => localStorage.setItem(FLASH_KEY, this.flash.checked ? 'on' : 'off'));
    this.list.addEventListener('click', (e) => this.click(e));
    this.list.addEventListener('submit', (e) => e.preventDefault());
    this.title = document.title;
    setInterval(() => this.render(), 10_000); // the ages move
  }

  async load() {
    try {
      const [active, acknowledged] = await Promise.all([
        api('/api/alarms?state=active&limit=10000'),
        api('/api/alarms?state=acknowledged&limit=10000'),
      ]);
      this.open = new Map([...active, ...acknowledged].map((a) => [a.id, a]));
    } catch (error) {
      notify(describe(error, 'Loading alarms'));
      return;
    }
    this.changed();
  }

  /** One live event of kind `alarm`. */
  async event(ev) {
    if (ev.change === 'raised' && ev.severity === 'critical') this.alert(ev);
    try {
      const alarm = await api(`/api/alarms/${ev.alarm}`);
      if (alarm.state === 'cleared') this.open.delete(alarm.id);
      else this.open.set(alarm.id, alarm);
    } catch (error) {
      notify(describe(error, 'Loading an alarm'));
      return;
    }
    this.changed();
  }

  alert(ev) {
    notify(`Critical alarm: ${ev.device}, ${ev.name}`, 'alert', 10_000);
    if (!this.flash.checked || this.flashing) return;
    let on = false;
    let n = 0;
    this.flashing = setInterval(() => {
      on = !on;
      document.title = on ? `⚠ ${ev.name} – ${ev.device}` : this.title;
      if (++n >= 20 || document.hasFocus()) {
        clearInterval(this.flashing);
        this.flashing = null;
        document.title = this.title;
      }
    }, 700);
  }

  changed() {
    const n = this.open.size;
    this.count.textContent = String(n);
    this.count.hidden = n === 0;
    const worst = new Map();
    for (const a of this.open.values()) {
      const was = worst.get(a.device);
      if (!was || RANK[a.severity] < RANK[was]) worst.set(a.device, a.severity);
    }
    this.onDevices(worst);
    this.render();
  }

  sorted() {
    return [...this.open.values()].sort(
      (a, b) => (RANK[a.severity] ?? 9) - (RANK[b.severity] ?? 9) || Date.parse(a.raised) - Date.parse(b.raised) || a.id - b.id,
    );
  }

  /** Updates the list in place: an alarm keeps its element (and what is typed in it) while
   * it stays open, so a change to another alarm never takes a half-written note away. */
  render() {
    const rows = this.sorted();
    const now = Date.now();
    if (!rows.length) {
      this.list.innerHTML = '<li class="note">No open alarms.</li>';
      return;
    }
    this.list.querySelector('li.note')?.remove();
    const open = new Set(rows.map((a) => String(a.id)));
    for (const li of [...this.list.querySelectorAll('li.alarm')]) {
      if (!open.has(li.dataset.alarm)) li.remove();
    }
    rows.forEach((a, i) => {
      let li = this.list.querySelector(`li.alarm[data-alarm="${a.id}"]`);
      if (!li) li = item(a.id);
      li.className = `alarm ${a.severity} ${a.state}`;
      const value = a.metric && a.value !== null ? ` · ${escapeHtml(a.metric)} ${escapeHtml(String(a.value))}` : '';
      const who = a.assignee ? ` · for ${escapeHtml(a.assignee)}` : '';
      const ack = a.acknowledged ? ` · seen by ${escapeHtml(a.acknowledged.by || '')}` : '';
      li.querySelector('.head').innerHTML = `<span class="severity">${escapeHtml(a.severity)}</span> <b>${escapeHtml(a.name)}</b> ` +
        `<button type="button" class="link" data-action="select" data-device="${escapeHtml(a.device)}">${escapeHtml(a.device)}</button>`;
      li.querySelector('.meta').innerHTML = `${escapeHtml(ago(now - Date.parse(a.raised)))}${a.count > 1 ? ` · ${a.count}×` : ''}${value}${ack}${who}`;
      const notes = li.querySelector('.notes');
      notes.innerHTML = (a.notes || []).map((n) => `<li>${escapeHtml(n.by)}: ${escapeHtml(n.text)}</li>`).join('');
      notes.hidden = !(a.notes || []).length;
      li.querySelector('[data-action=acknowledge]').hidden = a.state !== 'active';
      if (this.list.children[i] !== li) this.list.insertBefore(li, this.list.children[i] || null);
    });
  }

  async click(e) {
    const button = e.target.closest('[data-action]');
    const item = e.target.closest('[data-alarm]');
    if (!button || !item) return;
    const action = button.dataset.action;
    if (action === 'select') {
      this.onSelect(button.dataset.device);
      return;
    }
    const text = item.querySelector('[name=text]').value.trim();
    const body = action === 'assign' ? { to: text } : action === 'notes' ? { text } : {};
    try {
      const alarm = await api(`/api/alarms/${item.dataset.alarm}/${action}`, {
        method: 'POST',
        body: JSON.stringify(body),
        headers: { 'Content-Type': 'application/json' },
      });
      if (action === 'assign' || action === 'notes') item.querySelector('[name=text]').value = '';
      if (alarm.state === 'cleared') this.open.delete(alarm.id);
      else this.open.set(alarm.id, alarm);
      this.changed();
    } catch (error) {
      notify(describe(error, `${action[0].toUpperCase()}${action.slice(1)}`));
    }
  }
}

/** The element of one alarm: filled in by `render`, kept while the alarm is open. */
function item(id) {
  const li = document.createElement('li');
  li.dataset.alarm = String(id);
  li.innerHTML =
    '<div class="head"></div><div class="meta"></div><ul class="notes"></ul>' +
    '<form class="controls">' +
    '<button type="button" data-action="acknowledge">Acknowledge</button>' +
    '<input name="text" placeholder="name or note" maxlength="2000" aria-label="Assignee or note" />' +
    '<button type="button" data-action="assign">Assign</button>' +
    '<button type="button" data-action="notes">Note</button>' +
    '<button type="button" data-action="clear" class="danger">Clear</button>' +
    '</form>';
  return li;
}
