#!/usr/bin/env bash
# Idle connections and connect storms, Fieldline and Mosquitto side by side in one run on one
# machine: for each broker and each connection count N, a fresh broker process, then
# `fieldline-sim idle` opens N MQTT connections (at most CONCURRENCY handshakes in flight)
# and holds them HOLD seconds. Reported per run: the broker's resident memory before and with
# every connection open, the difference per connection, connects/s (first connect to last
# CONNACK) and the handshake latency, and connections that failed.
# Fieldline runs with --durability memory and SQLite in a fresh directory, so storage plays no
# part; Mosquitto with no persistence. Both anonymous on loopback.
# Usage: scripts/bench-connections.sh [COUNTS] [HOLD] [CONCURRENCY] [PROTOCOLS]
#   e.g. scripts/bench-connections.sh "1000 9000 18000" 15 500 "4 5"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COUNTS="${1:-1000 9000 18000}"
HOLD="${2:-15}"
CONCURRENCY="${3:-500}"
PROTOCOLS="${4:-4}"
SETTLE=3 # seconds between the client's summary and the memory sample
WORK="${TMPDIR:-/tmp}/fieldline-bench-connections"
BIN=target/release
MAX_N=$(tr ' ' '\n' <<<"$COUNTS" | sort -n | tail -1)
# Fieldline refuses CONNECTs beyond --max-connections (default 10,000).
FL_MAX_CONNECTIONS=$((MAX_N + 1000 > 20000 ? MAX_N + 1000 : 20000))

# Every connection is a descriptor on both sides; the broker and the client inherit this.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((MAX_N + 200)) ]; then
    echo "warning: open-file limit $(ulimit -n) (hard $(ulimit -Hn)) is below $MAX_N connections plus room: expect failures" >&2
fi

command -v mosquitto >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
}
cargo build --release -p fieldline -p fieldline-sim -q

