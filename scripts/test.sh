#!/usr/bin/env bash
# Runs every test of Fieldline on a fresh machine.
#
# Installs what the tests need when it is missing (PostgreSQL server, mosquitto clients,
# nats-server,
# paho-mqtt, openapi-spec-validator and aiosmtpd, Chromium and ChromeDriver for the browser tests),
# starts a private PostgreSQL cluster on a spare port for the run, points the tests at it
# through FIELDLINE_TEST_DATABASE_URL, runs the whole workspace's tests, and stops the
# cluster again. Tests that need PostgreSQL fail, never skip, when it is not there.
set -euo pipefail

cd "$(dirname "$0")/.."
PG_PORT="${FIELDLINE_TEST_PG_PORT:-54329}"
PG_DIR="${TMPDIR:-/tmp}/fieldline-test-pg-$PG_PORT"

need_packages=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_packages+=(postgresql)
command -v mosquitto_pub >/dev/null 2>&1 || need_packages+=(mosquitto-clients)
# The web dashboard's tests drive Debian's Chromium, headless, through ChromeDriver.
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_packages+=(chromium-driver)
# Cluster mode's tests run a JetStream cluster of Debian's nats-server.
command -v nats-server >/dev/null 2>&1 || need_packages+=(nats-server)
if [ ${#need_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${need_packages[*]}; install them (apt-get install ${need_packages[*]}) or run as root" >&2
        exit 1
    fi
    echo "installing ${need_packages[*]} from the distribution"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

PG_BIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
# PostgreSQL refuses to run as root: use its own system user then.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_pg() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true; }
stop_pg
rm -rf "$PG_DIR"
mkdir -p "$PG_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres: "$PG_DIR"
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-sync >/dev/null
# fsync off: the cluster lives for one test run; durability of Fieldline itself is tested
# by restarting Fieldline, not the database.
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
trap stop_pg EXIT
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"

# From PyPI: tests/mqtt_conformance.py drives the broker with a third MQTT client, paho-mqtt
# 2.x; tests/openapi.rs checks the API description with openapi-spec-validator;
# tests/smtp_receiver.py is a real SMTP server (aiosmtpd) for the email channels.
pip_install() {
    python3 -m pip install --quiet "$1" || python3 -m pip install --quiet --break-system-packages "$1"
}
if ! python3 -c 'import sys, paho.mqtt; sys.exit(int(paho.mqtt.__version__.split(".")[0]) < 2)' 2>/dev/null; then
    echo "installing paho-mqtt 2.x from PyPI"
    pip_install 'paho-mqtt>=2,<3'
fi
if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
    echo "installing openapi-spec-validator from PyPI"
    pip_install 'openapi-spec-validator>=0.7,<0.8'
fi

if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    echo "installing aiosmtpd from PyPI"
    pip_install 'aiosmtpd>=1.4,<2'
fi

export FIELDLINE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
# Release profile: the same build that `cargo run --release` and the benchmarks use. The
# simulator binary is built first: the end-to-end tests run it against the server.
cargo build --release -p fieldline-sim
cargo test --release --workspace "$@"
