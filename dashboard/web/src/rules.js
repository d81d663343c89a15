// The alert rule editor: threshold rules (above or below, with hysteresis and a hold time),
// offline rules and stale rules (a connected device quiet about a metric, or its position),
// listed, created, edited and deleted over `/api/rules`. The API judges each rule and its
// reason is shown beside the form.

import { api, describe, idList } from './api.js';
import { confirmed } from './confirm.js';
import { escapeHtml } from './devicelist.js';
import { notify } from './notices.js';

const THRESHOLD = ['above', 'below', 'clear_below', 'clear_above', 'for_s'];

export class RuleEditor {
  constructor() {
    this.rules = [];
    this.editing = null;
    this.form = document.getElementById('rule-form');
    this.form.elements.type.addEventListener('change', () => this.showFields());
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.save();
    });
    document.getElementById('rule-new').addEventListener('click', () => this.open(null));
    document.getElementById('rule-cancel').addEventListener('click', () => this.close());
    document.getElementById('rule-delete').addEventListener('click', (e) => this.remove(e.currentTarget));
    document.getElementById('rule-list').addEventListener('click', (e) => {
      const item = e.target.closest('[data-rule-id]');
      if (item) this.open(this.rules.find((r) => String(r.id) === item.dataset.ruleId));
    });
  }

  async load() {
    try {
      this.rules = await api('/api/rules');
    } catch (error) {
      notify(describe(error, 'Loading rules'));
      return;
    }
    const list = document.getElementById('rule-list');
    list.innerHTML = this.rules.length
      ? this.rules.map((r) => `<li><button type="button" data-rule-id="${escapeHtml(String(r.id))}">${escapeHtml(r.name || `#${r.id}`)} <span class="kind">${escapeHtml(describeRule(r))}</span></button></li>`).join('')
      : '<li class="note">No alert rules yet.</li>';
  }

  open(rule) {
    this.editing = rule;
    const f = this.form.elements;
    const r = rule || {};
    f.name.value = r.name || '';
    f.devices.value = (r.devices || []).join(', ');
    f.type.value = ruleType(r);
    f.metric.value = r.metric || '';
    for (const n of [...THRESHOLD, 'offline_for_s', 'stale_for_s']) f[n].value = r[n] ?? '';
    document.getElementById('rule-delete').hidden = !rule;
    document.getElementById('rule-error').textContent = '';
    this.form.hidden = false;
    this.showFields();
    f.name.focus();
  }

  showFields() {
    const type = this.form.elements.type.value;
    for (const field of this.form.querySelectorAll('[data-rule]')) {
      field.hidden = !field.dataset.rule.split(' ').includes(type);
    }
  }

  close() {
    this.editing = null;
    this.form.hidden = true;
  }

  body() {
    const f = this.form.elements;
    const rule = { name: f.name.value.trim() };
    const devices = idList(f.devices.value);
    if (devices.length) rule.devices = devices;
    const number = (n) => {
      if (f[n].value !== '') rule[n] = Number(f[n].value);
    };
    if (f.type.value === 'offline') number('offline_for_s');
    else if (f.type.value === 'stale') {
      const metric = f.metric.value.trim();
      if (metric) rule.metric = metric;
      number('stale_for_s');
    } else {
      rule.metric = f.metric.value.trim();
      THRESHOLD.forEach(number);
    }
    return JSON.stringify(rule);
  }

  async save() {
    const error = document.getElementById('rule-error');
    error.textContent = '';
    const options = { body: this.body(), headers: { 'Content-Type': 'application/json' } };
    try {
      if (this.editing) await api(`/api/rules/${this.editing.id}`, { method: 'PUT', ...options });
      else await api('/api/rules', { method: 'POST', ...options });
      notify('Rule saved.', 'info', 3000);
      this.close();
      await this.load();
    } catch (err) {
      error.textContent = describe(err, 'Saving the rule');
    }
  }

  async remove(button) {
    if (!this.editing) return;
    if (!confirmed(button)) return;
    try {
      await api(`/api/rules/${this.editing.id}`, { method: 'DELETE' });
      notify('Rule deleted.', 'info', 3000);
      this.close();
      await this.load();
    } catch (err) {
      document.getElementById('rule-error').textContent = describe(err, 'Deleting the rule');
    }
  }
}

function ruleType(r) {
  if (r.offline_for_s !== undefined) return 'offline';
  if (r.stale_for_s !== undefined) return 'stale';
  return 'threshold';
}

function describeRule(r) {
  if (r.offline_for_s !== undefined) return `offline ≥ ${r.offline_for_s} s`;
  if (r.stale_for_s !== undefined) return `no ${r.metric || 'position'} for ${r.stale_for_s} s`;
  const parts = [];
  if (r.above !== undefined) parts.push(`${r.metric} > ${r.above}`);
  if (r.below !== undefined) parts.push(`${r.metric} < ${r.below}`);
  if (r.for_s) parts.push(`for ${r.for_s} s`);
  return parts.join(', ');
}
