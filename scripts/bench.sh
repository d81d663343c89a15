#!/usr/bin/env bash
# Side-by-side ingest benchmark, every figure from one run on one machine:
#   1. Fieldline -> PostgreSQL: the load client publishes location fixes at QoS 1 for DURATION
#      seconds at RATE/s; rows are counted in the database afterwards (zero loss means
#      rows == acknowledged publishes and the broker loss counter at 0).
#   2. Mosquitto forwarding the same load to one subscriber (the broker-only reference).
#   3. A plain binary COPY of the very rows Fieldline stored, into an identical table of the
#      same database (the storage-only reference).
#   4. Fieldline -> SQLite at SQLITE_RATE/s.
# Usage: scripts/bench.sh [RATE] [DURATION] [SQLITE_RATE] [DEVICES] [BATCH]
# RATE counts publishes; with BATCH > 1 each publish carries BATCH fixes as one array.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-100000}"
DURATION="${2:-60}"
SQLITE_RATE="${3:-50000}"
DEVICES="${4:-20}"
BATCH="${5:-1}"
PG_PORT=54339
MQTT_PORT=18883
HTTP_PORT=18088
WORK="${TMPDIR:-/tmp}/fieldline-bench"

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB"
echo "== load: $DEVICES devices, QoS 1, JSON location fixes, $BATCH per publish, ${DURATION}s per run"

pg_cpu_secs() { # all PostgreSQL processes of this cluster
    local total=0
    for pid in $(pgrep -f -- "-D $WORK/pg" ; pgrep -P "$(head -1 "$WORK/pg/postmaster.pid")"); do
        total=$(awk -v t="$total" '{printf "%.1f", t + ($14 + $15) / 100}' "/proc/$pid/stat" 2>/dev/null || echo "$total")
    done
    echo "$total"
}

run_fieldline() { # $1 database URL, $2 rate, $3 label
    rm -rf "$WORK/fl" && mkdir -p "$WORK/fl"
    (cd "$WORK/fl" && exec "$OLDPWD/$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --database-url "$1" >"$WORK/fl.log" 2>&1) &
    FL_PID=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.1; done
    local pg0; pg0=$(pg_cpu_secs)
    echo "== $3: fieldline-sim load --devices $DEVICES --rate $2 --duration $DURATION --batch $BATCH --qos 1"
    local TIMEFORMAT='%U %S'
    { time "$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate "$2" --duration "$DURATION" --batch "$BATCH" --json \
        >"$WORK/load.json" 2>"$WORK/load.progress" || true; } 2>"$WORK/load.time"
    sleep 1 # the last batch is at most 200 ms old
    local metrics; metrics=$(curl -s "127.0.0.1:$HTTP_PORT/metrics")
    echo "   load client: $(cat "$WORK/load.json")"
    echo "   load client CPU: $(awk '{printf "%.1f", $1 + $2}' "$WORK/load.time") s"
    echo "   fieldline: peak RSS $(peak_rss "$FL_PID"), CPU $(cpu_secs "$FL_PID") s; postgres CPU $(awk -v a="$(pg_cpu_secs)" -v b="$pg0" 'BEGIN{printf "%.1f", a-b}') s"
    echo "   $(grep -E '^fieldline_broker_lost_messages_total ' <<<"$metrics")"
    echo "   $(grep -E '^fieldline_storage_rows_written_total\{table="positions"\}' <<<"$metrics")"
    echo "   $(grep -E '^fieldline_broker_backpressure_waits_total ' <<<"$metrics")"
    echo "   storage writes: $(grep -E '^fieldline_storage_write_seconds_(sum|count)' <<<"$metrics" | awk '{print $2}' | paste -sd' ' | awk '{printf "%d batches, mean %.1f ms", $2, 1000*$1/$2}')"
    kill -TERM "$FL_PID"; wait "$FL_PID" || true; FL_PID=
}

run_fieldline "postgres://postgres@127.0.0.1:$PG_PORT/bench" "$RATE" "Fieldline -> PostgreSQL"
echo "   rows in PostgreSQL: $(psql_q 'SELECT count(*) FROM positions')"

echo "== Mosquitto $(mosquitto -h 2>/dev/null | awk 'NR==1 {print $3}') forwarding the same load to one subscriber"
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000000\n' "$MQTT_PORT" >"$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
MQ_PID=$!
sleep 0.5
"$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --batch "$BATCH" \
    --subscribe 'devices/+/location' --json 2>"$WORK/mosq.progress" || true
echo "   mosquitto: peak RSS $(peak_rss "$MQ_PID"), CPU $(cpu_secs "$MQ_PID") s"
kill "$MQ_PID"; wait "$MQ_PID" 2>/dev/null || true; MQ_PID=

echo "== plain binary COPY of the same rows into an identical table"
ROWS=$(psql_q 'SELECT count(*) FROM positions')
psql_q "\\copy (SELECT time, device_id, seq, lat, lon, speed, heading, alt, accuracy FROM positions) TO '$WORK/rows.bin' (FORMAT binary)"
psql_q "CREATE TABLE copy_ref (LIKE positions INCLUDING DEFAULTS) PARTITION BY RANGE (time);
        CREATE TABLE copy_ref_default PARTITION OF copy_ref DEFAULT;
        CREATE INDEX ON copy_ref (device_id, time);"
psql_q "SELECT format('CREATE TABLE copy_ref_%s PARTITION OF copy_ref FOR VALUES FROM (%L) TO (%L)', to_char(d, 'YYYYMMDD'), d, d + 1)
        FROM generate_series(current_date - 1, current_date + 3, interval '1 day') AS g(t), LATERAL (SELECT t::date AS d) x" \
    | while read -r stmt; do psql_q "$stmt"; done
START=$(date +%s.%N)
psql_q "\\copy copy_ref FROM '$WORK/rows.bin' (FORMAT binary)"
END=$(date +%s.%N)
awk -v r="$ROWS" -v s="$START" -v e="$END" 'BEGIN {printf "   %d rows in %.2f s: %.0f rows/s (one COPY, psql client)\n", r, e - s, r / (e - s)}'

run_fieldline "sqlite://$WORK/fl-sqlite/fieldline.db" "$SQLITE_RATE" "Fieldline -> SQLite"
