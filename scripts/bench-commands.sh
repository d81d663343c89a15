#!/usr/bin/env bash
# Commands benchmark, on PostgreSQL (default settings, fsync on) and on SQLite in one run:
# 1. a backlog of COMMANDS queued commands over the API for DEVICES offline devices, drained
#    when they all reconnect (time to drain, commands/s, until the ledger shows all delivered);
# 2. API-to-device latency (p50, p99) of commands at RATE/s to 100 connected devices while
#    LOAD_VEHICLES vehicles publish a fix each second (`fieldline-sim fleet --no-commands`).
# Usage: scripts/bench-commands.sh [DEVICES] [COMMANDS] [RATE] [LOAD_VEHICLES] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${1:-1000}"
COMMANDS="${2:-10000}"
RATE="${3:-100}"
LOAD="${4:-10000}"
SECONDS_RUN="${5:-30}"
PG_PORT=54389
MQTT_PORT=18933
HTTP_PORT=18138
WORK="${TMPDIR:-/tmp}/fieldline-bench-commands"
ulimit -n 65536 2>/dev/null || true

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB"
for storage in postgres sqlite; do
    if [ "$storage" = postgres ]; then
        psql_q "DROP DATABASE IF EXISTS commands" && psql_q "CREATE DATABASE commands"
        URL="postgres://postgres@127.0.0.1:$PG_PORT/commands"
    else
        rm -f "$WORK/commands.db"*
        URL="sqlite://$WORK/commands.db"
    fi
    rm -rf "$WORK/wal"
    (exec "$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --database-url "$URL" --wal-dir "$WORK/wal" --max-connections $((LOAD + DEVICES + 1000)) \
        >"$WORK/fl-$storage.log" 2>&1) &
    FL_PID=$!
    for _ in $(seq 600); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.1; done

    echo "-- $storage: drain: $COMMANDS commands queued for $DEVICES offline devices, then they connect"
    "$BIN/fieldline-sim" commands-drain --port "$MQTT_PORT" --api "http://127.0.0.1:$HTTP_PORT" \
        --devices "$DEVICES" --commands "$COMMANDS"

    echo "-- $storage: latency: $RATE commands/s to 100 connected devices for ${SECONDS_RUN}s while $LOAD vehicles publish at 1 Hz"
    "$BIN/fieldline-sim" fleet --port "$MQTT_PORT" --vehicles "$LOAD" --interval-ms 1000 --no-commands >"$WORK/fleet.log" 2>&1 &
    MQ_PID=$!
    sleep 20 # the fleet connects and settles
    "$BIN/fieldline-sim" commands-latency --port "$MQTT_PORT" --api "http://127.0.0.1:$HTTP_PORT" \
        --devices 100 --rate "$RATE" --seconds "$SECONDS_RUN"
    echo "positions stored by then: $(curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk '/^fieldline_storage_rows_written_total\{table="positions"\}/ {print $2}')"
    kill "$MQ_PID" 2>/dev/null || true; wait "$MQ_PID" 2>/dev/null || true; MQ_PID=
    kill "$FL_PID"; wait "$FL_PID" 2>/dev/null || true; FL_PID=
done