SERVER_PID=
CLIENT_PID=
cleanup() {
    [ -n "${CLIENT_PID:-}" ] && kill "$CLIENT_PID" 2>/dev/null || true
    [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$WORK" && mkdir -p "$WORK"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
port_hex() { printf ':%04X ' "$1"; }
# A port no IPv4 or IPv6 socket uses in any state (listening, open or TIME_WAIT), from
# NEXT_PORT up; every run gets its own, so nothing of the previous run is in its way.
NEXT_PORT=18900
free_port() {
    while grep -q "$(port_hex "$NEXT_PORT")" /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}
listening() { grep -q "$(port_hex "$1")00000000:0000 0A" /proc/net/tcp; }
wait_listening() { # $1 port, $2 pid, $3 log
    for _ in $(seq 600); do
        listening "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "the broker did not listen on port $1:" >&2
    tail -20 "$3" >&2
    exit 1
}
# Kernel count of connections dropped because a listen queue was full (machine-wide; only
# this run connects meanwhile): each drop costs that client a SYN retransmit, 1 s later.
listen_overflows() {
    awk '/^TcpExt:/ { if (!seen) { split($0, names); seen = 1 } else { for (i = 2; i <= NF; i++) if (names[i] == "ListenOverflows") print $i } }' /proc/net/netstat
}
json_field() { grep -o "\"$1\":[0-9.eE+-]*" "$2" | head -1 | cut -d: -f2 || true; }

MOSQUITTO_VERSION=$(mosquitto -h 2>/dev/null | awk 'NR==1 {print $3}' || true) # -h exits 3
FL_FLAGS=(--durability memory --max-connections "$FL_MAX_CONNECTIONS")
IDLE_FLAGS=(--hold-seconds "$HOLD" --concurrency "$CONCURRENCY" --source-addresses 200 --keep-alive 600)
mosquitto_conf() { # $1 port
    printf 'listener %s 127.0.0.1\nmax_connections -1\nallow_anonymous true\npersistence false\nconnection_messages false\n' "$1"
}

start_fieldline() { # $1 MQTT port
    rm -rf "$WORK/fl" && mkdir -p "$WORK/fl"
    free_port
    local http=$PORT
    (cd "$WORK/fl" && exec "$ROOT/$BIN/fieldline" "${FL_FLAGS[@]}" --database-url "sqlite://$WORK/fl/fieldline.db" \
        --mqtt-listen "127.0.0.1:$1" --http-listen "127.0.0.1:$http" >"$WORK/fieldline.log" 2>&1) &
    SERVER_PID=$!
    wait_listening "$1" "$SERVER_PID" "$WORK/fieldline.log"
}

start_mosquitto() { # $1 MQTT port
    mosquitto_conf "$1" >"$WORK/mosquitto.conf"
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    SERVER_PID=$!
    wait_listening "$1" "$SERVER_PID" "$WORK/mosquitto.log"
}

ROWS=()
FAILURES=()
run() { # $1 fieldline|mosquitto, $2 connections, $3 protocol
    local label
    case $1 in
        fieldline) label=Fieldline ;;
        mosquitto) label="Mosquitto $MOSQUITTO_VERSION" ;;
    esac
    [ "$3" = 5 ] && label="$label (MQTT 5)"
    free_port
    local port=$PORT
    "start_$1" "$port"
    sleep 1 # past start-up allocations
    local base; base=$(rss_kb "$SERVER_PID")
    local overflows; overflows=$(listen_overflows)
    echo "== $label, $2 connections: fieldline-sim idle --port $port --connections $2 --protocol $3 ${IDLE_FLAGS[*]}"
    "$BIN/fieldline-sim" idle --port "$port" --connections "$2" --protocol "$3" "${IDLE_FLAGS[@]}" \
        >"$WORK/idle.json" 2>"$WORK/idle.log" &
    CLIENT_PID=$!
    # The summary line comes once every CONNECT is answered; the connections stay open HOLD s.
    for _ in $(seq 3000); do
        [ "$(wc -l <"$WORK/idle.json")" -ge 1 ] && break
        kill -0 "$CLIENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$(wc -l <"$WORK/idle.json")" -lt 1 ]; then
        echo "   the client gave no summary:" >&2
        tail -20 "$WORK/idle.log" >&2
        ROWS+=("| $label | $2 | $(awk -v k="$base" 'BEGIN {printf "%.1f", k / 1024}') | - | - | - | client failed | - | - |")
    else
        sleep "$SETTLE"
        local held; held=$(rss_kb "$SERVER_PID")
        overflows=$(($(listen_overflows) - overflows))
        local connected failed cps p50 p99
        connected=$(json_field connected "$WORK/idle.json")
        failed=$(json_field failed "$WORK/idle.json")
        cps=$(json_field connects_per_second "$WORK/idle.json")
        p50=$(json_field p50 "$WORK/idle.json")
        p99=$(json_field p99 "$WORK/idle.json")
        echo "   client: $(cat "$WORK/idle.json")"
        echo "   broker RSS: $base kB before, $held kB with the connections open; listen queue overflows: $overflows"
        ROWS+=("$(awk -v l="$label" -v n="$2" -v b="$base" -v h="$held" -v c="${connected:-0}" -v r="${cps:-0}" \
            -v f="${failed:-?}" -v p50="${p50:--}" -v p99="${p99:--}" -v o="$overflows" 'BEGIN {
                per = c > 0 ? sprintf("%.2f", (h - b) / c) : "-"
                printf "| %s | %d | %.1f | %.1f | %s | %.0f | %s | %s / %s | %s |", l, n, b / 1024, h / 1024, per, r, f, p50, p99, o
            }')")
        if [ "${failed:-0}" != 0 ]; then
            FAILURES+=("$label, $2 connections: $(grep -o '"failures":{[^}]*}' "$WORK/idle.json" || true)")
        fi
    fi
    wait "$CLIENT_PID" 2>/dev/null || true
    CLIENT_PID=
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; client and broker share it"
echo "== limits: open files $(ulimit -n) (hard $(ulimit -Hn)); somaxconn $(cat /proc/sys/net/core/somaxconn); tcp_max_syn_backlog $(cat /proc/sys/net/ipv4/tcp_max_syn_backlog); ephemeral ports $(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range)"
echo "== counts: $COUNTS; hold ${HOLD}s, memory sampled ${SETTLE}s after the last CONNACK; MQTT $PROTOCOLS; a fresh broker process per run"
echo "== fieldline flags: ${FL_FLAGS[*]} --database-url sqlite://(fresh dir)/fieldline.db --mqtt-listen 127.0.0.1:PORT --http-listen 127.0.0.1:PORT"
echo "== mosquitto $MOSQUITTO_VERSION config: $(mosquitto_conf PORT | paste -sd';' | sed 's/;/; /g')"
echo "== client: fieldline-sim idle --connections N --protocol P ${IDLE_FLAGS[*]}"

for protocol in $PROTOCOLS; do
    for broker in fieldline mosquitto; do
        for n in $COUNTS; do
            run "$broker" "$n" "$protocol"
        done
    done
done

echo
echo "| broker | connections | RSS base MB | RSS held MB | KB per connection | connects/s | failed | connect p50 / p99 ms | listen overflows |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "KB per connection = (RSS held - RSS base) / connections accepted; connects/s = accepted / (first connect to last CONNACK)."
echo "Listen overflows: SYNs dropped because the broker's accept queue was full (Mosquitto listens with a backlog of 100,"
echo "tokio's TcpListener::bind with 128); each costs its client a retransmit 1 s later, so where there are many they set connects/s and p99."
for f in "${FAILURES[@]+"${FAILURES[@]}"}"; do
    echo "failures: $f"
done
