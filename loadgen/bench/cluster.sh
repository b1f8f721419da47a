#!/usr/bin/env bash
# The README's replicated-produce benchmark (issue 5): loadgen --cluster against a 3-node
# loopback cluster beside one standalone node, on the same machine in the same run.
#
# Usage: loadgen/bench/cluster.sh [OUT_DIR]      (default OUT_DIR: target/loadgen-cluster)
#        ROUNDS=N (default 2): how many times the whole sequence runs (figures drift with the
#        host's load; the summary shows every round).
#        CLUSTER_CPUS="A B C" (default "0 1 0"): the CPUs of nodes 1, 2 and 3 (node 1
#        bootstraps and leads). "0 1 1" gives the leader CPU 0 to itself, as the standalone
#        node has, and puts both followers with loadgen on CPU 1.
#        NODE_ARGS="..." : more `corelog serve` flags for every node, standalone and cluster
#        (e.g. NODE_ARGS="--fsync interval:10" shows what the syncs cost; UNSAFE acks).
#
# Release builds; 1 KiB records, one partition, durable acks (`fsync = always`). Per round:
#   disk    — `loadgen baseline` on the same disk: among others, 1 MiB write + fdatasync in one
#             file, and in three files at once (what three replicas sharing this disk can make
#             durable together: a one-host cluster acknowledges at most a third of it)
#   single  — one standalone node on CPU 0 (fresh data directory), loadgen on CPU 1:
#             produce-max (64 records per request, 32 in flight), produce-saturating (128 in
#             flight: the node's own ceiling) and 1-in-flight (1 record)
#   cluster — three nodes (fresh data directories): node 1 on CPU 0 bootstraps, nodes 2 and 3
#             join it, on CPUs 1 and 0; loadgen --cluster on CPU 1; the same two rows once
#             every node is a voter of partition 0. Three nodes and loadgen on two CPUs
#             oversubscribe the cores.
# Around each loadgen run: every node process's /proc/PID/io write_bytes (bytes it sent to the
# block layer: segment writes, index, raft-meta) and its CPU time (/proc/PID/task/*/schedstat).
# Bytes written per payload byte per replica = Σ Δwrite_bytes over the nodes /
# (acknowledged records × record bytes × replicas). cluster_summary.py prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${1:-target/loadgen-cluster}
ROUNDS=${ROUNDS:-2}
read -r -a CPUS <<<"${CLUSTER_CPUS:-0 1 0}"
if [ "${#CPUS[@]}" -ne 3 ]; then
    echo "CLUSTER_CPUS needs three CPUs (nodes 1, 2, 3), got '${CLUSTER_CPUS:-}'" >&2
    exit 2
fi
LOADGEN_CPU=1
DURATION=5s
WARMUP=1s
SIZE=1024
CORELOG=target/release/corelog
LOADGEN=target/release/loadgen

cargo build --release --bin corelog
cargo build --release -p loadgen --bin loadgen

rm -rf "$OUT"
mkdir -p "$OUT"
TLS="$OUT/tls"
"$CORELOG" certs --out "$TLS" --node node --client client >/dev/null
PIDS=()
ADDRS=()

start_node() { # LOG DATA CPU EXTRA...   → appends to PIDS and ADDRS
    local log=$1 data=$2 cpu=$3
    shift 3
    "$CORELOG" serve --data-dir "$data" --cpuset "$cpu" --partitions 1 \
        --tls-dir "$TLS" --tls-name node \
        --listen 127.0.0.1:0 --stats-listen 127.0.0.1:0 "$@" ${NODE_ARGS:-} >"$log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 300); do
        grep -q "corelog: serving" "$log" && break
        sleep 0.1
    done
    local addr
    addr=$(sed -n 's/.*serving .* on \(127\.0\.0\.1:[0-9]*\) .*/\1/p' "$log")
    if [ -z "$addr" ]; then
        cat "$log" >&2
        exit 1
    fi
    ADDRS+=("$addr")
}

stop_nodes() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    ADDRS=()
}
trap stop_nodes EXIT

