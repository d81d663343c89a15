// Commands in the device detail: send one (name and JSON payload), send again one of the
// device's recent commands with a click, and the device's ledger, each command's state and
// reply updated live from `command` events.

import { api, describe } from './api.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';

/** Ledger entries shown, newest first. */
const SHOWN = 15;
/** Quick buttons: the distinct commands most recently sent to this device. */
const QUICK = 4;

export class CommandPanel {
  constructor() {
    this.id = null;
    this.commands = [];
    /** Command id → the states this page showed it in, in order. */
    this.shown = new Map();
    this.form = document.getElementById('command-form');
    this.error = document.getElementById('command-error');
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.send(document.getElementById('command-name').value.trim(), document.getElementById('command-payload').value.trim());
    });
    document.getElementById('command-quick').addEventListener('click', (e) => {
      const button = e.target.closest('button[data-index]');
      if (!button) return;
      const c = this.quick()[Number(button.dataset.index)];
      if (c) this.send(c.name, c.payload === undefined ? '' : JSON.stringify(c.payload));
    });
  }

  async show(id) {
    this.id = id;
    this.commands = [];
    this.error.textContent = '';
    this.render();
    try {
      const list = await api(`/api/devices/${encodeURIComponent(id)}/commands?limit=${SHOWN}`);
      if (this.id !== id) return;
      this.commands = list;
      this.render();
    } catch (error) {
      if (this.id === id) this.error.textContent = describe(error, 'Loading commands');
    }
  }

  async send(name, payloadText) {
    this.error.textContent = '';
    const body = { name };
    if (payloadText) {
      try {
        body.payload = JSON.parse(payloadText);
      } catch {
        this.error.textContent = 'The payload must be JSON, for example {"seconds": 5}.';
        return;
      }
    }
    const id = this.id;
    try {
      const command = await api(`/api/devices/${encodeURIComponent(id)}/commands`, {
        method: 'POST',
        // A retried click (a flaky network) makes one command, not two.
        headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
        body: JSON.stringify(body),
      });
      if (this.id !== id) return;
      this.merge(command);
    } catch (error) {
      this.error.textContent = describe(error, 'Sending the command');
    }
  }

  /** A live `command` event: the state (and reply) of one of the shown device's commands. */
  event(ev) {
    if (ev.device !== this.id) return;
    const known = this.commands.find((c) => c.id === ev.command);
    if (known) {
      if (order(ev.state) >= order(known.state)) {
        known.state = ev.state;
        if (ev.reply !== undefined) known.reply = ev.reply;
      }
      this.render();
    } else {
      this.merge({ id: ev.command, name: ev.name, state: ev.state, reply: ev.reply, created: ev.ts });
    }
    if (ev.state === 'failed' || ev.state === 'expired') notify(`${ev.device}: command ${ev.name} ${ev.state}`, 'alert', 5000);
  }

  merge(command) {
    const at = this.commands.findIndex((c) => c.id === command.id);
    if (at >= 0) {
      // An event may have moved it on already: keep the later state.
      const known = this.commands[at];
      if (order(command.state) >= order(known.state)) this.commands[at] = { ...known, ...command };
    } else {
      this.commands.unshift(command);
      this.commands.length = Math.min(this.commands.length, SHOWN);
    }
    this.render();
  }

  quick() {
    const seen = new Set();
    const out = [];
    for (const c of this.commands) {
      const key = `${c.name} ${JSON.stringify(c.payload)}`;
      if (seen.has(key) || !c.name) continue;
      seen.add(key);
      out.push(c);
      if (out.length === QUICK) break;
    }
    return out;
  }

  render() {
    for (const c of this.commands) {
      const states = this.shown.get(c.id) || [];
      if (states[states.length - 1] !== c.state) this.shown.set(c.id, [...states, c.state]);
    }
    document.getElementById('command-quick').innerHTML = this.quick()
      .map((c, i) => `<button type="button" data-index="${i}" title="Send again">${escapeHtml(c.name)}</button>`)
      .join('');
    document.getElementById('command-list').innerHTML = this.commands.length
      ? this.commands
          .map((c) => {
            const reply = c.reply === undefined ? '' : `<code>${escapeHtml(JSON.stringify(c.reply))}</code>`;
            const when = c.created ? new Date(c.created).toLocaleTimeString() : '';
            return `<li class="command" data-command="${escapeHtml(c.id)}"><b>${escapeHtml(c.name || '')}</b> ` +
              `<span class="state ${escapeHtml(c.state)}" data-state="${escapeHtml(c.state)}">${escapeHtml(c.state)}</span> ` +
              `<span class="note">${escapeHtml(when)}</span> ${reply}</li>`;
          })
          .join('')
      : '<li class="note">No commands sent to this device.</li>';
  }
}

/** States in the order a command moves through them (final ones last). */
function order(state) {
  return ['queued', 'sent', 'delivered', 'replied', 'failed', 'expired', 'cancelled'].indexOf(state);
}
