// A live-view client beside the page in the dashboard benchmark (`WS_CLIENT=1`): the whole
// location stream over the WebSocket, timed from each fix's `ts` (set by the simulator as it
// publishes) to its receipt here. Nothing draws here, so a tail this client sees too is not
// the page's drawing. It is not a clean control: it takes the whole stream where the page
// takes a bounding box, and it needs CPU on the same cores. Prints one JSON object at the end
// of the window; exits 1 if the socket fails or closes first.
// Node.js 20 needs --experimental-websocket (22 has WebSocket).
// Usage: node --experimental-websocket bench-dashboard-ws.mjs WS_URL WARMUP_S MEASURE_S

const [url, warmup, measure] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const latencies = [];
let opened = 0;
const socket = new WebSocket(url, 'fieldline.json');

function report() {
  latencies.sort((a, b) => a - b);
  const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
  console.log(
    JSON.stringify({
      ws_client_events_per_s: Math.round(latencies.length / measure),
      ws_client_ms_p50: q(0.5),
      ws_client_ms_p99: q(0.99),
      ws_client_ms_max: latencies.length ? latencies[latencies.length - 1] : null,
    }),
  );
  process.exit(0);
}

socket.onopen = () => {
  socket.send(JSON.stringify({ type: 'subscribe', kinds: ['location'] }));
  opened = Date.now();
  // On a timer, not on the next message: a stream that stops must still end the run.
  setTimeout(report, (warmup + measure) * 1000);
};
socket.onmessage = (m) => {
  const now = Date.now();
  if (now - opened < warmup * 1000) return;
  // Events come in arrays, or one alone when only one was waiting.
  const data = JSON.parse(m.data);
  for (const ev of Array.isArray(data) ? data : [data]) {
    if (ev.kind !== 'location') continue;
    const ms = now - Date.parse(ev.ts);
    if (Number.isFinite(ms)) latencies.push(ms);
  }
};
const fail = (why) => () => {
  console.error(`bench-dashboard-ws: ${why}`);
  process.exit(1);
};
socket.onerror = fail('the WebSocket failed');
socket.onclose = fail('the server closed the WebSocket before the end of the window');
