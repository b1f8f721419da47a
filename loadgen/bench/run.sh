#!/usr/bin/env bash
# The README's "Node throughput and latency (loadgen)" benchmark matrix (issue 4).
#
# Usage: loadgen/bench/run.sh [OUT_DIR]        (default OUT_DIR: target/loadgen-bench)
#
# Release builds; the node on CPU 0 (one core, one partition), loadgen on CPU 1. For each
# record size (1 KiB, 100 B), on a fresh data directory: a `loadgen baseline` (raw disk and
# loopback, measured right before the rows it is compared with), then
#   produce  — produce only, closed loop, max throughput
#   catchup  — consume only, one consumer from offset 0 (everything `produce` wrote; beyond
#              the node's 16 MiB tail cache, so read from disk)
#   tail     — consume only, 16 consumers from the last 14 MiB, just written (inside the
#              node's 16 MiB in-memory tail cache): the read path without the disk
#   mixed    — one producer and one consumer at the tail, closed loop
#   single   — one record per request, one request in flight
#   half     — open loop at half of `produce`'s records/s
# and a final baseline. Each row but `tail` restarts the node on the same data directory, so
# its /stats (fsync latency, reactor stalls) cover that row only; the node's CPU time is read
# from /proc around each loadgen run. Everything lands in OUT_DIR; then
# summarize.py prints the README table. Figures drift with the host's load: compare only
# within one run.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-target/loadgen-bench}
NODE_CPU=0
LOADGEN_CPU=1
DURATION=5s
WARMUP=1s
CORELOG=target/release/corelog
LOADGEN=target/release/loadgen

cargo build --release --bin corelog
cargo build --release -p loadgen --bin loadgen

rm -rf "$OUT"
mkdir -p "$OUT"
NODE_PID=

start_node() { # DATA_DIR
    "$CORELOG" serve --data-dir "$1" --cpuset "$NODE_CPU" \
        --listen 127.0.0.1:0 --stats-listen 127.0.0.1:0 >"$OUT/node.log" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 300); do
        grep -q "corelog: serving" "$OUT/node.log" && break
        sleep 0.1
    done
    ADDR=$(sed -n 's/.*serving .* on \(127\.0\.0\.1:[0-9]*\) .*/\1/p' "$OUT/node.log")
    STATS=$(sed -n 's/.*stats on \(http:[^;]*\);.*/\1/p' "$OUT/node.log")
    if [ -z "$ADDR" ]; then
        cat "$OUT/node.log" >&2
        exit 1
    fi
}

stop_node() {
    if [ -n "$NODE_PID" ]; then
        kill -TERM "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
        NODE_PID=
    fi
}
trap stop_node EXIT

sched_ns() { # PID → "run_ns wait_ns" summed over its threads (/proc/*/schedstat)
    cat /proc/"$1"/task/*/schedstat | awk '{r += $1; w += $2} END {printf "%d %d\n", r, w}'
}

measure() { # NAME LOADGEN_FLAGS...   (against the running node)
    local name=$1
    shift
    local t0 s0 t1 s1
    curl -s "$STATS/stats" >"$OUT/$name.node-before.json"
    t0=$(date +%s.%N)
    s0=$(sched_ns "$NODE_PID")
    echo "== $name: loadgen $*"
    "$LOADGEN" --addr "$ADDR" --tls-dir "$DATA/tls" --cpuset "$LOADGEN_CPU" \
        --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" || true
    s1=$(sched_ns "$NODE_PID")
    t1=$(date +%s.%N)
    curl -s "$STATS/stats" >"$OUT/$name.node.json"
    python3 -c "import json; a, b = '$s0'.split(), '$s1'.split(); print(json.dumps({ \
'node_cpu_s': (int(b[0]) - int(a[0])) / 1e9, 'node_runqueue_wait_s': (int(b[1]) - int(a[1])) / 1e9, \
'wall_s': $t1 - $t0}))" >"$OUT/$name.cpu.json"
    tail -n 8 "$OUT/$name.txt"
}

row() { # NAME LOADGEN_FLAGS...   (a fresh node process on $DATA)
    start_node "$DATA"
    measure "$@"
    stop_node
}

baseline() { # NAME
    echo "== $1: loadgen baseline"
    "$LOADGEN" baseline --dir "$OUT" --cpuset "$LOADGEN_CPU,$NODE_CPU" --duration 2s \
        --json "$OUT/$1.json" | tee "$OUT/$1.txt"
}

for size in 1024 100; do
    DATA="$OUT/data-$size"
    if [ "$size" = 1024 ]; then
        batch=64 in_flight=32
    else
        batch=1024 in_flight=8
    fi
    common=(--record-bytes "$size" --duration "$DURATION")
    max=(--batch-records "$batch" --in-flight "$in_flight")
    baseline "baseline-$size"
    row "produce-$size" "${common[@]}" --warmup "$WARMUP" --producers 1 --consumers 0 "${max[@]}"
    row "catchup-$size" "${common[@]}" --warmup 0s --producers 0 --consumers 1 --from start
    # The tail: a node that has just written 2 s of records holds the last 16 MiB in its
    # tail cache (a restarted one refills it only from the active segment's last index entry).
    start_node "$DATA"
    measure "tailfill-$size" --record-bytes "$size" --duration 2s --warmup 0s \
        --producers 1 --consumers 0 "${max[@]}"
    end=$(python3 -c "import json; r=json.load(open('$OUT/tailfill-$size.json')); \
print(r['targets'][0]['start_offset'] + r['produce_detail']['acked_records'])")
    # Long-polling reads, one 1 MiB read in flight per consumer: 64 subscriptions with 8
    # credits each make the node queue 512 MiB of events on the one connection at once (see
    # the README), which measures that pathology, not the read path.
    measure "tail-$size" "${common[@]}" --warmup 0s --producers 0 --consumers 16 \
        --consume-api poll --from "$((end - (14 << 20) / size))"
    stop_node
    row "mixed-$size" "${common[@]}" --warmup "$WARMUP" --producers 1 --consumers 1 "${max[@]}"
    row "single-$size" "${common[@]}" --warmup "$WARMUP" --producers 1 --consumers 0 \
        --batch-records 1 --in-flight 1
    half=$(python3 -c "import json; \
print(round(json.load(open('$OUT/produce-$size.json'))['produce']['records_per_s'] / 2))")
    row "half-$size" "${common[@]}" --warmup "$WARMUP" --producers 1 --consumers 0 "${max[@]}" \
        --rate "$half" --hgrm "$OUT/half-$size.hgrm" --plot "$OUT/half-$size.svg"
    rm -rf "$DATA"
done
baseline "baseline-end"

python3 loadgen/bench/summarize.py "$OUT" | tee "$OUT/summary.md"
