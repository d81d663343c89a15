#!/usr/bin/env bash
# What security costs, side by side in one run against PostgreSQL:
#   1. the same publish load from anonymous devices and from registered devices that log in
#      (password checks, per-device access rules and the publish rate limiter all on);
#   2. connecting RECONNECTS registered devices twice: the first time every login is an
#      Argon2id check, the second time the broker remembers the secrets.
# Usage: scripts/bench-auth.sh [RATE] [DURATION] [DEVICES] [RECONNECTS]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-50000}"
DURATION="${2:-30}"
DEVICES="${3:-20}"
RECONNECTS="${4:-200}"
PG_PORT=54349
MQTT_PORT=18893
HTTP_PORT=18098
WORK="${TMPDIR:-/tmp}/fieldline-bench-auth"

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB"
URL_BASE="postgres://postgres@127.0.0.1:$PG_PORT"

register() { # $1 database URL, $2 prefix, $3 count -> credentials file
    local file="$WORK/$2.credentials"
    : >"$file"
    for i in $(seq 0 $(($3 - 1))); do
        echo "$2-$i $("$BIN/fieldline" --database-url "$1" device add "$2-$i" 2>/dev/null)" >>"$file"
    done
    echo "$file"
}

start() { # $1 database URL
    # Each database gets its own write-ahead log (fieldline-data/wal-<id>); old ones go.
    rm -rf "$WORK"/fieldline-data/wal*
    (cd "$WORK" && exec "$OLDPWD/$BIN/fieldline" --mqtt-listen "127.0.0.1:$MQTT_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
        --database-url "$1" --device-publish-rate 100000 --device-publish-burst 100000 >"$WORK/fl.log" 2>&1) &
    FL_PID=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.1; done
}

metrics() { curl -s "127.0.0.1:$HTTP_PORT/metrics" | grep -E "^fieldline_broker_(auth_total|password_check_seconds_(sum|count)|lost_messages_total|acl_denied)" | paste -sd' ' ; }

load() { # $1 label, rest: extra load args
    local label="$1"; shift
    echo "== $label: fieldline-sim load --devices $DEVICES --rate $RATE --duration $DURATION --qos 1 $*"
    local TIMEFORMAT='%U %S'
    { time "$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --json "$@" \
        >"$WORK/load.json" 2>"$WORK/load.progress" || true; } 2>"$WORK/load.time"
    sleep 1
    echo "   load client: $(cat "$WORK/load.json")"
    echo "   fieldline: peak RSS $(peak_rss "$FL_PID"), CPU $(cpu_secs "$FL_PID") s; load client CPU $(awk '{printf "%.1f", $1 + $2}' "$WORK/load.time") s"
    echo "   $(metrics)"
}

psql_q "CREATE DATABASE anon"
start "$URL_BASE/anon"
load "anonymous devices" --prefix open
kill -TERM "$FL_PID"; wait "$FL_PID" || true; FL_PID=

psql_q "CREATE DATABASE auth"
creds=$(register "$URL_BASE/auth" dev "$DEVICES")
start "$URL_BASE/auth"
load "registered devices (login, ACL, rate limiter)" --prefix dev --credentials "$creds"

echo "== connecting $RECONNECTS registered devices, twice"
many=$(register "$URL_BASE/auth" many "$RECONNECTS")
sleep 3 # the running server picks the CLI's registrations up within 2 s
for round in first second; do
    start_ns=$(date +%s%N)
    "$BIN/fieldline-sim" load --port "$MQTT_PORT" --devices "$RECONNECTS" --rate "$RECONNECTS" --duration 5 \
        --prefix many --credentials "$many" --json >"$WORK/connect.json" 2>/dev/null || true
    end_ns=$(date +%s%N)
    echo "   $round: $(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN{printf "%.2f", (b-a)/1e9}') s for connect + 5 s of publishing (1/s per device) + disconnect; $(cat "$WORK/connect.json")"
    echo "   $(metrics)"
done
echo "== fieldline peak RSS after all of it: $(peak_rss "$FL_PID")"
