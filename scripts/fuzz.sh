#!/usr/bin/env bash
# Fuzzes what hostile devices control: payload decoding, topic routing and the per-device
# access rules, with cargo-fuzz (libFuzzer). Usage: scripts/fuzz.sh [SECONDS per target] [TARGET...]
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain accept
# them, so no second toolchain is needed. A crash is saved under fuzz/artifacts/TARGET/;
# turn it into a regression test in the normal suite before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-600}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(decode_payload topic_route device_acl)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "== $target for ${SECONDS_EACH}s"
    cargo fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
done
