#!/usr/bin/env bash
# Reactor stalls and produce latency with many Raft groups on one core (README "Many
# partitions on one core"): a node with 16 partitions on CPU 0 under a fixed, moderate load
# from loadgen on CPU 1 (20,000 records/s of 1 KiB, 16 per request, 4 in flight per
# partition's producer, durable acks), first standalone (the baseline: no Raft), then as a
# one-node cluster (every partition a Raft group that saves its state as it commits).
#
# Usage: loadgen/bench/stalls.sh [OUT_DIR]      (default OUT_DIR: target/loadgen-stalls)
#        ROUNDS=N (default 2)
#        CORELOG=PATH: the node binary to measure (default: a release build of this tree), to
#        compare builds on one machine in one sitting.
# Prints per run: loadgen's produce p50/p99/max, and the node's reactor stalls (a core's
# timer tick late by 10 ms or more: something held the core) and tick lateness p99/max.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-target/loadgen-stalls}
ROUNDS=${ROUNDS:-2}
LOADGEN=target/release/loadgen

if [ -z "${CORELOG:-}" ]; then
    cargo build --release --bin corelog
    CORELOG=target/release/corelog
fi
cargo build --release -p loadgen --bin loadgen

rm -rf "$OUT"
mkdir -p "$OUT"
TLS="$OUT/tls"
"$CORELOG" certs --out "$TLS" --node node --client client >/dev/null

run() { # NAME EXTRA_SERVE_FLAGS...
    local name=$1
    shift
    rm -rf "$OUT/data"
    "$CORELOG" serve --data-dir "$OUT/data" --cpuset 0 --partitions 16 \
        --tls-dir "$TLS" --tls-name node --listen 127.0.0.1:0 --stats-listen 127.0.0.1:0 \
        "$@" >"$OUT/$name.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do
        grep -q "corelog: serving" "$OUT/$name.log" && break
        sleep 0.1
    done
    local addr stats
    addr=$(sed -n 's/.*serving .* on \(127\.0\.0\.1:[0-9]*\) .*/\1/p' "$OUT/$name.log")
    stats=$(sed -n 's/.*stats on \(http:[^;]*\); .*/\1/p' "$OUT/$name.log")
    if [ -z "$addr" ] || [ -z "$stats" ]; then
        cat "$OUT/$name.log" >&2
        exit 1
    fi
    local cluster=()
    if [ "$#" -gt 0 ]; then
        cluster=(--cluster)
        # Every group elects its (only) node before the load starts.
        sleep 3
    fi
    "$LOADGEN" --tls-dir "$TLS" --cpuset 1 --addr "$addr" "${cluster[@]}" \
        --record-bytes 1024 --batch-records 16 --in-flight 4 --rate 20000 \
        --duration 8s --warmup 1s --consumers 0 >"$OUT/$name.txt"
    curl -s "$stats/stats" >"$OUT/$name.stats.json"
    kill -TERM "$pid"
    wait "$pid" || true
    python3 - "$name" "$OUT/$name.txt" "$OUT/$name.stats.json" <<'PY'
import json, sys
name, txt, stats = sys.argv[1:]
row = next(l.split() for l in open(txt) if l.startswith("produce "))
doc = json.load(open(stats))
r = doc["reactor"]
print(f"| {name} | {row[2]} | {row[4]} | {row[6]} | {row[9]} | {r['stalls']} | "
      f"{r['lateness']['p99'] / 1000:.1f} | {r['lateness']['max'] / 1000:.1f} |")
PY
}

echo "| run | records/s | p50 ms | p99 ms | max ms | reactor stalls | lateness p99 ms | lateness max ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
    run "r$round-standalone"
    run "r$round-raft" --node-id 1 --cluster
done
rm -rf "$OUT/data"
