#!/usr/bin/env bash
# History benchmark, every figure from one run on one machine, on PostgreSQL and SQLite:
#   1. A dataset built with `fieldline-sim backfill`: SENSORS sensors x 4 metrics, one reading a
#      minute, and one vehicle's 1 Hz fixes, for 30 days; then 100 vehicles' last hour at 1 Hz.
#   2. Over the API (curl, 5 runs each, the best and the median): a 24 h track (86,400 fixes),
#      a 30-day chart with points=1000 from the roll-ups, and the same chart from raw rows
#      (the same database served with --no-rollups), answers compared.
#   3. A CSV export of 1,000,000 fixes: rows/s and the server's peak RSS while it streams.
#   4. Replay of the 100 vehicles' hour at 100x (`fieldline-sim replay-watch`): pacing error
#      and the server's memory.
#   5. Ingest with roll-up maintenance against --no-rollups, same back-fill load, fresh
#      databases, in this run.
#   PARTS=replay runs only the replay (on a database holding only the 100 vehicles' hour),
#   PARTS=ingest only the ingest comparison, PARTS=track only the 24 h track (on a database
#   holding only that day).
# Usage: [PARTS=all|replay|ingest|track] scripts/bench-history.sh [SENSORS] [DAYS]
set -euo pipefail
cd "$(dirname "$0")/.."
SENSORS="${1:-60}"
DAYS="${2:-30}"
INGEST_SENSORS="${INGEST_SENSORS:-100}"
PG_PORT=54369
MQTT_PORT=18913
HTTP_PORT=18118
WORK="${TMPDIR:-/tmp}/fieldline-bench-history"

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

END_MS=$(( $(date +%s) / 3600 * 3600 * 1000 ))
DAY_MS=86400000
echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; end of history $END_MS"

