// Email notification channels, beside the alarms they send: listed with where their delivery
// stands (the last error, quiet hours holding it), added and deleted over `/api/channels`.
// The API judges each channel and its reason is shown beside the form.

import { api, describe, idList } from './api.js';
import { confirmed } from './confirm.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';

export class ChannelEditor {
  constructor() {
    this.form = document.getElementById('channel-form');
    this.list = document.getElementById('channel-list');
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.save();
    });
    document.getElementById('channel-new').addEventListener('click', () => this.open());
    document.getElementById('channel-cancel').addEventListener('click', () => (this.form.hidden = true));
    this.list.addEventListener('click', (e) => {
      const button = e.target.closest('[data-channel-delete]');
      if (button) this.remove(button);
    });
  }

  async load() {
    let channels;
    try {
      channels = await api('/api/channels');
    } catch (error) {
      notify(describe(error, 'Loading notification channels'));
      return;
    }
    this.list.innerHTML = channels.length
      ? channels.map(item).join('')
      : '<li class="note">No notification channels: alarms reach only this page.</li>';
  }

  open() {
    this.form.reset();
    // The browser's own zone, the likeliest for quiet hours.
    this.form.elements.tz.value = Intl.DateTimeFormat().resolvedOptions().timeZone || '';
    document.getElementById('channel-error').textContent = '';
    this.form.hidden = false;
    this.form.elements.to.focus();
  }

  body() {
    const f = this.form.elements;
    const channel = { kind: 'email', to: idList(f.to.value), severity: f.severity.value };
    if (f.quiet_from.value || f.quiet_to.value) {
      channel.quiet = { from: f.quiet_from.value, to: f.quiet_to.value, tz: f.tz.value.trim() };
    }
    if (f.digest_over.value !== '') channel.digest_over = Number(f.digest_over.value);
    return JSON.stringify(channel);
  }

  async save() {
    const error = document.getElementById('channel-error');
    error.textContent = '';
    try {
      await api('/api/channels', { method: 'POST', body: this.body(), headers: { 'Content-Type': 'application/json' } });
      notify('Channel added.', 'info', 3000);
      this.form.hidden = true;
      await this.load();
    } catch (err) {
      error.textContent = describe(err, 'Adding the channel');
    }
  }

  async remove(button) {
    if (!confirmed(button)) return;
    try {
      await api(`/api/channels/${button.dataset.channelDelete}`, { method: 'DELETE' });
      notify('Channel deleted.', 'info', 3000);
      await this.load();
    } catch (err) {
      notify(describe(err, 'Deleting the channel'));
    }
  }
}

function item(c) {
  const parts = [`${c.severity} and worse`];
  if (c.quiet) parts.push(`quiet ${c.quiet.from}–${c.quiet.to} ${c.quiet.tz}`);
  if (c.quiet_until) parts.push('in quiet hours now');
  const error = c.last_error ? `<div class="form-error">Last error: ${escapeHtml(c.last_error)}</div>` : '';
  return `<li data-channel-id="${escapeHtml(String(c.id))}"><div>${escapeHtml(c.to.join(', '))} <span class="kind">${escapeHtml(parts.join(' · '))}</span></div>${error}<button type="button" class="danger" data-channel-delete="${escapeHtml(String(c.id))}">Delete</button></li>`;
}
