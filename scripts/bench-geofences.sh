#!/usr/bin/env bash
# Geofence benchmark, every figure from one run on one machine:
#   1. Fence checks per second on one core: 10,000 polygons of 50 vertices, R-tree then exact
#      test, beside the same fixes checked against every fence (examples/fence_checks.rs).
#   2. Sustained QoS 1 ingest into PostgreSQL from DEVICES devices at RATE/s, first with no
#      fences or rules, then with 10,000 fences (one 50-vertex polygon around each load
#      device's start, so every fix is judged) and 1,000 rules loaded; rows counted after.
#   3. Publish-to-live-event latency of geofence events: devices parked on a fence boundary
#      with GPS noise and others driving through a depot and a corridor (fieldline-sim
#      geofences), events read back over SSE.
# Usage: scripts/bench-geofences.sh [RATE] [DURATION] [DEVICES]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-50000}"
DURATION="${2:-60}"
DEVICES="${3:-10000}"
PG_PORT=54359
MQTT_PORT=18903
HTTP_PORT=18108
WORK="${TMPDIR:-/tmp}/fieldline-bench-geofences"
ulimit -n 65536 2>/dev/null || true

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
cargo build --release -q -p fieldline-ingest --example fence_checks

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB"
echo "== fence checks on one core: taskset -c 0 fence_checks 10000 50 2000000"
taskset -c 0 "$BIN/examples/fence_checks" 10000 50 2000000

start_fieldline() { # $1 database
    psql_q "DROP DATABASE IF EXISTS $1" && psql_q "CREATE DATABASE $1"
    rm -rf "$WORK/wal"
    (exec "$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --max-connections 20000 --database-url "postgres://postgres@127.0.0.1:$PG_PORT/$1" --wal-dir "$WORK/wal" >"$WORK/fl-$1.log" 2>&1) &
    FL_PID=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.1; done
}

stop_fieldline() {
    kill -TERM "$FL_PID"; wait "$FL_PID" || true; FL_PID=
}

load() { # $1 label, $2 database
    echo "== $1: fieldline-sim load --devices $DEVICES --rate $RATE --duration $DURATION --qos 1"
    "$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --json \
        >"$WORK/load.json" 2>"$WORK/load.progress" || true
    sleep 2
    local metrics; metrics=$(curl -s "127.0.0.1:$HTTP_PORT/metrics")
    echo "   load client: $(cat "$WORK/load.json")"
    echo "   fieldline: peak RSS $(peak_rss "$FL_PID"), CPU $(cpu_secs "$FL_PID") s"
    echo "   rows in PostgreSQL: $(DB=$2 psql_q 'SELECT count(*) FROM positions'), events: $(DB=$2 psql_q 'SELECT count(*) FROM events')"
    grep -E '^fieldline_(broker_lost_messages_total|geofence_checks_total|geofences_loaded|alert_rules_loaded|outbox_pending_events|events_total)' <<<"$metrics" | sed 's/^/   /'
}

start_fieldline plain
load "no fences, no rules" plain
stop_fieldline

start_fieldline fenced
echo "== set-up: fieldline-sim geofence-setup --fences 10000 --vertices 50 --rules 1000"
"$BIN/fieldline-sim" geofence-setup --http "http://127.0.0.1:$HTTP_PORT" --fences 10000 --vertices 50 --rules 1000
load "10,000 fences and 1,000 rules" fenced
stop_fieldline

start_fieldline scenario
echo "== geofence events live: fieldline-sim geofences --parked 100 --drivers 100 --noise-m 20 --interval-ms 200 --duration $DURATION"
"$BIN/fieldline-sim" geofences --port "$MQTT_PORT" --http "http://127.0.0.1:$HTTP_PORT" \
    --parked 100 --drivers 100 --noise-m 20 --interval-ms 200 --duration "$DURATION"
echo "   events stored: $(DB=scenario psql_q "SELECT fields::json->>'event' AS e, count(*) FROM events GROUP BY e ORDER BY e" | paste -sd';')"
echo "   parked devices' events: $(DB=scenario psql_q "SELECT count(*) FROM events WHERE device_id LIKE 'parked-%'"), (device, fence) pairs with more than one: $(DB=scenario psql_q "SELECT count(*) FROM (SELECT device_id, fields::json->>'geofence' FROM events WHERE device_id LIKE 'parked-%' GROUP BY 1, 2 HAVING count(*) > 1) AS flapping")"
stop_fieldline
