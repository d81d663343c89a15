#!/usr/bin/env bash
# What the write-ahead log costs and what it buys, every figure from one run on one machine:
#   1. 60 s of QoS 1 location fixes into PostgreSQL with --durability memory, process and
#      fsync, side by side: acknowledged rate, PUBACK latency (p50, p99), syncs per second and
#      bytes per sync, rows stored.
#   2. Drain after an outage: steady load, PostgreSQL refuses connections for OUTAGE seconds,
#      then comes back; how fast the backlog in the log is stored while live ingest goes on,
#      and Fieldline's memory meanwhile.
#   3. Recovery: a log of LOG_MB megabytes that storage does not have (writes blocked by a
#      row lock, then kill -9), and the time the next start takes to store it all.
# Usage: scripts/bench-durability.sh [RATE] [DURATION] [DEVICES] [OUTAGE] [LOG_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-100000}"
DURATION="${2:-60}"
DEVICES="${3:-20}"
OUTAGE="${4:-60}"
LOG_MB="${5:-1024}"
PG_PORT=54349
MQTT_PORT=18893
HTTP_PORT=18098
WORK="${TMPDIR:-/tmp}/fieldline-bench-durability"

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

metric() { { grep -E "^$1 " <<<"$2" || true; } | awk '{print $2}' | head -1; }

