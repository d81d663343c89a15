// A live-view client beside the page in the dashboard benchmark (`WS_CLIENT=1`): the whole
// location stream over the WebSocket, timed from each fix's `ts` (set by the simulator as it
// publishes) to its receipt here. Nothing draws here, so when this client sees the same tail
// as the page, the delay is upstream of the browser (the server, or a machine short of CPU).
// Prints one JSON object. Node.js 20 needs --experimental-websocket (22 has WebSocket).
// Usage: node --experimental-websocket bench-dashboard-ws.mjs WS_URL WARMUP_S MEASURE_S

const [url, warmup, measure] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const latencies = [];
let opened = 0;
const socket = new WebSocket(url, 'fieldline.json');
socket.onopen = () => {
  socket.send(JSON.stringify({ type: 'subscribe', kinds: ['location'] }));
  opened = Date.now();
};
socket.onmessage = (m) => {
  const now = Date.now();
  if (now - opened < warmup * 1000) return;
  // Events come in arrays, or one alone when only one was waiting.
  const data = JSON.parse(m.data);
  for (const ev of Array.isArray(data) ? data : [data]) if (ev.kind === 'location') latencies.push(now - Date.parse(ev.ts));
  if (now - opened < (warmup + measure) * 1000) return;
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  const perS = latencies.length / measure;
  console.log(JSON.stringify({ ws_client_events_per_s: Math.round(perS), ws_client_ms_p50: q(0.5), ws_client_ms_p99: q(0.99), ws_client_ms_max: latencies[latencies.length - 1] }));
  process.exit(0);
};
socket.onerror = (e) => {
  console.error(`bench-dashboard-ws: ${e.message || 'the WebSocket failed'}`);
  process.exit(1);
};
