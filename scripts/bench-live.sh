#!/usr/bin/env bash
# Live-view benchmark: publish-to-receive latency over SSE and WebSocket while devices publish
# location fixes at RATE/s into Fieldline (PostgreSQL storage), with 1, 100 and 1,000 connected
# clients of mixed filters (see simulators/src/watch.rs). Every figure comes from the project's
# load client in one run: latency percentiles, events each client missed, and the server's
# memory before and after the clients connect.
# Usage: scripts/bench-live.sh [RATE] [DURATION] [DEVICES] [CLIENT_COUNTS]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-10000}"
DURATION="${2:-30}"
DEVICES="${3:-100}"
CLIENTS="${4:-1 100 1000}"
PG_PORT=54349
MQTT_PORT=18893
HTTP_PORT=18098
WORK="${TMPDIR:-/tmp}/fieldline-bench-live"
# 1,000 clients plus devices need more than the default 1,024 descriptors.
ulimit -n 65536 2>/dev/null || true

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB"
echo "== load: $DEVICES devices, $RATE fixes/s total (QoS 1, JSON, one per publish), ${DURATION}s per run; storage PostgreSQL"
for transport in sse ws; do
    for clients in $CLIENTS; do
        psql_q "DROP DATABASE IF EXISTS live" && psql_q "CREATE DATABASE live"
        # A fresh database gets a fresh write-ahead log: a log belongs to its database.
        rm -rf "$WORK/wal"
        (exec "$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
            --database-url "postgres://postgres@127.0.0.1:$PG_PORT/live" --wal-dir "$WORK/wal" >"$WORK/fl.log" 2>&1) &
        FL_PID=$!
        for _ in $(seq 100); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.1; done
        echo "== $transport, $clients clients: fieldline-sim load --devices $DEVICES --rate $RATE --duration $DURATION --watch $transport --watchers $clients"
        "$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" \
            --watch "$transport" --watchers "$clients" --http "127.0.0.1:$HTTP_PORT" --server-pid "$FL_PID" --json \
            >"$WORK/live.json" 2>"$WORK/live.progress" || true
        python3 - "$WORK/live.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
w = r["watch"]; l = w["latency_us"]
print(f"   acked {r['acked']}/{r['sent']} publishes ({r['acked_per_s']:.0f}/s)")
print(f"   latency p50 {l['p50']/1000:.2f} ms, p99 {l['p99']/1000:.2f} ms, p99.9 {l['p99_9']/1000:.2f} ms, max {l['max']/1000:.1f} ms over {l['samples']} events")
print(f"   clients with every event: {w['clients_with_every_event']}/{w['clients']}; gaps {w['gaps']}, skipped {w['skipped']}, duplicates {w['duplicates']}, resets {w['resets']}, missing {w['missing_at_end']}, errors {w['errors'][:2]}")
before, idle = w["server_rss_kb_before_clients"], w["server_rss_kb_clients_idle"]
print(f"   server RSS: {before} kB before clients, {idle} kB with them idle ({r['server_rss_kb_per_idle_client']:.1f} kB per client), peak {r['server_rss_kb_peak']} kB")
PY
        echo "   fieldline CPU $(cpu_secs "$FL_PID") s"
        kill -TERM "$FL_PID"; wait "$FL_PID" || true; FL_PID=
    done
done
