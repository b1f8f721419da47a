#!/usr/bin/env bash
# Reactor stalls: what holds a core (README "What holds a core"). Per round, three runs:
#   standalone — a node with 16 partitions on CPU 0 under a fixed, moderate load from loadgen
#                on CPU 1 (20,000 records/s of 1 KiB, 16 per request, 4 in flight per
#                partition's producer, durable acks): the baseline;
#   raft       — the same as a one-node cluster: every partition a Raft group that saves its
#                state as it commits;
#   retention  — a standalone node with one partition, 256 MiB segments and 256 MiB of
#                retention, at 100,000 records/s for 10 s (64 per request, 8 in flight):
#                about four segments deleted while it takes writes.
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

run() { # NAME PARTITIONS LOADGEN_FLAGS EXTRA_SERVE_FLAGS...
    local name=$1 partitions=$2
    read -r -a load <<<"$3"
    shift 3
    rm -rf "$OUT/data"
    "$CORELOG" serve --data-dir "$OUT/data" --cpuset 0 --partitions "$partitions" \
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
    if [[ " $* " == *" --cluster "* ]]; then
        cluster=(--cluster)
        # Every group elects its (only) node before the load starts.
        sleep 3
    fi
    "$LOADGEN" --tls-dir "$TLS" --cpuset 1 --addr "$addr" "${cluster[@]}" \
        --record-bytes 1024 "${load[@]}" --warmup 1s --consumers 0 >"$OUT/$name.txt"
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
MANY="--batch-records 16 --in-flight 4 --rate 20000 --duration 8s"
RETENTION="--batch-records 64 --in-flight 8 --rate 100000 --duration 10s"
for round in $(seq "$ROUNDS"); do
    run "r$round-standalone" 16 "$MANY"
    run "r$round-raft" 16 "$MANY" --node-id 1 --cluster
    run "r$round-retention" 1 "$RETENTION" --segment-bytes 268435456 \
        --retention-bytes 268435456 --retention-check-ms 500
done
rm -rf "$OUT/data"