# "write_bytes run_ns wait_ns" of a process.
proc_counters() {
    local w
    w=$(awk '/^write_bytes/ {print $2}' /proc/"$1"/io)
    cat /proc/"$1"/task/*/schedstat | awk -v w="$w" '{r += $1; q += $2} END {printf "%.0f %.0f %.0f\n", w, r, q}'
}

measure() { # NAME REPLICAS LOADGEN_FLAGS...   (against the running nodes)
    local name=$1 replicas=$2
    shift 2
    local before=() after=() t0 t1
    for pid in "${PIDS[@]}"; do before+=("$(proc_counters "$pid")"); done
    t0=$(date +%s.%N)
    echo "== $name: loadgen $*"
    "$LOADGEN" --tls-dir "$TLS" --cpuset "$LOADGEN_CPU" --record-bytes "$SIZE" \
        --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" || true
    t1=$(date +%s.%N)
    # Followers may still be writing the last entries they were sent.
    sleep 1
    for pid in "${PIDS[@]}"; do after+=("$(proc_counters "$pid")"); done
    python3 - "$OUT/$name.nodes.json" "$replicas" "$t0" "$t1" "${before[@]}" -- "${after[@]}" <<'EOF'
import json, sys
out, replicas, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rest = sys.argv[5:]
cut = rest.index("--")
before = [list(map(int, s.split())) for s in rest[:cut]]
after = [list(map(int, s.split())) for s in rest[cut + 1:]]
nodes = [{"write_bytes": a[0] - b[0], "cpu_s": (a[1] - b[1]) / 1e9,
          "runqueue_wait_s": (a[2] - b[2]) / 1e9} for b, a in zip(before, after)]
json.dump({"replicas": replicas, "wall_s": t1 - t0, "nodes": nodes}, open(out, "w"))
EOF
    tail -n 9 "$OUT/$name.txt"
}

rows() { # PREFIX REPLICAS EXTRA_LOADGEN_FLAGS...
    local prefix=$1 replicas=$2
    shift 2
    local common=(--duration "$DURATION" --warmup "$WARMUP" --producers 1 --consumers 0)
    measure "$prefix-produce" "$replicas" "$@" "${common[@]}" --batch-records 64 --in-flight 32
    measure "$prefix-saturate" "$replicas" "$@" "${common[@]}" --batch-records 64 --in-flight 128
    measure "$prefix-single" "$replicas" "$@" "${common[@]}" --batch-records 1 --in-flight 1
}

wait_for_voters() { # every node a voter of partition 0, and a leader
    for _ in $(seq 600); do
        if "$CORELOG" servers --addr "${ADDRS[0]}" --tls-dir "$TLS" --json 2>/dev/null |
            python3 -c "import json, sys; s = json.load(sys.stdin)['servers']; \
sys.exit(0 if sum(0 in x['partitions_voter'] for x in s) == 3 and \
any(0 in x['partitions_led'] for x in s) else 1)"; then
            return
        fi
        sleep 0.1
    done
    echo "the cluster did not form" >&2
    exit 1
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round: disk baseline"
    "$LOADGEN" baseline --dir "$OUT" --duration 1s --cpuset "$LOADGEN_CPU,${CPUS[0]}" \
        --json "$OUT/r$round-baseline.json" | tee "$OUT/r$round-baseline.txt"
    echo "== round $round: single node"
    rm -rf "$OUT/single"
    start_node "$OUT/single.log" "$OUT/single" 0
    rows "r$round-single" 1 --addr "${ADDRS[0]}"
    stop_nodes

    echo "== round $round: 3-node cluster"
    rm -rf "$OUT/c1" "$OUT/c2" "$OUT/c3"
    start_node "$OUT/c1.log" "$OUT/c1" "${CPUS[0]}" --node-id 1 --cluster
    start_node "$OUT/c2.log" "$OUT/c2" "${CPUS[1]}" --node-id 2 --join "${ADDRS[0]}"
    start_node "$OUT/c3.log" "$OUT/c3" "${CPUS[2]}" --node-id 3 --join "${ADDRS[0]}"
    wait_for_voters
    "$CORELOG" servers --addr "${ADDRS[0]}" --tls-dir "$TLS" >"$OUT/r$round-servers.txt"
    rows "r$round-cluster" 3 --cluster --addr "$(IFS=,; echo "${ADDRS[*]}")"
    stop_nodes
done
rm -rf "$OUT/single" "$OUT/c1" "$OUT/c2" "$OUT/c3"

python3 loadgen/bench/cluster_summary.py "$OUT" "$ROUNDS" | tee "$OUT/summary.md"
