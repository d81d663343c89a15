// Device pickers: every field that asks for devices ("truck-1, van-*") completes the entry
// being typed from the devices this page knows, keeping the entries before it and leaving out
// those already chosen. One datalist serves whichever field has focus and holds only the best
// matches, so 10,000 devices cost nothing until someone types.

import { escapeHtml } from './devicelist.js';

const MAX_OFFERED = 50;

export class DevicePicker {
  /** `datalist`: the list the fields name (`list="…"`); `knownIds()`: the device ids to offer. */
  constructor(datalist, knownIds) {
    this.list = datalist;
    this.knownIds = knownIds;
    this.shown = null;
    const offer = (e) => this.offer(e.target);
    document.addEventListener('focusin', offer);
    document.addEventListener('input', offer);
  }

  /** Refills the list for `input` when it is one of the device fields. */
  offer(input) {
    if (!(input instanceof HTMLInputElement) || input.getAttribute('list') !== this.list.id) return;
    const text = input.value;
    const cut = text.lastIndexOf(',');
    const before = cut < 0 ? '' : `${text.slice(0, cut + 1).trimEnd()} `;
    const typed = text.slice(cut + 1).trim().toLowerCase();
    const chosen = new Set(before.split(',').map((s) => s.trim()));
    const starting = [];
    const containing = [];
    for (const id of this.knownIds()) {
      if (chosen.has(id)) continue;
      const lower = id.toLowerCase();
      if (lower.startsWith(typed)) starting.push(id);
      else if (lower.includes(typed)) containing.push(id);
    }
    const byId = (a, b) => a.localeCompare(b, undefined, { numeric: true });
    const offered = [...starting.sort(byId), ...containing.sort(byId)].slice(0, MAX_OFFERED);
    const html = offered.map((id) => `<option value="${escapeHtml(before + id)}"></option>`).join('');
    if (html !== this.shown) {
      this.list.innerHTML = html;
      this.shown = html;
    }
  }
}