start_fieldline() { # $@ extra flags
    rm -rf "$WORK/fl" && mkdir -p "$WORK/fl"
    (cd "$WORK/fl" && exec "$OLDPWD/$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --database-url "postgres://postgres@127.0.0.1:$PG_PORT/bench" "$@" >>"$WORK/fl.log" 2>&1) &
    FL_PID=$!
    for _ in $(seq 600); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && return; sleep 0.1; done
    echo "fieldline did not become ready" >&2; tail -20 "$WORK/fl.log" >&2; exit 1
}

fresh_db() {
    DB=postgres psql_q "DROP DATABASE IF EXISTS bench WITH (FORCE)"
    DB=postgres psql_q "CREATE DATABASE bench"
}

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; log on $(df -T "$WORK" | awk 'NR==2 {print $2}')"
echo "== 1. durability modes: $DEVICES devices, QoS 1, JSON location fixes, target $RATE/s, ${DURATION}s each"
for mode in memory process fsync; do
    fresh_db
    start_fieldline --durability "$mode"
    "$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --json \
        >"$WORK/load.json" 2>"$WORK/load.progress" || true
    sleep 1
    m=$(curl -s "127.0.0.1:$HTTP_PORT/metrics")
    syncs=$(metric fieldline_wal_syncs_total "$m"); syncs=${syncs:-0}
    synced=$(metric fieldline_wal_synced_bytes_total "$m"); synced=${synced:-0}
    python3 - "$mode" "$WORK/load.json" "$syncs" "$synced" "$(psql_q 'SELECT count(*) FROM positions')" \
        "$(peak_rss "$FL_PID")" "$(cpu_secs "$FL_PID")" <<'EOF'
import json, sys
mode, path, syncs, synced, rows, rss, cpu = sys.argv[1:]
r = json.load(open(path))
lat = r.get("puback_latency_us") or {}
syncs, synced = float(syncs), float(synced)
per_s = syncs / r["elapsed_s"] if syncs else 0
per_sync = synced / syncs if syncs else 0
print(f"   {mode:8} acked {r['acked']} ({r['acked_per_s']:.0f}/s), unacked {r['unacked']}; PUBACK p50 {lat.get('p50', 0)/1000:.2f} ms, "
      f"p99 {lat.get('p99', 0)/1000:.2f} ms; syncs {syncs:.0f} ({per_s:.0f}/s, {per_sync/1024:.1f} KiB each); rows {rows}; "
      f"fieldline peak RSS {rss}, CPU {cpu} s")
EOF
    kill -TERM "$FL_PID"; wait "$FL_PID" || true; FL_PID=
done

echo "== 2. drain after a ${OUTAGE}s outage: steady load at $((RATE / 5))/s, --durability process"
fresh_db
start_fieldline
TOTAL=$((OUTAGE + 60))
"$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate "$((RATE / 5))" --duration "$TOTAL" --json \
    >"$WORK/drain.json" 2>"$WORK/drain.progress" &
LOAD_PID=$!
sleep 10
DB=postgres psql_q "ALTER DATABASE bench WITH ALLOW_CONNECTIONS false" >/dev/null
DB=postgres psql_q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'bench'" >/dev/null
rss_down=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
sleep "$OUTAGE"
m=$(curl -s "127.0.0.1:$HTTP_PORT/metrics")
backlog=$(metric fieldline_wal_unstored_bytes "$m")
rss_end=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
caught0=$(metric fieldline_pipeline_caught_up_records_total "$m"); caught0=${caught0:-0}
DB=postgres psql_q "ALTER DATABASE bench WITH ALLOW_CONNECTIONS true" >/dev/null
back=$(date +%s.%N)
until curl -s "127.0.0.1:$HTTP_PORT/readyz" | grep -q '"storage_behind":false'; do sleep 0.2; done
drained=$(date +%s.%N)
m=$(curl -s "127.0.0.1:$HTTP_PORT/metrics")
caught=$(metric fieldline_pipeline_caught_up_records_total "$m")
wait "$LOAD_PID" || true
sleep 1
echo "   backlog when storage came back: $backlog bytes in the log; fieldline RSS ${rss_down} kB when it went away, ${rss_end} kB after ${OUTAGE}s"
awk -v c="$caught" -v c0="$caught0" -v a="$back" -v b="$drained" 'BEGIN {printf "   drained in %.1f s: %d records read back from the log, %.0f records/s, while live ingest went on\n", b - a, c - c0, (c - c0) / (b - a)}'
load_summary() {
    python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("puback_latency_us") or {}
print(f"acked {r['acked']} of {r['sent']} ({r['acked_per_s']:.0f}/s), unacked {r['unacked']}, "
      f"PUBACK p50 {lat.get('p50', 0)/1000:.2f} ms, p99 {lat.get('p99', 0)/1000:.2f} ms")
EOF
}
echo "   load: $(load_summary "$WORK/drain.json"); rows $(psql_q 'SELECT count(*) FROM positions')"
echo "   $(grep -c 'storage is behind' "$WORK/fl.log") spill(s); peak RSS $(peak_rss "$FL_PID")"
kill -TERM "$FL_PID"; wait "$FL_PID" || true; FL_PID=

echo "== 3. recovery of a ${LOG_MB} MB log (100 fixes per publish, writes blocked by a row lock, then kill -9)"
fresh_db
: >"$WORK/fl.log"
start_fieldline
# Holds the row every batch ends by updating: nothing is stored, everything waits in the log.
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench \
    -c "BEGIN; SELECT * FROM ingest_log FOR UPDATE; SELECT pg_sleep(100000);" >/dev/null 2>&1 &
LOCK_PID=$!
sleep 0.5
"$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate 2000 --batch 100 --duration 600 --json \
    >"$WORK/fill.json" 2>/dev/null &
FILL_PID=$!
# The database's own log directory (fieldline-data/wal-<id>).
until [ "$(du -scm "$WORK"/fl/fieldline-data/wal* 2>/dev/null | tail -n 1 | cut -f1)" -ge "$LOG_MB" ]; do sleep 1; done
kill -9 "$FL_PID"; wait "$FL_PID" 2>/dev/null || true; FL_PID=
kill "$FILL_PID" 2>/dev/null || true; wait "$FILL_PID" 2>/dev/null || true
kill "$LOCK_PID" 2>/dev/null || true; wait "$LOCK_PID" 2>/dev/null || true
DB=postgres psql_q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'bench'" >/dev/null
LOG_BYTES=$(du -scb "$WORK"/fl/fieldline-data/wal* | tail -n 1 | cut -f1)
START=$(date +%s.%N)
(cd "$WORK/fl" && exec "$OLDPWD/$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
    --database-url "postgres://postgres@127.0.0.1:$PG_PORT/bench" >>"$WORK/fl.log" 2>&1) &
FL_PID=$!
until curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null; do sleep 0.1; done
END=$(date +%s.%N)
ROWS=$(psql_q 'SELECT count(*) FROM positions')
awk -v b="$LOG_BYTES" -v r="$ROWS" -v s="$START" -v e="$END" 'BEGIN {printf "   %.0f MB of log, %d rows: start to ready in %.1f s (%.0f MB/s, %.0f rows/s)\n", b / 1e6, r, e - s, b / 1e6 / (e - s), r / (e - s)}'
echo "   $(grep 'write-ahead log replayed' "$WORK/fl.log" | tail -1 | sed 's/.*INFO //')"
echo "   fieldline peak RSS during recovery: $(peak_rss "$FL_PID")"
kill -TERM "$FL_PID"; wait "$FL_PID" || true; FL_PID=
