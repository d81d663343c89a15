#!/usr/bin/env bash
# Cluster mode side by side, every figure from one run on one machine:
#   1. one node (its local write-ahead log) -> PostgreSQL;
#   2. three nodes on a three-server NATS JetStream cluster, stream at 1 replica (R1);
#   3. the same at 3 replicas (R3).
# Each takes the same QoS 1 load through node 0 (`fieldline-sim load`: acknowledged rate and
# PUBACK p50/p99), with one live client on node 1 (publish-to-live latency on another node;
# on one node, the same node), then waits until PostgreSQL holds every row (drain time).
# Last, in the R3 cluster under load, node 2 is killed with SIGKILL: the failover gap is the
# time until every partition it wrote is written again by another node.
# Usage: scripts/bench-cluster.sh [RATE] [DURATION] [DEVICES]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-20000}"
DURATION="${2:-30}"
DEVICES="${3:-100}"
PG_PORT=54341
WORK="${TMPDIR:-/tmp}/fieldline-bench-cluster"
command -v nats-server >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
}

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; cleanup' EXIT

echo "== fieldline $(git rev-parse --short HEAD 2>/dev/null || echo '?'); nats-server $(nats-server --version | awk '{print $2}'); machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB"
echo "== load: $DEVICES devices, QoS 1, JSON location fixes at $RATE/s for ${DURATION}s through node 0; one SSE client"

# shellcheck source=scripts/nats-cluster.sh
source scripts/nats-cluster.sh
start_nats() {
    rm -rf "$WORK/nats"
    start_nats_cluster "$WORK/nats" bench 24222 26222 28222
    PIDS+=("${NATS_PIDS[@]}")
}

NODE_PIDS=()
start_node() { # $1 index, $2 database, further args: flags
    local i=$1 db=$2
    shift 2
    mkdir -p "$WORK/node$i"
    (cd "$WORK/node$i" && exec "$OLDPWD/$BIN/fieldline" --mqtt-listen "127.0.0.1:$((21883 + i))" \
        --http-listen "127.0.0.1:$((28080 + i))" --database-url "postgres://postgres@127.0.0.1:$PG_PORT/$db" \
        "$@" >"$WORK/node$i.log" 2>&1) &
    NODE_PIDS[i]=$!
    PIDS+=($!)
}

wait_ready() { # $1 index
    for _ in $(seq 600); do curl -sf "127.0.0.1:$((28080 + $1))/readyz" >/dev/null && return; sleep 0.1; done
    echo "node $1 not ready; its log:" >&2; tail -20 "$WORK/node$1.log" >&2; exit 1
}

# The load through node 0 and the live client on node $1; then the drain into PostgreSQL.
measure() { # $1 label, $2 watched node, $3 database
    local label=$1 watched=$2 db=$3
    DB=$db
    "$BIN/fieldline-sim" load --port 21883 --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" \
        --watch sse --http "127.0.0.1:$((28080 + watched))" --json >"$WORK/load.json" 2>"$WORK/load.progress" || true
    local ended; ended=$(date +%s.%N)
    local acked; acked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["acked"])' "$WORK/load.json")
    local rows=0
    for _ in $(seq 1200); do
        rows=$(psql_q 'SELECT count(*) FROM positions')
        [ "$rows" -ge "$acked" ] && break
        sleep 0.1
    done
    local drained; drained=$(date +%s.%N)
    python3 - "$WORK/load.json" "$label" "$rows" "$(awk -v a="$drained" -v b="$ended" 'BEGIN{printf "%.1f", a-b}')" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
label, rows, drain = sys.argv[2], int(sys.argv[3]), sys.argv[4]
p = r.get("puback_latency_us") or {}
w = (r.get("watch") or {}).get("latency_us") or {}
print(f"   {label}: acked {r['acked']} of {r['sent']} ({r['acked_per_s']:.0f}/s); "
      f"PUBACK p50 {p.get('p50', 0)/1000:.1f} ms, p99 {p.get('p99', 0)/1000:.1f} ms; "
      f"live p50 {w.get('p50', 0)/1000:.1f} ms, p99 {w.get('p99', 0)/1000:.1f} ms "
      f"({(r.get('watch') or {}).get('events', 0)} events, missing {(r.get('watch') or {}).get('missing_at_end', '?')}); "
      f"rows {rows}, drained {drain} s after the load")
PY
}

echo "== 1. one node, local write-ahead log"
psql_q "CREATE DATABASE single" >/dev/null
start_node 0 single
wait_ready 0
measure "single node" 0 single
stop_all

for replicas in 1 3; do
    echo "== $((replicas == 1 ? 2 : 3)). three nodes, NATS stream R$replicas"
    DB=bench
    psql_q "CREATE DATABASE r$replicas" >/dev/null
    start_nats
    servers="nats://127.0.0.1:24222,nats://127.0.0.1:24223,nats://127.0.0.1:24224"
    for i in 0 1 2; do
        start_node "$i" "r$replicas" --cluster "$servers" --cluster-replicas "$replicas" --cluster-node "node$i"
    done
    for i in 0 1 2; do wait_ready "$i"; done
    # Every partition owned before the load starts.
    for _ in $(seq 300); do
        owned=$(curl -s 127.0.0.1:28080/api/cluster | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for p in d["partitions"] if p["owner"]))')
        [ "$owned" = 12 ] && break
        sleep 0.2
    done
    measure "cluster of 3, R$replicas" 1 "r$replicas"
    if [ "$replicas" = 3 ]; then
        # The failover gap: node 2 killed under load; time until each of its partitions is
        # written again by another node.
        "$BIN/fieldline-sim" load --port 21883 --devices "$DEVICES" --rate $((RATE / 4)) --duration 20 --json \
            >"$WORK/failover-load.json" 2>/dev/null &
        LOAD_PID=$!
        sleep 5
        before=$(curl -s 127.0.0.1:28080/api/cluster)
        kill -9 "${NODE_PIDS[2]}"
        killed=$(date +%s.%N)
        python3 - "$before" "$killed" <<'PY'
import json, sys, time, urllib.request
before, killed = json.loads(sys.argv[1]), float(sys.argv[2])
dead = [p for p in before["partitions"] if (p["owner"] or "").startswith("node2-")]
stored = {p["partition"]: p["stored_seq"] for p in dead}
gaps = {}
deadline = time.time() + 60
while len(gaps) < len(dead) and time.time() < deadline:
    now = json.load(urllib.request.urlopen("http://127.0.0.1:28080/api/cluster"))
    for p in now["partitions"]:
        n = p["partition"]
        if n in stored and n not in gaps and p["owner"] and not p["owner"].startswith("node2-") \
                and p["stored_seq"] > stored[n]:
            gaps[n] = time.time() - killed
    time.sleep(0.05)
if dead:
    print(f"   failover: node 2 wrote partitions {sorted(stored)}; written again by others after "
          f"{min(gaps.values(), default=float('nan')):.1f} to {max(gaps.values(), default=float('nan')):.1f} s "
          f"({len(gaps)} of {len(dead)} within 60 s)")
else:
    print("   failover: node 2 wrote no partition")
PY
        wait "$LOAD_PID" || true
    fi
    stop_all
done
