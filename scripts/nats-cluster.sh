# Three nats-server processes in one JetStream cluster on loopback, for the scripts that try
# and measure cluster mode. Source it, then:
#   start_nats_cluster DIR NAME CLIENT_PORT ROUTE_PORT MONITOR_PORT
# Server i (0-2) takes each port + i, keeps its data in DIR/i and logs to DIR/i.log; their
# process ids are in NATS_PIDS afterwards.
start_nats_cluster() {
    local dir=$1 name=$2 client=$3 route=$4 monitor=$5
    local routes="nats://127.0.0.1:$route,nats://127.0.0.1:$((route + 1)),nats://127.0.0.1:$((route + 2))"
    NATS_PIDS=()
    mkdir -p "$dir"
    for i in 0 1 2; do
        nats-server -a 127.0.0.1 -p $((client + i)) -n "$name-$i" -js -sd "$dir/$i" \
            --cluster_name "$name" --cluster "nats://127.0.0.1:$((route + i))" --routes "$routes" \
            -m $((monitor + i)) 2>"$dir/$i.log" &
        NATS_PIDS+=($!)
    done
}
