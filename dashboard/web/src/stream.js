// A live stream over the WebSocket (`/api/ws`, JSON): the server sends events in arrays of
// up to 256 per frame, so 10,000 events a second cost the page a few dozen messages, not
// 10,000 (as Server-Sent Events would). It resumes after a disconnect from the last event
// id, moves to a new filter by subscribing again on the same socket (the server carries on
// from where it was, so nothing in between is lost), and on `reset` (the server no longer
// holds what we missed, or it restarted) asks for a reload.

import { socketUrl } from './api.js';

/** Pause before connecting again, growing to the last. */
const RETRY_MS = [500, 1000, 2000, 3000];

export class LiveStream {
  constructor({ kinds, onEvent, onReset, onState }) {
    this.kinds = kinds;
    this.onEvent = onEvent;
    this.onReset = onReset;
    this.onState = onState;
    this.bbox = null;
    this.devices = null;
    this.lastId = null;
    this.socket = null;
    this.failures = 0;
  }

  subscribe() {
    const message = { type: 'subscribe', kinds: this.kinds };
    if (this.bbox) message.bbox = this.bbox;
    if (this.devices) message.devices = this.devices;
    if (this.lastId) message.since = this.lastId;
    this.socket.send(JSON.stringify(message));
  }

  open() {
    this.close();
    const socket = new WebSocket(socketUrl('/api/ws'), 'fieldline.json');
    this.socket = socket;
    socket.onopen = () => this.subscribe();
    socket.onmessage = (m) => {
      if (this.socket !== socket) return;
      let data;
      try {
        data = JSON.parse(m.data);
      } catch {
        return;
      }
      if (Array.isArray(data)) {
        for (const ev of data) this.event(ev);
      } else if (data.kind) this.event(data);
      else this.control(data);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.onState('reconnecting');
      const pause = RETRY_MS[Math.min(this.failures, RETRY_MS.length - 1)];
      this.failures++;
      setTimeout(() => !this.socket && this.open(), pause);
    };
  }

  event(ev) {
    if (ev.id) this.lastId = ev.id;
    this.onEvent(ev.kind, ev);
  }

  control(c) {
    if (c.type === 'subscribed') {
      this.failures = 0;
      this.onState('live');
    } else if (c.type === 'reset') {
      this.lastId = null;
      this.onReset();
    } else if (c.type === 'error') {
      // A filter the server refuses: said in the console for whoever wrote it; the page's
      // own filters are always valid.
      console.warn(`live stream: ${c.error}`);
    }
  }

  /** A new filter: subscribe again where the stream is, so nothing in between is lost. */
  filter({ bbox, devices }) {
    const same = (a, b) => (a ? a.join() : '') === (b ? b.join() : '');
    if (same(bbox, this.bbox) && same(devices, this.devices)) return false;
    this.bbox = bbox;
    this.devices = devices;
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.subscribe();
    return true;
  }

  close() {
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
  }
}