start_fieldline() { # $1 database URL, then extra flags
    local url="$1"; shift
    rm -rf "$WORK/wal"
    (exec "$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --database-url "$url" --wal-dir "$WORK/wal" "$@" >>"$WORK/fl.log" 2>&1) &
    FL_PID=$!
    for _ in $(seq 600); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && return; sleep 0.1; done
    echo "fieldline did not start"; tail -20 "$WORK/fl.log"; exit 1
}

stop_fieldline() {
    kill -INT "$FL_PID" 2>/dev/null || true
    wait "$FL_PID" 2>/dev/null || true
    FL_PID=
}

backfill() { # extra flags
    "$BIN/fieldline-sim" backfill --port "$MQTT_PORT" --http "http://127.0.0.1:$HTTP_PORT" \
        --end "$END_MS" --wait-stored "$@"
}

metric() { curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

wait_rolled_up() {
    for _ in $(seq 3600); do
        [ "$(metric fieldline_rollup_pending_minutes)" = "0" ] && return
        sleep 1
    done
    echo "roll-ups did not catch up"; exit 1
}

# Five timed GETs: "best / median ms, N bytes".
timed() { # $1 path
    local times=()
    for _ in 1 2 3 4 5; do
        times+=("$(curl -s -o "$WORK/body" -w '%{time_total}' "127.0.0.1:$HTTP_PORT$1")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v bytes="$(stat -c %s "$WORK/body")" \
        '{t[NR]=$1*1000} END {printf "best %.1f ms, median %.1f ms, %d bytes\n", t[1], t[3], bytes}'
}

# Peak VmRSS (kB) of $FL_PID while a command runs.
rss_during() {
    local peak=0 rss
    "$@" & local job=$!
    while kill -0 "$job" 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
        [ "$rss" -gt "$peak" ] && peak=$rss
        sleep 0.05
    done
    wait "$job"
    echo "$peak"
}

export_csv() { curl -s -o "$WORK/export.csv" -w '%{time_total}\n' "$1" > "$WORK/export.time"; }

run_backend() { # $1 name, $2 database URL
    local name="$1" url="$2"
    echo
    echo "=== $name"
    start_fieldline "$url"
    echo "-- dataset: $DAYS days of $SENSORS sensors x 4 metrics at 1/min and 1 vehicle at 1 Hz"
    backfill --days "$DAYS" --sensors "$SENSORS" --metrics 4 --reading-interval-ms 60000 \
        --vehicles 1 --fix-interval-ms 1000
    echo "-- 100 vehicles, the last hour at 1 Hz"
    backfill --days 0.041666667 --sensors 0 --vehicles 100 --fix-interval-ms 1000 --prefix-vehicle rp
    wait_rolled_up
    echo "-- 24 h track of bf-vehicle-0 (86,400 fixes)"
    timed "/api/devices/bf-vehicle-0/track?from=$((END_MS - DAY_MS))&to=$END_MS&limit=100000"
    python3 -c "import json,sys; print('fixes:', len(json.load(open(sys.argv[1]))))" "$WORK/body"
    local chart="/api/devices/bf-sensor-0/telemetry?metric=temp_c&from=$((END_MS - 30 * DAY_MS))&to=$END_MS&points=1000"
    echo "-- 30-day chart, points=1000, from roll-ups"
    timed "$chart"
    cp "$WORK/body" "$WORK/chart-rollups.json"
    curl -s -D - -o /dev/null "127.0.0.1:$HTTP_PORT$chart" | grep -i '^fieldline-bucket'
    echo "-- CSV export of 1,000,000 fixes"
    local from=$((END_MS - 1000000 * 1000))
    local peak before
    before=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
    peak=$(rss_during export_csv "127.0.0.1:$HTTP_PORT/api/devices/bf-vehicle-0/track?from=$from&to=$END_MS&format=csv")
    local rows secs
    rows=$(($(wc -l < "$WORK/export.csv") - 1))
    secs=$(cat "$WORK/export.time")
    echo "rows $rows in $secs s: $(python3 -c "print(round($rows / $secs))") rows/s; fieldline RSS ${before} kB before, peak ${peak} kB during the export"
    echo "-- replay of rp-0..rp-99, the last hour at 100x"
    "$BIN/fieldline-sim" replay-watch --http "http://127.0.0.1:$HTTP_PORT" --device-prefix rp --device-count 100 \
        --from $((END_MS - 3600000)) --to "$END_MS" --speed 100 --pid "$FL_PID" --json
    stop_fieldline
    echo "-- the same chart from raw rows (--no-rollups, same database)"
    start_fieldline "$url" --no-rollups
    timed "$chart"
    python3 - "$WORK/body" "$WORK/chart-rollups.json" <<'PY'
import json, math, sys
raw, rolled = (json.load(open(p)) for p in sys.argv[1:3])
same_shape = len(raw) == len(rolled) and all(
    a["ts"] == b["ts"] and a["count"] == b["count"] and a["min"] == b["min"] and a["max"] == b["max"]
    for a, b in zip(raw, rolled))
worst = max((abs(a["avg"] - b["avg"]) / max(abs(a["avg"]), 1e-300) for a, b in zip(raw, rolled)), default=0)
print(f"{len(raw)} buckets; ts, count, min, max identical: {same_shape}; largest relative avg difference {worst:.1e} (float sums in another order)")
PY
    stop_fieldline
}

ingest_pair() { # $1 name, $2 URL with roll-ups, $3 URL without
    echo
    echo "=== $1: ingest with roll-up maintenance against --no-rollups (1 day, $INGEST_SENSORS sensors x 4 metrics at 10 s)"
    for mode in rollups none; do
        local url="$2" flags=()
        [ "$mode" = none ] && url="$3" && flags=(--no-rollups)
        start_fieldline "$url" "${flags[@]}"
        echo "-- $mode"
        backfill --days 1 --sensors "$INGEST_SENSORS" --metrics 4 --reading-interval-ms 10000 --vehicles 0
        stop_fieldline
    done
}

replay_only() { # $1 name, $2 database URL
    echo
    echo "=== $1: replay only"
    start_fieldline "$2"
    backfill --days 0.041666667 --sensors 0 --vehicles 100 --fix-interval-ms 1000 --prefix-vehicle rp
    "$BIN/fieldline-sim" replay-watch --http "http://127.0.0.1:$HTTP_PORT" --device-prefix rp --device-count 100 \
        --from $((END_MS - 3600000)) --to "$END_MS" --speed 100 --pid "$FL_PID" --json
    stop_fieldline
}

track_only() { # $1 name, $2 database URL
    echo
    echo "=== $1: 24 h track only"
    start_fieldline "$2"
    backfill --days 1 --sensors 0 --vehicles 1 --fix-interval-ms 1000
    timed "/api/devices/bf-vehicle-0/track?from=$((END_MS - DAY_MS))&to=$END_MS&limit=100000"
    python3 -c "import json,sys; print('fixes:', len(json.load(open(sys.argv[1]))))" "$WORK/body"
    stop_fieldline
}

if [ "${PARTS:-all}" = track ]; then
    psql_q "CREATE DATABASE track"
    track_only PostgreSQL "postgres://postgres@127.0.0.1:$PG_PORT/track"
    track_only SQLite "sqlite://$WORK/track.db"
    exit 0
fi
if [ "${PARTS:-all}" = replay ]; then
    psql_q "CREATE DATABASE replay"
    replay_only PostgreSQL "postgres://postgres@127.0.0.1:$PG_PORT/replay"
    replay_only SQLite "sqlite://$WORK/replay.db"
    exit 0
fi
if [ "${PARTS:-all}" = ingest ]; then
    psql_q "CREATE DATABASE ingest_rollups"
    psql_q "CREATE DATABASE ingest_plain"
    ingest_pair PostgreSQL "postgres://postgres@127.0.0.1:$PG_PORT/ingest_rollups" "postgres://postgres@127.0.0.1:$PG_PORT/ingest_plain"
    ingest_pair SQLite "sqlite://$WORK/ingest-rollups.db" "sqlite://$WORK/ingest-plain.db"
    exit 0
fi

psql_q "CREATE DATABASE history"
psql_q "CREATE DATABASE ingest_rollups"
psql_q "CREATE DATABASE ingest_plain"
run_backend PostgreSQL "postgres://postgres@127.0.0.1:$PG_PORT/history"
run_backend SQLite "sqlite://$WORK/history.db"
ingest_pair PostgreSQL "postgres://postgres@127.0.0.1:$PG_PORT/ingest_rollups" "postgres://postgres@127.0.0.1:$PG_PORT/ingest_plain"
ingest_pair SQLite "sqlite://$WORK/ingest-rollups.db" "sqlite://$WORK/ingest-plain.db"
