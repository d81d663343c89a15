// The dashboard's start: settings, the token when the API asks for one, then the map, the
// device list, the detail panel, the tools (geofences, rules, events, replay) and the live
// streams wired together.

import 'maplibre-gl/dist/maplibre-gl.css';
import './style.css';
import { Map as MapLibre, NavigationControl, setWorkerUrl } from 'maplibre-gl';
// MapLibre looks for its worker beside its own module, which bundling moves: the bundler
// builds the worker (with what it imports) as an asset of its own and names it here.
import workerUrl from 'maplibre-gl/dist/maplibre-gl-worker.mjs?worker&url';
import { api, ApiError, describe, setToken } from './api.js';
import { CommandPanel } from './commands.js';
import { addLand, emptyStyle } from './basemap.js';
import { DeviceDetail } from './detail.js';
import { DeviceList } from './devicelist.js';
import { DevicePicker } from './devicepicker.js';
import { AlarmPanel } from './alarms.js';
import { EventList } from './events.js';
import { GeofenceEditor } from './geofences.js';
import { LiveMap } from './livemap.js';
import { notify } from './notices.js';
import { ReplayPlayer } from './replay.js';
import { RuleEditor } from './rules.js';
import { ChannelEditor } from './channels.js';
import { LiveStream } from './stream.js';
import { TrackView } from './track.js';

/** Zoomed in at least this far, the stream carries only what is in (and near) the view. */
const BBOX_ZOOM = 8;

const connection = document.getElementById('connection');

async function settings() {
  try {
    const response = await fetch('/dashboard.json');
    if (response.ok) return await response.json();
  } catch {
    // The defaults below.
  }
  return { map_style: null, mqtt: null };
}

/** Resolves once the API accepts us: at once without authentication, else after a token. */
async function signIn() {
  for (;;) {
    try {
      return await api('/api/devices');
    } catch (error) {
      if (!(error instanceof ApiError) || (error.status !== 401 && error.status !== 403)) throw error;
      setToken(null);
      await askToken(error.status === 403 ? 'That token may not read devices.' : error.message);
    }
  }
}

function askToken(reason) {
  const dialog = document.getElementById('token-dialog');
  document.getElementById('token-reason').textContent = `This server needs an API token: ${reason}.`;
  const input = document.getElementById('token-input');
  input.value = '';
  dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    document.getElementById('token-form').onsubmit = () => {
      setToken(input.value.trim());
      resolve();
    };
  });
}

