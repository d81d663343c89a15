# Shared by the benchmark scripts: installs what they need, builds (unless BENCH_BIN names
# binaries to use), and starts a private
# PostgreSQL (default settings, fsync on, loopback only) in $WORK with database "bench".
# Expects PG_PORT and WORK; cleans up FL_PID, MQ_PID and the cluster on exit.
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v python3 >/dev/null 2>&1 || need+=(python3) # bench-live.sh reads its JSON report
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# BENCH_BIN: binaries built elsewhere (an earlier commit, for a side-by-side run) instead.
if [ -n "${BENCH_BIN:-}" ]; then
    BIN="$BENCH_BIN"
else
    cargo build --release --workspace -q
    BIN=target/release
fi
PG_BIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_q() { psql -X -q -t -A -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "${DB:-postgres}" -c "$1"; }

cleanup() {
    [ -n "${FL_PID:-}" ] && kill "$FL_PID" 2>/dev/null || true
    [ -n "${MQ_PID:-}" ] && kill "$MQ_PID" 2>/dev/null || true
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$WORK" && mkdir -p "$WORK/pg" && { [ "$(id -u)" -ne 0 ] || chown -R postgres: "$WORK"; }
# PostgreSQL with its default settings (fsync on), listening on loopback only.
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1" start >/dev/null
psql_q "CREATE DATABASE bench"
DB=bench

peak_rss() { awk '/VmHWM/ {print $2 " " $3}' "/proc/$1/status"; }
cpu_secs() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$1/stat"; }
