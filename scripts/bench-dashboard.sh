#!/usr/bin/env bash
# Web dashboard benchmark: VEHICLES vehicles at 1 Hz each (`fieldline-sim fleet`, one MQTT
# connection each, around Berlin, each at its own phase of the second; FLEET_FLAGS=--in-step
# makes the whole fleet report at once) into Fieldline (SQLite), and the page open in headless
# Chromium (WebGL through SwiftShader) looking at all of them. Runs on the same load (MODES
# picks some): the page as it ships (changes drawn in the frame they are applied, at most
# every 100 ms, each device rewriting its own slot of the dot layer, in a canvas of its own
# above the map), the dots drawn inside the map instead (`?in-map`: a change renders the whole
# map), a frame later (`?next-frame`), at most every 50 ms and on every animation frame that has
# changes (`?redraw-ms=50`, `?redraw-ms=0`), and the page applying each event with a full
# GeoJSON setData (`?full-setdata`). Per run: frames per second, map renders per second,
# main-thread busy time per second, publish-to-marker latency (p50, p99) and the part of it
# until the page's script had the fix (arrival: the server, the network, and any wait behind
# the page's own work), events applied, what one draw of the dots costs; and
# the bundle size and the time to the first map. BENCH_BIN=dir runs binaries built elsewhere.
# WS_CLIENT=1 also runs a plain WebSocket client over the whole stream beside the page
# (scripts/bench-dashboard-ws.mjs), to tell delays upstream of the browser from the page's own.
# Usage: [MODES=...] [FLEET_FLAGS=...] [BENCH_BIN=...] [WS_CLIENT=1] scripts/bench-dashboard.sh [VEHICLES] [MEASURE_S]
set -euo pipefail
cd "$(dirname "$0")/.."
VEHICLES="${1:-10000}"
MEASURE="${2:-30}"
PG_PORT=54379
MQTT_PORT=18923
HTTP_PORT=18128
WORK="${TMPDIR:-/tmp}/fieldline-bench-dashboard"
ulimit -n 65536 2>/dev/null || true

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
if [ -n "${WS_CLIENT:-}" ] && ! command -v node >/dev/null 2>&1; then
    echo "WS_CLIENT=1 needs Node.js 20 or newer" >&2
    exit 1
fi
if ! command -v chromedriver >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $(chromium --version)"
# Another server on these ports would answer for ours: refuse to measure it.
if curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1; then
    echo "something already answers on port $HTTP_PORT: stop it first" >&2
    exit 1
fi
(exec "$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
    --database-url "sqlite://$WORK/dashboard.db" --wal-dir "$WORK/wal" \
    --max-connections $((VEHICLES + 1000)) >"$WORK/fl.log" 2>&1) &
FL_PID=$!
for _ in $(seq 600); do
    kill -0 "$FL_PID" 2>/dev/null || break
    curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break
    sleep 0.1
done
if ! kill -0 "$FL_PID" 2>/dev/null; then
    echo "fieldline did not start (is something else on port $MQTT_PORT or $HTTP_PORT?):" >&2
    tail -n 5 "$WORK/fl.log" >&2
    exit 1
fi

echo "-- bundle: what the page loads (bytes, gzip -6 bytes)"
python3 - "127.0.0.1:$HTTP_PORT" <<'PY'
import gzip, re, sys, urllib.request
base = "http://" + sys.argv[1]
get = lambda path: urllib.request.urlopen(base + path).read()
html = get("/")
first = ["/"] + sorted({m.decode() for m in re.findall(rb'"(/assets/[^"]+)"', html)})
later = set()
for f in first:
    if f.endswith(".js"):
        # Vite names them by content hash, e.g. `/assets/land-50m-B7heijyN.json`.
        later |= {"/assets/" + m.decode() for m in re.findall(rb'[A-Za-z0-9_.-]+-[A-Za-z0-9_-]{8}\.(?:json|js)\b', get(f))}
later -= set(first)
def served(path):
    try:
        get(path)
        return True
    except OSError:  # a string in a library that only looks like one of ours
        return False
later = {f for f in later if served(f)}
for title, files in (("loaded before the first map", first), ("loaded by the script (map worker; the base map, after the first map)", sorted(later))):
    total = gz = 0
    for f in files:
        body = html if f == "/" else get(f)
        z = len(gzip.compress(body, 6))
        total += len(body); gz += z
        print(f"  {f}: {len(body):,} bytes, {z:,} gzip")
    print(f"{title}: {total:,} bytes, {gz:,} gzip")
PY

MQ_PID=
# shellcheck disable=SC2086 # FLEET_FLAGS is a list of flags
"$BIN/fieldline-sim" fleet --port "$MQTT_PORT" --vehicles "$VEHICLES" --interval-ms 1000 --no-commands ${FLEET_FLAGS:-} >"$WORK/fleet.log" 2>&1 &
MQ_PID=$!
echo "-- waiting for $VEHICLES vehicles"
for _ in $(seq 300); do
    n=$(curl -s "127.0.0.1:$HTTP_PORT/api/devices" | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
    [ "$n" -ge "$VEHICLES" ] && break
    sleep 1
done
echo "devices known: $n"

# The page as it ships; the dots drawn inside the map (as the page did up to 4a6ea5f); each
# change a frame later (`triggerRepaint`, as the page did up to a9cf881); at most every 50 ms,
# and on every animation frame that has changes; and the way not to do it: a full GeoJSON
# setData per event.
for mode in ${MODES:-shipped in-map redraw-50ms every-frame full-setdata}; do
    case "$mode" in
        shipped) query="?measure" ;;
        redraw-50ms) query="?measure&redraw-ms=50" ;;
        every-frame) query="?measure&redraw-ms=0" ;;
        full-setdata) query="?measure&full-setdata" ;;
        next-frame) query="?measure&next-frame" ;;
        in-map) query="?measure&in-map" ;;
    esac
    echo "-- $mode ($query): 10 s warm-up, ${MEASURE} s measured"
    WS_PID=
    if [ -n "${WS_CLIENT:-}" ]; then
        # About when the page's own measurement starts: its load, then its 10 s warm-up.
        node --experimental-websocket --no-warnings scripts/bench-dashboard-ws.mjs \
            "ws://127.0.0.1:$HTTP_PORT/api/ws" 14 "$MEASURE" &
        WS_PID=$!
    fi
    python3 scripts/bench-dashboard.py "http://127.0.0.1:$HTTP_PORT/$query" 10 "$MEASURE"
    [ -z "$WS_PID" ] || wait "$WS_PID" || echo "the WebSocket client beside the page failed" >&2
done
