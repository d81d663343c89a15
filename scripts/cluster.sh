#!/usr/bin/env bash
# Starts a local cluster to try cluster mode: three nats-server processes in one JetStream
# cluster and three Fieldline nodes, all on loopback, sharing one PostgreSQL database.
#
#   DATABASE_URL=postgres://user@127.0.0.1/fieldline scripts/cluster.sh
#
# Node i listens for MQTT on 1883+i and for HTTP on 8080+i; NATS servers on 4222+i. Logs and
# data go to $CLUSTER_DIR (default /tmp/fieldline-cluster). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL database (postgres://...)}"
DIR="${CLUSTER_DIR:-/tmp/fieldline-cluster}"
BIN="${FIELDLINE_BIN:-target/release/fieldline}"
command -v nats-server >/dev/null || { echo "nats-server is missing: apt-get install nats-server" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release --bin fieldline
mkdir -p "$DIR"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
# shellcheck source=scripts/nats-cluster.sh
source scripts/nats-cluster.sh
start_nats_cluster "$DIR/nats" fieldline 4222 6222 8222
pids+=("${NATS_PIDS[@]}")
servers="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
for i in 0 1 2; do
    "$BIN" --database-url "$DATABASE_URL" --cluster "$servers" --cluster-node "node$i" \
        --mqtt-listen "127.0.0.1:$((1883 + i))" --http-listen "127.0.0.1:$((8080 + i))" \
        --wal-dir "$DIR/wal-$i" ${CLUSTER_FLAGS:-} >"$DIR/node-$i.log" 2>&1 &
    pids+=($!)
done
echo "3 NATS servers (4222-4224) and 3 nodes (MQTT 1883-1885, HTTP 8080-8082); logs in $DIR"
echo "try: curl -s localhost:8080/api/cluster"
wait
