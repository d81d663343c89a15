// The live stream over Server-Sent Events: resumes after a disconnect from the last event id
// (EventSource sends Last-Event-ID itself), moves to a new filter with `since`, and on
// `reset` (the server no longer holds what we missed, or it restarted) asks for a reload.

import { withToken } from './api.js';

export class LiveStream {
  constructor({ kinds, onEvent, onReset, onState }) {
    this.kinds = kinds;
    this.onEvent = onEvent;
    this.onReset = onReset;
    this.onState = onState;
    this.bbox = null;
    this.devices = null;
    this.lastId = null;
    this.source = null;
  }

  url() {
    const q = new URLSearchParams({ kinds: this.kinds.join(',') });
    if (this.bbox) q.set('bbox', this.bbox.join(','));
    if (this.devices) q.set('devices', this.devices.join(','));
    if (this.lastId) q.set('since', this.lastId);
    return withToken(`/api/stream?${q}`);
  }

  open() {
    this.close();
    const source = new EventSource(this.url());
    this.source = source;
    source.onopen = () => this.onState('live');
    source.onerror = () => {
      // EventSource retries by itself; a closed one (an HTTP error) we reopen after a pause.
      this.onState('reconnecting');
      if (source.readyState === EventSource.CLOSED && this.source === source) {
        setTimeout(() => this.source === source && this.open(), 3000);
      }
    };
    for (const kind of this.kinds) {
      source.addEventListener(kind, (m) => {
        if (m.lastEventId) this.lastId = m.lastEventId;
        let data;
        try {
          data = JSON.parse(m.data);
        } catch {
          return;
        }
        this.onEvent(kind, data);
      });
    }
    source.addEventListener('reset', () => {
      this.lastId = null;
      this.onReset();
    });
  }

  /** A new filter: reopen from where the stream is, so nothing in between is lost. */
  filter({ bbox, devices }) {
    const same = (a, b) => (a ? a.join() : '') === (b ? b.join() : '');
    if (same(bbox, this.bbox) && same(devices, this.devices)) return false;
    this.bbox = bbox;
    this.devices = devices;
    this.open();
    return true;
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
  }
}