async function boot() {
  setWorkerUrl(new URL(workerUrl, location.href).href);
  const config = await settings();
  let list;
  for (;;) {
    try {
      list = await signIn();
      break;
    } catch (error) {
      connection.textContent = 'server down';
      connection.className = 'connection down';
      notify(describe(error, 'Loading devices'));
      await new Promise((r) => setTimeout(r, 3000));
    }
  }

  const map = new MapLibre({
    container: 'map',
    style: config.map_style || emptyStyle(),
    center: [0, 20],
    zoom: 1.5,
    attributionControl: config.map_style ? undefined : { customAttribution: 'Natural Earth' },
  });
  map.addControl(new NavigationControl(), 'top-right');
  window.fieldlineMap = map;
  // Milliseconds from navigation: the first map, and the built-in land on it.
  window.fieldlineTimings = {};
  await new Promise((resolve) => map.once('load', resolve));
  fieldlineTimings.map = Math.round(performance.now());

  const live = new LiveMap(map, { onSelect: (id) => select(id) });
  window.fieldlineLive = live;
  const detail = new DeviceDetail({
    onClose: () => select(null),
    onFollow: (on) => live.select(detail.id, on),
    track: new TrackView(map),
  });
  const commands = new CommandPanel();
  window.fieldlineCommands = commands;
  const fences = new GeofenceEditor(map);
  fences.load();
  const rules = new RuleEditor();
  const channels = new ChannelEditor();
  const events = new EventList({
    onSelect: (id, at) => {
      select(id);
      if (at) map.easeTo({ center: at, zoom: Math.max(map.getZoom(), 14) });
    },
    isOpen: () => openTool === 'events',
  });
  const replay = new ReplayPlayer(map);
  window.fieldlineFences = fences;
  window.fieldlineReplay = replay;
  if (config.map_style) fieldlineTimings.land = fieldlineTimings.map;
  else
    addLand(map)
      .then(() => map.once('idle', () => (fieldlineTimings.land = Math.round(performance.now()))))
      .catch((e) => notify(`The base map did not load: ${e.message}`));
  const devices = new DeviceList(document.getElementById('list'), { devices: live.devices, onSelect: (id) => select(id) });
  const alarms = new AlarmPanel({ onSelect: (id) => select(id), onDevices: (worst) => devices.setAlarms(worst) });
  window.fieldlineAlarms = alarms;
  alarms.load();
  let detailStream = null;

  function select(id) {
    devices.select(id);
    live.select(id, document.getElementById('follow').checked);
    if (detailStream) detailStream.close();
    detailStream = null;
    if (!id) return detail.hide();
    detail.show(id);
    commands.show(id);
    // The shown device's telemetry and commands, on a stream of their own: the map's stream
    // carries fixes.
    detailStream = new LiveStream({
      kinds: ['telemetry', 'command'],
      onEvent: (kind, ev) => (kind === 'command' ? commands.event(ev) : detail.event(kind, ev)),
      onReset: () => {
        detail.show(id);
        commands.show(id);
      },
      onState: () => {},
    });
    detailStream.devices = [id];
    detailStream.open();
  }

  function showAll(fresh) {
    live.load(fresh);
    devices.refresh();
    counts();
    document.getElementById('empty').hidden = fresh.length > 0;
  }

  function counts() {
    const c = live.counts();
    for (const [k, v] of Object.entries(c)) document.querySelector(`[data-count="${k}"]`).textContent = v;
    document.getElementById('counts').textContent = `${c.online} online of ${c.all}`;
    if (c.all > 0) document.getElementById('empty').hidden = true;
  }

  async function reload() {
    try {
      showAll(await api('/api/devices'));
    } catch (error) {
      notify(describe(error, 'Reloading devices'));
    }
  }

  const empty = document.getElementById('empty');
  const mqtt = config.mqtt || `${location.hostname}:1883`;
  let host = mqtt.slice(0, mqtt.lastIndexOf(':'));
  const port = mqtt.slice(mqtt.lastIndexOf(':') + 1);
  // A wildcard listen address is not somewhere to connect to: this page's host is.
  if (host === '0.0.0.0' || host === '[::]') host = location.hostname;
  document.getElementById('first-fix').textContent =
    `mosquitto_pub -h ${host} -p ${port} -q 1 -t devices/van-1/location \\\n  -m '{"lat": 52.52, "lon": 13.40, "speed": 8.5, "heading": 90}'`;
  showAll(list);
  // The fleet in view from the start, not the whole world with the fleet as one dot.
  live.fit(live.devices.values(), false);
  document.getElementById('fit').addEventListener('click', () => {
    devices.refresh();
    if (!live.fit(devices.rows)) notify('No device listed has a position yet.', 'info', 3000);
  });
  // Device fields complete each entry from the devices this page knows.
  new DevicePicker(document.getElementById('device-ids'), () => live.devices.keys());

  const stream = new LiveStream({
    kinds: ['location', 'status'],
    onEvent: (kind, ev) => {
      if (kind === 'location') live.location(ev);
      else live.status(ev);
      if (!empty.hidden) empty.hidden = true;
      devices.changed();
      detail.event(kind, ev);
    },
    onReset: reload,
    onState: (state) => {
      connection.textContent = state === 'live' ? 'live' : 'reconnecting…';
      connection.className = `connection ${state === 'live' ? 'live' : 'down'}`;
    },
  });
  stream.open();
  setInterval(counts, 1000);

  // Geofence, alert, command and alarm events of every device, wherever the map looks: a
  // stream of their own.
  const eventStream = new LiveStream({
    kinds: ['geofence', 'alert', 'command', 'alarm'],
    onEvent: (kind, ev) => (kind === 'alarm' ? alarms.event(ev) : events.event(ev)),
    // Alarm changes were missed: the open alarms are read again.
    onReset: () => alarms.load(),
    onState: () => {},
  });
  eventStream.open();

  let openTool = null;
  function showTool(name) {
    openTool = openTool === name ? null : name;
    for (const b of document.querySelectorAll('[data-tool]')) b.setAttribute('aria-pressed', String(b.dataset.tool === openTool));
    for (const section of document.querySelectorAll('.tool')) section.hidden = section.id !== `tool-${openTool}`;
    document.getElementById('tools').hidden = !openTool;
    // Leaving the editor drops an unsaved drawing, so the map never shows a fence that is not stored.
    if (openTool !== 'geofences') fences.cancel();
    if (openTool === 'geofences') fences.load();
    if (openTool === 'rules') rules.load();
    if (openTool === 'alarms') channels.load();
    if (openTool === 'events') events.opened();
    if (openTool === 'replay') replay.prefill(detail.id);
    map.resize();
  }
  for (const button of document.querySelectorAll('[data-tool]')) button.addEventListener('click', () => showTool(button.dataset.tool));

  // Devices outside the old box got no events: a view that reaches beyond it reloads them.
  map.on('moveend', () => {
    const before = stream.bbox;
    const bbox = live.viewportBbox(BBOX_ZOOM);
    if (stream.filter({ bbox, devices: null }) && !inside(bbox, before)) reload();
  });

  // `change` as well: clearing a field (its × button, a script) need not fire `input`.
  for (const type of ['input', 'change', 'search']) {
    document.getElementById('search').addEventListener(type, (e) => devices.setQuery(e.target.value));
  }
  document.getElementById('sort').addEventListener('change', (e) => devices.setSort(e.target.value));
  for (const button of document.querySelectorAll('[data-filter]')) {
    button.addEventListener('click', () => {
      for (const b of document.querySelectorAll('[data-filter]')) b.setAttribute('aria-pressed', String(b === button));
      devices.setFilter(button.dataset.filter);
    });
  }
}

function inside(box, outer) {
  if (!outer) return true;
  if (!box) return false;
  return box[0] >= outer[0] && box[1] >= outer[1] && box[2] <= outer[2] && box[3] <= outer[3];
}

boot();
